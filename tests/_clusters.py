"""Helpers for the Dask and Ray pool tests: coordination with cluster workers through files."""

from __future__ import annotations

import os
import textwrap
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

LIMIT = 20.0  # how long a "hanging" task hangs at most when nothing stops it
WAIT = 60.0  # how long a test waits for a condition before it fails


def poll(cond: Callable[[], Any], what: str, limit: float = WAIT) -> Any:
    """Returns ``cond()`` once it is truthy; fails the test past ``limit`` seconds."""
    end = time.monotonic() + limit
    while True:
        value = cond()
        if value:
            return value
        if time.monotonic() > end:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.01)


def publish(path: str, text: str) -> None:
    """Writes ``text`` to ``path`` atomically, so a reader polling for it never sees half of it."""
    tmp = f"{path}.{os.getpid()}.tmp"
    Path(tmp).write_text(text)
    os.replace(tmp, path)


def read_pid(path: Path) -> int:
    return int(poll(lambda: path.exists() and path.read_text(), f"{path.name} to be written"))


def alive(pid: int) -> bool:
    """Whether process ``pid`` exists and is not a zombie."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError):
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


def spin_until(stop_file: str) -> int:
    """Burns CPU in pure Python until ``stop_file`` appears (at most LIMIT seconds)."""
    end = time.monotonic() + LIMIT
    n = 0
    while time.monotonic() < end:
        n += 1
        if n % 10_000 == 0 and os.path.exists(stop_file):
            break
    return os.getpid()


def hang_first_time(marker: str, pid_file: str, stop_file: str) -> int:
    """The first time (no ``marker`` yet): publishes its pid and spins until ``stop_file``
    appears, waiting to be killed. Afterwards: returns its pid at once."""
    if os.path.exists(marker):
        return os.getpid()
    publish(marker, "1")
    publish(pid_file, str(os.getpid()))
    return spin_until(stop_file)


#: A driver whose middle task runs on a cluster pool (TM_POOL names it: "dask" or "ray"); the
#: test kills it with SIGKILL while that task runs, then resumes the run in a new driver.
RESUME_DRIVER = textwrap.dedent(
    """
    import os, sys
    import tm

    # Read here, in the driver: the functions carry these globals to the cluster by value.
    EFFECTS = os.environ["TM_TEST_EFFECTS"]
    MARKER = os.environ["TM_TEST_MARKER"]
    STOP = os.environ["TM_TEST_STOP"]
    POOL = os.environ["TM_POOL"]

    def effect(name):
        with open(EFFECTS, "a") as f:
            f.write(name + "\\n")

    def first():
        effect("first")
        return 20

    @tm.task(tag=POOL)
    def heavy(first):
        effect("heavy")
        if not os.path.exists(MARKER):
            open(MARKER, "w").close()
            # The driver is killed while this runs; `stop` lets the orphaned task end.
            while not os.path.exists(STOP):
                pass
        return first + 1

    def last(heavy):
        effect("last")
        return heavy * 2

    graph = tm.Graph(POOL + "-resume")
    graph.add_edges(first, heavy)
    graph.add_edges(heavy, last)

    if __name__ == "__main__":
        address = os.environ["TM_POOL_ADDRESS"]
        pool = tm.DaskPool(address) if POOL == "dask" else tm.RayPool(address)
        ex = tm.Executor(store=os.environ["TM_DB_URL"], persist=True, pools={POOL: pool})
        if sys.argv[1] == "run":
            run = ex.run(graph)
        else:
            run = ex.resume(sys.argv[2], graph)
        print(run.state, run.result() if run.state == "completed" else repr(run.error))
        ex.shutdown()
    """
)


def resume_after_driver_kill(
    tmp_path: Path, files: dict[str, Path], pool: str, address: str
) -> tuple[str, list[str]]:
    """Runs RESUME_DRIVER, kills it with SIGKILL while its pool task runs, checks what the store
    kept, resumes the run in a new driver; returns that driver's output and the tasks' effects."""
    import signal
    import subprocess
    import sys

    import tm

    script = tmp_path / "driver.py"
    script.write_text(RESUME_DRIVER)
    db = tmp_path / "runs.db"
    fx = tmp_path / "effects.txt"
    env = {
        **os.environ,
        "TM_DB_URL": f"sqlite:///{db}",
        "TM_TEST_EFFECTS": str(fx),
        "TM_TEST_MARKER": str(files["marker"]),
        "TM_TEST_STOP": str(files["stop"]),
        "TM_POOL": pool,
        "TM_POOL_ADDRESS": address,
    }
    with (tmp_path / "driver.log").open("w") as log:
        proc = subprocess.Popen(
            [sys.executable, str(script), "run"], env=env, cwd=tmp_path, stderr=log, stdout=log
        )
    poll(lambda: files["marker"].exists() or proc.poll() is not None, "heavy to start")
    assert proc.poll() is None, (tmp_path / "driver.log").read_text()
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    files["stop"].write_text("stop")
    store = tm.Store(f"sqlite:///{db}")
    [row] = store.runs()
    run_id = row["run_id"]
    states = {t["name"]: t["status"] for t in store.run(run_id)["tasks"]}  # type: ignore[index]
    store.close()
    assert states["first"] == "completed" and states["last"] != "completed"
    out = subprocess.run(
        [sys.executable, str(script), "resume", run_id],
        env=env,
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=WAIT,
    )
    assert out.returncode == 0, out.stderr
    return out.stdout, fx.read_text().split()
