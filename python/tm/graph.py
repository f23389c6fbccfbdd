"""``tm.Graph``: tasks wired into a DAG, validated as it is built, run by the Rust engine."""

from __future__ import annotations

import contextlib
import importlib
import inspect
import json
import os
import sys
import types
import weakref
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

from ._decorators import TaskFunction, TaskOptions, as_task, task
from ._tm import ByteCache, GraphCore
from .exceptions import GraphError, TaskTimeout
from .schedules import Schedule, parse_schedule
from .taskflow import Task as _ClassTask

__all__ = ["Graph"]

_PARENT, _CONFIG, _CONTEXT, _ALL_PARENTS, _VALUE = 0, 1, 2, 3, 4
_P = inspect.Parameter


# Code flags (Include/cpython/code.h): the fast path reads a plain function's parameters from its
# code object, which costs a small fraction of ``inspect.signature``.
_CO_VARARGS, _CO_VARKEYWORDS = 0x04, 0x08
_FunctionType = types.FunctionType


class _Sig:
    """What a callable's signature needs, computed once per callable."""

    __slots__ = ("params", "positional", "var_keyword", "var_positional")

    def __init__(self, fn: Callable[..., Any]) -> None:
        if type(fn) is _FunctionType:
            extra = fn.__dict__
            if not extra or ("__wrapped__" not in extra and "__signature__" not in extra):
                self._from_code(fn)
                return
        try:
            sig = inspect.signature(fn)
        except (TypeError, ValueError):
            # Builtins without a signature: call them with parents by name only if asked; assume none.
            self.params: list[tuple[str, Any, bool]] = []
            self.positional: list[str] = []
            self.var_positional = True
            self.var_keyword = False
            return
        self.params = [(p.name, p.kind, p.default is not _P.empty) for p in sig.parameters.values()]
        self.positional = [
            p.name
            for p in sig.parameters.values()
            if p.kind in (_P.POSITIONAL_ONLY, _P.POSITIONAL_OR_KEYWORD)
        ]
        self.var_positional = any(p.kind is _P.VAR_POSITIONAL for p in sig.parameters.values())
        self.var_keyword = any(p.kind is _P.VAR_KEYWORD for p in sig.parameters.values())

    def _from_code(self, fn: types.FunctionType) -> None:
        """The same analysis as ``inspect.signature`` gives, read off the function's code object."""
        code = fn.__code__
        argc, posonly, kwonly = code.co_argcount, code.co_posonlyargcount, code.co_kwonlyargcount
        names, flags = code.co_varnames, code.co_flags
        first_default = argc - len(fn.__defaults__ or ())
        params: list[tuple[str, Any, bool]] = [
            (
                names[i],
                _P.POSITIONAL_ONLY if i < posonly else _P.POSITIONAL_OR_KEYWORD,
                i >= first_default,
            )
            for i in range(argc)
        ]
        at = argc + kwonly
        self.var_positional = bool(flags & _CO_VARARGS)
        if self.var_positional:
            params.append((names[at], _P.VAR_POSITIONAL, False))
            at += 1
        if kwonly:
            kwdefaults = fn.__kwdefaults__ or {}
            params.extend(
                (name, _P.KEYWORD_ONLY, name in kwdefaults) for name in names[argc : argc + kwonly]
            )
        self.var_keyword = bool(flags & _CO_VARKEYWORDS)
        if self.var_keyword:
            params.append((names[at], _P.VAR_KEYWORD, False))
        self.params = params
        self.positional = list(names[:argc])


_SIGS: weakref.WeakKeyDictionary[Any, _Sig] = weakref.WeakKeyDictionary()

# Compiled forms a graph keeps, one per executor that ran it (most recently used).
_COMPILED_KEPT = 4


def _sig_of(fn: Callable[..., Any]) -> _Sig:
    """The signature analysis of ``fn``, cached per callable (many tasks share one function)."""
    if type(fn) is _FunctionType:
        return _Sig(fn)  # as cheap as a cache lookup
    try:
        sig = _SIGS.get(fn)
    except TypeError:  # not weak-referenceable or not hashable
        return _Sig(fn)
    if sig is None:
        sig = _Sig(fn)
        with contextlib.suppress(TypeError):
            _SIGS[fn] = sig
    return sig


