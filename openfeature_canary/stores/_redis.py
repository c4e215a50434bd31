"""The ``redis://`` state store: a fleet's rollout states in one Redis, changes pushed by pub/sub.

``redis://[[user]:password@]host[:port][/db][?prefix=NAME&timeout=SECONDS]`` (``rediss://`` for
TLS). Under the prefix: the hash ``<prefix>:states`` (flag key → the state's JSON, as the file
store keeps it), the counter ``<prefix>:version`` and the channel ``<prefix>:changes``. Writes
are one atomic Lua script (compare-and-set, bump, publish); a listening thread per process makes
:meth:`RedisStateStore.change_token` free while subscribed, a ``GET`` of the counter otherwise.
Every call has a timeout; every redis-py error is a :class:`StateStoreError` naming the URL
(password scrubbed). The whole story: docs/stores.md.
"""

from __future__ import annotations

import json
import logging
import os
import random
import threading
import time
import weakref
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, Final, cast
from urllib.parse import urlsplit

from openfeature_canary._forksafe import renew_locks_after_fork
from openfeature_canary.errors import StaleStateError, StateStoreError
from openfeature_canary.state import RolloutState
from openfeature_canary.stores._fleet import FleetDelegate
from openfeature_canary.stores._json import parse_state, quoted
from openfeature_canary.stores._redis_fleet import RedisFleet
from openfeature_canary.stores._redis_url import import_redis, parse_redis_url

if TYPE_CHECKING:
    from redis import Redis

__all__ = ["RedisStateStore"]

log = logging.getLogger("openfeature_canary")

#: How often the listening thread pings Redis; silent for longer than this plus the timeout,
#: the subscription counts as down and the token is read with a GET again.
HEARTBEAT_S: Final = 1.0
#: How long the listening thread waits for a message at a time (so that close() is quick).
_WAKE_S: Final = 0.1
_CORRUPT: Final = "CANARY_CORRUPT"

# KEYS: the states hash, the counter. ARGV: the channel, a random start for a new counter, then
# (flag, expected version, new version, state JSON) per change. Every stored version is read
# (and checked) before anything is written: a script that fails half-way is not rolled back.
_SAVE_LUA: Final = f"""
local known = {{}}
for i = 3, #ARGV, 4 do
  local flag = ARGV[i]
  if known[flag] == nil then
    local raw = redis.call('HGET', KEYS[1], flag)
    local version = 0
    if raw then
      local ok, state = pcall(cjson.decode, raw)
      version = ok and type(state) == 'table' and state.version
      if type(version) ~= 'number' or version < 0 or version % 1 ~= 0 then
        return redis.error_reply('{_CORRUPT} ' .. flag)
      end
    end
    known[flag] = version
  end
end
local found, wrote = {{0}}, false
for i = 3, #ARGV, 4 do
  local flag = ARGV[i]
  found[#found + 1] = known[flag]
  if known[flag] == tonumber(ARGV[i + 1]) then
    redis.call('HSET', KEYS[1], flag, ARGV[i + 3])
    known[flag] = tonumber(ARGV[i + 2])
    wrote = true
  end
end
if wrote then
  if redis.call('EXISTS', KEYS[2]) == 0 then redis.call('SET', KEYS[2], ARGV[2]) end
  found[1] = redis.call('INCR', KEYS[2])
  redis.call('PUBLISH', ARGV[1], found[1])
end
return found
"""


