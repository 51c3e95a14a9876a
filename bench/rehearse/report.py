"""The rehearsal's report: a JSON summary and one self-contained HTML page with the plots
(latency and throughput over time with the fault windows shaded, events accepted vs
logged, the version each replica served, errors by kind) and the check table."""

from __future__ import annotations

import base64
import html
import io
import json
import math
from collections import Counter, defaultdict
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np

from bench.rehearse.checks import Result
from bench.rehearse.ledger import Ledger, Window

BUCKET_S = 5.0
STYLE = (
    "body{font:14px sans-serif;margin:2em;max-width:1200px}td{padding:2px 8px;vertical-align:top}"
    "tr.pass td:first-child{color:#080}tr.fail td:first-child,tr.skip td:first-child{color:#b00}"
    "img{max-width:100%}pre{background:#f6f6f6;padding:1em;overflow:auto}"
)
ENDPOINTS = ("recommend", "search", "similar", "item", "event", "events_batch", "admin_write")
COLORS = {"retrain": "#9ecae1"}


def _png(fig: Any) -> str:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=90, bbox_inches="tight")
    plt.close(fig)
    return base64.b64encode(buf.getvalue()).decode()


def _shade(ax: Any, windows: list[Window], horizon: float) -> None:
    for w in windows:
        end = w.end if w.end is not None else horizon
        ax.axvspan(w.start, max(end, w.start + 1), color=COLORS.get(w.name, "#fdae6b"), alpha=0.35)
        ax.text(w.start, 1.0, w.name, transform=ax.get_xaxis_transform(), fontsize=7,
                rotation=90, va="top", ha="right")  # fmt: skip


