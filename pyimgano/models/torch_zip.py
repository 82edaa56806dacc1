"""torch's zip checkpoint format (`torch.save` since torch 1.6) read without torch and without running
anything the file asks for.

A torch checkpoint is a zip of `<archive>/data.pkl` (the object tree, pickled) and one raw little-endian
file per tensor storage (`<archive>/data/<key>`). Unpickling may call any callable the pickle names, so
it is code execution unless the names are restricted. This unpickler resolves a short allow-list of
globals to stand-ins of its own (plain containers, tensor and storage references, anomalib's precision
enum as its string value) and refuses every other name before anything is called, so no class or
function of the file's choosing is ever imported or run. Tensors come back as `TensorRef`s, read from
the zip as numpy arrays only when asked for (`TorchZip.array`), so a caller can look at the tree (a
dry run) without reading megabytes of weights.
"""

from __future__ import annotations

import collections
import io
import pickle
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

# The object tree of a checkpoint is small (the fixture's is 74 KB); a bound stops a hostile pickle
# from taking the process's memory before a single name is checked.
MAX_PICKLE_BYTES = 64 * 2**20

# torch storage classes -> numpy dtypes. BFloat16 has no numpy dtype: it is widened to float32 exactly.
STORAGE_DTYPES: dict[str, str] = {
    "FloatStorage": "float32",
    "DoubleStorage": "float64",
    "HalfStorage": "float16",
    "BFloat16Storage": "bfloat16",
    "LongStorage": "int64",
    "IntStorage": "int32",
    "ShortStorage": "int16",
    "CharStorage": "int8",
    "ByteStorage": "uint8",
    "BoolStorage": "bool",
}


class TorchZipError(Exception):
    """The file is not a torch zip checkpoint this reader accepts; the message says why."""


class RefusedGlobal(TorchZipError):
    """The pickle names a global outside the allow-list; nothing it names was imported or called."""

    def __init__(self, path: Path, name: str) -> None:
        self.name = name
        super().__init__(
            f"{path}: the checkpoint pickles the global {name}, which is not allow-listed "
            f"(allowed: {', '.join(ALLOWED_NAMES)}); it was not imported or executed"
        )


_DTYPE_NAMES = frozenset(STORAGE_DTYPES.values())


# Records a pickle builds through the stand-ins below. A BUILD instruction can still reset a frozen slotted
# dataclass's fields (its __setstate__), so a TensorRef is checked again when it is read.
@dataclass(frozen=True, slots=True)
class StorageRef:
    key: str
    dtype: str
    numel: int


@dataclass(frozen=True, slots=True)
class TensorRef:
    """Where a tensor's values are: its storage file, element offset, shape and strides (in elements)."""

    storage: StorageRef
    offset: int
    shape: tuple[int, ...]
    stride: tuple[int, ...]

    @property
    def dtype(self) -> str:
        return self.storage.dtype

    def check(self) -> None:
        """Refuses a layout that reaches outside its storage."""
        storage = self.storage
        if not (isinstance(storage, StorageRef) and type(storage.key) is str and storage.dtype in _DTYPE_NAMES
                and type(storage.numel) is int and storage.numel >= 0):
            raise TorchZipError(f"a tensor refers to a malformed storage {storage!r:.80}")
        ints = (self.offset, *self.shape, *self.stride)
        if not (isinstance(self.shape, tuple) and isinstance(self.stride, tuple) and len(self.shape) == len(self.stride)
                and all(type(value) is int and value >= 0 for value in ints)):
            raise TorchZipError(f"a tensor has a malformed layout (offset {self.offset!r}, shape {self.shape!r}, "
                                f"stride {self.stride!r})")
        if all(self.shape):
            extent = self.offset + sum((size - 1) * step for size, step in zip(self.shape, self.stride)) + 1
            if extent > self.storage.numel:
                raise TorchZipError(f"a tensor of shape {self.shape} reaches element {extent} of a "
                                    f"{self.storage.numel}-element storage")


class PrecisionName(str):
    """anomalib's `PrecisionType` enum (a str enum) read as its plain value, e.g. "float32"."""


@dataclass(frozen=True, slots=True)
class _StorageType:
    dtype: str


def _rebuild_tensor(storage, offset, shape, stride, requires_grad=False, hooks=None, metadata=None) -> TensorRef:
    """Stand-in for torch._utils._rebuild_tensor_v2: records where the values are, once they are shown to fit."""
    if not isinstance(storage, StorageRef) or not isinstance(shape, tuple) or not isinstance(stride, tuple):
        raise TorchZipError(f"a tensor is rebuilt from {type(storage).__name__}, {shape!r}, {stride!r}")
    if hooks is not None and not (isinstance(hooks, dict) and not hooks):
        raise TorchZipError("a tensor carries backward hooks")
    ref = TensorRef(storage, offset, shape, stride)
    ref.check()
    return ref


# (module, name) -> what the name stands for here. Nothing else is ever resolved.
_ALLOWED: dict[tuple[str, str], Any] = {
    ("collections", "OrderedDict"): collections.OrderedDict,
    ("torch._utils", "_rebuild_tensor_v2"): _rebuild_tensor,
    ("anomalib", "PrecisionType"): PrecisionName,
    **{("torch", name): _StorageType(dtype) for name, dtype in STORAGE_DTYPES.items()},
}
ALLOWED_NAMES = ("collections.OrderedDict", "torch._utils._rebuild_tensor_v2", "torch.<dtype>Storage",
                 "anomalib.PrecisionType")


