"""``async def`` tasks on the executor's event loop thread, and ``tm.ProcessPool`` tags (issue 4).

Process-pool task functions live in ``tests/_pp_tasks.py`` (workers receive them by pickle, by module
and name). Worker processes and the test coordinate through files; a worker is killed with a real
SIGKILL. Nothing waits by sleeping: every wait is a bounded poll for a file, an event or a process.
"""

from __future__ import annotations

import asyncio
import functools
import importlib
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

import tm
from tm import Executor, Graph, task

WAIT = 10.0  # liveness bound: reached only when something is broken
TESTS = str(Path(__file__).resolve().parent)


@pytest.fixture(scope="module")
def pp() -> ModuleType:
    """``_pp_tasks``, importable here and (through ``sys.path``) in worker processes."""
    if TESTS not in sys.path:
        sys.path.insert(0, TESTS)
    return importlib.import_module("_pp_tasks")


def poll(condition: Callable[[], Any], what: str) -> Any:
    """Polls ``condition`` until it returns something truthy (at most WAIT seconds)."""
    end = time.monotonic() + WAIT
    while time.monotonic() < end:
        value = condition()
        if value:
            return value
        time.sleep(0.005)  # polling a condition another process changes, not synchronising threads
    pytest.fail(f"gave up waiting for {what}")


def read_pid(path: Path) -> int:
    return int(poll(lambda: path.exists() and path.read_text(), f"{path.name} to be written"))


