"""The status page's HTTP server: the standard library's ``ThreadingHTTPServer`` in a thread.

Why not Starlette + uvicorn: the page runs inside a process that already serves (often under
uvicorn itself, in a worker whose event loop belongs to the application). A second asyncio
server there needs its own loop in its own thread and must be kept from installing signal
handlers; ``http.server`` needs neither, adds no dependency, and a page that one operator's
browser polls once a second is well within what it serves. Read-only by construction: the
handler answers GET and HEAD on four paths and 405 to every other method; nothing it serves
changes the rollout.
"""

from __future__ import annotations

import ipaddress
import json
import logging
import socket
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, ClassVar

from openfeature_canary._forksafe import RENEW, on_fork, renew_locks_after_fork
from openfeature_canary.policy import Rollout
from openfeature_canary.web._assets import APP_CSS, APP_JS, page_html
from openfeature_canary.web._snapshot import snapshot

__all__ = ["DEFAULT_HOST", "StatusPage", "check_address"]

log = logging.getLogger("openfeature_canary")

#: Loopback: an operator reaches the page through ``kubectl port-forward`` or an SSH tunnel
#: unless the host is given explicitly.
DEFAULT_HOST = "127.0.0.1"

#: Scripts and styles only from the page itself, data only from its own JSON endpoint, no
#: frames, forms or plugins: even a value that escaped escaping could not load or send anything.
_CSP = (
    "default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; "
    "img-src 'self' data:; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
)


def check_address(host: str, port: int) -> None:
    """``ValueError`` naming what is wrong with a page's host or port (``0``: a free port)."""
    if isinstance(port, bool) or not isinstance(port, int) or not 0 <= port <= 65535:
        raise ValueError(f"status page port: must be an integer in [0, 65535], got {port!r}")
    if not isinstance(host, str) or not host:
        raise ValueError(f"status page host: must be an IP address, got {host!r}")
    try:
        ipaddress.ip_address(host)
    except ValueError:
        if host != "localhost":
            raise ValueError(
                f"status page host: must be an IP address or localhost, got {host!r}"
            ) from None


def to_json(data: Any) -> bytes:
    """JSON with ``<``, ``>`` and ``&`` as ``\\u`` escapes: inert even if a browser were
    tricked into reading it as HTML."""
    text = json.dumps(data, allow_nan=False, default=str, separators=(",", ":"))
    for raw, escaped in (("<", "\\u003c"), (">", "\\u003e"), ("&", "\\u0026")):
        text = text.replace(raw, escaped)
    return text.encode("utf-8")


class _Handler(BaseHTTPRequestHandler):
    """GET/HEAD only; the page, its script and style, and ``/api/status``."""

    rollout: ClassVar[Rollout]
    title: ClassVar[str]
    server_version = "openfeature-canary-status"
    sys_version = ""

    def do_GET(self) -> None:
        self._answer(body=True)

    def do_HEAD(self) -> None:
        self._answer(body=False)

    def _answer(self, *, body: bool) -> None:
        path = self.path.split("?", 1)[0]
        if path in ("/", "/index.html"):
            self._send(200, "text/html; charset=utf-8", page_html(self.title), body)
        elif path == "/app.js":
            self._send(200, "text/javascript; charset=utf-8", APP_JS.encode(), body)
        elif path == "/app.css":
            self._send(200, "text/css; charset=utf-8", APP_CSS.encode(), body)
        elif path == "/api/status":
            try:
                data = to_json(snapshot(self.rollout))
            except Exception as exc:  # one bad read must not kill the page; the next poll retries
                log.warning("openfeature-canary: status page: cannot read the rollout: %s", exc)
                self._send(500, "application/json", to_json({"error": str(exc)}), body)
                return
            self._send(200, "application/json", data, body)
        else:
            self._send(404, "application/json", to_json({"error": "not found"}), body)

    def _not_allowed(self) -> None:
        self.send_response(405)
        self.send_header("Allow", "GET, HEAD")
        self.send_header("Content-Length", "0")
        self.end_headers()

    do_POST = do_PUT = do_DELETE = do_PATCH = do_OPTIONS = _not_allowed

    def _send(self, code: int, ctype: str, data: bytes, body: bool) -> None:
        self.send_response(code)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(data)))
        self.send_header("Cache-Control", "no-store")
        self.send_header("X-Content-Type-Options", "nosniff")
        self.send_header("Referrer-Policy", "no-referrer")
        self.send_header("Content-Security-Policy", _CSP)
        self.end_headers()
        if body:
            self.wfile.write(data)

    def log_message(self, format: str, *args: Any) -> None:
        log.debug("openfeature-canary: status page: " + format, *args)


