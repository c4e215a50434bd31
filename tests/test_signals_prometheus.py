"""PrometheusSignalSource: the built-in signals as PromQL over a real Prometheus.

* One scenario on 127.0.0.1 (module fixture): ``setup_telemetry`` serves ``/metrics`` for
  seeded traffic of both cohorts (known latencies, 5xx, lag, mismatches, ingest counters),
  Debian's Prometheus scrapes it every second, and the in-process source snapshots the same
  traffic at the same two times. Every signal read from Prometheus agrees with the in-process
  reading; ``counts_between`` is exact.
* Failing Prometheus (a closed port, HTTP 500, a server dripping bytes, malformed answers):
  every read has ``error`` set within the deadline, and a rollout with ``on_error = rollback``
  rolls back on it.
* The ``[signals]`` table: validation errors name the key; escaping keeps flag keys inert.
"""

from __future__ import annotations

import bisect
import json
import math
import random
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path

import pytest
from opentelemetry.metrics import Counter, Histogram
from prometheus_server import (
    CannedPrometheus,
    DrippingServer,
    PrometheusServer,
    free_port,
    prometheus_server,
)
from waiting import wait_until

from openfeature_canary import (
    ManualClock,
    MemoryStateStore,
    PlanError,
    RolloutState,
    Status,
    load_plan,
    parse_plan,
)
from openfeature_canary.instrumentation import (
    EVENT_LOOP_LAG_NAME,
    LEDGER_MISMATCHES_NAME,
    METER_NAME,
    IngestInstruments,
    record_request,
)
from openfeature_canary.instrumentation._tracking import TrackingRecorder, tracking_recorder
from openfeature_canary.plan import RolloutPlan
from openfeature_canary.plan._signals import KNOWN_SIGNALS, MS_SIGNALS, RATE_SIGNALS
from openfeature_canary.policy import Autopilot, Rollout
from openfeature_canary.signals import (
    InProcessSignalSource,
    PrometheusSignalSource,
    SignalReading,
    SignalSource,
    default_queries,
    validate_queries,
)
from openfeature_canary.telemetry import Telemetry, histogram_bounds_s, setup_telemetry

ROOT = Path(__file__).resolve().parent.parent
PLAN = ROOT / "examples" / "canary_plan.toml"
FLAG = "dataservice-read-canary"
#: A key that would end the matcher and add a clause if it reached PromQL unescaped.
ODD_FLAG = 'x"} or vector(1) # \\ {flag}'
ODD_REQUESTS = 7
DURATION = "http_server_request_duration_seconds"


# --------------------------------------------------------------------------- the scenario


@dataclass(frozen=True)
class Scenario:
    prometheus: PrometheusServer
    source: PrometheusSignalSource
    local: InProcessSignalSource
    t0: float  # both sources' window: [t0, t1]
    t1: float
    stretch: float  # how far Prometheus' increase() may extrapolate: window / sampled span


