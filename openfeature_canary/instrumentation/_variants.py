"""Which variant each flag gave the current request: a per-request scope the hook writes and
the middleware reads."""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from contextvars import ContextVar
from typing import Any, Final, Protocol

__all__ = [
    "SCOPE_KEY",
    "VARIANTS",
    "Remembered",
    "UnitContext",
    "bucketing_unit",
    "current_unit",
    "current_variant",
    "remember_variant",
    "variant_scope",
]

#: What a flag gave the current request: its variant, and the unit it was bucketed by (the
#: raw targeting key, kept only for the request's lifetime; ``None`` when not known).
Remembered = tuple[str, str | None]

#: The variants the flags gave the current request. The value is a mutable dict shared by
#: every copy of the context (a sync endpoint runs in a thread with a *copy* of the request's
#: context): the hook writes into it, the middleware reads it after the app ran.
VARIANTS: ContextVar[dict[str, Remembered] | None] = ContextVar(
    "openfeature_canary_variants", default=None
)
SCOPE_KEY: Final = "openfeature_canary.variants"


def current_variant(flag_key: str) -> str | None:
    """The variant ``flag_key`` gave the current request, or ``None`` if it was not evaluated.

    Filled in by the ``MetricsHook`` (``openfeature.contrib.hook.canary``) on every evaluation;
    the latest evaluation of the flag in this scope wins, and an evaluation that errored (the
    caller got its default, which is neither cohort) clears it. Scopes are opened per request
    by :class:`CanaryMiddleware` or by :func:`variant_scope`.

    >>> with variant_scope():
    ...     remember_variant("dataservice-read-canary", "on")
    ...     current_variant("dataservice-read-canary")
    'on'
    """
    box = VARIANTS.get()
    found = None if box is None else box.get(flag_key)
    return None if found is None else found[0]


def current_unit(flag_key: str) -> str | None:
    """The unit ``flag_key`` bucketed the current request by (its targeting key, or the
    ``bucket_by`` attribute), or ``None`` when the flag was not evaluated or no unit was given.

    >>> with variant_scope():
    ...     remember_variant("dataservice-read-canary", "on", unit="user-42")
    ...     current_unit("dataservice-read-canary")
    'user-42'
    """
    box = VARIANTS.get()
    found = None if box is None else box.get(flag_key)
    return None if found is None else found[1]


def remember_variant(flag_key: str, variant: str | None, *, unit: str | None = None) -> None:
    """Remember the variant ``flag_key`` gave the current request (``None`` forgets it), and
    the unit it was bucketed by (so a 5xx can be counted per unit, hashed: see
    ``record_request``'s ``unit``).

    The ``MetricsHook`` calls this; call it yourself only for a hand-rolled hook. Outside any
    scope it opens one in the current context, so :func:`current_variant` works in a script;
    in a server, open a scope per request (middleware or :func:`variant_scope`) or a request
    could see the variant of an earlier request served by the same context.
    """
    box = VARIANTS.get()
    if box is None:
        box = {}
        VARIANTS.set(box)
    if variant is None:
        box.pop(flag_key, None)
    else:
        box[flag_key] = (variant, unit)


@contextmanager
def variant_scope() -> Iterator[None]:
    """Open a fresh per-request scope for :func:`current_variant`.

    Use it around one request's handling where :class:`CanaryMiddleware` does not run (a WSGI
    app, a queue consumer)::

        with variant_scope():
            handle(request)
            record_request(FLAG, current_variant(FLAG), elapsed, status)
    """
    token = VARIANTS.set({})
    try:
        yield
    finally:
        VARIANTS.reset(token)


class UnitContext(Protocol):
    """What :func:`bucketing_unit` reads of an OpenFeature ``EvaluationContext``."""

    @property
    def targeting_key(self) -> str | None:
        """The targeting key."""

    @property
    def attributes(self) -> Mapping[str, Any]:
        """The context's attributes."""


def bucketing_unit(context: UnitContext, flag_metadata: Mapping[str, Any] | None) -> str | None:
    """The unit the canary provider bucketed an evaluation by: the context attribute the
    flag's metadata names as ``bucket_by`` (set when it is not the targeting key), else the
    targeting key; ``None`` when there is none (the provider then served the old path).

    >>> from openfeature.evaluation_context import EvaluationContext
    >>> bucketing_unit(EvaluationContext("user-1", {"tenant": 7}), {"bucket_by": "tenant"})
    '7'
    """
    attribute = (flag_metadata or {}).get("bucket_by")
    unit: object
    if isinstance(attribute, str):
        unit = context.attributes.get(attribute)
    else:
        unit = context.targeting_key
    if isinstance(unit, bool) or not isinstance(unit, str | int | float) or unit == "":
        return None
    return unit if isinstance(unit, str) else str(unit)
