"""Fixtures shared by the test suite. litellm must never fetch its price map from the internet."""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")
os.environ.setdefault("LITELLM_LOCAL_ANTHROPIC_BETA_HEADERS", "True")
sys.path.insert(0, str(Path(__file__).parent))  # `from scripted_server import text, tool_calls, ...`

from scripted_server import ScriptedServer  # noqa: E402


def pytest_configure(config: pytest.Config) -> None:
    # litellm 1.100.5 touches pydantic attributes deprecated in pydantic 2.11; not ours to fix.
    config.addinivalue_line("filterwarnings", "ignore::DeprecationWarning:litellm.*")


@pytest.fixture(autouse=True, scope="session")
def _jupyter_data_dir(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """Kernelspecs the tests install (an export installs agent-sandbox's) go to a folder of the run's
    own, never the machine's: kernels and servers the tests start inherit it."""
    folder = tmp_path_factory.mktemp("jupyter-data")
    before = os.environ.get("JUPYTER_DATA_DIR")
    os.environ["JUPYTER_DATA_DIR"] = str(folder)
    yield folder
    if before is None:
        os.environ.pop("JUPYTER_DATA_DIR")
    else:
        os.environ["JUPYTER_DATA_DIR"] = before


@pytest.fixture
def scripted_server() -> Iterator[ScriptedServer]:
    """A fresh scripted OpenAI-compatible server on 127.0.0.1; `.model()` gives a Model pointed at it."""
    with ScriptedServer() as server:
        yield server
