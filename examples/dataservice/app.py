"""The DataService cutover (spec §2) as a real Starlette service, with the policy in-process.

Two endpoints, each choosing its read path with a canary flag::

    GET /api/v6/providers/{id}/dashboard   flag dataservice-read-canary (A6, phase 1)
        current: a direct SQL query on the embedded SQLite database seeded at startup
        canary:  DataService  GET /api/v1/providers/{id}
        a 200 tracks ``dashboard_viewed`` (OpenFeature ``track()``, the request's unit)
    GET /api/v6/providers/{id}/detail      the user opens the provider's detail from the
        dashboard (send the view's X-Request-Id): the SQLite record, not under a flag;
        a 200 tracks ``provider_detail_opened`` for that unit (the example plan's guard)
    GET /api/v1/sessions/{id}/basic        flag dataservice-user-read-canary (A1, phase 2)
        current: the in-process user cache
        canary:  DataService  GET /api/v1/users/{id}
    GET /metrics                           Prometheus exposition of this process's metrics
    GET /healthz                           200, with what each flag serves in this process

Every answer carries ``X-Read-Path: canary|current`` and ``X-Request-Id`` (the request's
``X-Request-Id`` header, else a generated one: the bucketing unit).

What it wires together (the parts a team copies):

* ``setup_telemetry(plan, resource=service.name, extra_readers=[Prometheus])``: one
  ``MeterProvider``; ``/metrics`` is served by this app, on its own port;
* ``CanaryProvider(plan, store=..., telemetry=..., decide=...)``: serves the flags and, unless
  ``DATASERVICE_CANARY_DECIDE=0``, runs the policy for the fleet when it holds the decider lease
  (with its own ``MetricsHook``); the engine logs one INFO line per transition it makes;
* ``CanaryMiddleware`` once per flag: ``http.server.request.duration`` by variant;
* ``shadow_compare`` on a sample of canary requests: the canary answer against the current
  path's (``canary.ledger.comparisons`` / ``canary.ledger.mismatches``);
* ``EventLoopLagMonitor``: ``canary.event_loop.lag``.

Configuration: :func:`create_app` arguments, else these environment variables (see the README):

=================================== ==========================================================
``DATASERVICE_EXAMPLE_PLAN``        plan file (default: ``canary_plan.toml`` next to this file)
``DATASERVICE_EXAMPLE_STORE``       state store URL (default
                                    ``file://$TMPDIR/dataservice-example/state.json``)
``DATASERVICE_URL``                 DataService base URL (default ``http://127.0.0.1:8701``)
``DATASERVICE_EXAMPLE_DB``          SQLite file (default: a temporary file per process)
``DATASERVICE_EXAMPLE_SHADOW_RATE`` share of canary requests compared, 0..1 (default 0.1)
``DATASERVICE_EXAMPLE_REPORTS``     reports folder (default: ``reports`` next to the store file)
``DATASERVICE_EXAMPLE_LOG_LEVEL``   log level when nothing configured logging (default INFO)
``DATASERVICE_CANARY_DECIDE``       ``0``: serve and publish only, ``openfeature-canary
                                    controller`` decides (default ``1``: may decide)
``OTEL_SERVICE_NAME``               ``service.name`` (default ``dataservice-example``)
``A8_URL``                          telemetry ingest base URL (the plan's ``[telemetry].url_env``)
``DATASERVICE_READ_CANARY``         pins flag 1's percentage (the plan's ``env_override``)
=================================== ==========================================================

Run::

    python -m examples.dataservice.app --port 8700            # or:
    uvicorn --factory examples.dataservice.app:create_app --host 127.0.0.1 --port 8700
"""

from __future__ import annotations

import argparse
import ipaddress
import logging
import os
import shutil
import sqlite3
import tempfile
import threading
import uuid
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

