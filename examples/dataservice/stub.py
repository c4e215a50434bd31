"""A small DataService stub: the new read path of the example, with fault switches.

It serves the same seeded data as the service's old paths (:mod:`.seed`)::

    GET  /api/v1/providers/{id}      the provider record (404 for an unknown id)
    GET  /api/v1/users/{id}          the user's basic record (404 for an unknown id)
    GET  /admin/faults               the current fault switches
    POST /admin/faults               replace them: {"latency_ms": 300, "error_rate": 0.1,
                                     "wrong_data": true, "incomplete": true}; {} clears
                                     every fault
    POST /telemetry/ingest           a local stand-in for the telemetry ingest (A8): point the
                                     plan's url_env at this stub to see rollout events
    GET  /admin/events               the events received there (the last 1000)
    GET  /healthz                    200

Faults apply to the two data routes only: ``latency_ms`` is added to every answer,
``error_rate`` (0..1) is the share answered ``503``, ``wrong_data`` makes every record differ
from the seed (what the service's shadow comparison must catch), ``incomplete`` answers every
provider record without its figures (:data:`INCOMPLETE_DROPS`): still 200, just as fast, and
right in every field it has, so only what users do shows it (the example's guard).

Run it (127.0.0.1 only)::

    python -m examples.dataservice.stub --port 8701
"""

from __future__ import annotations

import argparse
import asyncio
import ipaddress
import logging
import random
from collections import deque
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from typing import Any, Final

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from .seed import PROVIDERS, USERS, Record, provider, user

__all__ = ["INCOMPLETE_DROPS", "Faults", "create_stub", "main"]

log = logging.getLogger("dataservice_stub")

_EVENTS_KEPT = 1000
#: What ``incomplete`` leaves out of a provider record: its figures, the part of the dashboard
#: users open a provider's detail for. DataService omits fields it has no value for, and the
#: service's shadow comparison accepts an omitted field, so this passes the ledger.
INCOMPLETE_DROPS: Final = ("rating", "active_patients")
_FIELDS: Final = frozenset({"latency_ms", "error_rate", "wrong_data", "incomplete"})


@dataclass(frozen=True)
class Faults:
    """The stub's fault switches (all off by default)."""

    latency_ms: float = 0.0
    error_rate: float = 0.0
    wrong_data: bool = False
    incomplete: bool = False

    @classmethod
    def parse(cls, body: object) -> Faults:
        """Faults from a JSON body; ``ValueError`` naming the field for anything else."""
        if not isinstance(body, Mapping):
            raise ValueError("the body must be a JSON object")
        unknown = set(body) - _FIELDS
        if unknown:
            raise ValueError(f"unknown field(s): {', '.join(sorted(map(str, unknown)))}")
        latency = body.get("latency_ms", 0)
        rate = body.get("error_rate", 0)
        wrong = body.get("wrong_data", False)
        incomplete = body.get("incomplete", False)
        if isinstance(latency, bool) or not isinstance(latency, (int, float)):
            raise ValueError("latency_ms must be a number")
        if not 0 <= latency <= 10_000:
            raise ValueError("latency_ms must be in [0, 10000]")
        if isinstance(rate, bool) or not isinstance(rate, (int, float)) or not 0 <= rate <= 1:
            raise ValueError("error_rate must be a number in [0, 1]")
        if not isinstance(wrong, bool):
            raise ValueError("wrong_data must be true or false")
        if not isinstance(incomplete, bool):
            raise ValueError("incomplete must be true or false")
        return cls(float(latency), float(rate), wrong, incomplete)


def _corrupt(record: Record) -> Record:
    """A record that differs from the seed in one plausible-looking field."""
    wrong = dict(record)
    if "active_patients" in wrong:
        wrong["active_patients"] = int(wrong["active_patients"]) + 1
    else:
        wrong["display_name"] = f"{wrong['display_name']} (stale)"
    return wrong


