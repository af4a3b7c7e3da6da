"""``json.dumps`` and ``json.loads`` for plain data, without importing ``json`` (start-up).

``import json`` imports ``re``, and with it ``enum``: together about two thirds of an empty
interpreter's start-up, in a command (``mgpu submit``) whose budget is 2.5 times that
start-up. This module does the same work with the C functions of ``_json``, the
accelerator the ``json`` module itself calls: strings are escaped by its
``encode_basestring_ascii`` and text is read by its scanner.

* :func:`dumps` is ``json.dumps(obj, separators=(",", ":"))`` for dicts with string keys,
  lists, tuples, strings, ints, floats, bools and None (no cycles); anything else is a
  ``TypeError``.
* :func:`loads` is ``json.loads`` (bytes read as UTF-8); malformed text is a
  ``ValueError``.

``test/test_plainjson.py`` holds both to ``json`` on generated data. ``_json`` is CPython's,
as is msgspec, which mgpu needs anyway.
"""

from __future__ import annotations

from _json import encode_basestring_ascii as _quote
from _json import make_scanner

TYPE_CHECKING = False  # not `typing.TYPE_CHECKING`: importing typing costs start-up time
if TYPE_CHECKING:
    from collections.abc import Callable
    from typing import Any

_CONSTANTS = {"NaN": float("nan"), "Infinity": float("inf"), "-Infinity": float("-inf")}


class _Context:
    """What the scanner reads from a ``json.JSONDecoder``: json.loads's defaults."""

    strict = True
    object_hook = None
    object_pairs_hook = None
    parse_float = float
    parse_int = int
    parse_constant = _CONSTANTS.__getitem__


_scan: Callable[[str, int], tuple[Any, int]] = make_scanner(_Context())  # type: ignore[arg-type]


def dumps(obj: Any) -> str:
    out: list[str] = []
    _encode(obj, out)
    return "".join(out)


def loads(text: str | bytes) -> Any:
    """The value of JSON ``text`` (``bytes`` are read as UTF-8)."""
    if isinstance(text, bytes):
        text = text.decode("utf-8")
    start = len(text) - len(text.lstrip(" \t\n\r"))
    try:
        value, end = _scan(text, start)
    except StopIteration as e:
        raise ValueError(f"not JSON: expecting a value at character {e.value}") from None
    if text[end:].strip(" \t\n\r"):
        raise ValueError(f"not JSON: extra data at character {end}")
    return value


def _float(value: float) -> str:
    if value != value:
        return "NaN"
    if value in (float("inf"), float("-inf")):
        return "Infinity" if value > 0 else "-Infinity"
    return float.__repr__(value)


def _encode(obj: Any, out: list[str]) -> None:
    if isinstance(obj, str):
        out.append(_quote(obj))
    elif obj is None:
        out.append("null")
    elif obj is True:
        out.append("true")
    elif obj is False:
        out.append("false")
    elif isinstance(obj, int):
        out.append(int.__repr__(obj))
    elif isinstance(obj, float):
        out.append(_float(obj))
    elif isinstance(obj, dict):
        out.append("{")
        for i, (key, value) in enumerate(obj.items()):
            if not isinstance(key, str):
                raise TypeError(f"keys must be str, not {type(key).__name__}")
            out.append(("," if i else "") + _quote(key) + ":")
            _encode(value, out)
        out.append("}")
    elif isinstance(obj, list | tuple):
        out.append("[")
        for i, value in enumerate(obj):
            if i:
                out.append(",")
            _encode(value, out)
        out.append("]")
    else:
        raise TypeError(f"Object of type {type(obj).__name__} is not JSON serializable")


__all__ = ["dumps", "loads"]