import httpx
from openfeature import api
from openfeature.client import OpenFeatureClient
from openfeature.contrib.provider.canary import CanaryProvider
from opentelemetry.exporter.prometheus import PrometheusMetricReader
from opentelemetry.sdk.resources import SERVICE_NAME, Resource
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from openfeature_canary import load_plan, setup_telemetry
from openfeature_canary.instrumentation import (
    CanaryMiddleware,
    EventLoopLagMonitor,
    shadow_compare,
)

from .engagement import DASHBOARD_VIEWED, PROVIDER_DETAIL_OPENED, agrees, context, track
from .seed import PROVIDER_COLUMNS, PROVIDERS, SESSIONS, USERS, Record, provider, session_user, user

__all__ = [
    "FLAG_PROVIDERS",
    "FLAG_USERS",
    "Settings",
    "create_app",
    "main",
]

log = logging.getLogger("dataservice_example")

FLAG_PROVIDERS: Final = "dataservice-read-canary"
FLAG_USERS: Final = "dataservice-user-read-canary"
#: The OpenFeature domain of this service's client (keeps the global default provider free).
DOMAIN: Final = "dataservice-example"
READ_PATH_HEADER: Final = "X-Read-Path"
REQUEST_ID_HEADER: Final = "X-Request-Id"

_HERE = Path(__file__).resolve().parent
_DEFAULT_SERVICE_NAME: Final = "dataservice-example"
_DEFAULT_DATASERVICE_URL: Final = "http://127.0.0.1:8701"
_DEFAULT_SHADOW_RATE: Final = 0.1
#: ``0``: this service only serves and publishes its signals; ``openfeature-canary controller``
#: on the same store decides (the fleet's controller mode).
DECIDE_ENV: Final = "DATASERVICE_CANARY_DECIDE"


# --------------------------------------------------------------------------- settings


@dataclass(frozen=True)
class Settings:
    """Everything :func:`create_app` needs; :meth:`resolve` builds it."""

    plan_path: Path
    store_url: str
    dataservice_url: str
    db_path: Path | None  # None: a temporary file, removed at shutdown
    shadow_sample_rate: float
    reports_dir: Path
    service_name: str
    log_level: str = "INFO"
    dataservice_timeout_s: float = 2.0
    #: False: serve and publish only (``CanaryProvider(decide=False)``); a controller decides.
    decide: bool = True

    @classmethod
    def resolve(
        cls,
        environ: Mapping[str, str] | None = None,
        *,
        plan_path: str | Path | None = None,
        store_url: str | None = None,
        dataservice_url: str | None = None,
        db_path: str | Path | None = None,
        shadow_sample_rate: float | None = None,
        reports_dir: str | Path | None = None,
        service_name: str | None = None,
        decide: bool | None = None,
    ) -> Settings:
        """Each setting from its argument, else ``environ`` (``os.environ``), else its default
        (the table in the module docstring). ``ValueError`` for a sample rate outside [0, 1]
        or a ``DATASERVICE_CANARY_DECIDE`` that is not a yes/no."""
        env = os.environ if environ is None else environ
        store = store_url or env.get("DATASERVICE_EXAMPLE_STORE") or _default_store_url()
        if shadow_sample_rate is None:
            text = env.get("DATASERVICE_EXAMPLE_SHADOW_RATE", "")
            shadow_sample_rate = _rate(text) if text else _DEFAULT_SHADOW_RATE
        elif not 0.0 <= shadow_sample_rate <= 1.0:
            raise ValueError(f"shadow_sample_rate must be in [0, 1], got {shadow_sample_rate}")
        db = db_path or env.get("DATASERVICE_EXAMPLE_DB")
        reports = reports_dir or env.get("DATASERVICE_EXAMPLE_REPORTS")
        return cls(
            plan_path=Path(
                plan_path or env.get("DATASERVICE_EXAMPLE_PLAN") or _HERE / "canary_plan.toml"
            ),
            store_url=store,
            dataservice_url=(
                dataservice_url or env.get("DATASERVICE_URL") or _DEFAULT_DATASERVICE_URL
            ),
            db_path=Path(db) if db else None,
            shadow_sample_rate=shadow_sample_rate,
            reports_dir=Path(reports) if reports else _default_reports_dir(store),
            service_name=service_name or env.get("OTEL_SERVICE_NAME") or _DEFAULT_SERVICE_NAME,
            log_level=env.get("DATASERVICE_EXAMPLE_LOG_LEVEL") or "INFO",
            decide=_yes_no(env.get(DECIDE_ENV, "")) if decide is None else decide,
        )


