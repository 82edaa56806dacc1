"""The bundle: the only contract between the workbench and the edge.

A bundle is a directory `NAME-VERSION/` (or the same content as one `.zip` archive) holding
`manifest.json`, `model.onnx` and `infer_config.json`, and `signature.json` once signed. The manifest
lists the sha256 and size of every other file, and no file it does not list may be there; the manifest
itself is covered by the Ed25519 signature in `signature.json` (runtime/signing.py), so a threshold
edited by hand must be re-signed (`pyimgano-sign sign`) before trusted keys accept the bundle again.
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
from pyimgano.runtime.signing import (
    SIGNATURE_MAX_BYTES,
    SIGNATURE_NAME,
    Origin,
    PrivateKey,
    Signature,
    SignatureFormatError,
    TrustedKeys,
    load_trusted_keys,
    parse_signature,
    signature_json,
)

# The files a manifest cannot list: itself, and the signature over it.
UNLISTED_NAMES = frozenset({MANIFEST_NAME, SIGNATURE_NAME})


class BundleError(Exception):
    """The bundle was refused. The message names the file and the reason."""


class SignatureRefused(BundleError):
    """Trusted keys were given and the bundle's signature does not establish that one of them signed
    this manifest; the message names the bundle and the key_id."""


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
    # Of manifest.json's bytes as verified at open: what a signature covers.
    manifest_sha256: str = ""
    # Whether the bundle is signed, and whether (by which key) the signature was verified at open.
    origin: Origin = Origin(signed=False, verified=False, key_id=None)
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
        try:
            size = path.stat().st_size if path.is_file() else None
        except OSError as exc:  # e.g. a name longer than the file system allows
            raise BundleError(f"{name}: listed in {MANIFEST_NAME} but cannot be a file here ({exc.strerror})") from exc
        if size is None:
            raise BundleError(f"{name}: listed in {MANIFEST_NAME} but missing from the bundle")
        if size != entry.size:
            raise BundleError(f"{name}: size {size} bytes, manifest says {entry.size} (file changed or truncated)")
        digest = sha256_file(path)
        if digest != entry.sha256:
            raise BundleError(f"{name}: sha256 {digest[:16]}... does not match the manifest ({entry.sha256[:16]}...)")


def check_unlisted(tree: Path, root: Path, files: dict[str, FileEntry]) -> None:
    """Refuses any file (or link, or other non-directory) under `tree` that the manifest does not list.
    ONNX Runtime opens external-data files named inside the graph by itself, so an unlisted
    `model.onnx.data` would be used without ever being checked."""
    for folder, subfolders, names in os.walk(tree, followlinks=False):
        # os.walk lists a link to a folder among the folders and does not enter it: refused like a file.
        names = names + [name for name in subfolders if os.path.islink(os.path.join(folder, name))]
        for name in sorted(names):
            path = Path(folder, name)
            try:
                relative = path.relative_to(root).as_posix()
            except ValueError:  # beside the bundle's own folder inside an archive
                raise BundleError(f"{path.relative_to(tree).as_posix()}: outside the bundle folder in the "
                                  "archive; refused (an archive holds one bundle and nothing else)") from None
            if relative not in files and relative not in UNLISTED_NAMES:
                raise BundleError(f"{relative}: in the bundle but not listed in {MANIFEST_NAME}; refused (an "
                                  "unlisted file, e.g. ONNX external data, would be used unverified)")


def read_signature(root: Path, label: str) -> Signature | None:
    """The bundle's signature record, None when unsigned; a malformed one is refused even without keys."""
    path = root / SIGNATURE_NAME
    if not path.exists() and not path.is_symlink():
        return None
    if not path.is_file():
        raise SignatureRefused(f"{label}: {SIGNATURE_NAME} is not a regular file")
    size = path.stat().st_size
    if size > SIGNATURE_MAX_BYTES:
        raise SignatureRefused(f"{label}: {SIGNATURE_NAME} is {size:,} bytes, not a signature record")
    try:
        return parse_signature(path.read_bytes())
    except SignatureFormatError as exc:
        raise SignatureRefused(f"{label}: {SIGNATURE_NAME}: {exc}") from exc


