"""Lose nothing (issue 12): pyimgano-infer's outputs, each case as the probe reproduced it, on a real bundle
and real files: existing outputs refused, missing folders found before anything is written, two writers
refused, a run cut short resumed to exactly the records of an uninterrupted one, signals that stop a run
after the chunk in hand with the records and the summary written, and a full disk reported as such."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import start_long_infer
from pyimgano.runtime.exit_codes import ExitCode

pytestmark = pytest.mark.edge

INFER = [sys.executable, "-m", "pyimgano.cli.infer"]


def infer(edge_fixture, *flags, inputs=None) -> subprocess.CompletedProcess:
    source = inputs or edge_fixture["category_dir"] / "test"
    return subprocess.run([*INFER, "--bundle", str(edge_fixture["bundle_dir"]), "--input", str(source),
                           *map(str, flags)], capture_output=True, text=True, timeout=600)


def lines(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def summary_of(result: subprocess.CompletedProcess) -> dict:
    return json.loads(result.stderr.strip().splitlines()[-1])


def test_an_existing_output_is_refused_without_overwrite_and_kept(edge_fixture, tmp_path):
    out = tmp_path / "records.jsonl"
    out.write_text("precious\n")
    result = infer(edge_fixture, "--save-jsonl", out)
    assert result.returncode == ExitCode.USAGE and "--overwrite" in result.stderr and "--resume" in result.stderr
    assert out.read_text() == "precious\n"
    replaced = infer(edge_fixture, "--save-jsonl", out, "--overwrite")
    assert replaced.returncode == ExitCode.OK, replaced.stderr
    assert len(lines(out)) == summary_of(replaced)["images"] > 0


def test_a_missing_folder_is_found_before_any_output_is_touched(edge_fixture, tmp_path):
    """The probe's case: --defects-regions-jsonl in a missing folder truncated the main output, then a traceback."""
    out = tmp_path / "records.jsonl"
    out.write_text("precious\n")
    result = infer(edge_fixture, "--save-jsonl", out, "--overwrite", "--defects",
                   "--defects-regions-jsonl", tmp_path / "missing" / "regions.jsonl")
    assert result.returncode == ExitCode.OUTPUT_ERROR and "missing" in result.stderr
    assert "Traceback" not in result.stderr and out.read_text() == "precious\n"
    masks = infer(edge_fixture, "--defects", "--save-masks", tmp_path / "missing" / "masks")
    assert masks.returncode == ExitCode.OUTPUT_ERROR and "does not exist" in masks.stderr


def test_a_second_writer_of_the_same_file_is_refused(edge_fixture, tmp_path):
    """The probe's case: two runs onto one file corrupted it, both with rc 0."""
    import fcntl

    out = tmp_path / "records.jsonl"
    with open(out, "a") as holder:  # another run holding the file's lock
        fcntl.flock(holder, fcntl.LOCK_EX)
        result = infer(edge_fixture, "--save-jsonl", out, "--overwrite")
    assert result.returncode == ExitCode.OUTPUT_ERROR and "another pyimgano-infer is writing it" in result.stderr
    assert out.read_text() == ""


def test_resume_continues_after_the_last_complete_record(edge_fixture, tmp_path):
    whole = tmp_path / "whole.jsonl"
    assert infer(edge_fixture, "--save-jsonl", whole).returncode == ExitCode.OK
    expected = lines(whole)
    cut = tmp_path / "cut.jsonl"
    text = whole.read_text()
    keep = text.splitlines(keepends=True)[:7]
    cut.write_text("".join(keep) + '{"input": "half a rec')  # a run killed mid-line
    resumed = infer(edge_fixture, "--save-jsonl", cut, "--resume")
    assert resumed.returncode == ExitCode.OK, resumed.stderr
    assert summary_of(resumed)["resumed_after"] == 7
    assert summary_of(resumed)["images"] == len(expected) - 7
    assert lines(cut) == expected


@pytest.mark.parametrize("signum, code", [(signal.SIGTERM, ExitCode.TERMINATED), (signal.SIGINT, ExitCode.INTERRUPTED)])
def test_a_signal_stops_after_the_chunk_and_keeps_every_record(edge_fixture, tmp_path, signum, code):
    """The probe's case: SIGINT printed "Aborted!" with rc 1, SIGTERM lost buffered records."""
    process, out = start_long_infer(edge_fixture["bundle_dir"], edge_fixture, tmp_path, images=400)
    process.send_signal(signum)
    _, stderr = process.communicate(timeout=120)
    assert process.returncode == code, stderr
    summary = json.loads(stderr.strip().splitlines()[-1])
    records = lines(out)
    assert summary["interrupted"] == signal.Signals(signum).name and summary["stopped_early"] is True
    assert 0 < len(records) == summary["images"] < 400
    assert all("score" in record for record in records)


@pytest.mark.skipif(not Path("/dev/full").exists(), reason="needs /dev/full")
def test_a_full_disk_is_an_output_error_not_a_short_file(edge_fixture, tmp_path):
    """The probe's case: on a full disk masks were 0-byte files that records pointed to, with rc 0. /dev/full
    fails every write with ENOSPC, as a full disk does."""
    result = infer(edge_fixture, "--save-jsonl", "/dev/full", "--overwrite")
    assert result.returncode == ExitCode.OUTPUT_ERROR, result.stderr
    assert "/dev/full" in result.stderr and "write failed" in result.stderr and "Traceback" not in result.stderr


def test_max_errors_counts_only_what_was_read(edge_fixture, tmp_path):
    """The probe's case: --max-errors 3 reported images: 20 for 6 read."""
    folder = tmp_path / "in"
    folder.mkdir()
    for name in ("a.png", "b.png", "c.png"):
        (folder / name).write_bytes(b"junk")
    for path in sorted((edge_fixture["category_dir"] / "test" / "good").glob("*.png"))[:17]:
        shutil.copy(path, folder / f"z_{path.name}")
    out = tmp_path / "records.jsonl"
    result = infer(edge_fixture, "--save-jsonl", out, "--max-errors", "3", "--batch-size", "2", inputs=folder)
    summary = summary_of(result)
    assert summary["images"] == len(lines(out)) == 3 and summary["errors"] == 3 and summary["stopped_early"]
    assert os.path.getsize(out) > 0


def test_a_file_name_that_is_not_utf8_gets_its_mask_and_overlay(edge_fixture, tmp_path):
    """The probe's case: a file name with a non-UTF-8 byte segfaulted the process (rc 139) when masks or
    overlays were saved. They are now encoded in memory and written by Python, which keeps the name's bytes."""
    folder = tmp_path / "in"
    folder.mkdir()
    source = sorted((edge_fixture["category_dir"] / "test" / "spot").glob("*.png"))[0]
    shutil.copy(source, os.fsencode(folder) + b"/bad\xffname.png")
    out = tmp_path / "records.jsonl"
    result = infer(edge_fixture, "--defects", "--save-masks", tmp_path / "m", "--save-overlays", tmp_path / "o",
                   "--save-jsonl", out, inputs=folder)
    assert result.returncode == ExitCode.OK, result.stderr
    [record] = lines(out)
    assert os.fsencode(record["defects"]["mask_path"]).endswith(b"bad\xffname_mask.png")
    assert os.path.getsize(record["defects"]["mask_path"]) > 0 and os.path.getsize(record["overlay_path"]) > 0
