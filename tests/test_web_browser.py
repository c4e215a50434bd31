"""The live status page in headless Chromium (Debian's ``chromium``, driven by Playwright with no
browser download) during a rollout in virtual time: stage, percent and last decision render,
then change after each transition without a reload; a screenshot is kept as an artefact.

Outside CI the test is skipped when Chromium or Playwright is missing; in CI (``CI`` set,
scripts/test.sh installs both) it fails instead.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from e2e_world import FLAG, World, make_world

from openfeature_canary import RolloutPlan, load_plan
from openfeature_canary.web import StatusPage

EXAMPLE = Path(__file__).resolve().parent.parent / "examples" / "canary_plan.toml"
CHROMIUM = "/usr/bin/chromium"
NASTY = '<img src=x onerror="window.__pwned = 1">'
LAUNCH_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
#: How long the page may take to show a change (it polls every second; the machine is loaded).
SHOWN_S = 20


def _browser_or_skip() -> Any:
    missing = []
    if not Path(CHROMIUM).exists() and shutil.which("chromium") is None:
        missing.append(f"{CHROMIUM} (apt-get install chromium)")
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        missing.append("playwright (pip install playwright)")
        sync_playwright = None  # type: ignore[assignment]
    if missing:
        if os.environ.get("CI"):
            pytest.fail("the browser test needs " + ", ".join(missing))
        pytest.skip("needs " + ", ".join(missing))
    return sync_playwright


@pytest.fixture
def world(tmp_path: Path) -> Iterator[World]:
    plan: RolloutPlan = load_plan(EXAMPLE)
    made = make_world(plan, tmp_path)
    yield made
    made.close()


def _field(page: Any, name: str) -> str:
    text: str = page.locator(f'section[data-flag="{FLAG}"] [data-field="{name}"]').inner_text()
    return text


def _shows(page: Any, name: str, text: str) -> None:
    """Wait until the flag's ``name`` field contains ``text`` (the page's own polling)."""
    page.wait_for_function(
        """([flag, name, text]) => {
             const node = document.querySelector(
               `section[data-flag="${flag}"] [data-field="${name}"]`);
             return node !== null && node.textContent.includes(text);
           }""",
        arg=[FLAG, name, text],
        timeout=SHOWN_S * 1000,
    )


def test_page_follows_a_rollout_without_a_reload(world: World, tmp_path: Path) -> None:
    sync_playwright = _browser_or_skip()
    stages = world.plan.flag(FLAG).stages
    ctl = world.provider.controller(FLAG)
    ctl.start()
    with StatusPage(world.rollout, title="dataservice") as status, sync_playwright() as pw:
        # A fresh profile each run (Playwright passes it as --user-data-dir).
        browser = pw.chromium.launch_persistent_context(
            str(tmp_path / "chromium-profile"),
            executable_path=CHROMIUM if Path(CHROMIUM).exists() else shutil.which("chromium"),
            args=LAUNCH_ARGS,
            headless=True,
            viewport={"width": 1280, "height": 1400},
        )
        try:
            page = browser.new_page()
            loads: list[str] = []
            page.on("load", lambda _p: loads.append("load"))
            errors: list[str] = []
            page.on("pageerror", lambda exc: errors.append(str(exc)))
            page.goto(status.url)
            _shows(page, "stage", f"stage 1 of {len(stages)}")
            assert _field(page, "percent") == f"{stages[0].percent:g} %"
            assert _field(page, "status") == "running"
            assert "start" in _field(page, "last-decision")
            page.evaluate("window.__sameDocument = true")

            # The gates pass on healthy traffic; the autopilot advances at the stage's end.
            end = world.clock.now() + stages[0].duration_s + 120
            while world.state().stage < 2 and world.clock.now() < end:
                world.sim.step()
            assert world.state().stage == 2, world.state().log[-1]
            _shows(page, "stage", f"stage 2 of {len(stages)}")
            assert _field(page, "percent") == f"{stages[1].percent:g} %"
            _shows(page, "last-decision", "advance")

            # Three gate windows into stage 2: the evidence and its charts are drawn.
            world.run_for(3 * stages[1].window_s + 5)
            windows = len(world.state().windows)
            assert windows >= 3 and world.state().evidence is not None
            section = f'section[data-flag="{FLAG}"]'
            page.wait_for_function(
                """([section, windows]) => document.querySelectorAll(
                     `${section} [data-chart="p95_ms"] circle`).length >= 2 * windows""",
                arg=[section, windows],
                timeout=SHOWN_S * 1000,
            )
            evidence = world.state().evidence
            page.wait_for_function(  # the stage's requests (5xx), as the gates count them
                """([section, text]) => (document.querySelector(`${section} table.evidence`)
                     || {textContent: ""}).textContent.includes(text)""",
                arg=[section, f"{evidence.canary.n} ({evidence.canary.errors})"],
                timeout=SHOWN_S * 1000,
            )
            assert page.locator(f'{section} [data-chart="error_rate"] polyline').count() == 2
            shot = tmp_path / "status-page-stage2.png"
            page.screenshot(path=str(shot), full_page=True)

            ctl.rollback(NASTY)  # an operator's reason that is markup, shown as text
            _shows(page, "status", "rolled back")
            assert _field(page, "percent") == "0 %"
            classes = page.locator(f"{section} ol.timeline li").evaluate_all(
                "items => items.map(li => li.className)"
            )
            assert classes[:3] == ["done", "rolled_back", "next"]  # rolled back from stage 2
            _shows(page, "last-decision", NASTY)
            assert page.evaluate("window.__sameDocument") is True  # never reloaded
            assert loads == ["load"]
            assert page.evaluate("window.__pwned") is None
            assert page.locator("main img").count() == 0
            assert errors == []
            final = tmp_path / "status-page-rolled-back.png"
            page.screenshot(path=str(final), full_page=True)
        finally:
            browser.close()
    for path in (shot, final):
        assert path.stat().st_size > 10_000
        print(f"\nstatus page screenshot: {path}")
