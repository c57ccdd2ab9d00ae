"""Small tools the agent tests share (imported as `from sample_tools import add`, like scripted_server)."""

from __future__ import annotations

from agent_kernel.tools import tool


@tool
def add(a: int, b: int) -> int:
    """Add two integers.

    Args:
        a: the first.
        b: the second.
    """
    return a + b
