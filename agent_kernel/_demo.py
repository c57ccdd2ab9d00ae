"""`python -m agent_kernel demo`: examples/quickstart.ipynb executed headless (nbclient, a real
ipykernel), by the embedded local model unless the user named another (`--model`, or
AGENT_KERNEL_MODEL with its key).

The notebook runs in an output folder (a copy of it and its data), so the executed notebook and the
run it exports end up side by side. Its answers are then checked against pandas: the demo says
whether the model got them right instead of trusting it.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

QUICKSTART = Path(__file__).resolve().parent.parent / "examples" / "quickstart.ipynb"
DATA = "data/sales.csv"  # the quickstart's CSV, relative to the notebook
EXPORTED = "quickstart_run.ipynb"  # what the quickstart's last cell exports

# Run after the notebook, in its kernel, and not saved with it: what the demo checks and reports.
_PROBE = """\
import json as _json
from agent_kernel.magics import AgentMagics as _AgentMagics
_magics = next(m for m in get_ipython().configurables if isinstance(m, _AgentMagics))
print(_json.dumps({
    "answer": globals().get("answer"), "best_month": globals().get("best_month"),
    "runs": [{"state": r.run.state, "steps": len(r.run.action_steps), "seconds": r.run.duration}
             for r in _magics.runs],
}, default=str))
"""


@dataclass(frozen=True)
class Expected:
    """The quickstart's answers, computed by pandas from its CSV."""

    region: str  # highest total revenue (units * unit_price)
    revenue: float  # that region's total
    best_month: str  # "YYYY-MM" of the highest total revenue over all regions
    regions: tuple[str, ...]  # every region (an answer naming them all names none)

    @classmethod
    def from_csv(cls, csv: Path) -> Expected:
        import pandas as pd

        sales = pd.read_csv(csv, parse_dates=["date"])
        revenue = sales["units"] * sales["unit_price"]
        by_region = revenue.groupby(sales["region"]).sum()
        by_month = revenue.groupby(sales["date"].dt.strftime("%Y-%m")).sum()
        return cls(str(by_region.idxmax()), round(float(by_region.max()), 2), str(by_month.idxmax()),
                   tuple(map(str, by_region.index)))

    def wrong(self, answer: Any, best_month: Any) -> list[str]:
        """What is wrong with the notebook's `answer` and `best_month` (nothing: both right)."""
        problems = []
        if not self._names_top_region(answer):
            problems.append(f"answer should be region {self.region!r} with revenue {self.revenue:.2f}")
        if self.best_month not in str(best_month):
            problems.append(f"best_month should be {self.best_month!r}")
        return problems

    def _names_top_region(self, answer: Any) -> bool:
        """The top region and its revenue (to the cent), and no other region: in a dict, a pair or text."""
        parts = [*answer.keys(), *answer.values()] if isinstance(answer, dict) else (
            list(answer) if isinstance(answer, (tuple, list)) else [answer])
        text = " ".join(map(str, parts))
        numbers = [float(n.replace(",", "")) for n in re.findall(r"\d[\d,]*(?:\.\d+)?", text)]
        others = [r for r in self.regions if r != self.region and re.search(rf"\b{re.escape(r)}\b", text)]
        return (re.search(rf"\b{re.escape(self.region)}\b", text) is not None and not others
                and any(abs(n - self.revenue) < 0.01 for n in numbers))


def _choose_model(model: str | None) -> str:
    """--model, else AGENT_KERNEL_MODEL, else the embedded local model (fetched on first use)."""
    chosen = model or os.environ.get("AGENT_KERNEL_MODEL")
    if chosen:
        return chosen
    from .model_fetch import DEFAULT_LOCAL_MODEL

    return f"local/{DEFAULT_LOCAL_MODEL}"


def _prepare_local(model: str) -> None:
    """Fetch a catalog model that is not here yet; fail early (not in the notebook) when that fails."""
    from .model_fetch import CATALOG, ModelFetchError, fetch, model_path

    name = model.split("/", 1)[1]
    try:
        model_path(name)
    except ModelFetchError:
        if name not in CATALOG:
            raise
        fetch(name, progress=lambda m: print(f"[models] {m}", file=sys.stderr))
    try:
        import llama_cpp  # noqa: F401 - only to say what is missing before the notebook starts
    except ImportError:
        raise ModelFetchError("local/ models need llama-cpp-python: pip install 'agent-kernel[local]' "
                              "(scripts/demo.sh builds it; see docs/local-models.md)") from None


