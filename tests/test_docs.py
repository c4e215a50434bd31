"""The documentation tells the truth: its code runs and its links lead somewhere.

- The README's quick start runs as a user would paste it (in a folder holding the example
  plan as ``canary_plan.toml``; only the machine-specific store path and port are swapped).
- The Python examples of docs/plan.md, docs/policy.md and docs/architecture.md run, and the
  asserts they contain hold.
- Every relative link in README.md and docs/*.md points to an existing file (and heading).
"""

from __future__ import annotations

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
    folder = tmp_path / "service"
    folder.mkdir()
    shutil.copy(EXAMPLE_PLAN, folder / "canary_plan.toml")
    return folder


# --------------------------------------------------------------------------- README


def _quick_start() -> str:
    section = README.read_text("utf-8").split("## Quick start", 1)[1]
    blocks = _blocks(section, "python")
    assert blocks, "README.md: no ```python block under '## Quick start'"
    return blocks[0]


def _adapted_quick_start(tmp_path: Path) -> str:
    code = _quick_start()
    store = "file:///var/lib/canary/state.json"
    port = "prometheus_port=9464"
    assert store in code and port in code, "README quick start changed: update this test"
    code = code.replace(store, f"file://{tmp_path / 'state' / 'state.json'}")
    code = code.replace(port, "prometheus_port=0")
    # request_id is the caller's; the result is reported back as JSON for the asserts.
    return (
        'request_id = "req-42"\n'
        + code
        + "\nimport json as _json\n"
        + "print(_json.dumps({'value': use_dataservice,"
        + " 'percent': provider.view('dataservice-read-canary').percent}))\n"
        + "provider.shutdown()\ntelemetry.shutdown()\n"
    )


def _result(proc: subprocess.CompletedProcess[str]) -> dict[str, object]:
    import json

    assert proc.returncode == 0, proc.stderr[-3000:]
    data: dict[str, object] = json.loads(proc.stdout.strip().splitlines()[-1])
    return data


def test_readme_quick_start_fresh_store_answers_false_at_zero_percent(tmp_path: Path) -> None:
    folder = _user_folder(tmp_path)
    result = _result(_run_python(_adapted_quick_start(tmp_path), folder))
    # A fresh store is pending (0 %): the evaluation answers a bool, the old path.
    assert result == {"value": False, "percent": 0.0}
    assert (folder / "canary-reports" / "canary_plan.md").is_file()


def test_readme_quick_start_after_the_start_command_serves_stage_one(tmp_path: Path) -> None:
    folder = _user_folder(tmp_path)
    readme = " ".join(README.read_text("utf-8").split())
    match = re.search(r"`(openfeature-canary start [^`]+)`", readme)
    assert match is not None, "README.md: the `openfeature-canary start …` command is gone"
    argv = match.group(1).split()[1:]
    store = f"file://{tmp_path / 'state' / 'state.json'}"
    argv = [store if a == "file:///var/lib/canary/state.json" else a for a in argv]
    assert store in argv
    started = subprocess.run(
        [sys.executable, "-m", "openfeature_canary", *argv],
        cwd=folder,
        env={k: v for k, v in os.environ.items() if k != "A8_URL"},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert started.returncode == 0, started.stderr

    result = _result(_run_python(_adapted_quick_start(tmp_path), folder))
    assert isinstance(result["value"], bool)
    assert result["percent"] == 5.0


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
