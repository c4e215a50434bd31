"""CanaryProvider through a real OpenFeature client: values, reasons, variants, metadata and
error codes (spec §8), the env override, the async path and configuration-changed events."""

from __future__ import annotations

import asyncio
import random
import threading
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

import pytest
from openfeature import api
from openfeature.client import OpenFeatureClient
from openfeature.contrib.provider.canary import CanaryProvider
from openfeature.evaluation_context import EvaluationContext
from openfeature.event import EventDetails, ProviderEvent
from openfeature.exception import ErrorCode
from openfeature.flag_evaluation import Reason

from openfeature_canary import ManualClock, RolloutPlan, Status, load_plan, parse_plan
from openfeature_canary.bucketing import in_rollout

F1 = "dataservice-read-canary"
F2 = "dataservice-user-read-canary"
ENV = "DATASERVICE_READ_CANARY"

MakeClient = Callable[..., tuple[CanaryProvider, OpenFeatureClient]]


@pytest.fixture
def plan(example_plan_path: Path) -> RolloutPlan:
    return load_plan(example_plan_path)


@pytest.fixture
def make_client(plan: RolloutPlan) -> Iterator[MakeClient]:
    """Register a CanaryProvider (ManualClock, given env) and return it with a client."""

    def make(
        environ: Mapping[str, str] | None = None, the_plan: RolloutPlan | None = None
    ) -> tuple[CanaryProvider, OpenFeatureClient]:
        provider = CanaryProvider(
            the_plan or plan, clock=ManualClock(start=1000.0), environ=environ or {}
        )
        api.set_provider_and_wait(provider)
        return provider, api.get_client()

    yield make


def _ctx(unit: str) -> EvaluationContext:
    return EvaluationContext(targeting_key=unit)


def _units(n: int, seed: int = 5) -> list[str]:
    rng = random.Random(seed)
    return [f"req-{rng.getrandbits(64):016x}" for _ in range(n)]


def _to_stage(provider: CanaryProvider, stage: int) -> None:
    ctl = provider.controller(F1)
    ctl.start()
    for _ in range(stage - 1):
        ctl.promote()


# ------------------------------------------------------------------ answers by stage


def test_provider_pending_flag_is_disabled_off(make_client: MakeClient) -> None:
    _, client = make_client()
    details = client.get_boolean_details(F1, True, _ctx("u-1"))
    assert (details.value, details.variant, details.reason) == (False, "off", Reason.DISABLED)
    assert details.error_code is None
    assert details.flag_metadata == {"stage": 0, "percent": 0.0, "status": "pending"}
    # No unit is needed when the answer does not depend on it.
    assert client.get_boolean_details(F1, True).reason == Reason.DISABLED


def test_provider_at_five_percent_splits_like_bucketing(make_client: MakeClient) -> None:
    provider, client = make_client()
    _to_stage(provider, 1)
    units = _units(10_000)
    answers = {}
    for unit in units:
        details = client.get_boolean_details(F1, False, _ctx(unit))
        assert details.reason == Reason.SPLIT
        assert details.variant == ("on" if details.value else "off")
        assert details.flag_metadata == {"stage": 1, "percent": 5.0, "status": "running"}
        answers[unit] = details.value
    assert answers == {u: in_rollout(F1, u, 5) for u in units}
    share = sum(answers.values()) / len(units)
    assert share == pytest.approx(0.05, abs=0.006)
    # Same unit, same answer, whatever the caller's default.
    assert all(client.get_boolean_value(F1, True, _ctx(u)) is answers[u] for u in units[:200])


def test_provider_at_hundred_percent_is_static_on(make_client: MakeClient) -> None:
    provider, client = make_client()
    _to_stage(provider, 4)
    details = client.get_boolean_details(F1, False, _ctx("u-1"))
    assert (details.value, details.variant, details.reason) == (True, "on", Reason.STATIC)
    assert details.flag_metadata == {"stage": 4, "percent": 100.0, "status": "running"}
    provider.controller(F1).promote()
    completed = client.get_boolean_details(F1, False)
    assert (completed.value, completed.reason) == (True, Reason.STATIC)
    assert completed.flag_metadata["status"] == "completed"


def test_provider_paused_stage_keeps_serving_its_percent(make_client: MakeClient) -> None:
    provider, client = make_client()
    _to_stage(provider, 2)
    provider.controller(F1).pause()
    units = _units(500)
    got = [client.get_boolean_value(F1, False, _ctx(u)) for u in units]
    assert got == [in_rollout(F1, u, 25) for u in units]
    assert client.get_boolean_details(F1, False, _ctx("x")).flag_metadata["status"] == "paused"


