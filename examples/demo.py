"""``make demo``: a small real pipeline on tm.

    fetch --> parse_<source> (one per source, in parallel) --> aggregate --> report

* ``fetch`` reads the graph's config (which sources, which words to count) and builds a batch of
  text per source; it logs through ``context.logger``.
* each ``parse_<source>`` counts the configured words in its source's text. The "beta" source is
  flaky: its first attempt raises ``ConnectionError`` and tm retries it (``retries=2``).
* ``aggregate`` receives every parser's output through ``**parsed`` and sums the counts.
* ``report`` formats the totals.

The run goes through ``tm.Executor``; the returned ``tm.Run`` gives every task's state, attempts
and timings, printed as a table. Last, the next three fire times of a cron schedule, computed by
``tm.cron.Expression`` from a fixed instant. Everything printed is deterministic except durations.
"""

from __future__ import annotations

import logging
import threading
from collections import Counter
from datetime import datetime

import tm

CONFIG = {
    "sources": ["alpha", "beta", "gamma"],
    "words": ["tm", "rust", "python"],
    "flaky_source": "beta",
}

TEXTS = {
    "alpha": "tm runs python tasks on a rust core; python stays python",
    "beta": "rust schedules, python works, tm records: rust rust",
    "gamma": "tm tm tm - one wheel, no server",
}

SCHEDULE = "30 6 * * mon-fri"
SCHEDULE_FROM = datetime(2024, 3, 8, 12, 0)  # a Friday


class Flaky:
    """Fails the first call, succeeds afterwards (a counter shared by the task's attempts)."""

    def __init__(self) -> None:
        self.calls = 0
        self._lock = threading.Lock()

    def check(self, source: str) -> None:
        with self._lock:
            self.calls += 1
            first = self.calls == 1
        if first:
            raise ConnectionError(f"{source}: connection reset (transient)")


flaky = Flaky()


@tm.task
def fetch(config, context):
    context.logger.info("run %s: fetching %d sources", context.run_id, len(config["sources"]))
    return {source: TEXTS[source] for source in config["sources"]}


def make_parser(source: str) -> tm.TaskFunction:
    def parse(fetch, config, context):
        if source == config["flaky_source"]:
            flaky.check(source)
        words = [w.strip(".,;:-").lower() for w in fetch[source].split()]
        counts = Counter(w for w in words if w in config["words"])
        context.logger.info("%s parsed on attempt %d", source, context.attempt + 1)
        return {"source": source, "counts": dict(counts), "attempt": context.attempt + 1}

    return tm.task(parse, name=f"parse_{source}", retries=2, retry_delay=0.02, tag="parse")


@tm.task
def aggregate(config, **parsed):
    totals = Counter()
    for result in parsed.values():
        totals.update(result["counts"])
    return {
        "sources": sorted(r["source"] for r in parsed.values()),
        "totals": {w: totals.get(w, 0) for w in config["words"]},
    }


@tm.task
def report(aggregate):
    lines = [f"sources: {', '.join(aggregate['sources'])}"]
    lines += [f"  {word:<8}{n:>3}" for word, n in aggregate["totals"].items()]
    return "\n".join(lines)


def build_graph() -> tm.Graph:
    graph = tm.Graph("word-count demo", schedule=SCHEDULE, config=CONFIG)
    parsers = [make_parser(source) for source in CONFIG["sources"]]
    graph.add_edges(fetch, parsers)
    graph.add_edges(parsers, aggregate)
    graph.add_edges(aggregate, report)
    return graph


def task_table(run: tm.Run, order: list[str]) -> str:
    rows = [("task", "state", "attempts", "duration")]
    for name in order:
        t = run.tasks[name]
        duration = "-" if t.duration is None else f"{t.duration * 1000:.2f} ms"
        rows.append((name, t.state, str(len(t.attempts)), duration))
    widths = [max(len(row[i]) for row in rows) for i in range(4)]
    return "\n".join(
        "  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip()
        for row in rows
    )


def main() -> int:
    logging.basicConfig(level=logging.WARNING, format="%(name)s: %(message)s")
    graph = build_graph()
    print(f"graph {graph.name!r}: {len(graph)} tasks")
    print("roots:", ", ".join(graph.roots()), "| leaves:", ", ".join(graph.leaves()))
    with tm.Executor(workers=4, pools={"parse": 3}) as executor:
        run = executor.run(graph)
    run.raise_for_state()
    print(f"run state: {run.state}")
    print(run.result())
    beta = run.tasks["parse_beta"]
    print(
        f"parse_beta: first attempt failed with {type(beta.attempts[0].error).__name__}, "
        f"succeeded on attempt {len(beta.attempts)}"
    )
    print(
        task_table(
            run, ["fetch", *(f"parse_{s}" for s in CONFIG["sources"]), "aggregate", "report"]
        )
    )
    fires = graph.schedule.iter(SCHEDULE_FROM)
    nxt = [next(fires) for _ in range(3)]
    print(
        f"cron {SCHEDULE!r} after {SCHEDULE_FROM:%a %Y-%m-%d %H:%M}: "
        + ", ".join(f"{t:%a %Y-%m-%d %H:%M}" for t in nxt)
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
