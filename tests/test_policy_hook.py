"""PolicyHook (spec §9): guards any provider's rolled-back flags and keeps the policy ticking.

Everything is real: the OpenFeature SDK's client and its ``InMemoryProvider`` (standing for
flagd, an env-var provider, a vendor), ``Rollout`` over memory and ``file://`` stores, our
``CanaryProvider``, and another process (the CLI) acting on a shared store.
"""

from __future__ import annotations

import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from openfeature import api
from openfeature.client import OpenFeatureClient
from openfeature.contrib.hook.canary import PolicyHook
from openfeature.contrib.provider.canary import CanaryProvider
from openfeature.evaluation_context import EvaluationContext
from openfeature.exception import ErrorCode
from openfeature.flag_evaluation import FlagEvaluationDetails, Reason
from openfeature.provider.in_memory_provider import InMemoryFlag, InMemoryProvider

from openfeature_canary import (
    Controller,
    ManualClock,
    Rollout,
    RolloutPlan,
    RolloutState,
    load_plan,
)

EXAMPLE = Path(__file__).resolve().parent.parent / "examples" / "canary_plan.toml"
FLAG = "dataservice-read-canary"
PHASE2 = "dataservice-user-read-canary"
OTHER = "checkout-redesign"  # served by the foreign provider, not in the plan
RUNNER_THREAD = "openfeature-canary-runner"


@pytest.fixture(scope="module")
def plan() -> RolloutPlan:
    return load_plan(EXAMPLE)


@pytest.fixture
def hooks() -> Iterator[list[PolicyHook]]:
    made: list[PolicyHook] = []
    yield made
    for hook in made:
        hook.close()


def foreign_client() -> OpenFeatureClient:
    """A foreign provider that serves every flag as ``on`` for everyone."""
    on = InMemoryFlag("on", {"on": True, "off": False})
    api.set_provider_and_wait(InMemoryProvider({FLAG: on, PHASE2: on, OTHER: on}))
    return api.get_client()


def details(client: OpenFeatureClient, flag: str, unit: str = "u-1") -> FlagEvaluationDetails[bool]:
    return client.get_boolean_details(flag, False, EvaluationContext(targeting_key=unit))


def wait_until(done: Callable[[], bool], timeout_s: float = 5.0) -> bool:
    deadline = time.monotonic() + timeout_s
    pause = threading.Event()
    while time.monotonic() < deadline:
        if done():
            return True
        pause.wait(0.02)
    return done()


def runner_threads() -> int:
    return sum(t.name == RUNNER_THREAD and t.is_alive() for t in threading.enumerate())


