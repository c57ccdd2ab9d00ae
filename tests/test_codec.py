"""The codec: values cross the sandbox boundary as data, and hostile descriptors fail safely."""

from __future__ import annotations

import json
import math
import os
import pickle
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.ipc
import pytest
from pandas.testing import assert_frame_equal, assert_series_equal

from agent_kernel.sandbox._codec import (
    INLINE_LIMIT,
    ImageData,
    Opaque,
    TransferError,
    _frame_to_table,
    cleanup,
    decode,
    describe,
    encode,
)


def roundtrip(value: Any, tmp_path: Path) -> Any:
    """Encode, push the descriptor through strict JSON (as it travels in Jupyter messages), decode."""
    descriptor = json.loads(json.dumps(encode(value, tmp_path, "v"), allow_nan=False))
    result = decode(descriptor, tmp_path)
    assert list(tmp_path.iterdir()) == [], "decode must delete the transfer file"
    return result


# -- JSON-able values ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "value",
    [None, True, 0, -(2**70), 1.5, "", "ünïcødé ✓", [], {}, [1, "a", None, [2.5, {"k": [True]}]], {"a": {"b": [1, 2]}}],
)
def test_json_values_round_trip_inline(value: Any, tmp_path: Path) -> None:
    assert encode(value, tmp_path, "v")["kind"] == "json"
    result = roundtrip(value, tmp_path)
    assert result == value and type(result) is type(value)


def test_nan_and_infinity_survive_and_the_descriptor_stays_strict_json(tmp_path: Path) -> None:
    result = roundtrip({"nan": float("nan"), "inf": float("inf"), "ninf": -float("inf")}, tmp_path)
    assert math.isnan(result["nan"]) and result["inf"] == math.inf and result["ninf"] == -math.inf


def test_tuples_stay_tuples_nested_too_and_tag_like_dicts_stay_dicts(tmp_path: Path) -> None:
    value = [("A", 3), {"k": (1, [2, (3,)])}, (), {"__tuple__": [1]}, {"__dict__": {"__tuple__": 2}}]
    result = roundtrip(value, tmp_path)
    assert result == value
    assert type(result[0]) is tuple and type(result[1]["k"]) is tuple and type(result[1]["k"][1][1]) is tuple
    assert type(result[3]) is dict and type(result[4]["__dict__"]) is dict
    assert "tagged" not in encode([1, {"a": [2]}], tmp_path, "v")  # no tuple: plain JSON, as before
    big = [(i, f"item {i}") for i in range(20_000)]  # through a file as well
    assert roundtrip(big, tmp_path) == big


def test_dates_times_and_periods_cross_as_themselves(tmp_path: Path) -> None:
    import datetime

    value = [pd.Timestamp("2024-05-01"), pd.Timestamp("2024-05-01 10:00:00.000000001", tz="Europe/Paris"),
             pd.Period("2024-05", "M"), pd.Period("2024Q1", "Q"), pd.Period("2024-04-29", "W"),
             pd.Timedelta("1 day 3ns"), datetime.date(2024, 5, 1), datetime.datetime(2024, 5, 1, 3, 4, 5, 6),
             datetime.time(3, 4), datetime.timedelta(days=-1, seconds=5), {"__date__": "2024-05-01"}]
    result = roundtrip(value, tmp_path)
    assert result == value and [type(r) for r in result] == [type(v) for v in value]
    assert result[1].utcoffset() == datetime.timedelta(hours=2)  # the offset stays, the zone's name does not
    month = roundtrip((pd.Period("2024-05", "M"), 3), tmp_path)
    assert month == (pd.Period("2024-05", "M"), 3) and str(month[0]) == "2024-05"


