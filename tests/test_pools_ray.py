"""tm.RayPool against a real local Ray instance with 2 CPUs started by the tests, and a graph that
mixes thread, Dask and Ray tags."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import _clusters
import pytest
from _clusters import alive, hang_first_time, poll, read_pid, spin_until
from ray import cloudpickle

import tm
from tm import Executor, Graph, task

# Ray workers cannot import the test modules: their functions travel by value, like closures.
cloudpickle.register_pickle_by_value(_clusters)
cloudpickle.register_pickle_by_value(sys.modules[__name__])


@pytest.fixture
def files(tmp_path: Path) -> Iterator[dict[str, Path]]:
    """Paths for talking to cluster workers; ``stop`` is created at teardown so none spins on."""
    paths = {k: tmp_path / k for k in ("pid", "marker", "stop")}
    yield paths
    paths["stop"].write_text("stop")


@pytest.fixture
def ex(ray_session: str, tmp_path: Path) -> Iterator[Executor]:
    # address=None in a process that already runs Ray: the pool uses that instance as it is.
    with Executor(pools={"ray": tm.RayPool()}, store=f"sqlite:///{tmp_path / 'runs.db'}") as ex:
        yield ex


def test_graph_mixing_thread_dask_and_ray_tags(
    ray_session: str, dask_client: Any, tmp_path: Path
) -> None:
    import cloudpickle as dask_cloudpickle

    dask_cloudpickle.register_pickle_by_value(sys.modules[__name__])
    scale = 10  # captured by the closures below

    def source() -> tuple[int, int]:
        return os.getpid(), 4

    @task(tag="dask")
    def on_dask(source: tuple[int, int]) -> tuple[int, int]:
        return os.getpid(), source[1] * scale

    @task(tag="ray", resources={"num_cpus": 1})
    def on_ray(source: tuple[int, int], context: Any) -> tuple[int, int]:
        context.logger.warning("on ray, attempt %d", context.attempt)
        return os.getpid(), source[1] + scale

    def join(on_dask: tuple[int, int], on_ray: tuple[int, int]) -> int:
        return on_dask[1] + on_ray[1]

    g = Graph("mixed")
    g.add_edges(source, on_dask)
    g.add_edges(source, on_ray)
    g.add_edges(on_dask, join)
    g.add_edges(on_ray, join)
    with Executor(
        pools={"dask": tm.DaskPool(dask_client), "ray": tm.RayPool()},
        store=f"sqlite:///{tmp_path / 'runs.db'}",
    ) as ex:
        run = ex.run(g)
        assert run.state == "completed", run.error
        assert run.result() == 40 + 14
        here = os.getpid()
        dask_pid, ray_pid = run.result("on_dask")[0], run.result("on_ray")[0]
        assert run.result("source")[0] == here
        assert len({here, dask_pid, ray_pid}) == 3
        assert dask_pid in set(dask_client.run(os.getpid).values())
        assert ex.store is not None
        logs = ex.store.core.logs(run.run_id, "on_ray")  # type: ignore[attr-defined]
        assert [(r["level"], r["message"]) for r in logs] == [("WARNING", "on ray, attempt 0")]


def test_task_resources_reach_ray(ex: Executor) -> None:
    import ray

    @task(tag="ray", resources={"special": 1, "num_cpus": 0.5})
    def assigned() -> dict[str, float]:
        return dict(ray.get_runtime_context().get_assigned_resources())

    g = Graph("ray-resources")
    g.add(assigned)
    got = ex.run(g).result()
    assert got["special"] == 1.0 and got["CPU"] == 0.5


def test_killed_ray_worker_fails_the_attempt_with_worker_crashed_and_the_retry_succeeds(
    ex: Executor, files: dict[str, Path]
) -> None:
    g = Graph("ray-killed")
    g.add(task(hang_first_time, name="victim", tag="ray", retries=1))
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


def test_timeout_force_cancels_the_ray_task(ex: Executor, files: dict[str, Path]) -> None:
    def publish_and_spin(pid_file: str, stop_file: str) -> int:
        _clusters.publish(pid_file, str(os.getpid()))
        return spin_until(stop_file)

    def after(spin: int) -> str:
        return "never"

    g = Graph("ray-timeout")
    g.add_edges(task(publish_and_spin, name="spin", tag="ray", timeout=3.0), after)
    run = ex.run(g, args=(str(files["pid"]), str(files["stop"])))
    assert run.states() == {"spin": "failed", "after": "skipped"}
    assert isinstance(run.task("spin").error, tm.TaskTimeout)
    pid = read_pid(files["pid"])
    # ray.cancel(force=True) kills the worker process that ran the task.
    poll(lambda: not alive(pid), f"Ray worker {pid} to be killed")


def test_bad_ray_pool_arguments_are_clear_errors() -> None:
    with pytest.raises(ValueError, match="local Ray instance"):
        tm.RayPool("auto", num_cpus=4)
    with pytest.raises(TypeError, match="address"):
        tm.RayPool(6379)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="concurrency"):
        tm.RayPool(concurrency=0)


OWNED = textwrap.dedent(
    """
    import os
    import ray
    import tm

    @tm.task(tag="ray")
    def where():
        return os.getpid()

    g = tm.Graph("ray-own")
    g.add(where)
    with tm.Executor(pools={"ray": tm.RayPool(num_cpus=1)}) as ex:
        pid = ex.run(g).result()
        print(pid != os.getpid(), ray.is_initialized())
    print(ray.is_initialized())
    """
)


def test_pool_without_address_starts_ray_and_shuts_it_down(tmp_path: Path) -> None:
    script = tmp_path / "owned.py"
    script.write_text(OWNED)
    out = subprocess.run(
        [sys.executable, str(script)], capture_output=True, text=True, timeout=_clusters.WAIT
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["True", "True", "False"]


def test_resume_after_sigkill_of_the_driver(
    ray_session: str, tmp_path: Path, files: dict[str, Path]
) -> None:
    out, effects = _clusters.resume_after_driver_kill(tmp_path, files, "ray", ray_session)
    assert out.split()[-2:] == ["completed", "42"]
    assert effects == ["first", "heavy", "heavy", "last"]
