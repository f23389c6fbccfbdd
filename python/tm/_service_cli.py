"""``tm start`` (run an executor as a service), ``tm work`` (serve distributed runs) and ``tm status``
(scheduled graphs in the store)."""

from __future__ import annotations

import argparse
import json
import logging
import os
import zoneinfo
from datetime import datetime, timedelta, timezone
from typing import Any

from ._console import setup as setup_console
from ._tm import jitter_offset
from .cli import (
    EXIT_FAILURE,
    CommandError,
    _add_store_options,
    _open_store,
    _require_existing,
    _when,
    load_object,
)
from .schedules import parse_schedule

#: Exit status of ``tm start`` when a second signal cancelled running runs.
EXIT_CANCELLED = 130


def configure_start(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "target",
        help="FILE.py (its executor, or its scheduled graphs), FILE.py:ATTR or MODULE:ATTR",
    )
    _add_store_options(parser, json=False)
    parser.add_argument("-q", "--quiet", action="store_true", help="log warnings and errors only")
    _add_observability_options(parser, notify=True)


def _add_observability_options(parser: argparse.ArgumentParser, notify: bool) -> None:
    parser.add_argument(
        "--metrics-port",
        type=int,
        metavar="N",
        help="serve Prometheus metrics at http://HOST:N/metrics (0: any free port, logged)",
    )
    parser.add_argument(
        "--metrics-host",
        default="127.0.0.1",
        metavar="HOST",
        help="the address the metrics endpoint binds to (default: 127.0.0.1)",
    )
    if notify:
        parser.add_argument(
            "--notify",
            action="append",
            default=[],
            metavar="URL",
            help="alert on failed runs and missed fires: an http(s):// webhook (JSON POST), "
            "smtp://HOST[:PORT]?from=ADDR&to=ADDR or mailto:ADDR (repeatable)",
        )


def _observe(ex: Any, args: argparse.Namespace) -> Any:
    """Adds the notifiers and the metrics endpoint the options ask for; returns the server (or
    None) to close at the end."""
    from ._observe import Observer
    from .notify import alerts, from_url

    added: list[Observer] = []
    for url in getattr(args, "notify", None) or []:
        try:
            added.append(alerts(from_url(url)))
        except ValueError as exc:
            raise CommandError(str(exc)) from exc
    server = None
    if args.metrics_port is not None:
        from .metrics import Metrics, serve

        m = Metrics()
        added.append(m)
        try:
            server = serve(args.metrics_port, args.metrics_host, m, ex.store)
        except OSError as exc:
            raise CommandError(
                f"cannot serve metrics on {args.metrics_host}:{args.metrics_port}: {exc}"
            ) from exc
        logging.getLogger("tm").warning(
            "metrics at http://%s:%d/metrics", args.metrics_host, server.port
        )
    ex._observers += tuple(added)
    return server


def _executor_of(target: str) -> Any:
    from . import executor as executor_module
    from .executor import Executor
    from .graph import Graph

    if target.endswith(".py"):
        # The file runs as a module (not as __main__), so its `if __name__ == "__main__":` block
        # does not run; a start() it calls at import is deferred and that executor is the one.
        executor_module._deferred_starts = []
        try:
            found: Any = load_object(f"{target}:__dict__")
            started = executor_module._deferred_starts
        finally:
            executor_module._deferred_starts = None
        if len({id(e) for e in started}) > 1:
            raise CommandError(f"{target} starts {len(started)} executors: start one")
        if started:
            return started[0]
        objects = list(found.values())
    else:
        obj = load_object(target)
        if isinstance(obj, (Executor, Graph)):
            objects = [obj]
        else:
            raise CommandError(f"{target!r} is a {type(obj).__name__}, not a tm.Executor")
    executors = [o for o in objects if isinstance(o, Executor)]
    if len(executors) > 1:
        raise CommandError(f"{target} has {len(executors)} executors: name one as FILE.py:ATTR")
    if executors:
        return executors[0]
    graphs = [o for o in objects if isinstance(o, Graph) and o.schedule is not None]
    if not graphs:
        raise CommandError(f"{target} has no tm.Executor and no scheduled tm.Graph")
    return Executor(graphs=graphs)


