"""Reports regenerated from the rollout state (``write_reports``), after real rollouts in
virtual time: a gate rollback, an operator rollback, a reset and a second run. The markdown
is parsed (sections, table cells and their units) and the SVG charts as XML (their series)."""

from __future__ import annotations

import os
import re
import sys
import xml.etree.ElementTree as ET
from collections.abc import Iterator
from pathlib import Path

import pytest
from e2e_world import FLAG, PHASE2, World, make_world

from openfeature_canary import RolloutPlan, Status, load_plan
from openfeature_canary.demo._simulation import Fault
from openfeature_canary.events import write_reports
from openfeature_canary.events._charts import MISSING_NOTE
from openfeature_canary.state import LogEntry, RolloutState

EXAMPLE = Path(__file__).resolve().parent.parent / "examples" / "canary_plan.toml"
DASH = "\u2013"
SVG = "{http://www.w3.org/2000/svg}"
TIME = r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ"
MS = r"\d+\.\d ms"
RATE = r"\d+\.\d\d %"
COLUMNS = [
    "Stage",
    "Traffic",
    "Started",
    "Ended",
    "n canary / baseline",
    "P95 canary / baseline (line)",
    "5xx canary / baseline (line)",
    "Could detect",
    "Decision",
]


@pytest.fixture(scope="module")
def plan() -> RolloutPlan:
    return load_plan(EXAMPLE)


@pytest.fixture
def worlds() -> Iterator[list[World]]:
    made: list[World] = []
    yield made
    for world in made:
        world.close()


def regenerate(world: World, folder: Path) -> list[Path]:
    return write_reports(world.plan, [world.state(FLAG), world.state(PHASE2)], folder)


def sections(text: str, level: str) -> dict[str, list[str]]:
    """Heading → its lines, for the headings of one level (``##``, ``###``)."""
    out: dict[str, list[str]] = {}
    current: list[str] | None = None
    for line in text.splitlines():
        if line.startswith(level + " "):
            current = out.setdefault(line[len(level) + 1 :], [])
        elif line.startswith("#") and len(line) - len(line.lstrip("#")) <= len(level):
            current = None
        elif current is not None:
            current.append(line)
    return out


def table(lines: list[str]) -> list[dict[str, str]]:
    """The first markdown table in ``lines`` as rows of column → cell."""
    rows = [line for line in lines if line.startswith("| ")]
    head = [c.strip() for c in rows[0].strip("|").split(" | ")]
    return [
        dict(zip(head, (c.strip() for c in row.strip("|").split(" | ")), strict=True))
        for row in rows[1:]
    ]


def run_sections(folder: Path, flag: str = FLAG) -> dict[str, list[str]]:
    text = (folder / "canary_results.md").read_text("utf-8")
    flag_lines = "\n".join(sections(text, "##")[f"`{flag}`"])
    return sections(flag_lines, "###")


def svg_series(path: Path) -> dict[str, int]:
    """A pygal chart's series (legend title → number of dots drawn)."""
    root = ET.parse(path).getroot()  # raises on anything that is not well-formed XML
    assert root.tag == f"{SVG}svg"
    titles = [
        t.text or ""
        for g in root.iter(f"{SVG}g")
        if "legend" in (g.get("class") or "").split()
        for t in g.iter(f"{SVG}text")
    ]
    dots: dict[int, int] = {}
    for g in root.iter(f"{SVG}g"):
        serie = [c for c in (g.get("class") or "").split() if c.startswith("serie-")]
        if serie:  # pygal draws a series in several groups (plot, overlays): sum them
            n = sum(1 for c in g.iter(f"{SVG}circle") if "dot" in (c.get("class") or ""))
            index = int(serie[0].removeprefix("serie-"))
            dots[index] = dots.get(index, 0) + n
    return {title: dots.get(i, 0) for i, title in enumerate(titles)}


def check_stage_row(row: dict[str, str]) -> None:
    assert list(row) == COLUMNS
    assert re.fullmatch(r"\d+ %", row["Traffic"]), row
    assert re.fullmatch(TIME, row["Started"]), row
    assert re.fullmatch(r"[\d,]+ / [\d,]+", row["n canary / baseline"]), row
    assert re.fullmatch(rf"{MS} / {MS} \(line {MS}\)", row["P95 canary / baseline (line)"]), row
    assert re.fullmatch(rf"{RATE} / {RATE} \(line {RATE}\)", row["5xx canary / baseline (line)"]), (
        row
    )


