"""A cached function's version covers the user's own helpers it calls, transitively.

Editing a helper function, a helper of a helper, or a module constant the function reads makes
the next call run again (and ``tm cache why`` names what changed); functions of installed
packages and the standard library are not part of the version. joblib.Memory looks only at the
cached function's own code: here tm differs from it deliberately (asserted below, so a change in
either is seen).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

joblib = pytest.importorskip("joblib")

JOB = """
import json
import sys

import joblib
import tm

import consts
from helpers import helper

store = tm.Store("sqlite:///tm.db", result_dir="results")
memory = joblib.Memory("joblib-cache", verbose=0)


def job(x):
    return json.loads(json.dumps(helper(x) * consts.SCALE))


cached = store.task(job)
joblib_cached = memory.cache(job)


def main():
    print(json.dumps({"tm": cached(1), "joblib": joblib_cached(1), "version": cached.version}))
    store.close()
"""


def write(where: Path, name: str, text: str) -> None:
    (where / f"{name}.py").write_text(textwrap.dedent(text))
    for cache in where.glob("__pycache__/*"):
        cache.unlink()


def run_job(where: Path) -> dict[str, object]:
    env = {k: v for k, v in os.environ.items() if k != "TM_SECRET_KEY"}
    done = subprocess.run(
        [sys.executable, "-c", "import job; job.main()"],
        cwd=where,
        capture_output=True,
        text=True,
        timeout=120,
        env=env,
    )
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


def why(where: Path) -> str:
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "tm",
            "cache",
            "why",
            "job:cached",
            '{"x": 1}',
            "--db",
            "sqlite:///tm.db",
        ],
        cwd=where,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    return done.stdout


def test_editing_a_helper_a_nested_helper_or_a_constant_reruns(tmp_path: Path) -> None:
    write(tmp_path, "job", JOB)
    write(tmp_path, "consts", "SCALE = 10\n")
    write(
        tmp_path,
        "helpers",
        """
        from inner import inner

        def helper(x):
            return inner(x) + 1
        """,
    )
    write(tmp_path, "inner", "def inner(x):\n    return x\n")
    first = run_job(tmp_path)
    assert first["tm"] == first["joblib"] == 20
    assert "json" not in str(first["version"])  # the standard library is not a helper
    assert run_job(tmp_path)["tm"] == 20
    assert why(tmp_path).startswith("hit")

    write(
        tmp_path, "helpers", "from inner import inner\n\ndef helper(x):\n    return inner(x) + 2\n"
    )
    second = run_job(tmp_path)
    assert second["tm"] == 30
    assert second["joblib"] == 20  # joblib serves the stale result: it does not track helpers
    assert second["version"] != first["version"]

    write(tmp_path, "inner", "def inner(x):\n    return 2 * x\n")
    out = why(tmp_path)
    assert out.startswith("miss"), out
    assert "helper inner.inner changed" in out, out
    assert "helpers.helper" not in out, out  # only what changed is named
    assert run_job(tmp_path)["tm"] == 40

    write(tmp_path, "consts", "SCALE = 100\n")
    out = why(tmp_path)
    assert "helper consts.SCALE changed" in out, out
    assert run_job(tmp_path)["tm"] == 400
    assert why(tmp_path).startswith("hit")


def test_version_ignores_installed_packages_and_mutable_non_constants() -> None:
    import tm._keys

    registry: list[int] = []
    LIMITS = {"a": 1}  # an upper-case name: a constant by convention

    def uses_installed(x: int) -> str:
        return json.dumps(x) + str(pytest.approx(x)) + str(len(registry)) + str(LIMITS)

    before = tm._keys.source_version(uses_installed)
    registry.append(1)  # a closure's data is not a helper: its changes do not invalidate
    assert tm._keys.source_version(uses_installed) == before
    assert "json" not in before and "pytest" not in before
