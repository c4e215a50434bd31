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

What is hashed (:func:`hashed_bytes`) is built here, byte by byte, for both schemes: the UTF-8
of ``flag_key + unit`` (``"flagd"``), or the canonical CBOR of the two-element array
``[flag_key, unit]`` (``"flagd-cbor"``, RFC 8949: ``0x82``, then each text string as major type
3 with its UTF-8 byte length in the shortest form). cbor2 is not needed at run time; the tests
prove the bytes equal ``cbor2.dumps([flag_key, unit], canonical=True)``.

On the evaluation path, :func:`unit_hasher` precomputes what depends on the flag key only and
returns a closure ``unit -> bucket``: one ``str.encode``, one concatenation, one murmur3 call.

**A unit that is not valid Unicode text (a lone surrogate) is not bucketed**: ``bucket`` (and
``in_rollout``, ``hashed_bytes``, a :func:`unit_hasher` closure) raises
:class:`UnitEncodingError`; ``CanaryProvider`` answers the caller's default with error code
``INVALID_CONTEXT`` (reason ``ERROR``) — the old path — and never crashes. Such strings come from
``json.loads('"\\ud800"')`` or from undecodable bytes read through ``surrogateescape``
(``sys.argv``, ``os.environ``). Units are encoded with strict UTF-8 here and murmur3 only ever
sees ``bytes``: mmh3 5.3.1 crashes the interpreter (SIGSEGV) when handed a ``str`` holding a
lone surrogate.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Final, Literal, TypeAlias

import mmh3

from openfeature_canary.errors import UnitEncodingError

__all__ = [
    "SCHEMES",
    "Scheme",
    "UnitEncodingError",
    "UnitHasher",
    "bucket",
    "hashed_bytes",
    "in_rollout",
    "percent_to_basis_points",
    "unit_hasher",
]

Scheme = Literal["flagd", "flagd-cbor"]
SCHEMES: Final = ("flagd", "flagd-cbor")
#: A flag's bucketing function, from :func:`unit_hasher`: ``unit -> bucket in [0, 10000)``.
UnitHasher: TypeAlias = Callable[[object], int]

_TOTAL: Final = 10000
_CBOR_ARRAY_OF_2: Final = b"\x82"
#: CBOR headers of the text strings of 0 to 255 UTF-8 bytes (inline below 24, else 0x78 + 1 byte).
_SHORT_HEADERS: Final = tuple(
    bytes((0x60 | n,)) if n < 24 else bytes((0x78, n)) for n in range(256)
)


def _text_header(n: int) -> bytes:
    """The canonical CBOR header of a text string of ``n`` UTF-8 bytes (RFC 8949 §4.2.1)."""
    if n < 0x100:
        return _SHORT_HEADERS[n]
    if n < 0x10000:
        return b"\x79" + n.to_bytes(2, "big")
    if n < 0x100000000:
        return b"\x7a" + n.to_bytes(4, "big")
    return b"\x7b" + n.to_bytes(8, "big")


def _bad_code_point(exc: UnicodeEncodeError) -> str:
    return f"lone surrogate {exc.object[exc.start]!a} at index {exc.start}"


def _encode_flag_key(flag_key: str) -> bytes:
    try:
        return flag_key.encode()
    except UnicodeEncodeError as exc:
        raise ValueError(
            f"flag key {flag_key!r} is not valid UTF-8 text ({_bad_code_point(exc)})"
        ) from exc


def _unit_error(flag_key: str, exc: UnicodeEncodeError) -> UnitEncodingError:
    return UnitEncodingError(
        f"flag {flag_key!r}: the bucketing unit is not valid UTF-8 text "
        f"({_bad_code_point(exc)}), so it is not bucketed"
    )


def _empty_unit() -> ValueError:
    return ValueError("bucketing unit is empty: an empty unit counts as missing")


def _encode_unit(flag_key: str, unit: object) -> bytes:
    text = unit if isinstance(unit, str) else str(unit)
    try:
        data = text.encode()
    except UnicodeEncodeError as exc:
        raise _unit_error(flag_key, exc) from exc
    if not data:
        raise _empty_unit()
    return data


def _unknown_scheme(scheme: str) -> ValueError:
    return ValueError(f"unknown bucketing scheme {scheme!r}: expected one of {SCHEMES}")


