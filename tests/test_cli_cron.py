"""``tm cron``: the command line, run as real subprocesses and in-process through ``main``."""

from __future__ import annotations

import subprocess
import sys
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest

from tm.cli import COMMANDS, main

CONSOLE_SCRIPT = Path(sys.executable).parent / "tm"


def run_module(*args: str) -> subprocess.CompletedProcess[str]:
    """``python -m tm ARGS`` in a subprocess."""
    return subprocess.run(
        [sys.executable, "-m", "tm", *args], capture_output=True, text=True, timeout=120
    )


def test_prints_n_iso_lines() -> None:
    r = run_module("cron", "*/15 9-17 * * mon-fri", "-n", "3", "--from", "2024-01-01T00:00")
    assert r.returncode == 0, r.stderr
    assert r.stdout.splitlines() == [
        "2024-01-01T09:00:00",
        "2024-01-01T09:15:00",
        "2024-01-01T09:30:00",
    ]
    assert r.stderr == ""


def test_seed_expression() -> None:
    r = run_module("cron", "1-2,*/15 0 1 3 2", "-n", "3", "--from", "2024-01-31T20:00")
    assert r.returncode == 0, r.stderr
    assert r.stdout.splitlines() == [
        "2024-03-01T00:00:00",
        "2024-03-01T00:01:00",
        "2024-03-01T00:02:00",
    ]


def test_default_count_is_five() -> None:
    r = run_module("cron", "@daily", "--from", "2024-02-27T12:00")
    assert r.returncode == 0, r.stderr
    assert r.stdout.splitlines() == [
        "2024-02-28T00:00:00",
        "2024-02-29T00:00:00",
        "2024-03-01T00:00:00",
        "2024-03-02T00:00:00",
        "2024-03-03T00:00:00",
    ]


def test_tz_prints_aware_times_across_a_gap() -> None:
    # 01:30 does not exist in London on 2024-03-31: the fire is at 02:00 BST.
    r = run_module(
        "cron", "30 1 * * *", "-n", "2", "--from", "2024-03-31T00:00", "--tz", "Europe/London"
    )
    assert r.returncode == 0, r.stderr
    assert r.stdout.splitlines() == ["2024-03-31T02:00:00+01:00", "2024-04-01T01:30:00+01:00"]


def test_tz_converts_an_aware_start() -> None:
    # 2024-01-01T12:00Z is 07:00 in New York; the next 09:00 there is 14:00Z.
    r = run_module(
        "cron",
        "0 9 * * *",
        "-n",
        "1",
        "--from",
        "2024-01-01T12:00+00:00",
        "--tz",
        "America/New_York",
    )
    assert r.returncode == 0, r.stderr
    assert r.stdout.splitlines() == ["2024-01-01T09:00:00-05:00"]


def test_offset_in_from_without_tz() -> None:
    r = run_module("cron", "0 9 * * *", "-n", "1", "--from", "2024-01-01T10:00+05:30")
    assert r.returncode == 0, r.stderr
    assert r.stdout.splitlines() == ["2024-01-02T09:00:00+05:30"]


def test_default_start_is_now() -> None:
    before = datetime.now(timezone.utc)
    r = run_module("cron", "* * * * * *", "-n", "3", "--tz", "UTC")
    assert r.returncode == 0, r.stderr
    fires = [datetime.fromisoformat(line) for line in r.stdout.splitlines()]
    assert len(fires) == 3
    assert all(f.utcoffset() == timedelta(0) for f in fires)
    assert fires[0] > before.replace(microsecond=0)
    assert fires[1] - fires[0] == timedelta(seconds=1) == fires[2] - fires[1]


def test_bad_expression_exits_2_with_message_on_stderr() -> None:
    r = run_module("cron", "61 * * * *", "--from", "2024-01-01T00:00")
    assert r.returncode == 2
    assert r.stdout == ""
    assert r.stderr.startswith("tm: error: ")
    assert "minute" in r.stderr
    assert "61" in r.stderr
    assert "Traceback" not in r.stderr


def test_unknown_time_zone() -> None:
    r = run_module("cron", "* * * * *", "--tz", "Mars/Olympus_Mons")
    assert r.returncode == 2
    assert r.stdout == ""
    assert r.stderr.startswith("tm: error: ")
    assert "Mars/Olympus_Mons" in r.stderr


def test_bad_from_is_a_usage_error() -> None:
    r = run_module("cron", "* * * * *", "--from", "yesterday")
    assert r.returncode == 2
    assert "yesterday" in r.stderr
    assert r.stdout == ""


def test_schedule_running_out_before_year_10000() -> None:
    r = run_module("cron", "0 0 1 1 *", "-n", "3", "--from", "9998-06-01T00:00")
    assert r.returncode == 1
    assert r.stdout.splitlines() == ["9999-01-01T00:00:00"]
    assert r.stderr.startswith("tm: error: ")


@pytest.mark.skipif(not CONSOLE_SCRIPT.exists(), reason="the tm console script is not installed")
def test_console_script() -> None:
    r = subprocess.run(
        [str(CONSOLE_SCRIPT), "cron", "0 0 29 2 *", "-n", "2", "--from", "2096-03-01T00:00"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert r.returncode == 0, r.stderr
    assert r.stdout.splitlines() == ["2104-02-29T00:00:00", "2108-02-29T00:00:00"]
    bad = subprocess.run(
        [str(CONSOLE_SCRIPT), "cron", "* * * *"], capture_output=True, text=True, timeout=120
    )
    assert bad.returncode == 2
    assert bad.stderr.startswith("tm: error: ")


def test_help_lists_cron() -> None:
    r = run_module("--help")
    assert r.returncode == 0
    assert "cron" in r.stdout


# In-process: main() returns the status instead of exiting.


def test_main_returns_zero_and_prints(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["cron", "0 12 * * *", "-n", "2", "--from", "2024-01-01"]) == 0
    assert capsys.readouterr().out.splitlines() == ["2024-01-01T12:00:00", "2024-01-02T12:00:00"]


def test_main_n_zero_prints_nothing(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["cron", "* * * * *", "-n", "0", "--from", "2024-01-01"]) == 0
    assert capsys.readouterr().out == ""


def test_main_negative_n_is_a_usage_error(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["cron", "* * * * *", "-n", "-1"]) == 2
    assert "-n" in capsys.readouterr().err


def test_main_without_subcommand_is_a_usage_error(capsys: pytest.CaptureFixture[str]) -> None:
    assert main([]) == 2
    assert "usage:" in capsys.readouterr().err


def test_main_bad_expression(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["cron", "0 0 30 2 *"]) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    assert captured.err.startswith("tm: error: ")


def test_commands_registry_drives_the_parser() -> None:
    assert "cron" in COMMANDS
    assert callable(COMMANDS["cron"].run)
    assert COMMANDS["cron"].help
