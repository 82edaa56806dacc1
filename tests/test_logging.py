"""Logging for unattended runs: --quiet / --verbose / --log-json on the console scripts, and progress off a
terminal as periodic log lines (issue 14 part 3)."""

from __future__ import annotations

import io
import json
import logging
import subprocess
import sys

import pytest

from pyimgano.runtime import logs
from pyimgano.runtime.progress import Progress


@pytest.fixture(autouse=True)
def restore_logging():
    yield
    logs.reset()


@pytest.mark.edge
def test_progress_off_a_terminal_is_logged_periodically_and_at_the_end():
    sink = io.StringIO()
    logs.configure("normal", json_lines=True, stream=sink)
    progress = Progress("inference", 10, stream=io.StringIO(), log_interval_s=0.0)
    for _ in range(10):
        progress.update()
    lines = [json.loads(line) for line in sink.getvalue().splitlines()]
    assert [line["done"] for line in lines] == list(range(1, 11))
    assert all(line["level"] == "info" and line["total"] == 10 and line["task"] == "inference" for line in lines)


@pytest.mark.edge
def test_a_short_loop_logs_its_end_at_debug_level_only():
    sink = io.StringIO()
    logs.configure("normal", stream=sink)
    progress = Progress("coreset", 3, stream=io.StringIO(), log_interval_s=3600.0)
    progress.update(3)
    assert sink.getvalue() == ""
    logs.configure("verbose", stream=sink)
    progress = Progress("coreset", 3, stream=io.StringIO(), log_interval_s=3600.0)
    progress.update(3)
    assert "DEBUG pyimgano.progress: coreset: 3/3 (100%)" in sink.getvalue()


@pytest.mark.edge
def test_no_bar_is_drawn_when_quiet_or_logging_json():
    class Terminal(io.StringIO):
        def isatty(self):
            return True

    for verbosity, json_lines, drawn in (("normal", False, True), ("quiet", False, False), ("normal", True, False)):
        logs.configure(verbosity, json_lines=json_lines, stream=io.StringIO())
        terminal = Terminal()
        Progress("inference", 4, stream=terminal).update(4)
        assert ("inference [" in terminal.getvalue()) is drawn, (verbosity, json_lines)


def test_train_logs_json_lines_and_quiet_keeps_only_warnings(tmp_path):
    pytest.importorskip("torch")
    from pyimgano.data.synthetic import SyntheticSpec, generate_dataset

    generate_dataset(tmp_path / "data", SyntheticSpec(n_train=10, n_test_good=3, n_test_per_defect=3, image_size=96))
    config = tmp_path / "cfg.json"
    config.write_text(json.dumps({"dataset": {"root": str(tmp_path / "data"), "category": "synthetic_texture",
                                              "resize": [96, 96]},
                                  "model": {"device": "cpu"}, "output": {"output_dir": str(tmp_path / "run")}}))
    command = [sys.executable, "-m", "pyimgano.cli.train", "--config", str(config)]
    logged = subprocess.run(command + ["--log-json"], capture_output=True, text=True, timeout=300)
    assert logged.returncode == 0, logged.stderr
    lines = [json.loads(line) for line in logged.stderr.splitlines()]
    messages = [line["message"] for line in lines]
    assert any("fitting vision_patchcore on" in message for message in messages)
    assert any("image threshold" in message for message in messages)
    assert lines[-1]["message"].startswith("run written to") and lines[-1]["run_dir"] == str(tmp_path / "run")
    assert {line["level"] for line in lines} <= {"info", "warning"}
    quiet = subprocess.run(command + ["--quiet"], capture_output=True, text=True, timeout=300)
    assert quiet.returncode == 0 and quiet.stderr == ""
    assert "synthetic_texture" in quiet.stdout  # the summary table is the command's output, not a log line


def test_quiet_and_verbose_together_is_a_usage_error():
    result = subprocess.run([sys.executable, "-m", "pyimgano.cli.train", "--quiet", "--verbose", "--list-recipes"],
                            capture_output=True, text=True)
    assert result.returncode == 2
    assert "--quiet and --verbose exclude each other" in result.stderr


def test_library_use_without_the_cli_logs_nothing_below_warning(capfd):
    logs.reset()
    logging.getLogger("pyimgano.workbench.run").info("not shown")
    assert capfd.readouterr().err == ""


@pytest.mark.edge
def test_infer_logs_json_lines_before_its_summary(edge_fixture, tmp_path):
    inputs = edge_fixture["category_dir"] / "test" / "good"
    result = subprocess.run([sys.executable, "-m", "pyimgano.cli.infer", "--bundle", str(edge_fixture["bundle_dir"]),
                             "--input", str(inputs), "--save-jsonl", str(tmp_path / "r.jsonl"), "--log-json"],
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    *log_lines, summary = [json.loads(line) for line in result.stderr.splitlines()]
    assert summary["images"] == len(list(inputs.glob("*.png")))  # the summary stays the last line of stderr
    assert log_lines and all({"time", "level", "logger", "message"} <= set(line) for line in log_lines)
    started = [line for line in log_lines if line["message"].startswith("scoring ")]
    assert started[0]["images"] == summary["images"] and started[0]["device"] == "cpu"
    assert any(line["level"] == "warning" and "origin unverified" in line["message"] for line in log_lines)
