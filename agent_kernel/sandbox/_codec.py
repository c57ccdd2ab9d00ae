"""Values across the sandbox boundary, both ways, as data only: JSON, Arrow IPC, .npy, PNG or a repr.

The same module runs in the host and inside the restricted kernel, so it imports nothing heavy at
module level: pandas, numpy, pyarrow and matplotlib are only touched when a value is one of theirs
(if a module is not imported yet, the value cannot be an instance of its types).

`encode` turns a value into a JSON-able descriptor; big payloads go to a file in `transfer_dir`.
`decode` treats every descriptor as hostile (the host decodes what the sandbox wrote): it never
unpickles, opens only plain regular files named by the descriptor directly inside `transfer_dir`
(O_NOFOLLOW, one link, size matching and bounded), validates Arrow data fully and raises
`TransferError` on anything malformed. Decoding deletes the descriptor's file, whether it succeeds
or not; `cleanup` deletes the file of a descriptor that will never be decoded.

Files are read into private memory rather than memory-mapped: the sandbox can still write to the
transfer folder, so a mapped file could change after it was validated (out-of-bounds Arrow reads in
the host) or be truncated under the reader (SIGBUS kills the notebook kernel). The copy costs about
0.15 s per GB (bench/bench_transfer.py) and makes the Arrow validation below meaningful.
"""

from __future__ import annotations

import base64
import datetime
import importlib
import io
import json
import math
import os
import re
import reprlib
import stat
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

from ..errors import AgentKernelError

INLINE_LIMIT = 64 * 1024  # encoded payloads up to this size travel inside the descriptor
MAX_BYTES = 4 * 1024**3  # default bound on what decode will read
REPR_LIMIT = 2000  # characters of repr kept for values that cannot cross as data
_JSON_DEPTH = 100  # deeper structures cross as a repr (and decode refuses them)
_FILE_NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,199}")
_SUFFIX = {"json": ".json", "bytes": ".bin", "image": ".png", "arrow": ".arrow", "npy": ".npy"}
_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
_ARROW_AS = ("DataFrame", "Series", "Table")
_NPY_MAX_HEADER = 9000  # numpy refuses to parse .npy headers over 10000 characters (max_header_size)
_PER_TOKEN = 64  # host bytes a JSON container, element or member can take once parsed (a list is 56)
_TOKENS = (b"[", b"{", b",", b":")
_RECOUNT = 4096  # more tokens than this are counted again with the strings taken out
# A JSON string; possessive (Python >= 3.11: twice as fast, no backtracking) where the re module has it.
_STRINGS = re.compile(rb'"[^"\\]*+(?:\\.[^"\\]*+)*+"' if sys.version_info >= (3, 11) else rb'"[^"\\]*(?:\\.[^"\\]*)*"')
_OBJECT_COST = 100  # host bytes of one Python object pandas makes for a value (a str, None, a list), with its slot


class TransferError(AgentKernelError, ValueError):
    """A value could not cross the sandbox boundary: a malformed, unsafe or oversized descriptor."""


@dataclass(frozen=True)
class Opaque:
    """Stands in for a value that could not cross as data: its type and a bounded repr, never the object."""

    type: str
    text: str
    reason: str = ""

    def __repr__(self) -> str:
        why = f"not transferable as data: {self.reason}" if self.reason else "not transferable as data"
        return f"<{self.type} from the sandbox ({why}): {self.text}>"


@dataclass(frozen=True)
class ImageData:
    """A PNG that crossed the boundary (a matplotlib Figure or PIL image); Jupyter shows it as an image."""

    data: bytes
    type: str  # the type of the original object, e.g. "matplotlib.figure.Figure"
    mime: str = "image/png"

    def _repr_png_(self) -> bytes:
        return self.data

    def __repr__(self) -> str:
        return f"<ImageData {self.mime}, {len(self.data)} bytes, from {self.type}>"


# -- encode ----------------------------------------------------------------------------------------


def encode(value: Any, transfer_dir: str | Path, name: str) -> dict[str, Any]:
    """A JSON-able descriptor of `value`; payloads over INLINE_LIMIT are written to `transfer_dir`.

    Never raises for an unsupported or unconvertible value: that becomes a "repr" descriptor whose
    `reason` says why, so one odd variable does not break a whole pull.
    """
    tags: list[bool] = []
    try:
        text = json.dumps(_plain(value, 0, tags), ensure_ascii=False, allow_nan=True)
    except _NotPlain:
        pass
    else:
        tagged = {"tagged": True} if tags else {}
        if len(text) <= INLINE_LIMIT:
            return {"kind": "json", "text": text, **tagged}
        data = text.encode("utf-8", "surrogatepass")  # Python strings may hold lone surrogates
        return {**_file_descriptor("json", transfer_dir, name, lambda f: f.write(data)), **tagged}
    if type(value) is bytes:
        return _blob_descriptor("bytes", value, transfer_dir, name)
    for test, encoder in _ENCODERS:
        if test(value):
            try:
                return encoder(value, transfer_dir, name)
            except Exception as exc:  # noqa: BLE001 - e.g. pyarrow cannot convert a mixed object column
                return _repr_descriptor(value, f"{type(exc).__name__}: {exc}"[:REPR_LIMIT])
    return _repr_descriptor(value)


