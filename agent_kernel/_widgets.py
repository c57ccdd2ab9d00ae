"""Notebook widgets that wait for the analyst's click while their cell is still running: the review
prompt (`review.widget_prompt`, for review=True and `--review`), the ask_user text box and the "Put in
next cell" offer of `%agent fix` are built on `ask_with_buttons` here.

A running cell keeps the kernel's main shell busy, so the frontend's widget messages (comm_msg:
a click, an edited text) queue behind it and would only be read after the cell. While a widget
waits, `wait_for` reads that queue itself: widget messages are handled at once, everything else
(the next cell's execute_request, ...) is handed back to the kernel, in order, to run after this
cell. ipykernel 7 gives the main thread its messages on an inproc socket (subshells); ipykernel 6
reads the shell socket on the main thread. Model and sandbox text only ever goes into plain-text
widgets (Textarea, Label), never into HTML.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

T = TypeVar("T")

_COMM_TYPES = frozenset({"comm_open", "comm_msg", "comm_close"})
_POLL_MS = 100


def usable() -> bool:
    """ipywidgets is installed and this is the main thread of an ipykernel that handles comms."""
    kernel = _kernel()
    if kernel is None or "comm_msg" not in getattr(kernel, "shell_handlers", {}):
        return False
    if threading.current_thread() is not threading.main_thread():  # only that thread may read its queue
        return False
    try:
        import ipywidgets  # noqa: F401
    except ImportError:
        return False
    return True


def _kernel() -> Any:
    from IPython import get_ipython

    return getattr(get_ipython(), "kernel", None)


@dataclass
class _Inbox:
    """Where the main shell's messages wait, and how to hand one back to the kernel."""

    socket: Any  # a zmq socket, read only from the main thread
    hand_back: Callable[[list[Any]], None]


def _inbox(kernel: Any) -> _Inbox:
    channel = getattr(kernel, "shell_channel_thread", None)
    if channel is not None:  # ipykernel 7: the shell channel thread forwards main-shell messages
        socket = channel.manager.get_shell_channel_to_subshell_pair(None).to_socket
        return _Inbox(socket, lambda frames: kernel.io_loop.add_callback(kernel.shell_main, None, frames))
    return _Inbox(kernel.shell_stream.socket,  # ipykernel 6: the main thread reads the shell socket
                  lambda frames: kernel.schedule_dispatch(kernel.dispatch_shell, frames))


def wait_for(answer: Callable[[], T | None]) -> T:
    """Handle the frontend's widget messages until `answer()` is not None (a button was clicked).
    Kernel > Interrupt raises KeyboardInterrupt here; held messages are handed back either way."""
    kernel = _kernel()
    inbox = _inbox(kernel)
    held: list[list[Any]] = []
    try:
        while (value := answer()) is None:
            if inbox.socket.poll(_POLL_MS):
                _read(kernel, inbox, held)
        return value
    finally:
        _read(kernel, inbox, held)  # none may stay unread: the kernel's stream wakes only for new ones
        for frames in held:
            inbox.hand_back(frames)


def _read(kernel: Any, inbox: _Inbox, held: list[list[Any]]) -> None:
    import zmq

    while True:
        try:
            frames = inbox.socket.recv_multipart(zmq.NOBLOCK, copy=False)
        except zmq.Again:
            return
        message = _comm_message(kernel, frames)
        if message is None:
            held.append(frames)
            continue
        idents, msg = message  # the comm manager's handler logs a failing widget callback itself
        kernel.shell_handlers[msg["header"]["msg_type"]](kernel.shell_stream, idents, msg)


def _comm_message(kernel: Any, frames: list[Any]) -> tuple[list[Any], dict[str, Any]] | None:
    """(idents, message) for a comm message; None for anything else, left for the kernel to read."""
    session = kernel.session
    try:
        idents, rest = session.feed_identities(frames, copy=False)
        # A peek first: only a full read records the signature, and the kernel must read the rest.
        if session.deserialize(rest, content=False, copy=False)["header"]["msg_type"] not in _COMM_TYPES:
            return None
        return idents, session.deserialize(rest, content=True, copy=False)
    except (ValueError, KeyError):  # not a client message (ipykernel's own notes), or signed wrong: the kernel's
        return None


# -- the widgets -------------------------------------------------------------------------------------


def ask_with_buttons(title: str, body: list[Any], buttons: dict[str, Any], settle: Callable[[str], T]) -> T:
    """Show `body` and the buttons under a title; wait for a click; `settle(choice)` is the answer.
    The prompt is then replaced by one line saying what was chosen (no widget stays behind)."""
    import ipywidgets as w
    from IPython.display import display

    chosen: list[str] = []

    def choosing(choice: str) -> Callable[[Any], None]:
        def clicked(_button: Any) -> None:
            if not chosen:  # the first click counts
                chosen.append(choice)

        return clicked

    for choice, button in buttons.items():
        button.on_click(choosing(choice))
    row = w.HBox(list(buttons.values()))
    label = w.Label(title)
    prompt = w.VBox([label, *body, row])
    shown = display(prompt, display_id=True)
    said = "no choice: interrupted"
    try:
        answer = wait_for(lambda: settle(chosen[0]) if chosen else None)
        said = f"chosen: {chosen[0]}"
        return answer
    finally:
        for widget in (prompt, row, label, *body, *buttons.values()):
            for part in (widget, getattr(widget, "layout", None), getattr(widget, "style", None)):
                if part is not None:  # each widget has its own layout and style models
                    part.close()
        shown.update({"text/plain": f"{title} ({said})"}, raw=True)


def ask_text(question: str) -> str | None:
    """ask_user in a notebook: the agent's question, a text box, Answer or Skip (None)."""
    import ipywidgets as w

    box = w.Textarea(placeholder="your answer", layout=w.Layout(width="auto", height="3.5em"))
    buttons = {"answer": w.Button(description="Answer", button_style="success"),
               "skip": w.Button(description="Skip", tooltip="the agent states its assumption instead")}
    return ask_with_buttons(f"The agent asks: {question}", [box], buttons,
                            lambda choice: (box.value.strip() or None) if choice == "answer" else None)


def offer_fix() -> bool:
    """Under `%agent fix`'s diff: True when the analyst wants the fixed cell put in the next cell."""
    import ipywidgets as w

    buttons = {"put in next cell": w.Button(description="Put in next cell", button_style="success"),
               "dismiss": w.Button(description="Dismiss")}
    title = "Verified in a sandbox. This cell keeps running until you choose"
    return ask_with_buttons(title, [], buttons, lambda choice: choice == "put in next cell")
