"""Failure alerts: ``Executor(on_failure=...)`` with a callable or a ready notifier.

A failed run, and fires the scheduler missed (``catchup`` did not run them), become an
:class:`Alert`. A plain callable is called with it on the thread that saw it (an engine thread
or the scheduler's: keep it short). The notifiers here, :func:`webhook` and :func:`email`, queue
the alert and send it from a thread of their own, so a slow or dead endpoint never holds up the
engine; failures to deliver are logged to the ``tm`` logger.
"""

from __future__ import annotations

import contextlib
import json
import logging
import queue
import smtplib
import socket
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable
from dataclasses import asdict, dataclass
from datetime import datetime, timezone
from email.message import EmailMessage
from typing import Any

from ._observe import Observer, RunContext

__all__ = ["Alert", "Notifier", "email", "from_url", "webhook"]

_log = logging.getLogger("tm")


@dataclass(frozen=True)
class Alert:
    """What went wrong: a run that failed (``kind == "run_failed"``) or fires the scheduler
    missed (``kind == "fire_missed"``, ``count`` of them from ``scheduled_at`` on)."""

    kind: str
    graph: str
    run_id: str | None = None
    state: str | None = None
    task: str | None = None
    error: str | None = None
    scheduled_at: str | None = None
    count: int | None = None
    at: str = ""

    def to_dict(self) -> dict[str, Any]:
        """The JSON body a webhook receives."""
        return asdict(self)

    def summary(self) -> str:
        """One line for humans (an email's subject, a log line)."""
        if self.kind == "fire_missed":
            more = f" and {self.count - 1} later fire(s)" if self.count and self.count > 1 else ""
            return f"{self.graph}: missed the fire at {self.scheduled_at}{more}"
        what = f"run {self.run_id} of {self.graph} {self.state}"
        if self.task:
            what += f": task {self.task}"
        if self.error:
            what += f": {self.error}"
        return what


def _now() -> str:
    return datetime.now(timezone.utc).isoformat()


def _iso_us(us: int) -> str:
    return datetime.fromtimestamp(us / 1e6, tz=timezone.utc).isoformat()


def run_alert(run: Any) -> Alert:
    """The alert for a finished run (a ``tm.Run`` or a ``DistributedRun``)."""
    task = run.failed_task
    error = None
    if task is not None:
        if hasattr(run, "task"):
            err = run.task(task).error
            error = None if err is None else f"{type(err).__name__}: {err}"
        else:  # a distributed run: the error is in the store
            detail = run._store().core.get_run(run.run_id) or {"tasks": []}
            row = next((t for t in detail["tasks"] if t["name"] == task), {})
            if row.get("error_type"):
                error = f"{row['error_type']}: {row.get('error_message')}"
    return Alert(
        "run_failed",
        run.graph,
        run_id=str(getattr(run, "id", run.run_id)),
        state=run.state,
        task=task,
        error=error,
        at=_now(),
    )


class Notifier:
    """Sends alerts from a thread of its own (started with the first alert). Subclasses
    implement :meth:`deliver`; :meth:`send` never blocks."""

    def __init__(self) -> None:
        self._queue: queue.Queue[Alert | None] = queue.Queue()
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()
        self._pending = 0
        self._idle = threading.Condition(self._lock)
        #: How many alerts were delivered, and how many were given up on.
        self.sent = 0
        self.failed = 0

    def __call__(self, alert: Alert) -> None:
        self.send(alert)

    def send(self, alert: Alert) -> None:
        with self._lock:
            self._pending += 1
            if self._thread is None or not self._thread.is_alive():
                self._thread = threading.Thread(
                    target=self._loop, name=f"tm-notify-{type(self).__name__}", daemon=True
                )
                self._thread.start()
        self._queue.put(alert)

    def _loop(self) -> None:
        while True:
            alert = self._queue.get()
            if alert is None:
                return
            try:
                self.deliver(alert)
            except Exception as e:
                _log.error("%s could not send the alert (%s): %r", self, alert.summary(), e)
                ok = False
            else:
                ok = True
            with self._lock:
                if ok:
                    self.sent += 1
                else:
                    self.failed += 1
                self._pending -= 1
                self._idle.notify_all()

    def flush(self, timeout: float | None = None) -> bool:
        """Waits until every alert sent so far is delivered or given up; False on timeout."""
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._lock:
            while self._pending:
                left = None if deadline is None else deadline - time.monotonic()
                if left is not None and left <= 0:
                    return False
                self._idle.wait(left)
        return True

    def close(self, timeout: float | None = 10.0) -> None:
        """Delivers what is queued (waiting at most ``timeout`` seconds), then stops the thread."""
        self.flush(timeout)
        with self._lock:
            thread = self._thread
        if thread is not None and thread.is_alive():
            self._queue.put(None)

    def deliver(self, alert: Alert) -> None:  # pragma: no cover - abstract
        raise NotImplementedError


