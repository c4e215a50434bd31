"""Immutable per-flag views that the evaluation path reads without locks or I/O.

Background work (commands, the policy, the store poller) builds a new :class:`FlagView` and
swaps it in; an evaluation only reads the current one. Constant answers (0 %, 100 %, errors
that do not depend on the caller) are computed once, at build time.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import Final

from openfeature_canary.plan import FlagPlan
from openfeature_canary.plan._signals import BASELINE, CANARY
from openfeature_canary.state import RolloutState, Status

__all__ = ["OFF", "ON", "FlagView", "Resolution", "build_view", "parse_override"]

#: Variants served by canary flags: the signal vocabulary's cohorts (one definition).
ON: Final = CANARY
OFF: Final = BASELINE

Metadata = Mapping[str, bool | int | float | str]


@dataclass(frozen=True)
class Resolution:
    """What a constant answer is: value, variant, reason (an OpenFeature ``Reason`` value)."""

    value: bool
    variant: str | None
    reason: str
    error_code: str | None = None
    error_message: str | None = None


@dataclass(frozen=True)
class FlagView:
    """Everything one evaluation of a flag needs, precomputed.

    ``fixed`` is set when the answer does not depend on the unit (0 %, 100 %, a bad env
    override); otherwise the unit's bucket is compared with ``basis_points``.
    """

    key: str
    percent: float
    basis_points: int
    status: Status
    stage: int
    bucket_by: str
    scheme: str
    metadata: Metadata
    fixed: Resolution | None
    override: str | None = None
    #: The state version this view was built from: a served view never goes back to an
    #: older one.
    version: int = 0


_NUMBER = re.compile(r"[0-9]+(?:\.[0-9]+)?")


def parse_override(name: str, raw: str | None) -> tuple[float | None, str | None]:
    """Parse an env override: ``(percent, None)``, ``(None, None)`` when unset, or an error.

    Valid values are plain ASCII decimals in [0, 100] (``"0"``, ``"5"``, ``"25"``, ``"12.5"``);
    Python's wider ``float()`` syntax (``"1_0"``, full-width digits, ``"nan"``) is refused.
    """
    if raw is None:
        return None, None
    text = raw.strip()
    if not _NUMBER.fullmatch(text):
        return None, f"environment variable {name}={raw!r} is not a number (expected 0..100)"
    value = float(text)
    if not 0 <= value <= 100:
        return None, f"environment variable {name}={raw!r} is out of range (expected 0..100)"
    return value, None


def build_view(
    flag: FlagPlan,
    state: RolloutState,
    environ: Mapping[str, str],
    *,
    unavailable: str | None = None,
) -> FlagView:
    """The view of ``flag`` in ``state``, with its env override (if any) applied.

    A rolled-back flag stays off whatever the env override says (valid or not): the automatic
    safety wins over a value left in a deployment. An invalid override answers ``PARSE_ERROR``
    (the caller's default) until it is fixed. ``unavailable`` (why the state cannot be trusted,
    e.g. an unreadable store) serves 0 %: ``False``, ``DISABLED``, the why in the metadata
    (no error code, since OpenFeature would then hand out the caller's default, which may be
    ``True``).
    """
    percent = (
        state.percent if state.status in (Status.RUNNING, Status.PAUSED, Status.COMPLETED) else 0.0
    )
    override_name = flag.env_override
    override_pct, override_error = (
        parse_override(override_name, environ.get(override_name)) if override_name else (None, None)
    )
    applied_override: str | None = None
    if state.status is Status.ROLLED_BACK:
        override_error = None
    elif override_pct is not None:
        percent, applied_override = override_pct, override_name
    if unavailable is not None:
        percent, applied_override = 0.0, None
    meta: dict[str, bool | int | float | str] = {
        "stage": state.stage,
        "percent": percent,
        "status": state.status.value,
    }
    if state.status is Status.ROLLED_BACK and state.reason:
        meta["trigger"] = state.reason
    if applied_override:
        meta["override"] = applied_override
    if unavailable is not None:
        meta["unavailable"] = unavailable
    if flag.bucket_by != "targetingKey":  # the MetricsHook's unit for a 5xx (else the key)
        meta["bucket_by"] = flag.bucket_by
    basis_points = round(percent * 100)
    fixed: Resolution | None = None
    if override_error is not None and unavailable is None:
        fixed = Resolution(False, None, "ERROR", "PARSE_ERROR", override_error)
    elif basis_points <= 0:
        fixed = Resolution(False, OFF, "DISABLED")
    elif basis_points >= 10000:
        fixed = Resolution(True, ON, "STATIC")
    return FlagView(
        key=flag.key,
        percent=percent,
        basis_points=basis_points,
        status=state.status,
        stage=state.stage,
        bucket_by=flag.bucket_by,
        scheme=flag.scheme,
        metadata=MappingProxyType(meta),
        fixed=fixed,
        override=applied_override,
        version=state.version,
    )
