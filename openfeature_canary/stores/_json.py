"""A stored state's JSON, checked: shared by the ``file://`` and ``redis://`` stores.

Both refuse a repeated key (``json`` would keep the last one silently), name what a non-object
is, and validate a state as :meth:`RolloutState.from_dict` does, the field named in the message.
"""

from __future__ import annotations

import json
from typing import Any

from openfeature_canary._validate import _show
from openfeature_canary.errors import StateStoreError
from openfeature_canary.state import RolloutState

__all__ = ["json_kind", "no_duplicates", "parse_state", "quoted"]


def no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    """JSON objects without repeated keys (``json`` would keep the last one silently)."""
    obj = dict(pairs)
    if len(obj) != len(pairs):
        seen: set[str] = set()
        for key, _ in pairs:
            if key in seen:
                raise ValueError(f"duplicate key {_show(key)}")
            seen.add(key)
    return obj


def json_kind(data: object) -> str:
    """What a JSON value is, for a message: ``an array``, ``a string``, ``null`` …"""
    return {list: "an array", str: "a string", type(None): "null", bool: "a boolean"}.get(
        type(data), "a number"
    )


def quoted(text: str) -> str:
    """A flag key as JSON text, short (a stored key may be anything)."""
    shown = json.dumps(text)
    return shown if len(shown) <= 40 else shown[:39] + "…"


def parse_state(prefix: str, flag_key: str, raw: bytes) -> RolloutState:
    """One stored state, validated like the file store's; :class:`StateStoreError` starting
    with ``prefix`` and naming the field (``flags.<key>.percent: must be …``)."""
    try:
        data = json.loads(raw.decode("utf-8"), object_pairs_hook=no_duplicates)
    except UnicodeDecodeError as exc:
        raise StateStoreError(f"{prefix}: not UTF-8 text (offset {exc.start})") from exc
    except RecursionError:
        raise StateStoreError(f"{prefix}: nested too deeply to be a state") from None
    except ValueError as exc:
        raise StateStoreError(f"{prefix}: not JSON: {exc}") from exc
    if not isinstance(data, dict):
        raise StateStoreError(f"{prefix}: expected a JSON object, got {json_kind(data)}")
    plain = flag_key.isprintable() and len(flag_key) <= 40
    path = f"flags.{flag_key if plain else quoted(flag_key)}"
    try:
        state = RolloutState.from_dict(data, path=path)
    except StateStoreError as exc:
        raise StateStoreError(f"{prefix}: {exc}") from exc
    if state.flag_key != flag_key:
        raise StateStoreError(
            f"{prefix}: {path}.flag_key: must be its field's name {quoted(flag_key)}, got "
            f"{quoted(state.flag_key)}"
        )
    return state
