"""`DIR/report.html`: the pipeline's report as one self-contained page (inline CSS, inline SVG charts; it
loads nothing, so it opens offline, from CI artifacts and mail attachments alike).

Per backend: the chosen artifact and why, a Pareto chart (latency vs quality, the front joined, the budget
drawn as a line), then the table of candidates (latency with its interval, speed-up, quality, SQNR, size,
what each pass changed) and why each other candidate lost.
"""

from __future__ import annotations

import html
import math
from pathlib import Path

from ..artifacts.files import write_text_atomic
from .pareto import quality, speed_text

CSS = """
body{font:14px/1.45 system-ui,-apple-system,'Segoe UI',Roboto,sans-serif;margin:0;color:#1d232a;background:#f6f7f9}
main{max-width:1180px;margin:0 auto;padding:24px 28px 48px}
h1{font-size:22px;margin:0 0 4px}h2{font-size:18px;margin:28px 0 8px;border-bottom:1px solid #d7dbe0;padding-bottom:4px}
.sub{color:#5b6570;margin:0 0 16px}
.cards{display:flex;flex-wrap:wrap;gap:12px;margin:12px 0}
.card{background:#fff;border:1px solid #d7dbe0;border-radius:8px;padding:12px 16px;min-width:260px;flex:1}
.card b{font-size:18px}.ok{color:#137333}.bad{color:#b3261e}.muted{color:#6b7580}
table{border-collapse:collapse;width:100%;background:#fff;border:1px solid #d7dbe0;margin:8px 0 4px;font-size:13px}
th,td{padding:6px 8px;border-bottom:1px solid #e7eaee;text-align:left;vertical-align:top}
th{background:#eef1f4;font-weight:600}td.n{text-align:right;font-variant-numeric:tabular-nums;white-space:nowrap}
tr.chosen td{background:#e6f4ea}tr.over td{color:#7a2e2a}tr.missing td{color:#8a939c}
ul.changes{margin:0;padding-left:16px}ul.changes li{margin:0}
.chart{background:#fff;border:1px solid #d7dbe0;border-radius:8px;padding:8px;margin:8px 0}
code{font:12px ui-monospace,SFMono-Regular,Menlo,monospace;background:#eef1f4;padding:1px 4px;border-radius:3px}
footer{margin-top:28px;color:#6b7580;font-size:12px}
"""

COLORS = {"fp32": "#5b6570", "fp16": "#8e44ad", "bf16": "#c0392b", "int8": "#1a73e8"}


def _e(text) -> str:
    return html.escape(str(text), quote=True)


def _quality_label(labels: bool, has_top1: bool) -> str:
    if labels:
        return "accuracy on held-out data (%)"
    return "top-1 agreement with fp32 (%)" if has_top1 else "centred SQNR vs fp32 (dB)"