def alive(pid: int) -> bool:
    """Whether process ``pid`` exists and is not a zombie."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError):
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


def wait_gone(pid: int) -> None:
    poll(lambda: not alive(pid), f"worker process {pid} to end")


@pytest.fixture
def files(tmp_path: Path) -> Iterator[dict[str, Path]]:
    """Paths for talking to worker processes; ``stop`` is created at teardown so no worker spins on."""
    paths = {k: tmp_path / k for k in ("pid", "marker", "stop")}
    yield paths
    paths["stop"].write_text("stop")


# -- async tasks -----------------------------------------------------------------------------------


def test_async_and_sync_tasks_pass_results_both_ways() -> None:
    threads: dict[str, int] = {}

    def start():
        threads["start"] = threading.get_ident()
        return 2

    async def square(start):
        threads["square"] = threading.get_ident()
        await asyncio.sleep(0)
        return start * start

    def plus_one(square):
        threads["plus_one"] = threading.get_ident()
        return square + 1

    async def describe(plus_one, start):
        threads["describe"] = threading.get_ident()
        await asyncio.sleep(0)
        return {"value": plus_one, "from": start}

    g = Graph("mixed")
    g.add_edges(start, square)
    g.add_edges(square, plus_one)
    g.add_edges([plus_one, start], describe)
    with Executor(workers=4) as ex:
        run = ex.run(g)
    assert run.state == "completed"
    assert run.result() == {"value": 5, "from": 2}
    assert run.result("square") == 4
    me = threading.get_ident()
    assert me not in threads.values()
    # Both coroutines ran on the executor's loop thread, not on the sync tasks' worker threads.
    assert threads["square"] == threads["describe"]
    assert threads["square"] not in (threads["start"], threads["plus_one"])


def test_many_async_tasks_run_at_once_on_one_loop_thread() -> None:
    # Each of 50 coroutines waits until all 50 have arrived: only possible if they run concurrently.
    n = 50
    arrived: list[int] = []
    threads: set[int] = set()
    names: set[str] = set()
    everyone = asyncio.Event()

    async def member(i: int) -> int:
        threads.add(threading.get_ident())
        names.add(threading.current_thread().name)
        arrived.append(i)
        if len(arrived) == n:
            everyone.set()
        await asyncio.wait_for(everyone.wait(), WAIT)
        return i

    g = Graph("crowd")
    for i in range(n):
        g.add(task(functools.partial(member, i), name=f"m{i}", tag="aio"))
    with Executor(workers=2, pools={"aio": n}) as ex:
        run = ex.run(g)
    assert run.state == "completed", run.error
    assert sorted(arrived) == list(range(n))
    assert run.result() == {f"m{i}": i for i in range(n)}
    assert len(threads) == 1
    assert threading.get_ident() not in threads
    assert names == {"tm-async-loop"}


def test_async_task_retries_with_context(ex_async: Executor) -> None:
    seen: list[int] = []

    @task(retries=2, retry_delay=0.0)
    async def flaky(context):
        seen.append(context.attempt)
        await asyncio.sleep(0)
        if context.attempt < 2:
            raise ConnectionError(f"attempt {context.attempt}")
        return "ok"

    g = Graph("async-retry")
    g.add(flaky)
    run = ex_async.run(g)
    assert run.result() == "ok"
    assert seen == [0, 1, 2]
    assert [type(a.error) for a in run.task("flaky").attempts] == [
        ConnectionError,
        ConnectionError,
        type(None),
    ]


@pytest.fixture
def ex_async() -> Iterator[Executor]:
    with Executor(workers=4) as ex:
        yield ex


class Hanger:
    """A coroutine task body that awaits forever and records how it was stopped."""

    def __init__(self) -> None:
        self.started = threading.Event()
        self.finished = threading.Event()
        self.how: list[str] = []

    async def __call__(self) -> str:
        self.started.set()
        try:
            await asyncio.wait_for(asyncio.Event().wait(), 20)
            self.how.append("not cancelled")
            return "not cancelled"
        except asyncio.CancelledError:
            self.how.append("CancelledError")
            raise
        except BaseException as e:
            self.how.append(type(e).__name__)
            raise
        finally:
            self.finished.set()


def test_async_timeout_cancels_the_coroutine(ex_async: Executor) -> None:
    hanger = Hanger()

    async def hangs():
        return await hanger()

    def after(hangs):
        return "never"

    g = Graph("async-timeout")
    g.add_edges(task(hangs, timeout=0.2), after)
    run = ex_async.run(g)
    assert run.states() == {"hangs": "failed", "after": "skipped"}
    assert isinstance(run.task("hangs").error, tm.TaskTimeout)
    assert hanger.finished.wait(WAIT)
    assert hanger.how == ["CancelledError"]


@pytest.mark.parametrize("how", ["run", "task"])
def test_async_cancel_cancels_the_coroutine(how: str, ex_async: Executor) -> None:
    hanger = Hanger()

    async def hangs():
        return await hanger()

    def after(hangs):
        return "never"

    def side():
        return "side"

    g = Graph("async-cancel")
    g.add_edges(hangs, after)
    g.add(side)
    run = ex_async.submit(g)
    assert hanger.started.wait(WAIT)
    run.cancel(None if how == "run" else "hangs")
    assert run.wait(WAIT)
    assert run.state == "cancelled"
    assert run.task("hangs").state == "cancelled"
    assert run.task("after").state == "cancelled"
    assert hanger.finished.wait(WAIT)
    assert hanger.how == ["CancelledError"]
    # The loop thread is still serving other coroutines.
    g2 = Graph("async-after-cancel")

    async def fine():
        await asyncio.sleep(0)
        return "fine"

    g2.add(fine)
    assert ex_async.run(g2).result() == "fine"


# -- process pools ---------------------------------------------------------------------------------


@pytest.fixture
def cpu(pp: ModuleType) -> Iterator[Executor]:
    with Executor(workers=4, pools={"cpu": tm.ProcessPool(2)}) as ex:
        yield ex


def test_tagged_tasks_run_in_other_processes_by_pickle(cpu: Executor, pp: ModuleType) -> None:
    data = [1, 2, 3]

    def source():
        return data

    doubled = task(pp.double_items, name="doubled", tag="cpu")

    def items(source):
        return source

    def check(doubled):
        pid, values = doubled
        return pid, values, values is data

    g = Graph("pickled")
    g.add_edges(source, items)
    g.add_edges(items, doubled)
    g.add_edges(doubled, check)
    g.add(task(pp.count_primes, name="primes", tag="cpu"))
    run = cpu.run(g, kwargs={"n": 100})
    assert run.state == "completed", run.error
    pid, values, same = run.result("check")
    assert pid != os.getpid()
    assert values == [2, 4, 6]
    assert same is False
    assert data == [1, 2, 3]  # the worker changed its own copy only
    assert run.result("primes") == 25


def test_process_task_exception_crosses_back(cpu: Executor, pp: ModuleType) -> None:
    g = Graph("raises")
    g.add(task(pp.raise_value_error, name="raises", tag="cpu"))
    run = cpu.run(g, args=("from the worker",))
    assert run.state == "failed"
    err = run.task("raises").error
    assert type(err) is ValueError
    assert str(err) == "from the worker"


def test_worker_exit_is_worker_crashed_and_retried_on_a_fresh_worker(
    cpu: Executor, pp: ModuleType, files: dict[str, Path]
) -> None:
    g = Graph("exits")
    g.add(task(pp.exit_first_time, name="exits", tag="cpu", retries=1))
    run = cpu.run(g, args=(str(files["marker"]),))
    assert run.state == "completed", run.error
    dead = int(files["marker"].read_text())
    attempts = run.task("exits").attempts
    assert len(attempts) == 2
    err = attempts[0].error
    assert isinstance(err, tm.WorkerCrashed)
    assert isinstance(err, tm.TmError) and isinstance(err, RuntimeError)
    assert str(dead) in str(err) and "3" in str(err)
    assert run.result() not in (dead, os.getpid())


def test_sigkilled_worker_is_retried_on_a_fresh_worker(
    cpu: Executor, pp: ModuleType, files: dict[str, Path]
) -> None:
    g = Graph("killed")
    g.add(task(pp.hang_first_time, name="victim", tag="cpu", retries=1))
    run = cpu.submit(g, args=(str(files["marker"]), str(files["pid"]), str(files["stop"])))
    pid = read_pid(files["pid"])
    assert pid != os.getpid()
    os.kill(pid, signal.SIGKILL)
    assert run.wait(WAIT)
    assert run.state == "completed", run.error
    attempts = run.task("victim").attempts
    assert len(attempts) == 2
    assert isinstance(attempts[0].error, tm.WorkerCrashed)
    assert attempts[1].error is None
    assert run.result() not in (pid, os.getpid())
    wait_gone(pid)


def test_crash_without_retries_fails_only_that_task(
    cpu: Executor, pp: ModuleType, files: dict[str, Path]
) -> None:
    def after(exits):
        return "never"

    def unrelated():
        return "ran"

    g = Graph("crash")
    g.add_edges(task(pp.exit_first_time, name="exits", tag="cpu"), after)
    g.add(unrelated)
    run = cpu.run(g, kwargs={"marker": str(files["marker"])})
    assert run.state == "failed"
    assert run.states() == {"exits": "failed", "after": "skipped", "unrelated": "completed"}
    assert isinstance(run.error, tm.WorkerCrashed)
    # The pool replaces the dead worker.
    g2 = Graph("after-crash")
    g2.add(task(pp.whoami, name="whoami", tag="cpu"))
    pid, _ = cpu.run(g2).result()
    assert pid != os.getpid()


def test_timed_out_process_task_has_its_worker_killed(
    cpu: Executor, pp: ModuleType, files: dict[str, Path]
) -> None:
    # Warm the pool so the timed-out task starts on an existing worker.
    warm = Graph("warm")
    warm.add(task(pp.whoami, name="whoami", tag="cpu"))
    assert cpu.run(warm).state == "completed"

    def after(spin):
        return "never"

    g = Graph("process-timeout")
    g.add_edges(task(pp.spin, name="spin", tag="cpu", timeout=0.5), after)
    run = cpu.run(g, args=(str(files["pid"]), str(files["stop"])))
    assert run.states() == {"spin": "failed", "after": "skipped"}
    assert isinstance(run.task("spin").error, tm.TaskTimeout)
    pid = read_pid(files["pid"])
    assert pid != os.getpid()
    wait_gone(pid)
    # A fresh worker serves the next task.
    again = cpu.run(warm).result()[0]
    assert again != pid


def test_cancelled_process_task_has_its_worker_killed(
    cpu: Executor, pp: ModuleType, files: dict[str, Path]
) -> None:
    g = Graph("process-cancel")
    g.add(task(pp.spin, name="spin", tag="cpu"))
    run = cpu.submit(g, args=(str(files["pid"]), str(files["stop"])))
    pid = read_pid(files["pid"])
    run.cancel()
    assert run.wait(WAIT)
    assert run.state == "cancelled"
    assert run.task("spin").state == "cancelled"
    wait_gone(pid)


def test_killing_workers_reports_no_errors(
    pp: ModuleType, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Ten timeouts of a task running on an already started worker: each kills that worker. Nothing
    # may go wrong on the way (an error in the interrupt hook reaches sys.unraisablehook).
    reported: list[Any] = []
    monkeypatch.setattr(sys, "unraisablehook", reported.append)
    stop = tmp_path / "stop"
    warm = Graph("warm")
    warm.add(task(pp.whoami, name="whoami", tag="cpu"))
    g = Graph("kill-loop")
    g.add(task(pp.spin, name="spin", tag="cpu", timeout=0.2))
    with Executor(workers=2, pools={"cpu": tm.ProcessPool(1)}) as ex:
        try:
            for i in range(10):
                assert ex.run(warm).state == "completed"  # a started, idle worker
                pid_file = tmp_path / f"pid{i}"
                run = ex.run(g, args=(str(pid_file), str(stop)))
                assert isinstance(run.task("spin").error, tm.TaskTimeout)
                wait_gone(read_pid(pid_file))
        finally:
            stop.write_text("stop")
    # The executor has shut down: every interrupt hook has returned.
    assert [f"{u.exc_type.__name__}: {u.exc_value} in {u.object!r}" for u in reported] == []


EARLY_TIMEOUT = """
import os, sys, threading
sys.path.insert(0, {tests!r})
import tm, _pp_tasks as pp

