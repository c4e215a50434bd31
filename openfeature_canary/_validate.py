"""Validation of values read back from a store: one-line errors naming the field and the rule.

Shared by :mod:`openfeature_canary.state` and :mod:`openfeature_canary.evidence`; every error is
a :class:`~openfeature_canary.errors.StateStoreError` such as
``flags.x.percent: must be a number in [0, 100], got 500``.
"""

from __future__ import annotations

import json
import math
import sys
from collections.abc import Callable, Mapping
from enum import Enum
from typing import Any, Final, NoReturn

from openfeature_canary.errors import StateStoreError

__all__ = [
    "_ABSENT",
    "_SCALARS",
    "StrEnum",
    "_array",
    "_bad",
    "_choice",
    "_evidence",
    "_finite",
    "_integer",
    "_join",
    "_object",
    "_percent",
    "_show",
    "_show_key",
    "_text",
]

if sys.version_info >= (3, 11):
    from enum import StrEnum
else:  # pragma: no cover

    class StrEnum(str, Enum):
        def __str__(self) -> str:
            return str(self.value)


_SCALARS: Final = frozenset({int, float, str, bool, type(None)})
_ABSENT: Final[Any] = object()
_SHOW_MAX: Final = 40
#: Larger integers are shown by their kind: their digits help no one (and may be thousands).
_MAX_INT: Final = 2**63 - 1


def _bad(path: str, message: str) -> NoReturn:
    raise StateStoreError(f"{path}: {message}" if path else message)


def _join(path: str, key: str) -> str:
    return f"{path}.{key}" if path else key


def _show(
    value: Any,
    *,
    literal: Callable[[Any], str] = json.dumps,
    mapping: str = "an object",
    limit: int = _SHOW_MAX,
) -> str:
    """A value inside a one-line message: short, whatever it holds (huge, deep, odd); containers
    by their kind. The one copy for every reader of outside data: a store's or a record's JSON
    (the defaults), a TOML plan (``literal=repr, mapping="a table"``)."""
    if isinstance(value, Mapping):
        return mapping
    if isinstance(value, (list, tuple)):
        return "an array"
    if isinstance(value, int) and abs(value) > _MAX_INT:
        return "a number too large"
    try:
        text = literal(value)
    except (TypeError, ValueError):  # an unknown type
        return type(value).__name__
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _show_key(
    key: Any, *, literal: Callable[[Any], str] = json.dumps, limit: int = _SHOW_MAX
) -> str:
    """A key inside a path: as is when it is short printable text, else quoted."""
    if isinstance(key, str) and key.isprintable() and len(key) <= limit:
        return key
    return _show(key, literal=literal, limit=limit)


def _object(data: Any, path: str) -> Mapping[str, Any]:
    if type(data) is not dict and not isinstance(data, Mapping):
        _bad(path, f"must be an object, got {_show(data)}")
    return data


def _value(t: Mapping[str, Any], path: str, key: str, default: Any) -> Any:
    if key in t:
        return t[key]
    if default is _ABSENT:
        _bad(_join(path, key), "is required")
    return default


def _text(t: Mapping[str, Any], path: str, key: str, default: Any = _ABSENT) -> str:
    value = _value(t, path, key, default)
    if not isinstance(value, str):
        _bad(_join(path, key), f"must be a string, got {_show(value)}")
    return value


def _choice(t: Mapping[str, Any], path: str, key: str, options: type[StrEnum]) -> str:
    value = _value(t, path, key, _ABSENT)
    names = [o.value for o in options]
    if not isinstance(value, str) or value not in names:
        _bad(_join(path, key), f"must be one of {', '.join(names)}, got {_show(value)}")
    return value


def _integer(t: Mapping[str, Any], path: str, key: str) -> int:
    value = _value(t, path, key, _ABSENT)
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        _bad(_join(path, key), f"must be an integer >= 0, got {_show(value)}")
    return value


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _finite(t: Mapping[str, Any], path: str, key: str) -> float:
    """A time or a duration: a finite number."""
    value = _value(t, path, key, _ABSENT)
    if not _is_number(value) or not _finite_float(value):
        _bad(_join(path, key), f"must be a finite number, got {_show(value)}")
    return float(value)


def _finite_float(value: int | float) -> bool:
    try:
        return math.isfinite(value)
    except OverflowError:  # an int too large for a float
        return False


def _percent(t: Mapping[str, Any], path: str) -> float:
    value = _value(t, path, "percent", _ABSENT)
    if not _is_number(value) or not _finite_float(value) or not 0 <= value <= 100:
        _bad(_join(path, "percent"), f"must be a number in [0, 100], got {_show(value)}")
    return float(value)


def _evidence(t: Mapping[str, Any], path: str, key: str) -> float | None:
    """A measured value: a number (non-finite allowed: it is shown, never acted on) or null."""
    value = t.get(key)
    if value is None:
        return None
    if not _is_number(value):
        _bad(_join(path, key), f"must be a number or null, got {_show(value)}")
    try:
        return float(value)
    except OverflowError:
        return math.inf if value > 0 else -math.inf


def _array(t: Mapping[str, Any], path: str, key: str) -> list[Any]:
    value = t.get(key, [])
    if not isinstance(value, list):
        _bad(_join(path, key), f"must be an array, got {_show(value)}")
    return value