class RedisStateStore(FleetDelegate):
    """Rollout states in Redis, shared by every process and replica of a fleet.

    ``open_store("redis://10.0.0.5:6379/0?prefix=checkout")`` gives one; see the module
    docstring for the URL, the key layout and the notification. Needs the ``[redis]`` extra
    (``pip install 'openfeature-canary[redis]'``). Building it connects to nothing: the first
    read or write does. Safe to share between threads; after ``os.fork()`` the child opens its
    own connections and listening thread the first time it uses the store. :meth:`close`
    releases both (the store opens them again if it is used after). Also a
    :class:`~openfeature_canary.stores.FleetStore`: ``stores/_redis_fleet.py``.
    """

    def __init__(self, url: str) -> None:
        self._options = parse_redis_url(url)
        self.url = self._options.url
        self.prefix = self._options.prefix
        self._states_key = f"{self.prefix}:states"
        self._version_key = f"{self.prefix}:version"
        self._channel = f"{self.prefix}:changes"
        self._redis = import_redis(self.url)
        self._lock = threading.Lock()
        renew_locks_after_fork(self, "_lock")
        self._pid = os.getpid()
        self._client: Redis | None = None
        self._script: Any = None
        self._watcher: _Watcher | None = None
        #: What a parent process left behind at a fork: never touched (a parent's thread may
        #: have held their locks), only kept from being collected (which would close them).
        self._orphans: list[object] = []
        self._parsed: dict[str, tuple[bytes, RolloutState]] = {}
        self._fleet = RedisFleet(self._call, self.url, self.prefix)

    # ------------------------------------------------------------------ the protocol

    def load(self, flag_key: str) -> RolloutState | None:
        """See :class:`~openfeature_canary.stores.StateStore`."""
        raw = self._call("cannot read", lambda c: c.hget(self._states_key, flag_key))
        return None if raw is None else self._parse(flag_key, raw)

    def load_all(self) -> dict[str, RolloutState]:
        """See :class:`~openfeature_canary.stores.StateStore` (one ``HGETALL``)."""
        found = self._call("cannot read", lambda c: c.hgetall(self._states_key))
        states: dict[str, RolloutState] = {}
        for field, raw in found.items():
            key = field.decode("utf-8", "surrogateescape")  # not UTF-8: named by _parse
            states[key] = self._parse(key, raw)
        self._parsed = {k: v for k, v in self._parsed.items() if k in states}
        return states

    def save(self, state: RolloutState, expected_version: int) -> None:
        """See :class:`~openfeature_canary.stores.StateStore`."""
        found = self._write([(state, expected_version)])
        if found[0] != expected_version:
            raise StaleStateError(
                f"{self.url}: {state.flag_key}: state changed underneath (expected version "
                f"{expected_version}, found {found[0]}); re-read and retry"
            )

    def save_many(self, changes: Sequence[tuple[RolloutState, int]]) -> tuple[bool, ...]:
        """See :class:`~openfeature_canary.stores.StateStore`: one script, one round trip."""
        if not changes:
            return ()
        found = self._write(changes)
        return tuple(f == expected for f, (_, expected) in zip(found, changes, strict=True))

    def change_token(self) -> object:
        """See :class:`~openfeature_canary.stores.StateStore`: the counter's value as the
        listening thread last heard it (no network call), or, while it hears nothing, read
        with one ``GET``."""
        with self._lock:
            self._ensure_process()
            if self._watcher is None:
                self._watcher = _Watcher(self)
                self._watcher.start()
            watcher = self._watcher
        heard, token = watcher.current()
        if heard:
            return token
        return _token(self._call("cannot read", lambda c: c.get(self._version_key)))

    def close(self) -> None:
        """Stop the listening thread and close the connections."""
        with self._lock:
            self._ensure_process()  # a child never closes its parent's
            watcher, self._watcher = self._watcher, None
            client, self._client = self._client, None
        if watcher is not None:
            watcher.stop()
        if client is not None:
            client.close()

    # ------------------------------------------------------------------ internals

    def _ensure_process(self) -> None:
        """In a forked child, forget the parent's connections and thread (call under lock)."""
        if self._pid == os.getpid():
            return
        self._orphans += [self._client, self._watcher]
        self._client = self._watcher = None
        self._pid = os.getpid()

    def _connection(self) -> Redis:
        with self._lock:
            self._ensure_process()
            if self._client is None:
                retry = self._redis.retry.Retry(self._redis.backoff.NoBackoff(), 0)
                self._client = self._redis.Redis.from_url(
                    self._options.connect_url,
                    socket_timeout=self._options.timeout,
                    socket_connect_timeout=self._options.timeout,
                    retry=retry,
                )
                self._script = self._client.register_script(_SAVE_LUA)
            return self._client

    def _call(self, what: str, command: Any) -> Any:
        """``command(client)``, its redis-py errors as :class:`StateStoreError`."""
        client = self._connection()
        try:
            return command(client)
        except self._redis.RedisError as exc:
            raise self._error(what, exc) from exc

    def _error(self, what: str, exc: Exception) -> StateStoreError:
        if isinstance(exc, StateStoreError):
            text = str(exc).removeprefix(f"{self.url}: ")
            return StateStoreError(f"{self.url}: {what}: {text}")
        text = str(exc)
        if text.startswith(_CORRUPT):
            flag = text[len(_CORRUPT) :].strip()
            return StateStoreError(
                f"{self.url}: corrupt state in {self._states_key} field {quoted(flag)}: not a "
                "state object with an integer version; not overwritten"
            )
        if text.startswith("WRONGTYPE"):
            return StateStoreError(
                f"{self.url}: {what}: key {self._states_key} or {self._version_key} holds "
                "another type of value (is the prefix used by something else?)"
            )
        password = urlsplit(self._options.connect_url).password
        if password:
            text = text.replace(password, "***")
        return StateStoreError(f"{self.url}: {what}: {type(exc).__name__}: {text}")

    def _write(self, changes: Sequence[tuple[RolloutState, int]]) -> list[int]:
        """Run the save script; the version found for each change (written when expected)."""
        args: list[object] = [self._channel, random.randrange(1, 10**12)]
        for state, expected in changes:
            payload = json.dumps(state.to_dict(), separators=(",", ":"), sort_keys=True)
            args += [state.flag_key, expected, state.version, payload]
        result = self._call(
            "cannot write",
            lambda c: self._script(keys=[self._states_key, self._version_key], args=args, client=c),
        )
        counter, *found = (int(x) for x in result)
        if counter:
            watcher = self._watcher
            if watcher is not None:
                watcher.heard(counter)  # this process's own write: no need to wait for the echo
        return found

    def _parse(self, flag_key: str, raw: bytes) -> RolloutState:
        cached = self._parsed.get(flag_key)
        if cached is not None and cached[0] == raw:
            return cached[1]
        where = f"{self._states_key} field {quoted(flag_key)}"
        state = parse_state(f"{self.url}: corrupt state in {where}", flag_key, raw)
        self._parsed[flag_key] = (raw, state)
        return state