def test_gate_rollback_report_has_evidence_onset_and_charts(
    plan: RolloutPlan, tmp_path: Path, worlds: list[World]
) -> None:
    # Canary P95 ~145 ms from stage 2 on: over its 140 ms gate, under the 150 ms hard trigger,
    # so a gate test decides.
    world = make_world(plan, tmp_path, fault=Fault("slow-gate", FLAG, at_stage=2))
    worlds.append(world)
    world.provider.controller(FLAG).start()
    at = world.run_until_status(Status.ROLLED_BACK, 3 * 3600)
    assert at is not None
    rollback = world.state().log[-1]
    assert rollback.action == "rollback" and "test" in rollback.numbers
    out = tmp_path / "regen"

    written = regenerate(world, out)

    runs = run_sections(out)
    assert len(runs) == 1
    ((head, lines),) = runs.items()
    assert re.fullmatch(rf"Run 1 — started {TIME}, rolled back at {TIME}", head), head
    rows = table(lines)
    assert [r["Stage"] for r in rows] == ["1", "2"]
    for row in rows:
        check_stage_row(row)
    assert rows[0]["Decision"].startswith("**advance**")
    assert "% power" in rows[0]["Could detect"]
    assert rows[1]["Decision"].startswith(f"**rollback** — {rollback.reason}")
    assert f"gate:{rollback.numbers['test']}" in rows[1]["Decision"]
    n_canary, n_baseline = (
        int(x.replace(",", "")) for x in rows[1]["n canary / baseline"].split(" / ")
    )
    assert n_canary == rollback.numbers["samples"] and n_baseline > n_canary > 0
    # The onset lies between the fault's start (less one window) and the rollback.
    onset_line = next(line for line in lines if line.startswith("- Onset: "))
    onset = re.search(TIME, onset_line)
    assert onset is not None, onset_line
    true_onset = world.service.onset_at
    assert true_onset is not None
    from openfeature_canary._format import iso_utc

    assert iso_utc(true_onset - 300) <= onset.group() <= iso_utc(at)
    assert any(
        re.fullmatch(rf"- Detected: {TIME}, (at most )?\S+ after onset", line) for line in lines
    )
    # Charts next to the report, linked from it, with the canary and baseline series.
    links = [re.fullmatch(r"!\[.+\]\((charts/.+\.svg)\)", line) for line in lines]
    charts = [out / m.group(1) for m in links if m]
    assert {c.name for c in charts} == {f"{FLAG}-run1-p95.svg", f"{FLAG}-run1-5xx.svg"}
    assert set(charts) <= set(written)
    p95 = svg_series(out / "charts" / f"{FLAG}-run1-p95.svg")
    windows = sum(1 for e in world.state().log if e.action.startswith("window_"))
    assert p95["canary"] >= min(windows, 3) and p95["baseline"] == p95["canary"]
    assert {"line (plan)", "stage start", "rollback"} <= set(p95)
    # The abort report: the signal, its numbers with units, what users got, what to do next.
    abort = (out / "canary_abort.md").read_text("utf-8")
    ((head, section),) = sections(abort, "##").items()
    assert head.endswith(f"`{FLAG}` rolled back from 25 %: {rollback.reason}")
    fields = {r["Field"]: r["Value"] for r in table(section)}
    assert re.fullmatch(rf"{MS} vs {MS}|[\d.]+ vs [\d.]+", fields["Value vs threshold"])
    assert fields["Rule"] == f"gate:{rollback.numbers['test']}"
    assert re.fullmatch(rf"(≥ )?{TIME}", fields["Onset"])
    assert re.fullmatch(r"(≤ )?\d+[hms]\S*", fields["Detected after"])
    assert re.match(r"[\d,]+ canary requests \(25 % of traffic\)", fields["What users got"])
    assert f"reset {FLAG}" in fields["Next step"] and f"start {FLAG}" in fields["Next step"]
    # The live report, written while it ran, has the run's section and no windows cells.
    live = (world.reports / "canary_results.md").read_text("utf-8")
    assert "### Run 1 — started" in live and "inconclusive" not in live
    live_abort = (world.reports / "canary_abort.md").read_text("utf-8")
    assert "| What users got | " in live_abort and f"reset {FLAG}" in live_abort


