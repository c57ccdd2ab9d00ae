"""Records the sandbox hands back: what one execution produced, and which isolation layers hold."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

MimeBundle = dict[str, Any]


@dataclass
class ExecutionError:
    """An exception raised by sandbox code, or a failure of the sandbox itself (timeout, crash)."""

    name: str
    value: str
    traceback: str = ""  # ANSI codes stripped, trimmed to the frames of the executed code

    def __str__(self) -> str:
        return self.traceback or f"{self.name}: {self.value}"


@dataclass
class Execution:
    """Everything one `Sandbox.execute` call produced, in the order it was produced.

    `outputs` holds nbformat v4 output dicts (stream, display_data, execute_result, error) so an
    export can put the real outputs under the code cell; the other fields are convenient views.
    """

    code: str
    outputs: list[dict[str, Any]] = field(default_factory=list)
    error: ExecutionError | None = None
    duration: float = 0.0
    has_final_answer: bool = False
    final_answer: Any = None
    truncated: bool = False  # outputs were cut (head and tail of printed text kept) or dropped (over a bound), as a note says
    restarted: bool = False  # the kernel died or hung and was replaced: sandbox state was lost

    def _stream(self, name: str) -> str:
        return "".join(o["text"] for o in self.outputs if o["output_type"] == "stream" and o["name"] == name)

    @property
    def stdout(self) -> str:
        return self._stream("stdout")

    @property
    def stderr(self) -> str:
        return self._stream("stderr")

    @property
    def result(self) -> MimeBundle | None:
        """The mime bundle of the last expression's value, if the code ended with one."""
        for o in self.outputs:
            if o["output_type"] == "execute_result":
                return o["data"]
        return None

    @property
    def displays(self) -> list[MimeBundle]:
        return [o["data"] for o in self.outputs if o["output_type"] == "display_data"]

    @property
    def ok(self) -> bool:
        return self.error is None


@dataclass
class Isolation:
    """Which protection layers are active in a sandbox, and why a missing one is missing."""

    active: dict[str, str] = field(default_factory=dict)  # layer -> detail ("landlock": "ABI 7")
    missing: dict[str, str] = field(default_factory=dict)  # layer -> reason it is not active

    def __str__(self) -> str:
        lines = [f"  on   {k}: {v}" for k, v in self.active.items()]
        lines += [f"  off  {k}: {v}" for k, v in self.missing.items()]
        return "sandbox isolation\n" + "\n".join(lines)
