"""Failure alerts: ``Executor(on_failure=...)`` with a callable, a webhook (a real HTTP server on
loopback, including a 500 answered by a retry) and email (a real SMTP server, aiosmtpd)."""

from __future__ import annotations

import json
import socket
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime, timedelta, timezone
from email import message_from_bytes
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

import tm
import tm.notify
from tm.notify import Alert

WAIT = 30  # seconds: a bound for a hung test, never a synchronisation


def failing_graph(name: str = "nightly") -> tm.Graph:
    g = tm.Graph(name)

    @tm.task
    def load() -> int:
        return 1

    @tm.task
    def transform(load: int) -> int:
        raise ValueError("bad row 7")

    g.add(load)
    g.add(transform, depends_on=[load])
    return g


class Receiver:
    """An HTTP server on 127.0.0.1 that records every POST and answers with the next status
    of ``statuses`` (200 once they run out); ``hold`` keeps answers back until set."""

    def __init__(self, statuses: list[int] | None = None) -> None:
        self.statuses = list(statuses or [])
        self.bodies: list[dict[str, Any]] = []
        self.headers: list[dict[str, str]] = []
        self.hold = threading.Event()
        self.hold.set()
        self.arrived = threading.Event()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers["Content-Length"]))
                receiver.bodies.append(json.loads(body))
                receiver.headers.append(dict(self.headers))
                receiver.arrived.set()
                assert receiver.hold.wait(WAIT)
                status = receiver.statuses.pop(0) if receiver.statuses else 200
                self.send_response(status)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/hook"

    def close(self) -> None:
        self.hold.set()
        self.httpd.shutdown()
        self.httpd.server_close()
        self.thread.join(WAIT)


@contextmanager
def receiver(statuses: list[int] | None = None) -> Iterator[Receiver]:
    r = Receiver(statuses)
    try:
        yield r
    finally:
        r.close()


def test_a_callable_gets_an_alert_for_a_failed_run_and_none_for_a_completed_one(
    tmp_path: Path,
) -> None:
    got: list[Alert] = []
    ok = tm.Graph("fine")
    ok.add(tm.task(lambda: 1, name="one"))
    with tm.Executor(store=f"sqlite:///{tmp_path}/tm.db", on_failure=got.append) as ex:
        assert ex.run(ok).state == "completed"
        run = ex.run(failing_graph())
    assert run.state == "failed"
    assert got == [
        Alert(
            "run_failed",
            "nightly",
            run_id=run.run_id,
            state="failed",
            task="transform",
            error="ValueError: bad row 7",
            at=got[0].at,
        )
    ]
    assert got[0].summary() == (
        f"run {run.run_id} of nightly failed: task transform: ValueError: bad row 7"
    )


def test_on_failure_must_be_callable() -> None:
    with pytest.raises(TypeError, match="on_failure must be callable"):
        tm.Executor(on_failure="http://example.invalid")  # type: ignore[arg-type]


def test_a_webhook_posts_the_alert_and_retries_a_500() -> None:
    with receiver([500]) as r:
        hook = tm.notify.webhook(r.url, timeout=WAIT, retries=2, backoff=0)
        with tm.Executor(on_failure=hook) as ex:
            run = ex.run(failing_graph())
        assert hook.flush(WAIT)
    assert hook.attempts == [500, 200]
    assert hook.sent == 1 and hook.failed == 0
    assert len(r.bodies) == 2 and r.bodies[0] == r.bodies[1]
    body = r.bodies[1]
    assert body["kind"] == "run_failed"
    assert body["graph"] == "nightly"
    assert body["run_id"] == str(run.id)
    assert body["state"] == "failed"
    assert body["task"] == "transform"
    assert body["error"] == "ValueError: bad row 7"
    assert datetime.fromisoformat(body["at"]).tzinfo is not None
    assert r.headers[0]["Content-Type"] == "application/json"


def test_a_webhook_gives_up_on_a_4xx_at_once() -> None:
    with receiver([404, 200]) as r:
        hook = tm.notify.webhook(r.url, timeout=WAIT, retries=3, backoff=0)
        hook.send(Alert("run_failed", "g", run_id="r1", state="failed"))
        assert hook.flush(WAIT)
    assert hook.attempts == [404]
    assert hook.failed == 1 and hook.sent == 0


def test_a_webhook_retries_connection_errors_then_gives_up() -> None:
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()  # nothing listens there now: every connection is refused
    hook = tm.notify.webhook(f"http://127.0.0.1:{port}/", timeout=WAIT, retries=2, backoff=0)
    hook.send(Alert("run_failed", "g", run_id="r1", state="failed"))
    assert hook.flush(WAIT)
    assert len(hook.attempts) == 3
    assert all(isinstance(a, str) and "refused" in a.lower() for a in hook.attempts)
    assert hook.failed == 1


def test_a_slow_webhook_never_holds_up_the_run() -> None:
    with receiver() as r:
        r.hold.clear()  # the endpoint answers only when the test says so
        hook = tm.notify.webhook(r.url, timeout=WAIT, retries=0)
        with tm.Executor(on_failure=hook) as ex:
            run = ex.run(failing_graph())
            assert run.state == "failed"  # the run ended while its alert is unanswered
            assert r.arrived.wait(WAIT)
            assert hook.sent == 0
            r.hold.set()
        assert hook.flush(WAIT)
    assert hook.sent == 1