def test_provider_rolled_back_is_disabled_with_trigger(make_client: MakeClient) -> None:
    provider, client = make_client()
    _to_stage(provider, 2)
    provider.controller(F1).rollback("p95_breach")
    for unit in _units(300):
        details = client.get_boolean_details(F1, True, _ctx(unit))
        assert (details.value, details.variant, details.reason) == (False, "off", Reason.DISABLED)
    assert details.flag_metadata == {
        "stage": 0,
        "percent": 0.0,
        "status": "rolled_back",
        "trigger": "p95_breach",
    }


# ------------------------------------------------------------------ errors


def test_provider_unknown_flag_returns_default_with_flag_not_found(
    make_client: MakeClient,
) -> None:
    _, client = make_client()
    for default in (True, False):
        details = client.get_boolean_details("nope", default, _ctx("u"))
        assert (details.value, details.reason) == (default, Reason.ERROR)
        assert details.error_code == ErrorCode.FLAG_NOT_FOUND
        assert "nope" in (details.error_message or "")
    assert client.get_string_details("nope", "x").error_code == ErrorCode.FLAG_NOT_FOUND


@pytest.mark.parametrize(
    ("getter", "default"),
    [
        ("get_string_details", "old"),
        ("get_integer_details", 7),
        ("get_float_details", 0.5),
        ("get_object_details", {"a": 1}),
    ],
)
def test_provider_non_boolean_type_returns_default_with_type_mismatch(
    make_client: MakeClient, getter: str, default: Any
) -> None:
    provider, client = make_client()
    _to_stage(provider, 1)
    details = getattr(client, getter)(F1, default, _ctx("u-1"))
    assert (details.value, details.reason) == (default, Reason.ERROR)
    assert details.error_code == ErrorCode.TYPE_MISMATCH
    assert "boolean" in (details.error_message or "")


@pytest.mark.parametrize("context", [None, EvaluationContext(), EvaluationContext("")])
@pytest.mark.parametrize("default", [True, False])
def test_provider_missing_key_at_split_returns_default_with_targeting_key_missing(
    make_client: MakeClient, context: EvaluationContext | None, default: bool
) -> None:
    provider, client = make_client()
    _to_stage(provider, 1)
    details = client.get_boolean_details(F1, default, context)
    assert (details.value, details.variant, details.reason) == (default, None, Reason.ERROR)
    assert details.error_code == ErrorCode.TARGETING_KEY_MISSING
    assert "targeting key" in (details.error_message or "")


def test_provider_buckets_by_context_attribute(make_client: MakeClient) -> None:
    the_plan = parse_plan(
        {
            "flags": {
                "f": {
                    "bucket_by": "user_id",
                    "stages": [{"percent": 30, "duration": "10m"}],
                }
            }
        }
    )
    provider, client = make_client(the_plan=the_plan)
    provider.controller("f").start()
    units = _units(400)
    # The targeting key (a per-request id) is ignored: all requests of a user agree.
    got = [
        client.get_boolean_value("f", False, EvaluationContext(f"r-{i}", {"user_id": u}))
        for i, u in enumerate(units)
    ]
    assert got == [in_rollout("f", u, 30) for u in units]
    assert client.get_boolean_value("f", False, EvaluationContext("r", {"user_id": 42})) is (
        in_rollout("f", "42", 30)
    )
    missing = client.get_boolean_details("f", True, EvaluationContext("r-1", {"tenant": "t"}))
    assert (missing.value, missing.error_code) == (True, ErrorCode.TARGETING_KEY_MISSING)
    assert "context attribute 'user_id'" in (missing.error_message or "")


@pytest.mark.parametrize(
    ("unit", "what"),
    [(True, "a bool"), ([1, 2], "a list"), ({"id": 1}, "a dict")],
)
def test_provider_unit_attribute_neither_text_nor_number_answers_invalid_context(
    make_client: MakeClient, unit: object, what: str
) -> None:
    the_plan = parse_plan(
        {"flags": {"f": {"bucket_by": "user_id", "stages": [{"percent": 30, "duration": "1m"}]}}}
    )
    provider, client = make_client(the_plan=the_plan)
    provider.controller("f").start()
    details = client.get_boolean_details("f", True, EvaluationContext("r", {"user_id": unit}))
    assert (details.value, details.reason) == (True, Reason.ERROR)  # the caller's default
    assert details.error_code == ErrorCode.INVALID_CONTEXT
    assert f"context attribute 'user_id', which is {what}" in (details.error_message or "")
    # A number is a unit (its decimal text, as before); so is text.
    assert client.get_boolean_value("f", False, EvaluationContext("r", {"user_id": 7})) is (
        in_rollout("f", "7", 30)
    )


def test_provider_cbor_scheme_matches_cbor_bucketing(make_client: MakeClient) -> None:
    the_plan = parse_plan(
        {"flags": {"f": {"scheme": "flagd-cbor", "stages": [{"percent": 50, "duration": "1m"}]}}}
    )
    provider, client = make_client(the_plan=the_plan)
    provider.controller("f").start()
    units = _units(400)
    got = [client.get_boolean_value("f", False, _ctx(u)) for u in units]
    assert got == [in_rollout("f", u, 50, "flagd-cbor") for u in units]
    assert got != [in_rollout("f", u, 50, "flagd") for u in units]


