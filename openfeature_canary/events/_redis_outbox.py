"""The outbox of a ``redis://`` fleet: telemetry events wait in the store's Redis.

Every process of every replica queues into, and delivers from, one outbox, so an event queued
by a process that dies before delivering it goes out with another's next round. Under the
store's prefix:

- ``<prefix>:outbox`` (hash): event id → the event's JSON as queued (``OutboxEvent.to_dict``);
- ``<prefix>:outbox:order`` (sorted set): event id → its queueing sequence number;
- ``<prefix>:outbox:attempts`` (hash): event id → ``"<failed attempts> <JSON>"``, the JSON
  holding ``last_error`` and ``next_attempt_at`` of the last failure;
- ``<prefix>:outbox:delivered`` (sorted set): the last :data:`REMEMBERED_DELIVERED` delivered
  ids, scored by sequence number (the oldest are dropped);
- ``<prefix>:outbox:seq`` (integer): the sequence counter.

Each operation is one Lua script (Redis runs it atomically): two processes queueing one id get
one ``True`` between them, and an event leaves the outbox only with its id remembered as
delivered. JSON is built and parsed here, never by Redis' cjson (which keeps 14 digits).
Delivery is at least once: two senders may post the same pending event, and the ingest drops a
repeated ``event_id``. The whole story: docs/stores.md.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Iterable
from dataclasses import replace
from typing import TYPE_CHECKING, Any, Final

from openfeature_canary.errors import StateStoreError
from openfeature_canary.events._outbox import REMEMBERED_DELIVERED, OutboxError, OutboxEvent
from openfeature_canary.stores import RedisStateStore

if TYPE_CHECKING:
    from redis import Redis

__all__ = ["RedisOutbox"]

log = logging.getLogger("openfeature_canary.telemetry")

# How many ids one script call takes (each call is atomic by itself).
_CHUNK: Final = 500

# KEYS: events, order, delivered, seq. ARGV: id, the event's JSON.
_ENQUEUE_LUA: Final = """
if redis.call('HEXISTS', KEYS[1], ARGV[1]) == 1 or redis.call('ZSCORE', KEYS[3], ARGV[1]) then
  return 0
