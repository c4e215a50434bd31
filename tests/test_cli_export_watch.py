"""``export-flagd --watch`` writes only when what flagd would serve changes (issue 16 §7: a
tick that only updates the stage's evidence bumps the state's version, and each rewrite made
flagd reload: 282 writes in 8 minutes). One poll at a time, on a real file store."""

from __future__ import annotations

import argparse
import io
import json
from pathlib import Path

from openfeature_canary import SystemClock, load_plan
from openfeature_canary.cli import run
from openfeature_canary.cli._common import Io, open_rollout
from openfeature_canary.cli._export import _Watcher, served
from openfeature_canary.evidence import StageEvidence
from openfeature_canary.policy import transitions
from openfeature_canary.stores import open_store

READ = "dataservice-read-canary"


def test_watch_rewrites_only_when_what_flagd_serves_changes(tmp_path: Path, example_plan_path):
    (tmp_path / "state").mkdir()
    store_url = f"file://{tmp_path / 'state' / 'state.json'}"
    common = ["--plan", str(example_plan_path), "--store", store_url]
    assert run(["start", READ, "--force", *common]) == 0
    plan = load_plan(example_plan_path)
    out = io.StringIO()
    cli_io = Io(out, io.StringIO(), SystemClock())
    args = argparse.Namespace(plan=str(example_plan_path), store=store_url)
    rollout, _ = open_rollout(args, plan, cli_io)
    target = tmp_path / "flags.flagd.json"
    watcher = _Watcher(plan, rollout, "flagd", target, cli_io)

    watcher.poll()
    first = target.read_bytes()
    assert out.getvalue().count(f"{target}: ") == 1

    # What the decider persists at each tick: the stage's evidence, nothing flagd serves.
    store = open_store(store_url)
    for through in (10.0, 20.0, 30.0):
        state = store.load(READ)
        assert state is not None
        evidence = StageEvidence(stage=1, started=state.since, through=state.since + through)
        store.save(transitions.record(state, windows=(), evidence=evidence), state.version)
        watcher.poll()
    assert target.read_bytes() == first  # not rewritten: flagd does not reload
    assert out.getvalue().count(f"{target}: ") == 1
    assert store.load(READ).version == 4  # type: ignore[union-attr]

    assert run(["promote", READ, *common]) == 0
    watcher.poll()
    meta = json.loads(target.read_text())["flags"][READ]["metadata"]
    assert (meta["percent"], meta["state_version"]) == (25.0, 5)
    assert out.getvalue().count(f"{target}: ") == 2


def test_served_ignores_only_the_state_version():
    definition = {
        "flags": {"f": {"state": "ENABLED", "metadata": {"state_version": 3, "percent": 5.0}}}
    }
    bumped = {
        "flags": {"f": {"state": "ENABLED", "metadata": {"state_version": 4, "percent": 5.0}}}
    }
    moved = {
        "flags": {"f": {"state": "ENABLED", "metadata": {"state_version": 4, "percent": 25.0}}}
    }
    assert served(definition) == served(bumped)
    assert served(definition) != served(moved)
