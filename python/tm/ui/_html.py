"""Server-rendered pages. Every value that comes from the store goes through :func:`e` (HTML
escaping of text and attribute values), so a task name, log line or error message is shown as
text and can never become markup or script."""

from __future__ import annotations

import html
import json
from collections.abc import Iterable
from datetime import datetime, timezone
from typing import Any
from urllib.parse import quote, urlencode

from . import _data

CSS = """
body{font:14px/1.4 system-ui,sans-serif;margin:0;color:#222}
nav{background:#223;padding:8px 16px}nav a{color:#fff;margin-right:16px;text-decoration:none}
main{padding:12px 16px}table{border-collapse:collapse}td,th{padding:3px 8px;border-bottom:1px solid #ddd;text-align:left;vertical-align:top}
.s-completed{color:#1a7f37}.s-failed{color:#cf222e}.s-running{color:#0969da}.s-retrying{color:#bf8700}
.s-pending{color:#777}.s-cancelled,.s-skipped{color:#8250df}
rect.s-completed{fill:#d2f4dc;stroke:#1a7f37}rect.s-failed{fill:#ffd8d3;stroke:#cf222e}
rect.s-running{fill:#d6e8ff;stroke:#0969da}rect.s-retrying{fill:#fff1c2;stroke:#bf8700}
rect.s-pending{fill:#f4f4f4;stroke:#999}rect.s-cancelled,rect.s-skipped{fill:#eee3ff;stroke:#8250df}
pre{background:#f6f8fa;padding:8px;overflow:auto;max-height:400px}
form.inline{display:inline}.muted{color:#777}svg text{font-size:11px}
"""


def e(value: Any) -> str:
    """``value`` as HTML text, safe in element content and in quoted attribute values."""
    return html.escape("" if value is None else str(value), quote=True)


def when(us: int | None) -> str:
    if us is None:
        return "-"
    return datetime.fromtimestamp(us / 1e6, timezone.utc).strftime("%Y-%m-%d %H:%M:%S")


def duration(start: int | None, end: int | None) -> str:
    if start is None or end is None:
        return "-"
    s = (end - start) / 1e6
    return f"{s:.3f}s" if s < 60 else f"{s / 60:.1f}min"


def page(title: str, body: str, csrf: str, *, live: str | None = None) -> str:
    return (
        "<!doctype html><html><head><meta charset='utf-8'>"
        f"<meta name='csrf-token' content='{e(csrf)}'>"
        f"<title>{e(title)} - tm</title><style>{CSS}</style></head><body>"
        "<nav><a href='/'>Runs</a><a href='/graphs'>Graphs</a><a href='/cache'>Cached calls</a>"
        "<a href='/events'>Events</a><a href='/queue'>Agent queue</a><a href='/api/openapi.json'>API</a></nav>"
        f"<main><h1>{e(title)}</h1>{body}</main>"
        + (
            f"<div id='live' data-run='{e(live)}' hidden></div><script src='/static/live.js'></script>"
            if live is not None
            else ""
        )
        + "</body></html>"
    )


def _options(values: Iterable[str], chosen: str | None) -> str:
    out = ["<option value=''>any</option>"]
    for v in values:
        sel = " selected" if v == chosen else ""
        out.append(f"<option value='{e(v)}'{sel}>{e(v)}</option>")
    return "".join(out)


def _run_link(run_id: str) -> str:
    return f"<a href='/runs/{e(quote(run_id))}'>{e(run_id[:12])}</a>"