def check_signature(label: str, signature: Signature | None, manifest_bytes: bytes, trusted: TrustedKeys) -> Origin:
    """The verified origin, or SignatureRefused saying why the manifest is not one a trusted key signed."""
    if signature is None:
        raise SignatureRefused(f"{label}: unsigned (no {SIGNATURE_NAME}); only a bundle signed by one of the "
                               f"{trusted.describe()} opens: sign it with pyimgano-sign sign")
    candidates = trusted.with_id(signature.key_id)
    if not candidates:
        raise SignatureRefused(f"{label}: signed by key_id {signature.key_id}, which is not one of the "
                               f"{trusted.describe()}")
    if not any(key.verifies(signature) for key in candidates):
        raise SignatureRefused(f"{label}: the signature by key_id {signature.key_id} does not verify: "
                               f"{SIGNATURE_NAME} was altered or forged")
    actual = hashlib.sha256(manifest_bytes).hexdigest()
    if actual != signature.manifest_sha256:
        raise SignatureRefused(f"{label}: {MANIFEST_NAME} has sha256 {actual[:16]}..., but key_id "
                               f"{signature.key_id} signed {signature.manifest_sha256[:16]}...: the manifest changed "
                               "after signing (after a deliberate edit, re-sign with pyimgano-sign sign)")
    return Origin(signed=True, verified=True, key_id=signature.key_id)


def check_signature_names(label: str, signature: Signature | None, manifest: Manifest) -> None:
    if signature is not None and (signature.bundle, signature.bundle_version) != (manifest.name, manifest.version):
        raise SignatureRefused(f"{label}: {SIGNATURE_NAME} is for bundle {signature.bundle} version "
                               f"{signature.bundle_version}, but {MANIFEST_NAME} is {manifest.name} version "
                               f"{manifest.version}")


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
    seen = set()
    for member in members:
        if Path(member.filename).is_absolute() or ".." in Path(member.filename).parts:
            raise BundleError(f"{archive.name}: archive member {member.filename!r} escapes the bundle")
        # Two members of one name: which one a reader takes differs between tools, so what was verified
        # (or signed) here need not be what another reads.
        if member.filename in seen:
            raise BundleError(f"{archive.name}: archive member {member.filename!r} appears twice")
        seen.add(member.filename)
        total += member.file_size
        if member.file_size > 2**20 and member.file_size > ARCHIVE_MAX_RATIO * max(member.compress_size, 1):
            raise BundleError(f"{archive.name}: member {member.filename!r} expands {member.compress_size:,} bytes to "
                              f"{member.file_size:,} (over {ARCHIVE_MAX_RATIO}x): refused as a zip bomb, not extracted")
    if total > ARCHIVE_MAX_BYTES:
        raise BundleError(f"{archive.name}: expands to {total:,} bytes, over the limit of {ARCHIVE_MAX_BYTES:,}; "
                          "not extracted")


