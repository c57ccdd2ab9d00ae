"""The cap on a local sandbox's folders (`disk=`): no file past it, and code that fills the folders
is stopped with an error that says what to do, the sandbox and its variables kept."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from agent_kernel.sandbox._disk import _usage

pytestmark = pytest.mark.skipif(sys.platform != "linux", reason="the sandbox's limits are Linux features")

MiB = 2**20
CAP = 24 * MiB


@pytest.fixture(scope="module")
def sb() -> Iterator[Any]:
    from agent_kernel.sandbox import Sandbox

    with Sandbox(disk="24MB", timeout=20, imports=["os", "time"]) as sandbox:
        yield sandbox


@pytest.fixture(autouse=True)
def empty_workdir(sb: Any) -> Iterator[None]:
    yield
    assert sb.execute("import os\nfor f in os.listdir('.'):\n    if f.endswith('.bin'): os.remove(f)").error is None


def _stored(sb: Any) -> int:
    return _usage(sb.workdir.parent)[0]


def test_the_cap_is_reported_with_the_isolation_layers(sb: Any) -> None:
    assert "24.0 MiB" in sb.isolation.active["disk"]
    assert "fsize=24MiB" in sb.isolation.active["rlimits"]  # no single file can pass the cap either


def test_no_file_grows_past_the_cap(sb: Any) -> None:
    ex = sb.execute("open('big.bin', 'wb').write(b'x' * 30 * 2**20)")
    assert ex.error is not None and "File too large" in ex.error.value
    assert (sb.workdir / "big.bin").stat().st_size <= CAP


def test_code_filling_the_folders_is_stopped_and_the_sandbox_goes_on(sb: Any) -> None:
    sb.execute("kept = 7")
    ex = sb.execute(
        "import time\n"
        "for i in range(2000):\n"  # 2 GB if nothing stopped it
        "    open(f'f{i}.bin', 'wb').write(b'x' * 2**20)\n"
        "    time.sleep(0.005)"
    )
    assert ex.error is not None and ex.error.name == "DiskLimitError", ex.error
    assert "over its disk cap of 24.0 MiB" in ex.error.value and "larger disk=" in ex.error.value
    assert not ex.restarted
    assert CAP < _stored(sb) < 10 * CAP  # stopped soon after it went over
    assert sb.execute("print(kept)").stdout == "7\n"


def test_short_executions_add_up_until_the_folders_are_measured(sb: Any) -> None:
    """Each execution is far shorter than the measuring interval: their time adds up."""
    before = _stored(sb)  # the kernel's own files (its home, caches) count against the cap too
    for n in range(400):  # 800 MB if nothing stopped it
        ex = sb.execute(f"open('f{n}.bin', 'wb').write(b'x' * 2 * 2**20)")
        if ex.error is not None:
            break
    assert ex.error is not None and ex.error.name == "DiskLimitError", ex.error
    assert "over its disk cap" in ex.error.value
    # many executions, each short, then the measure: not one begun before the folders were emptied
    assert before + (n + 1) * 2 * 2**20 >= CAP, f"stopped at {before + (n + 1) * 2 * 2**20} bytes"
    assert _stored(sb) > CAP
    assert sb.execute("print(1 + 1)").stdout == "2\n"


def test_usage_counts_allocated_bytes_without_following_links(tmp_path: Path) -> None:
    (tmp_path / "sub" / "deeper").mkdir(parents=True)
    (tmp_path / "sub" / "deeper" / "data.bin").write_bytes(b"x" * 3 * MiB)
    with open(tmp_path / "sparse.bin", "wb") as f:
        f.truncate(2**40)  # a terabyte in name only: no blocks
    outside = tmp_path.parent / f"{tmp_path.name}-outside.bin"
    outside.write_bytes(b"y" * 8 * MiB)
    (tmp_path / "link").symlink_to(outside)
    (tmp_path / "dirlink").symlink_to(tmp_path.parent, target_is_directory=True)
    used, entries = _usage(tmp_path)
    assert 3 * MiB <= used < 4 * MiB
    assert entries == 6


def test_a_bad_cap_is_refused_naming_the_option() -> None:
    from agent_kernel.sandbox import Sandbox

    with pytest.raises(ValueError, match="disk='lots' is not a size"):
        Sandbox(disk="lots")


def test_without_a_cap_the_layer_says_it_is_off() -> None:
    from agent_kernel.sandbox import Sandbox

    with Sandbox(disk=None) as sandbox:
        assert "disk" not in sandbox.isolation.active
        assert "not capped" in sandbox.isolation.missing["disk"]
