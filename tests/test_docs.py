"""The documentation tells the truth: its code runs and its links lead somewhere.

- The README's quick start runs as a user would paste it (in a folder holding the example
  plan as ``canary_plan.toml``, with the store's folder created first as the README asks; only
  the machine-specific store path and port are swapped), and the README's ``start`` command
  is carried out by the service it starts.
- The Python examples of docs/plan.md, docs/policy.md and docs/architecture.md run, and the
  asserts they contain hold.
- Every relative link in README.md and docs/*.md points to an existing file (and heading).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
README = ROOT / "README.md"
EXAMPLE_PLAN = ROOT / "examples" / "canary_plan.toml"
DOCS = sorted((ROOT / "docs").glob("*.md"))
#: Docs whose every ```python block is a complete, runnable example.
RUNNABLE_DOCS = ("plan.md", "policy.md", "architecture.md")

_FENCE = re.compile(r"^```(\w*)[^\n]*\n(.*?)^```", re.MULTILINE | re.DOTALL)
_LINK = re.compile(r"\[[^\]]*\]\(([^)\s]+)(?:\s+\"[^\"]*\")?\)")
_INLINE_CODE = re.compile(r"`[^`\n]*`")


def _blocks(text: str, language: str) -> list[str]:
    return [body for lang, body in _FENCE.findall(text) if lang == language]


def _run_python(code: str, cwd: Path, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k not in ("A8_URL", "DATASERVICE_READ_CANARY")}
    return subprocess.run(
        [sys.executable, "-c", code],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def _user_folder(tmp_path: Path) -> Path:
    """The service's folder (holding the plan), and the state store's folder, which must exist
    (the README says so: the store does not create it)."""
    folder = tmp_path / "service"
    folder.mkdir()
    shutil.copy(EXAMPLE_PLAN, folder / "canary_plan.toml")
    (tmp_path / "state").mkdir()
    return folder


README_STORE = "file:///var/lib/canary/state.json"
FLAG = "dataservice-read-canary"


def _store(tmp_path: Path) -> str:
    return f"file://{tmp_path / 'state' / 'state.json'}"


def _run_cli(argv: list[str], cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "openfeature_canary", *argv],
        cwd=cwd,
        env={k: v for k, v in os.environ.items() if k != "A8_URL"},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


# --------------------------------------------------------------------------- README


def _quick_start() -> str:
    section = README.read_text("utf-8").split("## Quick start", 1)[1]
    blocks = _blocks(section, "python")
    assert blocks, "README.md: no ```python block under '## Quick start'"
    return blocks[0]


def _adapted_quick_start(tmp_path: Path, then: str = "") -> str:
    """The quick start with this machine's store and port, followed by ``then`` (code run
    after it); the result is reported back as JSON for the asserts."""
    code = _quick_start()
    port = "prometheus_port=9464"
    assert README_STORE in code and port in code, "README quick start changed: update this test"
    code = code.replace(README_STORE, _store(tmp_path))
    code = code.replace(port, "prometheus_port=0")
    # request_id is the caller's.
    return (
        'request_id = "req-42"\n'
        + code
        + "\n"
        + then
        + "import json as _json\n"
        + "print(_json.dumps({'value': use_dataservice,"
        + f" 'percent': provider.view({FLAG!r}).percent}}))\n"
        + "provider.shutdown()\ntelemetry.shutdown()\n"
    )


#: Run after the quick start: wait (at most 20 s) for the service's policy to carry out a start
#: requested from the command line, then evaluate the flag again.
_AWAIT_STAGE_ONE = f"""
import time as _time
_deadline = _time.monotonic() + 20
while provider.view({FLAG!r}).percent == 0 and _time.monotonic() < _deadline:
    _time.sleep(0.05)
