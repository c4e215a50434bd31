"""``CanaryProvider``: an OpenFeature provider that serves canary flags from a rollout plan."""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from pathlib import Path
from types import MappingProxyType
from typing import Any

import mmh3
from openfeature.evaluation_context import EvaluationContext
from openfeature.event import ProviderEventDetails
from openfeature.exception import ErrorCode, FlagNotFoundError, TypeMismatchError
from openfeature.flag_evaluation import FlagResolutionDetails, Reason
from openfeature.provider import AbstractProvider, Metadata

from openfeature_canary import (
    Clock,
    Controller,
    Rollout,
    RolloutPlan,
    RolloutState,
    StateStore,
    UnknownFlagError,
    load_plan,
)
from openfeature_canary._effects import EventSink
from openfeature_canary._runner import BackgroundRunner
from openfeature_canary._runtime import Runtime, build_runtime
from openfeature_canary._snapshot import ON, FlagView, build_view
from openfeature_canary.bucketing import bucket
from openfeature_canary.signals import SignalSource

__all__ = ["CanaryProvider"]

log = logging.getLogger("openfeature_canary")

_ERROR = Reason.ERROR


class _Answers:
    """Preallocated results for one view: evaluations return these without allocating."""

    __slots__ = ("by_key", "fixed", "meta", "off", "on", "view")

    def __init__(self, view: FlagView) -> None:
        self.view = view
        self.meta = view.metadata
        self.by_key = view.bucket_by == "targetingKey"
        self.on = FlagResolutionDetails(True, None, None, Reason.SPLIT, "on", view.metadata)
        self.off = FlagResolutionDetails(False, None, None, Reason.SPLIT, "off", view.metadata)
        self.fixed: FlagResolutionDetails[bool] | None = None
        fixed = view.fixed
        if fixed is not None and fixed.error_code is None:
            reason = Reason.STATIC if fixed.variant == ON else Reason.DISABLED
            self.fixed = FlagResolutionDetails(
                fixed.value, None, None, reason, fixed.variant, view.metadata
            )