@dataclass(frozen=True)
class App:
    """What the seeded traffic records into: the service's meter provider and instruments."""

    telemetry: Telemetry
    lag: Histogram
    mismatches: Counter
    ingest: IngestInstruments
    tracking: TrackingRecorder

    @classmethod
    def of(cls, telemetry: Telemetry) -> App:
        meter = telemetry.meter_provider.get_meter(METER_NAME)
        return cls(
            telemetry,
            meter.create_histogram(EVENT_LOOP_LAG_NAME, unit="s"),
            meter.create_counter(LEDGER_MISMATCHES_NAME, unit="{mismatch}"),
            IngestInstruments(telemetry.meter_provider),
            tracking_recorder(telemetry.meter_provider),
        )

    def request(self, flag: str, variant: str, ms: float, status: int) -> None:
        record_request(
            flag, variant, ms / 1000, status, meter_provider=self.telemetry.meter_provider
        )

    def prime(self) -> None:
        """Every series once, before the window: none appears inside it."""
        for variant, failure in (("on", 503), ("off", 500)):
            for status in (200, failure):
                self.request(FLAG, variant, 50, status)
        self.request(ODD_FLAG, "on", 50, 200)
        self.lag.record(0.004)
        self.mismatches.add(1, {"feature_flag.key": FLAG})
        self.ingest.sent(1)
        self.ingest.accepted(1)
        for variant in ("on", "off"):
            self.tracking.record(FLAG, variant, "opened", 1.0)

    def traffic(self, rng: random.Random) -> None:
        """Both cohorts of FLAG (canary slower, more 5xx), ODD_FLAG, lag, mismatches, ingest."""
        for _ in range(1500):
            slow = rng.random() < 0.1
            ms = rng.uniform(130, 220) if slow else rng.uniform(20, 120)
            self.request(FLAG, "on", ms, 503 if rng.random() < 0.015 else 200)
            self.track(rng, "on", 0.25)
        for _ in range(2500):
            slow = rng.random() < 0.03
            ms = rng.uniform(150, 260) if slow else rng.uniform(10, 140)
            self.request(FLAG, "off", ms, 500 if rng.random() < 0.004 else 200)
            self.track(rng, "off", 0.3)
        for _ in range(ODD_REQUESTS):
            self.request(ODD_FLAG, "on", 30, 200)
        for seconds in [rng.uniform(0.001, 0.05) for _ in range(28)] + [0.32, 0.41]:
            self.lag.record(seconds)
        self.mismatches.add(3, {"feature_flag.key": FLAG})
        self.ingest.sent(50)
        self.ingest.accepted(48)

    def track(self, rng: random.Random, variant: str, rate: float) -> None:
        """A request's tracked events: ``opened`` at ``rate`` (value in quarters, or none) and
        ``viewed`` always (never valued)."""
        self.tracking.record(FLAG, variant, "viewed", None)
        if rng.random() < rate:
            value = rng.choice([None, 0.25, 1.0, 2.5, 4.0])
            self.tracking.record(FLAG, variant, "opened", value)


def _scraped(prom: PrometheusServer, expected: Mapping[str, float]) -> Callable[[], bool]:
    def ready() -> bool:
        return all(
            (r := prom.query(f"sum({name})")) and float(r[0]["value"][1]) == total
            for name, total in expected.items()
        )

    return ready


@pytest.fixture(scope="module")
def scenario(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Scenario]:
    telemetry = setup_telemetry(load_plan(PLAN), prometheus_port=0)
    assert telemetry.metrics_url is not None
    target = telemetry.metrics_url.removeprefix("http://").removesuffix("/metrics")
    local = InProcessSignalSource(telemetry.reader)
    rng = random.Random(20261129)
    try:
        with prometheus_server([target], tmp_path_factory.mktemp("prometheus")) as prom:
            app = App.of(telemetry)
            app.prime()
            primed = {
                f"{DURATION}_count": 5,
                "canary_event_loop_lag_seconds_count": 1,
                "canary_ledger_mismatches_total": 1,
                "canary_telemetry_sent_total": 1,
                "feature_flag_tracking_events_total": 2,
            }
            prom.wait_until("the primed series", _scraped(prom, primed), 20.0)
            t0 = time.time()
            local.snapshot(t0)
            # Deliberate, the window's shape: ~2 quiet scrapes inside it before the traffic
            # (test_..._consecutive_spans_add_up splits the window at t0 + 2 s).
            time.sleep(2.0)
            app.traffic(rng)
            after = {
                f"{DURATION}_count": 5 + 1500 + 2500 + ODD_REQUESTS,
                "canary_event_loop_lag_seconds_count": 31,
                "canary_ledger_mismatches_total": 4,
                "canary_telemetry_sent_total": 51,
                "feature_flag_tracking_events_total": sum(
                    t.count for t in app.tracking.totals().values()
                ),
            }
            prom.wait_until("the traffic", _scraped(prom, after), 10.0)
            time.sleep(1.5)  # deliberate: quiet scrapes of the settled totals end the window
            t1 = time.time()
            local.snapshot(t1)
            window = f"{round((t1 - t0) * 1000)}ms"
            (series,) = prom.query(
                f'{DURATION}_count{{feature_flag_key="{FLAG}", feature_flag_result_variant="on",'
                f' http_response_status_code="200"}}[{window}]',
                at=t1,
            )
            stamps = [float(t) for t, _ in series["values"]]
            # Prometheus keeps times in whole milliseconds: a millisecond either side of the
            # window and of the sampled span bounds the rounding (a 2e-5 miss failed CI once).
            stretch = (t1 - t0 + 0.002) / (stamps[-1] - stamps[0] - 0.002)
            source = PrometheusSignalSource(prom.url, timeout_s=5.0)
            yield Scenario(prom, source, local, t0, t1, stretch)
    finally:
        telemetry.shutdown()


