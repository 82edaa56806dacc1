"""The model versions being served: opened from the repository, kept in step with it while running, and
handed to requests.

Every poll scans the repository (runtime/serve/repository.py). A version folder that is new, or whose
files changed, is opened once its files are the same on two scans in a row (so a bundle being copied in
is not opened half-written; at start, at once); a version whose folder is removed stops being served at
once, and one its policy no longer selects (version 1 once version 2 arrives, under latest:1) once the
versions displacing it have opened (or been refused), so that a deployment leaves no gap. Opening
verifies the bundle (`open_bundle`); one that fails is refused, not served, and says why on its ready
endpoint, in the repository index and in the log, while the other versions and models keep serving. A
changed version that no longer verifies stops being served (what is served is what is on disk).

A request holds its version (a reference) from routing to response: a version removed or replaced
meanwhile stays open until its last request has finished, on the session it started on.
"""

from __future__ import annotations

import dataclasses
import logging
import threading
from dataclasses import dataclass, field

import numpy as np

from pyimgano.runtime.bundle import Bundle, BundleError, open_bundle
from pyimgano.runtime.context import ContextError, ScoringContext
from pyimgano.runtime.defects import DefectsConfig
from pyimgano.runtime.engine import Engine, EngineError
from pyimgano.runtime.serve import logs
from pyimgano.runtime.serve.batcher import BatchStats, DynamicBatcher
from pyimgano.runtime.serve.errors import NotFound, Unavailable
from pyimgano.runtime.serve.metrics import ServeMetrics
from pyimgano.runtime.serve.repository import VERSION_NAME, ModelSource, VersionSource, scan_repository
from pyimgano.runtime.serve.settings import ServeSettings


@dataclass(eq=False)
class ServedVersion:
    model: str
    version: int
    source: VersionSource
    bundle: Bundle
    engine: Engine
    batcher: DynamicBatcher
    # The bundle's defect settings, for requests that ask for defects, and the pixel threshold they use;
    # `defects_problem` says why a bundle cannot extract defects (its pixel strategy lacks its table).
    defects: DefectsConfig
    pixel_threshold: float | None
    defects_problem: str | None
    refs: int = 0
    retired: bool = False

    @property
    def label(self) -> str:
        return str(self.version)

    @property
    def context(self) -> ScoringContext:
        return self.bundle.context

    @property
    def input_name(self) -> str:
        return self.bundle.manifest.onnx.input

    @property
    def origin(self) -> str:
        return self.bundle.origin.describe()


@dataclass(frozen=True)
class Refusal:
    reason: str
    fingerprint: tuple


@dataclass
class _Model:
    source: ModelSource
    served: dict[int, ServedVersion] = field(default_factory=dict)
    refused: dict[int, Refusal] = field(default_factory=dict)
    # Versions seen new or changed, waiting for their files to settle: version -> fingerprint.
    pending: dict[int, tuple] = field(default_factory=dict)


