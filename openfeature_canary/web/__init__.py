"""The live status page (``pip install 'openfeature-canary[web]'``): read-only, on 127.0.0.1.

- :class:`StatusPage` serves a rollout's page on ``host:port`` (``0``: a free port): each flag's
  stage timeline, canary vs baseline against the stage's lines, the trigger readings and the
  decision log, redrawn every second from ``/api/status`` without a reload.
- :class:`DecidingStatusPage` serves it only while this process holds the decider lease (what
  ``CanaryProvider(status_page_port=...)`` starts in every process of a fleet).
- :func:`snapshot` is the page's data, read through the rollout's public parts.

See docs/status-page.md.
"""

from __future__ import annotations

from openfeature_canary.web._deciding import DecidingStatusPage
from openfeature_canary.web._server import DEFAULT_HOST, StatusPage, check_address
from openfeature_canary.web._snapshot import snapshot

__all__ = ["DEFAULT_HOST", "DecidingStatusPage", "StatusPage", "check_address", "snapshot"]