# --------------------------------------------------------------------------- agreement


def _bucket_width(value_ms: float) -> float:
    bounds = [0.0, *(b * 1000 for b in histogram_bounds_s(load_plan(PLAN)))]
    i = bisect.bisect_left(bounds, value_ms)
    return bounds[min(i, len(bounds) - 1)] - bounds[max(i - 1, 0)]


def _agree(scenario: Scenario, signal: str, remote: SignalReading, local: SignalReading) -> None:
    assert remote.error is None, remote.error
    assert local.error is None and local.value is not None and remote.value is not None
    # increase() extrapolates each series to the window's edges (never below its growth), at
    # most by window / sampled span; series extrapolated by different factors (its clamp at
    # a counter's zero) move ratios and quantiles a little, within these bounds.
    assert local.n <= remote.n <= math.floor(local.n * scenario.stretch + 0.5)
    if signal in MS_SIGNALS:
        assert abs(remote.value - local.value) <= _bucket_width(local.value)
    elif signal in RATE_SIGNALS:
        assert abs(remote.value - local.value) <= 0.001  # 0.1 percentage point
    else:
        assert local.value <= remote.value <= math.floor(local.value * scenario.stretch + 0.5)


@pytest.mark.parametrize("signal", sorted(KNOWN_SIGNALS))
def test_prometheus_read_between_agrees_with_in_process(scenario: Scenario, signal: str) -> None:
    remote = scenario.source.read_between(FLAG, signal, scenario.t0, scenario.t1)
    local = scenario.local.read_between(FLAG, signal, scenario.t0, scenario.t1)
    _agree(scenario, signal, remote, local)
    assert (remote.start, remote.end) == (scenario.t0, scenario.t1)


def test_prometheus_read_trailing_window_agrees_with_in_process(scenario: Scenario) -> None:
    window = scenario.t1 - scenario.t0
    for signal in ("latency_p95_ms", "baseline_error_rate"):
        remote = scenario.source.read(FLAG, signal, window, scenario.t1)
        local = scenario.local.read(FLAG, signal, window, scenario.t1)
        _agree(scenario, signal, remote, local)


def test_prometheus_p95_and_error_rate_separate_the_cohorts(scenario: Scenario) -> None:
    read = scenario.source.read_between
    p95 = read(FLAG, "latency_p95_ms", scenario.t0, scenario.t1).value
    base_p95 = read(FLAG, "baseline_latency_p95_ms", scenario.t0, scenario.t1).value
    assert p95 is not None and base_p95 is not None and 150 < p95 < 220 and base_p95 < 150


def test_prometheus_count_beyond_agrees_with_in_process(scenario: Scenario) -> None:
    window, now = scenario.t1 - scenario.t0, scenario.t1
    for signal, threshold, inclusive in (
        ("event_loop_lag_ms", 300.0, True),
        ("latency_p95_ms", 150.0, False),
        ("baseline_latency_p99_ms", 145.0, False),  # between bounds: interpolated
    ):
        remote = scenario.source.count_beyond(FLAG, signal, threshold, inclusive, window, now)
        local = scenario.local.count_beyond(FLAG, signal, threshold, inclusive, window, now)
        assert remote.error is None and remote.value is not None and local.value is not None
        assert local.value - 1e-9 <= remote.value <= local.value * scenario.stretch + 1e-9
        assert local.n <= remote.n <= math.floor(local.n * scenario.stretch + 0.5)


