"""``tm ui``: every endpoint of the JSON API and the pages behind it, through Starlette's
TestClient against a real SQLite store holding real runs; the security rules (bind, token,
CSRF, same origin, read-only); and that what the store holds is rendered inert."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import httpx2
import pytest
from _ui_server import serving
from test_scheduler import WAIT, running

import tm
from tm import Executor, Graph, VirtualClock, task

pytest.importorskip("starlette")
from starlette.testclient import TestClient

from tm.ui import UIError, check_bind, create_app

EVIL = "<script>alert(1)</script>"


def build_store(path: Path) -> dict[str, Any]:
    """A store with a completed run, a failed run (a traceback), a run whose task name and log
    line hold markup, and a scheduled graph."""
    url = f"sqlite:///{path}"
    store = tm.Store(url)
    ex = Executor(store=store)

    etl = Graph("etl")

    @task
    def extract(context):
        context.logger.info("extracted %d rows", 3)
        return [1, 2, 3]

    @task
    def transform(extract):
        return [x * 2 for x in extract]

    @task
    def load(transform):
        return sum(transform)

    etl.add(extract)
    etl.add(transform, extract)
    etl.add(load, transform)

    bad = Graph("bad")

    @task
    def first():
        return 1

    @task
    def explode(first):
        raise ValueError("boom <b>bold</b>")

    @task
    def never(explode):
        return 2

    bad.add(first)
    bad.add(explode, first)
    bad.add(never, explode)

    evil = Graph("evil")

    def shout(context):
        context.logger.warning("log line %s", EVIL)

    evil.add(task(shout, name=EVIL))

    ok = ex.run(etl)
    failed = ex.run(bad)
    inert = ex.run(evil)
    assert (ok.state, failed.state, inert.state) == ("completed", "failed", "completed")

    hourly = Graph("hourly", schedule="0 * * * *")
    hourly.add(task(lambda: None, name="tick"))
    clock = VirtualClock(datetime(2026, 1, 1, tzinfo=timezone.utc))
    sched = Executor(clock=clock, store=store)
    sched.add(hourly)
    with running(sched):
        pass  # registering it records the graph and its schedule in the store
    store.flush()
    ex.shutdown()
    return {"url": url, "store": store, "ok": ok.id, "failed": failed.id, "evil": inert.id}


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    w = build_store(tmp_path_factory.mktemp("ui") / "tm.db")
    yield w
    w["store"].close()


@pytest.fixture
def client(world: dict[str, Any]) -> TestClient:
    return TestClient(create_app(world["url"]))


def csrf_of(client: TestClient) -> str:
    return client.get("/api/csrf").json()["csrf"]


def test_api_runs_lists_filters_and_pages(client: TestClient, world: dict[str, Any]) -> None:
    r = client.get("/api/runs")
    assert r.status_code == 200
    ids = [x["run_id"] for x in r.json()["runs"]]
    assert ids == [world["evil"], world["failed"], world["ok"]]
    assert r.json()["next"] is None
    assert [x["run_id"] for x in client.get("/api/runs?state=failed").json()["runs"]] == [
        world["failed"]
    ]
    assert [x["graph"] for x in client.get("/api/runs?graph=etl").json()["runs"]] == ["etl"]
    assert client.get("/api/runs?trigger=schedule").json()["runs"] == []
    assert len(client.get("/api/runs?trigger=manual").json()["runs"]) == 3
    # Keyset pages: one at a time, each older than the last, until none is left.
    seen, cursor = [], None
    while True:
        page = client.get(
            "/api/runs", params={"limit": 1, **({"before": cursor} if cursor else {})}
        )
        body = page.json()
        seen += [x["run_id"] for x in body["runs"]]
        cursor = body["next"]
        if cursor is None:
            break
    assert seen == ids


@pytest.mark.parametrize(
    "query",
    ["state=bogus", "limit=0", "limit=x", "limit=100000", "before=nope", "before=x.y"],
)
def test_api_runs_refuses_bad_parameters_with_400(client: TestClient, query: str) -> None:
    r = client.get(f"/api/runs?{query}")
    assert r.status_code == 400
    assert r.json()["error"]


def test_api_run_has_every_task_edges_and_states(client: TestClient, world: dict[str, Any]) -> None:
    r = client.get(f"/api/runs/{world['failed']}")
    assert r.status_code == 200
    run = r.json()
    states = {t["name"]: t["status"] for t in run["tasks"]}
    assert states == {"first": "completed", "explode": "failed", "never": "skipped"}
    assert sorted(run["edges"]) == [[0, 1], [1, 2]]
    assert client.get("/api/runs/nope").status_code == 404


def test_api_task_has_attempts_traceback_and_logs(
    client: TestClient, world: dict[str, Any]
) -> None:
    t = client.get(f"/api/runs/{world['failed']}/tasks/explode").json()
    assert t["status"] == "failed"
    [attempt] = t["attempts"]
    assert attempt["error_type"] == "ValueError"
    assert "boom" in attempt["traceback"] and "raise ValueError" in attempt["traceback"]
    by_node = client.get(f"/api/runs/{world['failed']}/tasks/{t['node']}").json()
    assert by_node["name"] == "explode"
    logs = client.get(f"/api/runs/{world['ok']}/tasks/extract").json()["logs"]
    assert [x["message"] for x in logs] == ["extracted 3 rows"]
    assert client.get(f"/api/runs/{world['ok']}/tasks/nope").status_code == 404
    assert client.get("/api/runs/nope/tasks/x").status_code == 404


def test_api_logs(client: TestClient, world: dict[str, Any]) -> None:
    rows = client.get(f"/api/runs/{world['ok']}/logs").json()
    assert [(x["task"], x["message"]) for x in rows] == [("extract", "extracted 3 rows")]
    assert client.get(f"/api/runs/{world['ok']}/logs?task=load").json() == []
    assert client.get("/api/runs/nope/logs").status_code == 404


def test_api_stream_of_a_finished_run_sends_its_states_and_ends(
    client: TestClient, world: dict[str, Any]
) -> None:
    with client.stream("GET", f"/api/runs/{world['ok']}/stream") as r:
        assert r.headers["content-type"].startswith("text/event-stream")
        lines = [ln for ln in r.iter_lines() if ln.startswith("data: ")]
    [only] = lines
    msg = json.loads(only[len("data: ") :])
    assert msg["state"] == "completed"
    assert sorted(v[0] for v in msg["tasks"].values()) == ["completed"] * 3
    assert client.get("/api/runs/nope/stream").status_code == 404


def test_api_graphs_cache_events_csrf_openapi(client: TestClient, world: dict[str, Any]) -> None:
    graphs = {g["name"]: g for g in client.get("/api/graphs").json()}
    assert graphs["hourly"]["schedule"] == "0 * * * *"
    assert graphs["hourly"]["next_fire"] is not None and graphs["hourly"]["paused_us"] is None
    cache = client.get("/api/cache").json()
    assert cache == {"entries": [], "states": []}
    assert isinstance(client.get("/api/events").json(), list)
    assert client.get("/api/events?limit=0").status_code == 400
    assert len(client.get("/api/csrf").json()["csrf"]) >= 32
    spec = client.get("/api/openapi.json").json()
    assert spec["openapi"].startswith("3.")
    # Every API route the app serves is described.
    served = {
        r.path
        for r in client.app.routes
        if r.path.startswith("/api/")  # type: ignore[attr-defined]
    }
    assert served == set(spec["paths"])


def test_cached_calls_are_listed(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'c.db'}"
    store = tm.Store(url, result_dir=tmp_path / "results")

    @store.task
    def square(x: int) -> int:
        return x * x

    assert square(3) == 9
    store.flush()
    c = TestClient(create_app(url))
    data = c.get("/api/cache").json()
    assert [e["func"].rsplit(".", 1)[-1] for e in data["entries"]] == ["square"]
    assert c.get("/cache").status_code == 200
    assert "square" in c.get("/cache").text
    store.close()


def test_pages_render(client: TestClient, world: dict[str, Any]) -> None:
    for path in (
        "/",
        "/?state=failed&graph=bad",
        f"/runs/{world['ok']}",
        f"/runs/{world['failed']}/tasks/explode",
        f"/runs/{world['ok']}/logs",
        "/graphs",
        "/cache",
        "/events",
    ):
        r = client.get(path)
        assert r.status_code == 200, path
        assert r.headers["content-type"].startswith("text/html")
    run = client.get(f"/runs/{world['failed']}").text
    assert "<svg id='graph'" in run and "<svg id='gantt'" in run
    assert "rect class='s-failed'" in run and "rect class='s-skipped'" in run
    assert client.get("/runs/nope").status_code == 404


def test_markup_from_the_store_renders_inert(client: TestClient, world: dict[str, Any]) -> None:
    for path in (
        f"/runs/{world['evil']}",
        f"/runs/{world['evil']}/tasks/0",
        f"/runs/{world['evil']}/logs",
        f"/runs/{world['failed']}/tasks/explode",
    ):
        text = client.get(path).text
        assert "<script>alert" not in text, path
        assert "<b>bold" not in text, path
    page = client.get(f"/runs/{world['evil']}/tasks/0").text
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in page  # shown, as text
    assert "log line &lt;script&gt;" in page
    assert "boom &lt;b&gt;bold&lt;/b&gt;" in client.get(f"/runs/{world['failed']}").text
    # A run id with markup in the URL is echoed escaped too.
    assert "<script>" not in client.get("/runs/%3Cscript%3Ex").text
    assert client.get("/").headers["content-security-policy"].startswith("default-src 'self'")


def test_pause_unpause_and_trigger_change_the_store(world: dict[str, Any]) -> None:
    c = TestClient(create_app(world["url"]))
    token = csrf_of(c)
    store = world["store"]
    r = c.post("/api/graphs/hourly/pause", headers={"X-CSRF-Token": token})
    assert r.status_code == 200 and r.json()["changed"] is True
    assert [p[0] for p in store.core.pauses()] == ["hourly"]
    assert "Unpause" in c.get("/graphs").text
    # The page's form: a form field, from the page's own origin, redirected back.
    r = c.post(
        "/graphs/hourly/unpause",
        data={"csrf": token},
        headers={"Origin": "http://testserver"},
        follow_redirects=False,
    )
    assert r.status_code == 303 and r.headers["location"] == "/graphs"
    assert store.core.pauses() == []
    r = c.post(
        "/api/graphs/hourly/trigger", json={"params": {"n": 2}}, headers={"X-CSRF-Token": token}
    )
    assert r.status_code == 200 and isinstance(r.json()["trigger_id"], int)
    assert store.core.triggered_graphs() == ["hourly"]
    assert c.post("/api/graphs/nope/pause", headers={"X-CSRF-Token": token}).status_code == 404
    assert c.post("/api/graphs/hourly/nuke", headers={"X-CSRF-Token": token}).status_code == 404
    assert c.get("/api/graphs/hourly/pause").status_code == 405


def test_state_changes_need_the_csrf_token_and_the_same_origin(world: dict[str, Any]) -> None:
    c = TestClient(create_app(world["url"]))
    token = csrf_of(c)
    store = world["store"]
    refused = [
        c.post("/api/graphs/hourly/pause"),
        c.post("/api/graphs/hourly/pause", headers={"X-CSRF-Token": "wrong"}),
        c.post("/graphs/hourly/pause", data={"csrf": "wrong"}),
        # A page elsewhere posting the right token (say, leaked) is still refused.
        c.post(
            "/api/graphs/hourly/pause",
            headers={"X-CSRF-Token": token, "Origin": "http://evil.example"},
        ),
        c.post(
            "/graphs/hourly/pause",
            data={"csrf": token},
            headers={"Referer": "http://evil.example/page"},
        ),
        c.post("/graphs/hourly/pause", data={"csrf": token}, headers={"Origin": "null"}),
    ]
    assert [r.status_code for r in refused] == [403] * len(refused)
    assert store.core.pauses() == []
    # Another app (another process) has another token.
    other = TestClient(create_app(world["url"]))
    assert csrf_of(other) != token
    assert (
        other.post("/api/graphs/hourly/pause", headers={"X-CSRF-Token": token}).status_code == 403
    )


def test_read_only_refuses_every_state_change(world: dict[str, Any]) -> None:
    c = TestClient(create_app(world["url"], read_only=True))
    token = csrf_of(c)
    for action in ("pause", "unpause", "trigger"):
        r = c.post(f"/api/graphs/hourly/{action}", headers={"X-CSRF-Token": token})
        assert r.status_code == 403 and "read-only" in r.json()["error"]
    assert world["store"].core.pauses() == []
    page = c.get("/graphs").text
    assert "<form" not in page  # no buttons
    assert c.get("/api/runs").status_code == 200


def test_a_token_is_required_on_every_request_when_set(world: dict[str, Any]) -> None:
    c = TestClient(create_app(world["url"], token="s3cret"))
    assert c.get("/api/runs").status_code == 401
    assert c.get("/").status_code == 401
    assert c.get("/api/runs", headers={"Authorization": "Bearer wrong"}).status_code == 401
    assert c.get("/api/runs", headers={"Authorization": "Bearer s3cret"}).status_code == 200
    # Once in the URL (a link to share), then a cookie.
    r = c.get("/?token=s3cret")
    assert r.status_code == 200 and "tm_ui_token" in r.headers["set-cookie"]
    assert c.get("/api/runs").status_code == 200


def test_bind_rules() -> None:
    for host in ("127.0.0.1", "localhost", "::1", "127.0.0.2"):
        check_bind(host, None, False)
    for host in ("0.0.0.0", "192.168.1.5", "::", "example.com"):
        with pytest.raises(UIError, match="not a loopback address"):
            check_bind(host, None, False)
        check_bind(host, "token", False)
        check_bind(host, None, True)


def test_cli_refuses_a_non_loopback_bind_without_a_token(world: dict[str, Any]) -> None:
    env_free = {k: v for k, v in __import__("os").environ.items() if k != "TM_UI_TOKEN"}
    p = subprocess.run(
        [sys.executable, "-m", "tm", "ui", "--db", world["url"], "--host", "0.0.0.0"],
        capture_output=True,
        text=True,
        timeout=WAIT * 3,
        env=env_free,
    )
    assert p.returncode == 2
    assert "not a loopback address" in p.stderr and "--token" in p.stderr


def test_cli_refuses_a_missing_database(tmp_path: Path) -> None:
    p = subprocess.run(
        [sys.executable, "-m", "tm", "ui", "--db", f"sqlite:///{tmp_path / 'none.db'}"],
        capture_output=True,
        text=True,
        timeout=WAIT * 3,
    )
    assert p.returncode == 1 and "no tm database" in p.stderr
    assert not (tmp_path / "none.db").exists()


def test_import_tm_does_not_import_the_ui() -> None:
    code = "import sys, tm; print(any(m == 'tm.ui' or m.startswith(('starlette', 'uvicorn')) for m in sys.modules))"
    p = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=WAIT * 3
    )
    assert p.stdout.strip() == "False", p.stderr


def test_a_live_run_streams_its_changes_until_it_ends(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'live.db'}"
    store = tm.Store(url)
    ex = Executor(store=store)
    gate = threading.Event()
    g = Graph("slow")

    @task
    def wait_for_gate():
        assert gate.wait(WAIT)

    @task
    def after(wait_for_gate):
        return 1

    g.add(wait_for_gate)
    g.add(after, wait_for_gate)
    run = ex.submit(g)
    try:
        store.flush()
        # A real server: TestClient would hold the whole stream until the run ends.
        with (
            serving(create_app(url)) as base,
            httpx2.stream("GET", f"{base}/api/runs/{run.id}/stream", timeout=WAIT * 3) as r,
        ):
            assert r.status_code == 200
            msgs = []
            for line in r.iter_lines():
                if not line.startswith("data: "):
                    continue
                msgs.append(json.loads(line[6:]))
                if len(msgs) == 1:
                    assert msgs[0]["state"] == "running"
                    gate.set()
        assert msgs[-1]["state"] == "completed"
        final: dict[str, str] = {}
        for m in msgs:
            final.update({k: v[0] for k, v in m["tasks"].items()})
        assert final == {"0": "completed", "1": "completed"}
    finally:
        gate.set()
        run.wait()
        ex.shutdown()
        store.close()


def test_a_host_list_refuses_other_host_names(world: dict[str, Any]) -> None:
    app = create_app(world["url"], hosts={"127.0.0.1", "localhost"})
    assert TestClient(app, base_url="http://127.0.0.1:8265").get("/api/runs").status_code == 200
    assert TestClient(app, base_url="http://localhost").get("/").status_code == 200
    # A rebinding attacker's name pointing at loopback.
    assert TestClient(app, base_url="http://evil.example:8265").get("/api/runs").status_code == 400


def test_runs_pages_and_filters_on_both_backends(db_url: str) -> None:
    """The keyset pages and the trigger filter on SQLite and PostgreSQL: runs sharing a
    creation time are split by run id, none lost or repeated."""
    store = tm.Store(db_url)
    for i in range(7):
        trigger = "schedule" if i % 2 else "manual"
        # Pairs share a creation time, so the cursor's tie-break on run id matters.
        store.core.begin_run(f"r{i}", "g", "completed", trigger, 1000 + i // 2, [])
    store.flush()
    c = TestClient(create_app(db_url))
    seen, cursor = [], None
    while True:
        params: dict[str, Any] = {"limit": 2}
        if cursor:
            params["before"] = cursor
        body = c.get("/api/runs", params=params).json()
        seen += [r["run_id"] for r in body["runs"]]
        cursor = body["next"]
        if cursor is None:
            break
    assert seen == ["r6", "r5", "r4", "r3", "r2", "r1", "r0"]
    sched = c.get("/api/runs", params={"trigger": "schedule", "limit": 2}).json()
    assert [r["run_id"] for r in sched["runs"]] == ["r5", "r3"]
    rest = c.get("/api/runs", params={"trigger": "schedule", "before": sched["next"]}).json()
    assert [r["run_id"] for r in rest["runs"]] == ["r1"] and rest["next"] is None
    store.close()


def test_tm_ui_serves_until_signalled(world: dict[str, Any]) -> None:
    """The real command: it says where it listens once it does, serves the API, and a SIGINT
    stops it cleanly."""
    env = {k: v for k, v in os.environ.items() if k != "TM_UI_TOKEN"}
    p = subprocess.Popen(
        [sys.executable, "-m", "tm", "ui", "--db", world["url"], "--port", "0", "--read-only"],
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )
    try:
        assert p.stderr is not None
        line = p.stderr.readline()
        assert line.startswith("tm ui: serving on http://127.0.0.1:"), line
        base = line.split(" on ", 1)[1].strip().rstrip("/")
        runs = httpx2.get(f"{base}/api/runs", timeout=WAIT).json()["runs"]
        assert {r["run_id"] for r in runs} >= {world["ok"], world["failed"]}
        assert httpx2.get(f"{base}/api/csrf", timeout=WAIT).json()["read_only"] is True
        # Loopback without a token: another Host name is refused (DNS rebinding).
        r = httpx2.get(f"{base}/api/runs", headers={"Host": "evil.example"}, timeout=WAIT)
        assert r.status_code == 400
    finally:
        p.send_signal(signal.SIGINT)
        assert p.wait(WAIT * 3) == 0
        assert p.stderr is not None
        rest = p.stderr.read()
        p.stderr.close()
        assert "Traceback" not in rest, rest


def test_agent_queue_counts_and_tasks(tmp_path: Path, world: dict[str, Any]) -> None:
    from tm.queue import TaskManager

    target = str(tmp_path / "queue.db")
    tm_ = TaskManager(target)
    ids = [tm_.create_task("crawl", {"n": i}) for i in range(3)]
    tm_.create_task(EVIL, {})
    claimed = tm_.get_next_task("agent-1")
    assert claimed is not None and claimed["id"] == ids[0]
    c = TestClient(create_app(world["url"], queue=target))
    data = c.get("/api/queue").json()
    assert data["summary"]["status_counts"] == {"pending": 3, "in_progress": 1}
    assert data["summary"]["type_counts"] == {"crawl": 3, EVIL: 1}
    assert len(data["tasks"]) == 4
    pending = c.get("/api/queue?status=pending").json()["tasks"]
    assert sorted(t["id"] for t in pending if t["type"] == "crawl") == sorted(ids[1:])
    assert c.get("/api/queue?status=bogus").status_code == 400
    page = c.get("/queue").text
    assert "crawl" in page and "<script>alert" not in page and "&lt;script&gt;" in page
    # Without --queue the page says how to get one.
    assert TestClient(create_app(world["url"])).get("/api/queue").status_code == 404
