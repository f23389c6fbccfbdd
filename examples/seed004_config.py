"""Seed 004, "Using config files": tasks read the graph's config, a JSON file.

The config path is relative ("./config.json"); tm resolves it against this script's directory,
so the program works from any working directory. The file is read again for each run when it
has changed. The seed hands the graph to a cron scheduler; here it is run once, now, by calling it.

Prints (the two tasks run in parallel, so in either order)::

    4
    0
"""

import sys
import threading

from tm import Graph, task


class WholeLines:
    """A stdout wrapper that writes each finished line at once.

    ``print`` writes its text and its newline separately; two tasks printing at the same moment
    could otherwise mix their output ("40" then two empty lines).
    """

    def __init__(self, out):
        self._out = out
        self._lock = threading.Lock()
        self._pending = threading.local()

    def write(self, text):
        done, sep, rest = (getattr(self._pending, "text", "") + text).rpartition("\n")
        self._pending.text = rest
        if sep:
            with self._lock:
                self._out.write(done + sep)
                self._out.flush()
        return len(text)

    def flush(self):
        self._out.flush()


# Pass the path of the file to the dag,
# The config is read every time the dag is executed
graph = Graph(name="configs demonstration", schedule="* * * * *", config="./config.json")

## config --> print_add
##   |
##   ---> print_sub


@task()
def print_add(config):
    print(config["initial_value"] + 2)  # prints 4


@task()
def print_sub(config):
    print(config["initial_value"] - 2)  # prints 0


# second arguments "children" is None in this case
graph.add_edges([print_add, print_sub])

if __name__ == "__main__":
    sys.stdout = WholeLines(sys.stdout)
    graph()
