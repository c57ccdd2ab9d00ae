"""Making untrusted text safe to show. A leaf module (no package imports), so the sandbox layer can use it too.

Everything a model writes or the sandbox produces is hostile. `clean_text` is the one terminal-text
cleaner: every place that puts model or sandbox text on the analyst's terminal or into an exported
notebook passes it through here. The rest is the HTML sanitiser, a security boundary kept out of
the views so that display, export, review and the agents import it rather than each other: the
sandbox's HTML goes through nh3 with a table-friendly allowlist (`sanitize_html`), images must
decode as real PNG/JPEG (`image_base64`), a display's mime bundle keeps only those
(`safe_bundle`), and HTML we assemble around them gets a last nh3 pass (`sanitize_document`).
"""

from __future__ import annotations

import base64
import binascii
import re
from typing import Any

import nh3

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


_PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
_JPEG_MAGIC = b"\xff\xd8\xff"
_IMAGE_MAGIC = {"image/png": _PNG_MAGIC, "image/jpeg": _JPEG_MAGIC}

# What the sandbox's text/html may keep: enough for DataFrame tables and simple formatted text.
_SANDBOX_TAGS = {
    "table", "thead", "tbody", "tfoot", "tr", "th", "td", "caption", "colgroup", "col",
    "div", "span", "p", "br", "hr", "b", "i", "u", "s", "em", "strong", "small", "sub", "sup",
    "code", "pre", "kbd", "samp", "blockquote", "ul", "ol", "li", "dl", "dt", "dd",
    "h1", "h2", "h3", "h4", "h5", "h6", "a", "abbr",
}  # fmt: skip
_SANDBOX_ATTRIBUTES = {
    "th": {"colspan", "rowspan", "align", "valign"},
    "td": {"colspan", "rowspan", "align", "valign"},
    "col": {"span"},
    "colgroup": {"span"},
    "a": {"href", "title"},
    "abbr": {"title"},
    "ol": {"start"},
}
_LINK_SCHEMES = {"http", "https", "mailto"}

# The final backstop pass: our own markup (inline styles from a fixed property list, details,
# data-URL images) plus whatever the sandbox pass kept. Properties that take url() are excluded.
_ALL_TAGS = _SANDBOX_TAGS | {"details", "summary", "img"}
_ALL_ATTRIBUTES = {
    **_SANDBOX_ATTRIBUTES,
    "img": {"src", "alt", "width", "height"},
    "*": {"style", "title"},
    "details": {"open"},
}
_STYLE_PROPERTIES = {
    "color", "background-color", "font-weight", "font-style", "font-family", "font-size",
    "text-decoration", "white-space", "margin", "margin-top", "margin-bottom", "padding",
    "padding-left", "border-left", "border-left-color", "border-top", "border-radius", "overflow-x", "max-width",
    "line-height", "opacity", "display", "word-break", "overflow-wrap", "overflow", "text-overflow",
}  # fmt: skip


def sanitize_html(fragment: str) -> str:
    """The sandbox's text/html with scripts, styles, event handlers and unsafe URLs removed."""
    return nh3.clean(
        fragment,
        tags=_SANDBOX_TAGS,
        attributes=_SANDBOX_ATTRIBUTES,
        url_schemes=_LINK_SCHEMES,
        clean_content_tags={"script", "style"},
        link_rel="noopener noreferrer nofollow",
    )


def image_base64(mime: str, data: Any) -> str | None:
    """Canonical base64 of an image output, or None unless it decodes to a real PNG/JPEG."""
    if not isinstance(data, str):
        return None
    try:
        raw = base64.b64decode("".join(data.split()), validate=True)
    except (binascii.Error, ValueError):
        return None
    if not raw.startswith(_IMAGE_MAGIC[mime]):
        return None
    return base64.b64encode(raw).decode("ascii")


def safe_bundle(data: dict[str, Any]) -> dict[str, Any]:
    """Keep only mime types that are safe to show: text/plain, sanitised text/html, valid images.

    Anything else (application/javascript, widgets, SVG, markdown with raw HTML, ...) is dropped;
    when nothing is left, a text/plain note says what was dropped.
    """
    safe: dict[str, Any] = {}
    for mime, value in data.items():
        text = joined(value)
        if mime == "text/plain":
            safe[mime] = clean_text(text)
        elif mime == "text/html":
            safe[mime] = sanitize_html(text)
        elif mime in _IMAGE_MAGIC and (encoded := image_base64(mime, text)):
            safe[mime] = encoded
    if not safe:
        safe["text/plain"] = f"[output not shown: {', '.join(sorted(data)) or 'empty'}]"
    return safe


def joined(value: Any) -> str:
    """nbformat allows multiline strings as lists of lines."""
    if isinstance(value, list):
        return "".join(str(v) for v in value)
    return value if isinstance(value, str) else str(value)




def sanitize_document(document: str) -> str:
    """The last nh3 pass over HTML we assembled (our own markup around sanitised parts): nothing
    outside the allowlist survives, whatever a rendering bug let through."""
    return nh3.clean(
        document,
        tags=_ALL_TAGS,
        attributes=_ALL_ATTRIBUTES,
        url_schemes=_LINK_SCHEMES | {"data"},
        attribute_filter=_filter_attribute,
        filter_style_properties=_STYLE_PROPERTIES,
        clean_content_tags={"script", "style"},
        link_rel="noopener noreferrer nofollow",
    )


def _filter_attribute(tag: str, attribute: str, value: str) -> str | None:
    """data: URLs only as base64 PNG/JPEG image sources; never in links."""
    if value.strip().lower().startswith("data:"):
        ok = tag == "img" and attribute == "src" and value.startswith(("data:image/png;base64,", "data:image/jpeg;base64,"))
        return value if ok else None
    return value