class CanaryProvider(AbstractProvider):
    """Resolves the boolean canary flags of a rollout plan with stable murmur3 bucketing.

    Use it as the OpenFeature provider of a service (or of a domain)::

        provider = CanaryProvider("canary_plan.toml", store="file:///var/lib/canary/state.json")
        api.set_provider_and_wait(provider)
        client = api.get_client()
        on = client.get_boolean_value("dataservice-read-canary", False,
                                      EvaluationContext(targeting_key=request_id))

    Answers: variant ``on``/``off``; reason ``SPLIT`` for 0 < p < 100, ``STATIC`` at 100 %,
    ``DISABLED`` at 0 % (pending or rolled back, with the trigger in ``flag_metadata``).
    ``flag_metadata`` carries ``stage``, ``percent`` and ``status``. Errors return the caller's
    default: ``FLAG_NOT_FOUND``, ``TYPE_MISMATCH``, ``TARGETING_KEY_MISSING`` (no unit at
    0 < p < 100), ``PARSE_ERROR`` (an invalid env override, named in the message).

    The evaluation path reads an immutable snapshot: no I/O, no lock. ``initialize`` starts a
    background thread that notices other processes' changes (``refresh_interval``) and ticks
    the policy; ``shutdown`` stops it. Give ``signals`` (e.g.
    ``InProcessSignalSource(setup_telemetry(plan).reader)``) to run the policy automatically:
    stage gates, hard triggers, telemetry events (``events``, by default a durable outbox to
    the plan's ingest URL) and reports (``reports_dir``, by default the plan's).
    ``background=False`` leaves ticking to the caller (virtual-time drivers such as the demo).
    ``PROVIDER_CONFIGURATION_CHANGED`` is emitted with ``flags_changed`` whenever a flag's
    served percentage or status changes.
    """

    def __init__(
        self,
        plan: RolloutPlan | str | Path,
        *,
        store: StateStore | str | None = None,
        clock: Clock | None = None,
        meter_provider: Any = None,
        environ: Mapping[str, str] | None = None,
        signals: SignalSource | None = None,
        events: EventSink | None = None,
        reports_dir: str | Path | None = None,
        background: bool = True,
        refresh_interval: float = 0.5,
        name: str = "CanaryProvider",
    ) -> None:
        super().__init__()
        self.plan = plan if isinstance(plan, RolloutPlan) else load_plan(plan)
        self.rollout = Rollout(
            self.plan,
            store=store or self.plan.store or "memory://",
            clock=clock,
            serve_unreadable=True,
        )
        self.meter_provider = meter_provider
        self._environ: Mapping[str, str] = os.environ if environ is None else environ
        self._metadata = Metadata(name=name)
        self._answers: Mapping[str, _Answers] = MappingProxyType({})
        self._rebuild()
        # Registered first: the OpenFeature event goes out before telemetry and reports.
        self.rollout.add_listener(self._on_transition)
        self.runtime: Runtime | None = None
        if signals is not None:
            self.runtime = build_runtime(
                self.rollout,
                signals,
                meter_provider=meter_provider,
                environ=self._environ,
                events=events,
                reports_dir=reports_dir,
            )
        self._background = background
        self.runner = BackgroundRunner(
            self.rollout, interval=refresh_interval, on_poll=self._rebuild
        )

    # ------------------------------------------------------------------ lifecycle

    def initialize(self, evaluation_context: EvaluationContext) -> None:
        """Start background work (store polling, policy ticks)."""
        self.rollout.refresh()
        self._rebuild()
        if self.runtime is not None:
            self.runtime.start()
        if self._background:
            self.runner.start()

    def shutdown(self) -> None:
        """Stop background work (undelivered telemetry events stay in the outbox)."""
        self.runner.stop()
        if self.runtime is not None:
            self.runtime.stop()

    def get_metadata(self) -> Metadata:
        """Provider metadata (``name``)."""
        return self._metadata

    def controller(self, flag_key: str) -> Controller:
        """The flag's controller (commands, ``tick()``, ``state``); ``KeyError`` if unknown."""
        return self.rollout.controller(flag_key)

    def view(self, flag_key: str) -> FlagView:
        """What the provider currently serves for ``flag_key`` (percent, status, override)."""
        answers = self._answers.get(flag_key)
        if answers is None:
            raise UnknownFlagError(f"unknown flag {flag_key!r}")
        return answers.view

    # ------------------------------------------------------------------ snapshot

    def _rebuild(self) -> None:
        """Rebuild every view from the controllers' states and the environment."""
        old = self._answers
        new = {
            key: self._answers_for(ctl.state, old.get(key))
            for key, ctl in ((c.key, c) for c in self.rollout.controllers())
        }
        self._swap(new)

    def _on_transition(self, _old: RolloutState, new: RolloutState) -> None:
        current = dict(self._answers)
        current[new.flag_key] = self._answers_for(new, current.get(new.flag_key))
        self._swap(current)

    def _answers_for(self, state: RolloutState, previous: _Answers | None) -> _Answers:
        view = build_view(self.plan.flag(state.flag_key), state, self._environ)
        if previous is not None and previous.view == view:
            return previous
        return _Answers(view)

    def _swap(self, new: dict[str, _Answers]) -> None:
        old = self._answers
        changed = [k for k, a in new.items() if old.get(k) is not a]
        if not changed and len(old) == len(new):
            return
        self._answers = MappingProxyType(new)
        if old:
            for key in changed:
                log.info(
                    "%s now serves %s%% (%s)", key, new[key].view.percent, new[key].view.status
                )
            self.emit_provider_configuration_changed(
                ProviderEventDetails(flags_changed=changed, message="canary rollout changed")
            )

    # ------------------------------------------------------------------ resolution

    def resolve_boolean_details(
        self,
        flag_key: str,
        default_value: bool,
        evaluation_context: EvaluationContext | None = None,
    ) -> FlagResolutionDetails[bool]:
        """Resolve a canary flag (see the class docstring for the answers)."""
        answers = self._answers.get(flag_key)
        if answers is None:
            raise FlagNotFoundError(f"flag {flag_key!r} is not in the canary plan")
        if answers.fixed is not None:
            return answers.fixed
        view = answers.view
        if view.fixed is not None:  # an error that does not depend on the caller
            return FlagResolutionDetails(
                default_value,
                ErrorCode(view.fixed.error_code or ErrorCode.GENERAL),
                view.fixed.error_message,
                _ERROR,
                None,
                answers.meta,
            )
        if evaluation_context is None:
            unit: Any = None
        elif answers.by_key:
            unit = evaluation_context.targeting_key
        else:
            unit = evaluation_context.attributes.get(view.bucket_by)
        if unit is None or unit == "":
            return self._missing_unit(view, default_value, answers)
        if view.scheme == "flagd":
            text = unit if type(unit) is str else str(unit)
            slot = (mmh3.hash(flag_key + text, 0, False) * 10000) >> 32
        else:
            slot = bucket(flag_key, unit, view.scheme)
        return answers.on if slot < view.basis_points else answers.off

    async def resolve_boolean_details_async(
        self,
        flag_key: str,
        default_value: bool,
        evaluation_context: EvaluationContext | None = None,
    ) -> FlagResolutionDetails[bool]:
        """Async twin of :meth:`resolve_boolean_details` (it never blocks)."""
        return self.resolve_boolean_details(flag_key, default_value, evaluation_context)

    @staticmethod
    def _missing_unit(
        view: FlagView, default_value: bool, answers: _Answers
    ) -> FlagResolutionDetails[bool]:
        what = "targeting key" if answers.by_key else f"context attribute {view.bucket_by!r}"
        return FlagResolutionDetails(
            default_value,
            ErrorCode.TARGETING_KEY_MISSING,
            f"{view.key} is at {view.percent:g}% and buckets by the {what}, which is missing",
            _ERROR,
            None,
            answers.meta,
        )

    def _type_mismatch(self, flag_key: str, wanted: str) -> Any:
        if flag_key not in self._answers:
            raise FlagNotFoundError(f"flag {flag_key!r} is not in the canary plan")
        raise TypeMismatchError(f"canary flag {flag_key!r} is boolean, not {wanted}")

    def resolve_string_details(
        self, flag_key: str, default_value: str, evaluation_context: EvaluationContext | None = None
    ) -> FlagResolutionDetails[str]:
        """Canary flags are boolean: ``TYPE_MISMATCH`` (or ``FLAG_NOT_FOUND``)."""
        return self._type_mismatch(flag_key, "string")  # type: ignore[no-any-return]

    def resolve_integer_details(
        self, flag_key: str, default_value: int, evaluation_context: EvaluationContext | None = None
    ) -> FlagResolutionDetails[int]:
        """Canary flags are boolean: ``TYPE_MISMATCH`` (or ``FLAG_NOT_FOUND``)."""
        return self._type_mismatch(flag_key, "integer")  # type: ignore[no-any-return]

    def resolve_float_details(
        self,
        flag_key: str,
        default_value: float,
        evaluation_context: EvaluationContext | None = None,
    ) -> FlagResolutionDetails[float]:
        """Canary flags are boolean: ``TYPE_MISMATCH`` (or ``FLAG_NOT_FOUND``)."""
        return self._type_mismatch(flag_key, "float")  # type: ignore[no-any-return]

    def resolve_object_details(
        self,
        flag_key: str,
        default_value: Any,
        evaluation_context: EvaluationContext | None = None,
    ) -> FlagResolutionDetails[Any]:
        """Canary flags are boolean: ``TYPE_MISMATCH`` (or ``FLAG_NOT_FOUND``)."""
        return self._type_mismatch(flag_key, "object")  # type: ignore[no-any-return]
