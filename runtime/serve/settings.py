"""What one pyimgano-serve process is configured with: the CLI flags, typed, read by every part."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from pyimgano.runtime.images import DEFAULT_LIMITS, ImageLimits
from pyimgano.runtime.serve.repository import VersionPolicy
from pyimgano.runtime.signing import TrustedKeys


@dataclass(frozen=True)
class ServeSettings:
    repository: Path
    host: str = "127.0.0.1"
    port: int = 8000
    # Bearer token every endpoint but /v2/health/* requires; None = no authentication.
    token: str | None = None
    device: str = "auto"
    threads: int | None = None
    # Images per session batch (tiled bundles: model inputs, i.e. tiles, per session run).
    max_batch_size: int = 8
    # How long the first request of a batch waits for others to join it (Triton's max_queue_delay).
    max_queue_delay_s: float = 0.0
    # Requests waiting per model version (not counting the batch being scored); past it: 503.
    max_queue: int = 64
    request_timeout_s: float = 30.0
    max_request_bytes: int = 64 * 2**20
    limits: ImageLimits = DEFAULT_LIMITS
    # For models without a pyimgano.json of their own.
    version_policy: VersionPolicy = VersionPolicy()
    # Seconds between repository scans; 0 = scan once at start.
    poll_interval_s: float = 5.0
    # Ready only when every model in the repository has a ready version (Triton's default); else when one has.
    strict_readiness: bool = True
    # The Ed25519 keys one of which must have signed every bundle served; None = signatures not required.
    trusted_keys: TrustedKeys | None = None
    # Worker threads decoding requests and building responses, ahead of and behind the sessions.
    decode_workers: int = 2