def run_start(args: argparse.Namespace) -> int:
    from .store import Store

    ex = _executor_of(args.target)
    if args.db:
        ex.store = Store(args.db)
    elif ex.store is None:
        # The store every tm command reads by default ($TM_DB_URL, else .tm/tm.db here), so
        # `tm runs` and `tm status` see this service's runs and a restart catches up and resumes.
        ex.store = Store()
    setup_console(logging.WARNING if args.quiet else logging.INFO)
    server = _observe(ex, args)
    try:
        ex.start()
    finally:
        ex.shutdown()
        if server is not None:
            server.close()
    return EXIT_CANCELLED if ex._scheduler.forced else 0


def configure_work(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "target",
        help="FILE.py (its graphs and executor), FILE.py:ATTR or MODULE:ATTR (a graph or executor)",
    )
    _add_store_options(parser, json=False)
    parser.add_argument("--workers", type=int, help="task threads (default: the executor's)")
    parser.add_argument("--tags", help="serve only these task tags, comma-separated ('' untagged)")
    parser.add_argument("--lease", type=float, help="seconds a claim holds without renewal")
    parser.add_argument("--run", dest="run_id", help="return once this run has ended")
    parser.add_argument("-q", "--quiet", action="store_true", help="log warnings and errors only")
    _add_observability_options(parser, notify=False)


def _work_targets(target: str) -> tuple[Any, list[Any]]:
    """(the target's executor or None, its graphs)."""
    from .executor import Executor
    from .graph import Graph

    if target.endswith(".py"):
        objects = list(load_object(f"{target}:__dict__").values())
    else:
        obj = load_object(target)
        objects = list(obj) if isinstance(obj, (list, tuple)) else [obj]
    executors = [o for o in objects if isinstance(o, Executor)]
    if len(executors) > 1:
        raise CommandError(f"{target} has {len(executors)} executors: name one as FILE.py:ATTR")
    graphs = [o for o in objects if isinstance(o, Graph)]
    if executors and not graphs:
        graphs = [slot.graph for slot in executors[0]._scheduler.slots.values()]
    if not graphs:
        raise CommandError(f"{target} has no tm.Graph to serve")
    return (executors[0] if executors else None), graphs


def run_work(args: argparse.Namespace) -> int:
    import signal

    from .executor import Executor
    from .store import Store

    ex, graphs = _work_targets(args.target)
    db = args.db or os.environ.get("TM_DB_URL")
    if ex is None:
        if not db:
            raise CommandError("no executor in the target: give the store with --db URL")
        ex = Executor(
            store=db,
            workers=args.workers,
            lease=args.lease if args.lease is not None else 30.0,
        )
    else:
        if db:
            ex.store = Store(db)
        if args.workers:
            ex.workers = args.workers
        if args.lease is not None:
            ex.lease = args.lease
    setup_console(logging.WARNING if args.quiet else logging.INFO)
    server = _observe(ex, args)
    tags = None if args.tags is None else [t.strip() for t in args.tags.split(",")]
    # SIGTERM: stop claiming, let the running tasks finish and record them, exit 0.
    previous = signal.signal(signal.SIGTERM, lambda *_: ex.stop())
    log = logging.getLogger("tm")
    log.info("serving %s as %s", ", ".join(g.name for g in graphs), ex._get_fleet().owner)
    try:
        ran = ex.work(graphs, run_id=args.run_id, tags=tags)
    except KeyboardInterrupt:
        log.warning("interrupted: stopped claiming; the tasks that were running have ended")
        return EXIT_CANCELLED
    finally:
        signal.signal(signal.SIGTERM, previous)
        ex.shutdown()
        if server is not None:
            server.close()
    log.info("ran %d task(s) here", ran)
    return 0


def configure_status(parser: argparse.ArgumentParser) -> None:
    _add_store_options(parser)


