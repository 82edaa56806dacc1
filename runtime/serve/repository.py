"""The model repository on disk, in Triton's layout, and which versions of each model are to be served.

    <repository>/<model>/<version>/      version: a positive integer (1, 2, 10; not 0, not 01)
        manifest.json, model.onnx, ...   the bundle's files directly in the version folder, or
        NAME-VERSION/  or  NAME.zip      one bundle folder or one .zip archive in it
    <repository>/<model>/pyimgano.json   optional: {"version_policy": ...} for this model
    <repository>/<model>/config.pbtxt    Triton's model config: ignored (its version_policy is not read)

This module only reads the folders (scanning is cheap and has no side effects); runtime/serve/registry.py
opens, serves and retires what a scan finds.
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable

from pyimgano.runtime.manifest import MANIFEST_NAME

POLICY_FILE = "pyimgano.json"
TRITON_CONFIG = "config.pbtxt"
VERSION_NAME = re.compile(r"[1-9][0-9]*")
POLICY_KINDS = ("latest", "all", "specific")


class PolicyError(ValueError):
    """A version policy that cannot be used; the message names the flag or file and the key."""


@dataclass(frozen=True)
class VersionPolicy:
    """Which of a model's version folders are served, as Triton's version_policy: the `latest` N (highest
    numbers), `all`, or `specific` versions."""

    kind: str = "latest"
    num_versions: int = 1
    versions: tuple[int, ...] = ()

    def __post_init__(self) -> None:
        if self.kind not in POLICY_KINDS:
            raise PolicyError(f"version policy {self.kind!r} is not one of {list(POLICY_KINDS)}")
        if self.kind == "latest" and (isinstance(self.num_versions, bool) or not isinstance(self.num_versions, int)
                                      or self.num_versions < 1):
            raise PolicyError(f"latest needs num_versions >= 1, got {self.num_versions!r}")
        if self.kind == "specific" and (not self.versions or any(
                isinstance(v, bool) or not isinstance(v, int) or v < 1 for v in self.versions)):
            raise PolicyError("specific needs a non-empty list of positive version numbers, "
                              f"got {list(self.versions)!r}")

    def select(self, available: Iterable[int]) -> list[int]:
        present = sorted(set(available))
        if self.kind == "all":
            return present
        if self.kind == "latest":
            return present[-self.num_versions :]
        return [version for version in present if version in self.versions]

    def describe(self) -> str:
        if self.kind == "latest":
            return f"latest:{self.num_versions}"
        if self.kind == "specific":
            return "specific:" + ",".join(str(v) for v in self.versions)
        return "all"

    def to_json(self) -> dict:
        """Triton's JSON form of version_policy."""
        if self.kind == "latest":
            return {"latest": {"num_versions": self.num_versions}}
        if self.kind == "specific":
            return {"specific": {"versions": list(self.versions)}}
        return {"all": {}}

    @classmethod
    def parse_flag(cls, text: str) -> "VersionPolicy":
        """`latest:N`, `latest` (= latest:1), `all`, or `specific:1,3`."""
        kind, _, argument = text.strip().partition(":")
        if kind == "all" and not argument:
            return cls("all")
        if kind in ("latest", "specific"):
            try:
                numbers = tuple(int(part) for part in argument.split(",")) if argument else ()
            except ValueError:
                raise PolicyError(f"{text!r}: version numbers must be integers") from None
            if kind == "specific":
                return cls("specific", versions=numbers)
            if len(numbers) <= 1:
                return cls("latest", num_versions=numbers[0] if numbers else 1)
        raise PolicyError(f"{text!r} is not latest:N, all or specific:V1,V2,...")

    @classmethod
    def from_json(cls, data: object) -> "VersionPolicy":
        """Triton's JSON form: {"latest": {"num_versions": N}}, {"all": {}} or {"specific": {"versions": [..]}}."""
        if not isinstance(data, dict) or len(data) != 1:
            raise PolicyError(f"version_policy must be an object with one of the keys {list(POLICY_KINDS)}, "
                              f"got {data!r}")
        [(kind, body)] = data.items()
        if kind not in POLICY_KINDS or not isinstance(body, dict):
            raise PolicyError(f"version_policy: {kind!r} is not one of {list(POLICY_KINDS)} with an object value")
        allowed = {"latest": {"num_versions"}, "all": set(), "specific": {"versions"}}[kind]
        unknown = sorted(set(body) - allowed)
        if unknown:
            raise PolicyError(f"version_policy.{kind}: unknown key {unknown[0]!r} (allowed: {sorted(allowed)})")
        if kind == "latest":
            return cls("latest", num_versions=body.get("num_versions", 1))
        if kind == "specific":
            versions = body.get("versions")
            if not isinstance(versions, list):
                raise PolicyError(f"version_policy.specific.versions must be a list, got {versions!r}")
            return cls("specific", versions=tuple(versions))
        return cls("all")


