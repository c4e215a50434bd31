"""The markdown reports of a rollout, for people: results per stage and one section per abort.

Files in the plan's reports folder (``[reports] dir``)::

    canary_plan.md        the plan, rendered before the rollout starts (``write_plan``)
    canary_results.md     per flag a table per run, one row per completed stage (``record_stage``)
    canary_results.json   the data behind canary_results.md, so that it survives restarts
    canary_abort.md       appended on every rollback (``append_abort``)

``canary_results.md`` is re-rendered from its JSON sidecar on every change and both are
replaced atomically (temp file, ``fsync``, ``os.replace``), so a reader never sees half a
report. ``canary_abort.md`` only ever grows. Writers hold ``fcntl.flock`` on a lock file in
the folder, so two processes cannot interleave their updates.

The records and their markdown are in :mod:`._records`; :func:`~._runreport.write_reports`
regenerates every file (and the charts) from the rollout state.
"""

from __future__ import annotations

import fcntl
import json
import logging
import os
import threading
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Final, Protocol

from openfeature_canary._atomicfile import atomic_write_text
from openfeature_canary._forksafe import hold_locks_across_fork
from openfeature_canary.errors import ReportError
from openfeature_canary.events._records import (
    RESULTS_DATA_FILE,
    AbortRecord,
    StageResult,
    render_abort,
    render_results,
)

__all__ = [
    "ABORT_FILE",
    "PLAN_FILE",
    "RESULTS_DATA_FILE",
    "RESULTS_FILE",
    "AbortRecord",
    "ReportError",
    "ReportSink",
    "ReportWriter",
    "StageResult",
    "render_abort",
    "render_results",
]

log = logging.getLogger("openfeature_canary.reports")

PLAN_FILE: Final = "canary_plan.md"
RESULTS_FILE: Final = "canary_results.md"
ABORT_FILE: Final = "canary_abort.md"
_LOCK_FILE: Final = ".canary_reports.lock"
_FORMAT: Final = 1


class ReportSink(Protocol):
    """Where stage results and aborts are written (:class:`ReportWriter` is the markdown one)."""

    def record_stage(self, result: StageResult) -> None: ...

    def append_abort(self, record: AbortRecord) -> None: ...


class ReportWriter:
    """Writes the reports of a rollout into one folder (created on first write).

    Use one per controller process::

        reports = ReportWriter(plan.reports.dir)
        reports.record_stage(StageResult(...))   # re-renders canary_results.md
        reports.append_abort(AbortRecord(...))   # appends a section to canary_abort.md

    Raises :class:`ReportError` when a file cannot be written.
    """

    def __init__(self, dir: Path | str) -> None:
        self.dir = Path(dir)
        self._thread_lock = threading.Lock()
        # A fork must not happen mid-write: the child would keep the flock held.
        hold_locks_across_fork(self, "_thread_lock")

    def __repr__(self) -> str:
        return f"ReportWriter({str(self.dir)!r})"

    @property
    def plan_path(self) -> Path:
        """``canary_plan.md``."""
        return self.dir / PLAN_FILE

    @property
    def results_path(self) -> Path:
        """``canary_results.md``."""
        return self.dir / RESULTS_FILE

    @property
    def results_data_path(self) -> Path:
        """``canary_results.json``, the data ``canary_results.md`` is rendered from."""
        return self.dir / RESULTS_DATA_FILE

    @property
    def abort_path(self) -> Path:
        """``canary_abort.md``."""
        return self.dir / ABORT_FILE

    def write_plan(self, markdown: str) -> None:
        """Replace ``canary_plan.md`` atomically with ``markdown``."""
        with self._locked():
            self._atomic_write(self.plan_path, markdown)

    def results(self) -> tuple[StageResult, ...]:
        """Every recorded stage, in recording order."""
        with self._locked():
            return tuple(self._load_results())

    def record_stage(self, result: StageResult) -> None:
        """Add a completed stage and re-render ``canary_results.md``.

        Recording the same flag, stage and start time again replaces the row, so a controller
        that retries after a crash does not duplicate it.
        """
        with self._locked():
            rows = [
                r
                for r in self._load_results()
                if (r.flag_key, r.stage, r.started_at)
                != (result.flag_key, result.stage, result.started_at)
            ]
            rows.append(result)
            data = {"format": _FORMAT, "stages": [r.to_dict() for r in rows]}
            self._atomic_write(
                self.results_data_path, json.dumps(data, indent=1, allow_nan=False) + "\n"
            )
            self._atomic_write(self.results_path, render_results(rows))

    def append_abort(self, record: AbortRecord) -> None:
        """Append a section for ``record`` to ``canary_abort.md`` (created with a title)."""
        with self._locked():
            section = render_abort(record)
            path = self.abort_path
            try:
                new = not path.exists() or path.stat().st_size == 0
                with open(path, "a", encoding="utf-8") as fh:
                    fh.write(("# Canary aborts\n\n" if new else "\n") + section)
                    fh.flush()
                    os.fsync(fh.fileno())
            except OSError as exc:
                raise ReportError(f"{path}: cannot append: {exc.strerror or exc}") from exc

    def write_files(self, files: Mapping[str, str]) -> list[Path]:
        """Replace each file (a path relative to the folder) atomically, all under the
        folder's lock: how :func:`write_reports` regenerates every report at once."""
        written = []
        with self._locked():
            for name, text in files.items():
                path = self.dir / name
                try:
                    path.parent.mkdir(parents=True, exist_ok=True)
                except OSError as exc:
                    raise ReportError(f"{path.parent}: {exc.strerror or exc}") from exc
                self._atomic_write(path, text)
                written.append(path)
        return written

    # ------------------------------------------------------------------ internals

    @contextmanager
    def _locked(self) -> Iterator[None]:
        try:
            self.dir.mkdir(parents=True, exist_ok=True)
            with self._thread_lock, open(self.dir / _LOCK_FILE, "a+b") as lock_file:
                fcntl.flock(lock_file, fcntl.LOCK_EX)
                yield
        except OSError as exc:
            raise ReportError(f"{self.dir}: {exc.strerror or exc}") from exc

    def _load_results(self) -> list[StageResult]:
        path = self.results_data_path
        try:
            raw = path.read_text("utf-8")
        except FileNotFoundError:
            return []
        try:
            data = json.loads(raw)
            if data.get("format") != _FORMAT:
                raise ValueError(f"unsupported format {data.get('format')!r}")
            return [StageResult.from_dict(r) for r in data["stages"]]
        except (ValueError, KeyError, TypeError, AttributeError) as exc:
            # Keep the reports going, and keep the unreadable data for a person to look at.
            aside = path.with_name(path.name + ".corrupt")
            os.replace(path, aside)
            log.warning("%s is unreadable (%s); moved to %s, starting afresh", path, exc, aside)
            return []

    def _atomic_write(self, path: Path, text: str) -> None:
        try:
            atomic_write_text(path, text)  # reports follow the umask, like any file a tool writes
        except OSError as exc:
            raise ReportError(f"{path}: cannot write: {exc.strerror or exc}") from exc
