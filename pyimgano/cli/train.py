"""pyimgano-train: run a workbench recipe from a JSON/YAML config. Exit codes: pyimgano.runtime.exit_codes."""

from __future__ import annotations

import dataclasses
import sys
from pathlib import Path

import click

from pyimgano.config import ConfigError, load_config_file, validate
from pyimgano.runtime.exit_codes import ExitCode


def _fmt(value) -> str:
    return "-" if value is None else f"{value:.4f}" if isinstance(value, float) else str(value)


def summary_table(report: dict) -> str:
    header = ("category", "image_auroc", "pixel_auroc", "pixel_aupro_0.3", "image_f1", "fit_s", "eval_img/s")
    rows = [header] + [
        (
            category,
            _fmt(row["image_auroc"]),
            _fmt(row["pixel_auroc"]),
            _fmt(row["pixel_aupro_0.3"]),
            _fmt(row["image_f1"]),
            _fmt(row["fit_seconds"]),
            _fmt(row["eval_images_per_second"]),
        )
        for category, row in report["categories"].items()
    ]
    widths = [max(len(row[i]) for row in rows) for i in range(len(header))]
    return "\n".join("  ".join(cell.ljust(width) for cell, width in zip(row, widths)) for row in rows)


@click.command(context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--config", "config_path", required=True, type=click.Path(dir_okay=False, path_type=Path),
              help="Workbench config, JSON (or YAML when PyYAML is installed).")
@click.option("--root", help="Override dataset.root.")
@click.option("--category", help="Override dataset.category ('all' = every category under the root).")
@click.option("--device", type=click.Choice(["auto", "cpu", "cuda"]), help="Override model.device.")
@click.option("--output-dir", help="Override output.output_dir.")
@click.option("--export-bundle", "export_dir", type=click.Path(file_okay=False, path_type=Path),
              help="After training, export each category's bundle into this folder.")
def main(config_path, root, category, device, output_dir, export_dir):
    """Fit, calibrate and evaluate a detector as the config says; write a run directory."""
    try:
        config = load_config_file(config_path)
        dataset = dataclasses.replace(config.dataset, root=root or config.dataset.root,
                                      category=category or config.dataset.category)
        model = dataclasses.replace(config.model, device=device or config.model.device)
        output = dataclasses.replace(config.output, output_dir=output_dir or config.output.output_dir)
        config = validate(dataclasses.replace(config, dataset=dataset, model=model, output=output))
        if export_dir and not config.output.save_run:
            raise ConfigError("--export-bundle needs output.save_run = true (the bundle is made from the run)")
    except ConfigError as exc:
        click.echo(f"config error: {exc}", err=True)
        sys.exit(ExitCode.USAGE)

    # torch is imported only once the config is known to be good, so config errors come back fast.
    from pyimgano.data.mvtec import DatasetError
    from pyimgano.models.backbones import WeightsNotFoundError
    from pyimgano.workbench.run import run_workbench

    try:
        report = run_workbench(config)
    except ConfigError as exc:
        click.echo(f"config error: {exc}", err=True)
        sys.exit(ExitCode.USAGE)
    except (DatasetError, WeightsNotFoundError) as exc:
        click.echo(f"error: {exc}", err=True)
        sys.exit(ExitCode.DATA_ERROR)
    click.echo(summary_table(report))
    click.echo(f"run directory: {config.output.output_dir}" if config.output.save_run else "run not saved (output.save_run = false)")
    if export_dir:
        from pyimgano.export.cli import export_or_exit

        for name in report["categories"]:
            export_or_exit(Path(config.output.output_dir), export_dir, name, "1")
    sys.exit(ExitCode.OK)