# ------------------------------------------------------------------ env override


@pytest.mark.parametrize("raw", ["abc", "150", "-1", "", "nan"])
@pytest.mark.parametrize("default", [True, False])
def test_provider_bad_env_override_returns_default_with_parse_error(
    make_client: MakeClient, raw: str, default: bool
) -> None:
    provider, client = make_client({ENV: raw})
    _to_stage(provider, 3)
    details = client.get_boolean_details(F1, default, _ctx("u-1"))
    assert (details.value, details.reason) == (default, Reason.ERROR)
    assert details.error_code == ErrorCode.PARSE_ERROR
    assert ENV in (details.error_message or "")
    assert repr(raw) in (details.error_message or "")
    # The other flag has no override and is unaffected.
    assert client.get_boolean_details(F2, True, _ctx("u-1")).error_code is None


def test_provider_env_zero_pins_off_while_controller_at_fifty(make_client: MakeClient) -> None:
    provider, client = make_client({ENV: "0"})
    _to_stage(provider, 3)
    assert provider.controller(F1).state.percent == 50.0
    for unit in _units(300):
        details = client.get_boolean_details(F1, True, _ctx(unit))
        assert (details.value, details.variant, details.reason) == (False, "off", Reason.DISABLED)
    assert details.flag_metadata == {
        "stage": 3,
        "percent": 0.0,
        "status": "running",
        "override": ENV,
    }


def test_provider_env_hundred_serves_on(make_client: MakeClient) -> None:
    _, client = make_client({ENV: "100"})
    details = client.get_boolean_details(F1, False, _ctx("u-1"))
    assert (details.value, details.variant, details.reason) == (True, "on", Reason.STATIC)
    assert details.flag_metadata["override"] == ENV


def test_provider_env_twenty_five_splits_at_twenty_five(make_client: MakeClient) -> None:
    provider, client = make_client({ENV: " 25 "})
    _to_stage(provider, 1)
    units = _units(500)
    assert [client.get_boolean_value(F1, False, _ctx(u)) for u in units] == [
        in_rollout(F1, u, 25) for u in units
    ]


def test_provider_env_override_never_undoes_a_rollback(make_client: MakeClient) -> None:
    provider, client = make_client({ENV: "100"})
    _to_stage(provider, 1)
    provider.controller(F1).rollback("ledger_mismatch")
    details = client.get_boolean_details(F1, True, _ctx("u-1"))
    assert (details.value, details.reason) == (False, Reason.DISABLED)
    assert details.flag_metadata["trigger"] == "ledger_mismatch"


def test_provider_env_change_is_picked_up_by_the_next_poll(make_client: MakeClient) -> None:
    environ = {ENV: "0"}
    provider, client = make_client(environ)
    _to_stage(provider, 3)
    assert client.get_boolean_details(F1, True, _ctx("u")).reason == Reason.DISABLED
    environ[ENV] = "100"
    provider.runner.run_once()
    assert client.get_boolean_details(F1, False, _ctx("u")).reason == Reason.STATIC


# ------------------------------------------------------------------ async and events


def test_provider_async_client_gives_same_answers(make_client: MakeClient) -> None:
    provider, client = make_client()
    _to_stage(provider, 2)
    units = _units(200)

    async def evaluate() -> list[bool]:
        return [await client.get_boolean_value_async(F1, False, _ctx(u)) for u in units]

    assert asyncio.run(evaluate()) == [in_rollout(F1, u, 25) for u in units]

    async def missing() -> Any:
        return await client.get_boolean_details_async(F1, True)

    details = asyncio.run(missing())
    assert (details.value, details.error_code) == (True, ErrorCode.TARGETING_KEY_MISSING)


def test_provider_emits_configuration_changed_on_start_promote_rollback(
    make_client: MakeClient,
) -> None:
    provider, _ = make_client()
    events: list[EventDetails] = []
    arrived = threading.Event()
    lock = threading.Lock()

    def on_change(details: EventDetails) -> None:
        with lock:
            events.append(details)
            arrived.set()

    api.add_handler(ProviderEvent.PROVIDER_CONFIGURATION_CHANGED, on_change)
    ctl = provider.controller(F1)
    for command in (ctl.start, ctl.promote, lambda: ctl.rollback("error_rate_breach")):
        arrived.clear()
        before = len(events)
        command()
        assert arrived.wait(5), "no PROVIDER_CONFIGURATION_CHANGED within 5 s"
        with lock:
            assert [e.flags_changed for e in events[before:]] == [[F1]]
    assert provider.view(F1).status is Status.ROLLED_BACK
    # A command that changes nothing served emits nothing.
    arrived.clear()
    provider.runner.run_once()
    assert not arrived.wait(0.2)
