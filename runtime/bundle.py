"""The bundle: the only contract between the workbench and the edge.

A bundle is a directory `NAME-VERSION/` (or the same content as one `.zip` archive) holding
`manifest.json`, `model.onnx` and `infer_config.json`. The manifest lists the sha256 and size of every
other file; it is not itself checksummed so that an engineer may edit a threshold by hand.
`open_bundle` refuses, naming the file, anything that does not verify.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
import zipfile
from dataclasses import dataclass, field
from pathlib import Path

from pyimgano.runtime.context import ScoringContext
from pyimgano.runtime.manifest import MANIFEST_NAME, FileEntry, Manifest, ManifestError, parse_manifest


class BundleError(Exception):
    """The bundle was refused. The message names the file and the reason."""


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


@dataclass
class Bundle:
    root: Path
    manifest: Manifest
    # What scoring needs, built once from the manifest.
    context: ScoringContext
    # Keeps an archive's extraction directory alive as long as the bundle is in use.
    _scratch: tempfile.TemporaryDirectory | None = field(default=None, repr=False)

    @property
    def model_path(self) -> Path:
        return self.root / self.manifest.onnx.file


def read_manifest(data: dict) -> Manifest:
    """The typed manifest, or a BundleError naming manifest.json and the key path."""
    try:
        return parse_manifest(data)
    except ManifestError as exc:
        raise BundleError(f"{MANIFEST_NAME}: {exc}") from exc


def verify_files(root: Path, files: dict[str, FileEntry]) -> None:
    """Refuses the bundle unless every listed file exists with the recorded size and sha256."""
    for name, entry in sorted(files.items()):
        # Names are plain relative paths; anything that climbs out of the bundle is refused.
        if Path(name).is_absolute() or ".." in Path(name).parts:
            raise BundleError(f"{name}: file name escapes the bundle directory")
        path = root / name
        if not path.is_file():
            raise BundleError(f"{name}: listed in {MANIFEST_NAME} but missing from the bundle")
        size = path.stat().st_size
        if size != entry.size:
            raise BundleError(f"{name}: size {size} bytes, manifest says {entry.size} (file changed or truncated)")
        digest = sha256_file(path)
        if digest != entry.sha256:
            raise BundleError(f"{name}: sha256 {digest[:16]}... does not match the manifest ({entry.sha256[:16]}...)")


# Bounds on an archive, checked from its directory before anything is extracted. A bundle is a manifest, a
# graph and a config: wide_resnet50_2 with a 16k-row fp32 bank is about 300 MB, and deflate shrinks float
# weights by a few percent, so these leave room; a zip bomb (6 MB holding 4 GB) is far outside them.
ARCHIVE_MAX_MEMBERS = 64
ARCHIVE_MAX_BYTES = 4 * 2**30
# Uncompressed / compressed, for members above a mebibyte (small text files compress well and harmlessly).
ARCHIVE_MAX_RATIO = 50
SCRATCH_PREFIX = "pyimgano-bundle-"


def _check_archive(archive: Path, handle: zipfile.ZipFile) -> None:
    members = handle.infolist()
    if len(members) > ARCHIVE_MAX_MEMBERS:
        raise BundleError(f"{archive.name}: {len(members)} archive members, more than a bundle has ({ARCHIVE_MAX_MEMBERS})")
    total = 0
    for member in members:
        if Path(member.filename).is_absolute() or ".." in Path(member.filename).parts:
            raise BundleError(f"{archive.name}: archive member {member.filename!r} escapes the bundle")
        total += member.file_size
        if member.file_size > 2**20 and member.file_size > ARCHIVE_MAX_RATIO * max(member.compress_size, 1):
            raise BundleError(f"{archive.name}: member {member.filename!r} expands {member.compress_size:,} bytes to "
                              f"{member.file_size:,} (over {ARCHIVE_MAX_RATIO}x): refused as a zip bomb, not extracted")
    if total > ARCHIVE_MAX_BYTES:
        raise BundleError(f"{archive.name}: expands to {total:,} bytes, over the limit of {ARCHIVE_MAX_BYTES:,}; "
                          "not extracted")


def _remove_orphaned_scratch() -> None:
    """Removes extraction folders whose process is gone (a run killed by SIGKILL cannot clean up after itself)."""
    for folder in Path(tempfile.gettempdir()).glob(f"{SCRATCH_PREFIX}*-*"):
        pid = folder.name.removeprefix(SCRATCH_PREFIX).split("-", 1)[0]
        if not pid.isdigit() or int(pid) == os.getpid():
            continue
        try:
            os.kill(int(pid), 0)
        except ProcessLookupError:
            shutil.rmtree(folder, ignore_errors=True)
        except PermissionError:  # alive, another user's
            continue


def _extract_archive(archive: Path) -> tempfile.TemporaryDirectory:
    _remove_orphaned_scratch()
    scratch = tempfile.TemporaryDirectory(prefix=f"{SCRATCH_PREFIX}{os.getpid()}-")
    try:
        with zipfile.ZipFile(archive) as handle:
            _check_archive(archive, handle)
            handle.extractall(scratch.name)
    except zipfile.BadZipFile as exc:
        scratch.cleanup()
        raise BundleError(f"{archive.name}: not a readable zip archive ({exc})") from exc
    except BundleError:
        scratch.cleanup()
        raise
    return scratch


def _bundle_root(path: Path) -> Path:
    """The directory holding manifest.json: the path itself, or its single subdirectory (archives)."""
    if (path / MANIFEST_NAME).is_file():
        return path
    children = [child for child in path.iterdir() if child.is_dir()]
    if len(children) == 1 and (children[0] / MANIFEST_NAME).is_file():
        return children[0]
    raise BundleError(f"{MANIFEST_NAME}: not found in {path}")


def open_bundle(path: str | os.PathLike) -> Bundle:
    """Opens and verifies a bundle directory or `.zip` archive."""
    path = Path(path)
    scratch = None
    if path.is_file():
        scratch = _extract_archive(path)
        search_root = Path(scratch.name)
    elif path.is_dir():
        search_root = path
    else:
        raise BundleError(f"{path}: no such bundle directory or archive")
    try:
        root = _bundle_root(search_root)
        try:
            manifest = json.loads((root / MANIFEST_NAME).read_text(encoding="utf-8"))
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise BundleError(f"{MANIFEST_NAME}: not valid JSON ({exc})") from exc
        typed = read_manifest(manifest)
        verify_files(root, typed.files)
        return Bundle(root=root, manifest=typed, context=ScoringContext.from_manifest(typed), _scratch=scratch)
    except BundleError:
        if scratch is not None:
            scratch.cleanup()
        raise


def file_entry(path: Path) -> dict:
    """A `files` entry of the manifest, as JSON."""
    return {"sha256": sha256_file(path), "size": path.stat().st_size}


def write_archive(bundle_dir: Path, archive: Path) -> None:
    """Writes the bundle directory as one zip (members under `NAME-VERSION/`), atomically."""
    tmp = archive.with_name(archive.name + ".tmp")
    with zipfile.ZipFile(tmp, "w", compression=zipfile.ZIP_DEFLATED) as handle:
        for file in sorted(bundle_dir.rglob("*")):
            if file.is_file():
                handle.write(file, arcname=f"{bundle_dir.name}/{file.relative_to(bundle_dir).as_posix()}")
    os.replace(tmp, archive)


def move_into_place(source: Path, target: Path) -> None:
    """Moves a fully written staging directory into place; an existing target is replaced."""
    if target.exists():
        shutil.rmtree(target)
    os.replace(source, target)
