"""Crash-safe file replacement, shared by the state store, the outbox and the reports.

Write to a temporary file in the same folder, ``fsync`` it, rename it over the target
(atomic on POSIX), then ``fsync`` the folder so the rename itself survives a power cut: a
reader sees the old file or the new one, never half of either.

A writer killed half-way leaves its temporary file (``<name>.XXXXXXXX.tmp``) behind; the next
write of the same target removes those older than :data:`STALE_TMP_S` (a younger one may be a
live concurrent writer's, and is left alone).
"""

from __future__ import annotations

import contextlib
import os
import re
import tempfile
import time
from pathlib import Path
from typing import Final

__all__ = ["STALE_TMP_S", "atomic_write_text", "current_umask", "fsync_dir"]

#: A temporary file of a target untouched for this long (seconds) belongs to a killed writer.
STALE_TMP_S: Final = 10.0

# mkstemp's random part: 8 characters of this alphabet (tempfile._RandomNameSequence).
_TMP_PART: Final = r"\.[a-z0-9_]{8}\.tmp"


def current_umask() -> int:
    """The process's umask, read without changing it (Linux: ``/proc/self/status``).

    ``os.umask`` can only be read by setting it, which would race other threads creating
    files; it is the fallback where ``/proc`` has no ``Umask`` line.
    """
    try:
        with open("/proc/self/status", encoding="ascii") as fh:
            for line in fh:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def fsync_dir(folder: Path) -> None:
    """Make a rename or a new file in ``folder`` durable."""
    dir_fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


def atomic_write_text(
    path: Path, text: str, *, mode: int | None = None, durable: bool = True
) -> None:
    """Replace ``path`` with ``text`` atomically and (unless ``durable=False``) durably.

    The file keeps its current permissions (a new one follows the process's umask, as
    ``open()`` would, not ``mkstemp``'s ``0o600``) unless ``mode`` is given. Raises
    ``OSError``; the temporary file is removed. ``durable=False`` skips the ``fsync``: for
    files rewritten at every tick whose loss in a power cut costs nothing (a fleet record, the
    lease), where the sync would be most of the cost.
    """
    if mode is None:
        try:
            mode = path.stat().st_mode & 0o777
        except FileNotFoundError:
            mode = 0o666 & ~current_umask()
    fd, tmp = tempfile.mkstemp(prefix=path.name + ".", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            os.fchmod(fh.fileno(), mode)
            fh.write(text)
            fh.flush()
            if durable:
                os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    _remove_stale_temps(path)
    fsync_dir(path.parent)


def _remove_stale_temps(path: Path) -> None:
    """Remove the temporary files a killed writer of ``path`` left, when older than
    :data:`STALE_TMP_S`; only names of exactly that target's pattern. Best effort."""
    pattern = re.compile(re.escape(path.name) + _TMP_PART)
    cutoff = time.time() - STALE_TMP_S
    try:
        with os.scandir(path.parent) as entries:
            candidates = [e for e in entries if pattern.fullmatch(e.name)]
    except OSError:
        return
    for entry in candidates:
        # A file that vanished meanwhile was another writer's, renamed or cleaned by it.
        with contextlib.suppress(OSError):
            if entry.is_file(follow_symlinks=False) and (
                entry.stat(follow_symlinks=False).st_mtime < cutoff
            ):
                os.unlink(entry.path)
