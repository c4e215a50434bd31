"""Free TCP ports for servers a test must name before they bind (redis-server, Prometheus,
a service restarted on the same port), safe under ``pytest -n N`` (pytest-xdist).

``bind(("127.0.0.1", 0))`` then ``close()`` hands out a port from the kernel's ephemeral
range, the same range every outgoing connection of every worker draws from: between the
close and the server's own bind, another worker's connection or server may take it. Here
each xdist worker owns its own block of ports BELOW the ephemeral range (which starts at
32768 on Linux), walks it in order and skips a port something already holds: two workers
never pick the same port, and no outgoing connection lands on one.
"""

from __future__ import annotations

import functools
import itertools
import os
import socket
from collections.abc import Iterator

__all__ = ["free_port", "worker_index"]

_FIRST_PORT = 20_000  # below Linux's ephemeral range (32768-60999)
_BLOCK = 1_000  # ports per worker: blocks 0..11 fit under 32768
_BLOCKS = 12


def worker_index() -> int:
    """This xdist worker's number (``gw3`` -> 3); 0 without xdist."""
    name = os.environ.get("PYTEST_XDIST_WORKER", "gw0")
    digits = name.removeprefix("gw")
    return int(digits) if digits.isdigit() else 0


@functools.cache
def _walk(pid: int) -> Iterator[int]:
    """This process's walk over its block. Cached per process id so that a port is handed
    out once per process, and a forked child starts a walk of its own. Two runs of the
    suite at once start at different offsets (the pid), so they rarely meet either."""
    first = _FIRST_PORT + (worker_index() % _BLOCKS) * _BLOCK
    return (first + offset % _BLOCK for offset in itertools.count(pid % _BLOCK))


def _bindable(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
        return True


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on now and no other worker of this run
    is handed (closed again: connecting to it is refused until a server binds it)."""
    walk = _walk(os.getpid())
    for _ in range(_BLOCK):
        port = next(walk)
        if _bindable(port):
            return port
    raise RuntimeError(f"no free port in worker {worker_index()}'s block of {_BLOCK}")