class StatusPage:
    """A read-only live status page of ``rollout`` on ``http://host:port/``.

    ``port=0`` picks a free port (read :attr:`port` after :meth:`start`); ``host`` is
    ``127.0.0.1`` unless given. The browser polls ``/api/status`` (the JSON of
    :func:`~openfeature_canary.web.snapshot`) once a second and redraws without a reload.

    >>> page = StatusPage(provider.rollout, port=8791).start()   # doctest: +SKIP
    >>> page.url                                                # doctest: +SKIP
    'http://127.0.0.1:8791/'
    """

    def __init__(
        self, rollout: Rollout, *, port: int = 0, host: str = DEFAULT_HOST, title: str = ""
    ) -> None:
        check_address(host, port)
        self.rollout = rollout
        self.host = host
        self._port = port
        self.title = title or "openfeature-canary"
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()
        renew_locks_after_fork(self, "_lock")
        on_fork(self, level=RENEW, after_in_child=_forget_in_child)

    @property
    def port(self) -> int:
        """The bound port (the asked one until :meth:`start`)."""
        server = self._server
        return int(server.server_address[1]) if server is not None else self._port

    @property
    def url(self) -> str:
        """Where the page is, e.g. ``http://127.0.0.1:8791/``."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}/"

    @property
    def serving(self) -> bool:
        """True between :meth:`start` and :meth:`stop`."""
        return self._server is not None

    def start(self) -> StatusPage:
        """Bind and serve in a daemon thread; ``OSError`` when the address cannot be bound
        (the port is taken). Starting a started page does nothing."""
        with self._lock:
            if self._server is not None:
                return self
            handler = type(
                "StatusPageHandler", (_Handler,), {"rollout": self.rollout, "title": self.title}
            )
            server_cls = _V6Server if ":" in self.host else ThreadingHTTPServer
            server = server_cls((self.host, self._port), handler)
            server.daemon_threads = True  # a browser's open connection must not hold shutdown
            self._server = server
            self._thread = threading.Thread(
                target=server.serve_forever,
                kwargs={"poll_interval": 0.2},
                name="canary-status-page",
                daemon=True,
            )
            self._thread.start()
        log.info("openfeature-canary: status page on %s", self.url)
        return self

    def stop(self) -> None:
        """Stop serving and free the port (idempotent)."""
        with self._lock:
            server, thread = self._server, self._thread
            self._server = self._thread = None
        if server is None:
            return
        server.shutdown()
        server.server_close()
        if thread is not None:
            thread.join(timeout=5.0)

    def __enter__(self) -> StatusPage:
        return self.start()

    def __exit__(self, *_exc: object) -> None:
        self.stop()


def _forget_in_child(page: StatusPage) -> None:
    """A forked child has the parent's listening socket but not its serving thread: close the
    child's copy (the parent keeps serving) and start over unbound; ``stop()`` would otherwise
    wait forever for a thread that is not there."""
    server, page._server, page._thread = page._server, None, None
    if server is not None:
        server.server_close()


class _V6Server(ThreadingHTTPServer):
    """For an IPv6 host (``::1``)."""

    address_family = socket.AF_INET6
