"""``examples/seed000_cached.py``: computes on the first run, loads from the cache on the second."""

from __future__ import annotations

from pathlib import Path

from test_examples import run_example


def test_seed000_cached_example_computes_once_across_processes(tmp_path: Path) -> None:
    expected_tail = [
        "same result: True",
        "drift=0.2 would miss because: arg drift: 0.2 (stored 0.1)",
        "stored in: results/__main__/simulate/<UTC time>_7_<key>.json",
    ]
    first = run_example("seed000_cached.py", tmp_path).stdout.splitlines()
    assert first == ["computed: 1 call(s)", *expected_tail]
    second = run_example("seed000_cached.py", tmp_path).stdout.splitlines()
    assert second == ["computed: 0 call(s)", *expected_tail]
    assert len(list((tmp_path / "results").rglob("*.json"))) == 1
    assert (tmp_path / ".tm" / "seed000.db").exists()
