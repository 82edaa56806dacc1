#!/usr/bin/env bash
# The edge CPU image's Python packages (docker/Dockerfile.edge-cpu): pyimgano with its `serve` and `signing`
# extras on ONNX Runtime CPU, every version from constraints-edge-cpu.txt, no torch.
#   docker/install-edge-cpu.sh VENV/bin/python        (docker/install-lib.sh: PYIMGANO_DRY_RUN, PYIMGANO_PROJECT)
source "$(dirname "${BASH_SOURCE[0]}")/install-lib.sh"
IMAGE_PYTHON=3.11
CONSTRAINTS="$DOCKER_DIR/constraints-edge-cpu.txt"
target_python "$@"

pinned_install 01-pip "$CONSTRAINTS" pip setuptools
project_requirements serve signing
pinned_install 02-requirements "$CONSTRAINTS" "${REQUIREMENTS[@]}"
install_project
is_dry_run && exit 0

"$PYTHON" -m pip check
# The edge stays slim: a dependency that pulled torch in would fail the build here, not on the line.
"$PYTHON" -I -c 'import importlib.util, sys; sys.exit("torch is installed" if importlib.util.find_spec("torch") else 0)'
"$PYTHON" -I -c 'import pyimgano.cli.infer, onnxruntime, cv2, cryptography, uvicorn'