class _Node:
    """One task in a graph: what to call and with which options."""

    __slots__ = ("call", "options", "sig", "source")

    def __init__(self, source: Any, call: Callable[..., Any], options: TaskOptions) -> None:
        self.source = source
        self.call = call
        self.options = options
        self.sig: _Sig | None = None


def _caller() -> tuple[Path | None, str | None]:
    """The directory of the script that constructed the graph (for relative config paths) and
    its module's name (to record where the graph can be loaded from)."""
    frame = inspect.currentframe()
    try:
        f = frame.f_back.f_back if frame and frame.f_back else None
        while f is not None and f.f_globals.get("__name__", "").startswith("tm."):
            f = f.f_back
        filename = f.f_code.co_filename if f is not None else None
        module = f.f_globals.get("__name__") if f is not None else None
    finally:
        del frame
    if filename and not filename.startswith("<") and os.path.exists(filename):
        return Path(filename).resolve().parent, module
    return None, module


def _source_of(graph: Graph, module_name: str | None) -> str | None:
    """Where ``graph`` can be loaded from by another process: ``package.module:attr`` for a
    module of a package, else ``/path/to/file.py:attr``; None when no module-level name holds it."""
    module = sys.modules.get(module_name or "")
    if module is None:
        return None
    attr = next((k for k, v in vars(module).items() if v is graph and k.isidentifier()), None)
    if attr is None:
        return None
    spec = getattr(module, "__spec__", None)
    if spec is not None and spec.parent:
        return f"{spec.name}:{attr}"
    file = getattr(module, "__file__", None)
    return f"{Path(file).resolve()}:{attr}" if file else None


#: Parsed config files shared by every graph of the process, keyed by path, modification time
#: and size, bounded by the files' total size (least recently used dropped first).
CONFIG_CACHE_BYTES = 16 << 20
_config_cache = ByteCache(CONFIG_CACHE_BYTES)


class _ConfigFile:
    """A JSON (or YAML) config file, parsed again only when it changes."""

    def __init__(self, path: str | os.PathLike[str], base: Path | None) -> None:
        self.path = Path(path)
        self.base = base

    def resolve(self) -> Path:
        if self.path.is_absolute():
            return self.path
        if self.base is not None and (self.base / self.path).exists():
            return self.base / self.path
        return Path.cwd() / self.path

    def load(self) -> Any:
        path = self.resolve()
        try:
            st = path.stat()
        except OSError as e:
            raise GraphError(f"cannot read config file {str(path)!r}: {e.strerror}") from e
        key = f"{path}\0{st.st_mtime_ns}\0{st.st_size}"
        value = _config_cache.get(key)
        if value is None:
            try:
                text = path.read_text(encoding="utf-8")
            except OSError as e:
                raise GraphError(f"cannot read config file {str(path)!r}: {e.strerror}") from e
            value = _parse_config(path, text)
            _config_cache.put(key, value, max(st.st_size, 1))
        return value


def _parse_config(path: Path, text: str) -> Any:
    if path.suffix.lower() in (".yaml", ".yml"):
        try:
            import yaml  # type: ignore[import-untyped]
        except ImportError as e:  # pragma: no cover - depends on the environment
            raise GraphError(f"reading {str(path)!r} needs PyYAML (pip install pyyaml)") from e
        try:
            return yaml.safe_load(text)
        except yaml.YAMLError as e:
            raise GraphError(f"invalid YAML in config file {str(path)!r}: {e}") from e
        except RecursionError:
            raise _too_deep(path) from None
    try:
        return json.loads(text)
    except json.JSONDecodeError as e:
        raise GraphError(f"invalid JSON in config file {str(path)!r}: {e}") from e
    except RecursionError:
        raise _too_deep(path) from None


def _too_deep(path: Path) -> GraphError:
    # The parsers recurse once per level of nesting; past Python's recursion limit they give up.
    return GraphError(
        f"{str(path)!r} is nested too deeply to read (more than about "
        f"{sys.getrecursionlimit()} levels of lists or objects)"
    )