def _chart(report, backend: str) -> str:
    """An SVG scatter: x = median latency (ms), y = quality; the front joined; the budget as a dashed line."""
    timings = report.timings[backend]
    cands = [c for c in report.candidates if c.name in timings and c.certificate is not None]
    if not cands:
        return ""
    w, h, left, right, top, bottom = 760, 330, 70, 170, 20, 48
    xs = [timings[c.name].median_ms for c in cands]
    ys = [min(quality(c), 1e3) for c in cands]
    finite = [y for y in ys if y < 1e3]
    percent = report.held_out.labels is not None or cands[0].certificate.agreement is not None
    y_hi = min(100.0, max(finite + [100.0])) if percent else max(finite + [60.0])
    budget_y = _budget_y(report, cands)
    y_lo = min(finite + ([budget_y] if budget_y is not None else []) + [y_hi - 1])
    pad = (y_hi - y_lo) * 0.06 or 1.0
    y_lo, y_hi = (max(0.0, y_lo - pad), y_hi + pad * 0.5) if percent else (y_lo - pad, y_hi + pad)
    x_lo, x_hi = 0.0, max(xs) * 1.12

    def px(x: float) -> float:
        return left + (x - x_lo) / (x_hi - x_lo) * (w - left - right)

    def py(y: float) -> float:
        return top + (y_hi - min(y, y_hi)) / (y_hi - y_lo) * (h - top - bottom)

    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 {w} {h}" width="100%" role="img" '
             f'aria-label="latency against quality on {_e(backend)}">',
             f'<rect x="{left}" y="{top}" width="{w - left - right}" height="{h - top - bottom}" fill="#fbfcfd" '
             f'stroke="#d7dbe0"/>']
    for i in range(6):  # grid and ticks
        x = x_lo + (x_hi - x_lo) * i / 5
        y = y_lo + (y_hi - y_lo) * i / 5
        parts.append(f'<line x1="{px(x):.1f}" y1="{top}" x2="{px(x):.1f}" y2="{h - bottom}" stroke="#eceff2"/>')
        parts.append(f'<text x="{px(x):.1f}" y="{h - bottom + 16}" font-size="11" text-anchor="middle" '
                     f'fill="#5b6570">{x:.2f}</text>')
        parts.append(f'<line x1="{left}" y1="{py(y):.1f}" x2="{w - right}" y2="{py(y):.1f}" stroke="#eceff2"/>')
        parts.append(f'<text x="{left - 6}" y="{py(y) + 4:.1f}" font-size="11" text-anchor="end" '
                     f'fill="#5b6570">{y:.1f}</text>')
    labels = report.held_out.labels is not None
    ylabel = _quality_label(labels, cands[0].certificate.agreement is not None)
    parts.append(f'<text x="{(left + w - right) / 2:.0f}" y="{h - 10}" font-size="12" text-anchor="middle">median '
                 f'latency on {_e(backend)}, batch {report.options.batch} (ms)</text>')
    parts.append(f'<text x="16" y="{(top + h - bottom) / 2:.0f}" font-size="12" text-anchor="middle" '
                 f'transform="rotate(-90 16 {(top + h - bottom) / 2:.0f})">{_e(ylabel)}</text>')
    if budget_y is not None:
        parts.append(f'<line x1="{left}" y1="{py(budget_y):.1f}" x2="{w - right}" y2="{py(budget_y):.1f}" '
                     f'stroke="#b3261e" stroke-dasharray="6 4"/>')
        parts.append(f'<text x="{left + 6}" y="{py(budget_y) - 4:.1f}" font-size="11" fill="#b3261e">'
                     f'budget</text>')
    front = report.choices[backend].front
    pts = sorted(((timings[n].median_ms, min(quality(c), 1e3)) for n in front
                  for c in cands if c.name == n), key=lambda p: p[0])
    if len(pts) > 1:
        path = " ".join(f"{px(x):.1f},{py(y):.1f}" for x, y in pts)
        parts.append(f'<polyline points="{path}" fill="none" stroke="#137333" stroke-width="1.5" '
                     f'stroke-dasharray="3 3"/>')
    chosen = report.choices[backend].chosen
    placed: list[tuple[float, float]] = []
    for c, x, y in sorted(zip(cands, xs, ys), key=lambda p: (-p[2], p[1])):
        t = timings[c.name]
        x0, x1 = px(t.median_ms * t.low / t.ratio), px(t.median_ms * t.high / t.ratio)
        color = COLORS.get(c.precision, "#333")
        parts.append(f'<line x1="{x0:.1f}" y1="{py(y):.1f}" x2="{x1:.1f}" y2="{py(y):.1f}" stroke="{color}" '
                     f'stroke-width="2" opacity="0.5"/>')
        r = 7 if c.name == chosen else 5
        fill = color if c.within_budget else "#fff"
        parts.append(f'<circle cx="{px(x):.1f}" cy="{py(y):.1f}" r="{r}" fill="{fill}" stroke="{color}" '
                     f'stroke-width="2"><title>{_e(c.name)}: {x:.3f} ms</title></circle>')
        lx_, ly_ = px(x) + 9, py(y) - 7
        while any(abs(ly_ - b) < 13 and abs(lx_ - a) < 90 for a, b in placed):  # labels never overprint
            ly_ += 13
        placed.append((lx_, ly_))
        parts.append(f'<text x="{lx_:.1f}" y="{ly_:.1f}" font-size="11" '
                     f'fill="{"#137333" if c.name == chosen else "#1d232a"}">{_e(c.name)}'
                     f'{" ★" if c.name == chosen else ""}</text>')
    lx = w - right + 14
    for i, (prec, color) in enumerate(COLORS.items()):
        parts.append(f'<circle cx="{lx}" cy="{top + 14 + i * 18}" r="5" fill="{color}"/>'
                     f'<text x="{lx + 10}" y="{top + 18 + i * 18}" font-size="11">{prec}</text>')
    parts.append(f'<circle cx="{lx}" cy="{top + 74}" r="5" fill="#fff" stroke="#5b6570" stroke-width="2"/>'
                 f'<text x="{lx + 10}" y="{top + 78}" font-size="11">over budget</text>')
    parts.append(f'<line x1="{lx - 6}" y1="{top + 96}" x2="{lx + 6}" y2="{top + 96}" stroke="#137333" '
                 f'stroke-dasharray="3 3"/><text x="{lx + 10}" y="{top + 100}" font-size="11">Pareto front</text>')
    parts.append(f'<text x="{lx - 6}" y="{top + 122}" font-size="11">bars: 95 % CI</text>')
    parts.append("</svg>")
    return "".join(parts)


