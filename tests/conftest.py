"""Shared fixtures. Under CI (``CI`` set), a skipped test fails the run: a missing server or
package is a defect in CI, not a reason to pass silently."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
EXAMPLE_PLAN = ROOT / "examples" / "canary_plan.toml"

#: Modules whose module-scoped fixture runs servers for seconds (Prometheus and the example
#: service, the DataService stub): under ``pytest -n N --dist loadgroup`` each goes whole to
#: one worker, so that fixture runs once per run instead of once per worker.
ONE_WORKER_MODULES = frozenset(
    {"test_example_monitoring.py", "test_signals_prometheus.py", "test_example_dataservice.py"}
)

#: The longest tests first (measured with --durations), so that under xdist they start at
#: once and run beside everything else instead of last and alone: each entry is a node id
#: prefix under tests/, in order. The two-day simulations take minutes on a loaded machine.
SLOW_FIRST = (
    "test_guard_rollouts.py",
    "test_example_guard.py",
    "test_demo.py::test_demo_healthy",
    "test_rollout_e2e.py::test_healthy_traffic",
    "test_example_dataservice.py",
    "test_signals_prometheus.py",
    "test_example_monitoring.py",
    "test_stats.py",
    "test_bucketing.py::test_bucket_any_text",
    "test_bucketing.py::test_bucket_subprocesses",
    "test_faults.py::test_rollback_killed_at_random_points",
    "test_demo.py",
    "test_bad_input.py::test_parse_plan",
    "test_bad_input.py::test_file_store_mutated",
    "test_fleet_uvicorn.py",
    "test_rollout_e2e.py::test_dry_run",
    "test_faults_concurrency.py",
    "test_fleet_deciders.py",
    "test_fleet_store.py::test_lease",
)

_skipped: list[str] = []


def _slow_rank(item: pytest.Item) -> int:
    nodeid = item.nodeid.removeprefix("tests/")
    return next((i for i, p in enumerate(SLOW_FIRST) if nodeid.startswith(p)), len(SLOW_FIRST))


def pytest_itemcollected(item: pytest.Item) -> None:
    # Marked as each item is collected: xdist reads the marks in its own
    # pytest_collection_modifyitems, which runs before a conftest's.
    if item.path.name in ONE_WORKER_MODULES:
        item.add_marker(pytest.mark.xdist_group(item.path.stem))


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    items.sort(key=_slow_rank)  # stable: the rest keep their order


def pytest_runtest_logreport(report: pytest.TestReport) -> None:
    if report.skipped:
        _skipped.append(report.nodeid)


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    if os.environ.get("CI") and _skipped:
        print(f"\nCI is set and {len(_skipped)} test(s) were skipped; failing:")
        for nodeid in _skipped:
            print(f"  SKIPPED {nodeid}")
        session.exitstatus = 1


@pytest.fixture
def example_plan_path() -> Path:
    """The reference plan of spec §2."""
    return EXAMPLE_PLAN


@pytest.fixture(autouse=True)
def _run_in_tmp_path(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Each test runs in its own folder, so reports and outboxes never land in the repo."""
    monkeypatch.chdir(tmp_path)


@pytest.fixture(autouse=True)
def _fresh_variant_context() -> Iterator[None]:
    """Each test starts with no remembered variant in the main thread's context: an evaluation
    outside any scope opens one there (``remember_variant``), and under pytest-xdist the next
    test of the same worker process would otherwise read it."""
    from openfeature_canary.instrumentation._variants import VARIANTS

    token = VARIANTS.set(None)
    yield
    VARIANTS.reset(token)


@pytest.fixture(autouse=True)
def _clean_openfeature_api() -> Iterator[None]:
    """Each test gets a fresh global OpenFeature API (providers, hooks, handlers)."""
    from openfeature import api

    yield
    api.clear_hooks()
    api.shutdown()
    api.clear_providers()
