"""``tm queue``: inspect and operate an agent queue (seed 001) from the command line.

Usage::

    tm queue PATH summary [--json]
    tm queue PATH list [--status S] [--type T] [--limit N] [--json]
    tm queue PATH show TASK_ID
    tm queue PATH release TASK_ID [--agent AGENT]
    tm queue PATH cancel TASK_ID
    tm queue PATH export [-o FILE]
    tm queue migrate SRC DST

PATH is a JSON state file (``*.json``), an SQLite database, or ``sqlite:///...``. Inspection never
creates a store: a missing PATH is an error. Exit status: 0 success, 1 the operation could not be
done (task not found, not in progress, lock timeout, corrupt file), 2 usage error.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from typing import Any

from .exceptions import TmError

EXIT_OK = 0
EXIT_FAILURE = 1
EXIT_USAGE = 2

_ACTIONS = ("summary", "list", "show", "release", "cancel", "export")


class _Usage(Exception):
    pass


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> Any:  # argparse would exit; let queue_main decide
        raise _Usage(f"{self.prog}: error: {message}")


def _store_parser() -> argparse.ArgumentParser:
    p = _Parser(prog="tm queue PATH", add_help=False)
    sub = p.add_subparsers(dest="action", required=True, parser_class=_Parser)
    s = sub.add_parser("summary", help="counts by status and type, and the workflow metadata")
    s.add_argument("--json", action="store_true", help="print the summary as JSON")
    ls = sub.add_parser("list", help="tasks, oldest first")
    ls.add_argument(
        "--status", choices=["pending", "in_progress", "completed", "failed", "cancelled"]
    )
    ls.add_argument("--type", dest="task_type")
    ls.add_argument("--limit", type=int)
    ls.add_argument("--json", action="store_true", help="one JSON object per line")
    sh = sub.add_parser("show", help="one task as JSON")
    sh.add_argument("task_id")
    rl = sub.add_parser("release", help="return an in-progress task to pending")
    rl.add_argument("task_id")
    rl.add_argument("--agent", help="only if this agent holds it (default: whoever holds it)")
    cn = sub.add_parser("cancel", help="cancel a pending task")
    cn.add_argument("task_id")
    ex = sub.add_parser("export", help="the queue in the seed's JSON state-file format")
    ex.add_argument("-o", "--output", help="write to this file instead of standard output")
    return p


def _exists(target: str) -> bool:
    if target.startswith("sqlite://"):
        rest = target[len("sqlite://") :]
        target = rest[1:] if rest.startswith("/") else rest
    return os.path.exists(target)


def _open(target: str) -> Any:
    from .queue import TaskManager

    if not _exists(target):
        raise _Failure(f"no such queue: {target}")
    return TaskManager(target)


class _Failure(Exception):
    pass


def _print_summary(summary: dict[str, Any]) -> None:
    print(f"total tasks: {summary['total_tasks']}")
    for title, key in (("by status", "status_counts"), ("by type", "type_counts")):
        counts = summary[key]
        if counts:
            print(f"{title}:")
            width = max(len(k) for k in counts)
            for k, n in counts.items():
                print(f"  {k:<{width}}  {n}")
    meta = summary.get("metadata") or {}
    if meta:
        print("metadata:")
        for k, v in meta.items():
            print(f"  {k}: {v if isinstance(v, str) else json.dumps(v)}")


def _print_table(tasks: list[dict[str, Any]]) -> None:
    cols = ("id", "type", "status", "locked_by", "attempt", "created_at")
    rows = [[("" if t.get(c) is None else str(t.get(c))) for c in cols] for t in tasks]
    widths = [max([len(c)] + [len(r[i]) for r in rows]) for i, c in enumerate(cols)]
    print("  ".join(c.upper().ljust(w) for c, w in zip(cols, widths, strict=True)).rstrip())
    for r in rows:
        print("  ".join(v.ljust(w) for v, w in zip(r, widths, strict=True)).rstrip())


def _run_store(target: str, args: argparse.Namespace) -> int:
    tm = _open(target)
    if args.action == "summary":
        s = tm.get_status_summary()
        if args.json:
            print(json.dumps(s, indent=2))
        else:
            _print_summary(s)
    elif args.action == "list":
        if args.limit is not None and args.limit < 0:
            raise _Usage("tm queue PATH list: error: --limit must be >= 0")
        tasks = tm.list_tasks(status=args.status, task_type=args.task_type, limit=args.limit)
        if args.json:
            for t in tasks:
                print(json.dumps(t))
        else:
            _print_table(tasks)
    elif args.action == "show":
        t = tm.get_task(args.task_id)
        if t is None:
            raise _Failure(f"no task {args.task_id}")
        print(json.dumps(t, indent=2))
    elif args.action == "release":
        ok = (
            tm.release_task(args.task_id, args.agent)
            if args.agent
            else tm.force_release(args.task_id)
        )
        if not ok:
            who = f" by {args.agent}" if args.agent else ""
            raise _Failure(f"task {args.task_id} is not in progress{who}")
        print(f"released {args.task_id}")
    elif args.action == "cancel":
        if not tm.cancel_task(args.task_id):
            raise _Failure(f"task {args.task_id} is not pending")
        print(f"cancelled {args.task_id}")
    elif args.action == "export":
        if args.output:
            tm.export(args.output)
        else:
            sys.stdout.write(tm.export())
            sys.stdout.write("\n")
    return EXIT_OK


def _run_migrate(argv: list[str]) -> int:
    from .queue import migrate

    p = _Parser(prog="tm queue migrate", description="copy a queue into a new or empty store")
    p.add_argument("src", help="the queue to read (JSON state file or SQLite)")
    p.add_argument("dst", help="the store to create or fill (must hold no tasks)")
    args = p.parse_args(argv)
    if not _exists(args.src):
        raise _Failure(f"no such queue: {args.src}")
    n = migrate(args.src, args.dst)
    print(f"migrated {n} tasks from {args.src} to {args.dst}")
    return EXIT_OK


def queue_main(argv: list[str]) -> int:
    """Runs ``tm queue`` with ``argv`` (the arguments after ``queue``); returns the exit status."""
    try:
        if not argv or argv[0] in ("-h", "--help"):
            print((__doc__ or "").strip(), file=sys.stdout if argv else sys.stderr)
            return EXIT_OK if argv else EXIT_USAGE
        if argv[0] == "migrate":
            return _run_migrate(argv[1:])
        target, rest = argv[0], argv[1:]
        if not rest:
            raise _Usage(f"tm queue: error: expected an action after PATH: {', '.join(_ACTIONS)}")
        return _run_store(target, _store_parser().parse_args(rest))
    except SystemExit as e:  # argparse's --help
        return e.code if isinstance(e.code, int) else EXIT_USAGE
    except _Usage as e:
        print(str(e), file=sys.stderr)
        return EXIT_USAGE
    except BrokenPipeError:
        raise  # the reader went away (`| head`): tm's main() ends quietly
    except (_Failure, TmError, OSError, ValueError) as e:
        print(f"tm queue: error: {e}", file=sys.stderr)
        return EXIT_FAILURE