class Graph:
    """A directed acyclic graph of tasks. ``len(graph)`` counts them, ``name in graph`` looks one
    up, and ``for name in graph`` visits their names in topological order (parents first).

    Args:
        name: the graph's name (used in run records and schedules).
        schedule: ``"manual"`` (run on demand), a cron expression (text or ``Expression``), or
            an interval of elapsed time (``tm.every(minutes=5)`` or ``"@every 5m"``).
        config: a dict, or the path of a JSON/YAML file re-read for each run when it changed.
            Relative paths resolve against the defining script's directory, then the working
            directory. Tasks receive it through a parameter named ``config``.
        tz: the time zone of the schedule (IANA name), UTC by default.
    """

    def __init__(
        self,
        name: str = "graph",
        schedule: str | Schedule | None = "manual",
        config: Any = None,
        tz: str | None = None,
    ) -> None:
        if not isinstance(name, str) or not name:
            raise GraphError(f"a graph needs a non-empty name, got {name!r}")
        self.name = name
        self.schedule: Schedule | None = parse_schedule(schedule)
        self.tz = tz
        self._core = GraphCore()
        self._nodes: list[_Node] = []
        self._by_source: dict[int, int] = {}
        self._version = 0
        # Compiled forms by executor (its cache key), most recently used last, each with the graph
        # version it was compiled from.
        self._compiled: dict[Any, tuple[int, Any]] = {}
        self._config_base, self._module = _caller()
        self._source: str | None = None
        self._config: Any = None
        self.config = config

    def _edge_list(self) -> list[tuple[int, int]]:
        """Every edge as (parent, child) node indexes (cached until the graph changes)."""
        cached = getattr(self, "_edges_cache", None)
        if cached is None or cached[0] != self._version:
            cached = self._edges_cache = (self._version, self._core.edges())
        return cached[1]

    @property
    def source(self) -> str | None:
        """Where this graph can be loaded from (``module:attr`` or ``file.py:attr``), recorded with
        each run so ``tm resume RUN_ID`` needs no ``--graph``; None for a graph no module-level
        name holds (one built inside a function)."""
        if self._source is None:
            self._source = _source_of(self, self._module)
        return self._source

    # -- configuration ---------------------------------------------------------------------------

    @property
    def config(self) -> Any:
        """The config given at construction (a dict, a path, or None)."""
        return self._config_source

    @config.setter
    def config(self, value: Any) -> None:
        self._config_source = value
        if isinstance(value, (str, os.PathLike)):
            self._config = _ConfigFile(value, self._config_base)
        else:
            self._config = value

    def load_config(self) -> Any:
        """The config a run receives now (a file is re-read only when it changed)."""
        if isinstance(self._config, _ConfigFile):
            return self._config.load()
        return self._config

    # -- building --------------------------------------------------------------------------------

    def _node_for(self, obj: Any) -> int:
        """The node of task ``obj``, adding it (and a class task's dependencies) if new."""
        key = id(obj)
        idx = self._by_source.get(key)
        if idx is not None and self._nodes[idx].source is obj:
            return idx
        node = _make_node(obj)
        name = _node_name(node)
        idx = self._core.add_node(name, obj)
        if idx == len(self._nodes):
            self._nodes.append(node)
            self._version += 1
        self._by_source[key] = idx
        deps = getattr(obj, "_tm_dependencies", None)
        if deps:
            self._edges([self._node_for(d) for d in deps], [idx])
        return idx

    def _edges(self, parents: list[int], children: list[int]) -> None:
        pairs = [(p, c) for p in parents for c in children]
        if pairs:
            self._core.add_edges(pairs)
            self._version += 1

    def _resolve(self, item: Any) -> int:
        if isinstance(item, str):
            idx = self._core.find(item)
            if idx is None:
                raise GraphError(f"graph {self.name!r} has no task named {item!r}")
            return idx
        return self._node_for(item)

    def _atomically(self, change: Callable[[], None]) -> None:
        """Applies ``change``; if it raises, every task it added is removed again."""
        mark = len(self._nodes)
        try:
            change()
        except BaseException:
            if len(self._nodes) > mark:
                self._core.truncate(mark)
                for node in self._nodes[mark:]:
                    self._by_source.pop(id(node.source), None)
                del self._nodes[mark:]
                self._version += 1
            raise

    def add(self, t: Any, depends_on: Iterable[Any] = ()) -> Any:
        """Adds task ``t`` (a task, a callable or a ``tm.Task``) after ``depends_on`` (tasks or names).

        All or nothing: if a dependency is unknown or would close a cycle, the graph is unchanged.
        Returns ``t`` so it can be used as a decorator: ``@graph.add``.
        """
        if isinstance(depends_on, (str, bytes)) or callable(depends_on):
            depends_on = [depends_on]
        deps = list(depends_on)
        if self._add_new(t, deps):
            return t

        def change() -> None:
            parents = [self._resolve(d) for d in deps]
            self._edges(parents, [self._node_for(t)])

        self._atomically(change)
        return t

    def _add_new(self, t: Any, deps: list[Any]) -> bool:
        """Adds ``t`` after ``deps`` in one step when ``t`` is a new function task and every
        dependency is already in the graph (how graphs are usually built); False otherwise, with
        the graph unchanged."""
        by_source, nodes, core = self._by_source, self._nodes, self._core
        parents: list[int] = []
        for d in deps:
            if isinstance(d, str):
                idx = core.find(d)
            else:
                idx = by_source.get(id(d))
                if idx is not None and nodes[idx].source is not d:
                    idx = None
            if idx is None:
                return False
            parents.append(idx)
        idx = by_source.get(id(t))
        if (idx is not None and nodes[idx].source is t) or isinstance(t, _ClassTask):
            return False
        node = _make_node(t)
        idx = core.add_node_after(_node_name(node), t, parents)
        nodes.append(node)
        by_source[id(t)] = idx
        self._version += 1
        return True

    def add_edges(self, parents: Iterable[Any], children: Iterable[Any] | None = None) -> None:
        """Adds every task in ``parents`` and ``children`` and an edge from each parent to each child.

        Edges accumulate across calls and repeating one is harmless. An edge that would close a cycle
        raises :class:`tm.CycleError` naming the cycle, and none of this call's edges are kept.
        """
        if callable(parents) or isinstance(parents, str):
            parents = [parents]
        if children is not None and (callable(children) or isinstance(children, str)):
            children = [children]
        parent_list, child_list = list(parents), list(children or [])

        def change() -> None:
            ps = [self._resolve(p) for p in parent_list]
            cs = [self._resolve(c) for c in child_list]
            self._edges(ps, cs)

        self._atomically(change)

    @classmethod
    def from_tasks(cls, tasks: Iterable[Any], name: str = "graph", **kwargs: Any) -> Graph:
        """A graph of ``tm.Task`` objects (their ``dependencies`` become edges) or task callables."""
        g = cls(name, **kwargs)
        for t in tasks:
            g.add(t)
        return g

    @classmethod
    def from_file(
        cls, path: str | os.PathLike[str], name: str | None = None, **kwargs: Any
    ) -> Graph:
        """A graph defined in JSON or YAML::

            {"tasks": [{"name": "fetch", "function": "pkg.mod.fetch", "depends_on": []}, ...]}

        Entries may also set ``tag``, ``priority``, ``retries``, ``retry_delay``, ``backoff``,
        ``max_delay`` and ``jitter``. Errors name the offending entry.
        """
        p = Path(path)
        try:
            text = p.read_text(encoding="utf-8")
        except OSError as e:
            raise GraphError(f"cannot read graph file {str(p)!r}: {e.strerror}") from e
        data = _parse_config(p, text)
        if not isinstance(data, dict) or not isinstance(data.get("tasks"), list):
            raise GraphError(f"{str(p)!r}: expected an object with a 'tasks' list")
        g = cls(name or data.get("name") or p.stem, **kwargs)
        entries: list[tuple[str, list[str]]] = []
        for i, entry in enumerate(data["tasks"]):
            where = f"{str(p)!r}, task #{i}"
            if not isinstance(entry, dict) or not isinstance(entry.get("name"), str):
                raise GraphError(f"{where}: each task needs a string 'name'")
            where = f"{str(p)!r}, task {entry['name']!r}"
            fn = _import_function(entry.get("function"), where)
            opts = {k: v for k, v in entry.items() if k not in ("name", "function", "depends_on")}
            try:
                t = task(fn, name=entry["name"], **opts)
            except (TypeError, ValueError) as e:
                raise GraphError(f"{where}: {e}") from e
            deps = entry.get("depends_on") or []
            if not isinstance(deps, list) or not all(isinstance(d, str) for d in deps):
                raise GraphError(f"{where}: 'depends_on' must be a list of task names")
            g.add(t)
            entries.append((entry["name"], deps))
        for child, deps in entries:
            for d in deps:
                if g._core.find(d) is None:
                    raise GraphError(f"{str(p)!r}, task {child!r}: depends on unknown task {d!r}")
            g.add_edges(deps, [child])
        return g

    # -- inspection ------------------------------------------------------------------------------

    @property
    def tasks(self) -> list[str]:
        """Task names, in the order they were added."""
        return self._core.names()

    def __len__(self) -> int:
        return len(self._nodes)

    def __iter__(self) -> Iterator[str]:
        """The task names in topological order (each after its parents), as
        :meth:`topological_order` gives them; the order is the same for graphs built alike. A
        snapshot: editing the graph while iterating does not change what the loop sees."""
        return iter(self.topological_order())

    def __contains__(self, item: Any) -> bool:
        if isinstance(item, str):
            return self._core.find(item) is not None
        idx = self._by_source.get(id(item))
        return idx is not None and self._nodes[idx].source is item

    def parents_of(self, name: str) -> list[str]:
        names = self._core.names()
        return [names[p] for p in self._core.parents(self._resolve(name))]

    def children_of(self, name: str) -> list[str]:
        names = self._core.names()
        return [names[c] for c in self._core.children(self._resolve(name))]

    def topological_order(self) -> list[str]:
        names = self._core.names()
        return [names[i] for i in self._core.topological_order()]

    def leaves(self) -> list[str]:
        """Tasks without children (cached until the graph changes)."""
        return list(self._leaf_names())

    def _leaf_names(self) -> list[str]:
        """The cached leaves themselves (a new list whenever the graph changes; never mutated)."""
        cached = getattr(self, "_leaves_cache", None)
        if cached is not None and cached[0] == self._version:
            return cached[1]
        names = self._core.names()
        leaves = [names[i] for i in range(len(names)) if not self._core.children(i)]
        self._leaves_cache = (self._version, leaves)
        return leaves

    def roots(self) -> list[str]:
        names = self._core.names()
        return [names[i] for i in range(len(names)) if not self._core.parents(i)]

    def to_mermaid(self) -> str:
        """The graph as a Mermaid flowchart."""
        names = self._core.names()
        lines = ["flowchart TD"]
        lines += [f'    n{i}["{_escape(n)}"]' for i, n in enumerate(names)]
        lines += [f"    n{p} --> n{c}" for p, c in self._core.edges()]
        return "\n".join(lines) + "\n"

    def to_dot(self) -> str:
        """The graph in Graphviz DOT."""
        names = self._core.names()
        lines = [f'digraph "{_escape(self.name)}" {{', "    rankdir=LR;"]
        lines += [f'    "{_escape(n)}";' for n in names]
        lines += [
            f'    "{_escape(names[p])}" -> "{_escape(names[c])}";' for p, c in self._core.edges()
        ]
        return "\n".join(lines) + "\n}\n"

    def __repr__(self) -> str:
        sched = "manual" if self.schedule is None else str(self.schedule)
        return f"<tm.Graph {self.name!r}: {len(self)} tasks, schedule {sched!r}>"

    # -- running ---------------------------------------------------------------------------------

    def validate(self) -> None:
        """Checks that every required parameter of every task can be filled (raises GraphError)."""
        self._compile(None, (), {}, check_roots=False)

    def _compile(
        self,
        pool_of: Callable[[str | None], int] | None,
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
        check_roots: bool = True,
        cache_key: Any = None,
        defaults: dict[str, Any] | None = None,
        wrap: Callable[[Callable[..., Any], TaskOptions], Callable[..., Any]] | None = None,
        prepare: Callable[[Any, list[Any], list[Any]], Any] | None = None,
    ) -> Any:
        """Per-node call descriptions and scheduling specs for the engine.

        Without root arguments the result depends only on the graph and the executor's pools, so it
        is cached until the graph changes (a scheduled graph compiles once, not on every fire).
        With them, only the root tasks' parameters depend on the arguments: the engine's program
        for the graph with its roots left open is cached, and each run binds just the roots.
        """
        if (args or kwargs) and cache_key is not None and prepare is not None:
            base = self._compile(
                pool_of,
                (),
                {},
                check_roots=False,
                cache_key=(cache_key, "roots"),
                defaults=defaults,
                wrap=wrap,
                prepare=prepare,
            )
            return base.with_roots(self._bind_roots(args, kwargs, check_roots))
        cacheable = cache_key is not None and not args and not kwargs
        if cacheable:
            hit = self._compiled.pop(cache_key, None)
            if hit is not None and hit[0] == self._version:
                self._compiled[cache_key] = hit
                return hit[1]
        names = self._core.names()
        calls: list[Any] = []
        specs: list[Any] = []
        used_kwargs: set[str] = set()
        wrapped: dict[tuple[int, str | None, bool], Callable[..., Any]] = {}
        # Scheduling specs by options object (most tasks share one), then by the values that
        # matter (options that differ only by name give one spec).
        spec_of_options: dict[int, tuple[Any, ...]] = {}
        spec_for: dict[tuple[Any, ...], tuple[Any, ...]] = {}
        d = defaults or {}
        default_persist = bool(d.get("persist", False))
        for i, (node, parents) in enumerate(
            zip(self._nodes, self._core.parent_lists(), strict=True)
        ):
            sig = node.sig
            if sig is None:
                sig = node.sig = _sig_of(node.call)
            is_root = not parents
            params, call_args = _bind(
                names[i],
                sig,
                {names[p]: p for p in parents},
                is_root,
                args,
                kwargs,
                check_roots,
            )
            if is_root:
                _note_used(used_kwargs, params, sig, kwargs)
            o = node.options
            # Many tasks share a function and their options differ only by name: wrap and derive
            # the scheduling spec once per distinct (function, tag) and option set.
            wkey = (id(node.call), o.tag, o.cache, o.resources)
            fn = wrapped.get(wkey)
            if fn is None:
                fn = wrap(node.call, o) if wrap is not None else node.call
                wrapped[wkey] = fn
            persist = o.persist if o.persist is not None else default_persist
            calls.append((fn, params, call_args, o.retry_on, o.give_up_on or None, persist))
            spec = spec_of_options.get(id(o))
            if spec is None:
                skey = (
                    o.tag,
                    o.priority,
                    o.retries,
                    o.retry_delay,
                    o.backoff,
                    o.max_delay,
                    o.jitter,
                    o.timeout,
                    o.retry_on,
                    o.give_up_on,
                )
                spec = spec_for.get(skey)
                if spec is None:
                    pool = pool_of(o.tag) if pool_of is not None else 0
                    spec = spec_for[skey] = _spec(o, pool, d)
                spec_of_options[id(o)] = spec
            specs.append(spec)
        if check_roots:
            self._check_used(kwargs, used_kwargs)
        # The engine keeps its own compiled form; the lists are not kept once it has it.
        compiled = prepare(self._core, calls, specs) if prepare is not None else (calls, specs)
        if cacheable:
            self._compiled[cache_key] = (self._version, compiled)
            # A few executors may take turns running one graph; more than that is unusual, and
            # each compiled form holds a per-task table.
            while len(self._compiled) > _COMPILED_KEPT:
                del self._compiled[next(iter(self._compiled))]
        return compiled

    def _bind_roots(
        self, args: tuple[Any, ...], kwargs: dict[str, Any], check_roots: bool
    ) -> list[tuple[int, list[tuple[str, int, Any]], tuple[Any, ...] | None]]:
        """The root tasks' parameters for a run with these arguments (as :meth:`_compile` binds)."""
        names = self._core.names()
        cached = getattr(self, "_root_ids", None)
        if cached is None or cached[0] != self._version:
            cached = self._root_ids = (
                self._version,
                [i for i, parents in enumerate(self._core.parent_lists()) if not parents],
            )
        roots = []
        used_kwargs: set[str] = set()
        for i in cached[1]:
            node = self._nodes[i]
            if node.sig is None:
                node.sig = _sig_of(node.call)
            params, call_args = _bind(names[i], node.sig, {}, True, args, kwargs, check_roots)
            _note_used(used_kwargs, params, node.sig, kwargs)
            roots.append((i, params, call_args))
        if check_roots:
            self._check_used(kwargs, used_kwargs)
        return roots

    def _check_used(self, kwargs: dict[str, Any], used: set[str]) -> None:
        unused = set(kwargs) - used
        if unused:
            raise TypeError(
                f"graph {self.name!r}: no root task accepts argument(s) {', '.join(sorted(unused))}"
            )

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        """Runs the graph now on the default executor and returns its result.

        Positional and keyword arguments go to the root tasks. Returns the single leaf's output, or a
        dict of leaf outputs when there are several. A failure raises :class:`tm.TaskFailed` with the
        task's own exception as ``__cause__``.
        """
        from .executor import default_executor

        run = default_executor().run(self, args=args, kwargs=kwargs)
        run.raise_for_state()
        return run.result()


