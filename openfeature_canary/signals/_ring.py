"""The ring of timestamped snapshots a snapshot source keeps: bounded by time and count, with
the anchor of the longest window always kept."""

from __future__ import annotations

import math
from bisect import bisect_right

from openfeature_canary.signals._snapshots import Snapshot

__all__ = ["SnapshotRing"]


class SnapshotRing:
    """Timestamped snapshots, oldest first, bounded by ``retention_s`` and ``max_snapshots``.

    The newest snapshot at or before ``newest - retention_s`` is kept as the anchor of the
    longest window, so a window of up to ``retention_s`` ending at the newest snapshot is
    always exact. ``truncated`` tells whether a snapshot was ever dropped: then a window
    reaching before :attr:`oldest` cannot be computed. Not thread-safe: the owning source
    serialises calls.
    """

    def __init__(self, retention_s: float, max_snapshots: int) -> None:
        if not (retention_s > 0 and math.isfinite(retention_s)):
            raise ValueError(f"retention_s must be a positive number of seconds, got {retention_s}")
        if max_snapshots < 2:
            raise ValueError(f"max_snapshots must be at least 2, got {max_snapshots}")
        self.retention_s = float(retention_s)
        self.max_snapshots = max_snapshots
        self.truncated = False
        self._times: list[float] = []
        self._snaps: list[Snapshot] = []

    def __len__(self) -> int:
        return len(self._snaps)

    def __getitem__(self, index: int) -> Snapshot:
        return self._snaps[index]

    @property
    def span_s(self) -> float:
        """Time between the oldest and the newest snapshot kept (0 with fewer than two)."""
        return self._times[-1] - self._times[0] if self._times else 0.0

    def add(self, snap: Snapshot) -> None:
        """Append ``snap``; one at the same time as the newest replaces it."""
        if self._times and snap.t < self._times[-1]:
            raise ValueError(
                f"snapshot time {snap.t} is before the newest snapshot {self._times[-1]}"
            )
        if self._times and snap.t == self._times[-1]:
            self._snaps[-1] = snap
            return
        self._times.append(snap.t)
        self._snaps.append(snap)
        cutoff = snap.t - self.retention_s
        drop = max(bisect_right(self._times, cutoff) - 1, len(self._snaps) - self.max_snapshots)
        if drop > 0:
            del self._times[:drop]
            del self._snaps[:drop]
            self.truncated = True

    def at_or_before(self, t: float) -> int | None:
        """Index of the newest snapshot taken at or before ``t``, or ``None``."""
        i = bisect_right(self._times, t) - 1
        return i if i >= 0 else None
