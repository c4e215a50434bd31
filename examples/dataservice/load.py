"""A bounded load generator for the example service (127.0.0.1 only).

It sends at most ``--requests`` requests and stops after ``--duration`` seconds, whichever
comes first, with ``--concurrency`` requests in flight, then prints how many requests took each
read path (the service's ``X-Read-Path`` header), with their latencies and status codes::

    python -m examples.dataservice.load --url http://127.0.0.1:8700 --requests 2000 \
        --duration 60 --concurrency 8 --endpoint both

Each request gets a fresh ``X-Request-Id`` (the bucketing unit), ``<prefix>-<n>``; ``--seed``
makes the ids and the chosen provider/session ids reproducible. It refuses any host that is not
loopback, and never reads proxy settings from the environment.

Simulated users (``--click-through P``): after a dashboard answered 200, the user opens the
provider's detail (``GET /api/v6/providers/{id}/detail``, the same ``X-Request-Id``) with
probability P, or P times ``--incomplete-factor`` (default 0.5) when the dashboard it got lacks
the provider's figures (:data:`FIGURES`): the choice is made from the response body, so a read
path that serves less gets fewer clicks. The draws are seeded per request (``--seed``).

From Python: :func:`run_load` returns a :class:`LoadResult`. This file imports nothing from
the example, so it can be loaded on its own.
"""

from __future__ import annotations

import argparse
import asyncio
import ipaddress
import math
import random
import sys
import time
import uuid
from collections import Counter
from dataclasses import dataclass, field
from typing import Final, NamedTuple

import httpx

__all__ = ["ENDPOINTS", "FIGURES", "LoadResult", "check_loopback", "main", "run_load"]

#: Endpoint choice -> the endpoints it sends to (``both`` alternates).
ENDPOINTS: Final = {
    "dashboard": ("dashboard",),
    "sessions": ("sessions",),
    "both": ("dashboard", "sessions"),
}
MAX_REQUESTS: Final = 1_000_000
MAX_DURATION_S: Final = 3600.0
MAX_CONCURRENCY: Final = 256
READ_PATH_HEADER: Final = "X-Read-Path"
#: The fields of a dashboard's provider that users open the detail for: without them the
#: dashboard is incomplete, and users click through less.
FIGURES: Final = ("rating", "active_patients")
DEFAULT_INCOMPLETE_FACTOR: Final = 0.5


@dataclass
class LoadResult:
    """What a run did. ``counts[(endpoint, path)]``: requests per read path, where ``path`` is
    the ``X-Read-Path`` header (``canary`` / ``current``) or ``none`` when absent (404 before
    the flag, a transport error)."""

    sent: int = 0
    elapsed_s: float = 0.0
    transport_errors: int = 0
    counts: Counter[tuple[str, str]] = field(default_factory=Counter)
    statuses: Counter[tuple[str, str, int]] = field(default_factory=Counter)
    latencies_ms: dict[tuple[str, str], list[float]] = field(default_factory=dict)
    #: ``views[(path, complete)]``: dashboards answered 200 by ``path``, with all the
    #: :data:`FIGURES` or not. ``clicks[path]``: details opened (200) after them.
    views: Counter[tuple[str, bool]] = field(default_factory=Counter)
    clicks: Counter[str] = field(default_factory=Counter)
    #: ``GET .../detail`` answers by status (a transport error counts as 0).
    detail_statuses: Counter[int] = field(default_factory=Counter)

    def count(self, endpoint: str, path: str) -> int:
        """Requests to ``endpoint`` that took ``path``."""
        return self.counts[(endpoint, path)]

    def canary_share(self, endpoint: str) -> float:
        """Share of ``endpoint``'s answered requests that took the canary path (NaN if none)."""
        canary = self.count(endpoint, "canary")
        answered = canary + self.count(endpoint, "current")
        return canary / answered if answered else math.nan

    def click_through(self, path: str) -> float:
        """Details opened per dashboard view served by ``path`` (NaN without a view)."""
        views = self.views[(path, True)] + self.views[(path, False)]
        return self.clicks[path] / views if views else math.nan

    def report(self) -> str:
        """The table ``main`` prints."""
        rate = self.sent / self.elapsed_s if self.elapsed_s > 0 else 0.0
        lines = [
            f"{self.sent} requests in {self.elapsed_s:.1f} s ({rate:.0f} req/s), "
            f"{self.transport_errors} transport errors",
            f"{'endpoint':<10} {'path':<8} {'count':>6} {'share':>7} {'p50 ms':>8} "
            f"{'p95 ms':>8}  statuses",
        ]
        for endpoint, path in sorted(self.counts):
            total = sum(n for (e, _p), n in self.counts.items() if e == endpoint)
            n = self.counts[(endpoint, path)]
            lat = sorted(self.latencies_ms.get((endpoint, path), []))
            p50 = _nearest_rank(lat, 0.50)
            p95 = _nearest_rank(lat, 0.95)
            codes = " ".join(
                f"{code}:{k}"
                for (e, p, code), k in sorted(self.statuses.items())
                if (e, p) == (endpoint, path)
            )
            lines.append(
                f"{endpoint:<10} {path:<8} {n:>6} {n / total:>7.1%} {p50:>8.1f} {p95:>8.1f}  "
                f"{codes}"
            )
        for path in sorted({p for p, _complete in self.views}):
            views = self.views[(path, True)] + self.views[(path, False)]
            lines.append(
                f"dashboard {path}: {views} views ({self.views[(path, False)]} incomplete), "
                f"{self.clicks[path]} details opened, click-through {self.click_through(path):.1%}"
            )
        return "\n".join(lines)