def test_prometheus_counts_between_equals_in_process_exactly(scenario: Scenario) -> None:
    remote = scenario.source.counts_between(FLAG, scenario.t0, scenario.t1)
    local = scenario.local.counts_between(FLAG, scenario.t0, scenario.t1)
    assert remote.error is None
    assert (remote.canary, remote.baseline) == (local.canary, local.baseline)
    assert (remote.canary.n, remote.baseline.n) == (1500, 2500)
    assert remote.canary.bounds[remote.canary.bounds.index(150.0)] == 150.0


def test_prometheus_tracked_events_equal_in_process_exactly(scenario: Scenario) -> None:
    remote = scenario.source.counts_between(FLAG, scenario.t0, scenario.t1)
    local = scenario.local.counts_between(FLAG, scenario.t0, scenario.t1)
    for part in ("canary", "baseline"):
        there, here = getattr(remote, part).tracked, getattr(local, part).tracked
        assert dict(there) == dict(here) and set(here) == {"opened", "viewed"}
    assert (remote.canary.tracked["viewed"].count, remote.baseline.tracked["viewed"].count) == (
        1500,
        2500,
    )
    opened = remote.baseline.tracked["opened"]
    assert 0 < opened.valued < opened.count < 2500 and opened.total > 0
    assert remote.canary.tracked["viewed"].valued == 0


def test_prometheus_tracked_events_only_for_guarded_flags_given_the_plan(
    scenario: Scenario,
) -> None:
    plan = load_plan(PLAN)  # no guards: no tracking query, the request counts as ever
    source = PrometheusSignalSource(scenario.prometheus.url, plan=plan)
    counts = source.counts_between(FLAG, scenario.t0, scenario.t1)
    assert counts.error is None and (counts.canary.n, counts.baseline.n) == (1500, 2500)
    assert dict(counts.canary.tracked) == dict(counts.baseline.tracked) == {}


def test_prometheus_tracked_events_failing_leave_request_counts_readable(
    caplog: pytest.LogCaptureFixture,
) -> None:
    answer = _vector("3", labels={"le": "+Inf", "feature_flag_result_variant": "on"})

    def prometheus(query: str) -> tuple[int, bytes]:
        return (500, b"boom") if "tracking" in query else answer

    with caplog.at_level("WARNING", "openfeature_canary"), CannedPrometheus(prometheus) as server:
        source = PrometheusSignalSource(server.url)
        readings = [source.counts_between(FLAG, time.time() - 60, time.time()) for _ in "ab"]
    for counts in readings:
        assert counts.error is None and counts.canary.n == 3 and not counts.canary.tracked
    said = [r for r in caplog.records if "tracked events not read" in r.getMessage()]
    assert len(said) == 1 and "HTTP 500" in said[0].getMessage()


def test_prometheus_counts_between_consecutive_spans_add_up(scenario: Scenario) -> None:
    middle = scenario.t0 + 2.0  # around the traffic
    source = scenario.source
    first = source.counts_between(FLAG, scenario.t0, middle)
    second = source.counts_between(FLAG, middle, scenario.t1)
    both = source.counts_between(FLAG, scenario.t0, scenario.t1)
    for part in ("canary", "baseline"):
        a, b, whole = (getattr(r, part) for r in (first, second, both))
        assert a.n + b.n == whole.n and a.errors + b.errors == whole.errors


def test_prometheus_flag_key_with_quote_reads_only_its_own_series(scenario: Scenario) -> None:
    counts = scenario.source.counts_between(ODD_FLAG, scenario.t0, scenario.t1)
    assert counts.error is None
    assert (counts.canary.n, counts.baseline.n) == (ODD_REQUESTS, 0)
    requests = scenario.source.read_between(ODD_FLAG, "requests", scenario.t0, scenario.t1)
    assert ODD_REQUESTS <= requests.n <= math.floor(ODD_REQUESTS * scenario.stretch + 0.5)