class _NotPlain(Exception):
    pass


_SCALARS = (str, int, float, bool, type(None))


_TUPLE, _DICT = "__tuple__", "__dict__"  # tags of a "tagged" JSON value: {"__tuple__": [...]}, {"__dict__": {...}}
# Time values as tagged text: {"__datetime__": "2024-05-01T00:00:00"}, a Period as [its text, its frequency].
_DATETIME, _DATE, _TIME, _TIMEDELTA = "__datetime__", "__date__", "__time__", "__timedelta__"
_TIMESTAMP, _PD_TIMEDELTA, _PERIOD = "__timestamp__", "__pd_timedelta__", "__period__"
_TIME_TAGS = (_DATETIME, _DATE, _TIME, _TIMEDELTA, _TIMESTAMP, _PD_TIMEDELTA, _PERIOD)
_TAGS = (_TUPLE, _DICT, *_TIME_TAGS)
_TIME_TEXT = 80  # characters of a time value's text decode will parse


def _plain(value: Any, depth: int, tags: list[bool]) -> Any:
    """`value` as plain JSON data (numpy scalars as Python ones), or _NotPlain.

    A tuple becomes {"__tuple__": [...]}, a date, time or period {"__date__": "2024-05-01"} and the like
    (`_time_tagged`), and a dict whose one key is a tag is wrapped in {"__dict__": ...} so it is not read
    as one; `tags` gets an entry when any of these happens (the descriptor is then "tagged").
    Stricter than json.dumps: non-string dict keys would silently become strings, so they refuse.
    """
    if type(value) in _SCALARS:
        return value
    for base in (str, int, float):
        if isinstance(value, base):  # e.g. bs4's NavigableString or an IntEnum: its plain value
            return base(value)
    when = _time_tagged(value)
    if when is not None:
        tags.append(True)
        return when
    if depth >= _JSON_DEPTH:
        raise _NotPlain
    if type(value) is list:
        return [_plain(v, depth + 1, tags) for v in value]
    if type(value) is tuple:
        tags.append(True)
        return {_TUPLE: [_plain(v, depth + 1, tags) for v in value]}
    if type(value) is dict:
        if not all(type(k) is str for k in value):
            raise _NotPlain
        plain = {k: _plain(v, depth + 1, tags) for k, v in value.items()}
        if len(plain) == 1 and next(iter(plain)) in _TAGS:
            tags.append(True)
            return {_DICT: plain}
        return plain
    np = _loaded("numpy")
    if np is not None and isinstance(value, np.generic) and value.dtype.kind in "biufU":
        return value.item()
    raise _NotPlain


def _time_tagged(value: Any) -> dict[str, Any] | None:
    """A date, time, datetime or timedelta (stdlib or pandas' Timestamp, Timedelta, Period) as its
    tag and ISO text; None for anything else. An aware one keeps its UTC offset, not its zone's name."""
    pd = _loaded("pandas")
    if pd is not None:
        if type(value) is pd.Timestamp:
            return {_TIMESTAMP: value.isoformat()}
        if type(value) is pd.Timedelta:
            return {_PD_TIMEDELTA: str(value.value)}  # nanoseconds
        if type(value) is pd.Period:
            return {_PERIOD: [str(value), value.freqstr]}
    kind = type(value)
    if kind in (datetime.datetime, datetime.date, datetime.time):
        return {{datetime.datetime: _DATETIME, datetime.date: _DATE, datetime.time: _TIME}[kind]: value.isoformat()}
    if kind is datetime.timedelta:
        return {_TIMEDELTA: [value.days, value.seconds, value.microseconds]}
    return None


def _loaded(module: str) -> Any:
    """The module if something already imported it (then values of its types may exist), else None."""
    return sys.modules.get(module)


def _is_pandas(value: Any) -> bool:
    pd = _loaded("pandas")
    return pd is not None and type(value) in (pd.DataFrame, pd.Series)


def _is_arrow_table(value: Any) -> bool:
    pa = _loaded("pyarrow")
    return pa is not None and type(value) is pa.Table


def _is_ndarray(value: Any) -> bool:
    np = _loaded("numpy")
    return np is not None and type(value) in (np.ndarray, np.memmap)


def _is_figure(value: Any) -> bool:
    figure = _loaded("matplotlib.figure")
    return figure is not None and isinstance(value, figure.Figure)


