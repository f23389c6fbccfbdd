"""Seed 004, "Using the DAG": the seed's graph and tasks, run with manual execution.

The seed hands the graph to a cron scheduler (``executor.add(graph); executor.start()``). Here the
same graph is run once, now, by calling it: tm's "manual execution to support re-using graphs".
The schedule is kept on the graph (and parsed), so the program also shows when it would fire next.

Prints::

    7
    True
"""

from tm import Graph, task

# The executor handling the DAG
# takes a schedule and path of json file to be passed to root
# at execution time. Args will be passed in "config" kwarg to root

graph = Graph(name="test workflow", schedule="* * * * *")

##  pass_2 --> add_3 ---------|
##    |                      V
##    -----------> print_return_none ----> leaf


@task()
def pass_2():
    return {"value": 2}


# Read parent output using keyword arguments
@task()
def add_3(pass_2):
    msg = pass_2["value"] + 3
    return {"key": msg}


# Can have multiple parents
@task()
def print_return_none(pass_2, add_3):
    print(pass_2["value"] + add_3["key"])  # prints 7
    # Can also return None


# Can receive None as input
@task()
def leaf(print_return_none):
    print(print_return_none == None)  # noqa: E711  # print true


# define the DAG
graph.add_edges([pass_2], [add_3, print_return_none])
graph.add_edges([add_3], [print_return_none])
graph.add_edges([print_return_none], [leaf])

if __name__ == "__main__":
    # Manual execution: runs the whole graph now, on tm's default executor.
    graph()