def test_prometheus_flag_never_served_reads_quiet_without_error(scenario: Scenario) -> None:
    read = scenario.source.read_between
    p95 = read("never-served", "latency_p95_ms", scenario.t0, scenario.t1)
    assert (p95.value, p95.n, p95.error) == (None, 0, None)
    for signal in ("requests", "ledger_mismatches"):  # counts: a true zero
        reading = read("never-served", signal, scenario.t0, scenario.t1)
        assert (reading.value, reading.n, reading.error) == (0.0, 0, None)


def test_prometheus_query_override_is_used_for_both_cohorts(scenario: Scenario) -> None:
    p50 = default_queries()["latency_p50_ms"]
    source = PrometheusSignalSource(scenario.prometheus.url, queries={"latency_p95_ms": p50})
    for signal in ("latency_p95_ms", "baseline_latency_p95_ms"):
        twin = signal.replace("p95", "p50")
        remote = source.read_between(FLAG, signal, scenario.t0, scenario.t1)
        default = scenario.source.read_between(FLAG, twin, scenario.t0, scenario.t1)
        assert remote.error is None and (remote.value, remote.n) == (default.value, default.n)


def test_prometheus_rejecting_a_query_gives_its_message(scenario: Scenario) -> None:
    broken = 'histogram_quantile(0.95, sum by (le) (rate(x{a="{flag}", b="{variant}"}[{window}]))'
    source = PrometheusSignalSource(scenario.prometheus.url, queries={"latency_p95_ms": broken})
    reading = source.read_between(FLAG, "latency_p95_ms", scenario.t0, scenario.t1)
    assert reading.value is None and reading.error is not None
    assert "HTTP 400" in reading.error and "bad_data" in reading.error


# --------------------------------------------------------------------------- a failing one

DEADLINE_S = 0.5
#: What "within the deadline" allows on top: the worker's cancellation and a loaded machine
#: (the suite runs under pytest -n N on 2 shared cores).
SLACK_S = 3.0
#: A deadline no scheduling hiccup reaches: for the reads that must fail by themselves first.
LONG_DEADLINE_S = 10.0


def _json(doc: object, status: int = 200) -> tuple[int, bytes]:
    return status, json.dumps(doc).encode()


def _vector(*values: str, labels: dict[str, str] | None = None) -> tuple[int, bytes]:
    result = [{"metric": labels or {}, "value": [1.0, v]} for v in values]
    return _json({"status": "success", "data": {"resultType": "vector", "result": result}})


def _count_then(
    value_answer: tuple[int, bytes], n: str = "42"
) -> Callable[[str], tuple[int, bytes]]:
    """Answers the count query with ``n`` and the value query with ``value_answer``."""
    return lambda query: value_answer if query.startswith("histogram_quantile") else _vector(n)


@pytest.mark.parametrize(
    ("answer", "expected"),
    [
        (lambda q: (500, b"boom"), "HTTP 500 Internal Server Error: boom"),
        (lambda q: (200, b"<html>proxy login</html>"), "the answer is not JSON: <html>proxy login"),
        (
            lambda q: _json({"status": "error", "errorType": "bad_data", "error": "parse"}, 400),
            "HTTP 400 Bad Request: bad_data: parse",
        ),
        (
            lambda q: _json(
                {"status": "error", "errorType": "timeout", "error": "query timed out"}
            ),
            "status 'error': timeout: query timed out",
        ),
        (
            lambda q: _json({"status": "success", "data": {"resultType": "matrix", "result": []}}),
            "expected an instant vector or a scalar, got 'matrix'",
        ),
        (lambda q: _vector("1", "2"), "2 series where one was expected"),
        (lambda q: _vector("NaN"), "a count of nan"),
        (_count_then(_vector("NaN")), "nan although 42 samples were counted"),
        (_count_then(_vector("+Inf")), "inf although 42 samples were counted"),
        (_count_then(_vector()), "no series although 42 samples were counted"),
        (lambda q: _vector("x"), "malformed sample value 'x'"),
    ],
    ids=lambda v: "" if callable(v) else str(v)[:30],
)
def test_prometheus_bad_answer_reads_as_error_with_reason(
    answer: Callable[[str], tuple[int, bytes]], expected: str
) -> None:
    with CannedPrometheus(answer) as server:
        reading = PrometheusSignalSource(server.url).read(FLAG, "latency_p95_ms", 60, time.time())
    assert (reading.value, reading.n) == (None, 0)
    assert reading.error is not None and expected in reading.error
    assert reading.error.startswith(f"prometheus {server.url}: ")