def test_operator_rollback_then_reset_and_second_run_each_get_a_section(
    plan: RolloutPlan, tmp_path: Path, worlds: list[World]
) -> None:
    world = make_world(plan, tmp_path)
    worlds.append(world)
    ctl = world.provider.controller(FLAG)
    world.promote_to(2)
    world.run_for(300)
    ctl.rollback("dashboards look wrong")
    first = tmp_path / "after-rollback"
    regenerate(world, first)

    runs = run_sections(first)
    ((head, lines),) = runs.items()
    assert re.fullmatch(rf"Run 1 — started {TIME}, rolled back at {TIME}", head), head
    rows = table(lines)
    assert rows[-1]["Decision"].startswith("**rollback** — operator: dashboards look wrong")
    check_stage_row(rows[-1])
    assert f"- Onset: {DASH} (an operator's decision); detected" in "\n".join(lines)
    abort = (first / "canary_abort.md").read_text("utf-8")
    fields = {r["Field"]: r["Value"] for r in table(next(iter(sections(abort, "##").values())))}
    assert fields["Reason"] == "`operator` (dashboards look wrong)"
    assert fields["Onset"] == DASH and fields["Value vs threshold"] == f"{DASH} vs {DASH}"
    assert re.match(r"[1-9][\d,]* canary requests \(25 % of traffic\)", fields["What users got"])
    assert svg_series(first / "charts" / f"{FLAG}-run1-p95.svg")["canary"] > 0

    ctl.reset()
    ctl.start()
    world.run_for(900)
    second = tmp_path / "second-run"
    regenerate(world, second)

    runs = run_sections(second)
    heads = list(runs)
    assert len(heads) == 2, heads
    assert re.fullmatch(rf"Run 1 — started {TIME}, rolled back at {TIME}", heads[0])
    assert re.fullmatch(rf"Run 2 — started {TIME}, (still running|completed.*)", heads[1])
    second_rows = table(runs[heads[1]])
    assert second_rows[0]["Stage"] == "1"
    assert second_rows[0]["Decision"].startswith("**advance**")
    assert (second / "charts" / f"{FLAG}-run2-p95.svg").exists()
    assert svg_series(second / "charts" / f"{FLAG}-run2-5xx.svg")["canary"] > 0
    # One rollback, one abort section; the second run has none.
    assert (second / "canary_abort.md").read_text("utf-8").count("\n## ") == 1
    # The live results file splits the runs the same way.
    live = (world.reports / "canary_results.md").read_text("utf-8")
    assert "### Run 1 — started" in live and "### Run 2 — started" in live


def test_without_pygal_the_markdown_renders_and_says_so(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, plan: RolloutPlan
) -> None:
    monkeypatch.setitem(sys.modules, "pygal", None)  # an import of it now raises ImportError
    state = _two_runs()

    write_reports(plan, [state], tmp_path)

    text = (tmp_path / "canary_results.md").read_text("utf-8")
    assert text.count(MISSING_NOTE) == 2 and "### Run 2" in text
    assert "| 400 / 8,000 | 121.0 ms / 120.0 ms (line 150.0 ms) |" in text
    assert text.rstrip().endswith("| running (numbers: its newest window) |\n\n" + MISSING_NOTE)
    assert not (tmp_path / "charts").exists()


@pytest.mark.parametrize(("umask", "mode"), [(0o077, 0o600), (0o027, 0o640)])
def test_regenerated_reports_and_charts_follow_the_umask(
    tmp_path: Path, plan: RolloutPlan, umask: int, mode: int
) -> None:
    old = os.umask(umask)
    try:
        written = write_reports(plan, [_two_runs()], tmp_path / "reports")
    finally:
        os.umask(old)
    assert any(p.suffix == ".svg" for p in written)
    assert {p.name for p in written} >= {"canary_plan.md", "canary_results.md", "canary_abort.md"}
    for path in written:
        assert path.stat().st_mode & 0o777 == mode, path


def _two_runs() -> RolloutState:
    """A hand-written log: a run rolled back at stage 1 by a trigger, a reset, a second run."""
    t = 1_800_000_000.0

    def window(at: float, p95: float) -> LogEntry:
        return LogEntry(
            at,
            "window_pass",
            "",
            {
                "n": 400,
                "p95_ms": p95,
                "error_rate": 0.0,
                "baseline_n": 8000,
                "baseline_p95_ms": 120.0,
                "baseline_error_rate": 0.0,
                "window_s": 60.0,
            },
        )

    log = (
        LogEntry(t, "start", "operator", {"to_stage": 1, "to_pct": 5}),
        window(t + 60, 125.0),
        window(t + 120, 170.0),
        LogEntry(
            t + 150,
            "rollback",
            "p95_breach",
            {
                "value": 171.0,
                "threshold": 150,
                "signal": "latency_p95_ms",
                "n": 400,
                "from_stage": 1,
                "from_pct": 5,
                "samples": 800,
            },
        ),
        LogEntry(t + 600, "reset", "operator", {"from_status": "rolled_back"}),
        LogEntry(t + 700, "start", "operator", {"to_stage": 1, "to_pct": 5}),
        window(t + 760, 121.0),
    )
    return RolloutState(flag_key=FLAG, status=Status.RUNNING, stage=1, percent=5.0, log=log)


def test_a_chart_library_failure_leaves_the_markdown_and_says_why(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, plan: RolloutPlan
) -> None:
    # A fault pygal cannot be made to produce on demand: its XY chart raising while drawing.
    import pygal

    def broken(**_: object) -> None:
        raise ValueError("no room for the legend")

    monkeypatch.setattr(pygal, "XY", broken)

    written = write_reports(plan, [_two_runs()], tmp_path)

    text = (tmp_path / "canary_results.md").read_text("utf-8")
    assert text.count("Charts not drawn: ValueError: no room for the legend") == 2
    assert "### Run 2" in text and not any(p.suffix == ".svg" for p in written)
