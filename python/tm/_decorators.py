"""The ``@task`` decorator and the options it records."""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from datetime import timedelta
from typing import Any, TypeVar, overload

__all__ = ["TaskFunction", "TaskOptions", "as_task", "task"]

F = TypeVar("F", bound=Callable[..., Any])


def _seconds(value: float | timedelta | None, what: str) -> float | None:
    if value is None:
        return None
    if isinstance(value, timedelta):
        value = value.total_seconds()
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"{what} must be seconds (a number) or a timedelta, got {value!r}")
    if value < 0:
        raise ValueError(f"{what} must not be negative, got {value!r}")
    return float(value)


@dataclass(frozen=True)
class TaskOptions:
    """How a task is scheduled and retried. Durations are seconds.

    Retry and timeout options left as None take the executor's defaults.
    """

    name: str | None = None
    tag: str | None = None
    priority: int = 0
    retries: int | None = None
    retry_delay: float | None = None
    backoff: float | None = None
    max_delay: float | None = None
    jitter: float | None = None
    timeout: float | None = None
    retry_on: tuple[type[BaseException], ...] = (Exception,)
    give_up_on: tuple[type[BaseException], ...] = ()
    revert: Callable[[Any], Any] | None = None
    persist: bool | None = None
    cache: bool = False
    resources: tuple[tuple[str, float], ...] = ()
    extra: dict[str, Any] = field(default_factory=dict)

    def validate(self) -> TaskOptions:
        if self.retries is not None and (
            isinstance(self.retries, bool) or not isinstance(self.retries, int) or self.retries < 0
        ):
            raise ValueError(f"retries must be a non-negative int, got {self.retries!r}")
        if isinstance(self.priority, bool) or not isinstance(self.priority, int):
            raise TypeError(f"priority must be an int, got {self.priority!r}")
        if self.jitter is not None and not 0.0 <= float(self.jitter) <= 1.0:
            raise ValueError(f"jitter must be between 0 and 1, got {self.jitter!r}")
        if self.backoff is not None and float(self.backoff) < 0:
            raise ValueError(f"backoff must not be negative, got {self.backoff!r}")
        if self.timeout is not None and self.timeout <= 0:
            raise ValueError(f"timeout must be positive, got {self.timeout!r}")
        if self.revert is not None and not callable(self.revert):
            raise TypeError(f"revert must be callable, got {self.revert!r}")
        for key, amount in self.resources:
            if not isinstance(key, str) or isinstance(amount, bool):
                raise TypeError(f"resources must map names to amounts, got {self.resources!r}")
            if not isinstance(amount, (int, float)) or amount < 0:
                raise ValueError(f"resource {key!r} must be a non-negative number, got {amount!r}")
        for what, excs in (("retry_on", self.retry_on), ("give_up_on", self.give_up_on)):
            if not all(isinstance(e, type) and issubclass(e, BaseException) for e in excs):
                raise TypeError(f"{what} must be exception classes, got {excs!r}")
        return self


_DEFAULT = TaskOptions()


_COPIED = ("__module__", "__name__", "__qualname__", "__doc__")


class TaskFunction:
    """A callable marked as a task. Calling it calls the wrapped function unchanged."""

    __slots__ = ("__dict__", "__tm_options__", "__wrapped__")

    def __init__(self, fn: Callable[..., Any], options: TaskOptions) -> None:
        if not callable(fn):
            raise TypeError(f"a task must be callable, got {fn!r}")
        self.__wrapped__ = fn
        self.__tm_options__ = options
        # What functools.update_wrapper copies, at a third of its cost (graphs of generated tasks
        # make one per task); `__annotations__` is read through on demand below.
        d = self.__dict__
        for attr in _COPIED:
            value = getattr(fn, attr, _COPIED)
            if value is not _COPIED:
                d[attr] = value

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return self.__wrapped__(*args, **kwargs)

    @property
    def __annotations__(self) -> dict[str, Any]:  # type: ignore[override]
        return getattr(self.__wrapped__, "__annotations__", {})

    @property
    def task_name(self) -> str:
        return self.__tm_options__.name or _callable_name(self.__wrapped__)

    def __repr__(self) -> str:
        return f"<tm task {self.task_name!r}>"