def _is_pil_image(value: Any) -> bool:
    image = _loaded("PIL.Image")
    return image is not None and isinstance(value, image.Image)


def _encode_arrow(value: Any, transfer_dir: str | Path, name: str) -> dict[str, Any]:
    import pyarrow.ipc

    descriptor: dict[str, Any] = {"kind": "arrow", "as": type(value).__name__}
    if _is_arrow_table(value):
        table = value
    else:
        import pandas as pd

        frame = value
        if isinstance(value, pd.Series):
            descriptor["unnamed"] = value.name is None  # to_frame() names an unnamed Series 0
            frame = value.to_frame()
        if isinstance(frame.index, (pd.DatetimeIndex, pd.TimedeltaIndex)) and frame.index.freq is not None:
            descriptor["freq"] = frame.index.freqstr  # Arrow keeps the index values but not their freq
        table = _frame_to_table(frame)

    def write(f: IO[bytes]) -> None:
        with pyarrow.ipc.new_file(f, table.schema) as writer:  # uncompressed: no decompression bombs
            writer.write_table(table)

    return descriptor | _file_descriptor("arrow", transfer_dir, name, write, size_hint=table.nbytes)


def _frame_to_table(frame: Any) -> Any:
    """`pa.Table.from_pandas(frame)`, minus the per-value scans that change nothing for numpy columns.

    from_pandas turns each NaN and NaT into an Arrow null by checking every value (~3 ns a value:
    0.1 s for three such columns of 10M rows), and to_pandas turns the nulls back, writing every
    value again. Carried as the bits they are, NaN and NaT come back the same with neither pass.
    The schema and pandas metadata still come from from_pandas, on the first row. Anything beyond
    numpy and categorical columns under a plain index goes through from_pandas whole.
    """
    import numpy as np
    import pandas as pd
    import pyarrow as pa

    index = frame.index
    simple = (
        len(frame) > 0
        and not isinstance(frame.columns, pd.MultiIndex)
        and frame.columns.is_unique
        and all(isinstance(name, str) for name in frame.columns)
        and (isinstance(index, pd.RangeIndex) or (type(index) is not pd.MultiIndex and _is_plain(index.dtype, np)))
    )
    if not simple or not all(_is_plain(dtype, np) or isinstance(dtype, pd.CategoricalDtype) for dtype in frame.dtypes):
        return pa.Table.from_pandas(frame)
    head = pa.Table.from_pandas(frame.iloc[:1])
    sources = [frame[name].array for name in frame.columns] + ([] if isinstance(index, pd.RangeIndex) else [index.array])
    if len(sources) != head.num_columns:
        return pa.Table.from_pandas(frame)
    columns = []
    for source, field, first in zip(sources, head.schema, head.columns):
        if isinstance(source, pd.Categorical):
            codes = source.codes
            nulls = codes < 0
            indices = pa.array(codes, mask=nulls if nulls.any() else None)
            column = pa.DictionaryArray.from_arrays(indices, first.chunk(0).dictionary, ordered=field.type.ordered)
        elif source.dtype.kind in "mM":  # NaT is the smallest int64, and stays NaT on the way back
            column = pa.array(np.asarray(source).view("int64")).view(field.type)
        else:
            column = pa.array(np.asarray(source), from_pandas=False)
        if column.type != field.type:
            return pa.Table.from_pandas(frame)
        columns.append(column)
    metadata = json.loads(head.schema.metadata[b"pandas"])
    for entry in metadata["index_columns"]:
        if isinstance(entry, dict) and entry.get("kind") == "range":  # the first row's range, made whole
            entry.update(start=index.start, stop=index.stop, step=index.step)
    schema = head.schema.with_metadata({**head.schema.metadata, b"pandas": json.dumps(metadata).encode()})
    return pa.Table.from_arrays(columns, schema=schema)


def _is_plain(dtype: Any, np: Any) -> bool:
    """A numpy number, bool, datetime or timedelta dtype: one fixed-size value per row, no objects."""
    return isinstance(dtype, np.dtype) and dtype.kind in "biufmM"


def _encode_npy(value: Any, transfer_dir: str | Path, name: str) -> dict[str, Any]:
    import numpy as np

    if value.dtype.hasobject:
        return _repr_descriptor(value, "numpy arrays of Python objects cross only as a repr")
    if len(str(value.dtype.descr)) > _NPY_MAX_HEADER:
        return _repr_descriptor(value, "the dtype is too large for a safely readable .npy header")

    def write(f: IO[bytes]) -> None:
        np.save(f, value, allow_pickle=False)

    return _file_descriptor("npy", transfer_dir, name, write, size_hint=value.nbytes)


def _encode_image(value: Any, transfer_dir: str | Path, name: str) -> dict[str, Any]:
    buffer = io.BytesIO()
    if _is_figure(value):
        value.savefig(buffer, format="png")
    else:
        value.save(buffer, format="PNG")
    return _blob_descriptor("image", buffer.getvalue(), transfer_dir, name) | {"type": _type_name(value)}


