"""The container images without a Docker engine (none runs here or in CI).

- The Dockerfiles, read as Docker reads them: base images pinned by version and digest, every COPY source
  present and inside the build context (.dockerignore), the install script run, a non-root user, the
  health check, and the serve command's flags known to pyimgano-serve.
- The health check script against a real pyimgano-serve: 200 is healthy, 503 and no answer are not.
- `registry` (needs PyPI): docker/install-edge-cpu.sh run for real into a fresh virtual environment made of
  the files the Dockerfile copies, then pyimgano-infer and pyimgano-serve from it; the two GPU scripts
  resolved by pip (--dry-run, for the image's Python and platform: their CUDA wheels are gigabytes) to
  exactly their constraints files, with CUDA versions that match the base images.
"""

from __future__ import annotations

import fnmatch
import json
import os
import re
import shlex
import shutil
import signal
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from pyimgano.export.triton import write_triton_model

ROOT = Path(__file__).resolve().parents[1]
DOCKER = ROOT / "docker"
IMAGES = ("edge-cpu", "edge-gpu", "workbench-gpu")
SERVERS = ("edge-cpu", "edge-gpu")
READY_URL = "http://127.0.0.1:8000/v2/health/ready"
ENTRYPOINT = "/opt/pyimgano/libexec/entrypoint.sh"
INSTALL_TIMEOUT_S = 600


def canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def instructions(image: str) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) of a Dockerfile: continuation lines joined, comments dropped."""
    lines, joined = (DOCKER / f"Dockerfile.{image}").read_text(encoding="utf-8").splitlines(), []
    current = ""
    for line in lines:
        if not current and (not line.strip() or line.lstrip().startswith("#")):
            continue
        if line.rstrip().endswith("\\"):
            current += line.rstrip()[:-1] + " "
            continue
        joined.append(current + line)
        current = ""
    return [(text.split(None, 1)[0].upper(), text.split(None, 1)[1].strip()) for text in joined]


def exec_form(arguments: str) -> list[str]:
    value = json.loads(arguments)
    assert isinstance(value, list) and all(isinstance(item, str) for item in value), arguments
    return value


def constraints(image: str) -> dict[str, str]:
    pins = {}
    for line in (DOCKER / f"constraints-{image}.txt").read_text(encoding="utf-8").splitlines():
        if line.strip() and not line.startswith("#"):
            name, _, version = line.partition("==")
            assert version and canonical(name) not in pins, line
            pins[canonical(name)] = version
    return pins


def copies(image: str) -> list[tuple[list[str], str]]:
    """(sources, destination) of every COPY."""
    found = []
    for instruction, arguments in instructions(image):
        if instruction == "COPY":
            words = shlex.split(arguments)
            assert not any(word.startswith("--from") for word in words), "the images copy from the context only"
            found.append((words[:-1], words[-1]))
    return found


def in_build_context(path: str) -> bool:
    """Whether .dockerignore lets `path` into the build context (its last matching rule decides)."""
    included = True
    for rule in (ROOT / ".dockerignore").read_text(encoding="utf-8").splitlines():
        rule = rule.strip()
        if not rule or rule.startswith("#"):
            continue
        negate, pattern = rule.startswith("!"), rule.lstrip("!").rstrip("/")
        if fnmatch.fnmatch(path, pattern) or fnmatch.fnmatch(path.split("/")[0], pattern):
            included = negate
    return included


@pytest.mark.parametrize("image", IMAGES)
def test_dockerfile_is_pinned_runs_its_script_and_drops_root(image):
    steps = instructions(image)
    [base] = [arguments for instruction, arguments in steps if instruction == "FROM"]
    match = re.fullmatch(r"([\w./-]+):([\w.-]+)@sha256:([0-9a-f]{64})", base)
    assert match, f"base image {base!r} is not pinned as NAME:TAG@sha256:DIGEST"
    assert re.search(r"\d+\.\d+\.\d+", match.group(2)), f"tag {match.group(2)!r} is not an exact version"
    for sources, destination in copies(image):
        for source in sources:
            assert (ROOT / source).exists(), f"COPY {source}: no such file or folder"
            assert in_build_context(source), f"COPY {source}: excluded from the build context by .dockerignore"
        assert destination.startswith("/src/")
    copied = {source for sources, _ in copies(image) for source in sources}
    assert {"pyproject.toml", "pyimgano", "runtime", "export", "docker"} <= copied
    runs = " ".join(arguments for instruction, arguments in steps if instruction == "RUN")
    script = f"install-{image}.sh"
    assert f"bash /src/docker/{script} /opt/pyimgano/bin/python" in runs
    assert (DOCKER / script).is_file() and (DOCKER / f"constraints-{image}.txt").is_file()
    assert f"/src/docker/entrypoint.sh {ENTRYPOINT}" in runs and "useradd --system --uid 10001" in runs
    # The last USER is the one the container runs as; it comes after the last RUN.
    users = [index for index, (instruction, _) in enumerate(steps) if instruction == "USER"]
    last_run = max(index for index, (instruction, _) in enumerate(steps) if instruction == "RUN")
    assert users and users[-1] > last_run
    user = steps[users[-1]][1].split(":")[0]
    assert user not in ("root", "0") and user.isdigit(), f"USER {user}: not a non-root numeric uid"
    [entrypoint] = [exec_form(arguments) for instruction, arguments in steps if instruction == "ENTRYPOINT"]
    assert entrypoint == [ENTRYPOINT]
    [health] = [arguments for instruction, arguments in steps if instruction == "HEALTHCHECK"]
    if image in SERVERS:
        assert exec_form(health.split("CMD", 1)[1]) == [ENTRYPOINT, "healthcheck", READY_URL]
        assert ("EXPOSE", "8000") in steps
    else:
        assert health == "NONE"


def test_gpu_bases_are_the_cuda_the_pins_need():
    """CUDA 13 with cuDNN for onnxruntime-gpu (which PyPI builds for CUDA 13 from 1.27 on), the bare CUDA 13.0
    base for the workbench (torch's wheels bring their own CUDA libraries and cuDNN)."""
    [edge] = [a for i, a in instructions("edge-gpu") if i == "FROM"]
    [workbench] = [a for i, a in instructions("workbench-gpu") if i == "FROM"]
    assert re.match(r"nvidia/cuda:13\.\d+\.\d+-cudnn-runtime-ubuntu24\.04@", edge)
    assert re.match(r"nvidia/cuda:13\.0\.\d+-base-ubuntu24\.04@", workbench)
    assert constraints("edge-gpu")["onnxruntime-gpu"] and "onnxruntime" not in constraints("edge-gpu")
    assert "torch" not in constraints("edge-gpu") and "torch" not in constraints("edge-cpu")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def healthcheck(url: str, python_dir: Path) -> subprocess.CompletedProcess:
    """The image's HEALTHCHECK command: the entrypoint's `healthcheck`, with `python` from python_dir."""
    env = {**os.environ, "PATH": f"{python_dir}{os.pathsep}{os.environ['PATH']}"}
    return subprocess.run(["sh", str(DOCKER / "entrypoint.sh"), "healthcheck", url], capture_output=True, text=True,
                          env=env, timeout=60)


def triton_repository(edge_fixture: dict, root: Path, tampered: bool = False) -> Path:
    model = write_triton_model(edge_fixture["bundle_dir"], root)
    if tampered:
        onnx = model.version_dir / "model.onnx"
        data = bytearray(onnx.read_bytes())
        data[len(data) // 2] ^= 0xFF
        onnx.write_bytes(bytes(data))
    return root


def stop(process: subprocess.Popen) -> None:
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
    process.wait(timeout=60)


def test_healthcheck_is_healthy_only_when_the_server_is_ready(edge_fixture, tmp_path):
    import importlib.util

    if importlib.util.find_spec("pyimgano.cli.serve") is None:
        pytest.skip("pyimgano-serve (pyimgano.cli.serve) cannot be imported yet")
    from conftest import start_serve

    python_dir = Path(sys.executable).parent
    closed = healthcheck(f"http://127.0.0.1:{free_port()}/v2/health/ready", python_dir)
    assert closed.returncode == 1 and "unhealthy" in closed.stderr and "Traceback" not in closed.stderr
    good = triton_repository(edge_fixture, tmp_path / "good")
    bad = triton_repository(edge_fixture, tmp_path / "bad", tampered=True)
    for repository, code in ((good, 0), (bad, 1)):
        (tmp_path / repository.name).mkdir(exist_ok=True)
        process, port = start_serve(sys.executable, repository, tmp_path / repository.name / "serve.log")
        try:
            result = healthcheck(f"http://127.0.0.1:{port}/v2/health/ready", python_dir)
        finally:
            stop(process)
        assert result.returncode == code, result.stderr
        if code:  # the refused bundle keeps the server unready, which the check reports by status
            assert "answered 503" in result.stderr


def dry_run(image: str, tmp_path: Path) -> dict[str, dict]:
    """The script's pip steps resolved, not installed: {canonical name: pip's report entry}."""
    reports = tmp_path / f"dry-run-{image}"
    result = subprocess.run(["bash", str(DOCKER / f"install-{image}.sh"), sys.executable], capture_output=True,
                            text=True, timeout=INSTALL_TIMEOUT_S, env={**os.environ, "PYIMGANO_DRY_RUN": str(reports)})
    assert result.returncode == 0, result.stderr[-4000:]
    resolved = {}
    for report in sorted(reports.glob("*.json")):
        for entry in json.loads(report.read_text(encoding="utf-8"))["install"]:
            resolved[canonical(entry["metadata"]["name"])] = entry
    return resolved


def requires(entry: dict, prefix: str) -> list[str]:
    return [r for r in entry["metadata"].get("requires_dist", []) if canonical(r).startswith(prefix)]


@pytest.mark.registry
@pytest.mark.parametrize("image", ["edge-gpu", "workbench-gpu"])
def test_gpu_image_pins_resolve_to_exactly_its_constraints(image, tmp_path):
    resolved = dry_run(image, tmp_path)
    versions = {name: entry["metadata"]["version"] for name, entry in resolved.items()}
    # Every package the image gets is pinned, and every pin is used (a stale one would hide a change).
    assert versions == constraints(image)
    assert all(entry["download_info"]["url"].endswith(".whl") for entry in resolved.values())
    if image == "edge-gpu":
        assert "onnxruntime" not in resolved and "torch" not in resolved
        ort = resolved["onnxruntime-gpu"]
        # The wheel's own CUDA extras say which CUDA and cuDNN it was built for: the base image's.
        assert any(re.search(r"nvidia-cuda-runtime(-cu13)?~=13\.", r) for r in requires(ort, "nvidia-cuda-runtime"))
        assert any("~=9." in r for r in requires(ort, "nvidia-cudnn-cu13"))
    else:
        torch = resolved["torch"]
        [toolkit] = requires(torch, "cuda-toolkit")
        [base] = [a for i, a in instructions("workbench-gpu") if i == "FROM"]
        cuda = re.match(r"nvidia/cuda:(\d+\.\d+\.\d+)-", base).group(1)
        assert toolkit.split(";")[0].endswith(f"=={cuda}"), (toolkit, base)  # torch's CUDA is the base's
        assert "nvidia-cudnn-cu13" in resolved and "onnxruntime" in resolved


# ------------------------------------------------------------------ the edge CPU image, installed for real
@pytest.fixture(scope="module")
def edge_cpu_venv(tmp_path_factory) -> dict[str, Path]:
    """What Dockerfile.edge-cpu does, outside Docker: the files it COPYs laid out under an image root, a
    fresh `python -m venv`, and docker/install-edge-cpu.sh run into it from the copied files."""
    image = tmp_path_factory.mktemp("edge-cpu-image")
    for sources, destination in copies("edge-cpu"):
        target = image / destination.lstrip("/")
        for source in sources:
            path = ROOT / source
            into = target / path.name if destination.endswith("/") else target
            if path.is_dir():
                shutil.copytree(path, into, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
            else:
                into.parent.mkdir(parents=True, exist_ok=True)
                shutil.copyfile(path, into)
    venv = image / "opt" / "pyimgano"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=300)
    result = subprocess.run(["bash", str(image / "src" / "docker" / "install-edge-cpu.sh"), str(venv / "bin" / "python")],
                            capture_output=True, text=True, timeout=INSTALL_TIMEOUT_S, cwd=image)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-4000:]
    return {"image": image, "venv": venv, "bin": venv / "bin"}


def in_venv(venv: dict, *command: str, cwd: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "PATH": f"{venv['bin']}{os.pathsep}{os.environ['PATH']}"}
    env.pop("PYTHONPATH", None)
    return subprocess.run(list(command), capture_output=True, text=True, env=env, cwd=cwd, timeout=300)


@pytest.mark.registry
def test_edge_cpu_install_is_exactly_its_constraints_and_has_no_torch(edge_cpu_venv, tmp_path):
    listed = in_venv(edge_cpu_venv, "python", "-m", "pip", "list", "--format", "json", cwd=tmp_path)
    assert listed.returncode == 0, listed.stderr
    installed = {canonical(p["name"]): p["version"] for p in json.loads(listed.stdout)}
    assert installed.pop("pyimgano") == "0.1.0"
    assert installed == constraints("edge-cpu")
    probe = in_venv(edge_cpu_venv, "python", "-c", "import torch", cwd=tmp_path)
    assert probe.returncode == 1 and "No module named 'torch'" in probe.stderr
    where = in_venv(edge_cpu_venv, "python", "-c", "import pyimgano.runtime.engine as e; print(e.__file__)", cwd=tmp_path)
    assert Path(where.stdout.strip()).is_relative_to(edge_cpu_venv["venv"])  # installed, not the source tree


@pytest.mark.registry
def test_edge_cpu_install_scores_through_the_entrypoint(edge_cpu_venv, edge_fixture, tmp_path):
    from pyimgano.runtime.bundle import open_bundle
    from pyimgano.runtime.engine import Engine
    from pyimgano.runtime.images import read_rgb, to_contract

    test = edge_fixture["category_dir"] / "test"
    images = sorted((test / "good").glob("*.png"))[:2] + sorted(p for p in test.rglob("*.png") if p.parent.name != "good")[:2]
    folder = tmp_path / "images"
    folder.mkdir()
    for index, path in enumerate(images):
        shutil.copyfile(path, folder / f"{index}.png")
    out = tmp_path / "records.jsonl"
    result = in_venv(edge_cpu_venv, "sh", str(edge_cpu_venv["image"] / "src" / "docker" / "entrypoint.sh"), "infer",
                     "--bundle", str(edge_fixture["archive"]), "--input", str(folder), "--save-jsonl", str(out),
                     cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    records = sorted((json.loads(line) for line in out.read_text().splitlines()), key=lambda r: r["input"])
    bundle = open_bundle(edge_fixture["bundle_dir"])
    batch = np.stack([to_contract(read_rgb(path), bundle.context.steps.contract) for path in images])
    expected, _ = Engine(bundle, device="cpu").score_batch(batch)
    # The image's ONNX Runtime is the pinned one, the same as here: the same scores.
    np.testing.assert_allclose([r["score"] for r in records], expected, rtol=1e-6)
    assert [r["label"] for r in records] == [0, 0, 1, 1]


@pytest.mark.registry
def test_edge_cpu_install_serves_with_the_dockerfile_command(edge_cpu_venv, edge_fixture, tmp_path):
    if not (ROOT / "pyimgano" / "cli" / "serve.py").is_file():
        pytest.skip("pyimgano-serve (pyimgano.cli.serve) cannot be imported yet")
    from conftest import start_serve

    helped = in_venv(edge_cpu_venv, "pyimgano-serve", "--help", cwd=tmp_path)
    assert helped.returncode == 0, helped.stderr
    for image in SERVERS:
        [command] = [exec_form(a) for i, a in instructions(image) if i == "CMD"]
        assert command[0] == "serve"
        for flag in (word for word in command[1:] if word.startswith("--")):
            assert flag in helped.stdout, f"Dockerfile.{image} CMD passes {flag}, which pyimgano-serve does not take"
    # The image's own server over a Triton-layout repository passes the image's own health check.
    repository = triton_repository(edge_fixture, tmp_path / "models")
    process, port = start_serve(str(edge_cpu_venv["bin"] / "python"), repository, tmp_path / "serve.log")
    try:
        result = healthcheck(f"http://127.0.0.1:{port}/v2/health/ready", edge_cpu_venv["bin"])
    finally:
        stop(process)
    assert result.returncode == 0, result.stderr