@pytest.mark.parametrize(
    "descriptor",
    [
        {"kind": "json", "text": '{"__date__": "2024-13-01"}', "tagged": True},
        {"kind": "json", "text": '{"__date__": ["2024-01-01"]}', "tagged": True},
        {"kind": "json", "text": '{"__datetime__": "' + "1" * 5000 + '"}', "tagged": True},
        {"kind": "json", "text": '{"__timestamp__": "not a time"}', "tagged": True},
        {"kind": "json", "text": '{"__period__": ["2024-05", "no such frequency"]}', "tagged": True},
        {"kind": "json", "text": '{"__period__": "2024-05"}', "tagged": True},
        {"kind": "json", "text": '{"__pd_timedelta__": "1e400"}', "tagged": True},
        {"kind": "json", "text": '{"__timedelta__": [1, 2]}', "tagged": True},
        {"kind": "json", "text": '{"__timedelta__": [999999999999, 0, 0]}', "tagged": True},
    ],
)
def test_malformed_time_values_are_refused(descriptor: dict[str, Any], tmp_path: Path) -> None:
    with pytest.raises(TransferError):
        decode(descriptor, tmp_path)


@pytest.mark.parametrize(
    "descriptor",
    [
        {"kind": "json", "text": '{"__tuple__": 1}', "tagged": True},
        {"kind": "json", "text": '{"__tuple__": {"a": 1}}', "tagged": True},
        {"kind": "json", "text": '{"__dict__": {"a": 1}}', "tagged": True},
        {"kind": "json", "text": '{"__dict__": [1]}', "tagged": True},
        {"kind": "json", "text": '[1]', "tagged": "yes"},
        {"kind": "json", "text": '{"__tuple__": ' * 300 + "[]" + "}" * 300, "tagged": True},
    ],
)
def test_malformed_tags_are_refused(descriptor: dict[str, Any], tmp_path: Path) -> None:
    with pytest.raises(TransferError):
        decode(descriptor, tmp_path)


def test_untagged_json_is_read_as_it_is(tmp_path: Path) -> None:
    assert decode({"kind": "json", "text": '{"__tuple__": [1]}'}, tmp_path) == {"__tuple__": [1]}


def test_numpy_scalars_become_plain_json(tmp_path: Path) -> None:
    result = roundtrip([np.int64(7), np.float32(0.5), np.bool_(True), np.str_("s")], tmp_path)
    assert result == [7, 0.5, True, "s"] and [type(x) for x in result] == [int, float, bool, str]


def test_big_json_goes_to_a_file_that_decode_deletes(tmp_path: Path) -> None:
    value = [{"row": i, "name": f"item {i}"} for i in range(20_000)]
    descriptor = encode(value, tmp_path, "rows")
    assert "file" in descriptor and "text" not in descriptor
    assert (tmp_path / descriptor["file"]).stat().st_size > INLINE_LIMIT
    assert decode(descriptor, tmp_path) == value
    assert list(tmp_path.iterdir()) == []


def test_big_strings_with_lone_surrogates_survive_the_file(tmp_path: Path) -> None:
    value = "\ud800ok" * INLINE_LIMIT
    descriptor = encode(value, tmp_path, "s")
    assert "file" in descriptor
    assert decode(descriptor, tmp_path) == value


def test_file_names_are_unique_per_transfer(tmp_path: Path) -> None:
    big = "x" * (INLINE_LIMIT + 1)
    first, second = encode(big, tmp_path, "same"), encode(big, tmp_path, "same")
    assert first["file"] != second["file"] and first["file"].startswith("same-")
    cleanup(first, tmp_path)
    cleanup(second, tmp_path)
    assert list(tmp_path.iterdir()) == []


def test_bytes_round_trip_inline_and_through_a_file(tmp_path: Path) -> None:
    for data in (b"\x00\xffabc", os.urandom(INLINE_LIMIT + 10)):
        assert roundtrip(data, tmp_path) == data


# -- values that cannot cross as data --------------------------------------------------------------


class Secretive:
    def __init__(self) -> None:
        self.password = "hunter2"

    def __repr__(self) -> str:
        return "Secretive()"


class BrokenRepr:
    def __repr__(self) -> str:
        raise RuntimeError("no")


@pytest.mark.parametrize(
    ("value", "type_name"),
    [
        ({1: "int key"}, "dict"),
        ({1, 2}, "set"),
        (Secretive(), f"{__name__}.Secretive"),
        (BrokenRepr(), f"{__name__}.BrokenRepr"),
    ],
)
def test_other_values_cross_as_an_opaque_record_naming_the_type(value: Any, type_name: str, tmp_path: Path) -> None:
    result = roundtrip(value, tmp_path)
    assert isinstance(result, Opaque) and result.type == type_name
    assert type_name.rsplit(".", 1)[-1] in repr(result)


