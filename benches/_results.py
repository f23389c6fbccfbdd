"""The shared writer of ``benches/RESULTS.md``: one dated section per workload.

Each bench wraps the printing of its tables in :func:`recorded`: what it prints still goes to
stdout, and is also written to the results file as a section of its own, headed by the date and
the machine (CPU model, cores, Python, OS). A section that is already in the file (from an earlier
run of the same bench) is replaced, the others are kept, so one bench can be run again alone.
``make bench`` starts a fresh file first (``python benches/_results.py --new``).

Where it writes: ``$TM_BENCH_RESULTS`` if set, else ``benches/RESULTS.md``; a ``--quick`` run
(a smoke test, not a measurement) writes nothing unless ``$TM_BENCH_RESULTS`` is set, so the
smoke tests never touch the committed file.

    python benches/_results.py --new                      # a fresh file with its header
    cmd | python benches/_results.py --stdin KEY "Title"  # a section from another program's output
"""

from __future__ import annotations

import argparse
import io
import os
import platform
import re
import sys
from collections.abc import Iterator
from contextlib import contextmanager, redirect_stdout
from datetime import datetime, timezone
from pathlib import Path

RESULTS = Path(__file__).resolve().with_name("RESULTS.md")
ENV = "TM_BENCH_RESULTS"

HEADER = """# Benchmark results

Written by `make bench`: every bench in `benches/` against its peers, in the same process run,
each section dated and with the machine it ran on. Compare ratios within a section; absolute
figures move with the machine and its load. The narrative of what changed them is in
`docs/benchmarks.md`.
"""


def target(quick: bool = False) -> Path | None:
    """The file to write, or None (a quick run without ``$TM_BENCH_RESULTS``)."""
    env = os.environ.get(ENV)
    if env:
        return Path(env)
    return None if quick else RESULTS


def cpu_model() -> str:
    """The CPU's model name (from /proc/cpuinfo on Linux), else what platform knows."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown"


def machine() -> str:
    """One line naming the machine: CPU model, cores, Python, OS."""
    return (
        f"{cpu_model()}, {os.cpu_count()} cores; "
        f"{platform.python_implementation()} {platform.python_version()}; "
        f"{platform.system()} {platform.release()} ({platform.machine()})"
    )


def new(path: Path | None = None) -> Path:
    """Starts a fresh results file holding only the header; returns its path."""
    path = path or target() or RESULTS
    path.write_text(HEADER)
    return path


def _demoted(text: str) -> str:
    # A bench's own headings go below the section's "## title".
    return re.sub(r"^(#+) ", lambda m: "##" + m.group(1) + " ", text, flags=re.M)


def write_section(key: str, title: str, body: str, quick: bool = False) -> Path | None:
    """Puts ``body`` in the results file as section ``key`` (replacing an earlier one)."""
    path = target(quick)
    if path is None:
        return None
    when = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    note = " (--quick: not a measurement)" if quick else ""
    section = (
        f"<!-- bench:{key} -->\n## {title}\n\n"
        f"Run {when} on {machine()}{note}.\n\n{_demoted(body.strip())}\n<!-- /bench:{key} -->\n"
    )
    text = path.read_text() if path.exists() else HEADER
    pattern = re.compile(
        rf"<!-- bench:{re.escape(key)} -->\n.*?<!-- /bench:{re.escape(key)} -->\n", re.S
    )
    if pattern.search(text):
        text = pattern.sub(lambda _: section, text)
    else:
        text = text.rstrip("\n") + "\n\n" + section
    path.write_text(text)
    return path


class _Tee(io.TextIOBase):
    """Writes to the real stdout and keeps a copy."""

    def __init__(self, out: io.TextIOBase) -> None:
        self.out = out
        self.copy = io.StringIO()

    def write(self, s: str) -> int:
        self.copy.write(s)
        return self.out.write(s)

    def flush(self) -> None:
        self.out.flush()


@contextmanager
def recorded(key: str, title: str, quick: bool = False) -> Iterator[None]:
    """Everything printed inside the block is also written as section ``key`` of the results
    (only if the block ends without an exception)."""
    tee = _Tee(sys.stdout)  # type: ignore[arg-type]
    with redirect_stdout(tee):  # type: ignore[type-var]
        yield
    write_section(key, title, tee.copy.getvalue(), quick)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--new", action="store_true", help="start a fresh results file")
    ap.add_argument("--stdin", nargs=2, metavar=("KEY", "TITLE"), help="a section from stdin")
    args = ap.parse_args(argv)
    if args.new:
        print(f"results: {new()}")
    if args.stdin:
        key, title = args.stdin
        write_section(key, title, "```text\n" + sys.stdin.read().strip() + "\n```")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