def hashed_bytes(flag_key: str, unit: Any, scheme: Scheme | str = "flagd") -> bytes:
    """The bytes that :func:`bucket` hashes with murmur3.

    ``"flagd"``: the UTF-8 of ``flag_key + unit``. ``"flagd-cbor"``: the canonical CBOR of
    ``[flag_key, unit]``, equal to ``cbor2.dumps([flag_key, unit], canonical=True)``.
    Units that are not strings (int, UUID) are converted with ``str()``.

    Raises :class:`UnitEncodingError` for a unit that is not valid Unicode text, and
    ``ValueError`` for an empty unit, a flag key that is not valid Unicode text or an unknown
    scheme.
    """
    data = _encode_unit(flag_key, unit)
    key = _encode_flag_key(flag_key)
    if scheme == "flagd":
        return key + data
    if scheme == "flagd-cbor":
        return b"".join(
            (_CBOR_ARRAY_OF_2, _text_header(len(key)), key, _text_header(len(data)), data)
        )
    raise _unknown_scheme(scheme)


def bucket(flag_key: str, unit: Any, scheme: Scheme | str = "flagd") -> int:
    """Return the unit's bucket for this flag, in ``[0, 10000)``.

    ``scheme="flagd"`` hashes ``flag_key + unit`` (flagd / flagd-core 1.x);
    ``scheme="flagd-cbor"`` hashes the canonical CBOR of ``[flag_key, unit]`` (flagd-core 2.x):
    ``(mmh3.hash(hashed_bytes(...), 0, signed=False) * 10000) >> 32``.
    Units that are not strings (int, UUID) are converted with ``str()``.

    Raises :class:`UnitEncodingError` (a ``ValueError``) for a unit that is not valid Unicode
    text (a lone surrogate), and ``ValueError`` for an empty unit, a flag key that is not valid
    Unicode text or an unknown scheme.
    """
    h: int = mmh3.hash(hashed_bytes(flag_key, unit, scheme), 0, False)
    return (h * _TOTAL) >> 32


def unit_hasher(flag_key: str, scheme: Scheme | str = "flagd") -> UnitHasher:
    """Return ``unit -> bucket(flag_key, unit, scheme)`` with the flag-key part precomputed.

    For the evaluation path: build it once per flag (and scheme), then call it per evaluation.
    A call does one ``str.encode`` (strict UTF-8), one concatenation with the precomputed prefix
    (``"flagd"``: the flag key's UTF-8; ``"flagd-cbor"``: ``0x82``, the flag key as a CBOR text
    string and the unit's text-string header, precomputed for every unit length below 256
    bytes) and one murmur3 call. It answers and raises exactly as :func:`bucket` does.

    Raises ``ValueError`` now for an unknown scheme or a flag key that is not valid Unicode
    text; the closure raises :class:`UnitEncodingError` for a unit that is not valid Unicode
    text and ``ValueError`` for an empty unit.
    """
    key = _encode_flag_key(flag_key)
    hash32 = mmh3.hash
    total = _TOTAL

    if scheme == "flagd":
        # _encode_unit inlined in both closures: they run on every evaluation.
        def flagd_bucket(unit: object) -> int:
            text = unit if isinstance(unit, str) else str(unit)
            try:
                data = text.encode()
            except UnicodeEncodeError as exc:
                raise _unit_error(flag_key, exc) from exc
            if not data:
                raise _empty_unit()
            h: int = hash32(key + data, 0, False)
            return (h * total) >> 32

        return flagd_bucket

    if scheme == "flagd-cbor":
        head = _CBOR_ARRAY_OF_2 + _text_header(len(key)) + key
        prefixes = tuple(head + header for header in _SHORT_HEADERS)

        def cbor_bucket(unit: object) -> int:
            text = unit if isinstance(unit, str) else str(unit)
            try:
                data = text.encode()
            except UnicodeEncodeError as exc:
                raise _unit_error(flag_key, exc) from exc
            n = len(data)
            if n < 256:
                if not n:
                    raise _empty_unit()
                h: int = hash32(prefixes[n] + data, 0, False)
            else:
                h = hash32(head + _text_header(n) + data, 0, False)
            return (h * total) >> 32

        return cbor_bucket

    raise _unknown_scheme(scheme)


def percent_to_basis_points(percent: float) -> int:
    """``round(percent * 100)``: 5 % is 500 basis points, 0.25 % is 25."""
    if not 0 <= percent <= 100:
        raise ValueError(f"percent must be within [0, 100], got {percent}")
    return round(percent * 100)


def in_rollout(flag_key: str, unit: Any, percent: float, scheme: Scheme | str = "flagd") -> bool:
    """True when the unit is in the ``percent`` cohort of the flag.

    Equal to flagd's ``fractional`` with weights ``[["on", p_bp], ["off", 10000 - p_bp]]``
    returning ``"on"``. Raises as :func:`bucket` does.
    """
    return bucket(flag_key, unit, scheme) < percent_to_basis_points(percent)