def cli(*args: str, cwd: Path) -> None:
    """Run the command line in another process."""
    code = "from openfeature_canary.cli._main import main; raise SystemExit(main())"
    done = subprocess.run(
        [sys.executable, "-c", code, *args, "--plan", str(EXAMPLE)],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr


# --------------------------------------------------------------------------- foreign provider


def test_policy_hook_foreign_provider_running_flag_serves_provider_value(
    plan: RolloutPlan, hooks: list[PolicyHook]
) -> None:
    rollout = Rollout(plan, clock=ManualClock())
    rollout.controller(FLAG).start()
    hook = PolicyHook(rollout, background=False)
    hooks.append(hook)
    client = foreign_client()
    api.add_hooks([hook])

    got = details(client, FLAG)

    assert (got.value, got.variant, got.reason, got.error_code) == (
        True,
        "on",
        Reason.STATIC,
        None,
    )


def test_policy_hook_foreign_provider_rolled_back_flag_gets_default_in_every_thread(
    plan: RolloutPlan, hooks: list[PolicyHook]
) -> None:
    rollout = Rollout(plan, clock=ManualClock())
    ctl = rollout.controller(FLAG)
    ctl.start()
    hook = PolicyHook(rollout, background=False)
    hooks.append(hook)
    client = foreign_client()
    api.add_hooks([hook])

    ctl.rollback("p95_breach")

    answers: list[tuple[object, ...]] = []
    lock = threading.Lock()

    def evaluate(n: int) -> None:
        mine = []
        for i in range(250):
            d = details(client, FLAG, f"u-{n}-{i}")
            mine.append((d.value, d.reason, d.error_code, "p95_breach" in (d.error_message or "")))
        with lock:
            answers.extend(mine)

    threads = [threading.Thread(target=evaluate, args=(n,)) for n in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=30)
    assert len(answers) == 2000
    assert set(answers) == {(False, Reason.ERROR, ErrorCode.GENERAL, True)}
    # Other flags, in the plan or not, keep the provider's answer.
    assert (details(client, PHASE2).value, details(client, PHASE2).reason) == (True, Reason.STATIC)
    assert (details(client, OTHER).value, details(client, OTHER).reason) == (True, Reason.STATIC)

    ctl.reset()

    after_reset = details(client, FLAG)
    assert (after_reset.value, after_reset.reason, after_reset.error_code) == (
        True,
        Reason.STATIC,
        None,
    )


def test_policy_hook_foreign_provider_caller_default_wins_whatever_it_is(
    plan: RolloutPlan, hooks: list[PolicyHook]
) -> None:
    rollout = Rollout(plan, clock=ManualClock())
    rollout.controller(FLAG).start()
    rollout.controller(FLAG).rollback("ledger_mismatch")
    hook = PolicyHook(rollout.controller(FLAG), background=False)  # a controller works too
    hooks.append(hook)
    client = foreign_client()
    api.add_hooks([hook])

    got = client.get_boolean_details(FLAG, True, EvaluationContext("u-1"))

    assert (got.value, got.reason) == (True, Reason.ERROR)
    assert got.error_message is not None and "ledger_mismatch" in got.error_message


def test_policy_hook_rollback_in_another_process_is_noticed_by_its_own_runner(
    plan: RolloutPlan, hooks: list[PolicyHook], tmp_path: Path
) -> None:
    store = f"file://{tmp_path}/state.json"
    rollout = Rollout(plan, store=store, clock=ManualClock())
    rollout.controller(FLAG).start()
    hook = PolicyHook(rollout, interval=0.02)
    hooks.append(hook)
    client = foreign_client()
    api.add_hooks([hook])
    assert details(client, FLAG).value is True

    cli("rollback", FLAG, "--reason", "error_rate_breach", "--store", store, cwd=tmp_path)

    assert wait_until(lambda: details(client, FLAG).reason == Reason.ERROR)
    got = details(client, FLAG)
    assert got.value is False
    assert got.error_message is not None and "error_rate_breach" in got.error_message
    assert details(client, PHASE2).value is True

    cli("reset", FLAG, "--store", store, cwd=tmp_path)

    assert wait_until(lambda: details(client, FLAG).reason == Reason.STATIC)
    assert details(client, FLAG).value is True


def test_policy_hook_rollback_in_another_process_run_once_blocks_at_once(
    plan: RolloutPlan, hooks: list[PolicyHook], tmp_path: Path
) -> None:
    store = f"file://{tmp_path}/state.json"
    rollout = Rollout(plan, store=store, clock=ManualClock())
    rollout.controller(FLAG).start()
    hook = PolicyHook(rollout, interval=3600)  # its thread will not wake up during the test
    hooks.append(hook)
    client = foreign_client()
    api.add_hooks([hook])
    other = Rollout(plan, store=store, clock=ManualClock())  # as a second process sees it

    other.controller(FLAG).rollback("telemetry_acceptance")
    assert details(client, FLAG).value is True  # not noticed yet: nothing polled the store
    assert hook._runner is not None
    hook._runner.run_once()

    got = details(client, FLAG)
    assert (got.value, got.reason) == (False, Reason.ERROR)
    assert got.error_message is not None and "telemetry_acceptance" in got.error_message


def test_policy_hook_reopened_store_loaded_refuses_flag_rolled_back_before(
    plan: RolloutPlan, hooks: list[PolicyHook], tmp_path: Path
) -> None:
    store = f"file://{tmp_path}/state.json"
    earlier = Rollout(plan, store=store, clock=ManualClock())  # a process that ran before
    earlier.controller(FLAG).start()
    earlier.controller(FLAG).rollback("ledger_mismatch")
    rollout = Rollout(plan, store=store, clock=ManualClock())
    rollout.load()  # building a rollout reads nothing; the service loads it first
    hook = PolicyHook(rollout, background=False)
    hooks.append(hook)
    client = foreign_client()
    api.add_hooks([hook])

    got = details(client, FLAG)

    assert (got.value, got.reason, got.error_code) == (False, Reason.ERROR, ErrorCode.GENERAL)
    assert got.error_message is not None and "ledger_mismatch" in got.error_message


# --------------------------------------------------------------------------- ticking


class CountingPolicy:
    """A policy (the ``Policy`` protocol) that records when it is asked about ``flag`` and
    decides nothing; ``during`` runs inside that decision (e.g. to make it slow)."""

    def __init__(self, flag: str = FLAG, during: Callable[[], None] | None = None) -> None:
        self.flag = flag
        self.during = during
        self.calls: list[float] = []

    def decide(self, ctl: Controller, now: float) -> RolloutState | None:
        if ctl.key == self.flag:
            self.calls.append(now)
            if self.during is not None:
                self.during()
        return None

    def baseline_loud(self, ctl: Controller, now: float) -> list[str]:
        return []


def test_policy_hook_due_tick_runs_once_per_tick_period(
    plan: RolloutPlan, hooks: list[PolicyHook]
) -> None:
    clock = ManualClock(start=0.0)
    policy = CountingPolicy()
    calls = policy.calls
    rollout = Rollout(plan, clock=clock, policy=policy)
    hook = PolicyHook(rollout, background=False)  # only evaluations tick
    hooks.append(hook)
    client = foreign_client()
    api.add_hooks([hook])

    def evaluate(times: int) -> None:
        for i in range(times):
            details(client, FLAG, f"u-{i}")

    evaluate(50)
    assert calls == [0.0]
    clock.advance(5)
    evaluate(50)
    assert calls == [0.0]  # tick is 10 s: not due yet
    clock.advance(5)
    evaluate(50)
    assert calls == [0.0, 10.0]
    clock.advance(25)  # two and a half periods idle: one catch-up tick, not three
    evaluate(50)
    assert calls == [0.0, 10.0, 35.0]

    clock.advance(10)
    threads = [threading.Thread(target=evaluate, args=(100,)) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=30)
    assert calls == [0.0, 10.0, 35.0, 45.0]  # eight threads, one due period: one tick


def test_policy_hook_rolled_back_flag_still_ticks_the_policy(
    plan: RolloutPlan, hooks: list[PolicyHook]
) -> None:
    clock = ManualClock(start=0.0)
    policy = CountingPolicy()
    calls = policy.calls
    rollout = Rollout(plan, clock=clock, policy=policy)
    rollout.controller(FLAG).rollback("p95_breach")
    hook = PolicyHook(rollout, background=False)
    hooks.append(hook)
    client = foreign_client()
    api.add_hooks([hook])

    assert details(client, FLAG).reason == Reason.ERROR
    clock.advance(10)
    assert details(client, FLAG).reason == Reason.ERROR

    assert calls == [0.0, 10.0]


def test_policy_hook_tick_in_progress_never_blocks_other_evaluations(
    plan: RolloutPlan, hooks: list[PolicyHook]
) -> None:
    clock = ManualClock(start=0.0)
    entered, release = threading.Event(), threading.Event()

    def slow() -> None:
        entered.set()
        release.wait(10)

    policy = CountingPolicy(during=slow)
    calls = policy.calls
    rollout = Rollout(plan, clock=clock, policy=policy)
    hook = PolicyHook(rollout, background=False)
    hooks.append(hook)
    client = foreign_client()
    api.add_hooks([hook])
    ticking = threading.Thread(target=details, args=(client, FLAG))
    ticking.start()
    try:
        assert entered.wait(5)
        clock.advance(60)  # another tick is due, but one is still running

        slowest = 0.0
        begin = time.perf_counter()
        for i in range(200):
            t0 = time.perf_counter()
            assert details(client, FLAG, f"u-{i}").value is True
            slowest = max(slowest, time.perf_counter() - t0)
        total = time.perf_counter() - begin

        assert calls == [0.0]  # nobody else ticked, nobody waited for the lock
        assert slowest < 0.25 and total < 1.0, (slowest, total)
    finally:
        release.set()
        ticking.join(timeout=10)
    details(client, FLAG)
    assert calls == [0.0, 60.0]  # the lock is free again: the due tick runs


# --------------------------------------------------------------------------- with CanaryProvider


def test_policy_hook_with_canary_provider_reuses_its_runner(
    plan: RolloutPlan, hooks: list[PolicyHook]
) -> None:
    before = runner_threads()
    provider = CanaryProvider(plan, clock=ManualClock(), refresh_interval=0.05)
    api.set_provider_and_wait(provider)
    assert runner_threads() == before + 1

    hook = PolicyHook(provider)
    hooks.append(hook)

    assert hook.rollout is provider.rollout
    assert hook._runner is provider.runner
    assert runner_threads() == before + 1
    hook.close()  # not the hook's thread: the provider's keeps running
    assert provider.runner.running
    provider.shutdown()
    assert wait_until(lambda: runner_threads() == before)


def test_policy_hook_with_canary_provider_keeps_its_rolled_back_answer(
    plan: RolloutPlan, hooks: list[PolicyHook]
) -> None:
    provider = CanaryProvider(plan, clock=ManualClock(), background=False)
    api.set_provider_and_wait(provider)
    hook = PolicyHook(provider)
    hooks.append(hook)
    api.add_hooks([hook])
    provider.controller(FLAG).start()
    provider.controller(FLAG).rollback("p95_breach")

    got = api.get_client().get_boolean_details(FLAG, True, EvaluationContext("u-1"))

    # The provider's off/DISABLED, not the caller's default True with an ERROR.
    assert (got.value, got.variant, got.reason, got.error_code) == (
        False,
        "off",
        Reason.DISABLED,
        None,
    )
    assert got.flag_metadata["trigger"] == "p95_breach"


def test_policy_hook_with_canary_provider_still_guards_a_foreign_domain(
    plan: RolloutPlan, hooks: list[PolicyHook]
) -> None:
    provider = CanaryProvider(plan, clock=ManualClock(), background=False)
    api.set_provider_and_wait(provider)
    on = InMemoryFlag("on", {"on": True, "off": False})
    api.set_provider_and_wait(InMemoryProvider({FLAG: on}), domain="vendor")
    hook = PolicyHook(provider)
    hooks.append(hook)
    api.add_hooks([hook])
    provider.controller(FLAG).start()
    provider.controller(FLAG).rollback("p95_breach")

    got = details(api.get_client(domain="vendor"), FLAG)

    assert (got.value, got.reason) == (False, Reason.ERROR)


@pytest.mark.parametrize(
    "target",
    [
        pytest.param(lambda p: InMemoryProvider({}), id="foreign-provider"),
        pytest.param(lambda p: p, id="plan"),
        pytest.param(lambda p: str(EXAMPLE), id="path"),
        pytest.param(lambda p: None, id="none"),
    ],
)
def test_policy_hook_wrong_target_raises_type_error(
    plan: RolloutPlan, target: Callable[[RolloutPlan], object]
) -> None:
    wrong = target(plan)
    with pytest.raises(TypeError, match=type(wrong).__name__):
        PolicyHook(wrong)


def test_policy_hook_close_stops_its_own_thread(plan: RolloutPlan) -> None:
    before = runner_threads()
    hook = PolicyHook(Rollout(plan, clock=ManualClock()), interval=0.05)
    assert runner_threads() == before + 1
    assert hook._runner is not None and hook._runner.running

    hook.close()

    assert not hook._runner.running
    assert runner_threads() == before


def test_policy_hook_background_false_starts_no_thread(plan: RolloutPlan) -> None:
    before = runner_threads()
    hook = PolicyHook(Rollout(plan, clock=ManualClock()), background=False)
    assert runner_threads() == before
    hook.close()  # nothing to stop, and no error