_Encoder = Callable[[Any, "str | Path", str], dict[str, Any]]
_ENCODERS: tuple[tuple[Callable[[Any], bool], _Encoder], ...] = (
    (_is_pandas, _encode_arrow),
    (_is_arrow_table, _encode_arrow),
    (_is_ndarray, _encode_npy),
    (_is_figure, _encode_image),
    (_is_pil_image, _encode_image),
)


def _blob_descriptor(kind: str, data: bytes, transfer_dir: str | Path, name: str) -> dict[str, Any]:
    if len(data) <= INLINE_LIMIT:
        return {"kind": kind, "base64": base64.b64encode(data).decode("ascii")}
    return _file_descriptor(kind, transfer_dir, name, lambda f: f.write(data))


def _file_descriptor(
    kind: str, transfer_dir: str | Path, name: str, write: Callable[[IO[bytes]], Any], size_hint: int = 0
) -> dict[str, Any]:
    """Write a payload to a fresh file (never through a planted symlink) and describe it.

    `size_hint` preallocates the file: for a big payload that makes the write ~30% faster.
    """
    stem = re.sub(r"[^A-Za-z0-9_]", "_", name)[:64] or "value"
    file = f"{stem}-{os.urandom(8).hex()}{_SUFFIX[kind]}"
    path = Path(transfer_dir, file)
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
    try:
        with os.fdopen(os.open(path, flags, 0o600), "wb") as f:
            if size_hint:
                with suppress(OSError):  # only an optimisation; some filesystems refuse it
                    os.posix_fallocate(f.fileno(), 0, size_hint)
            write(f)
            f.flush()
            size = f.tell()
            os.ftruncate(f.fileno(), size)  # drop what the hint preallocated beyond the payload
    except BaseException:
        path.unlink(missing_ok=True)
        raise
    return {"kind": kind, "file": file, "size": size}


def _repr_descriptor(value: Any, reason: str = "") -> dict[str, Any]:
    descriptor = {"kind": "repr", "type": _type_name(value), "text": _bounded_repr(value, REPR_LIMIT)}
    return descriptor | {"reason": reason} if reason else descriptor


def _type_name(value: Any) -> str:
    cls = type(value)
    return cls.__qualname__ if cls.__module__ == "builtins" else f"{cls.__module__}.{cls.__qualname__}"


_REPR = reprlib.Repr()  # keyword arguments only from Python 3.12
_REPR.maxlevel, _REPR.maxstring, _REPR.maxother = 3, 120, REPR_LIMIT
_REPR.maxlist = _REPR.maxtuple = _REPR.maxdict = _REPR.maxset = _REPR.maxfrozenset = 8


def _bounded_repr(value: Any, limit: int) -> str:
    """A repr that cannot grow with the value (reprlib stops early in containers), cut to `limit`."""
    try:
        text = _REPR.repr(value)
    except Exception as exc:  # noqa: BLE001 - a broken __repr__ must not break a transfer
        text = f"<repr failed: {type(exc).__name__}>"
    return text if len(text) <= limit else text[: limit - 1] + "…"


# -- decode ----------------------------------------------------------------------------------------


def json_cost(raw: bytes | str) -> int:
    """About the host bytes `raw` JSON takes once parsed, counted without parsing it: its length,
    plus `_PER_TOKEN` for every bracket, comma and colon outside strings (20 bytes of
    `[[],[],...]` parse into ~450). Commas inside strings are only told apart when there are many."""
    data = raw.encode("utf-8", "surrogatepass") if isinstance(raw, str) else raw
    tokens = sum(data.count(c) for c in _TOKENS)
    if tokens > _RECOUNT:  # HTML, scripts and JSON inside strings: count outside the strings only
        tokens = sum(_STRINGS.sub(b"", data).count(c) for c in _TOKENS)
    return len(data) + _PER_TOKEN * tokens


class Budget:
    """Host bytes the values of one call may still take once decoded (all the names of a pull, all
    the arguments of a host-function call): each decoder charges what it will allocate, as computed
    from sizes and lengths, before it allocates it."""

    def __init__(self, limit: int) -> None:
        self.limit = self.left = limit

    def charge(self, nbytes: int, what: str) -> None:
        if nbytes > self.left:
            raise TransferError(
                f"{what} would take about {_mib(nbytes)} of memory here, over the {_mib(self.left)} left of "
                f"the {_mib(self.limit)} the values of one call may take (max_bytes={self.limit}, a sandbox's "
                "max_transfer): transfer fewer or smaller values at once, or give the sandbox a larger max_transfer"
            )
        self.left -= nbytes


def _mib(nbytes: int) -> str:
    return f"{nbytes / 1024**2:.1f} MiB"


