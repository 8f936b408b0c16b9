"""The demo's summary: ``index.html`` (one self-contained page linking each model's ``report.html``),
``demo.json`` and ``demo.md``, and the rows the CLI prints — all from the same :func:`ship_rows` and
:func:`candidate_rows`, so the page, the file and the terminal say the same thing.

Per model and backend: what ships, how much faster than the fp32 export (with the interval of the paired
ratio), and at what quality on the held-out data; then every candidate as a row — a stage that missed its
preset or budget, or was not built, is a row with its reason, never a crash.
"""

from __future__ import annotations

import math
import platform
from pathlib import Path

from ..artifacts.files import write_json, write_text_atomic
from .pareto import speed_text, speedup
from .report_html import CSS
from .report_html import _e as _e
from .run import PipelineReport


def shipped(report: PipelineReport, backend: str) -> dict:
    """What ships on ``backend``: the chosen candidate, its speed-up over the fp32 export with the interval
    of the paired ratio, and its measured quality on the held-out data (non-finite figures are null, as in
    the manifest)."""
    choice = report.choices[backend]
    if choice.chosen is None:
        return {"chosen": None, "why": choice.why}
    t = report.timings[backend][choice.chosen]
    cand = next(c for c in report.candidates if c.name == choice.chosen)
    out = {"chosen": choice.chosen, "file": cand.file, "precision": cand.precision, "why": choice.why,
           "batch": report.options.batch, "speedup": speedup(t.ratio), "speedup_low": speedup(t.high),
           "speedup_high": speedup(t.low), "median_ms": t.median_ms, "beyond_noise": not (t.low <= 1 <= t.high)}
    if cand.certificate is not None:
        cert = cand.certificate.to_dict()
        metric, _ = cand.certificate.metric()
        out.update({"quality_metric": metric, "quality": cert[metric], "reference_accuracy": cert["reference_accuracy"],
                    "drop": cert["drop"], "centred_sqnr_db": cert["centred_sqnr_db"], "samples": cert["samples"]})
    return out


def quality_words(cert, labels: bool) -> str:
    """'accuracy 99.25 % (fp32 99.50, drop 0.25)' / 'agreement 98.0 %' / 'centred SQNR 31.2 dB'."""
    if cert is None:
        return "—"
    sqnr = cert.centred_sqnr_db
    sq = "∞" if not math.isfinite(sqnr) else f"{sqnr:.1f} dB"
    if labels and cert.accuracy is not None:
        ref = f"fp32 {cert.reference_accuracy:.2f}, " if cert.reference_accuracy is not None else ""
        return f"accuracy {cert.accuracy:.2f} % ({ref}drop {cert.drop:.2f}); SQNR {sq}"
    if cert.agreement is not None:
        return f"top-1 agreement {cert.agreement:.1f} %; SQNR {sq}"
    return f"centred SQNR {sq}"


def _speed(t, baseline: bool) -> str:
    return "1 (baseline)" if baseline else speed_text(t)


def ship_rows(demo) -> list[dict]:
    """One row per model and backend (one per model that did not run): the figures the index leads with,
    from :func:`deploy.pipelines.demo.shipped` (what demo.json records)."""

    rows = []
    for r in demo.rows:
        if r.report is None:
            rows.append({"model": r.model, "backend": "—", "ships": "—", "speed": "—", "quality": "—",
                         "budget": "—", "verdict": r.verdict(), "why": r.reason or "", "seconds": r.seconds})
            continue
        rep = r.report
        labels = rep.held_out.labels is not None
        for backend, choice in rep.choices.items():
            row = {"model": r.model, "backend": f"{backend}, batch {rep.options.batch}",
                   "budget": rep.options.budget.describe(labels),
                   "verdict": r.verdict(), "seconds": r.seconds, "why": choice.why}
            ships = shipped(rep, backend)
            if ships["chosen"] is None:
                row.update({"ships": "nothing within the budget", "speed": "—", "quality": "—"})
            else:
                cand = next(c for c in rep.candidates if c.name == ships["chosen"])
                timing = rep.timings[backend][cand.name]
                row.update({"ships": ships["file"], "speed": _speed(timing, cand.name == "fp32"),
                            "quality": quality_words(cand.certificate, labels)})
                if cand.name != "fp32" and not ships["beyond_noise"]:
                    row["speed"] += " (within the noise)"
            if r.internal:
                row["why"] = "internal error in " + "; ".join(r.internal)
            rows.append(row)
    return rows


def candidate_rows(report, backend: str) -> list[dict]:
    """Every candidate of one pipeline on one backend: speed-up, quality, and the verdict with its reason."""
    labels = report.held_out.labels is not None
    choice = report.choices[backend]
    timings = report.timings.get(backend, {})
    rows = []
    for c in report.candidates:
        t = timings.get(c.name)
        if c.name == choice.chosen:
            verdict = "chosen"
        elif not c.built:
            verdict = f"not built: {c.why_not}"
        else:
            verdict = choice.losers.get(c.name, "")
        rows.append({"candidate": c.name, "speed": _speed(t, c.name == "fp32") if t else "—",
                     "changes": [x for x in c.changes if not x.startswith("certified")] if c.built else [],
                     "quality": quality_words(c.certificate, labels), "verdict": verdict,
                     "kind": "chosen" if c.name == choice.chosen else ("missing" if not c.built else
                                                                       ("over" if not c.within_budget else ""))})
    return rows