def _callable_name(fn: Any) -> str:
    name = getattr(fn, "__name__", None)
    if isinstance(name, str) and name != "<lambda>":
        return name
    if isinstance(fn, functools.partial):
        return _callable_name(fn.func)
    return type(fn).__name__


def _options(**kwargs: Any) -> TaskOptions:
    if not kwargs:
        return _DEFAULT
    if len(kwargs) == 1 and isinstance(kwargs.get("name"), str):
        return TaskOptions(name=kwargs["name"])  # the defaults need no validation
    known = {f for f in TaskOptions.__dataclass_fields__ if f != "extra"}
    unknown = set(kwargs) - known
    if unknown:
        raise TypeError(f"unknown task option(s): {', '.join(sorted(unknown))}")
    for key in ("retry_delay", "max_delay", "timeout"):
        if key in kwargs:
            kwargs[key] = _seconds(kwargs[key], key)
    for key in ("retry_on", "give_up_on"):
        if key in kwargs and isinstance(kwargs[key], type):
            kwargs[key] = (kwargs[key],)
        if key in kwargs:
            kwargs[key] = tuple(kwargs[key])
    if "resources" in kwargs:
        res = kwargs["resources"]
        if res is None:
            res = {}
        if not isinstance(res, dict):
            raise TypeError(f"resources must be a dict of name -> amount, got {res!r}")
        kwargs["resources"] = tuple(sorted(res.items()))
    return TaskOptions(**kwargs).validate()


@overload
def task(fn: F, /) -> TaskFunction: ...
@overload
def task(fn: None = None, /, **options: Any) -> Callable[[F], TaskFunction]: ...
@overload
def task(fn: F, /, **options: Any) -> TaskFunction: ...


def task(fn: Callable[..., Any] | None = None, /, **options: Any) -> Any:
    """Marks a callable as a graph task, bare (``@task``), with options (``@task(retries=3)``), or
    as a call (``task(obj, name="load")``).

    Args:
        fn: the function or callable object.
        **options: ``name``, ``tag`` (worker pool), ``priority`` (higher first), ``retries``,
            ``retry_delay`` (seconds or timedelta), ``backoff`` (attempt i waits
            ``min(max_delay, retry_delay * (1 + backoff) ** i)``), ``max_delay``, ``jitter`` (0..1),
            ``retry_on`` and ``give_up_on`` (exception classes), ``timeout`` (seconds or
            timedelta per attempt), ``revert`` (called with the task's result when a run started
            with ``rollback=True`` fails), ``persist`` (keep the pickled result in the executor's
            store so a resumed run can feed it to the children), ``cache`` (cache the task's
            results by arguments like ``@store.task``, in the executor's store or the default
            one; its ``context`` parameter is left out of the key), ``resources`` (what one
            attempt asks of a Dask or Ray pool's cluster, e.g. ``{"num_gpus": 1}``; other pools
            ignore it).

    Returns:
        A :class:`TaskFunction` that calls ``fn`` unchanged, or a decorator making one.
    """
    opts = _options(**options)
    if fn is None:
        return lambda f: TaskFunction(f, opts)
    return TaskFunction(fn, opts)


def as_task(obj: Any) -> TaskFunction:
    """Returns ``obj`` as a task: tasks unchanged, plain callables with default options."""
    if isinstance(obj, TaskFunction):
        return obj
    if callable(obj):
        return TaskFunction(obj, TaskOptions())
    raise TypeError(f"a task must be callable, got {obj!r} ({type(obj).__name__})")


def with_options(t: TaskFunction, **changes: Any) -> TaskFunction:
    """A copy of task ``t`` with some options changed."""
    return TaskFunction(t.__wrapped__, replace(t.__tm_options__, **changes))