def _note_used(
    used: set[str], params: list[tuple[str, int, Any]], sig: _Sig, kwargs: dict[str, Any]
) -> None:
    """Adds the run's keyword arguments a root task's parameters take to ``used``."""
    used.update(name for name, kind, _ in params if kind == _VALUE)
    if sig.var_keyword:
        used.update(kwargs)


def _spec(o: TaskOptions, pool: int, d: dict[str, Any]) -> tuple[Any, ...]:
    """The engine's scheduling spec for options ``o``; unset values take the executor's defaults."""

    def pick(key: str, value: Any, fallback: Any) -> Any:
        return value if value is not None else d.get(key, fallback)

    return (
        pool,
        o.priority,
        pick("retries", o.retries, 0),
        pick("retry_delay", o.retry_delay, 0.0),
        pick("backoff", o.backoff, 0.0),
        pick("max_delay", o.max_delay, None),
        pick("jitter", o.jitter, 0.0),
        pick("timeout", o.timeout, None),
        issubclass(TaskTimeout, o.retry_on) and not issubclass(TaskTimeout, o.give_up_on),
    )


def _bind(
    name: str,
    sig: _Sig,
    parents: dict[str, int],
    is_root: bool,
    args: tuple[Any, ...],
    kwargs: dict[str, Any],
    check_roots: bool,
) -> tuple[list[tuple[str, int, Any]], tuple[Any, ...] | None]:
    params: list[tuple[str, int, Any]] = []
    covered: set[str] = set()
    call_args: tuple[Any, ...] | None = None
    if is_root and args:
        if len(args) > len(sig.positional) and not sig.var_positional:
            raise TypeError(
                f"root task {name!r} takes {len(sig.positional)} positional argument(s), {len(args)} given"
            )
        covered = set(sig.positional[: len(args)])
        call_args = tuple(args)
    for pname, kind, has_default in sig.params:
        if kind is _P.VAR_KEYWORD:
            params.append((pname, _ALL_PARENTS, None))
            if is_root:
                params.extend((k, _VALUE, v) for k, v in kwargs.items() if k not in covered)
            continue
        if kind is _P.VAR_POSITIONAL or pname in covered:
            continue
        if kind is _P.POSITIONAL_ONLY:
            if has_default:
                continue
            raise GraphError(
                f"task {name!r}: positional-only parameter {pname!r} cannot be filled by name"
            )
        if pname in parents:
            params.append((pname, _PARENT, parents[pname]))
        elif pname == "config":
            params.append((pname, _CONFIG, None))
        elif pname == "context":
            params.append((pname, _CONTEXT, None))
        elif is_root and pname in kwargs:
            params.append((pname, _VALUE, kwargs[pname]))
        elif has_default or (is_root and not check_roots):
            continue
        else:
            where = (
                "a parent task" if not is_root else "a parent task or an argument of the graph call"
            )
            raise GraphError(
                f"task {name!r}: required parameter {pname!r} cannot be filled "
                f"(it is not {where}, 'config' or 'context')"
            )
    return params, call_args


