"""Agents: one shared loop (MultiStepAgent), acting through Python code or through tool calls."""

from ._code import CodeAgent
from ._loop import MultiStepAgent
from ._tool_calling import ToolCallingAgent

__all__ = ["CodeAgent", "MultiStepAgent", "ToolCallingAgent"]
