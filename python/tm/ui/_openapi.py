"""The OpenAPI description of the dashboard's JSON API (served at ``/api/openapi.json``)."""

from __future__ import annotations

from typing import Any


def _q(name: str, description: str, kind: str = "string", **extra: Any) -> dict[str, Any]:
    return {
        "name": name,
        "in": "query",
        "required": False,
        "description": description,
        "schema": {"type": kind, **extra},
    }


def _p(name: str, description: str) -> dict[str, Any]:
    return {
        "name": name,
        "in": "path",
        "required": True,
        "description": description,
        "schema": {"type": "string"},
    }


def _ok(description: str, schema: dict[str, Any]) -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {"schema": schema}}}


_ERR = {"type": "object", "properties": {"error": {"type": "string"}}, "required": ["error"]}
_RUN = {
    "type": "object",
    "properties": {
        "run_id": {"type": "string"},
        "graph": {"type": "string"},
        "state": {"type": "string", "enum": ["running", "completed", "failed", "cancelled"]},
        "trigger": {"type": "string"},
        "scheduled_us": {"type": ["integer", "null"]},
        "created_us": {"type": "integer"},
        "started_us": {"type": ["integer", "null"]},
        "ended_us": {"type": ["integer", "null"]},
    },
    "required": ["run_id", "graph", "state", "trigger", "created_us"],
}
_TASK = {
    "type": "object",
    "properties": {
        "node": {"type": "integer"},
        "name": {"type": "string"},
        "status": {"type": "string"},
        "attempt": {"type": ["integer", "null"]},
        "started_us": {"type": ["integer", "null"]},
        "ended_us": {"type": ["integer", "null"]},
        "error_type": {"type": ["string", "null"]},
        "error_message": {"type": ["string", "null"]},
    },
    "required": ["node", "name", "status"],
}
_LIST = {"type": "array", "items": {"type": "object"}}
_NOT_FOUND = {"404": _ok("not found", _ERR)}
_BAD = {"400": _ok("a malformed parameter", _ERR)}
_POST_ERRORS = {
    "403": _ok("read-only dashboard, cross-origin request or missing CSRF token", _ERR),
    "404": _ok("no such graph", _ERR),
}