def plot_latency(ledger: Ledger, windows: list[Window], horizon: float) -> str:
    fig, ax = plt.subplots(figsize=(11, 4))
    for ep in ENDPOINTS:
        buckets: dict[int, list[float]] = defaultdict(list)
        for c in ledger.calls:
            if c.endpoint == ep and c.role in ("shopper", "admin") and 200 <= c.status < 300:
                buckets[int(c.t // BUCKET_S)].append(c.ms)
        if not buckets:
            continue
        xs = sorted(buckets)
        ax.plot(
            [x * BUCKET_S for x in xs],
            [np.percentile(buckets[x], 99) for x in xs],
            label=f"{ep} p99",
            lw=1,
        )
        p50 = [np.percentile(buckets[x], 50) for x in xs]
        color = ax.lines[-1].get_color()
        ax.plot([x * BUCKET_S for x in xs], p50, ls=":", lw=1, color=color)
    _shade(ax, windows, horizon)
    ax.set_yscale("log")
    ax.set(
        xlabel="seconds",
        ylabel="latency ms (p99 solid, p50 dotted)",
        title="Latency per endpoint, 5-s buckets",
    )
    ax.legend(fontsize=7, ncol=4)
    return _png(fig)


def plot_throughput(ledger: Ledger, windows: list[Window], horizon: float) -> str:
    fig, ax = plt.subplots(figsize=(11, 3.5))
    classes: dict[str, Counter[int]] = defaultdict(Counter)
    for c in ledger.calls:
        if c.role == "probe":
            continue
        k = "2xx" if 200 <= c.status < 300 else "4xx" if 400 <= c.status < 500 else c.kind
        classes[k][int(c.t // BUCKET_S)] += 1
    n = int(horizon // BUCKET_S) + 1
    xs = np.arange(n) * BUCKET_S
    bottom = np.zeros(n)
    for k, counts in sorted(classes.items(), key=lambda kv: -sum(kv[1].values())):
        ys = np.array([counts.get(i, 0) / BUCKET_S for i in range(n)])
        ax.bar(xs, ys, width=BUCKET_S, bottom=bottom, align="edge", label=k)
        bottom += ys
    _shade(ax, windows, horizon)
    ax.set(xlabel="seconds", ylabel="requests/s", title="Throughput by answer")
    ax.legend(fontsize=7, ncol=5)
    return _png(fig)


def plot_events(ledger: Ledger, windows: list[Window], horizon: float) -> str:
    fig, ax = plt.subplots(figsize=(11, 3.5))
    ok = sorted(e.t for e in ledger.events if e.outcome == "ok")
    ax.step(ok, np.arange(1, len(ok) + 1), where="post", label="answered 200 (cumulative)")
    if ledger.log_rows:
        base = ledger.log_rows[0][1]
        ax.plot(
            [t for t, _ in ledger.log_rows],
            [n - base for _, n in ledger.log_rows],
            label="rows added to the log",
        )
    _shade(ax, windows, horizon)
    ax.set(xlabel="seconds", ylabel="events", title="Events accepted vs logged")
    ax.legend(fontsize=8)
    return _png(fig)


def plot_versions(
    ledger: Ledger, current: list[tuple[float, str]], windows: list[Window], horizon: float
) -> str:
    fig, ax = plt.subplots(figsize=(11, 3.5))
    order: list[str] = []
    for v in [v for _, v in current] + [s.version or "" for s in ledger.samples]:
        if v and v not in order:
            order.append(v)
    idx = {v: i for i, v in enumerate(sorted(order))}
    if current:
        ax.step(
            [t for t, _ in current],
            [idx.get(v, -1) for _, v in current],
            where="post",
            label="store CURRENT",
            lw=3,
            alpha=0.4,
        )
    for name in sorted({s.replica for s in ledger.samples}):
        pts = [
            (s.t, idx.get(s.version or "", math.nan)) for s in ledger.samples if s.replica == name
        ]
        ax.plot([p[0] for p in pts], [p[1] for p in pts], ".", ms=3, label=f"replica {name}")
    _shade(ax, windows, horizon)
    ax.set(
        xlabel="seconds",
        ylabel="version (index, by name)",
        title="Version served per replica (gaps: not ready)",
    )
    ax.legend(fontsize=8)
    return _png(fig)


def plot_errors(ledger: Ledger) -> str:
    counts: Counter[str] = Counter()
    for c in ledger.calls:
        if not 200 <= c.status < 300 and c.role != "probe":
            counts[f"{c.role} {c.endpoint} {c.kind}"] += 1
    fig, ax = plt.subplots(figsize=(11, max(2.0, 0.25 * len(counts) + 1)))
    labels = [k for k, _ in counts.most_common(25)]
    ax.barh(labels[::-1], [counts[k] for k in labels[::-1]])
    ax.set(xlabel="answers", title="Answers other than 2xx, by role, endpoint and kind")
    ax.tick_params(axis="y", labelsize=7)
    return _png(fig)


def images(ledger: Ledger, current: list[tuple[float, str]]) -> dict[str, str]:
    if not ledger.calls:
        return {}
    h, w = ledger.now(), ledger.windows
    return {
        "Latency": plot_latency(ledger, w, h),
        "Throughput": plot_throughput(ledger, w, h),
        "Events accepted vs logged": plot_events(ledger, w, h),
        "Versions per replica": plot_versions(ledger, current, w, h),
        "Errors by kind": plot_errors(ledger),
    }


def summary(results: list[Result], ledger: Ledger, meta: dict[str, Any]) -> dict[str, Any]:
    passed = sum(r.passed for r in results)
    return {
        **meta,
        "checks": [
            {"name": r.name, "status": r.status, "reason": r.reason, "figures": r.figures}
            for r in results
        ],
        "passed": passed,
        "failed": len(results) - passed,
        "faults": [
            {
                "name": w.name,
                "start_s": round(w.start, 1),
                "end_s": None if w.end is None else round(w.end, 1),
                "notes": w.notes,
                "detail": w.detail,
            }
            for w in ledger.windows
        ],
        "requests": len(ledger.calls),
        "events": Counter(f"{e.type} {e.via} {e.outcome}" for e in ledger.events),
        "catalog_writes_detail": [
            f"{w.t_sent:.1f}s {w.op} {w.item_id} {w.status} on {w.replica} "
            f"propagated {'never' if w.propagation_s is None else f'{w.propagation_s:.1f}s'}"
            + (" (concurrent pair)" if w.concurrent else "")
            for w in ledger.writes
        ],
        "catalog_writes": Counter(w.outcome for w in ledger.writes),
        "forgotten": len(ledger.forgotten),
        "search_top5": dict(ledger.search_hits),
        "setup": ledger.setup,
        "notes": ledger.notes[-200:],
    }


def write(out: Path, stem: str, data: dict[str, Any], images: dict[str, str]) -> tuple[Path, Path]:
    out.mkdir(parents=True, exist_ok=True)
    jpath = out / f"{stem}.json"
    jpath.write_text(json.dumps(data, indent=2, default=str))
    rows = "".join(
        f"<tr class='{c['status'].split('-')[0].lower()}'><td>{c['status']}</td>"
        f"<td>{html.escape(c['name'])}</td><td>{html.escape(c['reason'])}</td></tr>"
        for c in data["checks"]
    )
    rest = {k: v for k, v in data.items() if k not in ("checks", "notes")}
    head = "<br>".join(
        html.escape(str(x))
        for x in (data.get("command", ""), f"{data.get('machine', '')}, {data.get('date', '')}")
    )
    imgs = "".join(
        f"<h2>{html.escape(t)}</h2><img src='data:image/png;base64,{b}'>" for t, b in images.items()
    )
    page = f"""<!doctype html><meta charset="utf-8"><title>fusionrec rehearsal</title>
<style>{STYLE}</style>
<h1>Rehearsal: {data["passed"]} checks passed, {data["failed"]} failed</h1>
<p>{head}</p>
<table>{rows}</table>{imgs}
<h2>Summary</h2><pre>{html.escape(json.dumps(rest, indent=1, default=str))}</pre>
<h2>Timeline notes</h2><pre>{html.escape(chr(10).join(data.get("notes", [])))}</pre>"""
    hpath = out / f"{stem}.html"
    hpath.write_text(page)
    return jpath, hpath
