"""Making untrusted text safe to show. A leaf module (no package imports), so the sandbox layer can use it too.

`clean_text` is the one terminal-text cleaner: every place that puts model or sandbox text on the
analyst's terminal or into an exported notebook passes it through here.
"""

from __future__ import annotations

import re

# ECMA-48 sequences, 7-bit (ESC ...) and 8-bit (C1) forms, matched whole so no parameter text is left over:
_SEQUENCE = re.compile(
    # CSI: cursor moves, colours, screen clears, terminal reports
    r"(?:\x1b\[|\x9b)[0-?]*[ -/]*[@-~]"
    # OSC (hyperlinks, clipboard writes, window titles), DCS, SOS, PM, APC: a string up to ST or BEL.
    # The string ends at a line's end too: an unterminated one cannot hide the lines after it.
    r"|(?:\x1b[\]PX^_]|[\x90\x98\x9d\x9e\x9f])[^\n\x07\x1b\x9c]*(?:\x07|\x1b\\|\x9c)?"
    # nF (character sets, DECALN), then the single-character Fp/Fe/Fs ones (reset, save/restore cursor)
    r"|\x1b[ -/]+[0-~]?|\x1b[0-~]?"
)
# What is left of C0 and C1 (DEL too); \n and \t stay, \r is made a line break below.
_CONTROL = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f]")
_CARRIAGE_RETURN = re.compile(r"\r\n?")


def clean_text(text: str) -> str:
    """`text` without terminal control: no escape sequence, no C0/C1 control but newline and tab.

    A carriage return becomes a line break: on a terminal it would let later text overwrite what a
    reader should see (shown code, a review prompt).
    """
    return _CONTROL.sub("", _CARRIAGE_RETURN.sub("\n", _SEQUENCE.sub("", text)))