def decode(
    descriptor: Any, transfer_dir: str | Path, *, max_bytes: int = MAX_BYTES, budget: Budget | None = None
) -> Any:
    """The value a descriptor stands for. Raises TransferError for anything malformed or unsafe, or
    over `budget` (shared by the values of one call; else `max_bytes` for this value alone).

    The descriptor's file (if any) is deleted afterwards, also when decoding fails.
    """
    budget = Budget(max_bytes) if budget is None else budget
    if (
        not isinstance(descriptor, dict)
        or not isinstance(descriptor.get("kind"), str)
        or descriptor["kind"] not in _DECODERS
    ):
        raise TransferError(
            f"not a transfer descriptor (expected a dict with a known 'kind'): {_bounded_repr(descriptor, 200)}"
        )
    try:
        return _DECODERS[descriptor["kind"]](descriptor, transfer_dir, budget)
    except TransferError:
        raise
    except RecursionError:
        raise TransferError("the transferred data is nested too deeply") from None
    except Exception as exc:  # malformed payloads fail in many ways inside json/pyarrow/numpy
        raise TransferError(f"could not decode a {descriptor['kind']!r} transfer: {type(exc).__name__}: {exc}") from exc
    finally:
        with suppress(TransferError):  # an unsafe file name has already been reported
            cleanup(descriptor, transfer_dir)


def cleanup(descriptor: Any, transfer_dir: str | Path) -> None:
    """Delete the file behind a descriptor that will not be decoded (e.g. a push that failed)."""
    if isinstance(descriptor, dict) and "file" in descriptor:
        _file_path(descriptor, transfer_dir).unlink(missing_ok=True)


def _decode_json(descriptor: dict[str, Any], transfer_dir: str | Path, budget: Budget) -> Any:
    tagged = descriptor.get("tagged", False)
    if tagged is not True and tagged is not False:
        raise TransferError(f"the JSON transfer's 'tagged' must be true or false, not {_bounded_repr(tagged, 50)}")
    if "file" in descriptor:
        with _open_file(descriptor, transfer_dir, budget) as f:
            data = f.read()
        cost = json_cost(data)
        budget.charge(cost * (2 if tagged else 1) + len(data), "a JSON value")  # its text, then its objects
        value = json.loads(data.decode("utf-8", "surrogatepass"))
    else:
        text = _field(descriptor, "text", str)
        cost = json_cost(text)
        budget.charge(cost * (2 if tagged else 1), "an inline JSON value")  # a tagged one is copied once
        value = json.loads(text)
    return _untag(value, 0) if tagged else value


def _untag(value: Any, depth: int) -> Any:
    """A tagged JSON value's tuples as tuples; a tag of the wrong shape is refused (the sandbox wrote it)."""
    if depth > 2 * _JSON_DEPTH + 2:  # each level may be wrapped once
        raise TransferError("the transferred data is nested too deeply")
    if type(value) is list:
        return [_untag(v, depth + 1) for v in value]
    if type(value) is not dict:
        return value
    if len(value) == 1 and next(iter(value)) in _TAGS:
        tag, inner = next(iter(value.items()))
        if tag == _TUPLE and type(inner) is list:
            return tuple(_untag(v, depth + 1) for v in inner)
        if tag == _DICT and type(inner) is dict and len(inner) == 1 and next(iter(inner)) in _TAGS:
            return {k: _untag(v, depth + 1) for k, v in inner.items()}
        if tag in _TIME_TAGS:
            return _untag_time(tag, inner)
        raise TransferError(f"a malformed {tag!r} tag in a JSON transfer: {_bounded_repr(inner, 100)}")
    return {k: _untag(v, depth + 1) for k, v in value.items()}


def _untag_time(tag: str, inner: Any) -> Any:
    """A tagged time value, its short texts checked before they are parsed."""
    def text(value: Any) -> str:
        if type(value) is not str or len(value) > _TIME_TEXT:
            raise TransferError(f"a malformed {tag!r} tag in a JSON transfer: {_bounded_repr(inner, 100)}")
        return value

    try:
        if tag == _TIMEDELTA and type(inner) is list and len(inner) == 3 and all(type(n) is int for n in inner):
            return datetime.timedelta(days=inner[0], seconds=inner[1], microseconds=inner[2])
        if tag == _PERIOD and type(inner) is list and len(inner) == 2:
            return _require("pandas", "a pandas Period").Period(text(inner[0]), freq=text(inner[1]))
        if tag == _TIMESTAMP:
            return _require("pandas", "a pandas Timestamp").Timestamp(text(inner))
        if tag == _PD_TIMEDELTA and re.fullmatch(r"-?\d{1,20}", text(inner)):
            return _require("pandas", "a pandas time value").Timedelta(int(inner), unit="ns")
        parse: dict[str, Callable[[str], Any]] = {_DATETIME: datetime.datetime.fromisoformat,
                                                  _DATE: datetime.date.fromisoformat, _TIME: datetime.time.fromisoformat}
        if tag in parse:
            return parse[tag](text(inner))
    except TransferError:
        raise
    except (ValueError, TypeError, OverflowError, KeyError) as e:  # pandas' parse errors are ValueErrors
        raise TransferError(f"a {tag!r} value in a JSON transfer does not parse: {_bounded_repr(inner, 100)}") from e
    raise TransferError(f"a malformed {tag!r} tag in a JSON transfer: {_bounded_repr(inner, 100)}")


