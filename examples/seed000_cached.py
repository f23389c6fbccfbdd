"""Seed 000: cached, reproducible function calls.

Run it twice in the same directory: the first run computes and stores the results (a database in
``.tm/`` and files in ``results/``), the second loads them without running the function.
"""

from __future__ import annotations

import random
from pathlib import Path

import tm

store = tm.Store("sqlite:///.tm/seed000.db", result_dir="results")
computed: list[int] = []


@store.task(seed="random_seed", version="1")
def simulate(n: int, drift: float = 0.1, random_seed: int = 0) -> dict[str, float]:
    """A random walk: the same arguments and seed always give the same result."""
    computed.append(n)
    rng = random.Random(random_seed)
    position = peak = 0.0
    for _ in range(n):
        position += drift + rng.gauss(0.0, 1.0)
        peak = max(peak, position)
    return {"last": round(position, 6), "peak": round(peak, 6)}


first = simulate(1000, random_seed=7)
again = simulate(n=1000, drift=0.1, random_seed=7)  # the same call: keywords and the default
print(f"computed: {len(computed)} call(s)")
print(f"same result: {first == again}")
why = simulate.why(1000, drift=0.2, random_seed=7)
print(f"drift=0.2 would miss because: {'; '.join(why['differences'])}")
entry = store.cache_entries("simulate")[0]
path = Path(entry["result_path"]).relative_to(Path.cwd())
print(f"stored in: {'/'.join(path.parts[:3])}/<UTC time>_{entry['seed']}_<key>.{entry['format']}")
store.close()