class _Watcher:
    """The listening thread of one store in one process: the counter's value as published.

    It holds its store weakly and ends soon after the store is gone (or closed)."""

    def __init__(self, store: RedisStateStore) -> None:
        self._store = weakref.ref(store)
        self._wait_s = HEARTBEAT_S + store._options.timeout
        self._stop = threading.Event()
        self._token: object = None
        self._heard_until = 0.0  # time.monotonic(): the subscription counts as up until then
        self._lost = False
        self._thread = threading.Thread(
            target=self._run, name="openfeature-canary-redis-watcher", daemon=True
        )

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._heard_until = 0.0
        if self._thread is not threading.current_thread():
            self._thread.join(self._wait_s + 1.0)

    def current(self) -> tuple[bool, object]:
        """(whether the subscription is up, the last value it heard)."""
        return time.monotonic() < self._heard_until, self._token

    def heard(self, counter: int) -> None:
        self._token = counter

    def _run(self) -> None:
        backoff = _WAKE_S
        while not self._stop.is_set() and self._store() is not None:
            try:
                self._listen()
            except Exception as exc:  # the thread outlives any failure; the GET fallback covers
                self._heard_until = 0.0
                store = self._store()
                if store is not None and not self._lost:
                    log.warning(
                        "openfeature-canary: %s; reading the version counter until they are back",
                        store._error("change notifications lost", exc),
                    )
                backoff = _WAKE_S if not self._lost else min(backoff * 2, HEARTBEAT_S)
                self._lost, store = True, None
                self._stop.wait(backoff)

    def _listen(self) -> None:
        store = self._store()
        if store is None:
            return
        client, channel, url = store._connection(), store._channel, store.url
        version_key = store._version_key
        with cast(Any, client).pubsub() as pubsub:
            pubsub.subscribe(channel)
            if pubsub.get_message(timeout=store._options.timeout) is None:
                raise StateStoreError("no reply to SUBSCRIBE")
            # Subscribed first, then read: a write in between is in the value or in a message.
            self._token = _token(store._call("cannot read", lambda c: c.get(version_key)))
            self._heard_until = time.monotonic() + self._wait_s
            del store  # held weakly: a store dropped without close() ends its thread too
            if self._lost:
                log.warning("openfeature-canary: %s: change notifications are back", url)
            self._lost = False
            pinged = time.monotonic()
            while not self._stop.is_set() and self._store() is not None:
                message = pubsub.get_message(timeout=_WAKE_S)
                now = time.monotonic()
                if message is not None:
                    if message["type"] == "message":
                        self._token = _token(message["data"])
                    self._heard_until = now + self._wait_s
                if now - pinged >= HEARTBEAT_S:
                    pubsub.ping()
                    pinged = now


def _token(value: object) -> object:
    """The counter as a token: an int, or None before the first write."""
    if isinstance(value, bytes | str):
        try:
            return int(value)
        except ValueError:  # not our counter: still a value that changes with it
            return value
    return value