def runs(data: dict[str, Any], filters: dict[str, Any], graph_names: list[str], csrf: str) -> str:
    rows = []
    for r in data["runs"]:
        rows.append(
            f"<tr class='run' data-run='{e(r['run_id'])}'><td>{_run_link(r['run_id'])}</td>"
            f"<td><a href='/?{e(urlencode({'graph': r['graph']}))}'>{e(r['graph'])}</a></td>"
            f"<td class='s-{e(r['state'])}'>{e(r['state'])}</td><td>{e(r['trigger'])}</td>"
            f"<td>{when(r['started_us'] or r['created_us'])}</td>"
            f"<td>{duration(r['started_us'], r['ended_us'])}</td></tr>"
        )
    form = (
        "<form method='get' action='/'>"
        f"graph <select name='graph'>{_options(graph_names, filters.get('graph'))}</select> "
        f"state <select name='state'>{_options(_data.RUN_STATES, filters.get('state'))}</select> "
        f"trigger <select name='trigger'>{_options(_data.TRIGGERS, filters.get('trigger'))}"
        "</select> <button>Filter</button></form>"
    )
    nav = ""
    if data["next"]:
        q = {k: v for k, v in filters.items() if v} | {"before": data["next"]}
        nav = f"<p><a id='older' href='/?{e(urlencode(q))}'>Older runs &rarr;</a></p>"
    if filters.get("before"):
        q = {k: v for k, v in filters.items() if v and k != "before"}
        nav += f"<p><a href='/?{e(urlencode(q))}'>&larr; Newest</a></p>"
    table = (
        "<table id='runs'><tr><th>run</th><th>graph</th><th>state</th><th>trigger</th>"
        "<th>started (UTC)</th><th>duration</th></tr>" + "".join(rows) + "</table>"
        if rows
        else "<p class='muted'>No runs.</p>"
    )
    return page("Runs", form + table + nav, csrf)


def _layout(tasks: list[dict[str, Any]], edges: list[list[int]]) -> dict[int, tuple[int, int]]:
    """Layers: a task's column is the longest path from a root to it; rows in node order."""
    nodes = [t["node"] for t in tasks]
    known = set(nodes)
    parents: dict[int, list[int]] = {n: [] for n in nodes}
    for a, b in edges:
        if a in known and b in known:
            parents[b].append(a)
    level: dict[int, int] = {}
    for n in sorted(nodes):  # nodes are added after their parents: index order is topological
        level[n] = 1 + max((level.get(p, 0) for p in parents[n]), default=-1)
    rows: dict[int, int] = {}
    pos = {}
    for n in sorted(nodes):
        col = level[n]
        pos[n] = (col, rows.get(col, 0))
        rows[col] = rows.get(col, 0) + 1
    return pos


NODE_W, NODE_H, GAP_X, GAP_Y = 150, 24, 40, 10


def graph_svg(tasks: list[dict[str, Any]], edges: list[list[int]]) -> str:
    pos = _layout(tasks, edges)
    if not pos:
        return "<p class='muted'>No tasks.</p>"
    width = (max(c for c, _ in pos.values()) + 1) * (NODE_W + GAP_X)
    height = (max(r for _, r in pos.values()) + 1) * (NODE_H + GAP_Y)
    parts = [
        f"<svg id='graph' xmlns='http://www.w3.org/2000/svg' width='{width}' height='{height}'>"
    ]
    for a, b in edges:
        if a in pos and b in pos:
            (ca, ra), (cb, rb) = pos[a], pos[b]
            x1 = ca * (NODE_W + GAP_X) + NODE_W
            y1 = ra * (NODE_H + GAP_Y) + NODE_H // 2
            x2 = cb * (NODE_W + GAP_X)
            y2 = rb * (NODE_H + GAP_Y) + NODE_H // 2
            parts.append(f"<line x1='{x1}' y1='{y1}' x2='{x2}' y2='{y2}' stroke='#999'/>")
    for t in tasks:
        c, r = pos[t["node"]]
        x, y = c * (NODE_W + GAP_X), r * (NODE_H + GAP_Y)
        name = t["name"] if len(t["name"]) <= 22 else t["name"][:21] + "\u2026"
        parts.append(
            f"<a href='#task-{t['node']}'><g class='node' data-node='{t['node']}'>"
            f"<title>{e(t['name'])}: {e(t['status'])}</title>"
            f"<rect class='s-{e(t['status'])}' x='{x}' y='{y}' width='{NODE_W}' "
            f"height='{NODE_H}' rx='4'/>"
            f"<text x='{x + 6}' y='{y + 16}'>{e(name)}</text></g></a>"
        )
    parts.append("</svg>")
    return "".join(parts)


