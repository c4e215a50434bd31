"""A real ``redis-server`` on 127.0.0.1 for the tests: started on a free port without
persistence, killed and restarted on demand (``scripts/test.sh`` installs Debian's
``redis-server``; a missing binary fails the test loudly, it never skips)."""

from __future__ import annotations

import shutil
import socket
import subprocess
import time
from pathlib import Path

from ports import free_port

__all__ = ["RedisServer", "free_port"]

_START_TIMEOUT_S = 10.0


class RedisServer:
    """One ``redis-server`` process of a test: ``start()``, ``kill()`` (SIGKILL), ``stop()``.

    It keeps nothing on disk (``--save '' --appendonly no``), so a restart comes back empty,
    as a Redis without persistence does.
    """

    def __init__(self, folder: Path, port: int | None = None) -> None:
        binary = shutil.which("redis-server")
        if binary is None:
            raise RuntimeError(
                "redis-server is not installed: run scripts/test.sh (it installs Debian's "
                "redis-server) or apt-get install redis-server"
            )
        self.binary = binary
        self.folder = folder
        self.port = port or free_port()
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.process: subprocess.Popen[bytes] | None = None
        self.log = folder / f"redis-{self.port}.log"

    def start(self) -> RedisServer:
        """Start it and wait until it answers ``PING``."""
        self.process = subprocess.Popen(
            [
                self.binary,
                "--port",
                str(self.port),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
                "--dir",
                str(self.folder),
                "--logfile",
                str(self.log),
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.STDOUT,
        )
        deadline = time.monotonic() + _START_TIMEOUT_S
        while not self._answers():
            if self.process.poll() is not None or time.monotonic() > deadline:
                tail = self.log.read_text(errors="replace")[-2000:] if self.log.exists() else ""
                self.stop()
                raise RuntimeError(f"redis-server on port {self.port} did not start:\n{tail}")
            time.sleep(0.02)
        return self

    def _answers(self) -> bool:
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=0.5) as sock:
                sock.sendall(b"PING\r\n")
                return sock.recv(16).startswith(b"+PONG")
        except OSError:
            return False

    def subscribers(self, channel: str) -> int:
        """How many clients are subscribed to ``channel`` now (``PUBSUB NUMSUB``): a store's
        change listener subscribes to ``<prefix>:changes``."""
        import redis  # the [redis] extra, as the store under test needs it anyway

        with redis.Redis.from_url(self.url, socket_timeout=5) as client:
            ((_, count),) = client.pubsub_numsub(channel)
            return int(count)

    def kill(self) -> None:
        """SIGKILL, as a crash would (the data is gone)."""
        if self.process is not None:
            self.process.kill()
            self.process.wait(10)
            self.process = None

    def stop(self) -> None:
        """Stop it (SIGKILL: nothing to save) and wait for it."""
        self.kill()
