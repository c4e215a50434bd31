"""Events: what a rollout tells people and other systems once a transition is persisted.

- the telemetry ingest's events (``canary_rollback``, ``canary_stage_advanced`` …): queued in a
  durable :class:`EventQueue` (an :class:`Outbox` file; a :class:`RedisOutbox` for a
  ``redis://`` fleet), delivered by a :class:`TelemetrySender` through an
  :class:`IngestClient` (``POST {url}/telemetry/ingest``), at least once;
- the markdown reports (:class:`ReportWriter`): ``canary_plan.md``, ``canary_results.md``,
  ``canary_abort.md``; :func:`write_reports` regenerates them all from the rollout state,
  with SVG charts (``charts/``, drawn with pygal when the ``reports`` extra is installed).

"Telemetry" elsewhere in this package means OpenTelemetry metrics; here it is only the name
of the ingest the events go to.
"""

from __future__ import annotations

from openfeature_canary.events._ingest import (
    IngestClient,
    IngestCounters,
    IngestError,
    NoopIngestCounters,
    redact_url,
)
from openfeature_canary.events._outbox import (
    REMEMBERED_DELIVERED,
    JsonScalar,
    Outbox,
    OutboxError,
    OutboxEvent,
)
from openfeature_canary.events._queue import EventQueue
from openfeature_canary.events._redis_outbox import RedisOutbox
from openfeature_canary.events._render import render_plan_markdown
from openfeature_canary.events._reports import (
    AbortRecord,
    ReportError,
    ReportSink,
    ReportWriter,
    StageResult,
)
from openfeature_canary.events._runreport import write_reports
from openfeature_canary.events._sender import (
    EventSink,
    TelemetrySender,
    outbox_for,
    outbox_path_for,
    sender_for_plan,
)

__all__ = [
    "REMEMBERED_DELIVERED",
    "AbortRecord",
    "EventQueue",
    "EventSink",
    "IngestClient",
    "IngestCounters",
    "IngestError",
    "JsonScalar",
    "NoopIngestCounters",
    "Outbox",
    "OutboxError",
    "OutboxEvent",
    "RedisOutbox",
    "ReportError",
    "ReportSink",
    "ReportWriter",
    "StageResult",
    "TelemetrySender",
    "outbox_for",
    "outbox_path_for",
    "redact_url",
    "render_plan_markdown",
    "sender_for_plan",
    "write_reports",
]
