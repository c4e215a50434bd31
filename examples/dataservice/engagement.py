"""What users do on the A6 provider dashboard, reported with OpenFeature's ``track()``.

The service reports two business events, each with the evaluation context of the request's
bucketing unit (its ``X-Request-Id``), so that each lands in the cohort that served it:

* :data:`DASHBOARD_VIEWED`: a dashboard was served (200), by either read path;
* :data:`PROVIDER_DETAIL_OPENED`: the user opened a provider's detail from it,
  ``GET /api/v6/providers/{id}/detail`` with the **same** ``X-Request-Id`` as the view.

The example plan guards the rate of the second per the first (``docs/guards.md``): a read path
that answers fast and 200 but gives users less to click through is rolled back by
``guard_breach``.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Final

from openfeature.client import OpenFeatureClient
from openfeature.evaluation_context import EvaluationContext

__all__ = [
    "DASHBOARD_VIEWED",
    "PROVIDER_DETAIL_OPENED",
    "agrees",
    "context",
    "track",
]

log = logging.getLogger("dataservice_example")

DASHBOARD_VIEWED: Final = "dashboard_viewed"
PROVIDER_DETAIL_OPENED: Final = "provider_detail_opened"


def context(request_id: str) -> EvaluationContext:
    """The evaluation context of a request: its id is the bucketing unit. Evaluations and
    tracked events use the same one, so an event counts for the cohort that served the unit."""
    return EvaluationContext(targeting_key=request_id)


def track(client: OpenFeatureClient, event: str, request_id: str) -> None:
    """``client.track(event, context(request_id))``; a failure is logged, never raised: a
    business event must not fail the request it describes (the SDK does not catch it)."""
    try:
        client.track(event, context(request_id))
    except Exception as exc:
        log.warning("track(%s) failed: %s", event, type(exc).__name__)


def agrees(served: object, old: object) -> bool:
    """The shadow comparison of a provider record: every field DataService returned equals the
    old path's, and the record is the same provider.

    DataService leaves out a field it has no value for (its API contract), so an omitted field
    is not a mismatch; a wrong value is. That is why a record that comes back *incomplete*
    passes this ledger, and only what users do with it can show the problem (the guard).
    """
    if not isinstance(served, Mapping) or not isinstance(old, Mapping):
        return served == old  # None (404) on both paths agrees; anything else does not
    return "id" in served and all(k in old and old[k] == v for k, v in served.items())