def _budget_y(report, cands) -> float | None:
    b = report.options.budget
    cert = cands[0].certificate
    if b.max_drop is not None and cert.agreement is not None:
        if report.held_out.labels is not None and cert.reference_accuracy is not None:
            return cert.reference_accuracy - b.max_drop
        return 100.0 - b.max_drop
    if b.min_sqnr is not None and cert.agreement is None:
        return b.min_sqnr
    return None


def _fmt(x, spec: str, unit: str = "") -> str:
    if x is None or (isinstance(x, float) and not math.isfinite(x)):
        return "∞" if isinstance(x, float) and x > 0 else "—"
    return f"{x:{spec}}{unit}"


def _size(n: int) -> str:
    return f"{n / 1e6:.2f} MB" if n >= 1e5 else f"{n / 1e3:.1f} kB"


def _table(report, backend: str) -> str:
    timings = report.timings.get(backend, {})
    choice = report.choices[backend]
    labels = report.held_out.labels is not None
    rows = ["<table><tr><th>candidate</th><th>precision</th><th>median ms [95 % CI]</th><th>speed-up vs fp32</th>"
            f"<th>{'accuracy %' if labels else 'top-1 agreement % [95 % CI]'}</th><th>centred SQNR</th>"
            "<th>size</th><th>what changed</th><th>verdict</th></tr>"]
    for c in report.candidates:
        t = timings.get(c.name)
        cert = c.certificate
        cls = "chosen" if c.name == choice.chosen else ("missing" if not c.built else
                                                           ("over" if not c.within_budget else ""))
        if t is not None:
            lat = (f"{t.median_ms:.3f} [{t.median_ms * t.low / t.ratio:.3f}–{t.median_ms * t.high / t.ratio:.3f}]"
                   if c.name != "fp32" else f"{t.median_ms:.3f}")
            speed = "1 (baseline)" if c.name == "fp32" else speed_text(t)
        else:
            lat, speed = "—", "—"
        if cert is None:
            q = "—"
        elif labels and cert.accuracy is not None:
            q = f"{cert.accuracy:.2f} (drop {cert.drop:+.2f})"
        elif cert.agreement is not None:
            lo, hi = cert.agreement_interval or (cert.agreement, cert.agreement)
            q = f"{cert.agreement:.1f} [{lo:.1f}–{hi:.1f}]"
        else:
            q = "—"
        sq = _fmt(cert.centred_sqnr_db, ".1f", " dB") if cert else "—"
        changes = "".join(f"<li>{_e(x)}</li>" for x in c.changes) if c.built else f"<li>{_e(c.why_not)}</li>"
        if c.name == choice.chosen:
            verdict = "<b class='ok'>chosen</b>"
        else:
            verdict = _e(choice.losers.get(c.name, "on the front" if c.name in choice.front else ""))
        rows.append(f"<tr class='{cls}'><td><b>{_e(c.name)}</b></td><td>{c.precision}</td><td class='n'>{lat}</td>"
                    f"<td class='n'>{speed}</td><td class='n'>{q}</td><td class='n'>{sq}</td>"
                    f"<td class='n'>{_size(c.bytes) if c.built else '—'}</td><td><ul class='changes'>{changes}"
                    f"</ul></td><td>{verdict}</td></tr>")
    rows.append("</table>")
    return "".join(rows)


