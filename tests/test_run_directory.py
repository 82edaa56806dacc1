"""A run directory is written whole or not at all, by one writer, and the exporter refuses files that are not
the run's own (issue 12, "lose nothing"): the probe's re-train cases, each reproduced."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from click.testing import CliRunner

from pyimgano.cli.train import main as train_main
from pyimgano.export.cli import main as export_main
from pyimgano.runtime.exit_codes import ExitCode

torch = pytest.importorskip("torch")


def write_config(tmp_path: Path, root: Path, out: Path, name: str = "cfg.json", **dataset) -> Path:
    config = {
        "dataset": {"root": str(root), "category": "synthetic_texture", "resize": [128, 128], **dataset},
        "model": {"device": "cpu"},
        "output": {"output_dir": str(out)},
    }
    path = tmp_path / name
    path.write_text(json.dumps(config))
    return path


@pytest.fixture(scope="module")
def dataset(synthetic_dataset) -> Path:
    return synthetic_dataset


@pytest.fixture(scope="module")
def trained(tmp_path_factory, dataset) -> Path:
    """A finished run (128x128), copied by each test that changes it."""
    folder = tmp_path_factory.mktemp("trained")
    config = write_config(folder, dataset, folder / "run")
    result = CliRunner().invoke(train_main, ["--config", str(config)])
    assert result.exit_code == 0, result.output
    return folder / "run"


def digests(run: Path) -> dict[str, bytes]:
    return {path.relative_to(run).as_posix(): path.read_bytes() for path in sorted(run.rglob("*")) if path.is_file()}


def export(run: Path, out: Path):
    return CliRunner().invoke(export_main, ["--from-run", str(run), "--out", str(out)])


def broken_dataset(dataset: Path, tmp_path: Path) -> Path:
    """The dataset plus a second category ('zz_broken', trained after the good one) with an unreadable image."""
    root = tmp_path / "broken-data"
    shutil.copytree(dataset, root)
    shutil.copytree(root / "synthetic_texture", root / "zz_broken")
    (root / "zz_broken" / "train" / "good" / "000.png").write_bytes(b"not a png")
    return root


def test_a_failed_retrain_leaves_the_previous_run_whole_and_exportable(tmp_path, trained, dataset):
    run = tmp_path / "run"
    shutil.copytree(trained, run)
    before = digests(run)
    # The probe's case: a re-train at 192x192 that fails after its first category had trained.
    config = write_config(tmp_path, broken_dataset(dataset, tmp_path), run, category="all", resize=[192, 192])
    result = CliRunner().invoke(train_main, ["--config", str(config)])
    assert result.exit_code == ExitCode.DATA_ERROR, result.output
    assert "zz_broken" in result.output
    assert digests(run) == before
    assert not list(tmp_path.glob(".run.staging-*"))
    exported = export(run, tmp_path / "bundles")
    assert exported.exit_code == 0, exported.output
    [bundle] = [p for p in (tmp_path / "bundles").iterdir() if p.is_dir()]
    manifest = json.loads((bundle / "manifest.json").read_text())
    assert (manifest["input"]["height"], manifest["input"]["width"]) == (128, 128)


def test_a_killed_retrain_leaves_the_previous_run_and_the_next_run_clears_its_staging(tmp_path, trained, dataset):
    run = tmp_path / "run"
    shutil.copytree(trained, run)
    before = digests(run)
    config = write_config(tmp_path, dataset, run, resize=[160, 160])
    process = subprocess.Popen([sys.executable, "-m", "pyimgano.cli.train", "--config", str(config)],
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 120
    # Killed once it has written into its staging folder (config.json goes first).
    while not list(tmp_path.glob(".run.staging-*/config.json")) and time.monotonic() < deadline:
        assert process.poll() is None, "the re-train ended before it could be killed"
        time.sleep(0.02)
    process.send_signal(signal.SIGKILL)
    process.wait()
    assert list(tmp_path.glob(".run.staging-*")), "a SIGKILLed writer cannot clean up: its staging folder stays"
    assert digests(run) == before
    assert export(run, tmp_path / "bundles").exit_code == 0
    # The next writer removes what the killed one left.
    again = CliRunner().invoke(train_main, ["--config", str(config)])
    assert again.exit_code == 0, again.output
    assert not list(tmp_path.glob(".run.staging-*"))
    assert json.loads((run / "config.json").read_text())["dataset"]["resize"] == [160, 160]


def test_a_second_writer_of_one_run_directory_is_refused_before_it_trains(tmp_path, dataset):
    from pyimgano.workbench.run_directory import staged_run

    run = tmp_path / "run"
    config = write_config(tmp_path, dataset, run)
    # The first writer, holding the directory as pyimgano-train does while it trains.
    with staged_run(run):
        started = time.monotonic()
        second = subprocess.run([sys.executable, "-m", "pyimgano.cli.train", "--config", str(config)],
                                capture_output=True, text=True, timeout=300)
        refused_after = time.monotonic() - started
        assert not run.exists()  # the refused writer wrote nothing
    assert second.returncode == ExitCode.OUTPUT_ERROR, second.stderr
    assert f"another pyimgano-train (pid {os.getpid()}) is writing this run directory" in second.stderr
    assert "Traceback" not in second.stderr
    assert refused_after < 60  # refused before fitting, not after


@pytest.mark.parametrize("change", ["checkpoint from another training", "threshold edited", "per-image records"])
def test_export_refuses_files_that_are_not_the_runs_own(tmp_path, trained, dataset, change):
    run = tmp_path / "run"
    shutil.copytree(trained, run)
    report_path = run / "categories" / "synthetic_texture" / "report.json"
    report = json.loads(report_path.read_text())
    if change == "checkpoint from another training":
        # The probe's SIGKILLed re-train: a checkpoint with another bank beside the report.
        other = tmp_path / "other"
        config = write_config(tmp_path, dataset, other, name="other.json")
        config.write_text(json.dumps({**json.loads(config.read_text()), "model": {"device": "cpu", "coreset_ratio": 0.05}}))
        assert CliRunner().invoke(train_main, ["--config", str(config)]).exit_code == 0
        shutil.copy(other / report["checkpoint"], run / report["checkpoint"])
        named = run / report["checkpoint"]
    elif change == "threshold edited":
        report["thresholds"]["image"]["value"] *= 2
        report_path.write_text(json.dumps(report))
        named = report_path
    else:
        named = report_path.with_name("per_image.jsonl")
        named.write_text(named.read_text().replace('"truth": 1', '"truth": 0'))
    result = export(run, tmp_path / "bundles")
    assert result.exit_code == ExitCode.DATA_ERROR, result.output
    assert f"run refused: {named}: changed since the run was written" in result.output
    assert not (tmp_path / "bundles").exists() or not any((tmp_path / "bundles").iterdir())


def test_a_run_without_recorded_digests_is_refused(tmp_path, trained):
    run = tmp_path / "run"
    shutil.copytree(trained, run)
    top = json.loads((run / "report.json").read_text())
    del top["files"]
    (run / "report.json").write_text(json.dumps(top))
    result = export(run, tmp_path / "bundles")
    assert result.exit_code == ExitCode.DATA_ERROR
    assert "records no file digests" in result.output


def test_the_recorded_digests_cover_every_file_of_the_run(trained):
    from pyimgano.runtime.bundle import sha256_file

    files = json.loads((trained / "report.json").read_text())["files"]
    on_disk = {p.relative_to(trained).as_posix() for p in trained.rglob("*") if p.is_file()} - {"report.json"}
    assert set(files) == on_disk
    assert all(sha256_file(trained / name) == entry["sha256"] for name, entry in files.items())