def _status_rows(store: Any) -> list[dict[str, Any]]:
    rows = []
    now = datetime.now(timezone.utc)
    paused = {g: us for g, us, _ in store.core.pauses()}
    for g in store.core.graphs():
        if not g["schedule"]:
            continue
        zone = zoneinfo.ZoneInfo(g["tz"]) if g["tz"] else timezone.utc
        last = g["last_fire_us"]
        start = now
        if last is not None:
            start = max(now, datetime.fromtimestamp(last / 1e6, timezone.utc))
        meta = json.loads(g["meta_json"]) if g["meta_json"] else {}
        # Every fire of the graph comes this much after its cron time (the scheduler's jitter).
        delay = timedelta(
            microseconds=jitter_offset(g["name"], int(float(meta.get("jitter") or 0) * 1e6))
        )
        nxt = parse_schedule(g["schedule"]).next((start - delay).astimezone(zone)) + delay
        runs = store.core.list_runs(graph=g["name"], limit=1)
        rows.append(
            {
                "graph": g["name"],
                "schedule": g["schedule"],
                "tz": g["tz"] or "UTC",
                "next_fire": nxt.isoformat(),
                "paused_us": paused.get(g["name"]),
                "last_fire_us": last,
                "last_run_id": runs[0]["run_id"] if runs else None,
                "last_run_state": runs[0]["state"] if runs else None,
                "last_run_trigger": runs[0]["trigger"] if runs else None,
                "options": meta,
            }
        )
    return rows


def run_status(args: argparse.Namespace) -> int:
    store = _open_store(args.db, reading=True)
    try:
        rows = _status_rows(store)
    except Exception as exc:
        raise CommandError(f"cannot read the schedules: {exc}", EXIT_FAILURE) from exc
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0
    if not rows:
        print(f"no scheduled graphs in {store.location}")  # type: ignore[attr-defined]
        return 0
    print(
        f"{'graph':<24} {'schedule':<16} {'tz':<16} {'next fire':<25} {'last fire':<19}  last run"
    )
    for r in rows:
        state = r["last_run_state"] or "-"
        if r["last_run_trigger"]:
            state += f" ({r['last_run_trigger']})"
        nxt = "paused" if r["paused_us"] is not None else r["next_fire"]
        print(
            f"{r['graph']:<24} {r['schedule']:<16} {r['tz']:<16} {nxt:<25} "
            f"{_when(r['last_fire_us']):<19}  {state}"
        )
    return 0


def configure_pause(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("graph", help="the scheduled graph's name (see tm status)")
    _add_store_options(parser, json=False)


def run_pause(args: argparse.Namespace) -> int:
    return _set_paused(args, True)


def run_unpause(args: argparse.Namespace) -> int:
    return _set_paused(args, False)


def _on_store(args: argparse.Namespace, what: str, act: Any) -> tuple[Any, str]:
    """``act(executor)`` on an executor of the existing store ``args.db``; returns its result
    and the store's location."""
    from .executor import Executor

    _require_existing(args.db)
    store: Any = _open_store(args.db)
    ex = Executor(store=store)
    try:
        return act(ex), store.location
    except Exception as exc:
        raise CommandError(f"cannot {what} {args.graph}: {exc}", EXIT_FAILURE) from exc
    finally:
        ex.shutdown()
        store.close()


def _set_paused(args: argparse.Namespace, pause: bool) -> int:
    what = "pause" if pause else "unpause"
    changed, location = _on_store(
        args, what, lambda ex: ex.pause(args.graph) if pause else ex.unpause(args.graph)
    )
    if changed:
        print(f"{args.graph}: {what}d; every scheduler sharing {location} obeys at its next fire")
    else:
        print(f"{args.graph}: already {what}d")
    return 0


def configure_trigger(parser: argparse.ArgumentParser) -> None:
    from ._run_cli import add_param_option

    parser.add_argument("graph", help="the scheduled graph's name (see tm status)")
    add_param_option(parser)
    _add_store_options(parser, json=False)


def run_trigger(args: argparse.Namespace) -> int:
    from ._run_cli import parse_params

    params = parse_params(args.param)
    tid, location = _on_store(args, "trigger", lambda ex: ex.trigger(args.graph, **params))
    print(f"trigger {tid} of {args.graph}: a scheduler sharing {location} runs it")
    return 0