class _Webhook(Notifier):
    def __init__(
        self,
        url: str,
        timeout: float,
        retries: int,
        backoff: float,
        headers: dict[str, str] | None,
    ) -> None:
        super().__init__()
        if urllib.parse.urlsplit(url).scheme not in ("http", "https"):
            raise ValueError(f"a webhook needs an http:// or https:// URL, got {url!r}")
        if isinstance(retries, bool) or not isinstance(retries, int) or retries < 0:
            raise ValueError(f"retries must be a non-negative int, got {retries!r}")
        if not timeout > 0:
            raise ValueError(f"timeout must be positive, got {timeout!r}")
        self.url = url
        self.timeout = float(timeout)
        self.retries = retries
        self.backoff = float(backoff)
        self.headers = {"Content-Type": "application/json", "User-Agent": "tm-notify"}
        self.headers.update(headers or {})
        #: Every attempt's outcome: an HTTP status, or the connection error's text.
        self.attempts: list[int | str] = []

    def deliver(self, alert: Alert) -> None:
        body = json.dumps(alert.to_dict()).encode()
        for i in range(self.retries + 1):
            req = urllib.request.Request(self.url, data=body, headers=self.headers, method="POST")
            try:
                with urllib.request.urlopen(req, timeout=self.timeout) as resp:
                    self.attempts.append(resp.status)
                    return
            except urllib.error.HTTPError as e:
                self.attempts.append(e.code)
                if e.code < 500 or i == self.retries:
                    raise  # a 4xx will not get better by asking again
                why = f"HTTP {e.code}"
            except (urllib.error.URLError, OSError) as e:
                self.attempts.append(str(e))
                if i == self.retries:
                    raise
                why = str(e)
            delay = self.backoff * 2**i
            _log.warning("webhook %s: %s; retrying in %.1fs", self.url, why, delay)
            time.sleep(delay)

    def __repr__(self) -> str:
        return f"tm.notify.webhook({self.url!r})"


def webhook(
    url: str,
    *,
    timeout: float = 10.0,
    retries: int = 3,
    backoff: float = 1.0,
    headers: dict[str, str] | None = None,
) -> Notifier:
    """A notifier that POSTs each alert as JSON (:meth:`Alert.to_dict`) to ``url``.

    A connection error or a 5xx answer is retried ``retries`` times, waiting ``backoff`` seconds,
    then twice that, and so on; a 4xx answer is not retried."""
    return _Webhook(url, timeout, retries, backoff, headers)


class _Email(Notifier):
    def __init__(
        self,
        host: str,
        port: int,
        sender: str,
        to: list[str],
        username: str | None,
        password: str | None,
        starttls: bool,
        timeout: float,
    ) -> None:
        super().__init__()
        if not to:
            raise ValueError("email() needs at least one recipient")
        self.host, self.port, self.sender, self.to = host, port, sender, to
        self.username, self.password, self.starttls = username, password, starttls
        self.timeout = timeout

    def deliver(self, alert: Alert) -> None:
        msg = EmailMessage()
        msg["Subject"] = f"tm: {alert.summary()}"[:200]
        msg["From"] = self.sender
        msg["To"] = ", ".join(self.to)
        lines = [f"{k}: {v}" for k, v in alert.to_dict().items() if v is not None]
        msg.set_content("\n".join(lines) + "\n")
        with smtplib.SMTP(self.host, self.port, timeout=self.timeout) as smtp:
            if self.starttls:
                smtp.starttls()
            if self.username is not None:
                smtp.login(self.username, self.password or "")
            smtp.send_message(msg)

    def __repr__(self) -> str:
        return f"tm.notify.email({self.host!r}, {self.port})"


def email(
    host: str,
    port: int,
    sender: str,
    to: str | list[str],
    *,
    username: str | None = None,
    password: str | None = None,
    starttls: bool = False,
    timeout: float = 30.0,
) -> Notifier:
    """A notifier that mails each alert through the SMTP server ``host:port``."""
    return _Email(
        host,
        int(port),
        sender,
        [to] if isinstance(to, str) else list(to),
        username,
        password,
        starttls,
        timeout,
    )


def from_url(url: str) -> Notifier:
    """The notifier a URL names (``tm start --notify URL``): ``http(s)://...`` is a
    :func:`webhook`; ``smtp://[user:password@]host[:port]?from=ADDR&to=ADDR[,ADDR]&starttls=1``
    and ``mailto:ADDR[,ADDR]`` (through ``localhost:25``) are :func:`email`."""
    parts = urllib.parse.urlsplit(url)
    if parts.scheme in ("http", "https"):
        return webhook(url)
    sender = f"tm@{socket.gethostname()}"
    if parts.scheme == "mailto":
        to = [a for a in urllib.parse.unquote(parts.path).split(",") if a]
        return email("localhost", 25, sender, to)
    if parts.scheme == "smtp":
        q = urllib.parse.parse_qs(parts.query)
        to = [a for v in q.get("to", []) for a in v.split(",") if a]
        return email(
            parts.hostname or "localhost",
            parts.port or 25,
            q.get("from", [sender])[0],
            to,
            username=None if parts.username is None else urllib.parse.unquote(parts.username),
            password=None if parts.password is None else urllib.parse.unquote(parts.password),
            starttls=q.get("starttls", ["0"])[0].lower() in ("1", "true", "yes"),
        )
    raise ValueError(f"--notify needs an http(s)://, smtp:// or mailto: URL, got {url!r}")


class _Alerts(Observer):
    """Turns failed runs and missed fires into alerts for ``on_failure``."""

    def __init__(self, target: Callable[[Alert], Any]) -> None:
        if not callable(target):
            raise TypeError(f"on_failure must be callable or a tm.notify notifier, got {target!r}")
        self.target = target

    def run_ended(self, ctx: RunContext, run: Any) -> None:
        if run.state == "failed":
            self.target(run_alert(run))

    def missed(self, graph: str, scheduled_us: int, count: int, through_us: int) -> None:
        self.target(
            Alert("fire_missed", graph, scheduled_at=_iso_us(scheduled_us), count=count, at=_now())
        )

    def close(self) -> None:
        if isinstance(self.target, Notifier):
            with contextlib.suppress(Exception):
                self.target.close()


def alerts(target: Callable[[Alert], Any]) -> Observer:
    """The observer behind ``Executor(on_failure=target)``."""
    return _Alerts(target)
