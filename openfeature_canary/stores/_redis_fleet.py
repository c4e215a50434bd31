"""The fleet records and the decider lease of the ``redis://`` store.

Under the store's prefix: the hash ``<prefix>:processes`` (process id → ``{"heartbeat", "record"}``
as JSON) and the key ``<prefix>:lease`` (``{"holder", "expires"}`` as JSON). The lease is read,
compared and written by one Lua script, so two processes (or hosts) taking it at the same
moment get one ``True`` between them. The key also has a Redis expiry of
``max(10 * ttl, 60 s)``, only so that a lease nobody renews does not stay forever; the
``expires`` inside, in the rollout clock's seconds, is what decides.
"""

from __future__ import annotations

import json
import weakref
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any, Final

from openfeature_canary.errors import StateStoreError
from openfeature_canary.stores._fleet_codec import (
    Lease,
    UnreadableRecords,
    check_lease_args,
    check_process_id,
    encode_lease,
    encode_record,
    parse_lease,
)

if TYPE_CHECKING:
    from redis import Redis

__all__ = ["RedisFleet"]

#: The shortest Redis expiry of the lease key (milliseconds): garbage collection only.
_MIN_GC_MS: Final = 60_000

# KEYS: the lease. ARGV: holder, now, the new lease's JSON, its Redis expiry (ms).
# A value that is not a lease (damaged, foreign) counts as free: the taker replaces it.
_TRY_LEASE_LUA: Final = """
local raw = redis.call('GET', KEYS[1])
if raw then
  local ok, lease = pcall(cjson.decode, raw)
  if ok and type(lease) == 'table' and type(lease.holder) == 'string'
      and type(lease.expires) == 'number' and lease.holder ~= ARGV[1]
      and lease.expires > tonumber(ARGV[2]) then
    return 0
  end
end
redis.call('SET', KEYS[1], ARGV[3], 'PX', ARGV[4])
return 1
"""

# KEYS: the lease. ARGV: holder.
_RELEASE_LUA: Final = """
local raw = redis.call('GET', KEYS[1])
if raw then
  local ok, lease = pcall(cjson.decode, raw)
  if ok and type(lease) == 'table' and lease.holder == ARGV[1] then
    return redis.call('DEL', KEYS[1])
  end
end
return 0
"""

#: ``call(what, command)``: ``command(client)`` with redis-py errors as StateStoreError.
Call = Callable[[str, Callable[["Redis"], Any]], Any]


class RedisFleet:
    """:class:`~openfeature_canary.stores.FleetStore` on the store's connection (``call``)."""

    def __init__(self, call: Call, url: str, prefix: str) -> None:
        # Weak: a store dropped without close() must be freed at once (its listening thread
        # ends with it), not left in a reference cycle until a garbage collection.
        self._call_ref = weakref.WeakMethod(call)
        self._url = url
        self._processes_key = f"{prefix}:processes"
        self._lease_key = f"{prefix}:lease"
        self._unreadable = UnreadableRecords(url)
        self._scripts: dict[str, Any] = {}

    def publish(self, process_id: str, record: Mapping[str, Any], now: float) -> None:
        """See :class:`~openfeature_canary.stores.FleetStore` (one ``HSET``)."""
        text = encode_record(process_id, record, now)
        self._call("cannot publish", lambda c: c.hset(self._processes_key, process_id, text))

    def records(self) -> dict[str, tuple[float, Mapping[str, Any]]]:
        """See :class:`~openfeature_canary.stores.FleetStore` (one ``HGETALL``)."""
        found = self._call("cannot read", lambda c: c.hgetall(self._processes_key))
        records: dict[str, tuple[float, Mapping[str, Any]]] = {}
        for field, raw in found.items():
            process_id = field.decode("utf-8", "replace")
            where = f"{self._processes_key} field {json.dumps(process_id)[:60]}"
            record = self._unreadable.decode(process_id, where, raw)
            if record is not None:
                records[process_id] = record
        return records

    def forget(self, process_id: str) -> None:
        """See :class:`~openfeature_canary.stores.FleetStore` (one ``HDEL``)."""
        check_process_id(process_id)
        self._call("cannot forget", lambda c: c.hdel(self._processes_key, process_id))
        self._unreadable.forget(process_id)

    def try_lease(self, holder: str, ttl_s: float, now: float) -> bool:
        """See :class:`~openfeature_canary.stores.FleetStore` (one script)."""
        holder, ttl, now = check_lease_args(holder, ttl_s, now)
        # Built here, not by cjson (which keeps 14 digits): ``expires`` must be exactly now + ttl.
        lease = encode_lease(holder, now + ttl)
        gc_ms = max(_MIN_GC_MS, int(10 * ttl * 1000))
        taken = self._run(
            _TRY_LEASE_LUA, "cannot take the lease", [holder, repr(now), lease, gc_ms]
        )
        return bool(taken)

    def release_lease(self, holder: str) -> None:
        """See :class:`~openfeature_canary.stores.FleetStore` (one script)."""
        check_process_id(holder, "lease holder")
        self._run(_RELEASE_LUA, "cannot release the lease", [holder])

    def lease(self) -> Lease | None:
        """See :class:`~openfeature_canary.stores.FleetStore` (one ``GET``)."""
        raw = self._call("cannot read", lambda c: c.get(self._lease_key))
        try:
            return None if raw is None else parse_lease(json.loads(raw))
        except ValueError:  # damaged: free, as the script sees it
            return None

    def lease_holder(self, now: float) -> str | None:
        """See :class:`~openfeature_canary.stores.FleetStore` (one ``GET``)."""
        lease = self.lease()
        return lease.holder if lease is not None and lease.held_at(now) else None

    def _call(self, what: str, command: Callable[[Redis], Any]) -> Any:
        call = self._call_ref()
        if call is None:  # only while its store is being freed
            raise StateStoreError(f"{self._url}: {what}: the store is closed")
        return call(what, command)

    def _run(self, source: str, what: str, args: list[str | int | float]) -> Any:
        def run(client: Redis) -> Any:
            script = self._scripts.get(source)
            if script is None:  # EVALSHA, loaded again by redis-py after a restart of Redis
                script = self._scripts[source] = client.register_script(source)
            return script(keys=[self._lease_key], args=args, client=client)

        return self._call(what, run)