end
redis.call('HSET', KEYS[1], ARGV[1], ARGV[2])
redis.call('ZADD', KEYS[2], redis.call('INCR', KEYS[4]), ARGV[1])
return 1
"""

# KEYS: events, order, attempts. Returns id, event JSON, attempts ('' if none) per event.
_PENDING_LUA: Final = """
local out = {}
for _, id in ipairs(redis.call('ZRANGE', KEYS[2], 0, -1)) do
  local event = redis.call('HGET', KEYS[1], id)
  if event then
    out[#out + 1] = id
    out[#out + 1] = event
    out[#out + 1] = redis.call('HGET', KEYS[3], id) or ''
  end
end
return out
"""

# KEYS: events, order, attempts, delivered, seq. ARGV: how many ids to remember, then ids.
_DELIVERED_LUA: Final = """
for i = 2, #ARGV do
  local id = ARGV[i]
  redis.call('HDEL', KEYS[1], id)
  redis.call('ZREM', KEYS[2], id)
  redis.call('HDEL', KEYS[3], id)
  redis.call('ZADD', KEYS[4], redis.call('INCR', KEYS[5]), id)
end
local extra = redis.call('ZCARD', KEYS[4]) - tonumber(ARGV[1])
if extra > 0 then redis.call('ZREMRANGEBYRANK', KEYS[4], 0, extra - 1) end
return 0
"""

# KEYS: events, attempts. ARGV: the failure's JSON, then ids. Only pending ids are counted.
_ATTEMPT_LUA: Final = """
for i = 2, #ARGV do
  local id = ARGV[i]
  if redis.call('HEXISTS', KEYS[1], id) == 1 then
    local old = redis.call('HGET', KEYS[2], id)
    local n = old and tonumber(string.match(old, '^(%d+) ')) or 0
    redis.call('HSET', KEYS[2], id, string.format('%d', n + 1) .. ' ' .. ARGV[1])
  end
end
return 0
"""


class RedisOutbox:
    """A durable queue of :class:`OutboxEvent` in the Redis of a ``redis://`` store, shared by
    every process of a fleet; an :class:`~openfeature_canary.events.EventQueue` with the file
    :class:`~openfeature_canary.events.Outbox`'s behaviour::

        outbox = RedisOutbox(open_store("redis://10.0.0.5:6379/0?prefix=checkout"))
        outbox.enqueue(OutboxEvent.create("canary_rollback", {"from_pct": 25}, now=time.time()))
        [e.event_name for e in outbox.pending()]   # ['canary_rollback'], in every process

    It uses the store's connection (one per process, reopened after ``os.fork()``), timeout and
    prefix, and holds no lock of its own. Durable as the Redis is: with ``appendonly yes`` and
    ``appendfsync always`` an event survives a crash of Redis; without persistence a restart of
    Redis loses the outbox with the states. Every method raises :class:`OutboxError` naming the
    URL (password scrubbed) when Redis cannot be read or written.
    """

    def __init__(self, store: RedisStateStore) -> None:
        self.url = store.url
        prefix = store.prefix
        self._events_key = f"{prefix}:outbox"
        self._order_key = f"{prefix}:outbox:order"
        self._attempts_key = f"{prefix}:outbox:attempts"
        self._delivered_key = f"{prefix}:outbox:delivered"
        self._seq_key = f"{prefix}:outbox:seq"
        # The store's call: its connection, its fork handling and its password scrubbing.
        self._store_call: Callable[[str, Callable[[Redis], Any]], Any] = store._call
        self._scripts: dict[str, Any] = {}
        self._warned: set[str] = set()

    def __repr__(self) -> str:
        return f"RedisOutbox({self.url!r}, key {self._events_key!r})"

    def enqueue(self, event: OutboxEvent) -> bool:
        """Queue ``event``; return once Redis has it. Idempotent by id across the fleet: an
        event whose id is pending, or among the last :data:`REMEMBERED_DELIVERED` delivered, is
        not queued again (returns ``False``)."""
        text = json.dumps(event.to_dict(), allow_nan=False, sort_keys=True, separators=(",", ":"))
        keys = [self._events_key, self._order_key, self._delivered_key, self._seq_key]
        return bool(self._run(_ENQUEUE_LUA, "cannot queue an event", keys, [event.id, text]))

    def pending(self) -> list[OutboxEvent]:
        """The undelivered events, oldest first (due or not: see ``next_attempt_at``)."""
        keys = [self._events_key, self._order_key, self._attempts_key]
        flat = self._run(_PENDING_LUA, "cannot read the outbox", keys, [])
        events: list[OutboxEvent] = []
        for i in range(0, len(flat), 3):
            event = self._parse(flat[i], flat[i + 1], flat[i + 2])
            if event is not None:
                events.append(event)
        return events

    def mark_delivered(self, ids: Iterable[str]) -> None:
        """Forget these events (the ingest accepted them) and remember their ids (the newest
        :data:`REMEMBERED_DELIVERED`), so that no process queues them again."""
        keys = [
            self._events_key,
            self._order_key,
            self._attempts_key,
            self._delivered_key,
            self._seq_key,
        ]
        id_list = list(dict.fromkeys(ids))
        for start in range(0, len(id_list), _CHUNK):
            chunk = id_list[start : start + _CHUNK]
            self._run(_DELIVERED_LUA, "cannot mark delivered", keys, [REMEMBERED_DELIVERED, *chunk])

    def record_attempt(self, event_id: str, error: str, next_attempt_at: float) -> None:
        """Record a failed delivery of one event: one more attempt, why, and when to retry."""
        self.record_attempts([event_id], error, next_attempt_at)

    def record_attempts(self, ids: Iterable[str], error: str, next_attempt_at: float) -> None:
        """:meth:`record_attempt` for a whole failed batch (ids no longer pending are
        skipped)."""
        failure = json.dumps(
            {"last_error": error, "next_attempt_at": next_attempt_at},
            allow_nan=False,
            sort_keys=True,
            separators=(",", ":"),
        )
        keys = [self._events_key, self._attempts_key]
        id_list = list(dict.fromkeys(ids))
        for start in range(0, len(id_list), _CHUNK):
            chunk = id_list[start : start + _CHUNK]
            self._run(_ATTEMPT_LUA, "cannot record an attempt", keys, [failure, *chunk])

    # ------------------------------------------------------------------ internals

    def _run(self, source: str, what: str, keys: list[str], args: list[Any]) -> Any:
        def run(client: Redis) -> Any:
            script = self._scripts.get(source)
            if script is None:  # EVALSHA, loaded again by redis-py after a restart of Redis
                script = self._scripts[source] = client.register_script(source)
            try:
                return script(keys=keys, args=args, client=client)
            except Exception as exc:
                if str(exc).startswith("WRONGTYPE"):
                    raise OutboxError(
                        f"{self.url}: outbox: {what}: a key under {self._events_key!r} holds "
                        "another type of value (is the prefix used by something else?)"
                    ) from exc
                raise

        try:
            return self._store_call(f"outbox: {what}", run)
        except StateStoreError as exc:
            raise OutboxError(str(exc)) from exc

    def _parse(self, raw_id: bytes, raw_event: bytes, raw_attempts: bytes) -> OutboxEvent | None:
        """One pending event with its attempts; ``None`` (warned once) when unreadable."""
        event_id = raw_id.decode("utf-8", "replace")
        try:
            event = OutboxEvent.from_dict(json.loads(raw_event))
            if raw_attempts:
                count, _, failure_text = raw_attempts.partition(b" ")
                failure = json.loads(failure_text)
                error = failure.get("last_error")
                event = replace(
                    event,
                    attempts=event.attempts + int(count),
                    last_error=None if error is None else str(error),
                    next_attempt_at=float(failure["next_attempt_at"]),
                )
        except (ValueError, KeyError, TypeError, AttributeError) as exc:
            if event_id not in self._warned:
                self._warned.add(event_id)
                log.warning(
                    "outbox %s: skipping unreadable event %s in %s: %s",
                    self.url,
                    json.dumps(event_id)[:60],
                    self._events_key,
                    f"{type(exc).__name__}: {exc}"[:200],
                )
            return None
        return event