def _decode_bytes(descriptor: dict[str, Any], transfer_dir: str | Path, budget: Budget) -> bytes:
    if "file" in descriptor:
        with _open_file(descriptor, transfer_dir, budget) as f:
            return f.read()
    data = _field(descriptor, "base64", str)
    budget.charge(len(data) * 3 // 4, "inline bytes")
    return base64.b64decode(data, validate=True)


def _decode_image(descriptor: dict[str, Any], transfer_dir: str | Path, budget: Budget) -> ImageData:
    data = _decode_bytes(descriptor, transfer_dir, budget)
    if not data.startswith(_PNG_SIGNATURE):
        raise TransferError("an 'image' transfer must hold PNG data")
    return ImageData(data, _field(descriptor, "type", str)[:200])


def _decode_repr(descriptor: dict[str, Any], transfer_dir: str | Path, budget: Budget) -> Opaque:
    reason = descriptor.get("reason", "")
    if not isinstance(reason, str):
        raise TransferError("a 'repr' descriptor's 'reason' must be a string")
    text = _field(descriptor, "text", str)
    return Opaque(_field(descriptor, "type", str)[:200], text[:REPR_LIMIT], reason[:REPR_LIMIT])


def _decode_npy(descriptor: dict[str, Any], transfer_dir: str | Path, budget: Budget) -> Any:
    """Read the array into memory (not np.load's mmap_mode): the file is deleted next, and the sandbox
    could rewrite or truncate a mapped file under the host. Only format 1.0: numpy writes 2.0/3.0
    only for headers too big for its safe header parser anyway."""
    np = _require("numpy", "a numpy array")
    fmt = np.lib.format
    with _open_file(descriptor, transfer_dir, budget) as f:  # charges the file: the array is as big
        version = fmt.read_magic(f)
        if version != (1, 0):
            raise TransferError(f"unsupported .npy format version {version}")
        shape, fortran_order, dtype = fmt.read_array_header_1_0(f)
        if any(n < 0 for n in shape):
            raise TransferError(f"negative dimension in .npy shape {shape}")
        if dtype.hasobject:
            raise TransferError("refusing a .npy of Python objects (it would need pickle)")
        if dtype.itemsize == 0:  # any shape fits in no bytes: 10**15 elements of nothing
            raise TransferError(f"refusing a .npy of the zero-size dtype {str(dtype)[:80]}")
        expected = f.tell() + dtype.itemsize * math.prod(shape)
        if expected != descriptor["size"]:
            raise TransferError(f"the .npy header describes {expected} bytes but the file has {descriptor['size']}")
        array = np.fromfile(f, dtype=dtype, count=math.prod(shape))
    return array.reshape(shape[::-1]).transpose() if fortran_order else array.reshape(shape)


def _decode_arrow(descriptor: dict[str, Any], transfer_dir: str | Path, budget: Budget) -> Any:
    as_ = _field(descriptor, "as", str)
    if as_ not in _ARROW_AS:
        raise TransferError(f"an 'arrow' descriptor's 'as' must be one of {_ARROW_AS}, not {as_!r}")
    pa = _require("pyarrow", "an Arrow table")
    import pyarrow.ipc

    with _open_file(descriptor, transfer_dir, budget) as f:
        buffer = pa.allocate_buffer(descriptor["size"])
        if f.readinto(memoryview(buffer)) != descriptor["size"]:
            raise TransferError("the Arrow file changed size while it was read")
    # The stream inside the file, after its 8-byte magic: every message read is checked first (the
    # footer, which could point elsewhere, is never read). Compressed bodies would be decompressed
    # to sizes nothing here bounds: 5 KB of zstd become 80 MB.
    stream = buffer.slice(8)
    for message in pyarrow.ipc.MessageReader.open_stream(pa.BufferReader(stream)):
        if _compressed(message.metadata.to_pybytes()):
            raise TransferError("refusing a compressed Arrow file: send it uncompressed (as the codec writes it)")
    table = pyarrow.ipc.open_stream(stream).read_all()
    _check_arrow_types(table.schema)
    table.validate(full=True)  # crafted offsets or lengths must fail here, not as reads out of bounds
    if as_ == "Table":
        return table
    _require("pandas", "a pandas DataFrame or Series")
    budget.charge(_pandas_cost(table), f"a DataFrame of {table.num_rows} rows x {table.num_columns} columns")
    frame = table.to_pandas()
    _restore_object_columns(table, frame)
    if "freq" in descriptor:
        frame.index = type(frame.index)(frame.index, freq=_field(descriptor, "freq", str)[:40])
    if as_ == "DataFrame":
        return frame
    series = frame.iloc[:, 0]
    if descriptor.get("unnamed") is True:
        series.name = None
    return series


def _compressed(metadata: bytes) -> bool:
    """Whether an Arrow IPC message's flatbuffer metadata declares a compressed body: the
    `compression` field (3) of its RecordBatch, which a DictionaryBatch holds as its field 1."""

    def read(position: int, size: int, signed: bool = False) -> int:
        if not 0 <= position <= len(metadata) - size:
            raise TransferError("malformed Arrow message metadata")
        return int.from_bytes(metadata[position : position + size], "little", signed=signed)

    def field(table: int, index: int) -> int | None:
        """Where field `index` of the flatbuffer table at `table` is, if present."""
        vtable = table - read(table, 4, signed=True)
        if 4 + 2 * index >= read(vtable, 2):
            return None
        offset = read(vtable + 4 + 2 * index, 2)
        return table + offset if offset else None

    def child(table: int, index: int) -> int | None:
        at = field(table, index)
        return None if at is None else at + read(at, 4)

    root = read(0, 4)
    kind_at = field(root, 1)  # Message.header_type: 2 DictionaryBatch, 3 RecordBatch
    kind = 0 if kind_at is None else read(kind_at, 1)
    header = child(root, 2)
    if header is None or kind not in (2, 3):
        return False
    batch = child(header, 1) if kind == 2 else header
    return batch is not None and field(batch, 3) is not None


def _check_arrow_types(schema: Any) -> None:
    """Refuse types whose values can share storage (views, run-end encoding, nested dictionaries):
    a small file of them can expand into an arbitrarily large DataFrame."""
    import pyarrow as pa
    import pyarrow.types as t

    # getattr: older pyarrow (>= 14 is supported) lacks some of these types altogether
    shared = [
        getattr(t, f"is_{n}", None)
        for n in ("run_end_encoded", "binary_view", "string_view", "list_view", "large_list_view")
    ]
    shared_storage = [test for test in shared if test is not None]

    def check(arrow_type: Any, top: bool) -> None:
        if any(test(arrow_type) for test in shared_storage):
            raise TransferError(f"refusing Arrow type {arrow_type}: its values can share storage")
        if isinstance(arrow_type, pa.BaseExtensionType):
            check(arrow_type.storage_type, top)
        elif t.is_dictionary(arrow_type):
            if not top:
                raise TransferError("refusing a nested dictionary-encoded Arrow column")
            check(arrow_type.value_type, False)
        for i in range(arrow_type.num_fields):
            check(arrow_type.field(i).type, False)

    for field in schema:
        check(field.type, True)


def _pandas_cost(table: Any) -> int:
    """About the host bytes `to_pandas` and `_restore_object_columns` make of `table`, from its
    lengths and types alone: a copy of its buffers, 8 bytes a row for a column of numbers, and a
    Python object for every value of any other column, nested values included (a null column
    has no buffers at all, and 50M rows of it are 50M objects' slots)."""
    import pyarrow.types as t

    cost = table.nbytes
    for column in table.columns:
        kind = column.type
        numeric = t.is_integer(kind) or t.is_floating(kind) or t.is_boolean(kind) or t.is_timestamp(kind) or t.is_duration(kind)
        for chunk in column.chunks:
            cost += 8 * len(chunk) if numeric else _OBJECT_COST * _values(chunk)
    return cost


def _values(array: Any) -> int:
    """How many values `array` holds, its nested ones (list items, struct fields, a dictionary) included."""
    import pyarrow as pa

    if isinstance(array, pa.ExtensionArray):
        return _values(array.storage)
    count = len(array)
    if isinstance(array, pa.DictionaryArray):
        return count + _values(array.dictionary)
    if isinstance(array, (pa.ListArray, pa.LargeListArray, pa.FixedSizeListArray)):
        return count + _values(array.values)
    if isinstance(array, (pa.StructArray, pa.UnionArray)):
        return count + sum(_values(array.field(i)) for i in range(array.type.num_fields))
    return count


def _restore_object_columns(table: Any, frame: Any) -> None:
    """Give object columns back their Python values: pandas >= 3 turns Arrow strings into its str
    dtype, and pyarrow turns lists into numpy arrays and int columns with None into floats."""
    import pandas as pd
    import pyarrow as pa

    meta = table.schema.pandas_metadata or {}
    index_fields = {c for c in meta.get("index_columns", []) if isinstance(c, str)}
    entries = [c for c in meta.get("columns", []) if c.get("field_name") not in index_fields]
    if len(entries) != frame.shape[1]:
        return
    for position, entry in enumerate(entries):
        column = table.column(entry["field_name"])
        # A dictionary column stays categorical: made whole, each row would be a new copy of its value.
        if entry.get("numpy_type") == "object" and not pa.types.is_dictionary(column.type):
            values = column.to_pylist()
            frame.isetitem(position, pd.Series(values, index=frame.index, dtype=object))


def _require(module: str, what: str) -> Any:
    try:
        return importlib.import_module(module)
    except ImportError:
        raise TransferError(f"{module} is needed to receive {what}: install it in this environment") from None


def _field(descriptor: dict[str, Any], key: str, kind: type) -> Any:
    value = descriptor.get(key)
    if not isinstance(value, kind):
        raise TransferError(f"a {descriptor['kind']!r} descriptor needs {key!r} as {kind.__name__}")
    return value


def _file_path(descriptor: dict[str, Any], transfer_dir: str | Path) -> Path:
    """The descriptor's file, which must be a plain name directly inside transfer_dir."""
    file = descriptor.get("file")
    suffix = _SUFFIX.get(str(descriptor.get("kind")), "")
    if not isinstance(file, str) or not _FILE_NAME.fullmatch(file) or ".." in file or not file.endswith(suffix):
        raise TransferError(f"unsafe or malformed transfer file name: {_bounded_repr(file, 120)}")
    return Path(transfer_dir, file)


@contextmanager
def _open_file(descriptor: dict[str, Any], transfer_dir: str | Path, budget: Budget) -> Iterator[io.BufferedReader]:
    """Open the descriptor's file only if it is a regular, singly-linked file of the declared size,
    and charge that size to `budget` (a sparse file has it without taking disk): a planted
    symlink, hard link or FIFO aimed at a host secret fails."""
    path = _file_path(descriptor, transfer_dir)
    size = descriptor.get("size")
    if type(size) is not int or size < 0:
        raise TransferError(f"transfer file size {_bounded_repr(size, 40)} is not a non-negative int")
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError as exc:
        raise TransferError(
            f"cannot open transfer file {path.name!r} (a symlink, or missing?): {exc.strerror}"
        ) from None
    with os.fdopen(fd, "rb") as f:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode) or st.st_nlink != 1:
            raise TransferError(f"transfer file {path.name!r} is not a plain regular file")
        if st.st_size != size:
            raise TransferError(f"transfer file {path.name!r} has {st.st_size} bytes, the descriptor says {size}")
        budget.charge(size, f"transfer file {path.name!r}")
        yield f


