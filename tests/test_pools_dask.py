"""tm.DaskPool against a real distributed.LocalCluster of worker processes started by the tests."""

from __future__ import annotations

import os
import signal
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import _clusters
import cloudpickle
import pytest
from _clusters import alive, hang_first_time, poll, read_pid, spin_until

import tm
from tm import Executor, Graph, task

# Workers cannot import the test modules: their functions travel by value, like closures.
cloudpickle.register_pickle_by_value(_clusters)
cloudpickle.register_pickle_by_value(sys.modules[__name__])


@pytest.fixture
def files(tmp_path: Path) -> Iterator[dict[str, Path]]:
    """Paths for talking to cluster workers; ``stop`` is created at teardown so none spins on."""
    paths = {k: tmp_path / k for k in ("pid", "marker", "stop")}
    yield paths
    paths["stop"].write_text("stop")


@pytest.fixture
def ex(dask_client: Any, tmp_path: Path) -> Iterator[Executor]:
    with Executor(
        pools={"dask": tm.DaskPool(dask_client)}, store=f"sqlite:///{tmp_path / 'runs.db'}"
    ) as ex:
        yield ex


def worker_pids(client: Any) -> set[int]:
    return set(client.run(os.getpid).values())


def test_tagged_tasks_run_on_dask_workers_with_closures_context_and_logs(
    ex: Executor, dask_client: Any
) -> None:
    offset = 1000  # captured by the closure below, which the workers receive by value

    def load() -> list[int]:
        return [1, 2, 3]

    @task(tag="dask")
    def heavy(load: list[int], context: Any) -> tuple[int, int, str]:
        context.logger.info("summing %d items on the cluster", len(load))
        return os.getpid(), sum(load) + offset, context.task

    def report(heavy: tuple[int, int, str]) -> int:
        return heavy[1]

    g = Graph("dask-basic")
    g.add_edges(load, heavy)
    g.add_edges(heavy, report)
    run = ex.run(g)
    assert run.state == "completed", run.error
    pid, total, name = run.result("heavy")
    assert pid != os.getpid() and pid in worker_pids(dask_client)
    assert (total, name) == (1006, "heavy")
    assert run.result() == 1006
    assert ex.store is not None
    logs = ex.store.core.logs(run.run_id, "heavy")  # type: ignore[attr-defined]
    assert [(r["level"], r["message"]) for r in logs] == [
        ("INFO", "summing 3 items on the cluster")
    ]
    assert ex.store.run(run.run_id)["state"] == "completed"  # type: ignore[index]


def test_task_exception_comes_back_as_itself_and_is_retried(ex: Executor, tmp_path: Path) -> None:
    marker = str(tmp_path / "failed-once")

    @task(tag="dask", retries=1)
    def flaky() -> str:
        if not os.path.exists(marker):
            Path(marker).write_text("1")
            raise KeyError("first attempt")
        return "second"

    g = Graph("dask-flaky")
    g.add(flaky)
    run = ex.run(g)
    assert run.state == "completed", run.error
    first, second = run.task("flaky").attempts
    assert isinstance(first.error, KeyError) and second.error is None
    assert run.result() == "second"


def test_killed_worker_fails_the_attempt_with_worker_crashed_and_the_retry_succeeds(
    ex: Executor, dask_client: Any, files: dict[str, Path]
) -> None:
    g = Graph("dask-killed")
    g.add(task(hang_first_time, name="victim", tag="dask", retries=1))
    run = ex.submit(g, args=(str(files["marker"]), str(files["pid"]), str(files["stop"])))
    pid = read_pid(files["pid"])
    assert pid != os.getpid()
    os.kill(pid, signal.SIGKILL)
    assert run.wait(_clusters.WAIT)
    assert run.state == "completed", run.error
    first, second = run.task("victim").attempts
    assert isinstance(first.error, tm.WorkerCrashed)
    assert second.error is None
    assert run.result() not in (pid, os.getpid())


def test_timeout_cancels_the_dask_future(
    ex: Executor, dask_client: Any, files: dict[str, Path]
) -> None:
    def after(spin: int) -> str:
        return "never"

    g = Graph("dask-timeout")
    g.add_edges(task(spin_until, name="spin", tag="dask", timeout=1.0), after)
    run = ex.run(g, args=(str(files["stop"]),))
    assert run.states() == {"spin": "failed", "after": "skipped"}
    assert isinstance(run.task("spin").error, tm.TaskTimeout)

    def scheduled(dask_scheduler: Any) -> list[str]:
        live = ("released", "waiting", "no-worker", "queued", "processing")
        return [str(k) for k, ts in dask_scheduler.tasks.items() if ts.state in live]

    # The future was cancelled: the scheduler forgets the task (the worker thread runs the
    # function to its end, which Dask cannot interrupt; the `stop` file ends it at teardown).
    poll(lambda: not dask_client.run_on_scheduler(scheduled), "the scheduler to drop the task")


def test_pool_without_address_starts_a_local_cluster_and_stops_it_on_shutdown() -> None:
    pool = tm.DaskPool(n_workers=1)
    assert pool.client is None  # nothing starts before the first task

    @task(tag="dask")
    def where() -> int:
        return os.getpid()

    g = Graph("dask-own")
    g.add(where)
    with Executor(pools={"dask": pool}) as ex:
        pid = ex.run(g).result()
        assert pid != os.getpid() and alive(pid)
        client = pool.client
        assert client is not None and client.status == "running"
    assert client.status == "closed"
    poll(lambda: not alive(pid), f"worker process {pid} to end")


def test_bad_pool_arguments_are_clear_errors(dask_client: Any) -> None:
    with pytest.raises(ValueError, match="n_workers"):
        tm.DaskPool(n_workers=0)
    with pytest.raises(TypeError, match="address"):
        tm.DaskPool(42)
    with pytest.raises(ValueError, match="local cluster"):
        tm.DaskPool("tcp://127.0.0.1:1", memory_limit="1GB")
    with pytest.raises(TypeError, match="resources"):
        task(lambda: 1, resources=["GPU"])


def test_resume_after_sigkill_of_the_driver(
    dask_client: Any, tmp_path: Path, files: dict[str, Path]
) -> None:
    out, effects = _clusters.resume_after_driver_kill(
        tmp_path, files, "dask", dask_client.scheduler.address
    )
    assert out.split() == ["completed", "42"]
    # `first` ran once (its persisted result fed `heavy`); `heavy` ran again after the kill.
    assert effects == ["first", "heavy", "heavy", "last"]
