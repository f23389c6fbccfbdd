"""The release wheel installs into a brand-new virtual environment and works there."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import venv
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.timeout(900)
def test_release_wheel_installs_and_imports_in_a_fresh_venv(tmp_path: Path) -> None:
    maturin = shutil.which("maturin", path=str(Path(sys.executable).parent)) or shutil.which(
        "maturin"
    )
    assert maturin, "maturin is a dev dependency and must be installed"
    out = tmp_path / "wheels"
    subprocess.run(
        [maturin, "build", "--release", "-q", "-o", str(out)],
        cwd=ROOT,
        check=True,
        env={**os.environ, "VIRTUAL_ENV": str(Path(sys.executable).parent.parent)},
    )
    wheels = list(out.glob("tm_orchestrate-*.whl"))
    assert len(wheels) == 1, wheels
    assert "abi3" in wheels[0].name, "one wheel must serve every CPython from 3.10"
    env_dir = tmp_path / "venv"
    venv.EnvBuilder(with_pip=True).create(env_dir)
    py = env_dir / "bin" / "python"
    subprocess.run(
        [py, "-m", "pip", "install", "-q", "--no-index", "--no-deps", str(wheels[0])], check=True
    )
    # Run from an empty directory so the source tree cannot shadow the installed package.
    script = (
        "import threading, tm, tm.cron, datetime\n"
        "assert 'site-packages' in tm.__file__, tm.__file__\n"
        "assert threading.active_count() == 1\n"
        "e = tm.cron.Expression('1-2,*/15 0 1 3 2')\n"
        "print(e.next(datetime.datetime(2024, 1, 31, 20)))\n"
        "g = tm.Graph('w')\n"
        "@tm.task\n"
        "def a(): return 20\n"
        "@tm.task\n"
        "def b(a): return a + 1\n"
        "g.add_edges([a], [b])\n"
        "print(g())\n"
    )
    work = tmp_path / "empty"
    work.mkdir()
    res = subprocess.run([py, "-c", script], cwd=work, capture_output=True, text=True, check=False)
    assert res.returncode == 0, res.stderr
    assert res.stdout.split() == ["2024-03-01", "00:00:00", "21"]
    tm_cli = env_dir / "bin" / "tm"
    res = subprocess.run(
        [tm_cli, "cron", "0 0 * * *", "-n", "1", "--from", "2024-01-01T12:00"],
        cwd=work,
        capture_output=True,
        text=True,
        check=False,
    )
    assert res.returncode == 0, res.stderr
    assert res.stdout.strip() == "2024-01-02T00:00:00"
