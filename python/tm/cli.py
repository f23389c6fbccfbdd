"""The ``tm`` command line.

Each subcommand is one entry in :data:`COMMANDS`: a :class:`Command` that says how to add its
arguments to an :class:`argparse.ArgumentParser` and how to run once the arguments are parsed.
Adding a subcommand means adding an entry; :func:`main` needs no change.

Example:
    $ tm cron "*/15 9-17 * * mon-fri" -n 3 --from 2024-01-01T00:00
    2024-01-01T09:00:00
    2024-01-01T09:15:00
    2024-01-01T09:30:00
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

#: Exit status for a usage error or invalid input (the status argparse itself uses).
EXIT_USAGE = 2
#: Exit status for a valid request that could not be completed.
EXIT_FAILURE = 1


class CommandError(Exception):
    """A user-facing failure: :func:`main` prints ``tm: error: <message>`` and exits.

    Args:
        message: What went wrong, in terms the user typed.
        status: The process exit status.
    """

    def __init__(self, message: str, status: int = EXIT_USAGE) -> None:
        super().__init__(message)
        self.status = status


@dataclass(frozen=True)
class Command:
    """One ``tm`` subcommand.

    Attributes:
        help: One line shown in ``tm --help``.
        configure: Adds the subcommand's arguments to its parser.
        run: Executes the subcommand and returns the exit status; raises
            :class:`CommandError` for failures the user should see.
    """

    help: str
    configure: Callable[[argparse.ArgumentParser], None]
    run: Callable[[argparse.Namespace], int]


def _non_negative_int(text: str) -> int:
    """Parses a count for ``-n``.

    Args:
        text: The argument as typed.

    Returns:
        The count.

    Raises:
        argparse.ArgumentTypeError: If ``text`` is not a whole number >= 0.
    """
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a whole number: {text!r}") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be >= 0, got {value}")
    return value


def _iso_datetime(text: str) -> datetime:
    """Parses an ISO-8601 date or date-time for ``--from``.

    Args:
        text: The argument as typed, e.g. ``2024-01-01T09:30`` or ``2024-01-01T09:30+01:00``.

    Returns:
        The parsed datetime, naive unless ``text`` carries an offset.

    Raises:
        argparse.ArgumentTypeError: If ``text`` is not ISO-8601.
    """
    try:
        return datetime.fromisoformat(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an ISO-8601 date-time: {text!r}") from None


def _configure_cron(parser: argparse.ArgumentParser) -> None:
    """Adds the arguments of ``tm cron``.

    Args:
        parser: The subcommand's parser.
    """
    parser.add_argument("expression", metavar="EXPR", help='cron expression, e.g. "*/5 * * * *"')
    parser.add_argument(
        "-n",
        dest="count",
        type=_non_negative_int,
        default=5,
        metavar="N",
        help="how many fire times to print (default: 5)",
    )
    parser.add_argument(
        "--from",
        dest="start",
        type=_iso_datetime,
        default=None,
        metavar="ISO",
        help="print fire times strictly after this ISO-8601 date-time (default: now)",
    )
    parser.add_argument(
        "--tz",
        dest="zone",
        default=None,
        metavar="ZONE",
        help="IANA time zone (e.g. Europe/London) for --from and the output; output is then aware",
    )


def _start_time(start: datetime | None, zone: str | None) -> datetime:
    """Resolves the start of ``tm cron`` from ``--from`` and ``--tz``.

    A naive ``--from`` is read as wall-clock time in ``--tz``; an aware one is converted to it.
    Without ``--tz`` the start is used as given (naive wall clock unless it carries an offset).

    Args:
        start: The parsed ``--from``, or None for now.
        zone: The ``--tz`` name, or None.

    Returns:
        The datetime to compute fire times after.

    Raises:
        CommandError: If ``zone`` is not a known time zone.
    """
    if zone is None:
        return datetime.now() if start is None else start
    from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

    try:
        tz = ZoneInfo(zone)
    except (ZoneInfoNotFoundError, ValueError) as exc:
        raise CommandError(f"unknown time zone {zone!r}") from exc
    if start is None:
        return datetime.now(tz)
    if start.tzinfo is None:
        return start.replace(tzinfo=tz)
    return start.astimezone(tz)


def _run_cron(args: argparse.Namespace) -> int:
    """Prints the next fire times of a cron expression, one ISO-8601 line each.

    Args:
        args: Parsed arguments of ``tm cron``.

    Returns:
        The exit status.

    Raises:
        CommandError: If the expression or the time zone is invalid, or the schedule runs out
            before year 9999 ends.
    """
    from tm.cron import CronError, Expression

    try:
        expression = Expression(args.expression)
    except CronError as exc:
        raise CommandError(str(exc)) from exc
    start = _start_time(args.start, args.zone)
    out = sys.stdout
    printed = 0
    try:
        for fire in itertools.islice(expression.iter(start), args.count):
            out.write(fire.isoformat() + "\n")
            printed += 1
    except OverflowError:
        pass  # the schedule ran past year 9999: reported below like an exhausted iterator
    out.flush()
    if printed < args.count:
        raise CommandError(
            f"only {printed} of {args.count} fire times exist before the year 10000", EXIT_FAILURE
        )
    return 0


def load_object(target: str) -> object:
    """Loads ``module:attr``, ``path/to/file.py:attr`` or ``module.attr`` (for ``tm graph``, ``tm start``).

    Args:
        target: Where the object lives.

    Returns:
        The object.

    Raises:
        CommandError: The module cannot be imported or has no such attribute.
    """
    import importlib
    import importlib.util

    module_part, sep, attr = target.rpartition(":")
    if not sep:
        module_part, _, attr = target.rpartition(".")
    if not module_part or not attr:
        raise CommandError(f"expected MODULE:ATTR or FILE.py:ATTR, got {target!r}")
    try:
        if module_part.endswith(".py"):
            path = Path(module_part).resolve()
            if not path.exists():
                raise CommandError(f"no such file: {module_part}")
            sys.path.insert(0, str(path.parent))
            spec = importlib.util.spec_from_file_location(path.stem, path)
            if spec is None or spec.loader is None:
                raise CommandError(f"cannot load {module_part}")
            module = importlib.util.module_from_spec(spec)
            sys.modules[path.stem] = module
            spec.loader.exec_module(module)
        else:
            sys.path.insert(0, os.getcwd())
            module = importlib.import_module(module_part)
    except CommandError:
        raise
    except Exception as exc:
        raise CommandError(f"cannot import {module_part!r}: {type(exc).__name__}: {exc}") from exc
    obj: object = module
    for part in attr.split("."):
        if not hasattr(obj, part):
            raise CommandError(f"{module_part!r} has no attribute {attr!r}")
        obj = getattr(obj, part)
    return obj


def _configure_graph(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "target",
        help="the graph: MODULE:ATTR, FILE.py:ATTR, or a JSON/YAML graph file",
    )
    parser.add_argument(
        "--format",
        choices=("mermaid", "dot", "text"),
        default="mermaid",
        help="output format (default: mermaid)",
    )


def _run_graph(args: argparse.Namespace) -> int:
    from .exceptions import TmError
    from .graph import Graph

    target: str = args.target
    try:
        if target.lower().endswith((".json", ".yaml", ".yml")):
            # The file's functions are imported by module name: look in the working directory
            # too, as `python -c` and `python -m` would (the console script does not).
            if os.getcwd() not in sys.path:
                sys.path.insert(0, os.getcwd())
            graph: object = Graph.from_file(target)
        else:
            graph = load_object(target)
    except TmError as exc:
        raise CommandError(str(exc)) from exc
    if not isinstance(graph, Graph):
        raise CommandError(f"{target!r} is a {type(graph).__name__}, not a tm.Graph")
    if args.format == "mermaid":
        sys.stdout.write(graph.to_mermaid())
    elif args.format == "dot":
        sys.stdout.write(graph.to_dot())
    else:
        for name in graph.topological_order():
            parents = graph.parents_of(name)
            print(f"{name} <- {', '.join(parents)}" if parents else name)
    return 0


def _configure_queue(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "args",
        nargs=argparse.REMAINDER,
        help="PATH summary|list|show ID|release ID|cancel ID|export, or migrate SRC DST",
    )


def _run_queue(args: argparse.Namespace) -> int:
    from ._queue_cli import queue_main

    return queue_main(list(args.args))


def _when(us: int | None) -> str:
    if not us:
        return "-"
    return datetime.fromtimestamp(us / 1e6).isoformat(sep=" ", timespec="seconds")


def _duration(start: int | None, end: int | None) -> str:
    if not start or not end:
        return "-"
    return f"{(end - start) / 1e6:.3f}s"


def _sqlite_file(url: str) -> Path | None:
    """The database file an SQLite ``url`` names (the forms ``tm.Store`` accepts), or None for an
    in-memory database, a PostgreSQL URL, or a URL the store itself will refuse."""
    if url == ":memory:":
        return None
    scheme, colon, rest = url.partition(":")
    well_formed = (
        colon
        and len(scheme) > 1
        and scheme[0].isascii()
        and scheme[0].isalpha()
        and all(c.isascii() and (c.isalnum() or c in "+-.") for c in scheme)
    )
    low = scheme.lower()
    if not well_formed or not (rest.startswith("//") or low.startswith(("sqlite", "postgres"))):
        return Path(url)  # a plain path
    if low.split("+")[0] != "sqlite" or not rest.startswith("//"):
        return None
    rest = rest[2:]
    if rest in ("", ":memory:", "/", "/:memory:") or not rest.startswith("/"):
        return None
    return Path(rest[1:])


def _require_existing(url: str | None) -> None:
    """Refuses to go on when ``url`` (or the default store) is an SQLite file that does not exist:
    a command that reads the history must not create an empty database and report nothing."""
    from .store import default_url

    resolved = url or default_url()
    path = _sqlite_file(resolved)
    if path is None or path.exists():
        return
    where = "--db" if url else ("$TM_DB_URL" if os.environ.get("TM_DB_URL") else "the default")
    raise CommandError(
        f"no tm database at {path.absolute()} ({where}): nothing has been recorded there. "
        "Run this where the runs were recorded, or name the store with --db URL or $TM_DB_URL",
        EXIT_FAILURE,
    )


def _open_store(url: str | None, *, reading: bool = False) -> object:
    """The store at ``url`` (default: ``$TM_DB_URL``, else ``.tm/tm.db`` here, as ``tm.Store()``),
    opened now (errors become a command error). For commands that only read (``reading``), a
    missing SQLite file is an error rather than a new empty database, and a database that cannot
    be opened for writing (a read-only file system or directory) is opened read-only instead."""
    from .exceptions import StoreError
    from .store import Store

    if reading:
        _require_existing(url)
    store = Store(url)
    try:
        store.core  # noqa: B018 - opening reports a missing or corrupt database now
    except StoreError as exc:
        if reading:
            try:
                store = Store(url, read_only=True)
                store.core  # noqa: B018
                return store
            except StoreError:
                pass  # the first error says more (a corrupt file, a missing directory, ...)
        raise CommandError(str(exc), EXIT_FAILURE) from exc
    return store


def resolve_run_id(store: Any, text: str) -> str:
    """The run id that ``text`` is, or is the unique prefix of (a command error otherwise)."""
    ids = store.core.run_ids_with_prefix(text, 6)
    if text in ids or len(ids) == 1:
        return text if text in ids else ids[0]
    if not ids:
        raise CommandError(f"no run {text!r} in {store.location}", EXIT_FAILURE)
    more = ", ..." if len(ids) > 5 else ""
    raise CommandError(f"{text!r} is the start of several run ids: {', '.join(ids[:5])}{more}")


def _add_store_options(parser: argparse.ArgumentParser, json: bool = True) -> None:
    """The options shared by the commands that read the run history."""
    parser.add_argument("--db", help="database URL (default: $TM_DB_URL or sqlite:///.tm/tm.db)")
    if json:
        parser.add_argument("--json", action="store_true", help="print JSON")


def _configure_cache(parser: argparse.ArgumentParser) -> None:
    from ._cache_cli import configure

    configure(parser)


def _run_cache(args: argparse.Namespace) -> int:
    from ._cache_cli import run

    return run(args)


def _configure_ui(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--db", help="database URL (default: $TM_DB_URL or sqlite:///.tm/tm.db)")
    parser.add_argument("--host", default="127.0.0.1", help="address to bind (default: 127.0.0.1)")
    parser.add_argument("--port", type=int, default=8265, help="port (default: 8265)")
    parser.add_argument(
        "--token",
        default=None,
        help="require this token on every request (default: $TM_UI_TOKEN); needed off loopback",
    )
    parser.add_argument(
        "--insecure",
        action="store_true",
        help="serve on a non-loopback address without a token (anyone reaching it may control it)",
    )
    parser.add_argument(
        "--read-only", action="store_true", help="refuse every state-changing request"
    )
    parser.add_argument(
        "--queue", default=None, help="also show this agent queue (tm.queue.TaskManager's target)"
    )


def _run_ui(args: argparse.Namespace) -> int:
    try:
        import starlette  # noqa: F401
        import uvicorn  # noqa: F401
    except ImportError:
        raise CommandError(
            "tm ui needs the [ui] extra: pip install 'tm-orchestrate[ui]'", EXIT_FAILURE
        ) from None
    from .ui import UIError, check_bind, serve

    token = args.token or os.environ.get("TM_UI_TOKEN") or None
    try:
        check_bind(args.host, token, args.insecure)
    except UIError as exc:
        raise CommandError(str(exc)) from exc
    _require_existing(args.db)
    try:
        serve(
            args.db,
            host=args.host,
            port=args.port,
            token=token,
            insecure=args.insecure,
            read_only=args.read_only,
            queue=args.queue,
        )
    except KeyboardInterrupt:  # uvicorn has shut down, then passed Ctrl-C on: a normal stop
        pass
    except OSError as exc:  # the port is taken, the address is not ours, ...
        raise CommandError(f"cannot serve on {args.host}:{args.port}: {exc}", EXIT_FAILURE) from exc
    return 0


#: The states a recorded run can be in (``tm runs --state``).
RUN_STATES = ("running", "completed", "failed", "cancelled")


def _configure_runs(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--graph", help="only runs of this graph")
    parser.add_argument("--state", choices=RUN_STATES, help="only runs in this state")
    parser.add_argument("-n", type=_non_negative_int, default=20, help="how many (default: 20)")
    _add_store_options(parser)


def _run_runs(args: argparse.Namespace) -> int:
    import json

    store = _open_store(args.db, reading=True)
    rows = store.runs(graph=args.graph, state=args.state, limit=args.n)  # type: ignore[attr-defined]
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0
    print(f"{'run id':<32}  {'graph':<20} {'state':<10} {'trigger':<9} {'started':<19}  duration")
    for r in rows:
        print(
            f"{r['run_id']:<32}  {r['graph']:<20} {r['state']:<10} {r['trigger']:<9} "
            f"{_when(r['started_us']):<19}  {_duration(r['started_us'], r['ended_us'])}"
        )
    return 0


def _configure_show(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("run_id", help="the run's id (see tm runs)")
    _add_store_options(parser)


def _task_attempts(store: Any, run_id: str, t: dict[str, Any]) -> list[dict[str, Any]]:
    """A task's attempts, oldest first (one query only for tasks that ran more than once or
    failed: a single clean attempt is the task's own row)."""
    n = t.get("attempt") or 0
    if n == 0:
        return []
    if n == 1 and t["status"] == "completed":
        return [
            {
                "attempt": 1,
                "status": "completed",
                "started_us": t["started_us"],
                "ended_us": t["ended_us"],
                "error_type": None,
                "error_message": None,
                "traceback": None,
                "retry_at_us": None,
            }
        ]
    return [{k: v for k, v in a.items() if k != "node"} for a in store.attempts(run_id, t["name"])]