@pytest.mark.parametrize("count", [[], ["0"]], ids=["no-series", "zero"])
def test_prometheus_quiet_window_reads_no_value_and_no_error(count: list[str]) -> None:
    with CannedPrometheus(lambda q: _vector(*count)) as server:
        source = PrometheusSignalSource(server.url)
        reading = source.read(FLAG, "error_rate", 60, time.time())
        requests = source.read(FLAG, "requests", 60, time.time())
        counts = source.counts_between(FLAG, time.time() - 60, time.time())
    assert (reading.value, reading.n, reading.error) == (None, 0, None)
    assert (requests.value, requests.n, requests.error) == (0.0, 0, None)
    assert counts.error is None and counts.canary.n == counts.baseline.n == 0
    # The value query waits for a count above 0; counts_between: buckets, 5xx, 4 tracked.
    assert len(server.queries) == 1 + 1 + 2 + 4


def test_prometheus_value_in_ms_is_rounded_onto_the_bound() -> None:
    # 0.15 * 1000 is 150.00000000000003 in floating point: "P95 > 150" must stay false.
    with CannedPrometheus(_count_then(_vector("150.00000000000003"))) as server:
        reading = PrometheusSignalSource(server.url).read(FLAG, "latency_p95_ms", 60, time.time())
    assert (reading.value, reading.n) == (150.0, 42)


def _timed(read: Callable[[], SignalReading]) -> tuple[SignalReading, float]:
    started = time.monotonic()
    reading = read()
    return reading, time.monotonic() - started


def test_prometheus_unreachable_reads_as_error_at_once() -> None:
    # A refused connection is an error at once: long before a deadline a loaded machine
    # cannot reach by itself (with 0.5 s, a descheduled worker read "no answer" instead).
    closed = f"http://127.0.0.1:{free_port()}"
    source = PrometheusSignalSource(closed, timeout_s=LONG_DEADLINE_S)
    reading, took = _timed(lambda: source.read(FLAG, "latency_p95_ms", 60, time.time()))
    assert reading.value is None and reading.error is not None
    assert "ConnectError" in reading.error and took < LONG_DEADLINE_S / 2


def test_prometheus_dripping_answer_is_cut_at_the_total_deadline() -> None:
    with DrippingServer() as server:
        source = PrometheusSignalSource(server.url, timeout_s=DEADLINE_S)
        reading, took = _timed(lambda: source.read(FLAG, "latency_p95_ms", 60, time.time()))
        assert reading.error is not None and "within the 0.5 s deadline" in reading.error
        assert took < DEADLINE_S + SLACK_S
        # The rest of the tick fails at once with the same reason; the next tick tries again.
        again, quick = _timed(lambda: source.read(FLAG, "error_rate", 60, time.time()))
        assert again.error is not None and "earlier in this tick" in again.error
        assert quick < DEADLINE_S
        # The first read connected once (its accept may lag on a loaded machine); the second
        # did not connect at all.
        wait_until(lambda: server.connections >= 1, "the first read's connection accepted")
        assert server.connections == 1
        source.snapshot(time.time())
        counts = source.counts_between(FLAG, time.time() - 60, time.time())
        assert counts.error is not None and "deadline" in counts.error
        assert server.connections == 2


def _rollback_on_error(source: PrometheusSignalSource) -> RolloutState:
    plan: RolloutPlan = load_plan(PLAN)
    clock = ManualClock(start=time.time())
    rollout = Rollout(plan, store="memory://", clock=clock, policy=Autopilot(source))
    ctl = rollout.controller(FLAG)
    ctl.start()
    ctl.tick()  # failing, but not yet for source_error_for (1 min)
    assert ctl.state.status is Status.RUNNING
    clock.advance(plan.flag(FLAG).source_error_for_s)
    state = ctl.tick()
    assert state is not None
    return state


