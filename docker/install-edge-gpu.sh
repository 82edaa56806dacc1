#!/usr/bin/env bash
# The edge GPU image's Python packages (docker/Dockerfile.edge-gpu): as the edge CPU image, with
# onnxruntime-gpu (CUDA 13, cuDNN 9 from the base image) instead of onnxruntime, every version from
# constraints-edge-gpu.txt, no torch.
#   docker/install-edge-gpu.sh VENV/bin/python        (docker/install-lib.sh: PYIMGANO_DRY_RUN, PYIMGANO_PROJECT)
#
# onnxruntime and onnxruntime-gpu install the same `onnxruntime` package folder: with both installed, the
# one installed last wins, and uninstalling the other later deletes files the survivor needs. So the CPU build
# is never installed here: the project's requirements are installed with onnxruntime swapped for
# onnxruntime-gpu, then the project itself without dependency resolution. (pip check therefore reports
# pyimgano's `onnxruntime` requirement as missing; never `pip install pyimgano` with dependencies over this.)
source "$(dirname "${BASH_SOURCE[0]}")/install-lib.sh"
IMAGE_PYTHON=3.12
CONSTRAINTS="$DOCKER_DIR/constraints-edge-gpu.txt"
target_python "$@"

pinned_install 01-pip "$CONSTRAINTS" pip setuptools
project_requirements serve signing --swap onnxruntime=onnxruntime-gpu
pinned_install 02-requirements "$CONSTRAINTS" "${REQUIREMENTS[@]}"
install_project
is_dry_run && exit 0

"$PYTHON" -I - <<'PY'
import importlib.metadata, importlib.util, sys
import onnxruntime
try:
    importlib.metadata.distribution("onnxruntime")
    sys.exit("the CPU build of onnxruntime is installed beside onnxruntime-gpu")
except importlib.metadata.PackageNotFoundError:
    pass
# The providers a build has, known without a GPU (the build machine has none): CUDA must be among them.
if "CUDAExecutionProvider" not in onnxruntime.get_available_providers():
    sys.exit(f"onnxruntime has no CUDAExecutionProvider: {onnxruntime.get_available_providers()}")
if importlib.util.find_spec("torch"):
    sys.exit("torch is installed")
import pyimgano.cli.infer, cv2, cryptography, uvicorn  # noqa: E401,F401
PY
