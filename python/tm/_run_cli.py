"""``tm run``: run a graph now from the shell, with live progress, a summary and an exit status."""

from __future__ import annotations

import argparse
import json
import logging
import sys
import threading
import time
from datetime import datetime
from typing import Any, TextIO

from .cli import EXIT_FAILURE, CommandError, _add_store_options, _open_store, load_object
from .exceptions import TmError

#: Exit status after Ctrl-C (128 + SIGINT), as shells report it.
EXIT_INTERRUPTED = 130
#: How often the progress bar is redrawn on a terminal.
REDRAW_S = 0.1
_STATES = ("completed", "running", "retrying", "pending", "failed", "skipped", "cancelled")


def configure_run(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "target",
        nargs="?",
        help="FILE.py (its only graph), FILE.py:ATTR or MODULE:ATTR naming a tm.Graph",
    )
    parser.add_argument(
        "--rerun",
        metavar="RUN_ID",
        help="run the graph of a recorded run again (a unique prefix is enough), with its "
        "arguments (-p overrides them)",
    )
    add_param_option(parser)
    parser.add_argument("--config", metavar="FILE", help="a JSON or YAML config for this run")
    parser.add_argument("--workers", type=int, default=None, help="size of the default pool")
    _add_store_options(parser, json=False)


def _graph_of(target: str) -> Any:
    from .graph import Graph

    if target.endswith(".py"):
        found: Any = load_object(f"{target}:__dict__")
        graphs = [o for o in found.values() if isinstance(o, Graph)]
        unique = list({id(g): g for g in graphs}.values())
        if len(unique) != 1:
            names = ", ".join(sorted(g.name for g in unique)) or "none"
            raise CommandError(
                f"{target} defines {len(unique)} graphs ({names}): name one as FILE.py:ATTR"
            )
        return unique[0]
    obj = load_object(target)
    if not isinstance(obj, Graph):
        raise CommandError(f"{target!r} is a {type(obj).__name__}, not a tm.Graph")
    return obj


def add_param_option(parser: argparse.ArgumentParser) -> None:
    """``-p NAME=VALUE``, repeatable: arguments for a run's root tasks (see :func:`parse_params`)."""
    parser.add_argument(
        "-p",
        "--param",
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help="an argument for the root tasks; VALUE is read as JSON when it is JSON "
        "(100, true, [1,2]), else as text",
    )


def parse_params(items: list[str]) -> dict[str, Any]:
    """``NAME=VALUE`` pairs; a VALUE that parses as JSON is that value, anything else is text."""
    params: dict[str, Any] = {}
    for item in items:
        name, sep, text = item.partition("=")
        if not sep or not name.isidentifier():
            raise CommandError(f"invalid parameter {item!r}: expected NAME=VALUE")
        try:
            params[name] = json.loads(text)
        except ValueError:
            params[name] = text
    return params


def _load_config(path: str) -> Any:
    from pathlib import Path

    from .graph import _parse_config

    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as e:
        raise CommandError(f"cannot read config file {path!r}: {e.strerror}") from e
    return _parse_config(Path(path), text)


def _recorded_run(store: Any, text: str) -> tuple[str, dict[str, Any]]:
    """Where run ``text``'s graph lives, and the arguments its root tasks got."""
    from .cli import resolve_run_id

    run_id = resolve_run_id(store, text)
    meta = json.loads((store.core.get_run(run_id) or {}).get("meta_json") or "{}")
    if not meta.get("source"):
        raise CommandError(
            f"run {run_id} recorded no place its graph can be loaded from: name it as TARGET"
        )
    return meta["source"], meta.get("params") or {}


class _Progress:
    """A progress bar redrawn in place on a terminal, or one line per transition elsewhere."""

    def __init__(self, out: TextIO, graph: str, total: int) -> None:
        self.out = out
        self.graph = graph
        self.total = total
        self.tty = out.isatty()
        self.lock = threading.Lock()
        self.drawn = False

    def event(self, ev: Any) -> None:
        """An Executor hook: one line per task transition when not on a terminal."""
        if self.tty or ev.task is None:
            return
        what = ev.kind
        if ev.kind == "started":
            what = f"started (attempt {ev.attempt + 1})"
        elif ev.kind == "skipped" and ev.skipped_because:
            what = f"skipped ({ev.skipped_because} did not complete)"
        elif ev.error is not None:
            what = f"{ev.kind}: {type(ev.error).__name__}: {ev.error}"
        at = (ev.at or datetime.now()).astimezone().strftime("%H:%M:%S")
        with self.lock:
            print(f"{at} {ev.task}: {what}", file=self.out, flush=True)

    def draw(self, states: dict[str, str]) -> None:
        if not self.tty:
            return
        counts = {s: 0 for s in _STATES}
        for s in states.values():
            counts[s] = counts.get(s, 0) + 1
        done = self.total - counts["pending"] - counts["running"] - counts["retrying"]
        width = 24
        filled = width * done // max(self.total, 1)
        bar = "#" * filled + "-" * (width - filled)
        parts = [f"{n} {s}" for s, n in counts.items() if n]
        running = [t for t, s in states.items() if s == "running"][:3]
        line = f"{self.graph} [{bar}] {done}/{self.total} " + ", ".join(parts)
        if running:
            line += " | running: " + ", ".join(running)
        with self.lock:
            self.out.write("\r\x1b[2K" + line[:200])
            self.out.flush()
            self.drawn = True

    def finish(self) -> None:
        if self.drawn:
            self.out.write("\n")
            self.out.flush()


