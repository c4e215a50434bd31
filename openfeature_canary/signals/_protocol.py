"""The seam the policy reads signals through: :class:`SignalSource`, :class:`SignalReading`,
and how much history a plan's reads need (:func:`retention_for_plan`)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Final, Protocol, runtime_checkable

from opentelemetry.sdk.metrics.export import MetricsData

from openfeature_canary.signals._counts import CountsReading

if TYPE_CHECKING:
    from openfeature_canary.plan import RolloutPlan

__all__ = [
    "DEFAULT_RETENTION_S",
    "RETENTION_MARGIN_TICKS",
    "MetricsDataReader",
    "SignalReading",
    "SignalSource",
    "retention_for_plan",
]

#: How far back an :class:`InProcessSignalSource` built without a plan keeps snapshots.
DEFAULT_RETENTION_S: Final = 7200.0
#: Ticks of slack beyond the plan's longest window (a gate window judged a tick late, a
#: snapshot taken just before a window's edge).
RETENTION_MARGIN_TICKS: Final = 2


def retention_for_plan(plan: RolloutPlan, *, margin_ticks: int = RETENTION_MARGIN_TICKS) -> float:
    """The history, in seconds, that every read of ``plan`` needs: its longest window + margin.

    The longest window is the longest of every stage's gate ``window`` and every trigger's
    ``window`` and ``for``, over all flags; the margin is ``margin_ticks`` of the plan's longest
    ``tick``. For the reference plan: 15 min (stage 4's gate window) + 2 x 10 s = 920 s.

    >>> from openfeature_canary import load_plan
    >>> retention_for_plan(load_plan("examples/canary_plan.toml"))  # doctest: +SKIP
    920.0
    """
    if margin_ticks < 0:
        raise ValueError(f"margin_ticks must not be negative, got {margin_ticks}")
    windows: list[float] = []
    ticks: list[float] = []
    for flag in plan.flags.values():
        ticks.append(flag.tick_s)
        windows.extend(stage.window_s for stage in flag.stages)
        for trigger in flag.triggers:
            windows.append(trigger.window_s)
            if trigger.for_s:
                windows.append(trigger.for_s)
    if not windows:
        raise ValueError("the plan has no stage or trigger windows")
    return max(windows) + margin_ticks * max(ticks)


@dataclass(frozen=True)
class SignalReading:
    """One signal over one window: the value and the evidence behind it.

    ``n`` is the sample count behind ``value``: requests for latency, error rate and
    requests; telemetry events sent for ``telemetry_acceptance``; lag samples for
    ``event_loop_lag_ms``; mismatches for ``ledger_mismatches``. ``value is None`` means "no
    value" (nothing observed, or no span of snapshots yet), never zero. ``start`` and ``end``
    are the times of the two snapshots actually used and ``window_s = end - start`` the span
    they cover, which can be shorter than asked when history does not reach back that far.
    ``error`` says why the source could not compute the value (then ``value`` is ``None``).

    >>> r = SignalReading("latency_p95_ms", None, 0, 0.0, 10.0, 10.0)
    >>> r.value is None and r.n == 0   # inconclusive, never a pass
    True
    """

    signal: str
    value: float | None
    n: int
    window_s: float
    start: float
    end: float
    error: str | None = None


@runtime_checkable
class SignalSource(Protocol):
    """The seam the policy reads signals through (in-process, or Prometheus for fleets).

    Times are the caller's clock (``ManualClock`` in tests and the demo). ``signal`` is one
    of ``openfeature_canary.plan._signals.KNOWN_SIGNALS``; an unknown name raises
    ``ValueError``. A failing backend raises ``SignalSourceError``.
    """

    def snapshot(self, now: float) -> None:
        """Take a cumulative snapshot at ``now`` (call once per policy tick)."""
        ...

    def read(self, flag_key: str, signal: str, window_s: float, now: float) -> SignalReading:
        """Read ``signal`` over the trailing ``window_s`` seconds ending at ``now``."""
        ...

    def read_between(self, flag_key: str, signal: str, start: float, end: float) -> SignalReading:
        """Read ``signal`` over the closed window ``[start, end]`` (a gate window as it closes)."""
        ...

    def count_beyond(
        self,
        flag_key: str,
        signal: str,
        threshold: float,
        inclusive: bool,
        window_s: float,
        now: float,
    ) -> SignalReading:
        """Count the samples of a histogram signal above (``>=`` if inclusive) ``threshold``."""
        ...

    def counts_between(self, flag_key: str, start: float, end: float) -> CountsReading:
        """Both cohorts' request counts (buckets and 5xx) between ``start`` and ``end``.

        The gates fold these in at every tick, from the end of the previous reading. A
        ``start`` before the history the source holds uses its oldest data (the reading's
        ``start`` says so): evidence lost, never counted twice. A failing backend gives a
        reading with ``error`` set rather than raising.
        """
        ...


class MetricsDataReader(Protocol):
    """What :class:`InProcessSignalSource` needs of a reader: ``InMemoryMetricReader`` fits."""

    def get_metrics_data(self) -> MetricsData | None:
        """Collect and return the current metrics (``None`` when there are none)."""
        ...
