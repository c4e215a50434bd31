"""``PolicyHook``: keeps the canary policy evaluated and guards flags of any provider."""

from __future__ import annotations

import logging
import threading
from typing import Protocol, TypeAlias

from openfeature.exception import GeneralError
from openfeature.flag_evaluation import FlagEvaluationDetails, FlagValueType
from openfeature.hook import Hook, HookContext, HookHints

from openfeature_canary import Controller, Rollout, RolloutState, StateStoreError, Status
from openfeature_canary._forksafe import hold_locks_across_fork, renew_locks_after_fork
from openfeature_canary.policy import BackgroundRunner

__all__ = ["PolicyHook", "PolicyTarget", "ServesRollout"]

log = logging.getLogger("openfeature_canary")


class ServesRollout(Protocol):
    """What :class:`PolicyHook` needs of a provider: the :class:`Rollout` it serves
    (``CanaryProvider`` has one). A ``runner`` attribute holding the provider's
    :class:`BackgroundRunner`, when present, is shared instead of starting a second thread."""

    @property
    def rollout(self) -> Rollout:
        """The rollout whose flags the provider serves."""
        ...


#: What a :class:`PolicyHook` is built from: a rollout, one flag's controller, or a provider.
PolicyTarget: TypeAlias = Rollout | Controller | ServesRollout


class PolicyHook(Hook):
    """Ticks the policy when due and forces rolled-back flags to the caller's default.

    When to use it:

    - **In front of another provider** (flagd, an env-var provider, a vendor): our
      :class:`~openfeature.contrib.provider.canary.CanaryProvider` is not answering, so this
      hook is what turns a rollback into the old path — a rolled-back flag's evaluation raises
      in ``before`` and the SDK returns the caller's default (reason ``ERROR``, code ``GENERAL``,
      the trigger in the message). Give it a :class:`Rollout` (or a controller).
    - **With CanaryProvider** it is optional: the provider's own background thread ticks the
      policy every ``tick`` and its answers already follow rollbacks. Add the hook only when
      the background thread cannot be relied on (e.g. a worker that freezes idle threads) —
      each registered hook costs about 4 µs per evaluation in the SDK itself. Given the
      provider, the hook leaves that provider's answers alone (a rolled-back flag stays
      ``off`` / ``DISABLED``, whatever the caller's default) and guards only other providers.

    A due tick runs on the evaluating thread at most once per ``tick`` (a non-blocking lock:
    no evaluation ever waits for another's tick); a background thread covers idle times.

    >>> api.add_hooks([PolicyHook(rollout)])  # doctest: +SKIP
    """

    def __init__(
        self, target: PolicyTarget, *, background: bool = True, interval: float = 0.5
    ) -> None:
        rollout, runner, provider = _resolve(target)
        self.rollout: Rollout = rollout
        # Our CanaryProvider already serves a rolled-back flag as ``off``: refusing its
        # evaluation would hand out the caller's default instead (``True`` for some callers).
        # The SDK passes the answering provider's ``get_metadata()``, the same object each time.
        get_metadata = getattr(provider, "get_metadata", None)
        self._own_metadata: object = get_metadata() if callable(get_metadata) else object()
        self._clock = rollout.clock
        self._tick_s = min(c.flag.tick_s for c in rollout.controllers())
        self._next_due = float("-inf")
        self._lock = threading.Lock()
        self._track_lock = threading.Lock()
        # Fork safety: the tick lock may be held for a whole policy round (the fork does not
        # wait for it; the child gets a fresh one); a copy of ``_blocked`` is never half done
        # across a fork (a child that missed a rollback would not see it again).
        renew_locks_after_fork(self, "_lock")
        hold_locks_across_fork(self, "_track_lock")
        self._blocked: dict[str, str] = {}
        rollout.add_observer(lambda _old, new: self._track(new))
        for ctl in rollout.controllers():
            self._track(ctl.state)
        if provider is None:
            # A bare rollout has not read its store yet: read it now, so that a flag rolled
            # back before this process started is refused from the first evaluation.
            try:
                rollout.load()
            except StateStoreError as exc:
                log.error("openfeature-canary: PolicyHook cannot read the store yet: %s", exc)
        self._runner = runner
        self._own_runner = runner is None and background
        if self._own_runner:
            self._runner = BackgroundRunner(rollout, interval=interval)
            self._runner.start()

    def _track(self, state: RolloutState) -> None:
        # Copy-on-write so that ``before`` reads a dict nobody mutates under it. Listeners of
        # different flags run under different controller locks: without this lock two
        # concurrent transitions could each copy the old dict and one of them would be lost.
        with self._track_lock:
            blocked = dict(self._blocked)
            if state.status is Status.ROLLED_BACK:
                blocked[state.flag_key] = state.reason or "rolled back"
            else:
                blocked.pop(state.flag_key, None)
            self._blocked = blocked

    def before(self, hook_context: HookContext, hints: HookHints) -> None:
        """Refuse a rolled-back flag (the SDK then returns the caller's default)."""
        reason = self._blocked.get(hook_context.flag_key)
        if reason is not None and hook_context.provider_metadata is not self._own_metadata:
            raise GeneralError(
                f"{hook_context.flag_key} is rolled back by the canary policy ({reason})"
            )
        return None

    def finally_after(
        self,
        hook_context: HookContext,
        details: FlagEvaluationDetails[FlagValueType],
        hints: HookHints,
    ) -> None:
        """Run a due policy tick, unless another thread is already running one."""
        if self._clock.now() < self._next_due or not self._lock.acquire(blocking=False):
            return
        try:
            now = self._clock.now()
            if now < self._next_due:
                return
            self._next_due = now + self._tick_s
            if self.rollout.policy is None:
                return
            for ctl in self.rollout.controllers():
                # The schedule is the controller's, shared with the background runner, so a
                # flag is ticked once per period whoever gets there first.
                try:
                    ctl.tick_if_due()
                except Exception:  # one flag's failure must not starve the others
                    log.exception("openfeature-canary: policy tick of %s failed", ctl.key)
        finally:
            self._lock.release()

    def close(self) -> None:
        """Stop the hook's own background thread (if it started one)."""
        if self._own_runner and self._runner is not None:
            self._runner.stop()


def _resolve(target: PolicyTarget) -> tuple[Rollout, BackgroundRunner | None, object]:
    """(rollout, the provider's runner, the provider) for a provider; no runner otherwise."""
    if isinstance(target, Rollout):
        return target, None, None
    if isinstance(target, Controller):
        return target.rollout, None, None
    rollout = getattr(target, "rollout", None)
    if isinstance(rollout, Rollout):  # a CanaryProvider: it runs its own background thread
        runner = getattr(target, "runner", None)
        return rollout, runner if isinstance(runner, BackgroundRunner) else None, target
    raise TypeError(
        f"PolicyHook needs a CanaryProvider, a Rollout or a Controller, got {type(target).__name__}"
    )
