"""Every code block in ``docs/`` and the README runs: each page's blocks in order, in one fresh
process.

A page's ``python`` blocks share one namespace (a later block uses what an earlier one defined) and
its ``bash`` blocks run in the same temporary directory, with this interpreter's ``tm`` on PATH, so
a page is a program a reader could paste. A block titled with a file name
(```` ```python title="pipeline.py" ````) is written to that file instead, for the blocks after it
to import or for ``tm`` commands to load. A block that cannot run here is preceded by a
``<!-- no-run: why -->`` comment; :data:`NOT_RUN` lists every such block, so a new one is a
decision this test makes visible. The PostgreSQL page runs against the test server
(``tests/pg.py``): its placeholder URL is replaced by the server's.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
DOCS = ROOT / "docs"
README = ROOT / "README.md"

#: The placeholder database URL the PostgreSQL page uses; the test swaps in the test server's.
PG_PLACEHOLDER = "postgresql://tm@db.internal/tm"

#: (page, first line of the block) of every block marked ``no-run``, with the reason.
NOT_RUN = {
    ("README.md", "make demo"): "builds the extension; the test suite itself runs after that",
    ("README.md", 'nightly = tm.Graph("nightly"'): "start() blocks until a signal "
    "(docs/scheduler.md runs it under a VirtualClock)",
    ("README.md", 'ex = tm.Executor(store="postgresql://'): "needs a PostgreSQL server "
    "(docs/postgresql.md runs against the tests' one)",
    ("index.md", "make demo"): "builds the extension; the test suite itself runs after that",
    ("scheduler.md", "nightly = tm.Graph("): "start() blocks until a signal (the page runs it "
    "under a VirtualClock instead)",
    ("scheduler.md", "tm start jobs.py"): "runs until SIGTERM",
    ("postgresql.md", "tm work pipeline.py --db postgresql://tm@db.internal/tm"): "serves "
    "until SIGTERM (the page runs Executor.work instead)",
    ("observability.md", "import tm, tm.notify"): "needs OpenTelemetry providers and a webhook "
    "endpoint",
    ("migration.md", "from croniter import croniter"): "the peers' code, shown for comparison",
    ("migration.md", "from joblib import Memory"): "the peers' code, shown for comparison",
    ("migration.md", "from apscheduler.schedulers.blocking import BlockingScheduler"): "the "
    "peers' code, shown for comparison",
    ("migration.md", "from airflow.decorators import dag, task"): "the peers' code, shown for "
    "comparison",
}

FENCE = re.compile(
    r"(?P<mark><!--\s*no-run:(?P<why>[^>]*)-->\s*\n)?^```(?P<lang>[\w-]*)(?P<info>[^\n]*)\n"
    r"(?P<code>.*?)^```",
    re.M | re.S,
)

#: Runs a page's blocks in one namespace; bash blocks in a shell. Errors name page and line.
DRIVER = r"""
import json as _json, subprocess as _subprocess, sys as _sys
_ns = _sys.modules["__main__"].__dict__  # functions the blocks define pickle by name
for _b in _json.load(_sys.stdin):
    _where = f"{_b['page']}, block at line {_b['line']}"
    if _b["file"]:
        with open(_b["file"], "w") as _f:
            _f.write(_b["code"])
    elif _b["lang"] == "python":
        exec(compile(_b["code"], _where, "exec"), _ns)
    else:
        _r = _subprocess.run(["bash", "-euo", "pipefail", "-c", _b["code"]])
        if _r.returncode != 0:
            _sys.exit(f"{_where}: bash exited {_r.returncode}")
"""


def blocks(page: Path) -> list[dict[str, object]]:
    """Every fenced block of ``page``: language, code, line, and the no-run reason if marked."""
    text = page.read_text()
    out = []
    for m in FENCE.finditer(text):
        out.append(
            {
                "page": name(page),
                "lang": m.group("lang"),
                "code": m.group("code"),
                "line": text.count("\n", 0, m.start("lang")) + 1,
                "file": (re.findall(r'title="([^"]+)"', m.group("info")) or [None])[0],
                "no_run": m.group("why").strip() if m.group("mark") else None,
            }
        )
    return out


def name(page: Path) -> str:
    """``README.md``, or the page's path under ``docs/``."""
    return page.name if page == README else page.relative_to(DOCS).as_posix()


PAGES = [README, *sorted(DOCS.rglob("*.md"))]


def test_pages_found() -> None:
    assert {"index.md", "cron.md", "graphs.md", "architecture.md"} <= {p.name for p in PAGES}


def test_blocks_are_python_bash_or_text() -> None:
    # Only these languages can run; "text" is for output and trees, which contain no code.
    for page in PAGES:
        for b in blocks(page):
            assert b["lang"] in {"python", "bash", "text"}, (b["page"], b["line"], b["lang"])


def test_not_run_blocks_are_the_listed_ones() -> None:
    # Each marked block matches one NOT_RUN entry (page, start of its first line), with the
    # same reason, and every entry matches a block.
    unmatched = dict(NOT_RUN)
    for page in PAGES:
        for b in blocks(page):
            if b["no_run"] is None:
                continue
            first = str(b["code"]).strip().splitlines()[0]
            keys = [k for k in unmatched if k[0] == b["page"] and first.startswith(k[1])]
            assert len(keys) == 1, f"{b['page']}:{b['line']}: no-run block not in NOT_RUN"
            assert b["no_run"] == unmatched.pop(keys[0]), f"{b['page']}:{b['line']}: reason"
    assert not unmatched, f"NOT_RUN entries without a block: {sorted(unmatched)}"


def run_page(page: Path, cwd: Path, replace: dict[str, str] | None = None) -> None:
    runnable = [b for b in blocks(page) if b["no_run"] is None and b["lang"] != "text"]
    for b in runnable:
        for old, new in (replace or {}).items():
            b["code"] = str(b["code"]).replace(old, new)
    env = {k: v for k, v in os.environ.items() if not k.startswith("TM_")}
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    r = subprocess.run(
        [sys.executable, "-c", DRIVER],
        input=json.dumps(runnable),
        capture_output=True,
        text=True,
        cwd=cwd,
        env=env,
        timeout=120,
    )
    assert r.returncode == 0, f"{page.name}\n{r.stdout}\n{r.stderr}"


@pytest.mark.parametrize(
    "page",
    [p for p in PAGES if p.name != "postgresql.md"],
    ids=name,
)
def test_page_runs(page: Path, tmp_path: Path) -> None:
    run_page(page, tmp_path)


def test_postgresql_page_runs(pg_url: str, tmp_path: Path) -> None:
    run_page(DOCS / "postgresql.md", tmp_path, {PG_PLACEHOLDER: pg_url})
