"""Properties of what the host does with anything the sandbox sends, over generated inputs.

(a) The codec's decoders, given arbitrary descriptors and adversarial files (random bytes,
truncated or scribbled Arrow IPC, valid Arrow whose declared lengths are huge, .npy headers with
extreme shapes and dtypes), give a value or TransferError, never another exception, and never take
much more memory than the budget they were given.
(b) The host's message handling (the frame reader, `_messages.check`, `_Outputs`, the reply
parser), given arbitrary frames and message dicts, gives a checked message, Malformed, or a
documented error, and holds outputs within its bounds.
"""

from __future__ import annotations

import io
import json
import math
import string
import sys
import types
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.ipc
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from jupyter_client.session import Session

from agent_kernel.sandbox._client import SandboxError, _expression_value, _Outputs
from agent_kernel.sandbox._local import LocalBackend
from agent_kernel.sandbox._codec import Budget, TransferError, decode, json_cost
from agent_kernel.sandbox._gateway import _parse, _parse_v1
from agent_kernel.sandbox._messages import IGNORED, MAX_ITEM, Malformed, Message, check

pytestmark = pytest.mark.skipif(sys.platform != "linux", reason="peak memory is read from /proc")

MiB = 1024**2
BUDGET = 32 * MiB
SLACK = 96 * MiB  # what the decoders' own working memory may add over the budget
FEW = settings(max_examples=60, deadline=None, database=None, suppress_health_check=list(HealthCheck))
SOME = settings(max_examples=150, deadline=None, database=None, suppress_health_check=list(HealthCheck))


def peak_growth(run: Any) -> int:
    """Bytes this process's peak resident size grew by while `run()` ran (the peak is reset first)."""
    def read(field: str) -> int:
        with open("/proc/self/status") as f:
            return next(int(line.split()[1]) * 1024 for line in f if line.startswith(field))

    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")
    before = read("VmRSS:")
    run()
    return read("VmHWM:") - before


def decodes_within_budget(descriptor: Any, folder: Path) -> None:
    """The property (a): a value or TransferError, and the peak memory within the budget."""
    outcome: list[Any] = []

    def run() -> None:
        try:
            outcome.append(decode(descriptor, folder, budget=Budget(BUDGET)))
        except TransferError as exc:
            outcome.append(exc)

    growth = peak_growth(run)
    outcome.clear()  # drop the value before the next example
    assert growth < BUDGET + SLACK, f"decoding took {growth / MiB:.0f} MiB"


@pytest.fixture(scope="module")
def folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("transfer")


def plant(folder: Path, name: str, data: bytes) -> int:
    (folder / name).unlink(missing_ok=True)
    (folder / name).write_bytes(data)
    return len(data)


# -- (a) decoders ----------------------------------------------------------------------------------

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=5) | st.dictionaries(st.text(max_size=5), inner, max_size=5),
    max_leaves=20,
)
kinds = st.sampled_from(["json", "bytes", "image", "repr", "npy", "arrow", "pickle", ""])


@SOME
@given(kind=kinds, extra=st.dictionaries(st.sampled_from(["text", "base64", "file", "size", "as", "type", "reason",
                                                          "payload", "freq", "unnamed"]), json_values, max_size=6))
def test_arbitrary_descriptors_decode_or_raise_transfer_error(kind: str, extra: dict[str, Any], folder: Path) -> None:
    decodes_within_budget({"kind": kind, **extra}, folder)


@SOME
@given(kind=st.sampled_from(["json", "bytes", "image", "npy", "arrow"]), data=st.binary(max_size=2048),
       as_=st.sampled_from(["DataFrame", "Series", "Table"]))
def test_random_file_contents_decode_or_raise_transfer_error(kind: str, data: bytes, as_: str, folder: Path) -> None:
    name = f"f.{ {'json': 'json', 'bytes': 'bin', 'image': 'png', 'npy': 'npy', 'arrow': 'arrow'}[kind] }"
    size = plant(folder, name, data)
    decodes_within_budget({"kind": kind, "file": name, "size": size, "as": as_, "type": "t"}, folder)


