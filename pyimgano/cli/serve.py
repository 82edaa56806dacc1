"""pyimgano-serve: the line service, a resident KServe v2 / Open Inference Protocol server over a model
repository of bundles (docs/SERVING.md). Exit codes: pyimgano.cli.errors."""

from __future__ import annotations

import logging
import os
import socket
from pathlib import Path

import click

from pyimgano.cli.errors import UsageError, run_program
from pyimgano.cli.log_flags import logging_options
from pyimgano.cli.signals import RecordSignals
from pyimgano.runtime.engine import DEVICES, select_providers
from pyimgano.runtime.exit_codes import ExitCode
from pyimgano.runtime.images import ImageLimits
from pyimgano.runtime.serve.repository import PolicyError, VersionPolicy
from pyimgano.runtime.serve.settings import ServeSettings
from pyimgano.runtime.signing import TRUSTED_KEYS_ENV, load_trusted_keys

TOKEN_ENV = "PYIMGANO_SERVE_TOKEN"
SERVE_EXTRA = ("uvicorn", "starlette", "prometheus_client")
# The defaults are the settings record's own.
DEFAULTS = ServeSettings(repository=Path("."))


def read_token(token_file: Path | None) -> str | None:
    """The bearer token from --token-file or PYIMGANO_SERVE_TOKEN (not both); None = no authentication."""
    from_env = os.environ.get(TOKEN_ENV)
    if token_file is not None and from_env is not None:
        raise UsageError(f"--token-file and {TOKEN_ENV} are both given; give the token once")
    if token_file is not None:
        try:
            token, source = token_file.read_text(encoding="utf-8").strip(), f"--token-file {token_file}"
        except (OSError, UnicodeDecodeError) as exc:
            raise UsageError(f"--token-file {token_file}: cannot read it ({exc})") from exc
    elif from_env is not None:
        token, source = from_env.strip(), TOKEN_ENV
    else:
        return None
    if not token or any(char.isspace() for char in token):
        raise UsageError(f"{source}: the token must be one non-empty word (no spaces)")
    return token


def bind(host: str, port: int) -> socket.socket:
    """The listening socket, bound before any model is opened, so a port in use fails at once (exit 2)."""
    try:
        family, kind, proto, _, address = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM,
                                                             flags=socket.AI_PASSIVE)[0]
    except socket.gaierror as exc:
        raise UsageError(f"--host {host}: cannot resolve it ({exc.strerror})") from exc
    sock = socket.socket(family, kind, proto)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind(address)
    except OSError as exc:
        sock.close()
        raise UsageError(f"--host {host} --port {port}: cannot listen there ({exc.strerror or exc})") from exc
    return sock


@click.command(context_settings={"help_option_names": ["-h", "--help"]})
@logging_options
@click.option("--model-repository", "repository", required=True,
              type=click.Path(exists=True, file_okay=False, path_type=Path),
              help="Folder of models in Triton's layout: MODEL/VERSION/ holding a bundle (docs/SERVING.md).")
@click.option("--host", default=DEFAULTS.host, show_default=True,
              help="Address to listen on: loopback unless told otherwise (0.0.0.0 = every interface; then give a "
                   "token).")
@click.option("--port", type=click.IntRange(0, 65535), default=DEFAULTS.port, show_default=True,
              help="TCP port; 0 picks a free one (the `serving` log line names it).")
@click.option("--token-file", type=click.Path(exists=True, dir_okay=False, path_type=Path),
              help=f"Require `Authorization: Bearer <token>` (the file's one line) on every endpoint but "
                   f"/v2/health/*; or set {TOKEN_ENV}.")
@click.option("--trusted-keys", type=click.Path(exists=True, path_type=Path), envvar=TRUSTED_KEYS_ENV,
              show_envvar=True,
              help="Serve only bundles signed by one of these Ed25519 public keys (a file of keys or a folder of "
                   "*.pub files, as pyimgano-infer --trusted-keys); others are refused and say why.")
@click.option("--device", type=click.Choice(DEVICES), default=DEFAULTS.device, show_default=True,
              help="auto uses CUDA when available, else the CPU.")
@click.option("--threads", type=click.IntRange(min=1), default=None, help="ONNX Runtime intra-op threads per session.")
@click.option("--max-batch-size", type=click.IntRange(min=1), default=DEFAULTS.max_batch_size, show_default=True,
              help="Images per session batch, gathered from concurrent requests (tiling bundles: tiles).")
@click.option("--max-queue-delay-ms", type=click.FloatRange(min=0.0), default=DEFAULTS.max_queue_delay_s * 1000,
              show_default=True,
              help="How long a batch's first request waits for others to join it (0 = only those already waiting).")
@click.option("--max-queue", type=click.IntRange(min=1), default=DEFAULTS.max_queue, show_default=True,
              help="Requests waiting per model version; one more is answered 503 with Retry-After.")
