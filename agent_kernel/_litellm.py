"""litellm, loaded once on first use: it takes seconds to import, so nothing imports it eagerly.

Loaded with its price map read from the installed copy and its telemetry and debug banners off:
a model call reaches the model's server and nothing else. Both the Model wrapper and the local
provider (`local/...`) take litellm from here. The magics start the import in the background
when the extension loads (`preload`), so a notebook's first cell finds it done or under way.
"""

from __future__ import annotations

import contextlib
import os
import threading
from typing import Any

from . import _gc

_module: Any = None
_lock = threading.Lock()  # one import and configuration, whichever thread asks first
_PRELOAD_THREAD = "agent_kernel-litellm-import"


def load() -> Any:
    """The litellm module, imported and configured the first time (waits for an import under way)."""
    global _module
    if _module is not None:
        return _module
    with _lock:
        if _module is not None:
            return _module
        os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")
        os.environ.setdefault("LITELLM_LOCAL_ANTHROPIC_BETA_HEADERS", "True")
        import litellm

        litellm.telemetry = False
        litellm.suppress_debug_info = True
        litellm.set_verbose = False
        _module = litellm
        _gc.set_aside_new_imports()
    return _module


def preload() -> None:
    """Start the import in a daemon thread, once; `load()` then waits for it rather than importing again."""
    if _module is None and not any(t.name == _PRELOAD_THREAD for t in threading.enumerate()):
        threading.Thread(target=_preload, name=_PRELOAD_THREAD, daemon=True).start()


def _preload() -> None:
    """The import, then a mock completion (no request is sent): litellm's first real call would
    otherwise import the provider client's ~450 modules (openai.resources...), 1-2 s more."""
    with contextlib.suppress(Exception):  # a broken install is reported by the first real load(), in the cell
        load().completion(model="openai/warm-up", messages=[{"role": "user", "content": "-"}],
                          mock_response="-", api_key="sk-warm-up")


def loaded() -> bool:
    """Whether litellm was imported already (a first `load()` blocks for seconds)."""
    return _module is not None
