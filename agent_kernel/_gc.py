"""No full garbage collection over the whole process while agents run.

Importing litellm brings ~280k objects into the process. CPython's full collection walks every
tracked object: 0.2-0.4 s on a 2-core machine, and every run in the process stalls for it
(concurrent model calls, sandbox messages, the notebook's own cell). While any run is in progress,
the objects that existed before it are set aside (`gc.freeze`) and given back (`gc.unfreeze`) when
the last run ends, so the collections made during runs walk only what the runs made.

Nothing is kept alive by this: a set-aside object is still freed when its last reference goes,
and a reference cycle among them is collected by the first full collection after the runs. A
process that sets objects aside itself (a pre-fork server calling `gc.freeze`) is left alone.
"""

from __future__ import annotations

import gc
import threading
from collections.abc import Iterator
from contextlib import contextmanager

_lock = threading.Lock()
_running = 0
_frozen_by_us = False


@contextmanager
def runs_in_progress() -> Iterator[None]:
    """Around a run (or a batch of them): sets the process's objects aside on the first entry."""
    global _running, _frozen_by_us
    with _lock:
        _running += 1
        if _running == 1 and gc.get_freeze_count() == 0:
            gc.freeze()
            _frozen_by_us = True
    try:
        yield
    finally:
        with _lock:
            _running -= 1
            if _running == 0 and _frozen_by_us:
                gc.unfreeze()
                _frozen_by_us = False


def set_aside_new_imports() -> None:
    """After a large import made during a run (litellm's, on the first model call): set it aside too."""
    with _lock:
        if _frozen_by_us:
            gc.freeze()
