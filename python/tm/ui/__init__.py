"""``tm ui``: a web dashboard over any tm store (SQLite or PostgreSQL), from the optional extra
``tm-orchestrate[ui]`` (Starlette and uvicorn). ``import tm`` never imports this package.

Pages and the JSON API behind them read the store through :class:`tm.Store`; the only writes are
the schedule controls (pause, unpause, trigger), which go to the store as ``tm pause`` and
``tm trigger`` do, so every scheduler sharing it obeys.

Security: :func:`serve` binds to loopback unless told otherwise, and refuses another address
without a token (``token`` or ``$TM_UI_TOKEN``) or an explicit ``insecure``. Every state-changing
request is a POST that must come from the dashboard's own origin and carry its per-process CSRF
token; ``read_only`` refuses them all.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import ipaddress
import json
import os
import secrets
import sys
import time
from typing import Any
from urllib.parse import parse_qs, urlsplit

try:
    from starlette.applications import Starlette
    from starlette.concurrency import run_in_threadpool
    from starlette.middleware import Middleware
    from starlette.middleware.base import BaseHTTPMiddleware
    from starlette.requests import Request
    from starlette.responses import (
        HTMLResponse,
        JSONResponse,
        PlainTextResponse,
        RedirectResponse,
        Response,
        StreamingResponse,
    )
    from starlette.routing import Route
except ImportError as exc:  # pragma: no cover - exercised by the CLI's message
    raise ImportError(
        "tm ui needs the [ui] extra: pip install 'tm-orchestrate[ui]' (starlette and uvicorn)"
    ) from exc

from ..store import Store
from . import _data, _html
from ._openapi import OPENAPI

__all__ = ["UIError", "check_bind", "create_app", "serve"]

#: Seconds between two looks at a running run's states by the live stream.
STREAM_INTERVAL = 0.25
#: The most runs one page or API call lists.
MAX_LIMIT = 1000


class UIError(Exception):
    """The dashboard cannot start as asked (an unsafe bind, a missing store)."""


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def check_bind(host: str, token: str | None, insecure: bool) -> None:
    """Refuses (:class:`UIError`) to serve on a non-loopback address with neither a token nor
    ``insecure``: anyone who can reach the port could otherwise read the history and pause or
    trigger schedules."""
    if _is_loopback(host) or token or insecure:
        return
    raise UIError(
        f"refusing to serve on {host}, which is not a loopback address, without a token: pass "
        "--token T (or set TM_UI_TOKEN) so every request must carry it, or --insecure to serve "
        "it to anyone who can reach the port"
    )


def _int(value: str | None, default: int, lo: int, hi: int) -> int:
    if value is None or value == "":
        return default
    try:
        n = int(value)
    except ValueError:
        raise _BadRequest(f"not a whole number: {value!r}") from None
    if not lo <= n <= hi:
        raise _BadRequest(f"must be between {lo} and {hi}, got {n}")
    return n


class _BadRequest(Exception):
    pass


def create_app(
    store_url: str | None = None,
    *,
    token: str | None = None,
    read_only: bool = False,
    hosts: set[str] | None = None,
    queue: str | None = None,
) -> Starlette:
    """The dashboard as an ASGI application over the store at ``store_url`` (default: as
    :class:`tm.Store`).

    Args:
        store_url: the database URL.
        token: when set, every request must carry it (``Authorization: Bearer T``, the
            ``tm_ui_token`` cookie, or ``?token=T`` once, which sets the cookie).
        read_only: refuse every state-changing request (403).
        queue: an agent queue (``tm.queue.TaskManager``'s state file or database URL) whose
            counts and tasks the queue page shows (read only).
        hosts: when set, the only host names a request's Host header may carry (others get 400):
            a page on another site whose name an attacker points at 127.0.0.1 (DNS rebinding)
            then cannot reach a loopback dashboard. :func:`serve` sets it for loopback binds
            without a token.
    """
    store = Store(store_url)
    csrf = secrets.token_urlsafe(32)
    token_bytes = token.encode() if token else None

    def sync(fn: Any, *args: Any, **kw: Any) -> Any:
        return run_in_threadpool(fn, *args, **kw)

    def wants_json(request: Request) -> bool:
        return request.url.path.startswith("/api/")

    def fail(request: Request, status: int, message: str) -> Response:
        if wants_json(request):
            return JSONResponse({"error": message}, status_code=status)
        return HTMLResponse(_html.error(status, message, csrf), status_code=status)

    # -- reading -------------------------------------------------------------------------------

    def runs_query(request: Request) -> dict[str, Any]:
        q = request.query_params
        state = q.get("state") or None
        if state is not None and state not in _data.RUN_STATES:
            raise _BadRequest(f"state must be one of {', '.join(_data.RUN_STATES)}")
        before = q.get("before") or None
        if before is not None:
            try:
                _data.decode_cursor(before)
            except ValueError as exc:
                raise _BadRequest(str(exc)) from None
        return {
            "graph": q.get("graph") or None,
            "state": state,
            "trigger": q.get("trigger") or None,
            "before": before,
            "limit": _int(q.get("limit"), 50, 1, MAX_LIMIT),
        }

    async def runs_page(request: Request) -> Response:
        f = runs_query(request)
        data = await sync(_data.runs_page, store, **f)
        names = await sync(lambda: sorted(g["name"] for g in store.core.graphs()))
        filters = {k: f[k] for k in ("graph", "state", "trigger", "before")}
        if f["limit"] != 50:
            filters["limit"] = f["limit"]
        return HTMLResponse(_html.runs(data, filters, names, csrf))

    async def api_runs(request: Request) -> Response:
        return JSONResponse(await sync(_data.runs_page, store, **runs_query(request)))

    async def run_page(request: Request) -> Response:
        detail = await sync(_data.run_detail, store, request.path_params["run_id"])
        if detail is None:
            return fail(request, 404, f"no run {request.path_params['run_id']!r}")
        return HTMLResponse(_html.run(detail, csrf, _data.now_us()))

    async def api_run(request: Request) -> Response:
        detail = await sync(_data.run_detail, store, request.path_params["run_id"])
        if detail is None:
            return fail(request, 404, f"no run {request.path_params['run_id']!r}")
        return JSONResponse(detail)

    async def task_page(request: Request) -> Response:
        p = request.path_params
        detail = await sync(_data.task_detail, store, p["run_id"], p["task"])
        if detail is None:
            return fail(request, 404, f"no task {p['task']!r} in run {p['run_id']!r}")
        if wants_json(request):
            return JSONResponse(detail)
        return HTMLResponse(_html.task(detail, csrf))

    async def logs_page(request: Request) -> Response:
        rid = request.path_params["run_id"]
        if await sync(store.core.get_run, rid) is None:
            return fail(request, 404, f"no run {rid!r}")
        task: int | str | None = request.query_params.get("task") or None
        if isinstance(task, str) and task.isdigit():
            task = int(task)
        rows = await sync(store.core.logs, rid, task)
        if wants_json(request):
            return JSONResponse(rows)
        return HTMLResponse(_html.logs(rid, rows, csrf))

    async def stream(request: Request) -> Response:
        """Server-sent events: the run's state and the tasks whose state changed, until it ends."""
        rid = request.path_params["run_id"]
        first = await sync(_data.run_states, store, rid)
        if first is None:
            return fail(request, 404, f"no run {rid!r}")

        async def events() -> Any:
            seen: dict[str, Any] = {}
            current = first
            while True:
                changed = {k: v for k, v in current["tasks"].items() if seen.get(k) != v}
                seen.update(changed)
                if changed or current["state"] != "running":
                    msg = {"state": current["state"], "tasks": changed}
                    yield f"data: {json.dumps(msg)}\n\n"
                if current["state"] != "running" or await request.is_disconnected():
                    return
                await asyncio.sleep(STREAM_INTERVAL)
                nxt = await sync(_data.run_states, store, rid)
                if nxt is None:
                    return
                current = nxt

        return StreamingResponse(
            events(), media_type="text/event-stream", headers={"Cache-Control": "no-store"}
        )

    async def graphs_page(request: Request) -> Response:
        rows = await sync(_data.graphs, store)
        if wants_json(request):
            return JSONResponse(rows)
        return HTMLResponse(_html.graphs(rows, csrf, read_only))

    async def cache_page(request: Request) -> Response:
        q = request.query_params
        data = await sync(
            _data.cache, store, q.get("func") or None, _int(q.get("limit"), 200, 1, MAX_LIMIT)
        )
        if wants_json(request):
            return JSONResponse(data)
        return HTMLResponse(_html.cache(data, csrf))

    async def events_page(request: Request) -> Response:
        rows = await sync(
            _data.events, store, _int(request.query_params.get("limit"), 100, 1, MAX_LIMIT)
        )
        if wants_json(request):
            return JSONResponse(rows)
        return HTMLResponse(_html.events(rows, csrf))

    manager: Any = None

    async def queue_page(request: Request) -> Response:
        nonlocal manager
        if queue is None:
            return fail(request, 404, "no agent queue: start tm ui with --queue PATH")
        if manager is None:
            from ..queue import TaskManager

            manager = TaskManager(queue)
        q = request.query_params
        status = q.get("status") or None
        if status is not None and status not in _html.QUEUE_STATES:
            raise _BadRequest(f"status must be one of {', '.join(_html.QUEUE_STATES)}")
        limit = _int(q.get("limit"), 200, 1, MAX_LIMIT)
        data = await sync(
            lambda: {
                "summary": manager.get_status_summary(),
                "tasks": manager.list_tasks(status=status, limit=limit),
            }
        )
        if wants_json(request):
            return JSONResponse(data)
        return HTMLResponse(_html.queue(data, queue, csrf))

    async def openapi(request: Request) -> Response:
        return JSONResponse(OPENAPI)

    async def live_js(request: Request) -> Response:
        return Response(_html.LIVE_JS, media_type="text/javascript")

    async def api_csrf(request: Request) -> Response:
        return JSONResponse({"csrf": csrf, "read_only": read_only})

    # -- schedule controls (POST, same origin, CSRF token) --------------------------------------

    async def control(request: Request) -> Response:
        name = request.path_params["name"]
        action = request.path_params["action"]
        form_token = None
        params: dict[str, Any] = {}
        ctype = request.headers.get("content-type", "")
        if ctype.startswith("application/x-www-form-urlencoded"):
            # The dashboard's own forms: parsed here, so the extra needs no multipart library.
            body = (await request.body())[:65536].decode("utf-8", "replace")
            form_token = (parse_qs(body).get("csrf") or [None])[0]
        elif ctype.startswith("application/json"):
            try:
                body = await request.json()
            except ValueError:
                return fail(request, 400, "the body is not JSON")
            if not isinstance(body, dict):
                return fail(request, 400, "the body must be a JSON object")
            params = body.get("params") or {}
            if not isinstance(params, dict):
                return fail(request, 400, "params must be a JSON object")
        sent = request.headers.get("x-csrf-token") or form_token
        if read_only:
            return fail(request, 403, "this dashboard is read-only (--read-only)")
        if not isinstance(sent, str) or not hmac.compare_digest(sent.encode(), csrf.encode()):
            return fail(request, 403, "missing or wrong CSRF token")
        if action not in ("pause", "unpause", "trigger"):
            return fail(request, 404, f"no action {action!r}")
        if await sync(store.core.graph, name) is None:
            return fail(request, 404, f"no graph {name!r} in the store")

        def act() -> Any:
            from ..executor import process_owner

            now = int(time.time() * 1e6)
            if action == "pause":
                return store.core.pause(name, now, process_owner())
            if action == "unpause":
                return store.core.unpause(name) is not None
            return store.core.request_trigger(name, json.dumps(params), now, process_owner())

        try:
            result = await sync(act)
        except Exception as exc:
            return fail(request, 500, f"cannot {action} {name}: {exc}")
        if wants_json(request):
            key = "trigger_id" if action == "trigger" else "changed"
            return JSONResponse({"graph": name, "action": action, key: result})
        return RedirectResponse("/graphs", status_code=303)

    routes = [
        Route("/", runs_page),
        Route("/runs/{run_id}", run_page),
        Route("/runs/{run_id}/logs", logs_page),
        Route("/runs/{run_id}/tasks/{task}", task_page),
        Route("/graphs", graphs_page),
        Route("/graphs/{name}/{action}", control, methods=["POST"]),
        Route("/cache", cache_page),
        Route("/events", events_page),
        Route("/queue", queue_page),
        Route("/api/queue", queue_page),
        Route("/api/runs", api_runs),
        Route("/api/runs/{run_id}", api_run),
        Route("/api/runs/{run_id}/logs", logs_page),
        Route("/api/runs/{run_id}/tasks/{task}", task_page),
        Route("/api/runs/{run_id}/stream", stream),
        Route("/api/graphs", graphs_page),
        Route("/api/graphs/{name}/{action}", control, methods=["POST"]),
        Route("/api/cache", cache_page),
        Route("/api/events", events_page),
        Route("/api/csrf", api_csrf),
        Route("/api/openapi.json", openapi),
        Route("/static/live.js", live_js),
    ]

    def same_origin(request: Request) -> bool:
        """A browser names the page a POST comes from (Origin, else Referer): it must be this
        dashboard. A request naming neither (curl, scripts) still needs the CSRF token."""
        origin = request.headers.get("origin") or request.headers.get("referer")
        if not origin:
            return True
        if origin == "null":
            return False
        parts = urlsplit(origin)
        return parts.netloc == request.headers.get("host", "") and parts.scheme in (
            "http",
            "https",
        )

    def authorised(request: Request) -> bool:
        if token_bytes is None:
            return True
        auth = request.headers.get("authorization", "")
        for candidate in (
            auth[7:] if auth.lower().startswith("bearer ") else "",
            request.cookies.get("tm_ui_token", ""),
            request.query_params.get("token", ""),
        ):
            if candidate and hmac.compare_digest(candidate.encode(), token_bytes):
                return True
        return False

    def host_allowed(request: Request) -> bool:
        if hosts is None:
            return True
        host = request.headers.get("host", "")
        name = host.rsplit(":", 1)[0] if not host.endswith("]") else host
        return name.strip("[]").lower() in hosts

    async def guard(request: Request, call_next: Any) -> Response:
        if not host_allowed(request):
            return PlainTextResponse("unexpected Host header", status_code=400)
        if not authorised(request):
            return PlainTextResponse("a token is required (see tm ui --token)", status_code=401)
        if request.method not in ("GET", "HEAD") and not same_origin(request):
            return fail(request, 403, "cross-origin request refused")
        try:
            response = await call_next(request)
        except _BadRequest as exc:
            return fail(request, 400, str(exc))
        if token_bytes is not None and request.query_params.get("token"):
            response.set_cookie(
                "tm_ui_token", token or "", httponly=True, samesite="strict", path="/"
            )
        response.headers.setdefault("X-Content-Type-Options", "nosniff")
        response.headers.setdefault("X-Frame-Options", "DENY")
        response.headers.setdefault("Referrer-Policy", "same-origin")
        response.headers.setdefault(
            "Content-Security-Policy",
            "default-src 'self'; style-src 'unsafe-inline'; script-src 'self'; "
            "frame-ancestors 'none'",
        )
        return response

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> Any:
        yield
        store.close()  # the server stops: its database connections go too

    app = Starlette(
        routes=routes,
        middleware=[Middleware(BaseHTTPMiddleware, dispatch=guard)],
        lifespan=lifespan,
    )
    app.state.store = store
    app.state.csrf = csrf
    app.state.read_only = read_only
    return app


def serve(
    store_url: str | None = None,
    *,
    host: str = "127.0.0.1",
    port: int = 8265,
    token: str | None = None,
    insecure: bool = False,
    read_only: bool = False,
    queue: str | None = None,
) -> None:
    """Serves the dashboard until interrupted (see :func:`create_app`); ``token`` defaults to
    ``$TM_UI_TOKEN``. Raises :class:`UIError` for a non-loopback ``host`` with neither a token
    nor ``insecure``."""
    import uvicorn

    token = token or os.environ.get("TM_UI_TOKEN") or None
    check_bind(host, token, insecure)
    hosts = None
    if token is None and _is_loopback(host):
        hosts = {"localhost", "127.0.0.1", "::1", host.strip("[]").lower()}
    app = create_app(store_url, token=token, read_only=read_only, hosts=hosts, queue=queue)

    class Server(uvicorn.Server):
        async def startup(self, sockets: Any = None) -> None:
            await super().startup(sockets=sockets)
            if self.started:  # listening now: say where (the port chosen, for --port 0)
                bound = self.servers[0].sockets[0].getsockname()[1] if self.servers else port
                where = f"[{host}]" if ":" in host else host
                print(f"tm ui: serving on http://{where}:{bound}/", file=sys.stderr, flush=True)

    Server(uvicorn.Config(app, host=host, port=port, log_level="warning")).run()
