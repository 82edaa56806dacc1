"""Ed25519 keys and the bundle signature record (`signature.json`), torch-free.

The signature covers the sha256 of the exact bytes of `manifest.json`, which lists the sha256 and size of
every other file, so one signature pins the whole bundle. `signature.json` is the one file the manifest
cannot list; it holds every field below but `signature` in the clear, and `signature` is the Ed25519
signature of those fields as canonical JSON (sorted keys, no spaces), so no field can be changed alone.

Keys: a private key is an unencrypted PKCS8 PEM file (`-----BEGIN PRIVATE KEY-----`, written mode 0600);
a public key is an OpenSSH line (`ssh-ed25519 AAAA... comment`, what `pyimgano-sign keygen` writes) or a
SubjectPublicKeyInfo PEM block (`-----BEGIN PUBLIC KEY-----`). A trusted-keys source is a file holding any
number of either, or a directory whose `*.pub` files do. A key is named by its key_id: the first 16 hex
digits of the sha256 of its raw 32-byte public key.

`cryptography` (the `signing` extra) is imported only when a key is loaded, made or used: the base edge
install opens bundles, signed or not, without it, as long as no trusted keys are asked for.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import os
import re
from dataclasses import asdict, dataclass
from pathlib import Path

from pyimgano.runtime import strict

SIGNATURE_NAME = "signature.json"
SIGNATURE_FORMAT = "pyimgano-signature"
SIGNATURE_VERSION = 1
ALGORITHM = "ed25519"
# A signature record is a few hundred bytes; anything far larger is not one and is not read whole.
SIGNATURE_MAX_BYTES = 64 * 1024
INSTALL_HINT = "pip install 'pyimgano[signing]'"
# pyimgano-infer --trusted-keys and pyimgano-sign verify --trusted-keys read it when the flag is not given.
TRUSTED_KEYS_ENV = "PYIMGANO_TRUSTED_KEYS"
PRIVATE_KEY_SUFFIX = ".key"
PUBLIC_KEY_SUFFIX = ".pub"
_HEX16 = re.compile(r"[0-9a-f]{16}")
_HEX64 = re.compile(r"[0-9a-f]{64}")
_PEM_PUBLIC = re.compile(rb"-----BEGIN PUBLIC KEY-----.+?-----END PUBLIC KEY-----", re.DOTALL)


class SigningError(Exception):
    """A key or trusted-keys source cannot be used (missing, not Ed25519, unreadable), or the `signing`
    extra is not installed; the message names the file."""


class SignatureFormatError(ValueError):
    """`signature.json` does not parse; the message names the key."""


def _crypto():
    """The cryptography primitives, or a SigningError saying which extra provides them."""
    try:
        from cryptography.exceptions import InvalidSignature
        from cryptography.hazmat.primitives import serialization
        from cryptography.hazmat.primitives.asymmetric import ed25519
    except ImportError as exc:
        raise SigningError(f"Ed25519 signatures need the cryptography package, which is not installed: "
                           f"{INSTALL_HINT}") from exc
    return ed25519, serialization, InvalidSignature


def key_id(raw_public_key: bytes) -> str:
    return hashlib.sha256(raw_public_key).hexdigest()[:16]


@dataclass(frozen=True)
class Signature:
    """The content of `signature.json`. `bundle` and `bundle_version` repeat the manifest's `name` and
    `version` so a reader sees what was signed; they must match the manifest they sit beside."""

    format: str
    version: int
    algorithm: str
    key_id: str
    bundle: str
    bundle_version: str
    manifest_sha256: str
    signature: str

    def signed_bytes(self) -> bytes:
        fields = {name: value for name, value in asdict(self).items() if name != "signature"}
        return json.dumps(fields, sort_keys=True, separators=(",", ":"), ensure_ascii=True).encode("ascii")

    def signature_bytes(self) -> bytes:
        return base64.b64decode(self.signature, validate=True)

    def to_json(self) -> dict:
        return asdict(self)


def parse_signature(data: bytes) -> Signature:
    """`signature.json`'s bytes as a Signature, every key and value checked; SignatureFormatError otherwise."""
    try:
        record = strict.parse(Signature, json.loads(data.decode("utf-8")))
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError) as exc:  # RecursionError: nested too deep
        raise SignatureFormatError(f"not valid JSON ({exc})") from exc
    except strict.SchemaError as exc:
        raise SignatureFormatError(str(exc)) from exc
    if record.format != SIGNATURE_FORMAT:
        raise SignatureFormatError(f"format is {record.format!r}, not {SIGNATURE_FORMAT!r}")
    if record.version != SIGNATURE_VERSION:
        raise SignatureFormatError(f"version {record.version} is not supported (this runtime reads "
                                   f"{SIGNATURE_VERSION})")
    if record.algorithm != ALGORITHM:
        raise SignatureFormatError(f"algorithm {record.algorithm!r} is not supported (only {ALGORITHM!r})")
    if not _HEX16.fullmatch(record.key_id):
        raise SignatureFormatError(f"key_id {record.key_id!r} is not 16 lowercase hex digits")
    if not _HEX64.fullmatch(record.manifest_sha256):
        raise SignatureFormatError(f"manifest_sha256 {record.manifest_sha256!r} is not 64 lowercase hex digits")
    try:
        length = len(record.signature_bytes())
    except (binascii.Error, ValueError) as exc:
        raise SignatureFormatError(f"signature is not base64 ({exc})") from exc
    if length != 64:
        raise SignatureFormatError(f"signature is {length} bytes, an Ed25519 signature is 64")
    return record