def process_alive(pid: int) -> bool:
    """Whether a process of this id runs (another user's counts): the owner of a pid-named folder."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # alive, another user's
        return True
    return True


def _remove_orphaned_scratch() -> None:
    """Removes extraction folders whose process is gone (a run killed by SIGKILL cannot clean up after itself)."""
    for folder in Path(tempfile.gettempdir()).glob(f"{SCRATCH_PREFIX}*-*"):
        pid = folder.name.removeprefix(SCRATCH_PREFIX).split("-", 1)[0]
        if pid.isdigit() and int(pid) != os.getpid() and not process_alive(int(pid)):
            shutil.rmtree(folder, ignore_errors=True)


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


def open_bundle(path: str | os.PathLike, trusted_keys: TrustedKeys | str | os.PathLike | None = None) -> Bundle:
    """Opens and verifies a bundle directory or `.zip` archive. With `trusted_keys` (loaded, or a file or
    directory of public keys) only a bundle whose manifest one of them signed opens; without, a signed
    or unsigned bundle opens and `Bundle.origin` says it is unverified."""
    if trusted_keys is not None and not isinstance(trusted_keys, TrustedKeys):
        trusted_keys = load_trusted_keys(trusted_keys)
    return _open(Path(path), trusted_keys, signature_file=True)


def _open(path: Path, trusted_keys: TrustedKeys | None, signature_file: bool) -> Bundle:
    """`signature_file=False` leaves an existing signature.json unread: signing replaces it, broken or not."""
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
        # The exact bytes: they are what the signature covers, and what is then parsed.
        manifest_bytes = (root / MANIFEST_NAME).read_bytes()
        signature = read_signature(root, path.name) if signature_file else None
        if trusted_keys is not None:
            origin = check_signature(path.name, signature, manifest_bytes, trusted_keys)
        else:
            origin = Origin(signed=signature is not None, verified=False,
                            key_id=signature.key_id if signature else None)
        try:
            manifest = json.loads(manifest_bytes.decode("utf-8"))
        # ValueError: JSONDecodeError, and Python's limit on the digits of an integer; RecursionError: nested too deep.
        except (ValueError, RecursionError) as exc:
            raise BundleError(f"{MANIFEST_NAME}: not valid JSON ({exc})") from exc
        typed = read_manifest(manifest)
        check_signature_names(path.name, signature, typed)
        check_unlisted(search_root if scratch is not None else root, root, typed.files)
        verify_files(root, typed.files)
        return Bundle(root=root, manifest=typed, context=ScoringContext.from_manifest(typed),
                      manifest_sha256=hashlib.sha256(manifest_bytes).hexdigest(), origin=origin, _scratch=scratch)
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


def sign_bundle(path: str | os.PathLike, key: PrivateKey) -> Signature:
    """Signs a bundle directory or `.zip` archive in place (an archive is rewritten atomically, its other
    members unchanged); an existing signature is replaced. The bundle must verify first: a key only ever
    vouches for a manifest whose files match it."""
    path = Path(path)
    bundle = _open(path, None, signature_file=False)
    try:
        # The manifest as verified just now, not as re-read: a key signs only what was checked.
        signature = key.sign(bundle.manifest_sha256, bundle.manifest.name, bundle.manifest.version)
        if path.is_dir():
            target = bundle.root / SIGNATURE_NAME
            # Beside the bundle, not in it: a temporary file left by a killed run would be an unlisted file.
            tmp = bundle.root.parent / f".{bundle.root.name}.{SIGNATURE_NAME}.tmp"
            tmp.write_bytes(signature_json(signature))
            os.replace(tmp, target)
        else:
            # The members' folder inside the archive: the bundle root's place under the extraction folder.
            inside = bundle.root.relative_to(bundle._scratch.name).as_posix()
            _replace_archive_signature(path, "" if inside == "." else inside + "/", signature)
    finally:
        if bundle._scratch is not None:
            bundle._scratch.cleanup()
    return signature


def _replace_archive_signature(archive: Path, prefix: str, signature: Signature) -> None:
    """Rewrites the archive with `PREFIX/signature.json` (replaced or added), every other member copied as
    it was, then moves it over the original."""
    tmp = archive.with_name(archive.name + ".tmp")
    try:
        with zipfile.ZipFile(archive) as source, zipfile.ZipFile(tmp, "w", compression=zipfile.ZIP_DEFLATED) as target:
            for member in source.infolist():
                if member.filename == prefix + SIGNATURE_NAME:
                    continue
                # A fresh record: writing fills in offsets, which must not change the source's own.
                info = zipfile.ZipInfo(member.filename, date_time=member.date_time)
                info.compress_type, info.external_attr = member.compress_type, member.external_attr
                if member.is_dir():
                    target.writestr(info, b"")
                    continue
                info.file_size = member.file_size  # decides zip64 before the data is written
                with source.open(member) as reader, target.open(info, "w") as writer:
                    shutil.copyfileobj(reader, writer, 1 << 20)
            target.writestr(prefix + SIGNATURE_NAME, signature_json(signature))
        os.chmod(tmp, archive.stat().st_mode & 0o777)
        os.replace(tmp, archive)
    finally:
        tmp.unlink(missing_ok=True)


def move_into_place(source: Path, target: Path) -> None:
    """Moves a fully written staging directory into place; an existing target is replaced."""
    if target.exists():
        shutil.rmtree(target)
    os.replace(source, target)
