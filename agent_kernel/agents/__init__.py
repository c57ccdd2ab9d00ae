"""Agents: one shared loop (MultiStepAgent), acting through Python code or through tool calls."""

from ._code import CodeAgent
from ._limits import Limits
from ._loop import MultiStepAgent
from ._options import AgentOptions
from ._tool_calling import ToolCallingAgent

__all__ = ["AgentOptions", "CodeAgent", "Limits", "MultiStepAgent", "ToolCallingAgent"]
