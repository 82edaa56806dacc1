"""Shared fixtures. Nothing here imports torch at module level: the edge environment has none."""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path

import pytest

PROJECT_ROOT = Path(__file__).resolve().parents[1]
DATA_ROOT = (PROJECT_ROOT / ".." / "shared" / "data" / "defects").resolve()
HAS_TORCH = importlib.util.find_spec("torch") is not None


def require_data(category: str) -> Path:
    """The real dataset's category folder, or a clean skip where ../shared/data is absent."""
    path = DATA_ROOT / category
    if not (path / "train" / "good").is_dir():
        pytest.skip(f"real data not available at {path}")
    return path


@pytest.fixture(scope="session")
def edge_fixture(tmp_path_factory) -> dict:
    """A bundle trained on the synthetic dataset and the dataset itself.

    In the edge environment (no torch) `make test-edge` builds it with the workbench first and passes its
    location in PYIMGANO_EDGE_BUNDLE / PYIMGANO_EDGE_DATA; with torch present the fixture builds it here.
    """
    bundles = os.environ.get("PYIMGANO_EDGE_BUNDLE")
    data = os.environ.get("PYIMGANO_EDGE_DATA")
    if bundles and data:
        # Absolute: tests run commands from other folders (a fresh venv's, a server's).
        bundles, data = Path(bundles).resolve(), Path(data).resolve()
    elif HAS_TORCH:
        from pyimgano.demo import main as demo

        out = tmp_path_factory.mktemp("edge-fixture")
        assert demo(["--out", str(out), "--quiet", "--device", "cpu"]) == 0
        bundles, data = out / "bundles", out / "data"
    else:
        pytest.skip("no edge bundle: set PYIMGANO_EDGE_BUNDLE/PYIMGANO_EDGE_DATA (make test-edge does)")
    [bundle_dir] = [p for p in bundles.iterdir() if p.is_dir() and not p.name.startswith(".")]
    [category_dir] = [p for p in data.iterdir() if p.is_dir()]
    return {
        "bundle_dir": bundle_dir,
        "archive": bundle_dir.with_name(bundle_dir.name + ".zip"),
        "category_dir": category_dir,
    }


@pytest.fixture(scope="session")
def synthetic_dataset(tmp_path_factory) -> Path:
    """A small synthetic MVTec-layout dataset (category synthetic_texture, 12 train, 4 good and 4 per defect type
    in test, 128x128), made once per session; tests that change it copy it first."""
    from pyimgano.data.synthetic import SyntheticSpec, generate_dataset

    root = tmp_path_factory.mktemp("synthetic-data")
    generate_dataset(root, SyntheticSpec(n_train=12, n_test_good=4, n_test_per_defect=4, image_size=128))
    return root


def start_long_infer(bundle: Path, edge_fixture: dict, tmp_path: Path, images: int, env: dict | None = None):
    """A pyimgano-infer process over `images` copies of one good image, returned once its first record is on
    disk (its signal handling is installed by then): (process, the records file)."""
    import shutil
    import subprocess
    import sys
    import time

    folder = tmp_path / "many"
    folder.mkdir()
    source = sorted((edge_fixture["category_dir"] / "test" / "good").glob("*.png"))[0]
    for index in range(images):
        shutil.copy(source, folder / f"{index:04d}.png")
    out = tmp_path / "records.jsonl"
    process = subprocess.Popen([sys.executable, "-m", "pyimgano.cli.infer", "--bundle", str(bundle), "--input",
                                str(folder), "--save-jsonl", str(out), "--batch-size", "4"],
                               stderr=subprocess.PIPE, text=True, env=env)
    deadline = time.monotonic() + 120
    while (not out.exists() or not out.read_text()) and time.monotonic() < deadline:
        time.sleep(0.05)
    return process, out


@pytest.fixture(autouse=True)
def _reset_pyimgano_logging():
    """A command invoked in-process (CliRunner) configures logging onto its own captured stream; the next test
    starts from the library's unconfigured state."""
    yield
    from pyimgano.runtime import logs

    logs.reset()


def start_serve(python: str, repository: Path, log: Path, *flags: str, timeout_s: float = 90.0):
    """A pyimgano-serve process of `python`'s environment (run from the log's folder, so that the source tree
    in the working directory is not what it imports) over `repository` on a free loopback port, without a
    token: (process, port) once it logs `serving`."""
    import json
    import subprocess
    import time

    env = {key: value for key, value in os.environ.items() if key != "PYIMGANO_SERVE_TOKEN"}
    with open(log, "w") as handle:
        process = subprocess.Popen([python, "-m", "pyimgano.cli.serve", "--model-repository", str(repository),
                                    "--host", "127.0.0.1", "--port", "0", "--device", "cpu", *flags],
                                   stdout=subprocess.DEVNULL, stderr=handle, env=env, cwd=log.parent)
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        for line in log.read_text().splitlines():
            if line.startswith("{") and '"serving"' in line:
                return process, json.loads(line)["port"]
        if process.poll() is not None:
            pytest.fail(f"pyimgano-serve exited {process.returncode}: {log.read_text()}")
        time.sleep(0.05)
    process.kill()
    pytest.fail(f"pyimgano-serve did not start in {timeout_s} s: {log.read_text()}")