@SOME
@given(text=st.one_of(
    st.text(max_size=200),
    st.integers(1, 2_000_000).map(lambda n: "[" + "[]," * n + "[]]"),  # ~3 bytes each, ~64 parsed
    st.integers(1, 2_000_000).map(lambda n: "{" + ",".join(f'"{i}":{{}}' for i in range(min(n, 200_000))) + "}"),
))
def test_json_that_expands_is_refused_before_it_is_parsed(text: str, folder: Path) -> None:
    decodes_within_budget({"kind": "json", "text": text}, folder)
    size = plant(folder, "j.json", text.encode())
    decodes_within_budget({"kind": "json", "file": "j.json", "size": size}, folder)


def _arrow_bytes(table: pa.Table) -> bytes:
    sink = io.BytesIO()
    with pyarrow.ipc.new_file(sink, table.schema) as writer:
        writer.write_table(table)
    return sink.getvalue()


ARROW_MAX = 2**31 - 1  # the most rows an Arrow IPC record batch may declare
lengths = st.integers(0, 31).map(lambda e: 2**e - 1) | st.integers(0, 1000)


def nulls(length: int) -> pa.Array:
    """A null array of `length`, allocating nothing (`pa.nulls` allocates a bitmap)."""
    return pa.Array.from_buffers(pa.null(), length, [None])


