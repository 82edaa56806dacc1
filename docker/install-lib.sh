# Sourced by docker/install-*.sh. Pinned pip installs into the virtual environment of one interpreter,
# and a resolution-only mode that checks an image's pins without installing (the CUDA wheels of the GPU
# images are gigabytes; tests/test_docker_install.py uses it):
#
#   PYIMGANO_DRY_RUN=DIR   each step writes DIR/STEP.json (pip install --dry-run --report) resolved for the
#                          image's platform (CPython $IMAGE_PYTHON, manylinux x86_64); nothing is installed
#   PYIMGANO_PROJECT=DIR   the project to install (default: the folder above docker/)
set -euo pipefail

DOCKER_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
PROJECT_DIR="${PYIMGANO_PROJECT:-$(dirname "$DOCKER_DIR")}"
DRY_RUN="${PYIMGANO_DRY_RUN:-}"

die() { echo "$(basename "$0"): $*" >&2; exit 2; }

# The interpreter of the virtual environment to install into: the script's one argument. A system Python is
# refused, so that a mistyped path cannot replace the distribution's own packages.
target_python() {
  [ $# -eq 1 ] || die "usage: $(basename "$0") VENV/bin/python"
  PYTHON="$1"
  [ -x "$PYTHON" ] || die "$PYTHON: not an executable interpreter"
  if [ -z "$DRY_RUN" ]; then
    "$PYTHON" -c 'import sys; sys.exit(sys.prefix == sys.base_prefix)' \
      || die "$PYTHON: not a virtual environment's interpreter (create one with: python3 -m venv DIR)"
  else
    mkdir -p "$DRY_RUN"
  fi
}

# pip's platform flags for the image: exact tags only (pip does not widen --platform), so every manylinux
# tag a glibc 2.39 system (Ubuntu 24.04; Debian 12 has 2.36) accepts, newest first.
image_platform_flags() {
  local minor flags="--only-binary=:all: --implementation cp --python-version $IMAGE_PYTHON"
  for minor in $(seq 39 -1 17); do flags="$flags --platform manylinux_2_${minor}_x86_64"; done
  echo "$flags --platform manylinux2014_x86_64 --platform manylinux2010_x86_64 --platform manylinux1_x86_64"
}

# pinned_install STEP CONSTRAINTS PIP_ARGS...: one `pip install -c CONSTRAINTS`, or its dry run.
pinned_install() {
  local step="$1" constraints="$2"
  shift 2
  if [ -n "$DRY_RUN" ]; then
    # shellcheck disable=SC2046  # the flags are words
    "$PYTHON" -m pip install --quiet --dry-run --ignore-installed --report "$DRY_RUN/$step.json" \
      $(image_platform_flags) -c "$constraints" "$@"
  else
    "$PYTHON" -m pip install --quiet --no-input -c "$constraints" "$@"
  fi
}

# The project's requirements for these extras (docker/requirements.py), into the array REQUIREMENTS.
project_requirements() {
  local text
  text="$("$PYTHON" "$DOCKER_DIR/requirements.py" "$PROJECT_DIR/pyproject.toml" "$@")"
  mapfile -t REQUIREMENTS <<<"$text"
}

# The project itself, after its pinned dependencies: no dependency resolution of its own, built with the
# pinned setuptools (--no-build-isolation), so that nothing unpinned enters the environment.
install_project() {
  [ -n "$DRY_RUN" ] && return 0
  "$PYTHON" -m pip install --quiet --no-input --no-deps --no-build-isolation "$PROJECT_DIR"
}

is_dry_run() { [ -n "$DRY_RUN" ]; }
