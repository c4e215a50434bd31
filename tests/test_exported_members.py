"""The public surface (style rule 1): each public module declares ``__all__``, every name in
it exists and is documented, and the package re-exports the main names."""

from __future__ import annotations

import importlib
import inspect

import pytest

PUBLIC = [
    "openfeature_canary",
    "openfeature_canary.bucketing",
    "openfeature_canary.plan",
    "openfeature_canary.clock",
    "openfeature_canary.signals",
    "openfeature_canary.instrumentation",
    "openfeature_canary.telemetry",
    "openfeature.contrib.provider.canary",
    "openfeature.contrib.hook.canary",
]


@pytest.mark.parametrize("name", PUBLIC)
def test_public_module_all_names_exist_and_are_documented(name: str) -> None:
    module = importlib.import_module(name)
    assert module.__doc__
    exported = module.__all__
    assert len(set(exported)) == len(exported)
    for attr in exported:
        obj = getattr(module, attr)
        if inspect.isclass(obj) or inspect.isfunction(obj):
            assert inspect.getdoc(obj), f"{name}.{attr} has no docstring"


def test_package_reexports_the_main_names() -> None:
    import openfeature_canary as oc

    for attr in (
        "load_plan",
        "bucket",
        "in_rollout",
        "ManualClock",
        "RolloutState",
        "Status",
        "CanaryError",
        "PlanError",
        "StateStoreError",
        "setup_telemetry",
        "InProcessSignalSource",
    ):
        assert attr in oc.__all__


def test_plugins_export_provider_and_hooks() -> None:
    from openfeature.contrib.hook.canary import MetricsHook, PolicyHook
    from openfeature.contrib.provider.canary import CanaryProvider

    assert CanaryProvider.__module__.startswith("openfeature.contrib.provider.canary")
    assert MetricsHook.__module__.startswith("openfeature.contrib.hook.canary")
    assert PolicyHook.__module__.startswith("openfeature.contrib.hook.canary")