def test_a_huge_repr_is_bounded(tmp_path: Path) -> None:
    result = roundtrip([{1, 2}] + ["x" * 10_000] * 1000, tmp_path)
    assert isinstance(result, Opaque) and len(result.text) <= 2000


# -- pandas ----------------------------------------------------------------------------------------


def acceptance_frame() -> pd.DataFrame:
    index = pd.date_range("2024-03-30", periods=5, freq="h", name="when")
    return pd.DataFrame(
        {
            "int": np.arange(5, dtype="int64"),
            "float": [1.5, np.nan, -0.0, np.inf, 3.25],
            "object": pd.Series(["a", None, "c", "ü", None], dtype=object, index=index),
            "str": ["x", "y", None, "z", "w"],
            "bool": [True, False, True, False, True],
            "category": pd.Categorical(["red", "blue", None, "red", "green"], categories=["red", "green", "blue"]),
            "when_tz": pd.date_range("2024-03-31 00:30", periods=5, freq="h", tz="Europe/Paris"),  # crosses DST
            "delta": pd.to_timedelta([1, 2, None, 4, 5], unit="s"),
        },
        index=index,
    )


def test_acceptance_dataframe_round_trips_exactly(tmp_path: Path) -> None:
    frame = acceptance_frame()
    descriptor = encode(frame, tmp_path, "df")
    assert descriptor["kind"] == "arrow" and descriptor["file"].endswith(".arrow")
    result = decode(descriptor, tmp_path)
    assert_frame_equal(result, frame, check_exact=True, check_freq=True)
    assert result["object"].tolist()[1] is None  # object columns keep None, not NaN
    assert result.index.freqstr == "h"


