"""The public surface (style rule 1): each public module declares ``__all__``, every name in
it exists and is documented, the package re-exports what the README and docs make a user touch
(and not the engine's internals), every type a public signature, a public type alias or a public
dataclass field names is importable from a public module, and every exported class's bases are
public too."""

from __future__ import annotations

import dataclasses
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
    "openfeature_canary.signals.prometheus",
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
        # What the README and docs/telemetry.md, docs/signals.md, docs/stores.md have users touch.
        "CanaryMiddleware",
        "record_request",
        "shadow_compare",
        "EventLoopLagMonitor",
        "PrometheusSignalSource",
        "open_store",
        "RedisStateStore",
    ):
        assert attr in oc.__all__
        assert getattr(oc, attr) is not None


@pytest.mark.parametrize(("name", "home"), [("Pipeline", "policy"), ("ALLOWED", "policy")])
def test_package_root_keeps_internals_in_their_subpackage(name: str, home: str) -> None:
    import openfeature_canary as oc

    assert name not in oc.__all__
    assert hasattr(importlib.import_module(f"openfeature_canary.{home}"), name)


def test_every_error_is_in_one_tree() -> None:
    """Every exception class of a public module derives from ``CanaryError`` and is exported by
    ``openfeature_canary.errors`` (its docstring draws the tree)."""
    from openfeature_canary import errors

    for name in PUBLIC:
        module = importlib.import_module(name)
        for attr in module.__all__:
            obj = getattr(module, attr)
            if inspect.isclass(obj) and issubclass(obj, BaseException):
                assert issubclass(obj, errors.CanaryError), f"{name}.{attr}"
                assert getattr(errors, obj.__name__, None) is obj, f"{name}.{attr}"
                assert obj.__name__ in (errors.__doc__ or ""), f"{attr} not drawn in the tree"


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


_OURS = ("openfeature_canary", "openfeature.contrib.provider.canary", "openfeature.contrib.hook")


def _our_classes_in(hint: object) -> Iterator[type]:
    if inspect.isclass(hint) and hint.__module__.startswith(_OURS):
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


def _hints(fn: object, public: set[type]) -> dict[str, object]:
    # Names imported only for type checking resolve among the public classes; the SDKs' own
    # forward references among their modules' names.
    namespace = (
        vars(openfeature.hook)
        | vars(opentelemetry.util.types)
        | {c.__name__: c for c in public}
        | vars(inspect.getmodule(fn))
    )
    return typing.get_type_hints(fn, globalns=namespace)


def _aliases() -> Iterator[tuple[str, object]]:
    """Every exported type alias (``X: TypeAlias = A | B``, ``Literal[…]``, ``Callable[…]``)."""
    for name in PUBLIC:
        module = importlib.import_module(name)
        for attr in module.__all__:
            obj = getattr(module, attr)
            if not inspect.isclass(obj) and typing.get_args(obj):
                yield f"{name}.{attr}", obj


def test_public_type_aliases_name_only_public_types() -> None:
    public = _public_classes()
    private = [
        f"{where}: {c.__module__}.{c.__qualname__}"
        for where, alias in _aliases()
        for c in _our_classes_in(alias)
        if c not in public
    ]
    assert sorted(set(private)) == []


def test_type_alias_check_sees_aliases() -> None:
    """The alias check has something to check: the hook's target is a union alias."""
    assert "openfeature.contrib.hook.canary.PolicyTarget" in dict(_aliases())


def test_exported_classes_have_only_public_bases() -> None:
    """A public class derives from public classes only (no ``_SnapshotReads``-style private
    base a user would meet in ``help()`` and could not import)."""
    public = _public_classes()
    private = [
        f"{cls.__module__}.{cls.__qualname__}: base {base.__module__}.{base.__qualname__}"
        for cls in public
        for base in cls.__mro__[1:]
        if base.__module__.startswith(_OURS) and base not in public
    ]
    assert sorted(set(private)) == []


def test_public_dataclass_fields_name_only_public_types() -> None:
    public = _public_classes()
    private = [
        f"{cls.__qualname__}.{field}: {c.__module__}.{c.__qualname__}"
        for cls in public
        if dataclasses.is_dataclass(cls)
        for field, hint in _hints(cls, public).items()
        for c in _our_classes_in(hint)
        if c not in public
    ]
    assert sorted(set(private)) == []


def test_public_signatures_use_only_public_types() -> None:
    public = _public_classes()
    private: list[str] = []
    for name in PUBLIC:
        module = importlib.import_module(name)
        for attr in module.__all__:
            for where, fn in _signatures(getattr(module, attr)):
                for hint in _hints(fn, public).values():
                    private += [
                        f"{where}: {c.__module__}.{c.__qualname__}"
                        for c in _our_classes_in(hint)
                        if c not in public
                    ]
    assert sorted(set(private)) == []
