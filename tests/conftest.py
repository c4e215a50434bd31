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

_skipped: list[str] = []


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        if item.path.name in ONE_WORKER_MODULES:
            item.add_marker(pytest.mark.xdist_group(item.path.stem))


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
def _clean_openfeature_api() -> Iterator[None]:
    """Each test gets a fresh global OpenFeature API (providers, hooks, handlers)."""
    from openfeature import api

    yield
    api.clear_hooks()
    api.shutdown()
    api.clear_providers()
