"""Typed, path-aware access to decoded TOML/JSON for the plan validator.

Every failure raises :class:`PlanError` naming the source file, the exact path
(``flags.x.stages[2].percent``) and the rule.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any, NoReturn, cast

from openfeature_canary._format import parse_duration
from openfeature_canary._validate import _show, _show_key
from openfeature_canary.errors import PlanError

__all__ = ["Reader", "fail_on_repeated_key", "json_object", "show", "show_key"]

_SHOW_MAX = 60


def show(value: Any) -> str:
    """A value inside a plan message: the plan's words (a table) and Python's literal form."""
    return _show(value, literal=repr, mapping="a table", limit=_SHOW_MAX)


def show_key(key: Any) -> str:
    """A key inside a path: as written when it is short printable text, else quoted."""
    return _show_key(key, literal=repr, limit=_SHOW_MAX)


class Reader:
    """Typed access to decoded TOML/JSON that fails with the exact path."""

    def __init__(self, source: str) -> None:
        self.source = source

    def fail(self, path: str, message: str) -> NoReturn:
        raise PlanError(message, path=path, source=self.source)

    def table(
        self, data: Any, path: str, allowed: set[str] | None, *, required: bool = False
    ) -> Mapping[str, Any]:
        if data is None:
            if required:
                self.fail(path, "is required")
            return {}
        if not isinstance(data, Mapping):
            self.fail(path or "<top>", f"must be a table, got {type(data).__name__}")
        table = cast(Mapping[str, Any], data)
        for key in table:
            if not isinstance(key, str):
                self.fail(path or "<top>", f"keys must be strings, got {show(key)}")
            if allowed is not None and key not in allowed:
                where = _join(path, show_key(key))
                self.fail(where, f"unknown key (allowed: {', '.join(sorted(allowed))})")
        return table

    def array(self, data: Any, path: str, *, required: bool = False) -> Sequence[Any]:
        if data is None:
            if required:
                self.fail(path, "is required")
            return ()
        if not isinstance(data, list):
            self.fail(path, f"must be an array of tables, got {type(data).__name__}")
        return cast(Sequence[Any], data)

    def opt_str(self, t: Mapping[str, Any], path: str, key: str) -> str | None:
        value = t.get(key)
        if value is not None and not isinstance(value, str):
            self.fail(_join(path, key), f"must be a string, got {type(value).__name__}")
        return value

    def number(
        self, t: Mapping[str, Any], path: str, key: str, *, required: bool = False
    ) -> float | None:
        value = t.get(key)
        if value is None:
            if required:
                self.fail(_join(path, key), "is required")
            return None
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            self.fail(_join(path, key), f"must be a number, got {type(value).__name__}")
        try:
            number = float(value)
        except OverflowError:  # an integer too large for a float
            number = math.inf
        if not math.isfinite(number):
            self.fail(_join(path, key), "must be a finite number")
        return number

    def int_(self, t: Mapping[str, Any], path: str, key: str, default: int, *, minimum: int) -> int:
        value = t.get(key, default)
        if isinstance(value, bool) or not isinstance(value, int):
            self.fail(_join(path, key), f"must be an integer, got {type(value).__name__}")
        if value < minimum:
            self.fail(_join(path, key), f"must be >= {minimum}, got {show(value)}")
        return int(value)

    def bool_(self, t: Mapping[str, Any], path: str, key: str, default: bool) -> bool:
        value = t.get(key, default)
        if not isinstance(value, bool):
            self.fail(_join(path, key), f"must be true or false, got {show(value)}")
        return bool(value)

    def choice(
        self, t: Mapping[str, Any], path: str, key: str, options: Sequence[str], default: str
    ) -> Any:
        value = t.get(key, default)
        if value not in options:
            self.fail(_join(path, key), f"must be one of {', '.join(options)}, got {show(value)}")
        return value

    def duration(self, t: Mapping[str, Any], path: str, key: str, default: str | None) -> float:
        value = t.get(key, default)
        if value is None:
            self.fail(_join(path, key), "is required")
        if not isinstance(value, str):
            self.fail(
                _join(path, key), f"expected a duration string such as '10m', got {show(value)}"
            )
        if len(value) > _SHOW_MAX:  # also keeps every duration finite
            self.fail(_join(path, key), f"malformed duration {show(value)}: too long")
        try:
            seconds = parse_duration(value)
        except ValueError as exc:
            self.fail(_join(path, key), str(exc))
        if seconds <= 0:
            self.fail(_join(path, key), f"must be a positive duration, got {value!r}")
        return seconds


def _join(path: str, key: str) -> str:
    return f"{path}.{key}" if path else key


class _Repeated(dict[str, Any]):
    """A decoded JSON object in which a key was given more than once (the first such key)."""

    repeated: str = ""


def json_object(pairs: list[tuple[str, Any]], repeated: list[bool]) -> dict[str, Any]:
    obj = dict(pairs)
    if len(obj) == len(pairs):
        return obj
    seen: set[str] = set()
    marked = _Repeated(obj)
    for key, _ in pairs:
        if key in seen:
            marked.repeated = key
            break
        seen.add(key)
    repeated.append(True)
    return marked


def fail_on_repeated_key(data: Any, source: str) -> None:
    """JSON keeps the last of two equal keys silently (TOML refuses them): name the first
    one, in document order, with its path."""
    todo: list[tuple[str, Any]] = [("", data)]
    while todo:
        path, value = todo.pop()
        if isinstance(value, _Repeated):
            where = f"{path}.{show_key(value.repeated)}" if path else show_key(value.repeated)
            raise PlanError(
                "given twice (JSON would keep only the last one)", path=where, source=source
            )
        if isinstance(value, dict):
            todo.extend(
                (f"{path}.{show_key(k)}" if path else show_key(k), v)
                for k, v in reversed(value.items())
            )
        elif isinstance(value, list):
            todo.extend((f"{path}[{i}]", v) for i, v in reversed(list(enumerate(value))))
