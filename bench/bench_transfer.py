"""How fast values cross the sandbox boundary: codec encode -> file -> decode vs in-process baselines.

    .venv/bin/python bench/bench_transfer.py [--rows 10000000] [--repeat 3]

Throughput is the value's in-memory size (DataFrame.memory_usage(deep=True), ndarray.nbytes) over
wall time, best of `--repeat` runs. Target: a DataFrame pull (encode -> decode) at >= 1 GB/s.
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
import time
from collections.abc import Callable
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa

from agent_kernel.sandbox._codec import cleanup, decode, encode


def _frame(rows: int) -> pd.DataFrame:
    rng = np.random.default_rng(0)
    return pd.DataFrame(
        {
            "price": rng.random(rows),
            "qty": rng.integers(0, 1000, rows),
            "score": rng.random(rows).astype("float32"),
            "ts": pd.date_range("2024-01-01", periods=rows, freq="s"),
            "colour": pd.Categorical.from_codes(rng.integers(0, 5, rows), ["red", "green", "blue", "cyan", "pink"]),
        }
    )


def _best(run: Callable[[], float], repeat: int) -> float:
    return min(run() for _ in range(repeat))


def _timed(fn: Callable[[], Any]) -> Callable[[], float]:
    def run() -> float:
        start = time.perf_counter()
        fn()
        return time.perf_counter() - start

    return run


def _timed_encode(value: Any, transfer_dir: str) -> Callable[[], float]:
    def run() -> float:
        start = time.perf_counter()
        descriptor = encode(value, transfer_dir, "v")
        seconds = time.perf_counter() - start
        cleanup(descriptor, transfer_dir)
        return seconds

    return run


def _timed_decode(value: Any, transfer_dir: str) -> Callable[[], float]:
    """Decode alone: encode untimed first (decode deletes the file it reads)."""

    def run() -> float:
        descriptor = encode(value, transfer_dir, "v")
        start = time.perf_counter()
        decode(descriptor, transfer_dir)
        return time.perf_counter() - start

    return run


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=10_000_000)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()

    frame = _frame(args.rows)
    array = np.random.default_rng(1).random((args.rows, 4))
    frame_size, array_size = float(frame.memory_usage(deep=True).sum()), float(array.nbytes)
    transfer_dir = tempfile.mkdtemp(prefix="bench-transfer-")
    try:
        pulled = decode(encode(frame, transfer_dir, "df"), transfer_dir)
        # equals() compares values and dtypes block by block; assert_frame_equal takes minutes at this size
        assert pulled.equals(frame) and pulled.dtypes.equals(frame.dtypes), "the pulled DataFrame differs"
        del pulled
        cases = [
            (
                "DataFrame  pyarrow in-process (baseline)",
                frame_size,
                _timed(lambda: pa.Table.from_pandas(frame).to_pandas()),
            ),
            ("DataFrame  encode (sandbox side)", frame_size, _timed_encode(frame, transfer_dir)),
            ("DataFrame  decode (host side)", frame_size, _timed_decode(frame, transfer_dir)),
            (
                "DataFrame  pull: encode -> decode",
                frame_size,
                _timed(lambda: decode(encode(frame, transfer_dir, "df"), transfer_dir)),
            ),
            ("ndarray    np.copy in-process (baseline)", array_size, _timed(array.copy)),
            (
                "ndarray    pull: encode -> decode",
                array_size,
                _timed(lambda: decode(encode(array, transfer_dir, "a"), transfer_dir)),
            ),
        ]
        print(
            f"DataFrame: {args.rows:,} rows, {frame_size / 1e9:.3f} GB ({', '.join(f'{c} {t}' for c, t in frame.dtypes.items())})"
        )
        print(f"ndarray:   shape {array.shape} {array.dtype}, {array_size / 1e9:.3f} GB")
        print(f"{'case':42} {'seconds':>8} {'GB/s':>7} {'x baseline':>11}")
        baseline = 0.0
        for label, size, run in cases:
            seconds = _best(run, args.repeat)
            baseline = seconds if "baseline" in label else baseline
            print(f"{label:42} {seconds:8.3f} {size / seconds / 1e9:7.2f} {seconds / baseline:10.2f}x")
    finally:
        shutil.rmtree(transfer_dir)


if __name__ == "__main__":
    main()