def _nearest_rank(sorted_values: list[float], q: float) -> float:
    if not sorted_values:
        return math.nan
    return sorted_values[max(0, math.ceil(q * len(sorted_values)) - 1)]


def check_loopback(url: str) -> httpx.URL:
    """``url`` parsed; ``ValueError`` unless it is http(s) on a loopback host."""
    parsed = httpx.URL(url)
    host = parsed.host
    if parsed.scheme not in ("http", "https") or not host:
        raise ValueError(f"{url}: expected http://127.0.0.1:PORT")
    if host != "localhost":
        try:
            loopback = ipaddress.ip_address(host).is_loopback
        except ValueError:
            loopback = False
        if not loopback:
            raise ValueError(f"{url}: the load generator only targets 127.0.0.1 (loopback)")
    return parsed


def run_load(
    url: str,
    *,
    requests: int = 1000,
    duration_s: float = 30.0,
    concurrency: int = 8,
    endpoint: str = "both",
    seed: int | None = None,
    id_prefix: str | None = None,
    providers: int = 500,
    sessions: int = 2000,
    rate: float = 0.0,
    timeout_s: float = 5.0,
    click_through: float = 0.0,
    incomplete_factor: float = DEFAULT_INCOMPLETE_FACTOR,
) -> LoadResult:
    """Send at most ``requests`` requests for at most ``duration_s`` seconds (blocking).

    ``endpoint`` is ``dashboard``, ``sessions`` or ``both`` (alternating); ``rate`` caps the
    requests started per second (0: as fast as ``concurrency`` allows). Request ids are
    ``<id_prefix>-<n>``; the prefix is random unless given (or derived from ``seed``).
    ``click_through`` (0..1) is the chance a user opens the provider's detail after a complete
    dashboard, times ``incomplete_factor`` (0..1) after an incomplete one (module docstring).
    ``ValueError`` for a non-loopback URL or out-of-range bounds.
    """
    base = check_loopback(url)
    if not 1 <= requests <= MAX_REQUESTS:
        raise ValueError(f"requests must be in 1..{MAX_REQUESTS}, got {requests}")
    if not 0 < duration_s <= MAX_DURATION_S:
        raise ValueError(f"duration_s must be in (0, {MAX_DURATION_S:g}], got {duration_s}")
    if not 1 <= concurrency <= MAX_CONCURRENCY:
        raise ValueError(f"concurrency must be in 1..{MAX_CONCURRENCY}, got {concurrency}")
    if not 0 <= rate <= 100_000:
        raise ValueError(f"rate must be in [0, 100000] requests per second, got {rate}")
    for name, share in (("click_through", click_through), ("incomplete_factor", incomplete_factor)):
        if not 0.0 <= share <= 1.0:
            raise ValueError(f"{name} must be in [0, 1], got {share}")
    if endpoint not in ENDPOINTS:
        raise ValueError(f"endpoint must be one of {', '.join(ENDPOINTS)}, got {endpoint!r}")
    rng = random.Random(seed)
    prefix = id_prefix or (f"load{seed}" if seed is not None else uuid.uuid4().hex[:12])
    targets = ENDPOINTS[endpoint]
    # The users' draws from a generator of their own: a seed picks the same ids and paths
    # with or without simulated users.
    draws = random.Random(f"users-{seed}") if seed is not None else random.Random()
    plan = []
    for n in range(requests):
        which = targets[n % len(targets)]
        if which == "dashboard":
            path = f"/api/v6/providers/{rng.randint(1, providers)}/dashboard"
        else:
            path = f"/api/v1/sessions/{rng.randint(1, sessions)}/basic"
        # Drawn here, in request order: the same seed makes the same users whatever the
        # order the answers come back in.
        plan.append(_Planned(which, path, f"{prefix}-{n}", draws.random()))
    users = _Users(click_through, incomplete_factor)
    return asyncio.run(_run(base, plan, duration_s, concurrency, rate, timeout_s, users))