def _attempts_us(attempts: list[dict[str, Any]]) -> int | None:
    """A task's duration: the sum of its attempts' (a resume's downtime is in none of them)."""
    spans = [a["ended_us"] - a["started_us"] for a in attempts if a["started_us"] and a["ended_us"]]
    return sum(spans) if spans else None


def _active_us(run: dict[str, Any], attempts: list[list[dict[str, Any]]]) -> int | None:
    """A finished run's duration without the stretches in which nothing ran nor waited for a
    retry (the time between a crash, or a failure, and a resume): the union of its attempts'
    spans and retry waits, within the run's start and end."""
    start, end = run.get("started_us"), run.get("ended_us")
    if not start or not end:
        return None
    spans = []
    for task_attempts in attempts:
        for a in task_attempts:
            s, e = a["started_us"], a["ended_us"]
            if s and e:
                spans.append((max(s, start), min(max(e, a["retry_at_us"] or e), end)))
    if not spans:
        return end - start
    spans.sort()
    total, (cur_s, cur_e) = 0, spans[0]
    for s, e in spans[1:]:
        if s > cur_e:
            total += max(0, cur_e - cur_s)
            cur_s, cur_e = s, e
        else:
            cur_e = max(cur_e, e)
    return total + max(0, cur_e - cur_s)


