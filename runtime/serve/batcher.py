"""Dynamic batching for one model version: concurrent requests' images are scored as one session batch on
the version's own thread, and each request gets its own slice back.

A batch starts with the oldest waiting request and takes the following ones, in arrival order, while
their images fit `max_batch_size` (a request larger than that is scored alone, in chunks). When fewer
images are waiting, the batch waits for more up to `max_queue_delay_s` after its first request arrived
(Triton's max_queue_delay; 0 = only what is already waiting: while the session runs, requests queue up
and form the next batch anyway). At most `max_queue` requests wait; one more is refused (QueueFull).
"""

from __future__ import annotations

import collections
import threading
import time
from concurrent.futures import Future
from dataclasses import dataclass
from typing import Callable

import numpy as np

from pyimgano.runtime.serve.errors import QueueFull


@dataclass(frozen=True)
class Scored:
    """One request's share of a batch."""

    scores: np.ndarray
    maps: list[np.ndarray]
    queue_seconds: float
    batch_images: int


@dataclass(frozen=True)
class BatchStats:
    images: int
    requests: int
    seconds: float


@dataclass
class _Item:
    images: list[np.ndarray]
    future: Future
    enqueued: float


class DynamicBatcher:
    def __init__(self, name: str, run: Callable[[list[np.ndarray]], tuple[np.ndarray, list[np.ndarray]]],
                 max_batch_size: int, max_queue_delay_s: float, max_queue: int,
                 observe: Callable[[BatchStats], None] = lambda stats: None):
        self.name = name
        self._run = run
        self.max_batch_size = max_batch_size
        self.max_queue_delay_s = max_queue_delay_s
        self.max_queue = max_queue
        self._observe = observe
        self._queue: collections.deque[_Item] = collections.deque()
        self._waiting_images = 0
        self._condition = threading.Condition()
        self._closed = False
        self._thread = threading.Thread(target=self._loop, name=f"batcher-{name}", daemon=True)
        self._thread.start()

    @property
    def queue_depth(self) -> int:
        return len(self._queue)

    def submit(self, images: list[np.ndarray]) -> Future:
        """A future of the request's Scored; QueueFull when `max_queue` requests are waiting already."""
        future: Future = Future()
        with self._condition:
            if self._closed:
                raise RuntimeError(f"batcher {self.name} is closed")
            if len(self._queue) >= self.max_queue:
                raise QueueFull(f"{self.name}: {len(self._queue)} requests are waiting already (--max-queue "
                                f"{self.max_queue}); retry later")
            self._queue.append(_Item(images, future, time.perf_counter()))
            self._waiting_images += len(images)
            self._condition.notify()
        return future

    def close(self) -> None:
        """Scores what is waiting, then stops the thread."""
        with self._condition:
            self._closed = True
            self._condition.notify()
        self._thread.join()

    def _take(self) -> list[_Item] | None:
        with self._condition:
            while not self._queue and not self._closed:
                self._condition.wait()
            if not self._queue:
                return None
            deadline = self._queue[0].enqueued + self.max_queue_delay_s
            while self._waiting_images < self.max_batch_size and not self._closed:
                remaining = deadline - time.perf_counter()
                if remaining <= 0:
                    break
                self._condition.wait(remaining)
            batch = [self._queue.popleft()]
            images = len(batch[0].images)
            while self._queue and images + len(self._queue[0].images) <= self.max_batch_size:
                batch.append(self._queue.popleft())
                images += len(batch[-1].images)
            self._waiting_images -= images
            return batch

    def _loop(self) -> None:
        while True:
            batch = self._take()
            if batch is None:
                return
            # A request that timed out while waiting was cancelled; it is not scored.
            live = [item for item in batch if item.future.set_running_or_notify_cancel()]
            if not live:
                continue
            images = [image for item in live for image in item.images]
            started = time.perf_counter()
            try:
                scores, maps = self._run(images)
            except Exception as exc:  # noqa: BLE001 - handed to every request of the batch, which reports it
                for item in live:
                    item.future.set_exception(exc)
                continue
            seconds = time.perf_counter() - started
            offset = 0
            for item in live:
                count = len(item.images)
                item.future.set_result(Scored(scores[offset : offset + count], maps[offset : offset + count],
                                              started - item.enqueued, len(images)))
                offset += count
            self._observe(BatchStats(images=len(images), requests=len(live), seconds=seconds))
