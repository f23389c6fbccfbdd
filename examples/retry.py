"""Retry-on-fail with exponential backoff, seed 004 style: a flaky task fails twice, then succeeds.

A failed attempt ``i`` (0-based) waits ``min(max_delay, retry_delay * (1 + backoff) ** i)`` seconds
before the next one (no jitter here). For each failed attempt the program prints the delay the run
recorded (``retry_at - ended_at``) next to the formula's value.

Prints::

    attempt 0 failed: ConnectionError('flaky service: failure 1')
    attempt 0 delay: recorded 0.050000 s, formula 0.050000 s
    attempt 1 failed: ConnectionError('flaky service: failure 2')
    attempt 1 delay: recorded 0.100000 s, formula 0.100000 s
    attempt 2 completed
    result: 42
"""

from tm import Executor, Graph, task

RETRIES = 3
RETRY_DELAY = 0.05  # seconds (a datetime.timedelta works too)
BACKOFF = 1.0  # 1.0 doubles the delay after each failure; 0 keeps it fixed
MAX_DELAY = 1.0

graph = Graph(name="retry example")

##  flaky --> report


@task(retries=RETRIES, retry_delay=RETRY_DELAY, backoff=BACKOFF, max_delay=MAX_DELAY, jitter=0)
def flaky(context):
    # Like a service that needs a moment to come up: the first two calls fail.
    if context.attempt < 2:
        raise ConnectionError(f"flaky service: failure {context.attempt + 1}")
    return {"value": 42}


# Read the parent's output by naming it
@task()
def report(flaky):
    return flaky["value"]


graph.add_edges([flaky], [report])


def formula(i: int) -> float:
    """The documented delay after failed attempt ``i``."""
    return min(MAX_DELAY, RETRY_DELAY * (1 + BACKOFF) ** i)


if __name__ == "__main__":
    with Executor() as executor:
        run = executor.run(graph)
        run.raise_for_state()
        for attempt in run.task("flaky").attempts:
            if attempt.error is None:
                print(f"attempt {attempt.number} completed")
                continue
            recorded = (attempt.retry_at - attempt.ended_at).total_seconds()
            print(f"attempt {attempt.number} failed: {attempt.error!r}")
            print(
                f"attempt {attempt.number} delay: recorded {recorded:.6f} s, formula {formula(attempt.number):.6f} s"
            )
        print(f"result: {run.result()}")