@pytest.mark.parametrize("fault", ["closed-port", "http-500", "dripping"])
def test_prometheus_failing_feeds_on_error_rollback(fault: str) -> None:
    closed = f"http://127.0.0.1:{free_port()}"
    with CannedPrometheus(lambda q: (500, b"boom")) as failing, DrippingServer() as dripping:
        url = {"closed-port": closed, "http-500": failing.url, "dripping": dripping.url}[fault]
        state = _rollback_on_error(PrometheusSignalSource(url, timeout_s=DEADLINE_S))
    assert (state.status, state.percent) == (Status.ROLLED_BACK, 0.0)
    assert state.reason == "signal_source_error"
    assert state.last_decision is not None
    assert str(state.last_decision.numbers["error"]).startswith(f"prometheus {url}: ")


# --------------------------------------------------------------------------- lines are bounds


@pytest.mark.parametrize("where", ["prometheus", "in-process"])
def test_a_line_that_is_not_a_bucket_bound_is_refused_at_the_first_read(
    scenario: Scenario, where: str, caplog: pytest.LogCaptureFixture
) -> None:
    """Both sources' buckets are the plan's (``setup_telemetry``): a plan with a 133 ms P95
    line, between the 130 and 140 ms bounds, is refused when the buckets are first read, by
    both sources with the same line naming the line and the bounds."""
    plan = parse_plan(
        {
            "flags": {
                FLAG: {
                    "stages": [
                        {"percent": 50, "duration": "1h", "window": "1h", "max_p95_ms": 133}
                    ],
                    "triggers": [{"name": "p95_breach", "signal": "latency_p95_ms", "above": 133}],
                }
            }
        }
    )
    source: SignalSource = scenario.source if where == "prometheus" else scenario.local
    clock, store = ManualClock(start=scenario.t0), MemoryStateStore()
    # Started at t0 by an operator's process (no policy: the in-process source's snapshots
    # are the scenario's, t0 and t1), then one tick of the autopilot at t1.
    Rollout(plan, store=store, clock=clock).controller(FLAG).start()
    clock.set(scenario.t1)
    autopilot = Autopilot(source)
    ctl = Rollout(plan, store=store, clock=clock, policy=autopilot).controller(FLAG)
    ctl.tick()
    bounds = ", ".join(f"{b * 1000:g}" for b in histogram_bounds_s(load_plan(PLAN)))
    expected = (
        "the P95 line of stage 1 (133 ms) is not a bound of the request-duration histogram "
        f"(its bounds: {bounds} ms)"
    )
    assert [r.getMessage() for r in caplog.records if "refused" in r.getMessage()] == [
        f"{FLAG}: refused: {expected}"
    ]
    last = autopilot.last(FLAG)
    assert last is not None and last.triggers["p95_breach"].error == expected
    assert ctl.state.evidence is None or ctl.state.evidence.canary.n == 0


# --------------------------------------------------------------------------- the table

P = 'sum(increase(m{f="{flag}", v="{variant}"}[{window}]))'