@dataclass(frozen=True)
class VersionSource:
    """One version folder as found: what to open (`path`) or why there is nothing to open (`problem`), and
    a fingerprint of every file under the folder (name, size, mtime) to notice changes by."""

    version: int
    folder: Path
    path: Path | None
    fingerprint: tuple
    problem: str | None = None


@dataclass(frozen=True)
class ModelSource:
    name: str
    folder: Path
    policy: VersionPolicy
    # The versions the policy selects (those it leaves out are not served, and 404).
    versions: dict[int, VersionSource] = field(default_factory=dict)
    # Every version folder there is, selected or not.
    present: frozenset[int] = frozenset()
    # Why the model as a whole cannot be served (a broken pyimgano.json); its versions are then empty.
    problem: str | None = None
    # Things a person may want to know (folders that are not versions, an ignored config.pbtxt).
    notes: tuple[str, ...] = ()


def fingerprint(folder: Path) -> tuple:
    entries = []
    for directory, subdirectories, names in os.walk(folder):
        subdirectories.sort()
        for name in sorted(names):
            path = os.path.join(directory, name)
            try:
                stat = os.stat(path)
            except OSError:  # removed while scanning: the next scan sees the folder settled
                continue
            entries.append((os.path.relpath(path, folder), stat.st_size, stat.st_mtime_ns))
    return tuple(entries)


def bundle_path(folder: Path) -> tuple[Path | None, str | None]:
    """What in a version folder is the bundle: the folder itself (manifest.json in it), or its one bundle
    folder or one .zip archive; (None, why) otherwise."""
    if (folder / MANIFEST_NAME).is_file():
        return folder, None
    entries = sorted(entry for entry in folder.iterdir() if not entry.name.startswith("."))
    candidates = [entry for entry in entries if entry.is_dir() or (entry.is_file() and entry.suffix == ".zip")]
    if len(candidates) == 1:
        return candidates[0], None
    found = ", ".join(entry.name for entry in entries[:6]) or "nothing"
    return None, (f"no bundle in version folder {folder.name}: expected {MANIFEST_NAME} in it, or exactly one "
                  f"bundle folder or .zip archive (found {found})")


def read_policy(model_folder: Path, default: VersionPolicy) -> VersionPolicy:
    """The model's own policy from pyimgano.json, else the server's default; PolicyError naming the file."""
    path = model_folder / POLICY_FILE
    if not path.exists():
        return default
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise PolicyError(f"{POLICY_FILE}: not a readable JSON file ({exc})") from exc
    if not isinstance(data, dict):
        raise PolicyError(f"{POLICY_FILE}: expected an object, got {type(data).__name__}")
    unknown = sorted(set(data) - {"version_policy"})
    if unknown:
        raise PolicyError(f"{POLICY_FILE}: unknown key {unknown[0]!r} (allowed: ['version_policy'])")
    if "version_policy" not in data:
        return default
    try:
        return VersionPolicy.from_json(data["version_policy"])
    except PolicyError as exc:
        raise PolicyError(f"{POLICY_FILE}: {exc}") from exc


def scan_model(folder: Path, default: VersionPolicy) -> ModelSource:
    notes = []
    if (folder / TRITON_CONFIG).exists():
        notes.append(f"{TRITON_CONFIG} ignored (pyimgano-serve reads the version policy from {POLICY_FILE} "
                     "or --version-policy)")
    try:
        policy = read_policy(folder, default)
    except PolicyError as exc:
        return ModelSource(folder.name, folder, default, problem=str(exc), notes=tuple(notes))
    available = {}
    for entry in sorted(folder.iterdir()):
        if not entry.is_dir() or entry.name.startswith("."):
            continue
        if VERSION_NAME.fullmatch(entry.name):
            available[int(entry.name)] = entry
        else:
            notes.append(f"folder {entry.name!r} ignored: version folders are positive integers")
    versions = {}
    for version in policy.select(available):
        path, problem = bundle_path(available[version])
        versions[version] = VersionSource(version, available[version], path, fingerprint(available[version]), problem)
    return ModelSource(folder.name, folder, policy, versions, frozenset(available), notes=tuple(notes))


def scan_repository(root: Path, default: VersionPolicy) -> dict[str, ModelSource]:
    """Every model folder (hidden ones skipped) with the versions its policy selects."""
    models = {}
    for entry in sorted(root.iterdir()):
        if entry.is_dir() and not entry.name.startswith("."):
            models[entry.name] = scan_model(entry, default)
    return models