def _secs(us: int | None) -> str:
    return "-" if us is None else f"{us / 1e6:.3f}s"


def _run_show(args: argparse.Namespace) -> int:
    import json

    store: Any = _open_store(args.db, reading=True)
    args.run_id = resolve_run_id(store, args.run_id)
    run = store.run(args.run_id)
    if run is None:
        raise CommandError(f"no run {args.run_id!r} in {store.location}", EXIT_FAILURE)
    attempts = [_task_attempts(store, args.run_id, t) for t in run["tasks"]]
    run["duration_us"] = _active_us(run, attempts)
    for t, ta in zip(run["tasks"], attempts, strict=True):
        t["attempts"] = ta
        t["duration_us"] = _attempts_us(ta)
    if args.json:
        print(json.dumps(run, indent=2))
        return 0
    print(f"run {run['run_id']} of {run['graph']}: {run['state']} ({run['trigger']})")
    if run.get("config_json"):
        print(f"config: {run['config_json']}")
    print(f"started {_when(run['started_us'])}, took {_secs(run['duration_us'])}")
    print(f"{'task':<24} {'state':<10} {'attempts':>8}  {'duration':>9}  error")
    for t in run["tasks"]:
        err = f"{t['error_type']}: {t['error_message']}" if t.get("error_type") else ""
        print(
            f"{t['name']:<24} {t['status']:<10} {t['attempt'] or 0:>8}  "
            f"{_secs(t['duration_us']):>9}  {err}"
        )
    earlier = [
        (t["name"], a)
        for t in run["tasks"]
        for a in t["attempts"][:-1]
        if a["status"] == "failed" and a.get("error_type")
    ]
    if earlier:
        print("earlier attempts:")
        for name, a in earlier:
            took = a["ended_us"] - a["started_us"] if a["ended_us"] and a["started_us"] else None
            print(
                f"  {name} attempt {a['attempt']} failed after {_secs(took)}: "
                f"{a['error_type']}: {a['error_message']}"
            )
    return 0