use_dataservice = client.get_boolean_value({FLAG!r}, False, ctx)
"""


def _result(proc: subprocess.CompletedProcess[str]) -> dict[str, object]:
    assert proc.returncode == 0, proc.stderr[-3000:]
    data: dict[str, object] = json.loads(proc.stdout.strip().splitlines()[-1])
    return data


def test_readme_quick_start_fresh_store_answers_false_at_zero_percent(tmp_path: Path) -> None:
    folder = _user_folder(tmp_path)
    result = _result(_run_python(_adapted_quick_start(tmp_path), folder))
    # A fresh store is pending (0 %): the evaluation answers a bool, the old path.
    assert result == {"value": False, "percent": 0.0}
    assert (folder / "canary-reports" / "canary_plan.md").is_file()


def test_readme_quick_start_with_a_corrupt_store_logs_and_serves_the_old_path(
    tmp_path: Path,
) -> None:
    folder = _user_folder(tmp_path)
    (tmp_path / "state" / "state.json").write_text('{"flags": {"dataservice-read', "utf-8")
    proc = _run_python(_adapted_quick_start(tmp_path), folder)
    # set_provider_and_wait raised; the service caught it, logged it and kept serving 0 %.
    assert _result(proc) == {"value": False, "percent": 0.0}
    assert "canary rollout unavailable: " in proc.stderr
    assert "state.json" in proc.stderr


def test_readme_quick_start_without_the_except_would_crash_on_a_corrupt_store(
    tmp_path: Path,
) -> None:
    # Guards the test above: the snippet's try/except is what keeps the service up.
    folder = _user_folder(tmp_path)
    (tmp_path / "state" / "state.json").write_text("not json", "utf-8")
    code = _adapted_quick_start(tmp_path).replace(
        "except OpenFeatureError as exc:", "except KeyboardInterrupt as exc:"
    )
    proc = _run_python(code, folder)
    assert proc.returncode != 0
    assert "ProviderNotReadyError" in proc.stderr


def test_readme_quick_start_after_the_start_command_serves_stage_one(tmp_path: Path) -> None:
    folder = _user_folder(tmp_path)
    readme = " ".join(README.read_text("utf-8").split())
    match = re.search(r"`(openfeature-canary start [^`]+)`", readme)
    assert match is not None, "README.md: the `openfeature-canary start …` command is gone"
    argv = match.group(1).split()[1:]
    assert README_STORE in argv, "README start command changed: update this test"
    argv = [_store(tmp_path) if a == README_STORE else a for a in argv]
    # The command records a request: the flag stays pending until the service starts it.
    started = _run_cli(argv, folder)
    assert started.returncode == 0, started.stderr
    assert started.stdout.startswith(f"{FLAG}: pending, stage 0/4, 0% (start requested)\n")

    # The service (the quick start, which runs the policy) carries it out: the baseline is
    # quiet (no traffic breaches a trigger), so its policy starts stage 1.
    result = _result(_run_python(_adapted_quick_start(tmp_path, then=_AWAIT_STAGE_ONE), folder))
    assert isinstance(result["value"], bool)
    assert result["percent"] == 5.0

    status = _run_cli(["status", FLAG, "--json", "--store", _store(tmp_path)], folder)
    assert status.returncode == 0, status.stderr
    (shown,) = json.loads(status.stdout)["flags"]
    assert (shown["status"], shown["stage"], shown["requested"]) == ("running", 1, None)
    assert shown["last_decision"]["action"] == "start"


# --------------------------------------------------------------------------- examples


@pytest.mark.parametrize("name", RUNNABLE_DOCS)
def test_docs_python_examples_run_and_their_asserts_hold(name: str, tmp_path: Path) -> None:
    blocks = _blocks((ROOT / "docs" / name).read_text("utf-8"), "python")
    assert blocks or name == "architecture.md", f"docs/{name}: no python example"
    for index, code in enumerate(blocks):
        folder = tmp_path / f"block{index}"
        folder.mkdir()
        shutil.copy(EXAMPLE_PLAN, folder / "canary_plan.toml")
        proc = _run_python(code, folder)
        assert proc.returncode == 0, f"docs/{name} python block {index}:\n{proc.stderr[-3000:]}"


# --------------------------------------------------------------------------- links


def _relative_links(path: Path) -> list[str]:
    text = _FENCE.sub("", path.read_text("utf-8"))
    text = _INLINE_CODE.sub("", text)
    return [t for t in _LINK.findall(text) if not re.match(r"^[a-z][a-z0-9+.-]*:", t)]


def _anchors(path: Path) -> set[str]:
    """GitHub's heading anchors: lower case, punctuation dropped, spaces to hyphens."""
    text = _FENCE.sub("", path.read_text("utf-8"))
    headings = re.findall(r"^#{1,6} +(.+?) *$", text, re.MULTILINE)
    return {re.sub(r"[^\w\- ]", "", h.lower()).replace(" ", "-") for h in headings}


def _broken(doc: Path) -> list[str]:
    broken = []
    for link in _relative_links(doc):
        target, _, anchor = link.partition("#")
        file = doc.parent / target if target else doc
        if not file.exists() or (anchor and file.suffix == ".md" and anchor not in _anchors(file)):
            broken.append(link)
    return broken


@pytest.mark.parametrize("doc", [README, *DOCS], ids=lambda p: p.name)
def test_docs_relative_links_point_to_existing_files(doc: Path) -> None:
    assert _broken(doc) == [], f"{doc.relative_to(ROOT)}: broken links"


def test_docs_link_checker_flags_missing_files_and_anchors(tmp_path: Path) -> None:
    # Guards the checker itself, so that a green link test means something.
    (tmp_path / "a.md").write_text("# Title\n\n## The `x` part\n", "utf-8")
    doc = tmp_path / "doc.md"
    doc.write_text(
        "[ok](a.md) [ok](a.md#the-x-part) [ok](#here) [web](https://example.com/x.md)\n"
        "[gone](b.md) [bad anchor](a.md#nope) `[code](c.md)`\n\n## Here\n",
        "utf-8",
    )
    assert _broken(doc) == ["b.md", "a.md#nope"]
    assert "docs/plan.md" in _relative_links(README)
