"""FRED's two body formats: JSON (PHP ``json_encode``) and XML (FRED's default).

Every answer of the simulator is one *document*: a root with envelope
attributes and a list of items.  FRED renders it as

- JSON: ``{**envelope, <root>: [item, ...]}`` (``/`` escaped as ``\\/``);
- XML: ``<?xml version="1.0" encoding="utf-8" ?>`` then
  ``<root a="..."><child k="..."/>...</root>`` -- every item field an
  attribute (``true``/``false`` for booleans), except ``text_key`` which is
  the element's text (``<vintage_date>1991-12-04</vintage_date>``,
  ``<release_date release_id="9">2013-08-13</release_date>``).

Errors: JSON ``{"error_code":400,"error_message":"..."}``, XML
``<error code="400" message="..."/>``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import orjson

__all__ = [
    "FILE_TYPES",
    "JSON_HEADERS",
    "XML_DECLARATION",
    "XML_HEADERS",
    "error_body",
    "fred_json",
    "headers_for",
    "render_document",
    "xml_attr",
    "xml_text",
]

FILE_TYPES = ("xml", "json")
JSON_HEADERS = {"Content-Type": "application/json; charset=UTF-8"}
XML_HEADERS = {"Content-Type": "text/xml; charset=UTF-8"}
XML_DECLARATION = b'<?xml version="1.0" encoding="utf-8" ?>\n'

_ATTR_ESCAPES = str.maketrans({
    "&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;", "\n": "&#10;", "\r": "&#13;", "\t": "&#9;",
})
_TEXT_ESCAPES = str.maketrans({"&": "&amp;", "<": "&lt;", ">": "&gt;"})


def headers_for(file_type: str) -> Mapping[str, str]:
    return JSON_HEADERS if file_type == "json" else XML_HEADERS


def fred_json(obj: Any) -> bytes:
    """Encode like FRED (PHP ``json_encode``): compact, ``/`` escaped as ``\\/``."""
    return orjson.dumps(obj).replace(b"/", b"\\/")


def xml_attr(value: Any) -> str:
    """An attribute value, escaped (quotes, markup, and whitespace that XML would normalise)."""
    if value is True:
        return "true"
    if value is False:
        return "false"
    return str(value).translate(_ATTR_ESCAPES)


def xml_text(value: Any) -> str:
    return str(value).translate(_TEXT_ESCAPES)


def _attrs(fields: Mapping[str, Any], skip: str | None = None) -> str:
    return "".join(f' {k}="{xml_attr(v)}"' for k, v in fields.items() if k != skip and v is not None)


def render_document(
    file_type: str,
    root: str,
    envelope: Mapping[str, Any],
    child: str | None,
    items: Sequence[Any] | None,
    text_key: str | None = None,
) -> bytes:
    """One FRED answer in ``file_type`` (see the module docstring).

    ``items`` are dicts (or plain strings when ``text_key`` is ``""``: the
    item is the text); ``None`` items means an envelope-only document.
    """
    if file_type == "json":
        body = dict(envelope)
        if items is not None:
            body[root] = list(items)
        return fred_json(body)
    parts = [f"<{root}{_attrs(envelope)}>"]
    for item in items or ():
        if text_key == "":
            parts.append(f"  <{child}>{xml_text(item)}</{child}>")
        elif text_key:
            parts.append(f"  <{child}{_attrs(item, text_key)}>{xml_text(item[text_key])}</{child}>")
        else:
            parts.append(f"  <{child}{_attrs(item)}/>")
    parts.append(f"</{root}>")
    return XML_DECLARATION + "\n".join(parts).encode()


def error_body(status: int, message: str, file_type: str = "json") -> bytes:
    if file_type == "json":
        return fred_json({"error_code": status, "error_message": message})
    return XML_DECLARATION + f'<error code="{status}" message="{xml_attr(message)}"/>'.encode()