class Registry:
    def __init__(self, settings: ServeSettings, metrics: ServeMetrics):
        self.settings = settings
        self.metrics = metrics
        self._lock = threading.Lock()
        self._models: dict[str, _Model] = {}
        self._seen: dict[tuple[str, int], tuple] = {}
        self._scanned = False
        self._stop = threading.Event()
        self._poller: threading.Thread | None = None

    # ------------------------------------------------------------------ requests
    def knows(self, model: str) -> bool:
        with self._lock:
            return model in self._models

    def _find(self, model: str, version: str | None) -> ServedVersion:
        entry = self._models.get(model)
        if entry is None:
            raise NotFound(f"unknown model {model!r}")
        if version is None:
            if entry.served:
                return entry.served[max(entry.served)]
            raise Unavailable(f"model {model!r} has no ready version: {self._why(entry)}", reason="not_ready")
        if not VERSION_NAME.fullmatch(version):
            raise NotFound(f"model {model!r} has no version {version!r} (versions are positive integers)")
        number = int(version)
        if number in entry.served:
            return entry.served[number]
        if number in entry.refused:
            raise Unavailable(f"model {model!r} version {number} is not served: {entry.refused[number].reason}",
                              reason="not_ready")
        if number in entry.pending:
            raise Unavailable(f"model {model!r} version {number} is being loaded", reason="not_ready")
        served = ", ".join(str(v) for v in sorted(entry.served)) or "none"
        raise NotFound(f"model {model!r} has no version {number} (served versions: {served})")

    def _why(self, entry: _Model) -> str:
        if entry.source.problem:
            return entry.source.problem
        reasons = [f"version {v}: {refusal.reason}" for v, refusal in sorted(entry.refused.items())]
        reasons += [f"version {v}: being loaded" for v in sorted(entry.pending)]
        return "; ".join(reasons) or "no version folder in the repository (or none its version policy selects)"

    def find(self, model: str, version: str | None) -> ServedVersion:
        """The version a request for (model, version) goes to; NotFound, or Unavailable saying why not."""
        with self._lock:
            return self._find(model, version)

    def acquire(self, model: str, version: str | None) -> ServedVersion:
        """As find, holding the version open until `release`."""
        with self._lock:
            served = self._find(model, version)
            served.refs += 1
            return served

    def release(self, served: ServedVersion) -> None:
        with self._lock:
            served.refs -= 1
            close = served.retired and served.refs == 0
        if close:
            self._close(served)

    def versions(self, model: str) -> list[str]:
        with self._lock:
            entry = self._models.get(model)
            return [str(v) for v in sorted(entry.served)] if entry else []

    def ready(self) -> tuple[bool, str]:
        """Whether the server is ready for inference, and if not, why."""
        with self._lock:
            if not self._scanned:
                return False, "the model repository has not been scanned yet"
            unready = {name: self._why(entry) for name, entry in sorted(self._models.items()) if not entry.served}
            if len(unready) == len(self._models):
                return False, "no model version is ready" + "".join(f"; {n}: {why}" for n, why in unready.items())
            if self.settings.strict_readiness and unready:
                return False, "; ".join(f"model {n!r} has no ready version: {why}" for n, why in unready.items())
            return True, ""

    def index(self, ready_only: bool = False) -> list[dict]:
        """Triton's repository index: one entry per model version (state READY, UNAVAILABLE or LOADING)."""
        entries = []
        with self._lock:
            for name, entry in sorted(self._models.items()):
                if entry.source.problem:
                    entries.append({"name": name, "state": "UNAVAILABLE", "reason": entry.source.problem})
                    continue
                states = {v: ("READY", "") for v in entry.served}
                states.update({v: ("UNAVAILABLE", r.reason) for v, r in entry.refused.items()})
                states.update({v: ("LOADING", "waiting for its files to settle") for v in entry.pending
                               if v not in states})
                for version, (state, reason) in sorted(states.items()):
                    entries.append({"name": name, "version": str(version), "state": state, "reason": reason})
        return [entry for entry in entries if entry["state"] == "READY"] if ready_only else entries

    # ------------------------------------------------------------------ repository
    def poll(self) -> None:
        """One scan of the repository, and the versions opened, refused or retired that it calls for."""
        try:
            sources = scan_repository(self.settings.repository, self.settings.version_policy)
        except OSError as exc:
            # The folders may be mid-change (an NFS hiccup, a folder replaced): keep serving, look again.
            logs.event("repository_unreadable", logging.ERROR, repository=str(self.settings.repository),
                       error=str(exc))
            return
        first = not self._scanned
        for name, source in sources.items():
            self._apply(name, source, first)
        for name in sorted(set(self._models) - set(sources)):
            with self._lock:
                entry = self._models.pop(name)
            for served in list(entry.served.values()):
                self._retire(entry, served, "model folder removed from the repository", forget=True)
            for version in entry.refused:
                self.metrics.forget(name, str(version))
        self._seen = {(name, version): vs.fingerprint for name, source in sources.items()
                      for version, vs in source.versions.items()}
        with self._lock:
            self._scanned = True

    def _apply(self, name: str, source: ModelSource, first: bool) -> None:
        with self._lock:
            entry = self._models.get(name)
            previous = entry.source if entry else None
            if entry is None:
                entry = self._models[name] = _Model(source)
        if previous is None or previous.notes != source.notes:
            for note in source.notes:
                logs.event("repository_note", model=name, note=note)
        if source.problem:
            if previous is None or previous.problem != source.problem:
                logs.event("model_refused", logging.ERROR, model=name, reason=source.problem)
            for served in list(entry.served.values()):
                self._retire(entry, served, source.problem, forget=True)
            with self._lock:
                entry.refused, entry.pending, entry.source = {}, {}, source
            return
        with self._lock:
            for version in [v for v in entry.refused if v not in source.versions]:
                del entry.refused[version]
                self.metrics.forget(name, str(version))
            entry.pending = {v: f for v, f in entry.pending.items() if v in source.versions}
            entry.source = source
        for version, found in sorted(source.versions.items()):
            current = entry.served.get(version)
            if current is not None and current.source.fingerprint == found.fingerprint:
                continue
            refusal = entry.refused.get(version)
            if refusal is not None and refusal.fingerprint == found.fingerprint:
                continue
            if not first and self._seen.get((name, version)) != found.fingerprint:
                with self._lock:
                    entry.pending[version] = found.fingerprint
                continue
            outcome = self._open(name, found)
            with self._lock:
                entry.pending.pop(version, None)
                if isinstance(outcome, ServedVersion):
                    entry.served[version] = outcome
                    entry.refused.pop(version, None)
                else:
                    entry.refused[version] = outcome
                    entry.served.pop(version, None)
            if current is not None:
                self._retire(entry, current, "replaced by the version folder's new files", forget=False)
        for version, served in list(entry.served.items()):
            if version in source.versions:
                continue
            if version not in source.present:
                self._retire(entry, served, "version folder removed from the repository", forget=True)
            elif not entry.pending:
                # Kept until the versions that displace it have settled and opened: no gap in service.
                self._retire(entry, served, f"no longer selected by the version policy ({source.policy.describe()})",
                             forget=True)

    def _open(self, name: str, found: VersionSource) -> ServedVersion | Refusal:
        version = str(found.version)
        if found.problem:
            return self._refuse(name, found, found.problem)
        settings = self.settings
        try:
            bundle = open_bundle(found.path, trusted_keys=settings.trusted_keys)
            engine = Engine(bundle, device=settings.device, intra_op_threads=settings.threads)
            # ONNX Runtime's first run allocates and plans (a few hundred ms); a line's first part must not wait.
            contract = bundle.context.steps.contract
            engine.score_batch(np.zeros((1, contract.height, contract.width, 3), dtype=np.uint8))
        except BundleError as exc:
            return self._refuse(name, found, f"bundle refused: {exc}")
        except EngineError as exc:
            return self._refuse(name, found, f"engine: {exc}")
        # One version that cannot load must not stop the others; the unexpected is logged with its traceback.
        except Exception as exc:  # noqa: BLE001
            logs.event("model_load_failed", logging.ERROR, exc_info=True, model=name, version=version,
                       path=str(found.path), error=f"{type(exc).__name__}: {exc}")
            return self._refuse(name, found, f"load failed: {type(exc).__name__}: {exc}")
        context = bundle.context
        defects = dataclasses.replace(context.defects, enabled=True)
        try:
            pixel_threshold, defects_problem = context.pixel_threshold_for(defects), None
        except ContextError as exc:
            pixel_threshold, defects_problem = None, str(exc)
        labels = (name, version)
        # A graph exported without a dynamic batch dimension takes one image per run.
        steps = context.steps
        batch_size = settings.max_batch_size if bundle.manifest.onnx.dynamic_batch else 1

        def observe(stats: BatchStats) -> None:
            self.metrics.batch_size.labels(*labels).observe(stats.images)
            self.metrics.batch_time.labels(*labels).observe(stats.seconds)

        batcher = DynamicBatcher(f"{name}/{version}", lambda images: steps.score(engine, images, batch_size),
                                 batch_size, settings.max_queue_delay_s, settings.max_queue, observe)
        served = ServedVersion(name, found.version, found, bundle, engine, batcher, defects, pixel_threshold,
                               defects_problem)
        self.metrics.model_ready.labels(*labels).set(1)
        self.metrics.queue_depth.labels(*labels).set_function(lambda: batcher.queue_depth)
        logs.event("model_loaded", model=name, version=version, path=str(found.path), bundle=context.name,
                   device=engine.device, origin=served.origin, image_threshold=context.image_threshold,
                   tiling=context.steps.tiling.to_json() if context.steps.tiling else None)
        return served

    def _refuse(self, name: str, found: VersionSource, reason: str) -> Refusal:
        self.metrics.model_ready.labels(name, str(found.version)).set(0)
        logs.event("model_refused", logging.ERROR, model=name, version=str(found.version), path=str(found.folder),
                   reason=reason)
        return Refusal(reason, found.fingerprint)

    def _retire(self, entry: _Model, served: ServedVersion, why: str, forget: bool) -> None:
        """Stops routing requests to `served`; it closes once its last request has finished."""
        with self._lock:
            if entry.served.get(served.version) is served:
                del entry.served[served.version]
            served.retired = True
            close = served.refs == 0
            in_flight = served.refs
        if forget:
            self.metrics.forget(served.model, served.label)
        logs.event("model_unloaded", model=served.model, version=served.label, reason=why, in_flight=in_flight)
        if close:
            self._close(served)

    def _close(self, served: ServedVersion) -> None:
        served.batcher.close()
        logs.event("model_closed", model=served.model, version=served.label)

    # ------------------------------------------------------------------ lifecycle
    def start_polling(self) -> None:
        if self.settings.poll_interval_s <= 0:
            return
        self._poller = threading.Thread(target=self._poll_loop, name="repository-poller", daemon=True)
        self._poller.start()

    def _poll_loop(self) -> None:
        while not self._stop.wait(self.settings.poll_interval_s):
            try:
                self.poll()
            except Exception:  # noqa: BLE001 - the poller must outlive one bad scan; logged with its traceback
                logs.event("repository_poll_failed", logging.ERROR, exc_info=True)

    def close(self) -> None:
        """Stops polling and closes every version once its requests have finished (at shutdown, none are left)."""
        self._stop.set()
        if self._poller is not None:
            self._poller.join()
        with self._lock:
            entries = list(self._models.values())
        for entry in entries:
            for served in list(entry.served.values()):
                self._retire(entry, served, "server shutting down", forget=False)