class _RestrictedUnpickler(pickle.Unpickler):
    def __init__(self, data: bytes, path: Path) -> None:
        super().__init__(io.BytesIO(data))
        self.path = path

    def find_class(self, module: str, name: str):
        # Every way a pickle names a callable (GLOBAL, STACK_GLOBAL, the copyreg extension codes) ends here.
        try:
            return _ALLOWED[(module, name)]
        except KeyError:
            raise RefusedGlobal(self.path, f"{module}.{name}") from None

    def persistent_load(self, pid):
        if not (isinstance(pid, tuple) and len(pid) == 5 and pid[0] == "storage"
                and isinstance(pid[1], _StorageType) and isinstance(pid[2], str) and isinstance(pid[4], int)):
            raise TorchZipError(f"an unexpected persistent reference {pid!r:.80}")
        return StorageRef(key=pid[2], dtype=pid[1].dtype, numel=pid[4])


class TorchZip:
    """A torch zip checkpoint: `tree` is its object tree with TensorRef leaves; `array` reads one tensor."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        if not self.path.is_file():
            raise TorchZipError(f"{self.path}: no such file")
        if not zipfile.is_zipfile(self.path):
            raise TorchZipError(f"{self.path}: not a torch checkpoint (not a zip archive; torch.save has written zip "
                                "files since torch 1.6, and older formats are not read)")
        try:
            with zipfile.ZipFile(self.path) as archive:
                names = archive.namelist()
                pickles = [name for name in names if name.count("/") == 1 and name.endswith("/data.pkl")]
                if len(pickles) != 1:
                    raise TorchZipError(f"{self.path}: not a torch checkpoint (no single <archive>/data.pkl in the zip)")
                self._prefix = pickles[0][: -len("data.pkl")]
                info = archive.getinfo(pickles[0])
                if info.file_size > MAX_PICKLE_BYTES:
                    raise TorchZipError(f"{self.path}: its object tree is {info.file_size:,} bytes, above the "
                                        f"{MAX_PICKLE_BYTES:,} this reader accepts")
                data = archive.read(pickles[0])
                order = f"{self._prefix}byteorder"
                self._byteorder = archive.read(order).decode("ascii").strip() if order in names else "little"
        except (zipfile.BadZipFile, OSError, UnicodeDecodeError) as exc:
            raise TorchZipError(f"{self.path}: cannot read the zip ({exc})") from exc
        if self._byteorder not in ("little", "big"):
            raise TorchZipError(f"{self.path}: unknown byte order {self._byteorder!r}")
        try:
            self.tree = _RestrictedUnpickler(data, self.path).load()
        except RefusedGlobal:
            raise
        except TorchZipError as exc:
            raise TorchZipError(f"{self.path}: {exc}") from exc
        # A malformed pickle fails in many ways inside the unpickler; each is a refusal of the file.
        except (pickle.UnpicklingError, EOFError, ValueError, TypeError, AttributeError, IndexError, KeyError,
                RecursionError, MemoryError) as exc:
            raise TorchZipError(f"{self.path}: its data.pkl does not unpickle as plain data ({type(exc).__name__}: "
                                f"{exc})") from exc

    def arrays(self, refs: dict[str, TensorRef]) -> dict[str, np.ndarray]:
        """The tensors' values as numpy arrays (copies, native byte order), read in one pass over the zip."""
        out = {}
        try:
            with zipfile.ZipFile(self.path) as archive:
                for name, ref in refs.items():
                    try:
                        out[name] = self._read(archive, ref)
                    except TorchZipError as exc:
                        raise TorchZipError(f"{self.path}: {name}: {exc}") from exc
        except (zipfile.BadZipFile, KeyError, OSError) as exc:
            raise TorchZipError(f"{self.path}: cannot read a tensor's storage ({exc})") from exc
        return out

    def _read(self, archive: zipfile.ZipFile, ref: TensorRef) -> np.ndarray:
        ref.check()
        storage = ref.storage
        wide = storage.dtype == "bfloat16"
        dtype = np.dtype("uint16" if wide else storage.dtype).newbyteorder("<" if self._byteorder == "little" else ">")
        name = f"{self._prefix}data/{storage.key}"
        # Checked before reading: the entry's size is what the reader will inflate, at most.
        size = archive.getinfo(name).file_size
        if size != storage.numel * dtype.itemsize:
            raise TorchZipError(f"storage {storage.key} holds {size} bytes, not {storage.numel} x {dtype.itemsize}")
        raw = archive.read(name)
        flat = np.frombuffer(raw, dtype=dtype)
        if not all(ref.shape):
            values = np.zeros(ref.shape, dtype=dtype)
        else:
            values = np.lib.stride_tricks.as_strided(
                flat[ref.offset :], shape=ref.shape, strides=tuple(step * dtype.itemsize for step in ref.stride)
            )
        values = np.array(values, dtype=dtype.newbyteorder("="))
        if wide:
            # bfloat16 is the top half of a float32: widening is exact.
            values = (values.astype(np.uint32) << 16).view(np.float32)
        return values