_Decoder = Callable[[dict[str, Any], "str | Path", Budget], Any]
_DECODERS: dict[str, _Decoder] = {
    "json": _decode_json,
    "bytes": _decode_bytes,
    "image": _decode_image,
    "repr": _decode_repr,
    "npy": _decode_npy,
    "arrow": _decode_arrow,
}


# -- describe --------------------------------------------------------------------------------------


def describe(value: Any, limit: int = 200) -> str:
    """A one-line preview for prompts and variable listings: type, size, columns, first items.

    Costs the same for a huge value as for a small one; never raises.
    """
    try:
        text = _describe(value, limit)
    except Exception:  # noqa: BLE001 - a preview must never break a listing
        text = _type_name(value)
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _describe(value: Any, limit: int) -> str:
    pd = _loaded("pandas")
    if pd is not None and type(value) is pd.DataFrame:
        rows, cols = value.shape
        columns = []
        for column, dtype in zip(value.columns[:50], value.dtypes.iloc[:50]):
            columns.append(f"{column}: {dtype}")
        more = ", …" if cols > 50 else ""
        return f"DataFrame {rows} rows x {cols} columns [{', '.join(columns)}{more}]"
    if pd is not None and type(value) is pd.Series:
        head = _bounded_repr(value.iloc[:5].tolist(), limit)
        return f"Series {value.name!r} len={len(value)} dtype={value.dtype}: {head}"
    if _is_arrow_table(value):
        return f"pyarrow.Table {value.num_rows} rows: {_bounded_repr(value.schema.names[:50], limit)}"
    if _is_ndarray(value):
        head = _bounded_repr(value.ravel()[:5].tolist(), limit) if value.size else "[]"
        return f"ndarray shape={value.shape} dtype={value.dtype}: {head}"
    if _is_figure(value):
        width, height = value.get_size_inches() * value.dpi
        return f"matplotlib Figure {width:.0f}x{height:.0f} px, {len(value.axes)} axes"
    if isinstance(value, (str, bytes, list, tuple, dict, set, frozenset)):
        return f"{_type_name(value)} len={len(value)}: {_bounded_repr(value, limit)}"
    return f"{_type_name(value)}: {_bounded_repr(value, limit)}"