def signature_json(signature: Signature) -> bytes:
    return (json.dumps(signature.to_json(), indent=2) + "\n").encode("utf-8")


@dataclass(frozen=True)
class PublicKey:
    raw: bytes
    key_id: str

    def verifies(self, signature: Signature) -> bool:
        ed25519, _, invalid = _crypto()
        try:
            ed25519.Ed25519PublicKey.from_public_bytes(self.raw).verify(signature.signature_bytes(),
                                                                        signature.signed_bytes())
        except invalid:
            return False
        return True


@dataclass(frozen=True)
class TrustedKeys:
    keys: tuple[PublicKey, ...]
    source: Path

    def with_id(self, wanted: str) -> list[PublicKey]:
        # Several only if two trusted keys share a 64-bit id prefix; the signature must verify under one.
        return [key for key in self.keys if key.key_id == wanted]

    def describe(self) -> str:
        ids = ", ".join(key.key_id for key in self.keys[:8])
        more = f" and {len(self.keys) - 8} more" if len(self.keys) > 8 else ""
        return f"trusted keys in {self.source} ({ids}{more})"


def _raw_public(key, source: str) -> PublicKey:
    ed25519, serialization, _ = _crypto()
    if not isinstance(key, ed25519.Ed25519PublicKey):
        raise SigningError(f"{source}: not an Ed25519 public key ({type(key).__name__})")
    raw = key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return PublicKey(raw=raw, key_id=key_id(raw))


def read_public_keys(path: Path) -> list[PublicKey]:
    """Every public key in one file: OpenSSH `ssh-ed25519` lines and PEM PUBLIC KEY blocks; `#` lines and
    blank lines are skipped. Anything else is refused, naming the line."""
    _, serialization, _ = _crypto()
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise SigningError(f"{path}: cannot read ({exc.strerror or exc})") from exc
    keys = []
    for block in _PEM_PUBLIC.findall(data):
        try:
            keys.append(_raw_public(serialization.load_pem_public_key(block), str(path)))
        except ValueError as exc:
            raise SigningError(f"{path}: a PUBLIC KEY block that does not parse ({exc})") from exc
    # PEM blocks blanked line for line, so the line numbers in messages are the file's.
    rest = _PEM_PUBLIC.sub(lambda match: b"\n" * match.group().count(b"\n"), data)
    for number, line in enumerate(rest.splitlines(), start=1):
        line = line.strip()
        if not line or line.startswith(b"#"):
            continue
        where = f"{path}:{number}"
        if line.startswith(b"-----BEGIN") and b"PRIVATE" in line:
            raise SigningError(f"{where}: a private key; trusted keys are public keys (its .pub file)")
        if not line.startswith(b"ssh-ed25519 "):
            raise SigningError(f"{where}: not an ssh-ed25519 public key line or PEM PUBLIC KEY block "
                               f"(starts {line[:24].decode('ascii', 'replace')!r})")
        try:
            keys.append(_raw_public(serialization.load_ssh_public_key(line), where))
        except ValueError as exc:
            raise SigningError(f"{where}: an ssh-ed25519 line that does not parse ({exc})") from exc
    return keys


def load_trusted_keys(path: str | os.PathLike) -> TrustedKeys:
    """A file of public keys, or a directory of `*.pub` files; refused if it holds none."""
    path = Path(path)
    if path.is_dir():
        files = sorted(path.glob(f"*{PUBLIC_KEY_SUFFIX}"))
    elif path.is_file():
        files = [path]
    else:
        raise SigningError(f"trusted keys {path}: no such file or directory")
    keys: dict[bytes, PublicKey] = {}
    for file in files:
        for key in read_public_keys(file):
            keys.setdefault(key.raw, key)
    if not keys:
        where = f"its *{PUBLIC_KEY_SUFFIX} files" if path.is_dir() else "it"
        raise SigningError(f"trusted keys {path}: no Ed25519 public key in {where}")
    return TrustedKeys(keys=tuple(keys.values()), source=path)


