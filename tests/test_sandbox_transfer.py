"""Values through a real restricted kernel: Sandbox.push / pull use the codec both ways, and a hostile
sandbox cannot make the host read a file outside the transfer folder."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from pandas.testing import assert_frame_equal
from test_codec import acceptance_frame

from agent_kernel.sandbox import Sandbox
from agent_kernel.sandbox._codec import ImageData, Opaque
from agent_kernel.sandbox._kernel_side import CALL_MARKER


@pytest.fixture(scope="module")
def sb():
    with Sandbox(timeout=30, imports=["os"]) as sandbox:
        yield sandbox


def transfer_files(sb: Sandbox) -> list[str]:
    return sorted(p.name for p in (sb.workdir.parent / "transfer").iterdir())


def test_a_dataframe_pushed_and_pulled_back_is_equal(sb: Sandbox) -> None:
    frame = acceptance_frame()
    sb.push(df=frame)
    ex = sb.execute("dtypes = {c: str(t) for c, t in df.dtypes.items()}\nout = df.assign(twice=df['int'] * 2)")
    assert ex.ok, ex.error
    pulled = sb.pull(["df", "out", "dtypes"])
    assert_frame_equal(pulled["df"], frame, check_exact=True, check_freq=True)
    assert pulled["dtypes"] == {c: str(t) for c, t in frame.dtypes.items()}  # the sandbox saw the same dtypes
    assert_frame_equal(pulled["out"], frame.assign(twice=frame["int"] * 2), check_exact=True)
    assert transfer_files(sb) == []  # every file was consumed by its decode


def test_arrays_figures_and_other_values(sb: Sandbox) -> None:
    sb.push(a=np.arange(12.0).reshape(3, 4))
    code = """
import matplotlib
matplotlib.use("Agg")
import matplotlib.pyplot as plt
fig, ax = plt.subplots()
ax.plot([1, 2, 3])
b = a.T @ a
gen = (i for i in range(3))
"""
    assert sb.execute(code).ok
    pulled = sb.pull(["b", "fig", "gen"])
    a = np.arange(12.0).reshape(3, 4)
    np.testing.assert_array_equal(pulled["b"], a.T @ a)
    assert isinstance(pulled["fig"], ImageData) and pulled["fig"].data.startswith(b"\x89PNG")
    assert isinstance(pulled["gen"], Opaque) and pulled["gen"].type == "generator"
    assert transfer_files(sb) == []


def test_a_sandbox_cannot_make_the_host_read_a_planted_symlink(sb: Sandbox, tmp_path: Path) -> None:
    """Sandbox code speaks the host-function protocol itself, with a descriptor naming a symlink it
    planted to a host file; if the host followed it, `echo` would hand the secret back."""
    secret = tmp_path / "secret.json"
    secret.write_text('"THE HOST SECRET"')
    sb.register_function("echo", lambda value: value)
    call = {
        "name": "echo",
        "args": [{"kind": "json", "file": "leak.json", "size": secret.stat().st_size}],
        "kwargs": {},
    }
    code = f"""
import os
os.symlink({str(secret)!r}, os.path.join(__ak__.transfer_dir, "leak.json"))
print(input({CALL_MARKER + json.dumps(call)!r}))
"""
    ex = sb.execute(code)
    assert ex.ok, ex.error
    answer = json.loads(ex.stdout)
    assert "THE HOST SECRET" not in ex.stdout
    assert answer["error"].startswith("SandboxError: a value from the sandbox was refused") and "symlink" in answer["error"]
    assert secret.read_text() == '"THE HOST SECRET"' and transfer_files(sb) == []


def test_dates_and_periods_cross_both_ways_as_themselves(sb: Sandbox) -> None:
    import datetime

    import pandas as pd

    sb.push(day=datetime.date(2024, 5, 1))
    ex = sb.execute("import pandas as pd\nmonth = pd.Period(day, 'M')\nwhen = pd.Timestamp(day)\nspan = when - pd.Timestamp(2024, 1, 1)")
    assert ex.ok, ex.error
    pulled = sb.pull(["day", "month", "when", "span"])
    assert pulled == {"day": datetime.date(2024, 5, 1), "month": pd.Period("2024-05", "M"),
                      "when": pd.Timestamp("2024-05-01"), "span": pd.Timedelta(days=121)}
    assert type(pulled["month"]) is pd.Period and str(pulled["month"]) == "2024-05"
