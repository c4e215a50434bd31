"""What the provider answers for one view, preallocated, and the rebuild of the answer set."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import replace

from openfeature.exception import ErrorCode
from openfeature.flag_evaluation import FlagResolutionDetails, Reason

from openfeature_canary.bucketing import unit_hasher
from openfeature_canary.plan import RolloutPlan
from openfeature_canary.policy import FlagView, build_view
from openfeature_canary.state import RolloutState

__all__ = ["Answers", "invalid_unit", "missing_unit", "not_a_unit", "rebuilt"]

_REASONS: Mapping[str, Reason] = {
    "STATIC": Reason.STATIC,
    "DISABLED": Reason.DISABLED,
    "ERROR": Reason.ERROR,
}


class Answers:
    """Preallocated results for one view: evaluations return these without allocating."""

    __slots__ = ("bucket", "by_key", "fixed", "meta", "newest", "off", "on", "view")

    def __init__(self, view: FlagView) -> None:
        self.view = view
        #: The newest state version these answers stand for (a state change that does not
        #: change the answers, e.g. a judged gate window, only moves this forward).
        self.newest = view.version
        self.meta = view.metadata
        self.by_key = view.bucket_by == "targetingKey"
        self.on = FlagResolutionDetails(True, None, None, Reason.SPLIT, "on", view.metadata)
        self.off = FlagResolutionDetails(False, None, None, Reason.SPLIT, "off", view.metadata)
        self.bucket: Callable[[object], int] = unit_hasher(view.key, view.scheme)
        self.fixed: FlagResolutionDetails[bool] | None = None
        fixed = view.fixed
        if fixed is not None:
            code = ErrorCode(fixed.error_code) if fixed.error_code else None
            self.fixed = FlagResolutionDetails(
                fixed.value,
                code,
                fixed.error_message,
                _REASONS[fixed.reason],
                fixed.variant,
                view.metadata,
            )


def rebuilt(
    current: Mapping[str, Answers],
    states: Mapping[str, RolloutState],
    plan: RolloutPlan,
    environ: Mapping[str, str],
    unavailable: str | None,
) -> tuple[dict[str, Answers], list[str]]:
    """The answer set for ``states`` over ``current``, and the flags whose answers changed.

    A flag whose view did not change keeps its answers (only their ``newest`` version moves);
    a view never goes back to an older state version, so a slow poll cannot undo a rollback.
    """
    new = dict(current)
    changed: list[str] = []
    for key, state in states.items():
        previous = current.get(key)
        if previous is not None and state.version < previous.newest:
            continue  # a served view never goes back to an older state
        view = build_view(plan.flag(key), state, environ, unavailable=unavailable)
        if previous is not None and replace(view, version=previous.view.version) == previous.view:
            # The same answers: nothing to serve anew, nothing to announce.
            previous.newest = max(previous.newest, state.version)
            continue
        new[key] = Answers(view)
        changed.append(key)
    return new, changed


def _unit_name(answers: Answers) -> str:
    view = answers.view
    return "targeting key" if answers.by_key else f"context attribute {view.bucket_by!r}"


def missing_unit(answers: Answers, default_value: bool) -> FlagResolutionDetails[bool]:
    """The caller's default, ``TARGETING_KEY_MISSING``: no unit to bucket at 0 < p < 100."""
    view = answers.view
    return FlagResolutionDetails(
        default_value,
        ErrorCode.TARGETING_KEY_MISSING,
        f"{view.key} is at {view.percent:g}% and buckets by the {_unit_name(answers)}, "
        "which is missing",
        Reason.ERROR,
        None,
        answers.meta,
    )


def invalid_unit(
    answers: Answers, default_value: bool, message: str
) -> FlagResolutionDetails[bool]:
    """The caller's default, ``INVALID_CONTEXT``: a unit that cannot be bucketed (text that
    is not valid Unicode; ``message`` says which code point, never the unit)."""
    return FlagResolutionDetails(
        default_value, ErrorCode.INVALID_CONTEXT, message, Reason.ERROR, None, answers.meta
    )


def not_a_unit(answers: Answers, default_value: bool, unit: object) -> FlagResolutionDetails[bool]:
    """:func:`invalid_unit` for a unit that is neither text nor a number (a dict, a bool …)."""
    what = type(unit).__name__
    message = f"{answers.view.key} buckets by the {_unit_name(answers)}, which is a {what}, "
    return invalid_unit(answers, default_value, message + "not text or a number")