def run_demo(model: str | None, out_dir: str | Path | None = None, notebook: Path = QUICKSTART) -> int:
    """Execute the quickstart in `out_dir` and check its answers. Returns 0 when every cell ran and the
    answers are right, 1 when not, 2 when it could not start."""
    from .model_fetch import ModelFetchError

    if not notebook.is_file():
        print(f"error: {notebook} is missing: the demo runs the quickstart notebook of a checkout of the "
              "repository (git clone it, then run scripts/demo.sh there)", file=sys.stderr)
        return 2
    chosen = _choose_model(model)
    out = Path(out_dir or os.environ.get("AGENT_KERNEL_DEMO_DIR") or "agent-kernel-demo").resolve()
    try:
        if chosen.startswith("local/"):
            _prepare_local(chosen)
    except ModelFetchError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    (out / DATA).parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(notebook.parent / DATA, out / DATA)
    (out / EXPORTED).unlink(missing_ok=True)  # an export left by an earlier demo is not this run's
    print(f"model:    {chosen}\nnotebook: {notebook}\noutput:   {out}\n", flush=True)
    started = time.monotonic()
    failure, report = _execute(notebook, chosen, out)
    print(f"\nexecuted notebook: {out / notebook.name}  ({time.monotonic() - started:.0f} s)")
    if (out / EXPORTED).is_file():
        print(f"exported run:      {out / EXPORTED}")
    for number, run in enumerate(report.get("runs", []), start=1):
        print(f"run {number}: {run['state']}, {run['steps']} steps, {float(run['seconds']):.0f} s")
    if failure:
        print(f"\na cell failed:\n{failure}", file=sys.stderr)
        return 1
    expected = Expected.from_csv(out / DATA)
    print(f"\nanswer:     {report['answer']!r}\nbest_month: {report['best_month']!r}")
    problems = expected.wrong(report["answer"], report["best_month"])
    if problems:
        print("WRONG (checked against pandas): " + "; ".join(problems))
        return 1
    print(f"CORRECT (checked against pandas: {expected.region}, {expected.revenue:.2f}; {expected.best_month})")
    return 0


def _execute(notebook: Path, model: str, out: Path) -> tuple[str, dict[str, Any]]:
    """Run the notebook in `out` with `model` as its agents' default; save it there executed, failed
    cells included. Returns (the failure, or ""; what the probe read from the kernel)."""
    import nbformat
    from nbclient import NotebookClient
    from nbclient.exceptions import (
        CellExecutionError,
        CellTimeoutError,
        DeadKernelError,
    )
    from nbformat.v4 import new_code_cell
    from traitlets.config import Config

    nb = nbformat.read(notebook, as_version=4)
    failed = (CellExecutionError, CellTimeoutError, DeadKernelError)
    failure, report = "", {}
    # The notebook's kernel talks over unix sockets in a private folder, not over local TCP ports.
    with tempfile.TemporaryDirectory(prefix="agent-kernel-demo-") as sockets:
        ipc = Config({"KernelManager": {"transport": "ipc", "ip": str(Path(sockets) / "kernel")}})
        client = NotebookClient(nb, timeout=3600, kernel_name="python3", config=ipc,
                                resources={"metadata": {"path": str(out)}})
        with client.setup_kernel(env={**os.environ, "AGENT_KERNEL_MODEL": model}):
            try:
                for index, cell in enumerate(nb.cells):
                    if cell.cell_type == "code":
                        print(f"[{index + 1}/{len(nb.cells)}] {cell.source.splitlines()[0]}", flush=True)
                    client.execute_cell(cell, index, execution_count=client.code_cells_executed + 1)
            except failed as e:
                failure = str(e)
            probe = new_code_cell(_PROBE)
            nb.cells.append(probe)  # nbclient executes cells of its notebook only; removed before saving
            try:
                client.execute_cell(probe, len(nb.cells) - 1, store_history=False)
                report = json.loads("".join(o.get("text", "") for o in probe.outputs if o.get("name") == "stdout"))
            except (*failed, ValueError) as e:  # a dead kernel, or the probe's own failure
                failure = failure or f"could not read the answers from the kernel: {e}"
            finally:
                nb.cells.pop()
    nbformat.write(nb, out / notebook.name)
    return failure, report