def test_missed_fires_are_alerts_too() -> None:
    got: list[Alert] = []
    start = datetime(2026, 3, 1, tzinfo=timezone.utc)
    clock = tm.VirtualClock(start)
    g = tm.Graph("hourly", schedule="0 * * * *")
    g.add(tm.task(lambda: 1, name="tick"))
    ex = tm.Executor(clock=clock, on_failure=got.append)
    ex.add(g, catchup="none")
    t = threading.Thread(target=ex.start, daemon=True)
    t.start()
    try:
        assert ex.settle(WAIT)
        clock.set(start + timedelta(hours=3, minutes=30))
        assert ex.settle(WAIT)
    finally:
        ex.stop()
        t.join(WAIT)
        ex.shutdown()
    assert [(a.kind, a.graph, a.count) for a in got] == [("fire_missed", "hourly", 3)]
    assert got[0].scheduled_at == (start + timedelta(hours=1)).isoformat()
    assert got[0].summary() == (
        f"hourly: missed the fire at {got[0].scheduled_at} and 2 later fire(s)"
    )


def free_port() -> int:
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return int(port)


def test_email_is_sent_through_a_real_smtp_server() -> None:
    controller_mod = pytest.importorskip("aiosmtpd.controller")
    received: list[Any] = []

    class Handler:
        async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
            received.append(envelope)
            return "250 OK"

    port = free_port()
    controller = controller_mod.Controller(Handler(), hostname="127.0.0.1", port=port)
    controller.start()
    try:
        mail = tm.notify.email("127.0.0.1", port, "tm@example.org", ["ops@example.org"])
        with tm.Executor(on_failure=mail) as ex:
            run = ex.run(failing_graph())
        assert mail.flush(WAIT)
    finally:
        controller.stop()
    assert mail.sent == 1
    (env,) = received
    assert env.mail_from == "tm@example.org"
    assert env.rcpt_tos == ["ops@example.org"]
    msg = message_from_bytes(env.content)
    assert (
        msg["Subject"]
        == f"tm: run {run.id} of nightly failed: task transform: ValueError: bad row 7"
    )
    text = msg.get_payload()
    assert "task: transform" in text and "error: ValueError: bad row 7" in text


def test_notify_urls() -> None:
    hook = tm.notify.from_url("https://hooks.example.org/x")
    assert hook.url == "https://hooks.example.org/x"  # type: ignore[attr-defined]
    mail = tm.notify.from_url(
        "smtp://bob:s%40cret@mail.example.org:2525?from=tm@example.org&to=a@x.org,b@x.org&starttls=1"
    )
    assert (mail.host, mail.port, mail.sender, mail.to) == (  # type: ignore[attr-defined]
        "mail.example.org",
        2525,
        "tm@example.org",
        ["a@x.org", "b@x.org"],
    )
    assert (mail.username, mail.password, mail.starttls) == ("bob", "s@cret", True)  # type: ignore[attr-defined]
    local = tm.notify.from_url("mailto:ops@example.org")
    assert (local.host, local.port, local.to) == ("localhost", 25, ["ops@example.org"])  # type: ignore[attr-defined]
    with pytest.raises(ValueError, match="http"):
        tm.notify.from_url("ftp://example.org")


def test_a_failed_distributed_run_is_an_alert_with_its_error_from_the_store(pg_url: str) -> None:
    got: list[Alert] = []
    with tm.Executor(store=pg_url, on_failure=got.append) as ex:
        run = ex.run(failing_graph("spread"), distributed=True)
        assert run.state == "failed"
    assert [(a.kind, a.graph, a.run_id, a.task, a.error) for a in got] == [
        ("run_failed", "spread", run.run_id, "transform", "ValueError: bad row 7")
    ]


SERVICE = """
import tm

flow = tm.Graph("svc", schedule="* * * * *")

@tm.task
def fetch():
    raise ConnectionError("refused")

flow.add(fetch)
"""


def test_tm_start_notify_posts_missed_fires_and_failed_runs(tmp_path: Path) -> None:
    import os
    import subprocess
    import sys
    import time

    (tmp_path / "svc.py").write_text(SERVICE)
    db = f"sqlite:///{tmp_path}/tm.db"
    store = tm.Store(db)
    # Last fired ten minutes ago: the minutes since were missed but the latest, which runs.
    ten_ago = (int(time.time()) // 60 - 10) * 60 * 1_000_000
    store.core.upsert_graph("svc", ten_ago, ten_ago, schedule="* * * * *", last_fire_us=ten_ago)
    store.close()
    with receiver() as r:
        proc = subprocess.Popen(
            [sys.executable, "-m", "tm", "start", "svc.py", "--db", db, "-q", "--notify", r.url],
            cwd=tmp_path,
            stderr=subprocess.PIPE,
            text=True,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )
        try:
            deadline = time.monotonic() + WAIT
            while len(r.bodies) < 2 and proc.poll() is None and time.monotonic() < deadline:
                r.arrived.wait(0.1)
        finally:
            proc.terminate()
            err = proc.communicate(timeout=WAIT)[1]
    # (A later minute may have fired and failed again by the time the service stopped.)
    kinds = {b["kind"] for b in r.bodies}
    assert kinds == {"fire_missed", "run_failed"}, err
    missed = next(b for b in r.bodies if b["kind"] == "fire_missed")
    assert missed["graph"] == "svc" and missed["count"] >= 8
    failed = next(b for b in r.bodies if b["kind"] == "run_failed")
    assert (failed["graph"], failed["task"], failed["error"]) == (
        "svc",
        "fetch",
        "ConnectionError: refused",
    )
