"""``tm cache``: list, show, clear and explain cached calls (``@store.task``, ``@tm.cached``).

Usage::

    tm cache ls [FUNC] [-n N] [--db URL] [--result-dir DIR] [--json]
    tm cache show KEY [--db URL] [--json]
    tm cache clear [FUNC] [--older-than 7d] [--db URL] [--result-dir DIR] [--json]
    tm cache why FUNC ARGS_JSON [--db URL] [--json]

FUNC is a function's qualified name or ``module.qualname``. For ``why`` it may also be an
importable ``module:attr`` (or ``file.py:attr``) naming the cached function: then defaults, the
seed and the version are compared too. A name is imported from the module its stored entries
record (the current directory first on the path); if that fails, only the arguments given are
compared and a match is reported as such, not as a hit.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from datetime import datetime
from pathlib import Path
from typing import Any

from .cli import EXIT_FAILURE, CommandError, _add_store_options, _open_store

_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}


def parse_age(text: str) -> float:
    """Seconds from an age such as ``90s``, ``15m``, ``12h``, ``7d``, ``2w`` (or bare seconds)."""
    m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([smhdw]?)\s*", text)
    if not m:
        raise argparse.ArgumentTypeError(f"expected an age like 7d, 12h, 30m or 90s, got {text!r}")
    return float(m.group(1)) * _UNITS[m.group(2) or "s"]


def configure(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="action", metavar="ACTION", required=True)
    ls = sub.add_parser("ls", help="stored results, newest first")
    ls.add_argument("func", nargs="?", help="only this function (qualname or module.qualname)")
    ls.add_argument("-n", type=int, default=50, help="how many (default: 50)")
    _add_store_options(ls)
    show = sub.add_parser("show", help="one call key (or a unique prefix): state and result")
    show.add_argument("key")
    _add_store_options(show)
    clear = sub.add_parser("clear", help="delete stored results and their files")
    clear.add_argument("func", nargs="?", help="only this function")
    clear.add_argument("--older-than", type=parse_age, help="only results older than (e.g. 7d)")
    _add_store_options(clear)
    why = sub.add_parser("why", help="explain a miss: what differs from the nearest entry")
    why.add_argument("func", help="qualname, module.qualname, or module:attr to import")
    why.add_argument("args_json", help="the call's arguments as a JSON object: '{\"x\": 1}'")
    _add_store_options(why)
    for p in (ls, show, clear, why):
        p.add_argument(
            "--result-dir",
            help="the directory of cached results (default: $TM_RESULT_DIR or .tm/results); "
            "files the database names outside it are never read or deleted",
        )


def _when(us: int | None) -> str:
    if not us:
        return "-"
    return datetime.fromtimestamp(us / 1e6).isoformat(sep=" ", timespec="seconds")


def run(args: argparse.Namespace) -> int:
    from .exceptions import TmError

    store: Any = _open_store(args.db)
    if args.result_dir:
        store.result_dir = Path(args.result_dir).absolute()
    try:
        return _ACTIONS[args.action](store, args)
    except TmError as exc:
        raise CommandError(str(exc), EXIT_FAILURE) from exc
    finally:
        store.close()


def _ls(store: Any, args: argparse.Namespace) -> int:
    rows = store.cache_entries(func=args.func, limit=args.n)
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0
    print(f"{'key':<32}  {'function':<30} {'seed':<8} {'format':<7} {'size':>10}  created")
    for r in rows:
        func = f"{r['module']}.{r['func']}"
        print(
            f"{r['key']:<32}  {func:<30} {r['seed'] or '-':<8} {r['format']:<7} "
            f"{r['size']:>10}  {_when(r['created_us'])}"
        )
    return 0


def _show(store: Any, args: argparse.Namespace) -> int:
    found = store.cache_index.find(args.key)
    if not found:
        raise CommandError(
            f"no cached call with key {args.key!r} in {store.location}", EXIT_FAILURE
        )
    if len(found) > 1 and not any(s["key"] == args.key for s, _ in found):
        keys = ", ".join(s["key"] for s, _ in found)
        raise CommandError(f"key prefix {args.key!r} is ambiguous: {keys}")
    state, entry = next(((s, e) for s, e in found if s["key"] == args.key), found[0])
    if args.json:
        print(json.dumps({"state": state, "entry": entry}, indent=2))
        return 0
    print(f"key       {state['key']}")
    print(f"function  {state['module']}.{state['func']}")
    print(f"status    {state['status']}")
    if state["owner_pid"] is not None:
        print(f"owner     {state['owner_pid']}@{state['owner_host']}")
    print(f"started   {_when(state['started_us'])}")
    print(f"ended     {_when(state['ended_us'])}")
    if state["error_type"]:
        print(f"error     {state['error_type']}: {state['error_message']}")
    if entry is not None:
        print(f"seed      {entry['seed'] or '-'}")
        print(f"version   {entry['version']}")
        print(f"inputs    {entry['inputs_json']}")
        print(f"result    {entry['result_path']} ({entry['format']}, {entry['size']} bytes)")
        print(f"hash      {entry['content_hash']}")
    return 0


def _clear(store: Any, args: argparse.Namespace) -> int:
    gone = store.clear_cache(func=args.func, older_than=args.older_than)
    outside = [g["result_path"] for g in gone if g["outside"]]
    if outside:
        print(
            f"kept {len(outside)} result file(s) outside the result directory "
            f"{store.result_dir} (files elsewhere are never deleted; pass --result-dir if "
            f"the results live there): {', '.join(outside[:3])}{', ...' if len(outside) > 3 else ''}",
            file=sys.stderr,
        )
    if args.json:
        print(json.dumps({"deleted": len(gone), "keys": [g["key"] for g in gone]}, indent=2))
    else:
        print(f"deleted {len(gone)} cached result(s)")
    return 0


def _why(store: Any, args: argparse.Namespace) -> int:
    from ._cached import CachedFunction, explain_args

    try:
        call_args = json.loads(args.args_json)
    except json.JSONDecodeError as exc:
        raise CommandError(f"ARGS_JSON is not valid JSON: {exc}") from None
    if not isinstance(call_args, dict):
        raise CommandError("ARGS_JSON must be a JSON object of arguments by name")
    target: object = None
    if ":" in args.func:
        from .cli import load_object

        target = load_object(args.func)
        if not isinstance(target, CachedFunction):
            raise CommandError(f"{args.func!r} is not a cached function (@store.task, @tm.cached)")
    else:
        target = _import_by_name(store, args.func)
    if isinstance(target, CachedFunction):
        try:
            f = target.facts(**call_args)
        except TypeError as exc:  # a missing or unknown argument, or one without a key
            raise CommandError(f"{args.func}: {exc}") from None
        from ._cached import explain

        report = explain(store, f)
    else:
        report = explain_args(store, args.func, call_args)
        if report["hit"]:
            # Only the arguments were compared: the code may have changed since.
            report["hit"] = None
            report["compared"] = "arguments only"
    if args.json:
        print(json.dumps(report, indent=2))
        return 0
    if report["hit"] is None:
        print(
            f"arguments match the stored call {report['nearest']} (code not compared: "
            f"{args.func} could not be imported; name it as MODULE:ATTR to compare its version)"
        )
    elif report["hit"]:
        print(f"hit: key {report['nearest']} is stored")
    elif report["nearest"] is None:
        print(f"miss: nothing stored for {args.func}")
    else:
        print(f"miss: the nearest stored call is {report['nearest']}; it differs in")
        for d in report["differences"]:
            print(f"  {d}")
    return 0


def _import_by_name(store: Any, name: str) -> object:
    """The cached function a stored entry of ``name`` belongs to, imported from its module
    (the current directory first on the path), or None when it cannot be: defined in
    ``__main__`` or inside another function, or its module fails to import."""
    import importlib
    import os

    rows = store.cache_entries(func=name, limit=1)
    if not rows:
        return None
    module, qualname = rows[0]["module"], rows[0]["func"]
    if module == "__main__" or "<locals>" in qualname:
        return None
    if os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())
    try:
        obj: object = importlib.import_module(module)
        for part in qualname.split("."):
            obj = getattr(obj, part)
    except Exception:
        return None
    return obj


_ACTIONS = {"ls": _ls, "show": _show, "clear": _clear, "why": _why}