@click.option("--request-timeout-s", type=click.FloatRange(min=0.0, min_open=True), default=DEFAULTS.request_timeout_s,
              show_default=True,
              help="A request without its result by then is answered 504.")
@click.option("--max-request-bytes", type=click.IntRange(min=1), default=DEFAULTS.max_request_bytes,
              show_default=True, help="A larger request body (after decompression) is answered 413.")
@click.option("--max-image-bytes", type=click.IntRange(min=1), default=DEFAULTS.limits.max_bytes, show_default=True,
              help="A larger encoded image is answered 413, not decoded.")
@click.option("--max-image-pixels", type=click.IntRange(min=1), default=DEFAULTS.limits.max_pixels, show_default=True,
              help="An image with more pixels (as its header states, or a raw tensor's H x W) is answered 413.")
@click.option("--version-policy", default=DEFAULTS.version_policy.describe(), show_default=True,
              help="Which version folders are served, for models without a pyimgano.json: latest:N, all, or "
                   "specific:V1,V2.")
@click.option("--poll-interval-s", type=click.FloatRange(min=0.0), default=DEFAULTS.poll_interval_s, show_default=True,
              help="Scan the repository this often for new, changed and removed versions (0 = only at start).")
@click.option("--strict-readiness/--no-strict-readiness", default=DEFAULTS.strict_readiness, show_default=True,
              help="/v2/health/ready only when every model has a ready version (else: when one has).")
@click.option("--decode-workers", type=click.IntRange(min=1), default=DEFAULTS.decode_workers, show_default=True,
              help="Threads that parse and decode requests ahead of the sessions and build the responses.")
def main(**flags):
    """Serve a model repository of bundles over the KServe v2 / Open Inference Protocol (HTTP/REST)."""
    run_program(lambda: program(**flags))


def program(repository, host, port, token_file, trusted_keys, device, threads, max_batch_size, max_queue_delay_ms,
            max_queue, request_timeout_s, max_request_bytes, max_image_bytes, max_image_pixels, version_policy,
            poll_interval_s, strict_readiness, decode_workers) -> ExitCode:
    # Imported here: the other console scripts must not need the `serve` extra.
    try:
        import uvicorn

        from pyimgano.runtime.serve.app import create_app
    except ModuleNotFoundError as exc:
        if exc.name not in SERVE_EXTRA:
            raise
        raise UsageError(f"pyimgano-serve needs the `serve` extra ({exc.name} is not installed): "
                         "pip install 'pyimgano[serve]'") from exc
    from pyimgano.runtime.serve import logs

    try:
        policy = VersionPolicy.parse_flag(version_policy)
    except PolicyError as exc:
        raise UsageError(f"--version-policy: {exc}") from exc
    select_providers(device)  # an unavailable device fails here (exit 2), not once per model
    settings = ServeSettings(
        repository=repository, host=host, port=port, token=read_token(token_file), device=device, threads=threads,
        max_batch_size=max_batch_size, max_queue_delay_s=max_queue_delay_ms / 1000.0, max_queue=max_queue,
        request_timeout_s=request_timeout_s, max_request_bytes=max_request_bytes,
        limits=ImageLimits(max_bytes=max_image_bytes, max_pixels=max_image_pixels), version_policy=policy,
        poll_interval_s=poll_interval_s, strict_readiness=strict_readiness,
        trusted_keys=load_trusted_keys(trusted_keys) if trusted_keys is not None else None,
        decode_workers=decode_workers,
    )
    # The server logs JSON lines whatever --log-json says; --quiet / --verbose set the level, as elsewhere.
    logs.configure(logging.getLogger("pyimgano").level or logging.INFO)
    sock = bind(host, port)
    bound_host, bound_port = sock.getsockname()[:2]

    def serving(registry) -> None:
        ready, why = registry.ready()
        logs.event("serving", host=bound_host, port=bound_port, repository=str(repository),
                   authentication="bearer token" if settings.token else "none",
                   trusted_keys=str(trusted_keys) if trusted_keys else None, ready=ready,
                   **({"why": why} if why else {}))

    app = create_app(settings, on_serving=serving)
    config = uvicorn.Config(app, log_config=None, access_log=False, lifespan="on",
                            # Draining waits for the requests in flight, each bounded by the request timeout.
                            timeout_graceful_shutdown=int(request_timeout_s) + 5)
    # uvicorn answers SIGTERM and SIGINT by draining (no new connections; the requests in flight finish), then
    # raises the signal again; recording it lets the drained server exit 0 instead of 143/130.
    drain = RecordSignals()
    with drain:
        uvicorn.Server(config).run(sockets=[sock])
    logs.event("exited", signal=drain.signal_name)
    return ExitCode.OK


if __name__ == "__main__":
    main()