class _Planned(NamedTuple):
    endpoint: str
    path: str
    request_id: str
    draw: float  # uniform in [0, 1): does this user open the detail?


@dataclass(frozen=True)
class _Users:
    """How simulated users react to a dashboard."""

    click_through: float
    incomplete_factor: float

    def opens_detail(self, body: object, draw: float) -> tuple[bool, bool]:
        """(complete, opens): whether the dashboard ``body`` had every figure, and whether the
        user with ``draw`` opens the provider's detail from it."""
        record = body.get("provider") if isinstance(body, dict) else None
        complete = isinstance(record, dict) and all(f in record for f in FIGURES)
        chance = self.click_through * (1.0 if complete else self.incomplete_factor)
        return complete, draw < chance


async def _run(
    base: httpx.URL,
    plan: list[_Planned],
    duration_s: float,
    concurrency: int,
    rate: float,
    timeout_s: float,
    users: _Users,
) -> LoadResult:
    result = LoadResult()
    start = time.monotonic()
    deadline = start + duration_s
    queue = iter(enumerate(plan))
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    async with httpx.AsyncClient(
        base_url=base,
        timeout=min(timeout_s, duration_s),
        limits=limits,
        trust_env=False,  # never through a proxy from the environment
        follow_redirects=False,
    ) as client:

        async def open_detail(path: str, read_path: str, request_id: str) -> None:
            detail = path.removesuffix("/dashboard") + "/detail"
            try:
                response = await client.get(detail, headers={"X-Request-Id": request_id})
            except httpx.HTTPError:
                result.detail_statuses[0] += 1
                return
            result.detail_statuses[response.status_code] += 1
            if response.status_code == 200:
                result.clicks[read_path] += 1

        async def worker() -> None:
            for n, (endpoint, path, request_id, draw) in queue:
                if rate > 0:  # request n starts no earlier than n / rate seconds in
                    await asyncio.sleep(max(0.0, start + n / rate - time.monotonic()))
                if time.monotonic() >= deadline:
                    return
                result.sent += 1
                t0 = time.perf_counter()
                try:
                    response = await client.get(path, headers={"X-Request-Id": request_id})
                except httpx.HTTPError:
                    result.transport_errors += 1
                    result.counts[(endpoint, "none")] += 1
                    continue
                elapsed_ms = (time.perf_counter() - t0) * 1000
                read_path = response.headers.get(READ_PATH_HEADER, "none")
                key = (endpoint, read_path)
                result.counts[key] += 1
                result.statuses[(endpoint, read_path, response.status_code)] += 1
                result.latencies_ms.setdefault(key, []).append(elapsed_ms)
                if endpoint == "dashboard" and response.status_code == 200:
                    complete, opens = users.opens_detail(_json(response), draw)
                    result.views[(read_path, complete)] += 1
                    if opens:
                        await open_detail(path, read_path, request_id)

        await asyncio.gather(*(worker() for _ in range(concurrency)))
    result.elapsed_s = time.monotonic() - start
    return result


def _json(response: httpx.Response) -> object:
    try:
        return response.json()
    except ValueError:
        return None


def main(argv: list[str] | None = None) -> int:
    """The command line; exit 2 on bad arguments (a non-loopback URL included)."""
    parser = argparse.ArgumentParser(
        prog="python -m examples.dataservice.load", description=(__doc__ or "").split("\n\n")[0]
    )
    parser.add_argument("--url", default="http://127.0.0.1:8700", help="the service (loopback)")
    parser.add_argument("--requests", type=int, default=1000, help="at most this many requests")
    parser.add_argument("--duration", type=float, default=30.0, help="at most this many seconds")
    parser.add_argument("--concurrency", type=int, default=8, help="requests in flight")
    parser.add_argument("--rate", type=float, default=0.0, help="requests/s cap (0: none)")
    parser.add_argument("--endpoint", choices=sorted(ENDPOINTS), default="both")
    parser.add_argument("--seed", type=int, default=None, help="reproducible ids")
    parser.add_argument(
        "--click-through",
        type=float,
        default=0.0,
        help="chance a user opens the provider's detail after a dashboard (0..1, default 0)",
    )
    parser.add_argument(
        "--incomplete-factor",
        type=float,
        default=DEFAULT_INCOMPLETE_FACTOR,
        help="times --click-through after a dashboard without the provider's figures",
    )
    args = parser.parse_args(argv)
    try:
        result = run_load(
            args.url,
            requests=args.requests,
            duration_s=args.duration,
            concurrency=args.concurrency,
            endpoint=args.endpoint,
            seed=args.seed,
            rate=args.rate,
            click_through=args.click_through,
            incomplete_factor=args.incomplete_factor,
        )
    except ValueError as exc:
        print(f"load: error: {exc}", file=sys.stderr)
        return 2
    print(result.report())
    return 0


if __name__ == "__main__":
    sys.exit(main())
