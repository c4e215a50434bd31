"""The current rollout state as a flagd flag definition with the same cohorts.

flagd (and its in-process providers) split traffic with the ``fractional`` operator, the same
murmur3 bucketing as :mod:`openfeature_canary.bucketing`. This module writes each flag of a
plan, at its current state, as a flagd flag whose ``fractional`` weights are the flag's percent
in basis points out of 10 000: ``(hash * 10000) >> 32 < basis_points`` is exactly the test
``CanaryProvider`` applies, so every unit gets the same answer from flagd as from the provider.

>>> definition = flagd_definition(plan, states)         # doctest: +SKIP
>>> write_flagd_file(Path("flags.flagd.json"), definition)  # doctest: +SKIP

What is hashed depends on the evaluator, so the scheme is named (see docs/bucketing.md):

- ``"flagd"``: flagd since 0.15 (Go, ``core/pkg/evaluator/fractional.go``) and flagd-core 1.x
  hash the string ``flagKey + targetingKey``;
- ``"flagd-cbor"``: flagd-core 2.x hashes the canonical CBOR of ``[flagKey, targetingKey]``.

A definition is read by one evaluator, so every exported flag must bucket with the scheme the
file is written for; a flag that does not is refused (its units would move).

Each flag has the variants ``on: true`` and ``off: false``. At 0 % (pending, rolled back) it
answers ``off`` to everyone and at 100 % ``on`` to everyone (no targeting: flagd's reason is
``STATIC``); in between, ``defaultVariant`` is ``off``, so a unit flagd cannot bucket (no
targeting key) gets the old path. The flag's ``metadata`` carries the provider's ``stage``,
``percent`` and ``status`` (and ``trigger`` after a rollback), the state version and the
scheme. A plan's ``env_override`` is process-local (one process's environment) and is not
exported; the flag's metadata names the variable so that nobody expects it to act in flagd.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Final

from openfeature_canary._atomicfile import atomic_write_text
from openfeature_canary.bucketing import SCHEMES, Scheme
from openfeature_canary.errors import PlanError
from openfeature_canary.plan import FlagPlan, RolloutPlan
from openfeature_canary.policy import OFF, ON, build_view
from openfeature_canary.state import RolloutState, check_state_against_plan

__all__ = [
    "FLAGD_SCHEMA",
    "TOTAL_WEIGHT",
    "export_scheme",
    "flag_definition",
    "flagd_definition",
    "render_flagd",
    "write_flagd_file",
]

#: The ``$schema`` of a flagd flag definition.
FLAGD_SCHEMA: Final = "https://flagd.dev/schema/v0/flags.json"
#: The ``fractional`` weights sum to this: one weight unit is one basis point (0.01 %).
TOTAL_WEIGHT: Final = 10000

_TARGETING_KEY: Final = "targetingKey"
#: Who reads a definition of each scheme, and what they hash.
_READERS: Final[Mapping[str, str]] = {
    "flagd": "flagd >= 0.15 (Go) or flagd-core 1.x",
    "flagd-cbor": "flagd-core 2.x",
}
_HASHES: Final[Mapping[str, str]] = {
    "flagd": "murmur3 of flagKey + targetingKey",
    "flagd-cbor": "murmur3 of the canonical CBOR of [flagKey, targetingKey]",
}
_ENV_NOTE: Final = "process-local, not exported"


def export_scheme(plan: RolloutPlan, scheme: str | None = None) -> Scheme:
    """The scheme a definition of ``plan`` is written for, checked against every flag.

    ``None`` takes the plan's: every flag's ``scheme`` (``"flagd"`` unless the plan says
    otherwise), which must then be the same for all flags. A named scheme must be the one every
    flag buckets with, since flagd would otherwise put other units in the canary than
    ``CanaryProvider`` does.

    Raises ``ValueError`` for an unknown scheme and :class:`PlanError` (naming the plan file
    and the flag's ``scheme``) when a flag buckets with another one.
    """
    if scheme is not None and scheme not in SCHEMES:
        raise ValueError(f"unknown bucketing scheme {scheme!r}: expected one of {SCHEMES}")
    flags = list(plan.flags.values())
    if scheme is None:
        used = sorted({f.scheme for f in flags})
        if len(used) > 1:
            which = ", ".join(f"{f.key}: {f.scheme}" for f in flags)
            raise PlanError(
                f"flags bucket with different schemes ({which}) and a flagd definition is read "
                "by one evaluator: give every flag the same `scheme`",
                source=plan.source,
            )
        scheme = used[0]
    for flag in flags:
        if flag.scheme != scheme:
            raise PlanError(
                f"buckets with scheme {flag.scheme!r}, not {scheme!r}: {_READERS[scheme]} "
                "would put other units in the canary than CanaryProvider does (export it for "
                f"{flag.scheme}, read by {_READERS[flag.scheme]}, or change its scheme)",
                path=f"flags.{flag.key}.scheme",
                source=plan.source,
            )
    return "flagd-cbor" if scheme == "flagd-cbor" else "flagd"


def flagd_definition(
    plan: RolloutPlan, states: Mapping[str, RolloutState], scheme: str | None = None
) -> dict[str, Any]:
    """Every flag of ``plan`` at its state in ``states`` (absent: pending) as one flagd flag
    definition (plain JSON data), written for ``scheme`` (see :func:`export_scheme`).

    Pure: no I/O, no clock, so the same states always give the same definition.

    Raises what :func:`export_scheme` raises, :class:`PlanError` when a flag's ``bucket_by``
    cannot be expressed for the scheme (see :func:`flag_definition`), and
    :class:`~openfeature_canary.errors.StateStoreError` when a state does not fit the plan.
    """
    chosen = export_scheme(plan, scheme)
    flags = {
        key: flag_definition(flag, states.get(key) or RolloutState(key), chosen, plan.source)
        for key, flag in plan.flags.items()
    }
    return {
        "$schema": FLAGD_SCHEMA,
        "metadata": {
            "generated_by": "openfeature-canary export-flagd",
            "scheme": chosen,
            "evaluator": f"{_READERS[chosen]}: {_HASHES[chosen]}",
        },
        "flags": flags,
    }


def flag_definition(
    flag: FlagPlan, state: RolloutState, scheme: Scheme, source: str = "<plan>"
) -> dict[str, Any]:
    """One flag at ``state`` as a flagd flag (``state``, ``variants``, ``defaultVariant``,
    ``targeting``, ``metadata``).

    The percent is what ``CanaryProvider`` serves for this state without an env override (the
    same :func:`~openfeature_canary.policy.build_view`). Bucketing by a context attribute
    (``bucket_by``) becomes the bucketing expression ``{"cat": [{"var": "$flagd.flagKey"},
    {"var": ATTR}]}`` (it hashes ``flagKey + ATTR``, as the provider does) guarded so that a
    context without the attribute gets ``off``. ``source`` names the plan in errors.

    Raises :class:`PlanError` for a ``bucket_by`` that the scheme cannot express: any
    attribute under ``"flagd-cbor"`` (flagd-core 2.x hashes a bucketing expression as itself,
    never as the array ``[flagKey, value]`` the provider hashes), and a name with a ``.``
    (JSON Logic's ``var`` would read it as a path).
    """
    check_state_against_plan(flag, state)
    view = build_view(flag, state, {})
    metadata: dict[str, bool | int | float | str] = {
        **view.metadata,
        "state_version": state.version,
        "scheme": scheme,
        "bucket_by": flag.bucket_by,
    }
    if flag.env_override:
        metadata["env_override"] = f"{flag.env_override} ({_ENV_NOTE})"
    definition: dict[str, Any] = {
        "state": "ENABLED",
        "variants": {ON: True, OFF: False},
        "defaultVariant": ON if view.basis_points >= TOTAL_WEIGHT else OFF,
    }
    if 0 < view.basis_points < TOTAL_WEIGHT:
        definition["targeting"] = _targeting(flag, view.basis_points, scheme, source)
    definition["metadata"] = metadata
    return definition


def _targeting(flag: FlagPlan, basis_points: int, scheme: Scheme, source: str) -> dict[str, Any]:
    """The ``fractional`` rule that puts a unit ``on`` when its bucket is below the cut."""
    weights = [[ON, basis_points], [OFF, TOTAL_WEIGHT - basis_points]]
    attribute = flag.bucket_by
    if attribute == _TARGETING_KEY:
        # The shorthand: both evaluators salt the targeting key with the flag key themselves.
        return {"fractional": weights}
    path = f"flags.{flag.key}.bucket_by"
    if scheme == "flagd-cbor":
        raise PlanError(
            f"{attribute!r} cannot be exported for flagd-cbor: flagd-core 2.x hashes "
            "[flagKey, value] only for the targeting key (a bucketing expression is hashed as "
            "itself), so its cohorts would differ; bucket by targetingKey or use scheme flagd",
            path=path,
            source=source,
        )
    if "." in attribute:
        raise PlanError(
            f"{attribute!r} cannot be exported: flagd's JSON Logic reads a '.' in a var name "
            "as a path into nested attributes, while CanaryProvider reads the attribute by "
            "its whole name",
            path=path,
            source=source,
        )
    by = {"cat": [{"var": "$flagd.flagKey"}, {"var": attribute}]}
    # Without the guard, a missing attribute would hash the flag key alone and put every
    # such unit on the same side; the provider buckets nobody without a unit.
    return {"if": [{"var": attribute}, {"fractional": [by, *weights]}, None]}


def render_flagd(definition: Mapping[str, Any]) -> str:
    """The definition as the JSON text of a flagd flag file (stable: equal definitions give
    equal text, so a watcher can tell a change by comparing texts)."""
    return json.dumps(definition, indent=2, ensure_ascii=False) + "\n"


def write_flagd_file(path: Path, definition: Mapping[str, Any]) -> str:
    """Replace ``path`` with the definition atomically (flagd never reads half a file) and
    return the text written.

    The file keeps its permissions; a new one follows the umask, so a flagd running as another
    user can read it. Raises ``OSError`` (the folder must exist).
    """
    text = render_flagd(definition)
    atomic_write_text(path, text)
    return text