def main():
    pid_file, stop_file = sys.argv[1:3]
    ex = tm.Executor(workers=2, pools={{"cpu": tm.ProcessPool(1)}})
    g = tm.Graph("early-timeout")
    g.add(tm.task(pp.spin, name="spin", tag="cpu", timeout=0.001))
    run = ex.run(g, args=(pid_file, stop_file))
    print("error", type(run.task("spin").error).__name__, flush=True)
    # Liveness bound: if the timed-out task is still spinning in its worker after {wait} s, stop it.
    watchdog = threading.Timer({wait}, lambda: open(stop_file, "w").write("stop"))
    watchdog.start()
    ex.shutdown()
    watchdog.cancel()
    print("shutdown needed the watchdog", os.path.exists(stop_file), flush=True)

if __name__ == "__main__":
    main()
"""


def test_timeout_while_the_worker_process_starts_still_kills_it(
    tmp_path: Path, files: dict[str, Path]
) -> None:
    # In a fresh process the pool's first worker takes a while to start (the forkserver starts
    # too) and the 1 ms timeout fires meanwhile. The task is settled as timed out, so its worker
    # must be killed, not left running the task: Executor.shutdown() then returns without waiting
    # for the task to end by itself.
    script = tmp_path / "early_timeout.py"
    script.write_text(EARLY_TIMEOUT.format(tests=TESTS, wait=WAIT))
    r = subprocess.run(
        [sys.executable, str(script), str(files["pid"]), str(files["stop"])],
        capture_output=True,
        text=True,
        timeout=50,
        cwd=tmp_path,
    )
    assert r.returncode == 0, r.stderr
    assert r.stdout.splitlines() == ["error TaskTimeout", "shutdown needed the watchdog False"], (
        "the timed-out task kept running in its worker process until the test stopped it"
    )


def test_unpicklable_argument_is_a_clear_error(cpu: Executor, pp: ModuleType) -> None:
    g = Graph("bad-arg")
    g.add(task(pp.takes_anything, name="takes", tag="cpu"))
    run = cpu.run(g, args=(threading.Lock(),))
    assert run.state == "failed"
    err = run.task("takes").error
    assert isinstance(err, TypeError)
    assert "cannot be sent to a worker process" in str(err)
    assert "pickle" in str(err)
    assert cpu.run(g, args=(1,)).result() == "int"  # the pool is fine


def test_unpicklable_result_is_a_clear_error(cpu: Executor, pp: ModuleType) -> None:
    g = Graph("bad-result")
    g.add(task(pp.unpicklable_result, name="makes", tag="cpu"))
    run = cpu.run(g)
    assert run.state == "failed"
    err = run.task("makes").error
    assert isinstance(err, TypeError)
    assert "result cannot be sent back" in str(err)
    ok = Graph("after-bad-result")
    ok.add(task(pp.whoami, name="whoami", tag="cpu"))
    assert cpu.run(ok).result()[0] != os.getpid()