def _configure_logs(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("run_id", help="the run (see tm runs)")
    parser.add_argument("task", nargs="?", help="only this task's records")
    parser.add_argument(
        "-f",
        "--follow",
        action="store_true",
        help="keep printing new records until the run ends",
    )
    _add_store_options(parser)


def _log_rows(store: Any, run_id: str, task: str | None) -> list[dict[str, Any]]:
    """A run's log records and its failed attempts (error and traceback), by time."""
    rows = [dict(r, traceback=None) for r in store.core.logs(run_id, task)]
    run = store.run(run_id) or {"tasks": []}
    for t in run["tasks"]:
        if task is not None and t["name"] != task:
            continue
        if t["status"] not in ("failed", "retrying") and (t.get("attempt") or 0) < 2:
            continue
        for a in store.attempts(run_id, t["name"]):
            if a["status"] != "failed" or not a.get("error_type"):
                continue
            rows.append(
                {
                    "node": t["node"],
                    "task": t["name"],
                    "at_us": a["ended_us"] or a["started_us"],
                    "level": "WARNING" if a.get("retry_at_us") else "ERROR",
                    "message": f"attempt {a['attempt']} failed: "
                    f"{a['error_type']}: {a['error_message']}",
                    "traceback": a.get("traceback"),
                }
            )
    rows.sort(key=lambda r: r["at_us"] or 0)
    return rows


def _print_log_row(r: dict[str, Any]) -> None:
    print(f"{_when(r['at_us'])} {r['level']:<8} {r.get('task') or '-'}: {r['message']}")
    if r.get("traceback"):
        for line in r["traceback"].rstrip("\n").splitlines():
            print(f"    {line}")


def _run_logs(args: argparse.Namespace) -> int:
    import json

    store: Any = _open_store(args.db, reading=True)
    args.run_id = resolve_run_id(store, args.run_id)
    if store.run(args.run_id) is None:
        raise CommandError(f"no run {args.run_id!r} in {store.location}", EXIT_FAILURE)
    if args.follow:
        return _follow_logs(store, args.run_id, args.task, args.json)
    rows = _log_rows(store, args.run_id, args.task)
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0
    for r in rows:
        _print_log_row(r)
    return 0


def _follow_logs(store: Any, run_id: str, task: str | None, as_json: bool) -> int:
    """Prints the run's records as they are written, until the run ends (polling the store:
    another process writes them)."""
    import collections
    import json
    import time

    printed: collections.Counter[str] = collections.Counter()
    while True:
        state = (store.run(run_id) or {}).get("state")
        seen: collections.Counter[str] = collections.Counter()
        for r in _log_rows(store, run_id, task):
            key = json.dumps(r, sort_keys=True)
            seen[key] += 1
            if seen[key] <= printed[key]:
                continue
            printed[key] += 1
            if as_json:
                print(json.dumps(r), flush=True)
            else:
                _print_log_row(r)
                sys.stdout.flush()
        if state not in ("pending", "scheduled", "running", "retrying", None):
            if not as_json:
                print(f"run ended: {state}", flush=True)
            return 0
        time.sleep(0.2)


def _configure_resume(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("run_id", help="the run to continue, or a unique prefix (see tm runs)")
    parser.add_argument(
        "--graph",
        help="the run's graph: MODULE:ATTR or FILE.py:ATTR (default: where the run recorded it)",
    )
    _add_store_options(parser, json=False)
    parser.add_argument("--workers", type=int, default=None, help="size of the default pool")


def _run_resume(args: argparse.Namespace) -> int:
    from .exceptions import TmError
    from .executor import Executor
    from .graph import Graph

    _require_existing(args.db)  # a run to resume can only be in an existing store
    store: Any = _open_store(args.db)
    args.run_id = resolve_run_id(store, args.run_id)
    source = args.graph
    if source is None:
        detail = store.core.get_run(args.run_id) or {}
        source = json.loads(detail.get("meta_json") or "{}").get("source")
        if source is None:
            raise CommandError(
                f"run {args.run_id} recorded no place its graph can be loaded from "
                "(it was defined inside a function?): name it with --graph MODULE:ATTR"
            )
    graph = load_object(source)
    if not isinstance(graph, Graph):
        raise CommandError(f"{source!r} is a {type(graph).__name__}, not a tm.Graph")
    with Executor(workers=args.workers, store=store, persist=True) as ex:  # type: ignore[arg-type]
        try:
            run = ex.resume(args.run_id, graph)
        except (KeyError, TmError) as exc:
            raise CommandError(str(exc).strip("'\""), EXIT_FAILURE) from exc
    store.close()  # type: ignore[attr-defined]
    print(f"run {args.run_id} of {graph.name}: {run.state}")
    return 0 if run.state == "completed" else EXIT_FAILURE


def _run_cli() -> Any:
    from . import _run_cli

    return _run_cli


def _service_cli() -> Any:
    from . import _service_cli

    return _service_cli


#: The subcommands of ``tm``, by name. Others register theirs here.
COMMANDS: dict[str, Command] = {
    "cron": Command(
        help="print the next fire times of a cron expression",
        configure=_configure_cron,
        run=_run_cron,
    ),
    "run": Command(
        help="run a graph now, with live progress, a summary and its exit status",
        configure=lambda p: _run_cli().configure_run(p),
        run=lambda a: _run_cli().run_run(a),
    ),
    "backfill": Command(
        help="run a scheduled graph once per fire time in a past range, each time at most once",
        configure=lambda p: _run_cli().configure_backfill(p),
        run=lambda a: _run_cli().run_backfill(a),
    ),
    "start": Command(
        help="run an executor as a service: fire its graphs on their schedules until signalled",
        configure=lambda p: _service_cli().configure_start(p),
        run=lambda a: _service_cli().run_start(a),
    ),
    "work": Command(
        help="serve distributed runs: run ready tasks of the target's graphs from a PostgreSQL store",
        configure=lambda p: _service_cli().configure_work(p),
        run=lambda a: _service_cli().run_work(a),
    ),
    "status": Command(
        help="list scheduled graphs with their next fire times and last runs",
        configure=lambda p: _service_cli().configure_status(p),
        run=lambda a: _service_cli().run_status(a),
    ),
    "trigger": Command(
        help="ask the schedulers sharing the store to run a graph now (exactly one does)",
        configure=lambda p: _service_cli().configure_trigger(p),
        run=lambda a: _service_cli().run_trigger(a),
    ),
    "pause": Command(
        help="pause a graph's schedule for every scheduler sharing the store",
        configure=lambda p: _service_cli().configure_pause(p),
        run=lambda a: _service_cli().run_pause(a),
    ),
    "unpause": Command(
        help="let a paused graph fire again from its next fire time",
        configure=lambda p: _service_cli().configure_pause(p),
        run=lambda a: _service_cli().run_unpause(a),
    ),
    "queue": Command(
        help="inspect and manage an agent queue (tm.queue.TaskManager)",
        configure=_configure_queue,
        run=_run_queue,
    ),
    "runs": Command(
        help="list recorded runs, newest first",
        configure=_configure_runs,
        run=_run_runs,
    ),
    "show": Command(
        help="show one recorded run: its tasks, states, attempts and errors",
        configure=_configure_show,
        run=_run_show,
    ),
    "logs": Command(
        help="print the log records tasks wrote through context.logger",
        configure=_configure_logs,
        run=_run_logs,
    ),
    "resume": Command(
        help="continue an interrupted run without redoing completed tasks",
        configure=_configure_resume,
        run=_run_resume,
    ),
    "graph": Command(
        help="print a graph as Mermaid, Graphviz DOT or text",
        configure=_configure_graph,
        run=_run_graph,
    ),
    "cache": Command(
        help="list, show, clear and explain cached calls (@store.task, @tm.cached)",
        configure=_configure_cache,
        run=_run_cache,
    ),
    "ui": Command(
        help="serve a web dashboard of the store (needs the [ui] extra)",
        configure=_configure_ui,
        run=_run_ui,
    ),
}


def build_parser() -> argparse.ArgumentParser:
    """Builds the ``tm`` argument parser with one subparser per entry of :data:`COMMANDS`.

    Returns:
        The parser.
    """
    from . import __version__

    parser = argparse.ArgumentParser(prog="tm", description="tm: task orchestration tools.")
    parser.add_argument("--version", action="version", version=f"tm {__version__}")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name, command in COMMANDS.items():
        sub = subparsers.add_parser(name, help=command.help, description=command.help)
        command.configure(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Runs the ``tm`` command line.

    Args:
        argv: Arguments after the program name; None means ``sys.argv[1:]``.

    Returns:
        The process exit status: 0 on success, 2 for invalid input (as argparse uses), 1 when a
        valid request could not be completed.
    """
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # argparse reports usage errors and --help by exiting
        return exc.code if isinstance(exc.code, int) else EXIT_USAGE
    try:
        status = COMMANDS[args.command].run(args)
        # What is still buffered goes now, where a reader that left is handled below, rather
        # than at the interpreter's exit, which would print a BrokenPipeError.
        if sys.stdout is not None:
            sys.stdout.flush()
        return status
    except CommandError as exc:
        print(f"tm: error: {exc}", file=sys.stderr)
        return exc.status
    except BrokenPipeError:
        # The reader went away (`tm queue PATH list | head`): stop quietly. Point stdout at
        # devnull so the interpreter's final flush does not raise again (the recipe in the
        # `signal` docs).
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return EXIT_FAILURE
