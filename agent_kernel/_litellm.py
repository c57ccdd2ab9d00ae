"""litellm, loaded once on first use: it takes seconds to import, so nothing imports it eagerly.

Loaded with its price map read from the installed copy and its telemetry and debug banners off:
a model call reaches the model's server and nothing else. Both the Model wrapper and the local
provider (`local/...`) take litellm from here.
"""

from __future__ import annotations

import os
from typing import Any

from . import _gc

_module: Any = None


def load() -> Any:
    """The litellm module, imported and configured the first time."""
    global _module
    if _module is None:
        os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")
        os.environ.setdefault("LITELLM_LOCAL_ANTHROPIC_BETA_HEADERS", "True")
        import litellm

        litellm.telemetry = False
        litellm.suppress_debug_info = True
        litellm.set_verbose = False
        _module = litellm
        _gc.set_aside_new_imports()
    return _module


def loaded() -> bool:
    """Whether litellm was imported already (a first `load()` blocks for seconds)."""
    return _module is not None