def _incomplete(record: Record) -> Record:
    """A provider record without its figures (a user record has none: unchanged)."""
    return {k: v for k, v in record.items() if k not in INCOMPLETE_DROPS}


def create_stub(*, seed: int | None = None) -> Starlette:
    """The stub as an ASGI app. ``seed`` makes the ``error_rate`` draws reproducible."""
    rng = random.Random(seed)
    state: dict[str, Faults] = {"faults": Faults()}
    events: deque[Mapping[str, Any]] = deque(maxlen=_EVENTS_KEPT)

    async def serve(record: Record | None) -> JSONResponse:
        faults = state["faults"]
        if faults.latency_ms > 0:
            await asyncio.sleep(faults.latency_ms / 1000)
        if faults.error_rate > 0 and rng.random() < faults.error_rate:
            return JSONResponse({"error": "injected fault"}, status_code=503)
        if record is None:
            return JSONResponse({"error": "not found"}, status_code=404)
        if faults.incomplete:
            record = _incomplete(record)
        return JSONResponse(_corrupt(record) if faults.wrong_data else record)

    async def get_provider(request: Request) -> JSONResponse:
        pid = request.path_params["id"]
        return await serve(provider(pid) if 1 <= pid <= PROVIDERS else None)

    async def get_user(request: Request) -> JSONResponse:
        uid = request.path_params["id"]
        return await serve(user(uid) if 1 <= uid <= USERS else None)

    async def get_faults(_request: Request) -> JSONResponse:
        return JSONResponse(asdict(state["faults"]))

    async def set_faults(request: Request) -> JSONResponse:
        try:
            faults = Faults.parse(await request.json())
        except ValueError as exc:  # also a body that is not JSON
            return JSONResponse({"error": str(exc)}, status_code=400)
        state["faults"] = faults
        log.info("faults now %s", asdict(faults))
        return JSONResponse(asdict(faults))

    async def ingest(request: Request) -> JSONResponse:
        try:
            body = await request.json()
            batch = body["events"]
            if not isinstance(batch, list):
                raise TypeError("events must be a list")
        except (ValueError, KeyError, TypeError) as exc:
            return JSONResponse({"error": f"bad body: {exc}"}, status_code=400)
        for event in batch:
            events.append(event)
            if isinstance(event, Mapping):
                log.info("ingest: %s %s", event.get("event_name"), event.get("properties"))
        return JSONResponse({"accepted": len(batch)})

    async def list_events(_request: Request) -> JSONResponse:
        return JSONResponse({"events": list(events)})

    async def healthz(_request: Request) -> JSONResponse:
        return JSONResponse({"status": "ok"})

    return Starlette(
        routes=[
            Route("/api/v1/providers/{id:int}", get_provider),
            Route("/api/v1/users/{id:int}", get_user),
            Route("/admin/faults", get_faults, methods=["GET"]),
            Route("/admin/faults", set_faults, methods=["POST"]),
            Route("/telemetry/ingest", ingest, methods=["POST"]),
            Route("/admin/events", list_events, methods=["GET"]),
            Route("/healthz", healthz),
        ]
    )


#: ``uvicorn examples.dataservice.stub:app`` works too.
app = create_stub()


def _loopback(host: str) -> str:
    if host != "localhost" and not ipaddress.ip_address(host).is_loopback:
        raise argparse.ArgumentTypeError(f"{host}: the stub binds loopback only (127.0.0.1)")
    return host


def main(argv: list[str] | None = None) -> None:
    """``python -m examples.dataservice.stub [--host 127.0.0.1] [--port 8701]``."""
    import uvicorn

    parser = argparse.ArgumentParser(prog="python -m examples.dataservice.stub")
    parser.add_argument("--host", type=_loopback, default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8701, help="0 picks a free port (logged)")
    parser.add_argument("--seed", type=int, default=None, help="seed of the error_rate draws")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    uvicorn.run(create_stub(seed=args.seed), host=args.host, port=args.port, access_log=False)


if __name__ == "__main__":
    main()