@dataclass(frozen=True)
class PrivateKey:
    path: Path
    key_id: str
    pem: bytes

    def sign(self, manifest_sha256: str, bundle: str, bundle_version: str) -> Signature:
        """The signature over a manifest (the sha256 of its exact bytes) and the bundle it names."""
        _, serialization, _ = _crypto()
        key = serialization.load_pem_private_key(self.pem, password=None)
        unsigned = Signature(format=SIGNATURE_FORMAT, version=SIGNATURE_VERSION, algorithm=ALGORITHM,
                             key_id=self.key_id, bundle=bundle, bundle_version=bundle_version,
                             manifest_sha256=manifest_sha256, signature="")
        value = base64.b64encode(key.sign(unsigned.signed_bytes())).decode("ascii")
        return Signature(**{**unsigned.to_json(), "signature": value})


def load_private_key(path: str | os.PathLike) -> PrivateKey:
    """An unencrypted PKCS8 PEM Ed25519 private key (what `pyimgano-sign keygen` writes)."""
    ed25519, serialization, _ = _crypto()
    path = Path(path)
    try:
        pem = path.read_bytes()
    except OSError as exc:
        raise SigningError(f"signing key {path}: cannot read ({exc.strerror or exc})") from exc
    try:
        key = serialization.load_pem_private_key(pem, password=None)
    except TypeError as exc:  # encrypted: cryptography wants a password
        raise SigningError(f"signing key {path}: encrypted; pyimgano-sign reads unencrypted PKCS8 PEM keys "
                           "(keep the file mode 0600)") from exc
    except ValueError as exc:
        raise SigningError(f"signing key {path}: not a PEM private key ({exc})") from exc
    if not isinstance(key, ed25519.Ed25519PrivateKey):
        raise SigningError(f"signing key {path}: not an Ed25519 private key ({type(key).__name__})")
    raw = key.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return PrivateKey(path=path, key_id=key_id(raw), pem=pem)


def _write_new(path: Path, data: bytes, mode: int) -> None:
    # O_EXCL: an existing key is never overwritten, even by a concurrent keygen.
    descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
    with os.fdopen(descriptor, "wb") as handle:
        handle.write(data)
    os.chmod(path, mode)  # the umask may have narrowed it; never widened past `mode`


@dataclass(frozen=True)
class KeyPair:
    private: Path
    public: Path
    key_id: str


def generate_key_pair(out: str | os.PathLike) -> KeyPair:
    """Writes OUT.key (PKCS8 PEM, mode 0600) and OUT.pub (an OpenSSH line); refuses to overwrite either."""
    ed25519, serialization, _ = _crypto()
    out = Path(out)
    private_path = out.with_name(out.name + PRIVATE_KEY_SUFFIX)
    public_path = out.with_name(out.name + PUBLIC_KEY_SUFFIX)
    for path in (private_path, public_path):
        if path.exists():
            raise SigningError(f"{path} exists; refusing to overwrite a key (choose another --out)")
    key = ed25519.Ed25519PrivateKey.generate()
    public = key.public_key()
    raw = public.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                            serialization.NoEncryption())
    line = public.public_bytes(serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH)
    out.parent.mkdir(parents=True, exist_ok=True)
    try:
        _write_new(private_path, pem, 0o600)
        try:
            _write_new(public_path, line + f" {out.name} key_id={key_id(raw)}\n".encode("ascii"), 0o644)
        except OSError:
            private_path.unlink()  # both halves or neither: a later keygen with this --out must not be refused
            raise
    except FileExistsError as exc:
        raise SigningError(f"{exc.filename} exists; refusing to overwrite a key (choose another --out)") from exc
    except OSError as exc:
        raise SigningError(f"{exc.filename or out}: cannot write the key ({exc.strerror or exc})") from exc
    return KeyPair(private=private_path, public=public_path, key_id=key_id(raw))


@dataclass(frozen=True)
class Origin:
    """Where a bundle is known to come from: whether it carries a signature, and whether (and by which
    key) that signature was verified against trusted keys."""

    signed: bool
    verified: bool
    key_id: str | None

    def describe(self) -> str:
        if self.verified:
            return f"verified: signed by trusted key_id {self.key_id}"
        if self.signed:
            return f"unverified: signed by key_id {self.key_id}, but no trusted keys were given to check it against"
        return f"unverified: unsigned (no {SIGNATURE_NAME})"

    def to_json(self) -> dict:
        return {"signed": self.signed, "verified": self.verified, "key_id": self.key_id}
