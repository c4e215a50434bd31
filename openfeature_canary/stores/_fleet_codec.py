"""How a fleet's records and its decider lease are checked, written and read back.

Shared by every store's fleet part (memory, file, ``redis://``): the process id rule, a
record's stored text (``{"heartbeat": …, "record": {…}}``), the lease's (``{"holder": …,
"expires": …}``) and :class:`Lease`, the value a store answers with. No I/O here.
"""

from __future__ import annotations

import json
import logging
import math
import re
import threading
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Final

from openfeature_canary._forksafe import hold_locks_across_fork

__all__ = [
    "MAX_RECORD_BYTES",
    "PROCESS_ID_RE",
    "Lease",
    "UnreadableRecords",
    "check_lease_args",
    "check_process_id",
    "decode_record",
    "encode_lease",
    "encode_record",
    "parse_lease",
    "taken_by_other",
]

log = logging.getLogger("openfeature_canary")

#: The largest record (its JSON text with the heartbeat, in bytes) a store accepts.
MAX_RECORD_BYTES: Final = 1024 * 1024
#: What a process id (and so a lease holder) may be: safe in a file name and a Redis field.
PROCESS_ID_RE: Final = re.compile(r"[A-Za-z0-9_.:-]{1,128}")


@dataclass(frozen=True)
class Lease:
    """The decider lease as stored: who took it and when it ends (the rollout clock's
    seconds, as the taker's ``now + ttl``). Expired or not: compare :attr:`expires` with now.

    >>> Lease("host:42:ab12cd34", 110.0).left_s(100.0)
    10.0
    """

    holder: str
    expires: float

    def left_s(self, now: float) -> float:
        """Seconds of the lease left at ``now`` (negative: expired that long ago)."""
        return self.expires - now

    def held_at(self, now: float) -> bool:
        """Whether the lease is still in force at ``now``."""
        return self.expires > now


def check_process_id(process_id: object, what: str = "process id") -> str:
    """``process_id`` when it is 1-128 of ``A-Z a-z 0-9 _ . : -``; ValueError naming it else."""
    if not isinstance(process_id, str) or not PROCESS_ID_RE.fullmatch(process_id):
        raise ValueError(
            f"{what} {process_id!r:.80}: must be 1-128 characters of A-Z a-z 0-9 _ . : -"
        )
    return process_id


def _check_time(value: object, what: str) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise ValueError(f"{what} must be a finite number of seconds, got {value!r}")
    return float(value)


def check_lease_args(holder: str, ttl_s: float, now: float) -> tuple[str, float, float]:
    """The arguments of ``FleetStore.try_lease``, checked (ValueError naming the bad one)."""
    check_process_id(holder, "lease holder")
    ttl = _check_time(ttl_s, "lease ttl_s")
    if ttl <= 0:
        raise ValueError(f"lease ttl_s must be positive, got {ttl_s!r}")
    return holder, ttl, _check_time(now, "lease now")


def encode_lease(holder: str, expires: float) -> str:
    """The stored text of a lease. Built by Python's ``json`` (shortest repr round-trips), so
    ``expires`` reads back exactly as the taker computed it."""
    return json.dumps({"holder": holder, "expires": expires}, separators=(",", ":"))


def parse_lease(data: object) -> Lease | None:
    """The :class:`Lease` of a decoded stored lease object, or None when it is not one (a
    damaged or foreign value counts as no lease: the next taker replaces it)."""
    if not isinstance(data, dict):
        return None
    holder, expires = data.get("holder"), data.get("expires")
    if isinstance(expires, bool) or not isinstance(expires, int | float):
        return None
    if not isinstance(holder, str) or not math.isfinite(expires):
        return None
    return Lease(holder, float(expires))


def taken_by_other(lease: Lease | None, holder: str, now: float) -> bool:
    """Whether ``lease`` is another holder's, in force at ``now`` (``holder`` cannot take it)."""
    return lease is not None and lease.holder != holder and lease.held_at(now)


def encode_record(process_id: str, record: Mapping[str, Any], now: float) -> str:
    """The stored text of a record: ``{"heartbeat": now, "record": record}`` as JSON.

    ValueError naming the process when the id, ``now`` or the record is not acceptable (not
    JSON-safe, NaN, over :data:`MAX_RECORD_BYTES`)."""
    check_process_id(process_id)
    heartbeat = _check_time(now, f"process {process_id}: heartbeat")
    if not isinstance(record, Mapping):
        raise ValueError(f"process {process_id}: record must be a mapping, got {type(record)}")
    try:
        text = json.dumps(
            {"heartbeat": heartbeat, "record": dict(record)},
            separators=(",", ":"),
            allow_nan=False,
        )
    except (TypeError, ValueError, RecursionError) as exc:
        raise ValueError(f"process {process_id}: record is not JSON-safe: {exc}") from None
    size = len(text.encode("utf-8"))
    if size > MAX_RECORD_BYTES:
        raise ValueError(
            f"process {process_id}: record is {size} bytes, more than {MAX_RECORD_BYTES}"
        )
    return text


def decode_record(raw: bytes | str) -> tuple[float, dict[str, Any]]:
    """(heartbeat, record) of a stored text; ValueError saying what is wrong with it."""
    try:
        data = json.loads(raw)
    except RecursionError:
        raise ValueError("nested too deeply") from None
    except ValueError as exc:  # not UTF-8, not JSON (a torn or foreign value)
        raise ValueError(f"not JSON: {exc}") from None
    if not isinstance(data, dict):
        raise ValueError(f"expected a JSON object, got {type(data).__name__}")
    heartbeat, record = data.get("heartbeat"), data.get("record")
    if isinstance(heartbeat, bool) or not isinstance(heartbeat, int | float):
        raise ValueError(f"heartbeat: expected a number, got {heartbeat!r:.40}")
    if not math.isfinite(heartbeat):
        raise ValueError(f"heartbeat: expected a finite number, got {heartbeat!r}")
    if not isinstance(record, dict):
        raise ValueError(f"record: expected a JSON object, got {type(record).__name__}")
    return float(heartbeat), record


class UnreadableRecords:
    """Which process ids' records could not be read: each is warned about once, until it
    reads fine again or is forgotten (the decider reads every tick; one broken file must not
    fill the log). Safe to share between threads."""

    def __init__(self, url: str) -> None:
        self._url = url
        self._warned: set[str] = set()
        self._lock = threading.Lock()
        hold_locks_across_fork(self, "_lock")

    def decode(
        self, process_id: str, where: str, raw: bytes | str
    ) -> tuple[float, dict[str, Any]] | None:
        """The decoded record, or None (warned once) when it cannot be read."""
        try:
            found = decode_record(raw)
        except ValueError as exc:
            self.left_out(process_id, where, str(exc))
            return None
        self.forget(process_id)
        return found

    def left_out(self, process_id: str, where: str, reason: str) -> None:
        """Warn (once) that this id's record in ``where`` is left out, and why."""
        with self._lock:
            first = process_id not in self._warned
            self._warned.add(process_id)
        if first:
            log.warning(
                "openfeature-canary: %s: fleet record of process %s in %s left out: %s",
                self._url,
                process_id,
                where,
                reason,
            )

    def forget(self, process_id: str) -> None:
        """Warn again if this id's record is unreadable later."""
        with self._lock:
            self._warned.discard(process_id)