def gantt_svg(tasks: list[dict[str, Any]], end_us: int) -> str:
    started = [t for t in tasks if t["started_us"] is not None]
    if not started:
        return "<p class='muted'>No task has started yet.</p>"
    started.sort(key=lambda t: (t["started_us"], t["node"]))
    t0 = started[0]["started_us"]
    t1 = max([end_us, *(t["ended_us"] or end_us for t in started)])
    span = max(t1 - t0, 1)
    width, label, row = 800, 160, 16
    parts = [
        f"<svg id='gantt' xmlns='http://www.w3.org/2000/svg' width='{width + label}' "
        f"height='{len(started) * row + 4}'>"
    ]
    for i, t in enumerate(started):
        x = label + (t["started_us"] - t0) * width // span
        w = max(2, ((t["ended_us"] or end_us) - t["started_us"]) * width // span)
        y = i * row
        parts.append(
            f"<g><title>{e(t['name'])}: {e(t['status'])}, attempt {e(t['attempt'])}, "
            f"{duration(t['started_us'], t['ended_us'])}</title>"
            f"<text x='0' y='{y + 12}'>{e(t['name'][:24])}</text>"
            f"<rect class='s-{e(t['status'])}' x='{x}' y='{y + 2}' width='{w}' height='{row - 4}'/>"
            "</g>"
        )
    parts.append("</svg>")
    return "".join(parts)


def run(detail: dict[str, Any], csrf: str, now_us: int) -> str:
    tasks = detail["tasks"]
    counts: dict[str, int] = {}
    for t in tasks:
        counts[t["status"]] = counts.get(t["status"], 0) + 1
    summary = ", ".join(f"{n} {e(s)}" for s, n in sorted(counts.items()))
    head = (
        f"<p>Graph <a href='/?{e(urlencode({'graph': detail['graph']}))}'>{e(detail['graph'])}"
        f"</a>, state <b id='run-state' class='s-{e(detail['state'])}'>{e(detail['state'])}</b>"
        f" ({e(detail['trigger'])}), started {when(detail['started_us'])}, took "
        f"<span id='run-took'>{duration(detail['started_us'], detail['ended_us'])}</span>."
        f" Tasks: <span id='counts'>{summary}</span>.</p>"
    )
    rows = []
    for t in tasks:
        err = ""
        if t.get("error_type"):
            err = f"{e(t['error_type'])}: {e(t['error_message'])}"
        rows.append(
            f"<tr id='task-{t['node']}' data-node='{t['node']}'>"
            f"<td><a class='task-link' href='/runs/{e(quote(detail['run_id']))}/tasks/{t['node']}'>"
            f"{e(t['name'])}</a></td>"
            f"<td class='status s-{e(t['status'])}'>{e(t['status'])}</td>"
            f"<td class='attempt'>{e(t['attempt'] or 0)}</td>"
            f"<td class='took'>{duration(t['started_us'], t['ended_us'])}</td><td>{err}</td></tr>"
        )
    config = ""
    if detail.get("config") is not None:
        config = f"<h2>Config</h2><pre>{e(json.dumps(detail['config'], indent=2))}</pre>"
    body = (
        head
        + "<h2>Graph</h2><div style='overflow:auto'>"
        + graph_svg(tasks, detail["edges"])
        + "</div><h2>Timeline</h2><div style='overflow:auto'>"
        + gantt_svg(tasks, detail["ended_us"] or now_us)
        + "</div><h2>Tasks</h2><table id='tasks'><tr><th>task</th><th>state</th>"
        "<th>attempts</th><th>took</th><th>error</th></tr>"
        + "".join(rows)
        + "</table>"
        + config
        + f"<p><a href='/api/runs/{e(quote(detail['run_id']))}'>JSON</a> &middot; "
        f"<a href='/runs/{e(quote(detail['run_id']))}/logs'>all logs</a></p>"
    )
    live = detail["run_id"] if detail["state"] == "running" else None
    return page(f"Run {detail['run_id']}", body, csrf, live=live)


# Follows a running run: each server-sent event carries the tasks whose state changed; the page
# recolours their graph node and table row (textContent and class names only: no markup).
LIVE_JS = """
(function(){
  var runId = document.getElementById('live').getAttribute('data-run');
  var src = new EventSource('/api/runs/' + encodeURIComponent(runId) + '/stream');
  function cls(el, s){ el.setAttribute('class', (el.getAttribute('class')||'').replace(/\\bs-[a-z]+/g,'').trim() + ' s-' + s); }
  src.onmessage = function(ev){
    var d = JSON.parse(ev.data);
    Object.keys(d.tasks).forEach(function(node){
      var t = d.tasks[node];
      var rect = document.querySelector("g.node[data-node='" + node + "'] rect");
      if (rect) cls(rect, t[0]);
      var row = document.getElementById('task-' + node);
      if (row) {
        var st = row.querySelector('.status'); st.textContent = t[0]; cls(st, t[0]);
        row.querySelector('.attempt').textContent = t[1] || 0;
      }
    });
    var rs = document.getElementById('run-state'); rs.textContent = d.state; cls(rs, d.state);
    // Once it ends, the page is drawn again whole: timeline, durations, errors.
    if (d.state !== 'running') { src.close(); location.reload(); }
  };
})();
"""


def task(detail: dict[str, Any], csrf: str) -> str:
    rid = detail["run_id"]
    att = []
    for a in detail["attempts"]:
        tb = f"<pre class='traceback'>{e(a['traceback'])}</pre>" if a.get("traceback") else ""
        err = f"{e(a['error_type'])}: {e(a['error_message'])}" if a.get("error_type") else ""
        att.append(
            f"<tr><td>{e(a['attempt'])}</td><td class='s-{e(a['status'])}'>{e(a['status'])}</td>"
            f"<td>{when(a['started_us'])}</td><td>{duration(a['started_us'], a['ended_us'])}</td>"
            f"<td class='error'>{err}{tb}</td></tr>"
        )
    logs = "".join(
        f"<tr><td>{when(r['at_us'])}</td><td>{e(r['level'])}</td><td class='log'>{e(r['message'])}"
        "</td></tr>"
        for r in detail["logs"]
    )
    facts = "".join(
        f"<tr><th>{k}</th><td>{e(detail.get(k))}</td></tr>"
        for k in ("node", "status", "task_key", "inputs_digest", "seed", "code_version")
    )
    body = (
        f"<p>Run {_run_link(rid)} of {e(detail['graph'])}</p><table>{facts}</table>"
        "<h2>Attempts</h2><table id='attempts'><tr><th>#</th><th>state</th><th>started</th>"
        "<th>took</th><th>error</th></tr>" + "".join(att) + "</table>"
        "<h2>Logs</h2><table id='logs'>" + (logs or "<tr><td class='muted'>none</td></tr>")
    ) + "</table>"
    return page(f"Task {detail['name']}", body, csrf)


def logs(run_id: str, rows: list[dict[str, Any]], csrf: str) -> str:
    body = "".join(
        f"<tr><td>{when(r['at_us'])}</td><td>{e(r['level'])}</td><td>{e(r.get('task') or '-')}"
        f"</td><td class='log'>{e(r['message'])}</td></tr>"
        for r in rows
    )
    return page(
        f"Logs of {run_id}", f"<p>{_run_link(run_id)}</p><table id='logs'>{body}</table>", csrf
    )


def _button(action: str, label: str, csrf: str, read_only: bool, extra: str = "") -> str:
    if read_only:
        return ""
    return (
        f"<form class='inline' method='post' action='{e(action)}'>"
        f"<input type='hidden' name='csrf' value='{e(csrf)}'>{extra}"
        f"<button>{e(label)}</button></form>"
    )


def graphs(rows: list[dict[str, Any]], csrf: str, read_only: bool) -> str:
    out = []
    for g in rows:
        name = g["name"]
        base = f"/graphs/{quote(name, safe='')}"
        if g["paused_us"] is not None:
            state = f"<span class='paused'>paused since {when(g['paused_us'])}</span>"
            act = _button(f"{base}/unpause", "Unpause", csrf, read_only)
        else:
            state = e(g["next_fire"] or "-")
            act = _button(f"{base}/pause", "Pause", csrf, read_only) if g["schedule"] else ""
        act += _button(f"{base}/trigger", "Trigger", csrf, read_only) if g["schedule"] else ""
        recent = " ".join(
            f"<a class='s-{e(r['state'])}' title='{e(r['state'])} ({e(r['trigger'])})' "
            f"href='/runs/{e(quote(r['run_id']))}'>&#9679;</a>"
            for r in g["recent_runs"]
        )
        out.append(
            f"<tr class='graph' data-graph='{e(name)}'>"
            f"<td><a href='/?{e(urlencode({'graph': name}))}'>{e(name)}</a></td>"
            f"<td>{e(g['schedule'] or '-')}</td><td>{e(g['tz'] or '')}</td><td>{state}</td>"
            f"<td>{when(g['last_fire_us'])}</td><td>{recent}</td><td>{act}</td></tr>"
        )
    body = (
        "<table id='graphs'><tr><th>graph</th><th>schedule</th><th>tz</th><th>next fire</th>"
        "<th>last fire</th><th>recent runs</th><th></th></tr>" + "".join(out) + "</table>"
        if out
        else "<p class='muted'>No graphs recorded.</p>"
    )
    return page("Graphs and schedules", body, csrf)


def cache(data: dict[str, Any], csrf: str) -> str:
    entries = "".join(
        f"<tr><td>{e(x['module'])}</td><td>{e(x['func'])}</td><td>{e(x['seed'])}</td>"
        f"<td>{when(x['created_us'])}</td><td>{when(x['expires_us'])}</td>"
        f"<td>{e(x['format'])}</td><td>{e(x['size'])}</td>"
        f"<td>{duration(0, x['duration_us']) if x['duration_us'] is not None else '-'}</td>"
        f"<td class='muted'>{e(x['result_path'])}</td></tr>"
        for x in data["entries"]
    )
    states = "".join(
        f"<tr><td>{e(s['module'])}</td><td>{e(s['func'])}</td>"
        f"<td class='s-{e(s['status'])}'>{e(s['status'])}</td><td>{when(s['started_us'])}</td>"
        f"<td>{when(s['ended_us'])}</td>"
        f"<td>{e(s['error_type'] or '')} {e(s['error_message'] or '')}</td></tr>"
        for s in data["states"]
    )
    body = (
        "<h2>Stored results</h2><table id='entries'><tr><th>module</th><th>function</th>"
        "<th>seed</th><th>created</th><th>expires</th><th>format</th><th>bytes</th>"
        "<th>took</th><th>file</th></tr>" + entries + "</table>"
        "<h2>Call states</h2><table id='states'><tr><th>module</th><th>function</th>"
        "<th>state</th><th>started</th><th>ended</th><th>error</th></tr>" + states + "</table>"
    )
    return page("Cached calls", body, csrf)


def events(rows: list[dict[str, Any]], csrf: str) -> str:
    body = "".join(
        f"<tr><td>{when(r['at_us'])}</td><td>{e(r['kind'])}</td>"
        f"<td>{_run_link(r['run_id']) if r.get('run_id') else '-'}</td>"
        f"<td>{e(r.get('detail_json') or '')}</td></tr>"
        for r in rows
    )
    return page("Events", f"<table id='events'>{body}</table>", csrf)


QUEUE_STATES = ("pending", "in_progress", "completed", "failed", "cancelled")


def queue(data: dict[str, Any], where: str, csrf: str) -> str:
    s = data["summary"]
    counts = "".join(
        f"<tr><td class='s-{e(k)}'><a href='/queue?{e(urlencode({'status': k}))}'>{e(k)}</a>"
        f"</td><td class='count'>{e(v)}</td></tr>"
        for k, v in sorted(s["status_counts"].items())
    )
    types = "".join(
        f"<tr><td>{e(k)}</td><td>{e(v)}</td></tr>" for k, v in sorted(s["type_counts"].items())
    )
    tasks = "".join(
        f"<tr><td>{e(t.get('id'))}</td><td>{e(t.get('type'))}</td>"
        f"<td class='s-{e(t.get('status'))}'>{e(t.get('status'))}</td>"
        f"<td>{e(t.get('locked_by') or '')}</td><td>{e(t.get('attempt'))}</td>"
        f"<td>{e(t.get('created_at'))}</td></tr>"
        for t in data["tasks"]
    )
    body = (
        f"<p class='muted'>{e(where)}: {e(s['total_tasks'])} tasks</p>"
        f"<h2>By status</h2><table id='queue-status'>{counts}</table>"
        f"<h2>By type</h2><table id='queue-types'>{types}</table>"
        "<h2>Tasks</h2><table id='queue-tasks'><tr><th>id</th><th>type</th><th>status</th>"
        f"<th>agent</th><th>attempt</th><th>created</th></tr>{tasks}</table>"
    )
    return page("Agent queue", body, csrf)


def error(status: int, message: str, csrf: str) -> str:
    return page(f"Error {status}", f"<p>{e(message)}</p>", csrf)