def _rate(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = float("nan")
    if not 0.0 <= value <= 1.0:
        raise ValueError(f"DATASERVICE_EXAMPLE_SHADOW_RATE={text!r}: expected a number in [0, 1]")
    return value


def _yes_no(text: str) -> bool:
    """``DATASERVICE_CANARY_DECIDE``: empty (unset) is yes, the default."""
    word = text.strip().lower()
    if word in ("", "1", "true", "yes", "on"):
        return True
    if word in ("0", "false", "no", "off"):
        return False
    raise ValueError(f"{DECIDE_ENV}={text!r}: expected 1 (decide) or 0 (serve only)")


def _default_store_url() -> str:
    folder = Path(tempfile.gettempdir()) / "dataservice-example"
    folder.mkdir(parents=True, exist_ok=True)  # the store does not create its folder
    return f"file://{folder / 'state.json'}"


def _default_reports_dir(store_url: str) -> Path:
    if store_url.startswith("file://"):
        return Path(store_url.removeprefix("file://")).parent / "reports"
    return Path(tempfile.gettempdir()) / "dataservice-example" / "reports"


# --------------------------------------------------------------------------- the old paths


class ProviderDatabase:
    """The A6 current path: an embedded SQLite database, one read-only connection per thread."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._local = threading.local()

    def seed(self) -> None:
        """Create the table and write every seeded provider (idempotent: several workers may
        seed the same file)."""
        rows = [tuple(provider(i)[c] for c in PROVIDER_COLUMNS) for i in range(1, PROVIDERS + 1)]
        with sqlite3.connect(self.path, timeout=10) as con:
            con.execute(
                "CREATE TABLE IF NOT EXISTS providers (id INTEGER PRIMARY KEY, name TEXT, "
                "specialty TEXT, city TEXT, rating REAL, active_patients INTEGER)"
            )
            con.executemany("INSERT OR REPLACE INTO providers VALUES (?, ?, ?, ?, ?, ?)", rows)
        con.close()

    def provider(self, provider_id: int) -> Record | None:
        """The provider's record, or ``None``: ``SELECT ... WHERE id = ?``."""
        con: sqlite3.Connection | None = getattr(self._local, "con", None)
        if con is None:
            con = sqlite3.connect(f"file:{self.path}?mode=ro", uri=True, check_same_thread=False)
            self._local.con = con
        row = con.execute(
            f"SELECT {', '.join(PROVIDER_COLUMNS)} FROM providers WHERE id = ?", (provider_id,)
        ).fetchone()
        return None if row is None else dict(zip(PROVIDER_COLUMNS, row, strict=True))


class DataServiceError(Exception):
    """DataService did not answer usably (transport error, 5xx, not a JSON object)."""


class DataService:
    """The new path: DataService over HTTP (one pooled ``httpx.AsyncClient``)."""

    def __init__(self, base_url: str, timeout_s: float) -> None:
        self.http = httpx.AsyncClient(base_url=base_url, timeout=timeout_s)

    async def record(self, path: str) -> Record | None:
        """``GET path``: the record, ``None`` for a 404, :class:`DataServiceError` otherwise."""
        try:
            response = await self.http.get(path)
        except httpx.HTTPError as exc:
            raise DataServiceError(f"{type(exc).__name__}") from exc
        if response.status_code == 404:
            return None
        if response.status_code != 200:
            raise DataServiceError(f"status {response.status_code}")
        try:
            body = response.json()
        except ValueError as exc:
            raise DataServiceError("not JSON") from exc
        if not isinstance(body, dict):
            raise DataServiceError("not a JSON object")
        return body

    async def aclose(self) -> None:
        """Close the connection pool."""
        await self.http.aclose()


# --------------------------------------------------------------------------- the app


class DataServiceExample:
    """The service's parts and handlers; :func:`create_app` builds it and its Starlette app."""

    def __init__(self, settings: Settings, environ: Mapping[str, str] | None = None) -> None:
        self.settings = settings
        self.plan = load_plan(settings.plan_path)
        resource = Resource.create({SERVICE_NAME: settings.service_name})
        self.registry = CollectorRegistry(auto_describe=True)
        # One MeterProvider: the in-process reader the policy reads, plus a Prometheus reader
        # on a registry of our own, served at /metrics by this app (not a second port).
        self.telemetry = setup_telemetry(
            self.plan,
            resource=resource,
            extra_readers=[PrometheusMetricReader(registry=self.registry)],
        )
        self.meter_provider = self.telemetry.meter_provider
        settings.reports_dir.mkdir(parents=True, exist_ok=True)
        self.provider = CanaryProvider(
            self.plan,
            store=settings.store_url,
            telemetry=self.telemetry,
            environ=environ,
            reports_dir=settings.reports_dir,
            decide=settings.decide,
        )
        self.client: OpenFeatureClient = api.get_client(domain=DOMAIN)
        self.lag_monitor = EventLoopLagMonitor(meter_provider=self.meter_provider)
        self.dataservice: DataService | None = None
        self.database: ProviderDatabase | None = None
        self.user_cache: dict[int, Record] = {}
        self._tmp_db_dir: Path | None = None

    # ------------------------------------------------------------------ lifecycle

    @asynccontextmanager
    async def lifespan(self, _app: Starlette) -> AsyncIterator[None]:
        """Seed the old paths, start the provider (policy) and the lag monitor; stop them."""
        self._open_database()
        self.user_cache = {i: user(i) for i in range(1, USERS + 1)}
        self.dataservice = DataService(
            self.settings.dataservice_url, self.settings.dataservice_timeout_s
        )
        try:
            api.set_provider_and_wait(self.provider, domain=DOMAIN)
        except Exception as exc:  # the store cannot be read: serve the old path meanwhile
            log.error("canary provider not ready (serving the old path): %s", exc)
        await self.lag_monitor.start()
        log.info(
            "%s ready: plan %s, store %s, DataService %s, shadow rate %g, %s",
            self.settings.service_name,
            self.settings.plan_path,
            self.settings.store_url,
            self.settings.dataservice_url,
            self.settings.shadow_sample_rate,
            "may decide" if self.settings.decide else "serve only (a controller decides)",
        )
        try:
            yield
        finally:
            await self.lag_monitor.stop()
            self.provider.flush_events(2.0)
            self.provider.shutdown()
            await self.dataservice.aclose()
            self.telemetry.shutdown()
            if self._tmp_db_dir is not None:
                shutil.rmtree(self._tmp_db_dir, ignore_errors=True)

    def _open_database(self) -> None:
        path = self.settings.db_path
        if path is None:
            self._tmp_db_dir = Path(tempfile.mkdtemp(prefix="dataservice-example-"))
            path = self._tmp_db_dir / "providers.sqlite3"
        self.database = ProviderDatabase(path)
        self.database.seed()

    # ------------------------------------------------------------------ helpers

    def _canary(self, flag_key: str, request: Request) -> tuple[bool, str]:
        request_id = _request_id(request)
        return self.client.get_boolean_value(flag_key, False, context(request_id)), request_id

    @staticmethod
    def _answer(body: Any, status: int, canary: bool, request_id: str) -> JSONResponse:
        return JSONResponse(
            body,
            status_code=status,
            headers={
                READ_PATH_HEADER: "canary" if canary else "current",
                REQUEST_ID_HEADER: request_id,
            },
        )

    # ------------------------------------------------------------------ endpoints

    async def dashboard(self, request: Request) -> JSONResponse:
        """A6: ``GET /api/v6/providers/{id}/dashboard``."""
        provider_id: int = request.path_params["id"]
        database = self.database
        assert database is not None and self.dataservice is not None
        canary, request_id = self._canary(FLAG_PROVIDERS, request)
        if canary:
            try:
                record = await self.dataservice.record(f"/api/v1/providers/{provider_id}")
            except DataServiceError as exc:
                # No silent fallback: the canary's failures must show in its error rate.
                log.debug("DataService failed for provider %s: %s", provider_id, exc)
                return self._answer({"error": "DataService unavailable"}, 502, True, request_id)
            # On a sample, check the answer against the old path (a PK lookup in SQLite takes
            # tens of microseconds: fine on the loop; a slow shadow belongs in a thread).
            shadow_compare(
                FLAG_PROVIDERS,
                record,
                lambda: database.provider(provider_id),
                compare=agrees,  # DataService omits empty fields: only a wrong value differs
                sample_rate=self.settings.shadow_sample_rate,
                meter_provider=self.meter_provider,
            )
        else:
            record = await run_in_threadpool(database.provider, provider_id)
        if record is None:
            return self._answer({"error": "no such provider"}, 404, canary, request_id)
        # What users do with the dashboard is judged per view, in the cohort that served it.
        track(self.client, DASHBOARD_VIEWED, request_id)
        return self._answer({"provider": record}, 200, canary, request_id)

    async def detail(self, request: Request) -> JSONResponse:
        """``GET /api/v6/providers/{id}/detail``: the user opened the provider's detail from
        the dashboard (the same ``X-Request-Id``). Served by the old path and not under a flag
        (it is not what the canary changes): it only reports the click for the view's unit."""
        provider_id: int = request.path_params["id"]
        assert self.database is not None
        request_id = _request_id(request)
        record = await run_in_threadpool(self.database.provider, provider_id)
        headers = {REQUEST_ID_HEADER: request_id}
        if record is None:
            return JSONResponse({"error": "no such provider"}, status_code=404, headers=headers)
        track(self.client, PROVIDER_DETAIL_OPENED, request_id)
        return JSONResponse({"provider": record}, headers=headers)

    async def session_basic(self, request: Request) -> JSONResponse:
        """A1: ``GET /api/v1/sessions/{id}/basic``."""
        session_id: int = request.path_params["id"]
        if not 1 <= session_id <= SESSIONS:  # no session: neither path is asked
            return JSONResponse({"error": "no such session"}, status_code=404)
        assert self.dataservice is not None
        user_id = session_user(session_id)
        canary, request_id = self._canary(FLAG_USERS, request)
        record: Record | None
        if canary:
            try:
                record = await self.dataservice.record(f"/api/v1/users/{user_id}")
            except DataServiceError as exc:
                log.debug("DataService failed for user %s: %s", user_id, exc)
                return self._answer({"error": "DataService unavailable"}, 502, True, request_id)
            shadow_compare(
                FLAG_USERS,
                record,
                lambda: self.user_cache.get(user_id),
                sample_rate=self.settings.shadow_sample_rate,
                meter_provider=self.meter_provider,
            )
        else:
            record = self.user_cache.get(user_id)
        if record is None:
            return self._answer({"error": "no such user"}, 404, canary, request_id)
        return self._answer({"session_id": session_id, "user": record}, 200, canary, request_id)

    async def metrics(self, _request: Request) -> Response:
        """``GET /metrics``: this process's metrics (Prometheus text format)."""
        data = await run_in_threadpool(generate_latest, self.registry)
        return Response(data, media_type=CONTENT_TYPE_LATEST)

    async def healthz(self, _request: Request) -> JSONResponse:
        """``GET /healthz``: 200 and what each flag serves in this process."""
        flags: dict[str, dict[str, object]] = {}
        for key in self.plan.flags:
            view = self.provider.view(key)
            served: dict[str, object] = {
                "status": view.status.value,
                "stage": view.stage,
                "percent": view.percent,
            }
            if view.override:  # pinned by the flag's env_override
                served["override"] = view.override
            flags[key] = served
        return JSONResponse({"status": "ok", "pid": os.getpid(), "flags": flags})

    def starlette(self) -> Starlette:
        """The ASGI app: routes, one ``CanaryMiddleware`` per flag, the lifespan."""
        mp = self.meter_provider
        return Starlette(
            routes=[
                Route("/api/v6/providers/{id:int}/dashboard", self.dashboard),
                Route("/api/v6/providers/{id:int}/detail", self.detail),
                Route("/api/v1/sessions/{id:int}/basic", self.session_basic),
                Route("/metrics", self.metrics),
                Route("/healthz", self.healthz),
            ],
            middleware=[
                Middleware(CanaryMiddleware, flag_key=FLAG_PROVIDERS, meter_provider=mp),
                Middleware(CanaryMiddleware, flag_key=FLAG_USERS, meter_provider=mp),
            ],
            lifespan=self.lifespan,
        )


def _request_id(request: Request) -> str:
    """The request's bucketing unit: its ``X-Request-Id``, else a fresh one."""
    return request.headers.get(REQUEST_ID_HEADER) or uuid.uuid4().hex


def create_app(
    *,
    plan_path: str | Path | None = None,
    store_url: str | None = None,
    dataservice_url: str | None = None,
    db_path: str | Path | None = None,
    shadow_sample_rate: float | None = None,
    reports_dir: str | Path | None = None,
    service_name: str | None = None,
    decide: bool | None = None,
    environ: Mapping[str, str] | None = None,
) -> Starlette:
    """Build the service. Arguments left ``None`` come from ``environ`` (``os.environ``).

    ``environ`` is also what the provider reads the ingest URL (the plan's ``url_env``) and the
    env overrides from. ``uvicorn --factory examples.dataservice.app:create_app`` calls it
    with no arguments: everything from the environment.
    """
    env = os.environ if environ is None else environ
    settings = Settings.resolve(
        env,
        plan_path=plan_path,
        store_url=store_url,
        dataservice_url=dataservice_url,
        db_path=db_path,
        shadow_sample_rate=shadow_sample_rate,
        reports_dir=reports_dir,
        service_name=service_name,
        decide=decide,
    )
    if not logging.getLogger().handlers:  # uvicorn configures its own loggers, not the root
        logging.basicConfig(
            level=settings.log_level.upper(),
            format="%(asctime)s %(levelname)s [%(process)d] %(name)s: %(message)s",
        )
        logging.getLogger("httpx").setLevel(logging.WARNING)  # one line per request otherwise
    return DataServiceExample(settings, environ=env).starlette()


# --------------------------------------------------------------------------- python -m


def _loopback(host: str) -> str:
    if host != "localhost" and not ipaddress.ip_address(host).is_loopback:
        raise argparse.ArgumentTypeError(f"{host}: the example binds loopback only (127.0.0.1)")
    return host


def main(argv: list[str] | None = None) -> None:
    """``python -m examples.dataservice.app [--host 127.0.0.1] [--port 8700] [--workers N]``.

    Configuration comes from the environment (module docstring); with ``--workers`` each
    worker process builds its own app from it.
    """
    import uvicorn

    parser = argparse.ArgumentParser(prog="python -m examples.dataservice.app")
    parser.add_argument("--host", type=_loopback, default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8700, help="0 picks a free port (logged)")
    parser.add_argument("--workers", type=int, default=1)
    args = parser.parse_args(argv)
    module = __spec__.name if __spec__ is not None else "examples.dataservice.app"
    uvicorn.run(
        f"{module}:create_app",
        factory=True,
        host=args.host,
        port=args.port,
        workers=args.workers,
        access_log=False,
    )


if __name__ == "__main__":
    main()