def render_index(demo) -> str:
    ships = ship_rows(demo)
    head = ("<tr><th>model</th><th>backend</th><th>ships</th><th>vs the fp32 export [95 % CI]</th>"
            "<th>measured quality (held-out)</th><th>budget</th><th>verdict</th></tr>")
    body = []
    for s in ships:
        cls = "chosen" if s["verdict"] == "PASSED" else "over"
        verdict_cls = "ok" if s["verdict"] == "PASSED" else "bad"
        body.append(f"<tr class='{cls}'><td><a href='#{_e(s['model'])}'><b>{_e(s['model'])}</b></a></td>"
                    f"<td>{_e(s['backend'])}</td><td><code>{_e(s['ships'])}</code></td><td class='n'>"
                    f"{_e(s['speed'])}</td><td>{_e(s['quality'])}</td><td>{_e(s['budget'])}</td>"
                    f"<td><b class='{verdict_cls}'>{_e(s['verdict'])}</b><div class='muted'>{_e(s['why'])}</div>"
                    f"</td></tr>")
    sections = []
    for r in demo.rows:
        link = ""
        if r.report is not None:
            folder = Path(r.report.folder).name
            link = (f"<p><a href='{_e(folder)}/report.html'>{_e(folder)}/report.html</a> (chart and every figure) · "
                    f"<a href='{_e(folder)}/manifest.json'>manifest.json</a> · "
                    f"<code>deploy verify {_e(demo.folder)}/{_e(folder)}/manifest.json</code> proves it again · "
                    f"{r.seconds:.0f} s</p>")
        parts = [f"<h2 id='{_e(r.model)}'>{_e(r.model)} <b class='{'ok' if r.passed else 'bad'}'>"
                 f"{_e(r.verdict())}</b></h2>", f"<p class='sub'>{_e(r.about)}</p>" if r.about else "", link]
        if r.report is None:
            parts.append(f"<p class='bad'>{_e(r.reason)}</p>")
        else:
            for backend in r.report.choices:
                parts.append(f"<table><tr><th>candidate on {_e(backend)}, batch {r.report.options.batch}</th>"
                             "<th>vs fp32 [95 % CI]</th><th>quality</th><th>what changed</th><th>verdict</th></tr>")
                for c in candidate_rows(r.report, backend):
                    verdict = "<b class='ok'>chosen</b>" if c["kind"] == "chosen" else _e(c["verdict"])
                    changes = "".join(f"<li>{_e(x)}</li>" for x in c["changes"])
                    parts.append(f"<tr class='{c['kind']}'><td><b>{_e(c['candidate'])}</b></td><td class='n'>"
                                 f"{_e(c['speed'])}</td><td>{_e(c['quality'])}</td><td><ul class='changes'>"
                                 f"{changes}</ul></td><td>{verdict}</td></tr>")
                parts.append("</table>")
        sections.append("".join(parts))
    verdict = "PASSED" if demo.passed else ("INTERNAL ERROR" if demo.exit_code == 4 else "FAILED")
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><meta name="viewport" content="width=device-width,initial-scale=1">
<title>deploy demo</title><style>{CSS}</style></head>
<body><main>
<h1>deploy demo: the fastest proven artifact per model <b class='{'ok' if demo.passed else 'bad'}'>{verdict}</b></h1>
<p class="sub">Each model went through <code>deploy pipeline</code>: exported (certified equal), exact passes, int8,
pruning where the PyTorch model is at hand; every candidate certified on held-out samples that tuned nothing and
timed interleaved against the fp32 export. What ships is the fastest candidate within the budget.
{len(demo.rows)} model(s) in {demo.seconds:.0f} s on {_e(_machine(demo.threads))}.</p>
<table>{head}{''.join(body)}</table>
{''.join(sections)}
<footer>Made by <code>deploy demo --out {_e(demo.folder)}</code> (<code>make demo</code>).</footer>
</main></body></html>
"""


def _machine(threads: int | None) -> str:
    from ..environment import cpu_info, default_threads

    model = cpu_info().get("model") or platform.machine()
    return f"{model}, {threads or default_threads()} threads"


def render_markdown(demo) -> str:
    lines = [f"# deploy demo — {'PASSED' if demo.passed else 'FAILED'} ({demo.seconds:.0f} s)", "",
             "| model | backend | ships | vs fp32 [95 % CI] | quality (held-out) | verdict |",
             "| --- | --- | --- | ---: | --- | --- |"]
    for s in ship_rows(demo):
        lines.append(f"| {s['model']} | {s['backend']} | {s['ships']} | {s['speed']} | {s['quality']} | "
                     f"{s['verdict']} |")
    for r in demo.rows:
        if r.report is None:
            continue
        for backend in r.report.choices:
            lines += ["", f"## {r.model} on {backend}", "", "| candidate | vs fp32 | quality | verdict |",
                      "| --- | ---: | --- | --- |"]
            lines += [f"| {c['candidate']} | {c['speed']} | {c['quality']} | {c['verdict'].replace('|', '/')} |"
                      for c in candidate_rows(r.report, backend)]
    return "\n".join(lines) + "\n"


def write_index(demo, folder: Path) -> tuple[Path, Path, Path]:
    folder = Path(folder)
    page = write_text_atomic(folder / "index.html", render_index(demo))
    js = write_json(folder / "demo.json", demo.to_dict())
    md = write_text_atomic(folder / "demo.md", render_markdown(demo))
    return page, js, md

