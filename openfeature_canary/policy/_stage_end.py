"""The end of a running stage: go, extend, or pause (a pure function, called by
:func:`._decide.decide` once a stage's duration has passed and no test is breached).

A stage goes (advances, or completes after the last) once its signals cover it, each line and
guard has the information to have caught its stated regression with the plan's power, its
trailing window does not fail a line, and no test leans towards a breach; otherwise it extends
(logged once), then pauses after its duration again, saying what it still needs.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from openfeature_canary.evidence import StageEvidence
from openfeature_canary.plan import FlagPlan, Stage
from openfeature_canary.policy._decision import Action, Decision, Memory, Readings
from openfeature_canary.policy._gates import GateTest, Information, alpha_per_test, information
from openfeature_canary.policy._guards import guard_information
from openfeature_canary.policy._numbers import information_numbers, stage_summary
from openfeature_canary.policy._windows import WindowSpan, judge_window
from openfeature_canary.state import Number, RolloutState, Verdict, WindowRecord

__all__ = ["StageTick", "decide_end"]


@dataclass(frozen=True)
class StageTick:
    """What one tick of a running stage past its duration decides on."""

    readings: Readings
    memory: Memory
    now: float
    judged: tuple[WindowRecord, ...]
    changed: StageEvidence | None
    evidence: StageEvidence

    def hold(self, reason: str = "extended") -> Decision:
        return Decision(
            Action.HOLD, reason, self.memory, windows=self.judged, evidence=self.changed
        )

    def extend(
        self, index: int, reason: str, numbers: dict[str, Number], held: str = "extended"
    ) -> Decision:
        """Extend the stage, logged once per stage; then hold (saying ``held``)."""
        if self.memory.extended == index:
            return self.hold(held)
        memory = replace(self.memory, extended=index)
        return Decision(Action.EXTEND, reason, memory, numbers, self.judged, self.changed)


def _needs(short: list[Information], elapsed: float) -> dict[str, Number]:
    """How much more a stage short of information needs: ``needed`` (canary requests for a
    line, else a guard's events, ``needed_unit`` says which), each guard's own
    (``needed_guard:<event>``), and ``needed_s``, the longest time that takes at the rate seen
    so far (absent when nothing was seen)."""
    out: dict[str, Number] = {}
    lines = [i for i in short if not i.name.startswith("guard:")]
    worst = max(lines or short, key=lambda i: i.needed - i.n)
    out["needed"] = worst.needed - worst.n
    out["needed_unit"] = "canary requests" if lines else f"{worst.name[6:]} events"
    seconds = []
    for info in short:
        if info.name.startswith("guard:"):
            out[f"needed_{info.name}"] = info.needed - info.n
        if info.n and elapsed > 0:
            seconds.append(round((info.needed - info.n) * elapsed / info.n))
    if seconds and len(seconds) == len(short):  # each rate known: the slowest decides
        out["needed_s"] = max(seconds)
    return out


def _uncovered(end: float, tick: StageTick) -> str | None:
    """Why the stage's signals do not reach its end yet (``None``: they do).

    A stage goes on evidence that covers it: a source failing over its end holds it until
    the source recovers, or a trigger's ``on_error`` acts.
    """
    readings = tick.readings
    for reading in (readings.counts, readings.tail):
        if reading is not None and reading.error is not None:
            return f"signal source error: {reading.error}"
    evidence = tick.evidence
    # With no request at all there is nothing to cover: the information rule keeps the stage
    # (too little information, then a pause), whatever the source could read.
    seen = evidence.canary.n + evidence.baseline.n > 0
    if seen and evidence.through + 1e-6 < end:
        return f"counts read up to {end - evidence.through:.1f} s before it"
    return None


def _last_window(stage: Stage, tick: StageTick) -> WindowRecord | None:
    """The trailing window's record (the window a go would leave behind), when read."""
    tail = tick.readings.tail
    if tail is None:
        return None
    return judge_window(stage, WindowSpan(-1, tail.start, tail.end), tail)


def decide_end(
    flag: FlagPlan, state: RolloutState, tick: StageTick, tests: tuple[GateTest, ...]
) -> Decision:
    index, now, evidence = state.stage, tick.now, tick.evidence
    stage = flag.stage(index)
    end = state.since + stage.duration_s
    judged, changed = tick.judged, tick.changed
    missing = _uncovered(end, tick)
    if missing is not None:
        numbers: dict[str, Number] = {"covered_through": evidence.through - state.since}
        reason = f"holding: the stage's signals do not reach its end ({missing})"
        if now + 1e-9 >= end + stage.duration_s:
            # Held for its duration again: pause, so an operator sees it (never a go).
            memory = replace(tick.memory, extended=-1)
            return Decision(Action.PAUSE, reason, memory, numbers, judged, changed)
        return tick.extend(index, reason, numbers, held=reason)
    infos = information(flag, index, evidence)
    guards = guard_information(flag, index, evidence, alpha_per_test(flag))
    summary = stage_summary(flag, index, evidence, (*state.windows, *judged))
    numbers = {**summary, **information_numbers(infos), **information_numbers(guards)}
    short = [i for i in (*infos, *guards) if i.power < flag.decisions.power]
    overtime = now + 1e-9 >= end + stage.duration_s
    # A test half-way to its boundary (e-value >= sqrt(1/alpha)) holds the stage, up to its
    # duration again: going on would throw away evidence that leans towards a breach.
    leaning = [t for t in tests if t.log_e >= t.boundary / 2]
    # The trailing window failing a line holds it too, and never lets it go: a breach in the
    # last seconds of a stage is diluted in the stage's evidence but not in its last window.
    last = _last_window(stage, tick)
    failing = last is not None and last.verdict is Verdict.FAIL
    if not short and not failing and (not leaning or overtime):
        action = Action.COMPLETE if index >= len(flag.stages) else Action.ADVANCE
        # Trigger memory survives an advance: a breach that began at the end of the last stage
        # must keep counting towards its ``for``.
        memory = replace(tick.memory, extended=-1)
        return Decision(action, "gate_passed", memory, numbers, judged, changed)
    if not short and failing:
        assert last is not None
        numbers["last_window"] = last.reason
        reason = f"the last window fails ({last.reason})"
        if overtime:
            memory = replace(tick.memory, extended=-1)
            return Decision(Action.PAUSE, reason, memory, numbers, judged, changed)
        return tick.extend(index, reason, numbers)
    if not short:
        numbers.update(leaning=leaning[0].name, e_value=round(leaning[0].e_value, 3))
        return tick.extend(index, f"evidence leaning towards a breach ({leaning[0].name})", numbers)
    numbers.update(_needs(short, now - evidence.started))
    if overtime:
        memory = replace(tick.memory, extended=-1)
        return Decision(Action.PAUSE, "gate_inconclusive", memory, numbers, judged, changed)
    return tick.extend(index, "too little information", numbers)
