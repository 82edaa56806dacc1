#!/bin/sh
# The images' entrypoint (docs/DOCKER.md).
#   serve ARGS...        pyimgano-serve ARGS (the KServe v2 / Triton-layout model server)
#   infer ARGS...        pyimgano-infer ARGS (score image files with a bundle)
#   healthcheck [URL]    exit 0 when URL (default the server's readiness) answers 200, else 1
#   anything else        run as a command (pyimgano-sign verify ..., pyimgano-train ..., sh)
set -eu
case "${1:-}" in
  serve) shift; exec pyimgano-serve "$@" ;;
  infer) shift; exec pyimgano-infer "$@" ;;
  healthcheck) shift; exec python "$(dirname "$0")/healthcheck.py" "$@" ;;
  "") echo "usage: serve ARGS | infer ARGS | healthcheck [URL] | COMMAND ARGS" >&2; exit 2 ;;
  *) exec "$@" ;;
esac
