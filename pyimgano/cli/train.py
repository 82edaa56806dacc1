"""pyimgano-train: run a workbench recipe from a JSON/YAML config. Exit codes: pyimgano.cli.errors."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import click

from pyimgano.cli import errors
from pyimgano.cli.errors import RecipePlaceholderError, run_program
from pyimgano.cli.log_flags import logging_options
from pyimgano.config import ConfigError, json_schema, load_config_file, to_json, validate
from pyimgano.recipes import RECIPES, get_recipe
from pyimgano.runtime.exit_codes import ExitCode


def _fmt(value) -> str:
    return "-" if value is None else f"{value:.4f}" if isinstance(value, float) else str(value)


def table(rows: list[tuple[str, ...]]) -> str:
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    return "\n".join("  ".join(cell.ljust(width) for cell, width in zip(row, widths)).rstrip() for row in rows)


def summary_table(report: dict) -> str:
    header = ("category", "image_auroc", "pixel_auroc", "pixel_aupro_0.3", "image_f1", "fit_s", "eval_img/s")
    return table([header] + [
        (category, _fmt(row["image_auroc"]), _fmt(row["pixel_auroc"]), _fmt(row["pixel_aupro_0.3"]),
         _fmt(row["image_f1"]), _fmt(row["fit_seconds"]), _fmt(row["eval_images_per_second"]))
        for category, row in report["categories"].items()
    ])


def _echo(payload, as_json: bool, text: str) -> None:
    click.echo(json.dumps(payload, indent=2) if as_json else text)


def list_recipes(as_json: bool) -> None:
    payload = [{"name": r.name, "summary": r.summary, "placeholder": r.placeholder} for r in RECIPES.values()]
    _echo(payload, as_json, table([("recipe", "summary")] + [(r.name, r.summary) for r in RECIPES.values()]))


def recipe_info(name: str, as_json: bool) -> None:
    recipe = get_recipe(name)
    payload = {"name": recipe.name, "summary": recipe.summary, "placeholder": recipe.placeholder,
               "defaults": recipe.defaults, "config_schema": json_schema()}
    text = (f"{recipe.name}: {recipe.summary}\n\ndefaults applied under your config:\n"
            f"{json.dumps(recipe.defaults, indent=2)}\n\nconfig schema (docs/config.schema.json):\n"
            f"{json.dumps(json_schema(), indent=2)}")
    _echo(payload, as_json, text)


def _model_rows(entries) -> list[dict]:
    return [{"name": e.name, "description": e.description, "trains": e.trains, "default_preset": e.default_preset,
             "presets": e.presets} for e in entries]


def list_models(as_json: bool) -> None:
    from pyimgano.models.registry import list_models as registered

    rows = _model_rows(registered())
    _echo(rows, as_json, table([("model", "trains", "description")] +
                               [(r["name"], str(r["trains"]).lower(), r["description"]) for r in rows]))


def model_info(name: str, as_json: bool) -> None:
    from pyimgano.models.registry import get_model

    [row] = _model_rows([get_model(name)])
    _echo(row, as_json, json.dumps(row, indent=2))


def resolve(config_path: Path, root, category, device, output_dir):
    config = load_config_file(config_path)
    dataset = dataclasses.replace(config.dataset, root=root or config.dataset.root,
                                  category=category or config.dataset.category)
    model = dataclasses.replace(config.model, device=device or config.model.device)
    output = dataclasses.replace(config.output, output_dir=output_dir or config.output.output_dir)
    return validate(dataclasses.replace(config, dataset=dataset, model=model, output=output))


@click.command(context_settings={"help_option_names": ["-h", "--help"]})
@logging_options
@click.option("--config", "config_path", type=click.Path(dir_okay=False, path_type=Path),
              help="Workbench config, JSON (or YAML when PyYAML is installed).")
@click.option("--root", help="Override dataset.root.")
@click.option("--category", help="Override dataset.category ('all' = every category under the root).")
@click.option("--device", type=click.Choice(["auto", "cpu", "cuda"]), help="Override model.device.")
@click.option("--output-dir", help="Override output.output_dir.")
@click.option("--dry-run", is_flag=True, help="Validate the config, print it resolved (recipe defaults applied), exit.")
@click.option("--export-infer-config", is_flag=True,
              help="Also write artifacts/infer_config.json (thresholds, adaptation, defects block) into the run.")
@click.option("--export-bundle", "export_dir", type=click.Path(file_okay=False, path_type=Path),
              help="After training, export each category's bundle into this folder.")
@click.option("--sign-key", type=click.Path(dir_okay=False, exists=True, path_type=Path), default=None,
              help="With --export-bundle: sign each bundle with this Ed25519 private key (as pyimgano-export "
                   "--sign-key).")
@click.option("--list-recipes", "show_recipes", is_flag=True, help="List the builtin recipes and exit.")
@click.option("--recipe-info", "recipe_name", metavar="NAME", help="Show a recipe's defaults and the config schema, and exit.")
@click.option("--list-models", "show_models", is_flag=True, help="List the registered models and exit.")
@click.option("--model-info", "model_name", metavar="NAME", help="Show a model's presets and exit.")
@click.option("--json", "as_json", is_flag=True, help="With --list-*/--*-info: machine-readable output.")
def main(**flags):
    """Fit, calibrate and evaluate a detector as the config says; write a run directory."""
    run_program(lambda: program(**flags))


def program(config_path, root, category, device, output_dir, dry_run, export_infer_config, export_dir, sign_key,
            show_recipes, recipe_name, show_models, model_name, as_json) -> ExitCode:
    if show_recipes or recipe_name or show_models or model_name:
        if show_recipes:
            list_recipes(as_json)
        if recipe_name:
            recipe_info(recipe_name, as_json)
        if show_models:
            list_models(as_json)
        if model_name:
            model_info(model_name, as_json)
        return ExitCode.OK
    if config_path is None:
        raise click.UsageError("--config is required (or one of --list-recipes, --recipe-info, --list-models, --model-info)")
    config = resolve(config_path, root, category, device, output_dir)
    if sign_key and not export_dir:
        raise errors.UsageError("--sign-key needs --export-bundle")
    if sign_key:
        # Read before training, so that a bad key fails before the minutes of work, not after.
        from pyimgano.runtime.signing import load_private_key

        load_private_key(sign_key)
    if export_dir and not config.output.save_run:
        raise ConfigError("--export-bundle needs output.save_run = true (the bundle is made from the run)")
    recipe = get_recipe(config.recipe)
    if recipe.placeholder:
        raise RecipePlaceholderError(f"recipe {recipe.name} is a placeholder: {recipe.summary}")
    if dry_run:
        # What the real run checks before it writes anything: model name, knobs, preset and backbone.
        from pyimgano.models.registry import get_model

        get_model(config.model.name).validate(config)
        click.echo(json.dumps(to_json(config), indent=2))
        return ExitCode.OK

    # torch is imported only once the config is known to be good, so config errors come back fast.
    from pyimgano.workbench.run import run_workbench

    report = run_workbench(config, export_infer_config=export_infer_config)
    click.echo(summary_table(report))
    click.echo(f"run directory: {config.output.output_dir}" if config.output.save_run else "run not saved (output.save_run = false)")
    return (export_all(Path(config.output.output_dir), export_dir, list(report["categories"]), sign_key)
            if export_dir else ExitCode.OK)


def export_all(run_dir: Path, export_dir: Path, categories: list[str], sign_key: Path | None = None) -> ExitCode:
    """Exports every category, each on its own: one that fails is reported and the others still export.
    Returns OK, or the exit code of the first failure."""
    from pyimgano.export.cli import export_one

    failures: list[ExitCode] = []
    for name in categories:
        try:
            export_one(run_dir, export_dir, name, "1", sign_key=sign_key)
        except Exception as exc:  # noqa: BLE001 - errors.report re-raises what its table does not know
            failures.append(errors.report(exc, about=f"category {name}"))
    if failures:
        click.echo(f"exported {len(categories) - len(failures)} of {len(categories)} categories", err=True)
        return failures[0]
    return ExitCode.OK


if __name__ == "__main__":
    main()
