"""Seed 003, the TaskFlow file pipeline, run on tm.

Imports: ``from tm.taskflow import Task, Scheduler, Executor``.

Each file is read, then processed, then compressed. Reading is tagged "io", processing and
compression "cpu"; each tag gets its own pool of ``workers_per_tag=2`` threads. The seed sleeps
5, 2 and 1 seconds per stage; here the sleeps are scaled down 100 times so the program is quick.

Beyond the seed, every ``execute`` records when it starts and ends, so the program can show what
TaskFlow promises: each file's stages run in order, and no tag ever has more than two tasks
running at once. Prints the compressed results, then those checks.
"""

import logging
import threading
import time
from contextlib import contextmanager

from tm.taskflow import Executor, Scheduler, Task

logging.basicConfig(
    level=logging.INFO,
    format="%(asctime)s [%(levelname)s] - %(message)s",
    datefmt="%H:%M:%S",
    handlers=[logging.StreamHandler()],
)
logger = logging.getLogger(__name__)

WORKERS_PER_TAG = 2
SCALE = 0.01  # the seed's seconds, scaled down


class Recorder:
    """Thread-safe record of stage order per file and of peak concurrency per tag."""

    def __init__(self):
        self._lock = threading.Lock()
        self.events = []  # (filename, stage) in the order stages finished
        self.running = {}
        self.peak = {}

    @contextmanager
    def stage(self, tag, filename, name):
        with self._lock:
            self.running[tag] = self.running.get(tag, 0) + 1
            self.peak[tag] = max(self.peak.get(tag, 0), self.running[tag])
            self.events.append((filename, name, "start"))
        try:
            yield
        finally:
            with self._lock:
                self.running[tag] -= 1
                self.events.append((filename, name, "end"))

    def order_kept(self, filename, stages):
        """Whether each stage of ``filename`` started only after the previous one ended."""
        seen = [(stage, what) for f, stage, what in self.events if f == filename]
        expected = [(s, w) for s in stages for w in ("start", "end")]
        return seen == expected


recorder = Recorder()


class ReadFileTask(Task):
    def __init__(self, filename, **kwargs):
        super().__init__(**kwargs)
        self.filename = filename

    def execute(self):
        with recorder.stage(self.tag(), self.filename, "read"):
            logger.info(f"Reading file {self.filename}")
            time.sleep(5 * SCALE)
        return f"{self.filename}:read"

    def tag(self):
        return "io"  # IO task group


class ProcessFileTask(Task):
    def __init__(self, filename, **kwargs):
        super().__init__(**kwargs)
        self.filename = filename

    def execute(self):
        with recorder.stage(self.tag(), self.filename, "process"):
            logger.info(f"Processing file {self.filename}")
            time.sleep(2 * SCALE)
        return f"{self.filename}:processed"

    def tag(self):
        return "cpu"  # CPU task group


class CompressTask(Task):
    def __init__(self, filename, **kwargs):
        super().__init__(**kwargs)
        self.filename = filename

    def execute(self):
        with recorder.stage(self.tag(), self.filename, "compress"):
            logger.info(f"Compressing file {self.filename}")
            time.sleep(1 * SCALE)
        return f"{self.filename}.gz"

    def tag(self):
        return "cpu"  # CPU task group


def process_files(filenames):
    # Create tasks for reading each file
    read_tasks = [ReadFileTask(filename) for filename in filenames]

    # Create processing and compression tasks for each file
    process_tasks = []
    compress_tasks = []

    for read_task in read_tasks:
        # Process task depends on read task
        process_task = ProcessFileTask(read_task.filename, dependencies={read_task})
        process_tasks.append(process_task)

        # Compress task depends on process task
        compress_task = CompressTask(read_task.filename, dependencies={process_task})
        compress_tasks.append(compress_task)

    # Create scheduler with all tasks
    all_tasks = set(read_tasks + process_tasks + compress_tasks)
    scheduler = Scheduler(all_tasks)

    # Create executor with separate thread pools for IO and CPU tasks
    executor = Executor(scheduler, workers_per_tag=WORKERS_PER_TAG)

    # Run all tasks
    executor.run()

    # Return results from compression tasks
    return [task.result for task in compress_tasks]


def main():
    files = ["file1.txt", "file2.txt", "file3.txt", "file4.txt", "file5.txt"]
    results = process_files(files)
    print("results:", ", ".join(results))
    stages = ["read", "process", "compress"]
    in_order = all(recorder.order_kept(f, stages) for f in files)
    print(f"each file read -> processed -> compressed in order: {in_order}")
    for tag in ("io", "cpu"):
        peak = recorder.peak.get(tag, 0)
        print(f"{tag} tasks running at once: at most {WORKERS_PER_TAG}: {peak <= WORKERS_PER_TAG}")
    # The peaks themselves depend on timing (normally exactly 2), so they come last.
    print("peak concurrency:", ", ".join(f"{t}={recorder.peak.get(t, 0)}" for t in ("io", "cpu")))
    return results


if __name__ == "__main__":
    main()