def _make_node(obj: Any) -> _Node:
    if isinstance(obj, _ClassTask):
        return _Node(obj, obj._tm_call, obj._tm_options())
    t = as_task(obj)
    return _Node(obj, t.__wrapped__, t.__tm_options__)


def _node_name(node: _Node) -> str:
    src = node.source
    if isinstance(src, _ClassTask):
        return src.task_id
    if isinstance(src, TaskFunction):
        return src.task_name
    return as_task(src).task_name


def _escape(s: str) -> str:
    return s.replace("\\", "\\\\").replace('"', '\\"')


def _import_function(spec: Any, where: str) -> Callable[..., Any]:
    if not isinstance(spec, str) or not spec:
        raise GraphError(f"{where}: 'function' must be a dotted path like 'pkg.module.func'")
    module_name, sep, attr = spec.partition(":")
    if not sep:
        module_name, _, attr = spec.rpartition(".")
    if not module_name or not attr:
        raise GraphError(
            f"{where}: 'function' must be a dotted path like 'pkg.module.func', got {spec!r}"
        )
    try:
        module = importlib.import_module(module_name)
    except ImportError as e:
        raise GraphError(f"{where}: cannot import module {module_name!r}: {e}") from e
    obj: Any = module
    for part in attr.split("."):
        try:
            obj = getattr(obj, part)
        except AttributeError as e:
            raise GraphError(f"{where}: module {module_name!r} has no attribute {attr!r}") from e
    if not callable(obj):
        raise GraphError(f"{where}: {spec!r} is not callable")
    return obj
