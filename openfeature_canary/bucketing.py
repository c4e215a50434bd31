"""Stable murmur3 bucketing, identical to flagd's ``fractional`` operator.

A unit (a request id, a user id) lands in a bucket in ``[0, 10000)`` (basis points) that
depends only on the flag key and the unit: the same in every process, every restart, every
replica (unlike Python's ``hash()``, which is salted per process). A unit is in the rollout
when its bucket is below the percentage in basis points, so raising the percentage only adds
units, and each flag key salts its own cohorts.

>>> bucket("dataservice-read-canary", "user-42")
7478
>>> in_rollout("dataservice-read-canary", "user-42", 50)
False
"""

from __future__ import annotations

from typing import Any, Final, Literal

import mmh3

__all__ = ["SCHEMES", "Scheme", "bucket", "in_rollout", "percent_to_basis_points"]

Scheme = Literal["flagd", "flagd-cbor"]
SCHEMES: Final = ("flagd", "flagd-cbor")
_TOTAL: Final = 10000


def _unit_str(unit: object) -> str:
    text = unit if isinstance(unit, str) else str(unit)
    if not text:
        raise ValueError("bucketing unit is empty: an empty unit counts as missing")
    return text


def _cbor_hash(flag_key: str, unit: str) -> int:
    try:
        import cbor2
    except ImportError as exc:  # pragma: no cover - depends on the environment
        raise ImportError(
            "bucketing scheme 'flagd-cbor' needs cbor2: pip install 'openfeature-canary[flagd]'"
        ) from exc
    h: int = mmh3.hash(cbor2.dumps([flag_key, unit], canonical=True), 0, False)
    return h


def bucket(flag_key: str, unit: Any, scheme: Scheme | str = "flagd") -> int:
    """Return the unit's bucket for this flag, in ``[0, 10000)``.

    ``scheme="flagd"`` hashes ``flag_key + unit`` (flagd / flagd-core 1.x);
    ``scheme="flagd-cbor"`` hashes the canonical CBOR of ``[flag_key, unit]`` (flagd-core 2.x).
    Units that are not strings (int, UUID) are converted with ``str()``.

    Raises ``ValueError`` for an empty unit or an unknown scheme.
    """
    text = _unit_str(unit)
    if scheme == "flagd":
        h: int = mmh3.hash(flag_key + text, 0, False)
    elif scheme == "flagd-cbor":
        h = _cbor_hash(flag_key, text)
    else:
        raise ValueError(f"unknown bucketing scheme {scheme!r}: expected one of {SCHEMES}")
    return (h * _TOTAL) >> 32


def percent_to_basis_points(percent: float) -> int:
    """``round(percent * 100)``: 5 % is 500 basis points, 0.25 % is 25."""
    if not 0 <= percent <= 100:
        raise ValueError(f"percent must be within [0, 100], got {percent}")
    return round(percent * 100)


def in_rollout(flag_key: str, unit: Any, percent: float, scheme: Scheme | str = "flagd") -> bool:
    """True when the unit is in the ``percent`` cohort of the flag.

    Equal to flagd's ``fractional`` with weights ``[["on", p_bp], ["off", 10000 - p_bp]]``
    returning ``"on"``.
    """
    return bucket(flag_key, unit, scheme) < percent_to_basis_points(percent)