@st.composite
def adversarial_tables(draw: st.DrawFn) -> pa.Table:
    """Small files whose declared lengths are huge: nulls, lists of nulls, dictionaries of one long
    value, with pandas metadata that claims object columns."""
    rows = draw(lengths)
    columns: dict[str, pa.Array] = {}
    for i in range(draw(st.integers(1, 6))):
        shape = draw(st.sampled_from(["null", "fixed_list_null", "struct_null", "dictionary", "ints"]))
        if shape == "null":
            columns[f"c{i}"] = nulls(rows)
        elif shape == "fixed_list_null":
            width = draw(st.integers(1, 10**6))
            columns[f"c{i}"] = pa.FixedSizeListArray.from_arrays(nulls(min(rows, ARROW_MAX // width) * width), width)
        elif shape == "struct_null":
            columns[f"c{i}"] = pa.StructArray.from_arrays([nulls(rows)], names=["n"])
        elif shape == "dictionary":
            count = min(rows, 10**5)
            columns[f"c{i}"] = pa.DictionaryArray.from_arrays(
                pa.array(np.zeros(count, dtype="int8")), pa.array(["x" * draw(st.integers(0, 10**5))]))
        else:
            columns[f"c{i}"] = pa.array(np.zeros(min(rows, 10**5), dtype="int64"))
    length = min(len(c) for c in columns.values())
    table = pa.table({k: c.slice(0, length) if len(c) != length else c for k, c in columns.items()})
    if draw(st.booleans()):  # pandas metadata claiming every column holds Python objects
        meta = {"index_columns": [], "columns": [
            {"name": k, "field_name": k, "pandas_type": "object", "numpy_type": "object", "metadata": None}
            for k in table.column_names]}
        table = table.replace_schema_metadata({b"pandas": json.dumps(meta).encode()})
    return table


@FEW
@given(table=adversarial_tables(), as_=st.sampled_from(["DataFrame", "Series", "Table"]),
       cut=st.none() | st.floats(0, 1), scribble=st.lists(st.tuples(st.floats(0, 1), st.integers(0, 255)), max_size=4))
def test_adversarial_arrow_files_decode_within_budget(
    table: pa.Table, as_: str, cut: float | None, scribble: list[tuple[float, int]], folder: Path
) -> None:
    data = bytearray(_arrow_bytes(table))
    if cut is not None:
        data = data[: int(len(data) * cut)]
    for where, byte in scribble:
        if data:
            data[int(where * (len(data) - 1))] = byte
    size = plant(folder, "t.arrow", bytes(data))
    decodes_within_budget({"kind": "arrow", "as": as_, "file": "t.arrow", "size": size}, folder)


descrs = st.sampled_from(["|V0", "<U0", "|S0", "<i8", "<f8", "|b1", "|u1", "<c16", "|V16", "<M8[ns]",
                          "[('a', '<i8', (1000000,))]", "[('z', '|V0')]", "[]"])
shapes = st.lists(st.sampled_from([0, 1, 3, 10**6, 10**15, 2**62, -1]), max_size=4).map(tuple)


@SOME
@given(descr=descrs, shape=shapes, fortran=st.booleans(), body=st.sampled_from(["none", "exact", "random"]),
       noise=st.binary(max_size=256))
def test_npy_headers_with_extreme_shapes_and_dtypes(
    descr: str, shape: tuple[int, ...], fortran: bool, body: str, noise: bytes, folder: Path
) -> None:
    header = "{'descr': %s, 'fortran_order': %r, 'shape': %r, }" % (
        descr if descr.startswith("[") else repr(descr), fortran, shape)
    header += " " * ((64 - (10 + len(header) + 1) % 64) % 64) + "\n"
    data = b"\x93NUMPY\x01\x00" + len(header).to_bytes(2, "little") + header.encode()
    if body == "exact":
        try:
            nbytes = np.dtype(eval(descr) if descr.startswith("[") else descr).itemsize * math.prod(shape)  # noqa: S307
        except (TypeError, ValueError):
            nbytes = 0
        data += bytes(nbytes) if 0 <= nbytes <= 4096 else b""
    elif body == "random":
        data += noise
    size = plant(folder, "a.npy", data)
    decodes_within_budget({"kind": "npy", "file": "a.npy", "size": size}, folder)


def test_a_budget_is_shared_by_the_values_of_one_call(folder: Path) -> None:
    budget = Budget(3 * MiB)
    for i in range(2):
        plant(folder, f"b{i}.bin", bytes(MiB))
        assert len(decode({"kind": "bytes", "file": f"b{i}.bin", "size": MiB}, folder, budget=budget)) == MiB
    plant(folder, "b2.bin", bytes(2 * MiB))
    with pytest.raises(TransferError, match="max_bytes"):
        decode({"kind": "bytes", "file": "b2.bin", "size": 2 * MiB}, folder, budget=budget)
    assert not (folder / "b2.bin").exists()  # refused, and deleted all the same


# -- (b) messages ----------------------------------------------------------------------------------

msg_types = st.sampled_from(["stream", "display_data", "update_display_data", "execute_result", "error", "status",
                             "clear_output", "input_request", "execute_reply", "execute_input", "comm_msg"])
contents = st.one_of(
    json_values,
    st.fixed_dictionaries({}, optional={
        "name": json_values | st.sampled_from(["stdout", "stderr"]), "text": json_values | st.text(),
        "data": json_values | st.dictionaries(st.text(string.printable, max_size=20), json_values | st.text(), max_size=4),
        "metadata": json_values, "execution_count": json_values, "ename": json_values | st.text(max_size=5),
        "evalue": json_values | st.text(max_size=5), "traceback": json_values | st.lists(st.text(max_size=10), max_size=3),
        "execution_state": json_values | st.sampled_from(["idle", "busy"]), "prompt": json_values | st.text(max_size=10),
        "status": json_values | st.sampled_from(["ok", "error"]), "payload": json_values,
        "user_expressions": json_values | st.dictionaries(st.just("r"), json_values, max_size=1),
    }),
)


@SOME
@given(channel=st.sampled_from(["iopub", "shell", "stdin"]), msgs=st.lists(st.tuples(msg_types, contents), max_size=20))
def test_arbitrary_messages_are_checked_and_held_within_bounds(channel: str, msgs: list[tuple[str, Any]]) -> None:
    outputs = _Outputs(1000, 2 * MiB)
    for msg_type, content in msgs:
        raw = json.dumps(content).encode()
        msg = Message(channel, msg_type, content, json_cost(raw))
        try:
            checked = check(msg)
        except Malformed:
            outputs.drop("malformed")
            continue
        if checked is IGNORED:
            continue
        if channel == "iopub" and msg_type != "status":
            outputs.add(msg_type, checked, msg.size)
        elif channel == "shell":
            try:
                _expression_value(checked, "r", MAX_ITEM)
            except SandboxError:
                pass
    outputs.finish()
    kept = [o for o in outputs.items if o["output_type"] != "stream"]
    assert len(json.dumps(kept)) <= 2 * MiB + 1024
    assert all(isinstance(v, str) or k.endswith("json") for o in kept if "data" in o for k, v in o["data"].items())


@pytest.fixture(scope="module")
def reader() -> LocalBackend:
    """A local backend's frame reader with a real signing Session (no kernel: it only reads frames)."""
    backend = LocalBackend()
    session = Session(key=b"k", unpacker="orjson.loads")
    backend._kc = types.SimpleNamespace(session=session)
    return backend


frames = st.lists(st.binary(max_size=64) | st.just(b"<IDS|MSG>"), max_size=8)


@SOME
@given(parts=frames, shape=st.sampled_from(["raw", "signed"]), content=st.binary(max_size=256) | st.sampled_from(
    [b"[" + b"[]," * 400_000 + b"[]]", b'{"name": 1}', b"null", b'{"data": []}']))
def test_arbitrary_frames_become_a_message_or_nothing(reader: LocalBackend, parts: list[bytes], shape: str,
                                                       content: bytes) -> None:
    session = reader._kc.session
    if shape == "signed":  # a well-signed message around an arbitrary content, header and parent
        header, parent = (parts + [b"{}", b"{}"])[:2]
        pieces = [header, parent, b"{}", content]
        parts = [b"<IDS|MSG>", session.sign(pieces), *pieces]
    msg = reader._read(parts, "iopub", None)
    if msg is not None:
        assert msg.size <= 2 * MAX_ITEM or isinstance(msg.content, Malformed)
        try:
            check(msg)
        except Malformed:
            pass


@SOME
@given(raw=st.binary(max_size=512) | st.text(max_size=512))
def test_arbitrary_websocket_messages_become_a_message_or_nothing(raw: bytes | str) -> None:
    for parsed in (_parse(raw, MAX_ITEM), _parse_v1(raw, MAX_ITEM) if isinstance(raw, bytes) else None):
        if parsed is not None:
            try:
                check(parsed[0])
            except Malformed:
                pass


@pytest.mark.parametrize("codec", ["zstd", "lz4"])
def test_compressed_arrow_is_refused_before_it_is_decompressed(codec: str, folder: Path) -> None:
    """A few KB of compressed zeros would be 160 MB decompressed; with a dictionary batch too."""
    zeros = pa.table({"z": np.zeros(20_000_000), "d": pa.DictionaryArray.from_arrays(pa.array([0, 0]), pa.array(["a"]))
                      .take(pa.array(np.zeros(20_000_000, dtype="int32")))})
    sink = io.BytesIO()
    with pyarrow.ipc.new_file(sink, zeros.schema, options=pa.ipc.IpcWriteOptions(compression=codec)) as writer:
        writer.write_table(zeros)
    size = plant(folder, "z.arrow", sink.getvalue())
    assert size < 2 * MiB
    refused: list[Any] = []
    growth = peak_growth(lambda: refused.append(pytest.raises(
        TransferError, decode, {"kind": "arrow", "as": "Table", "file": "z.arrow", "size": size}, folder)))
    assert "compressed" in str(refused[0].value) and growth < 64 * MiB
