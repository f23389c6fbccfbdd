"""``tm.__version__`` and ``tm --version`` report the installed distribution's version."""

from __future__ import annotations

import re
import subprocess
import sys
from importlib.metadata import version
from pathlib import Path

import tm

ROOT = Path(__file__).resolve().parent.parent


def cargo_version() -> str:
    # maturin takes the wheel's version from Cargo.toml (pyproject's version is dynamic).
    m = re.search(r'^version = "([^"]+)"', (ROOT / "Cargo.toml").read_text(), re.M)
    assert m is not None
    return m.group(1)


def test_dunder_version_is_the_distributions() -> None:
    assert tm.__version__ == version("tm-orchestrate") == cargo_version()
    assert re.fullmatch(r"\d+\.\d+\.\d+\S*", tm.__version__)


def test_cli_version_prints_it_and_exits_0() -> None:
    r = subprocess.run(
        [sys.executable, "-m", "tm", "--version"], capture_output=True, text=True, timeout=60
    )
    assert r.returncode == 0, r.stderr
    assert r.stdout == f"tm {cargo_version()}\n"


def test_main_returns_0_for_version(capsys) -> None:
    from tm.cli import main

    assert main(["--version"]) == 0
    assert capsys.readouterr().out == f"tm {tm.__version__}\n"