def render_html(report) -> str:
    o = report.options
    held = report.held_out
    labels = held.labels is not None
    budget = o.budget.describe(labels)
    cards = []
    for backend, choice in report.choices.items():
        if choice.chosen is None:
            cards.append(f"<div class='card'><div class='muted'>{_e(backend)}</div><b class='bad'>nothing within "
                         f"the budget</b><div>{_e(choice.why)}</div></div>")
            continue
        t = report.timings[backend][choice.chosen]
        c = next(x for x in report.candidates if x.name == choice.chosen)
        base = report.timings[backend]["fp32"].median_ms
        if c.name == "fp32":
            speed = "the fp32 export itself: no candidate within the budget is faster"
        elif t.low <= 1 <= t.high:
            speed = (f"as fast as the fp32 export within the noise ({t.median_ms:.3f} ms vs {base:.3f} ms; ratio "
                     f"interval {t.low:.2f}–{t.high:.2f} spans 1)")
        else:
            speed = (f"{1 / t.ratio:.2f}× faster than the fp32 export [{1 / t.high:.2f}–{1 / t.low:.2f}] "
                     f"({t.median_ms:.3f} ms vs {base:.3f} ms)")
        cards.append(f"<div class='card'><div class='muted'>{_e(backend)} — ship</div><b class='ok'>"
                     f"{_e(c.file)}</b><div>{_e(speed)}</div><div class='muted'>{_e(choice.why)}</div></div>")
    sections = []
    for backend in report.choices:
        sections.append(f"<h2>{_e(backend)}</h2><div class='chart'>{_chart(report, backend)}</div>"
                        f"{_table(report, backend)}")
    m = report.manifest or {}
    v = m.get("versions", {})
    vers = ", ".join(f"{k} {val}" for k, val in v.items() if val and k != "gpus") + (
        f", GPU {', '.join(v['gpus'])}" if v.get("gpus") else ", no GPU")
    notes = "".join(f"<li>{_e(n)}</li>" for n in report.notes)
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><meta name="viewport" content="width=device-width,initial-scale=1">
<title>deploy pipeline — {_e(report.model)}</title><style>{CSS}</style></head>
<body><main>
<h1>{_e(report.model)}: the fastest artifact within the budget</h1>
<p class="sub">Budget: <b>{_e(budget)}</b>, judged on {len(held.array)} held-out samples ({_e(held.description)})
that tuned nothing; tuning used {report.tuning_samples} samples of <code>{_e(o.data)}</code>.
Latency: all candidates interleaved in one run per backend, batch {o.batch}; ratios to the fp32 export from the
same rounds.</p>
<div class="cards">{''.join(cards)}</div>
{''.join(sections)}
{f'<h2>Notes</h2><ul>{notes}</ul>' if notes else ''}
<footer>Made by <code>{_e(' '.join(m.get('command', [])))}</code> at {_e(m.get('created', ''))} in
{report.seconds:.0f} s · {_e(vers)} · <code>deploy verify {_e(report.folder)}/manifest.json</code> checks it
again.</footer>
</main></body></html>
"""


def write_html(report, path: str | Path) -> Path:
    return write_text_atomic(path, render_html(report))
