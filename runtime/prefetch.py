"""Decoding ahead of the session: while one chunk of images is scored, the next chunk is being decoded in
worker threads (OpenCV's decoders and ONNX Runtime both release the GIL, so the two overlap on separate cores).
"""

from __future__ import annotations

import time
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Iterator

import numpy as np

from pyimgano.runtime.images import ImageLimits, ImageReadError, read_rgb

# Enough to keep a decoded chunk ready on small machines without holding more than one chunk ahead.
DECODE_WORKERS = 2


@dataclass(frozen=True)
class Decoded:
    path: Path
    image: np.ndarray | None  # None when the file could not be read
    error: str | None
    seconds: float


def decode(path: Path, limits: ImageLimits) -> Decoded:
    started = time.perf_counter()
    try:
        image = read_rgb(path, limits)
    except ImageReadError as exc:
        return Decoded(path, None, str(exc), time.perf_counter() - started)
    return Decoded(path, image, None, time.perf_counter() - started)


def decoded_chunks(chunks: Iterable[list[Path]], limits: ImageLimits,
                   workers: int = DECODE_WORKERS) -> Iterator[list[Decoded]]:
    """Each chunk decoded, in input order; chunk k+1 is decoded while the caller works on chunk k. A caller
    that stops early leaves at most one chunk decoded for nothing."""
    with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="pyimgano-decode") as pool:
        pending: list[Future] | None = None
        for chunk in chunks:
            submitted = [pool.submit(decode, path, limits) for path in chunk]
            if pending is not None:
                yield [future.result() for future in pending]
            pending = submitted
        if pending is not None:
            yield [future.result() for future in pending]
