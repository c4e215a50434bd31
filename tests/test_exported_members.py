"""The public surface (style rule 1): each public module declares ``__all__``, every name in
it exists and is documented, the package re-exports the main names, and every type a public
signature takes or returns is importable from a public module."""

from __future__ import annotations

import importlib
import inspect
import typing
from collections.abc import Iterator

import openfeature.hook
import opentelemetry.util.types
import pytest

PUBLIC = [
    "openfeature_canary",
    "openfeature_canary.bucketing",
    "openfeature_canary.plan",
    "openfeature_canary.clock",
    "openfeature_canary.signals",
    "openfeature_canary.instrumentation",
    "openfeature_canary.telemetry",
    "openfeature_canary.state",
    "openfeature_canary.evidence",
    "openfeature_canary.flagd_export",
    "openfeature_canary.errors",
    "openfeature_canary.policy",
    "openfeature_canary.events",
    "openfeature_canary.stores",
    "openfeature_canary.cli",
    "openfeature_canary.demo",
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


def _public_classes() -> set[type]:
    found: set[type] = set()
    for name in PUBLIC:
        module = importlib.import_module(name)
        found |= {o for o in (getattr(module, a) for a in module.__all__) if inspect.isclass(o)}
    return found


def _our_classes_in(hint: object) -> Iterator[type]:
    if inspect.isclass(hint) and hint.__module__.startswith(
        ("openfeature_canary", "openfeature.contrib.provider.canary", "openfeature.contrib.hook")
    ):
        yield hint
    for arg in typing.get_args(hint):
        yield from _our_classes_in(arg)


def _signatures(obj: object) -> Iterator[tuple[str, object]]:
    if inspect.isfunction(obj):
        yield obj.__qualname__, obj
    elif inspect.isclass(obj):
        for attr, member in vars(obj).items():
            if attr.startswith("_") and attr != "__init__":
                continue
            if isinstance(member, property) and member.fget is not None:
                yield f"{obj.__qualname__}.{attr}", member.fget
            elif isinstance(member, (staticmethod, classmethod)):
                yield f"{obj.__qualname__}.{attr}", member.__func__
            elif inspect.isfunction(member):
                yield f"{obj.__qualname__}.{attr}", member


def test_public_signatures_use_only_public_types() -> None:
    public = _public_classes()
    private: list[str] = []
    for name in PUBLIC:
        module = importlib.import_module(name)
        for attr in module.__all__:
            for where, fn in _signatures(getattr(module, attr)):
                # Names imported only for type checking resolve among the public classes; the
                # SDKs' own forward references among their modules' names.
                namespace = (
                    vars(openfeature.hook)
                    | vars(opentelemetry.util.types)
                    | {c.__name__: c for c in public}
                    | vars(inspect.getmodule(fn))
                )
                hints = typing.get_type_hints(fn, globalns=namespace)
                for hint in hints.values():
                    private += [
                        f"{where}: {c.__module__}.{c.__qualname__}"
                        for c in _our_classes_in(hint)
                        if c not in public
                    ]
    assert sorted(set(private)) == []