def numpy_frame(index: pd.Index) -> pd.DataFrame:
    """Only numpy and categorical columns: the frames _frame_to_table converts without from_pandas."""
    n = len(index)
    return pd.DataFrame(
        {
            "f64": np.where(np.arange(n) % 3 == 0, np.nan, np.linspace(-1, 1, n)),
            "f32": np.full(n, np.inf, dtype="float32"),
            "f16": np.arange(n, dtype="float16"),
            "i8": np.arange(n, dtype="int8"),
            "u64": np.arange(n, dtype="uint64") * 2**40,
            "flag": np.arange(n) % 2 == 0,
            "ts": pd.Series(pd.date_range("2024-03-31", periods=n, freq="min"), index=index).where(
                np.arange(n) % 4 != 1
            ),
            "secs": pd.Series(pd.to_datetime(np.arange(n), unit="s").astype("datetime64[s]"), index=index),
            "wait": pd.Series(pd.to_timedelta(np.arange(n), unit="ms"), index=index).where(np.arange(n) != 2),
            "colour": pd.Categorical(["red", None, "blue", "red"] * (n // 4), categories=["red", "blue", "green"]),
            "size": pd.Categorical([3, 1, 2, 1] * (n // 4), categories=[3, 2, 1], ordered=True),
        },
        index=index,
    )


@pytest.mark.parametrize(
    "index",
    [
        pd.RangeIndex(8),
        pd.RangeIndex(start=100, stop=-60, step=-20, name="countdown"),
        pd.date_range("2024-01-01", periods=8, freq="D", name="day"),
        pd.Index(np.arange(8) * 1.5),
    ],
    ids=["range", "range-named-stepped", "datetime", "float"],
)
def test_numpy_frames_cross_as_their_values_and_round_trip_exactly(index: pd.Index, tmp_path: Path) -> None:
    frame = numpy_frame(index)
    table = _frame_to_table(frame)
    reference = pa.Table.from_pandas(frame)
    assert table.schema.equals(reference.schema, check_metadata=True)  # same types, same pandas metadata
    # NaN and NaT travel as values, not as nulls from_pandas would have scanned for
    assert table.column("f64").null_count == 0 and table.column("ts").null_count == 0
    assert table.column("colour").null_count == 2  # a missing category is a null index all the same
    assert_frame_equal(table.to_pandas(), reference.to_pandas(), check_exact=True, check_freq=True)
    assert_frame_equal(roundtrip(frame, tmp_path), frame, check_exact=True, check_freq=True)


def test_object_columns_keep_their_python_values(tmp_path: Path) -> None:
    frame = pd.DataFrame({"ints": pd.Series([1, None, 3], dtype=object), "lists": [[1, 2], [], [3]]})
    result = roundtrip(frame, tmp_path)
    assert result["ints"].tolist() == [1, None, 3] and result["lists"].tolist() == [[1, 2], [], [3]]
    assert_frame_equal(result, frame)


def test_multiindex_rows_and_columns_round_trip(tmp_path: Path) -> None:
    rows = pd.MultiIndex.from_product([["a", "b"], [1, 2]], names=["key", "n"])
    columns = pd.MultiIndex.from_tuples([("x", "mean"), ("x", "max"), ("y", "mean")], names=["var", "stat"])
    frame = pd.DataFrame(np.arange(12.0).reshape(4, 3), index=rows, columns=columns)
    assert_frame_equal(roundtrip(frame, tmp_path), frame, check_exact=True)


def test_integer_column_names_and_a_tz_aware_index_round_trip(tmp_path: Path) -> None:
    frame = pd.DataFrame({0: [1, 2, 3], 1: ["a", "b", "c"]}, index=pd.date_range("2024", periods=3, freq="D", tz="UTC"))
    assert_frame_equal(roundtrip(frame, tmp_path), frame, check_exact=True)


@pytest.mark.parametrize(
    "series",
    [
        pd.Series([1.0, None, 3.0], name="price"),
        pd.Series(["a", "b"]),  # unnamed stays unnamed
        pd.Series([True, False], name=7),
        pd.Series(pd.Categorical(["u", "v", "u"]), name="cat", index=pd.Index(["i", "j", "k"], name="id")),
        pd.Series([1, 2, 3], index=pd.timedelta_range("1s", periods=3, freq="s"), name="t"),
    ],
)
def test_series_round_trip(series: pd.Series, tmp_path: Path) -> None:
    result = roundtrip(series, tmp_path)
    assert_series_equal(result, series, check_exact=True, check_freq=True)


def test_pyarrow_tables_round_trip_as_tables(tmp_path: Path) -> None:
    table = pa.table({"a": [1, 2, None], "b": ["x", None, "z"]})
    result = roundtrip(table, tmp_path)
    assert isinstance(result, pa.Table) and result.equals(table)


def test_a_frame_arrow_cannot_convert_crosses_as_opaque_with_the_reason(tmp_path: Path) -> None:
    result = roundtrip(pd.DataFrame({"mixed": [1, "a"]}), tmp_path)
    assert isinstance(result, Opaque) and result.type == "pandas.DataFrame" and "ArrowInvalid" in result.reason


# -- numpy and images ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "array",
    [
        np.arange(10, dtype=np.int32),
        np.array([1.5, np.nan, np.inf]),
        np.arange(12.0).reshape(3, 4),
        np.asfortranarray(np.arange(6).reshape(2, 3)),
        np.arange(24, dtype=">u2").reshape(2, 3, 4)[:, ::2],  # big-endian, non-contiguous
        np.array(5.0),
        np.zeros((0, 3)),
        np.array(["2024-01-01", "NaT"], dtype="datetime64[s]"),
        np.array([(1, 2.0)], dtype=[("a", "i4"), ("b", "f8")]),
    ],
)
def test_numpy_arrays_round_trip_as_private_copies(array: np.ndarray, tmp_path: Path) -> None:
    result = roundtrip(array, tmp_path)
    np.testing.assert_array_equal(result, array)
    assert result.dtype == array.dtype and result.shape == array.shape
    assert type(result) is np.ndarray and result.flags.writeable  # a copy, not a map of the sandbox's file


def test_object_arrays_cross_only_as_a_repr(tmp_path: Path) -> None:
    result = roundtrip(np.array([1, "a", None], dtype=object), tmp_path)
    assert isinstance(result, Opaque) and result.type == "numpy.ndarray" and "object" in result.reason


def test_arrays_whose_npy_header_numpy_would_not_parse_cross_as_a_repr(tmp_path: Path) -> None:
    result = roundtrip(np.zeros(2, dtype=[(f"field_{i}", "i1") for i in range(1000)]), tmp_path)
    assert isinstance(result, Opaque) and "header" in result.reason


def test_matplotlib_figures_cross_as_png(tmp_path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(2, 1), dpi=50)
    ax.plot([1, 3, 2])
    result = roundtrip(fig, tmp_path)
    plt.close(fig)
    assert isinstance(result, ImageData) and result.type == "matplotlib.figure.Figure"
    assert result._repr_png_().startswith(b"\x89PNG") and b"IHDR\x00\x00\x00\x64\x00\x00\x00\x32" in result.data


def test_pil_images_cross_as_png(tmp_path: Path) -> None:
    from PIL import Image

    result = roundtrip(Image.new("RGB", (3, 2), (255, 0, 0)), tmp_path)
    assert isinstance(result, ImageData) and result.type == "PIL.Image.Image"
    with Image.open(__import__("io").BytesIO(result.data)) as back:
        assert back.size == (3, 2) and back.getpixel((0, 0)) == (255, 0, 0)


# -- hostile descriptors ---------------------------------------------------------------------------


class Evil:
    """Unpickling this writes the marker file: if it ever exists, the codec ran pickle."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[Any, ...]:
        return (Path.write_text, (self.marker, "pwned"))


def plant(tmp_path: Path, file: str, data: bytes) -> Path:
    path = tmp_path / file
    path.write_bytes(data)
    return path


@pytest.fixture
def secret(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("host") / "id_rsa.json"
    path.write_text('"THE HOST SECRET"')
    return path


@pytest.mark.parametrize(
    "descriptor",
    [
        None,
        "json",
        [],
        {},
        {"kind": "pickle", "data": "gASVAAAA"},
        {"kind": ["json"], "text": "1"},
        {"kind": "json"},
        {"kind": "json", "text": 5},
        {"kind": "json", "text": "{not json"},
        {"kind": "json", "text": "[" * 100_000 + "]" * 100_000},
        {"kind": "bytes", "base64": "not base64!"},
        {"kind": "image", "base64": "aGVsbG8=", "type": "x"},  # not a PNG
        {"kind": "repr", "type": 3, "text": "x"},
        {"kind": "arrow", "as": "Evil", "file": "a.arrow", "size": 1},
        {"kind": "npy", "file": "missing.npy", "size": 10},
    ],
)
def test_malformed_descriptors_raise_transfer_error(descriptor: Any, tmp_path: Path) -> None:
    with pytest.raises(TransferError):
        decode(descriptor, tmp_path)


@pytest.mark.parametrize(
    "file", ["../outside.json", "/etc/passwd", "sub/x.json", "..json", ".hidden.json", "x.json\x00", "x.npy"]
)
def test_file_names_that_leave_the_transfer_folder_are_refused(file: str, tmp_path: Path) -> None:
    (tmp_path / "sub").mkdir()
    victim = tmp_path.parent / "outside.json"
    victim.write_text("1")
    with pytest.raises(TransferError, match="file name"):
        decode({"kind": "json", "file": file, "size": 1}, tmp_path / "sub")
    assert victim.exists()  # the cleanup after a failed decode must not touch it either


def test_a_symlink_to_a_host_secret_is_refused(secret: Path, tmp_path: Path) -> None:
    (tmp_path / "x.json").symlink_to(secret)
    with pytest.raises(TransferError, match="symlink"):
        decode({"kind": "json", "file": "x.json", "size": secret.stat().st_size}, tmp_path)
    assert secret.read_text() == '"THE HOST SECRET"'  # the link is removed, never its target
    assert not (tmp_path / "x.json").is_symlink()


def test_a_hard_link_to_a_host_secret_is_refused(secret: Path, tmp_path: Path) -> None:
    try:
        os.link(secret, tmp_path / "x.json")
    except OSError as exc:
        pytest.fail(f"the test needs the temp folders on one filesystem: {exc}")
    with pytest.raises(TransferError, match="plain regular file"):
        decode({"kind": "json", "file": "x.json", "size": secret.stat().st_size}, tmp_path)


def test_a_fifo_is_refused_without_blocking(tmp_path: Path) -> None:
    os.mkfifo(tmp_path / "x.json")
    with pytest.raises(TransferError, match="plain regular file"):
        decode({"kind": "json", "file": "x.json", "size": 0}, tmp_path)


def test_sizes_must_match_and_stay_bounded(tmp_path: Path) -> None:
    descriptor = encode("x" * (INLINE_LIMIT + 1), tmp_path, "v")
    with pytest.raises(TransferError, match="max_bytes"):
        decode(descriptor, tmp_path, max_bytes=1000)
    for size in (1, -1, "10", 2**80):
        plant(tmp_path, "y.json", b'"abc"')
        with pytest.raises(TransferError):
            decode({"kind": "json", "file": "y.json", "size": size}, tmp_path)


@pytest.mark.parametrize(
    ("kind", "suffix"), [("json", ".json"), ("npy", ".npy"), ("arrow", ".arrow"), ("bytes", ".bin")]
)
def test_a_pickle_is_never_unpickled(kind: str, suffix: str, tmp_path: Path) -> None:
    marker = tmp_path.parent / f"marker-{kind}"
    data = pickle.dumps(Evil(marker))
    plant(tmp_path, "p" + suffix, data)
    descriptor = {"kind": kind, "file": "p" + suffix, "size": len(data), "as": "DataFrame"}
    try:
        result = decode(descriptor, tmp_path)
    except TransferError:
        pass
    else:
        assert kind == "bytes" and result == data  # bytes stay bytes
    assert not marker.exists()


def test_an_object_npy_file_is_refused_without_unpickling(tmp_path: Path) -> None:
    marker = tmp_path.parent / "marker-npy-object"
    path = tmp_path / "o.npy"
    np.save(path, np.array([Evil(marker)], dtype=object), allow_pickle=True)
    with pytest.raises(TransferError, match="pickle"):
        decode({"kind": "npy", "file": "o.npy", "size": path.stat().st_size}, tmp_path)
    assert not marker.exists()


def test_an_arrow_pickled_extension_type_is_not_unpickled(tmp_path: Path) -> None:
    marker = tmp_path.parent / "marker-arrow-ext"
    field = pa.field(
        "x",
        pa.int64(),
        metadata={
            b"ARROW:extension:name": b"arrow.py_extension_type",
            b"ARROW:extension:metadata": pickle.dumps(Evil(marker)),
        },
    )
    table = pa.Table.from_arrays([pa.array([1, 2])], schema=pa.schema([field]))
    path = tmp_path / "e.arrow"
    with pa.OSFile(str(path), "wb") as f, pyarrow.ipc.new_file(f, table.schema) as writer:
        writer.write_table(table)
    result = decode({"kind": "arrow", "as": "Table", "file": "e.arrow", "size": path.stat().st_size}, tmp_path)
    assert result.column("x").to_pylist() == [1, 2]  # read as its plain storage type
    assert not marker.exists()


def test_npy_header_must_match_the_file_size(tmp_path: Path) -> None:
    path = tmp_path / "a.npy"
    np.save(path, np.arange(100), allow_pickle=False)
    data = path.read_bytes().replace(b"(100,)", b"(999,)")
    path.write_bytes(data[:-8])
    with pytest.raises(TransferError, match="header describes"):
        decode({"kind": "npy", "file": "a.npy", "size": len(data) - 8}, tmp_path)


def test_corrupt_arrow_data_fails_validation_not_memory(tmp_path: Path) -> None:
    """Scribble over a valid file many times: each variant must decode or raise TransferError.
    Unvalidated, such files segfault pyarrow within a few hundred tries, hence the subprocess."""
    script = """
import sys, numpy as np, pandas as pd
from agent_kernel.sandbox._codec import TransferError, decode, encode
frame = pd.DataFrame({"s": ["alpha", "beta", None, "delta"] * 50, "i": range(200), "c": pd.Categorical(["a", "b"] * 100)})
descriptor = encode(frame, ".", "df")
with open(descriptor["file"], "rb") as f:
    original = f.read()
rng = np.random.default_rng(0)
failures = 0
for trial in range(1000):
    data = bytearray(original)
    for position in rng.integers(8, len(data) - 8, 4):
        data[position] = int(rng.integers(0, 256))
    with open(descriptor["file"], "wb") as f:
        f.write(data)
    try:
        decode(descriptor, ".")
    except TransferError:
        failures += 1
print(failures)
"""
    done = subprocess.run(
        [sys.executable, "-c", script], check=False, cwd=tmp_path, capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, f"the decoding process died ({done.returncode}): {done.stderr[-2000:]}"
    assert int(done.stdout) > 0  # the scribbles were noticed, not silently decoded every time


def test_arrow_types_that_expand_on_conversion_are_refused(tmp_path: Path) -> None:
    ree = pa.RunEndEncodedArray.from_arrays([10**6], pa.array(["x" * 1000]))
    table = pa.table({"r": ree})
    path = tmp_path / "r.arrow"
    with pa.OSFile(str(path), "wb") as f, pyarrow.ipc.new_file(f, table.schema) as writer:
        writer.write_table(table)
    with pytest.raises(TransferError, match="share storage"):
        decode({"kind": "arrow", "as": "DataFrame", "file": "r.arrow", "size": path.stat().st_size}, tmp_path)


# -- describe, imports -----------------------------------------------------------------------------


def test_describe_is_short_and_informative() -> None:
    frame = acceptance_frame()
    text = describe(frame)
    assert text.startswith("DataFrame 5 rows x 8 columns") and "category: category" in text and len(text) <= 200
    assert describe(np.zeros((3, 4))) == "ndarray shape=(3, 4) dtype=float64: [0.0, 0.0, 0.0, 0.0, 0.0]"
    assert describe(pd.Series([1, 2], name="n")) == "Series 'n' len=2 dtype=int64: [1, 2]"
    huge = describe(list(range(10**6)), limit=80)
    assert huge.startswith("list len=1000000: [0, 1, 2") and len(huge) <= 80
    assert describe(BrokenRepr()).startswith(f"{__name__}.BrokenRepr")


def test_the_codec_imports_cheaply_and_works_without_numpy_or_pandas(tmp_path: Path) -> None:
    np.save(tmp_path / "a.npy", np.arange(3))
    script = f"""
import sys
sys.modules["numpy"] = sys.modules["pandas"] = None  # as if not installed: importing them fails
from agent_kernel.sandbox._codec import decode, encode, TransferError
assert not {{"pyarrow", "matplotlib"}} & set(sys.modules), sorted(sys.modules)
assert decode(encode({{"a": [1, 2.5]}}, ".", "v"), ".") == {{"a": [1, 2.5]}}
try:
    decode({{"kind": "npy", "file": "a.npy", "size": {(tmp_path / "a.npy").stat().st_size}}}, ".")
except TransferError as exc:
    assert "install" in str(exc), exc
else:
    raise AssertionError("decoded an array without numpy")
print("ok")
"""
    done = subprocess.run(
        [sys.executable, "-c", script], check=False, cwd=tmp_path, capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0 and done.stdout.strip() == "ok", done.stderr


def test_subclasses_of_plain_scalars_cross_as_their_plain_value(tmp_path):
    import enum

    class Tagged(str):
        pass

    class Level(enum.IntEnum):
        HIGH = 3

    for value, expected in ((Tagged("title"), "title"), (Level.HIGH, 3), ([Tagged("a")], ["a"])):
        out = decode(encode(value, tmp_path, "v"), tmp_path)
        assert out == expected and type(out) is type(expected)


def test_a_pulled_dataframe_is_writable(tmp_path):
    """Zero-copy conversion (to_pandas(split_blocks=True)) would be ~25x faster but hands back
    read-only columns; analysts edit what they pull, so the decode pays for a copy."""
    frame = decode(encode(pd.DataFrame({"a": np.arange(5.0)}), tmp_path, "f"), tmp_path)
    frame.loc[0, "a"] = 99.0
    assert frame["a"].tolist() == [99.0, 1.0, 2.0, 3.0, 4.0]