@pytest.mark.parametrize(
    ("table", "message"),
    [
        ({"latency_p96_ms": P}, "signals.latency_p96_ms: unknown signal"),
        (
            {"requests": 'sum(increase(m{f="{flag}", v="{variant}"}[5m]))'},
            "signals.requests: missing placeholder {window}",
        ),
        (
            {"error_rate": 'sum(increase(m{f="{flag}"}[{window}]))'},
            "signals.error_rate: missing placeholder {variant}",
        ),
        (
            {"ledger_mismatches": "sum(increase(m[{window}]))"},
            "signals.ledger_mismatches: missing placeholder {flag}",
        ),
        (
            {"requests": P.replace('"{flag}"', "{flag}")},
            "signals.requests: {flag} must stand inside a double-quoted PromQL string",
        ),
        (
            {"requests": P.replace('"{flag}"', "'{flag}'")},
            "signals.requests: {flag} must stand inside a double-quoted PromQL string",
        ),
        ({"requests": P.replace("{flag}", "{flg}")}, "signals.requests: unknown placeholder {flg}"),
        ({"event_loop_lag_ms": P}, "signals.event_loop_lag_ms: placeholder {variant} has no"),
        ({"requests": 'sum(m{f="{flag}'}, 'signals.requests: unterminated " string'),
        ({"requests": 42}, "signals.requests: must be a non-empty PromQL string"),
        ({"requests": "  "}, "signals.requests: must be a non-empty PromQL string"),
    ],
)
def test_validate_queries_bad_table_names_the_key(table: dict[str, object], message: str) -> None:
    with pytest.raises(PlanError, match="^" + message.replace("{", r"\{").replace("(", r"\(")):
        validate_queries(table)
    with pytest.raises(ValueError, match=message.split(":")[0]):
        PrometheusSignalSource("http://127.0.0.1:9", queries=table)  # type: ignore[arg-type]


def test_validate_queries_accepts_defaults_and_a_baseline_of_its_own() -> None:
    table = {
        **default_queries(),
        "latency_p95_ms": 'q(m{f="{flag}", v="on"}[{window}])',  # {variant}: not needed now
        "baseline_latency_p95_ms": 'q(m{f="{flag}", v="off"}[{window}])',
        "event_loop_lag_ms": "max(m[{window}]) # {flag} and {variant} in a comment are text",
    }
    assert validate_queries(table) == table
    source = PrometheusSignalSource("http://127.0.0.1:9", queries=table)
    assert source.queries["baseline_error_rate"] == default_queries()["error_rate"]
    assert source.queries["baseline_latency_p95_ms"] == table["baseline_latency_p95_ms"]


def test_prometheus_flag_key_is_escaped_in_every_context() -> None:
    regex = 'sum(increase(m{f=~"{flag}|other", v="{variant}"}[{window}]))'
    with CannedPrometheus(lambda q: _vector("3")) as server:
        source = PrometheusSignalSource(server.url, queries={"requests": regex})
        source.read('a.b"c\\d\n', "requests", 90, time.time())
        source.read_between(ODD_FLAG, "ledger_mismatches", 0.0, 1.5)
    assert server.queries == [
        'sum(increase(m{f=~"a\\\\.b\\"c\\\\\\\\d\\u000a|other", v="on"}[90s]))',
        'sum(increase(canary_ledger_mismatches_total{feature_flag_key="x\\"} or vector(1) # '
        '\\\\ {flag}"}[1500ms]))',
    ]


def test_prometheus_source_is_a_signal_source_and_checks_its_arguments() -> None:
    source = PrometheusSignalSource("http://127.0.0.1:9")
    assert isinstance(source, SignalSource)
    with pytest.raises(ValueError, match="unknown signal 'latency_p95'"):
        source.read(FLAG, "latency_p95", 60, 0.0)
    with pytest.raises(ValueError, match="needs a histogram signal"):
        source.count_beyond(FLAG, "error_rate", 1.0, False, 60, 0.0)
    with pytest.raises(ValueError, match="window_s must be a positive"):
        source.read(FLAG, "requests", 0, 0.0)
    with pytest.raises(ValueError, match=r"start 2\.0 is after end 1\.0"):
        source.counts_between(FLAG, 2.0, 1.0)
    empty = source.read_between(FLAG, "requests", 5.0, 5.0)  # no span: nothing asked
    assert (empty.value, empty.n, empty.error) == (None, 0, None)


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("127.0.0.1:9090", "must be an absolute http"),
        ("ftp://prom:9090", "must be an absolute http"),
        ("http://user:secret@prom:9090", "give credentials in headers="),
        ("http://prom:9090/?token=abc", "give credentials in headers="),
    ],
)
def test_prometheus_source_bad_url_is_refused(url: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        PrometheusSignalSource(url)
