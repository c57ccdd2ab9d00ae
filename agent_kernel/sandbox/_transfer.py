"""One side's end of value transfers: the codec plus where its big payloads travel. Both sides use it.

Locally the host and the kernel share a transfer folder, so a big payload is a file there. A kernel
behind a gateway shares no folder with the host: with `inline` set, each payload file is read back
into the descriptor (base64) before it is sent, and written into this side's own private transfer
folder before the codec decodes it. Only the carriage differs; the codec's checks (never unpickle,
validate, bound the size) apply to the materialised file exactly as to a local one.
"""

from __future__ import annotations

import base64
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from . import _codec

_PAYLOAD = "payload"  # the descriptor key carrying an inline payload file's bytes


@dataclass(frozen=True)
class Transfer:
    """Encode and decode values for the other side; `inline`: payload files travel in the message."""

    directory: Path
    inline: bool = False

    def encode(self, value: Any, name: str) -> dict[str, Any]:
        descriptor = _codec.encode(value, self.directory, name)
        if not self.inline or "file" not in descriptor:
            return descriptor
        path = _codec._file_path(descriptor, self.directory)
        try:
            with os.fdopen(os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC), "rb") as f:
                data = f.read()
        finally:
            path.unlink(missing_ok=True)
        descriptor = {k: v for k, v in descriptor.items() if k != "file"}
        return descriptor | {_PAYLOAD: base64.b64encode(data).decode("ascii"), "size": len(data)}

    def decode(self, descriptor: Any, max_bytes: int = _codec.MAX_BYTES, budget: _codec.Budget | None = None) -> Any:
        """The value, never unpickled; raises _codec.TransferError for anything malformed, or over
        `budget` (shared by the values of one call; else `max_bytes` for this one)."""
        budget = _codec.Budget(max_bytes) if budget is None else budget
        return _codec.decode(self._materialise(descriptor, budget.left), self.directory, budget=budget)

    def cleanup(self, descriptor: Any) -> None:
        """Delete the file of a descriptor that will not be decoded (inline ones have none here)."""
        if not (self.inline and isinstance(descriptor, dict) and _PAYLOAD in descriptor):
            _codec.cleanup(descriptor, self.directory)

    def _materialise(self, descriptor: Any, max_bytes: int) -> Any:
        """An inline payload written to a fresh file of ours, named by us (never by the sender)."""
        if not (self.inline and isinstance(descriptor, dict) and _PAYLOAD in descriptor):
            return descriptor
        if "file" in descriptor:
            raise _codec.TransferError("a descriptor carries both an inline payload and a file name")
        payload = descriptor[_PAYLOAD]
        if not isinstance(payload, str) or len(payload) > max_bytes * 4 // 3 + 4:
            raise _codec.TransferError(f"an inline payload must be base64 text of at most max_bytes={max_bytes}")
        try:
            data = base64.b64decode(payload, validate=True)
        except ValueError as exc:
            raise _codec.TransferError(f"an inline payload is not valid base64: {exc}") from None
        kind = descriptor.get("kind")
        if kind not in _codec._SUFFIX:
            raise _codec.TransferError(f"a {kind!r} descriptor cannot carry a payload file")
        written = _codec._file_descriptor(kind, self.directory, "inline", lambda f: f.write(data))
        rest = {k: v for k, v in descriptor.items() if k != _PAYLOAD}
        return rest | written