OPENAPI: dict[str, Any] = {
    "openapi": "3.1.0",
    "info": {
        "title": "tm ui",
        "version": "1",
        "description": "The JSON API behind the tm dashboard. State-changing requests are POSTs "
        "carrying the dashboard's CSRF token (GET /api/csrf) in an X-CSRF-Token header; with a "
        "token, every request sends Authorization: Bearer TOKEN.",
    },
    "paths": {
        "/api/runs": {
            "get": {
                "summary": "Runs, newest first, one page at a time",
                "parameters": [
                    _q("graph", "only runs of this graph"),
                    _q(
                        "state",
                        "only runs in this state",
                        enum=["", "running", "completed", "failed", "cancelled"],
                    ),
                    _q("trigger", "only runs started by this trigger"),
                    _q("limit", "page size (default 50)", "integer", minimum=1, maximum=1000),
                    _q("before", "the `next` cursor of the previous page"),
                ],
                "responses": {
                    "200": _ok(
                        "a page of runs and the cursor of the next, or null",
                        {
                            "type": "object",
                            "properties": {
                                "runs": {"type": "array", "items": _RUN},
                                "next": {"type": ["string", "null"]},
                            },
                            "required": ["runs", "next"],
                        },
                    ),
                    **_BAD,
                },
            }
        },
        "/api/runs/{run_id}": {
            "get": {
                "summary": "One run: its tasks (those not yet run included) and graph edges",
                "parameters": [_p("run_id", "the run's id")],
                "responses": {
                    "200": _ok(
                        "the run",
                        {
                            **_RUN,
                            "properties": {
                                **_RUN["properties"],
                                "tasks": {"type": "array", "items": _TASK},
                                "edges": {
                                    "type": "array",
                                    "items": {"type": "array", "items": {"type": "integer"}},
                                },
                            },
                        },
                    ),
                    **_NOT_FOUND,
                },
            }
        },
        "/api/runs/{run_id}/tasks/{task}": {
            "get": {
                "summary": "One task of a run (node index or name): attempts, errors, logs",
                "parameters": [_p("run_id", "the run's id"), _p("task", "node index or name")],
                "responses": {"200": _ok("the task", _TASK), **_NOT_FOUND},
            }
        },
        "/api/runs/{run_id}/logs": {
            "get": {
                "summary": "Log lines of a run (or of one task)",
                "parameters": [_p("run_id", "the run's id"), _q("task", "node index or name")],
                "responses": {"200": _ok("log lines, oldest first", _LIST), **_NOT_FOUND},
            }
        },
        "/api/runs/{run_id}/stream": {
            "get": {
                "summary": "Server-sent events: the run's state and changed task states until it ends",
                "parameters": [_p("run_id", "the run's id")],
                "responses": {
                    "200": {
                        "description": "an event stream",
                        "content": {"text/event-stream": {"schema": {"type": "string"}}},
                    },
                    **_NOT_FOUND,
                },
            }
        },
        "/api/graphs": {
            "get": {
                "summary": "Graphs with schedules, next fires, pauses and recent runs",
                "responses": {"200": _ok("the graphs", _LIST)},
            }
        },
        "/api/graphs/{name}/{action}": {
            "post": {
                "summary": "pause, unpause or trigger a graph for every scheduler sharing the store",
                "parameters": [
                    _p("name", "the graph's name"),
                    {
                        "name": "action",
                        "in": "path",
                        "required": True,
                        "schema": {"type": "string", "enum": ["pause", "unpause", "trigger"]},
                    },
                    {
                        "name": "X-CSRF-Token",
                        "in": "header",
                        "required": True,
                        "schema": {"type": "string"},
                    },
                ],
                "requestBody": {
                    "required": False,
                    "content": {
                        "application/json": {
                            "schema": {
                                "type": "object",
                                "properties": {"params": {"type": "object"}},
                            }
                        }
                    },
                },
                "responses": {"200": _ok("what changed", {"type": "object"}), **_POST_ERRORS},
            }
        },
        "/api/cache": {
            "get": {
                "summary": "Cached calls: stored entries and call states",
                "parameters": [
                    _q("func", "only this function (qualname or module.qualname)"),
                    _q(
                        "limit",
                        "how many entries (default 200)",
                        "integer",
                        minimum=1,
                        maximum=1000,
                    ),
                ],
                "responses": {"200": _ok("entries and states", {"type": "object"}), **_BAD},
            }
        },
        "/api/events": {
            "get": {
                "summary": "Recent store events (skipped fires, pauses, ...)",
                "parameters": [
                    _q("limit", "how many (default 100)", "integer", minimum=1, maximum=1000)
                ],
                "responses": {"200": _ok("events, newest first", _LIST), **_BAD},
            }
        },
        "/api/queue": {
            "get": {
                "summary": "The agent queue given with --queue: counts by status and type, tasks",
                "parameters": [
                    _q("status", "only tasks in this status"),
                    _q("limit", "how many tasks (default 200)", "integer", minimum=1, maximum=1000),
                ],
                "responses": {
                    "200": _ok("summary and tasks", {"type": "object"}),
                    **_BAD,
                    **_NOT_FOUND,
                },
            }
        },
        "/api/csrf": {
            "get": {
                "summary": "The CSRF token state-changing requests carry, and whether read-only",
                "responses": {"200": _ok("the token", {"type": "object"})},
            }
        },
        "/api/openapi.json": {
            "get": {
                "summary": "This description",
                "responses": {"200": _ok("OpenAPI", {"type": "object"})},
            }
        },
    },
}