def _summary(run: Any, out: TextIO) -> None:
    tasks = run.tasks
    width = max([4, *(len(n) for n in tasks)])
    print(f"{'task':<{width}}  {'state':<10} {'attempts':>8} {'duration':>9}  error", file=out)
    for name, t in tasks.items():
        took = f"{t.duration:.3f}s" if t.duration is not None else "-"
        err = "" if t.error is None else f"{type(t.error).__name__}: {t.error}"
        if t.skipped_because:
            err = f"upstream {t.skipped_because} did not complete"
        row = f"{name:<{width}}  {t.state:<10} {len(t.attempts):>8} {took:>9}  {err[:80]}"
        print(row.rstrip(), file=out)


def run_run(args: argparse.Namespace) -> int:
    from ._console import setup as setup_console
    from .executor import Executor

    # Retries and failures also go to stderr, one line each, whatever stdout shows.
    setup_console(logging.WARNING)
    params = parse_params(args.param)
    config = _load_config(args.config) if args.config else None
    store: Any = _open_store(args.db)
    if args.rerun is not None:
        source, recorded = _recorded_run(store, args.rerun)
        graph = _graph_of(args.target or source)
        params = {**recorded, **params}
    elif args.target is None:
        raise CommandError("name the graph to run (TARGET), or a run to repeat (--rerun RUN_ID)")
    else:
        graph = _graph_of(args.target)
    out = sys.stdout
    progress = _Progress(out, graph.name, len(graph))
    ex = Executor(
        workers=args.workers,
        store=store,  # type: ignore[arg-type]
        on_task_start=progress.event,
        on_task_end=progress.event,
    )
    interrupted = False
    try:
        try:
            run = ex.submit(graph, config, kwargs=params)
        except (TypeError, TmError) as exc:
            raise CommandError(str(exc)) from exc
        started = time.monotonic()
        try:
            while not run.wait(REDRAW_S if progress.tty else None):
                progress.draw(run.states())
        except KeyboardInterrupt:
            interrupted = True
        if progress.tty:
            progress.draw(run.states())
        progress.finish()
        _summary(run, out)
        took = time.monotonic() - started
        ident = run.id
        print(f"run {ident} of {graph.name}: {run.state} in {took:.2f}s", file=out)
        if run.state == "failed":
            _failed_line(run)
    finally:
        ex.shutdown()
        store.close()  # type: ignore[attr-defined]
    if interrupted:
        return EXIT_INTERRUPTED
    return 0 if run.state == "completed" else EXIT_FAILURE


def _failed_line(run: Any) -> None:
    """One line on stderr for a failed run (the traceback is in ``tm show RUN``)."""
    from .notify import run_alert

    print(f"tm: {run_alert(run).summary()}", file=sys.stderr, flush=True)


def configure_backfill(parser: argparse.ArgumentParser) -> None:
    from .cli import _iso_datetime

    parser.add_argument("target", help="FILE.py (its only graph), FILE.py:ATTR or MODULE:ATTR")
    parser.add_argument(
        "--from",
        dest="start",
        required=True,
        type=_iso_datetime,
        metavar="T1",
        help="the first logical time (ISO-8601; without an offset, in the graph's zone)",
    )
    parser.add_argument(
        "--to",
        dest="end",
        required=True,
        type=_iso_datetime,
        metavar="T2",
        help="the last logical time (included)",
    )
    parser.add_argument(
        "--reprocess",
        choices=("none", "failed", "all"),
        default="none",
        help="times that already ran: keep them (none), resume failed runs, or run all again",
    )
    parser.add_argument("--max-active", type=int, default=1, metavar="N", help="runs at once")
    parser.add_argument("--dry-run", action="store_true", help="list the times and what to do")
    parser.add_argument("--workers", type=int, default=None, help="size of the default pool")
    _add_store_options(parser, json=False)


def run_backfill(args: argparse.Namespace) -> int:
    from ._console import setup as setup_console
    from .executor import Executor

    setup_console(logging.WARNING)
    graph = _graph_of(args.target)
    store = _open_store(args.db)
    ex = Executor(workers=args.workers, store=store, persist=True)  # type: ignore[arg-type]
    lock = threading.Lock()

    def report(item: Any, what: str) -> None:
        at = item.scheduled_at.isoformat()
        with lock:
            if what == "started":
                print(f"{at} {item.action}: started run {item.run_id}", flush=True)
            else:
                print(
                    f"{at} {item.action}: {item.state or '-'} {item.run_id or ''}".rstrip(),
                    flush=True,
                )
                if item.state in ("failed", "cancelled"):
                    print(
                        f"tm: backfill of {graph.name} at {at}: run {item.run_id} {item.state}",
                        file=sys.stderr,
                        flush=True,
                    )

    try:
        items = ex.backfill(
            graph,
            args.start,
            args.end,
            reprocess=args.reprocess,
            max_active=args.max_active,
            dry_run=args.dry_run,
            on_item=None if args.dry_run else report,
        )
    except KeyboardInterrupt:
        return EXIT_INTERRUPTED
    except (ValueError, TmError) as exc:
        raise CommandError(str(exc)) from exc
    finally:
        ex.shutdown()
        store.close()  # type: ignore[attr-defined]
    if args.dry_run:
        for item in items:
            print(f"{item.scheduled_at.isoformat()} {item.action} {item.run_id or ''}".rstrip())
        return 0
    counts: dict[str, int] = {}
    for item in items:
        counts[item.state or item.action] = counts.get(item.state or item.action, 0) + 1
    summary = ", ".join(f"{n} {s}" for s, n in sorted(counts.items()))
    print(f"backfill of {graph.name}: {len(items)} time(s): {summary}")
    bad = any(item.state in ("failed", "cancelled") for item in items)
    return EXIT_FAILURE if bad else 0
