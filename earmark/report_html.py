"""``report.html`` of ``fp scan``: one self-contained static page a rights team can forward.

The page opens offline: no external script, style sheet, font or image.  Styles and a small
vanilla script (table sorting) are inline; plots are inline SVG drawn here (no plotting
library, a few kB per plot).  A Content-Security-Policy allows only that one style block and
that one script (by hash), so even markup that slipped through could not run.

Every piece of text that comes from a file name, a manifest or the catalogue metadata goes
through :func:`esc` (``html.escape`` with quotes, safe in text and in quoted attributes).
"""

from __future__ import annotations

import base64
import hashlib
import html
import math
import os
import time
from collections.abc import Callable
from typing import Any

import numpy as np

from earmark.evidence import AudioCheck

__all__ = ["render_report", "alignment_svg", "esc"]

#: Most manifest columns shown in the flagged-files table (all are in the evidence section).
MAX_TABLE_COLUMNS = 6


def esc(value: Any) -> str:
    """Text for HTML content or a double-quoted attribute value."""
    return html.escape("" if value is None else str(value), quote=True)


def _num(v: Any, fmt: str = "{:.1f}", none: str = "–") -> str:
    if v is None:
        return none
    try:
        x = float(v)
    except (TypeError, ValueError):
        return esc(v)
    if not math.isfinite(x):
        return "∞" if x > 0 else none
    return fmt.format(x)


def _t(seconds: Any) -> str:
    """``m:ss.s``, or ``h:mm:ss`` from an hour on (a scan's totals).

    >>> _t(59.96), _t(125.0), _t(7925.8)
    ('1:00.0', '2:05.0', '2:12:06')
    """
    try:
        s = max(float(seconds), 0.0)
    except (TypeError, ValueError):
        return "–"
    if not math.isfinite(s):
        return "–"
    s = round(s, 1)   # rounded first: 59.96 s is 1:00.0, not 0:60.0
    if s >= 3600.0:
        h, r = divmod(int(round(s)), 3600)
        return f"{h}:{r // 60:02d}:{r % 60:02d}"
    m, r = divmod(s, 60.0)
    return f"{int(m)}:{r:04.1f}"


def _semitones(v: Any) -> str:
    """A signed key shift to 0.1 semitone; ``0.0`` (no sign) for one that rounds to none.

    >>> _semitones(1.654), _semitones(-0.04), _semitones(-2.0), _semitones(None)
    ('+1.7', '0.0', '-2.0', '–')
    """
    text = _num(v, "{:+.1f}")
    return "0.0" if text in ("+0.0", "-0.0") else text


def _pct(v: Any) -> str:
    if v is None:
        return "–"
    x = float(v)
    return f"{x:.0%}" if x >= 0.1 else f"{x:.1%}"


def _sortval(v: Any) -> str:
    if v is None:
        return ""
    try:
        x = float(v)
        return repr(x) if math.isfinite(x) else ("1e308" if x > 0 else "-1e308")
    except (TypeError, ValueError):
        return esc(v)


# --------------------------------------------------------------------------- plots


_STEPS = (0.1, 0.2, 0.5, 1, 2, 5, 10, 15, 20, 30, 60, 120, 180, 300, 600, 900, 1200, 1800, 3600)


def _nice_step(span: float, target: int = 5) -> float:
    """A tick step in seconds that reads well as m:ss (1, 2, 5, 10, 15, 30 s, 1, 2, 5 min...)."""
    raw = span / max(target, 1)
    if raw <= 0 or not math.isfinite(raw):
        return 1.0
    for step in _STEPS:
        if step >= raw:
            return float(step)
    return 3600.0 * math.ceil(raw / 3600.0)


def _tick_label(v: float, step: float) -> str:
    """``m:ss`` (``m:ss.s`` for sub-second steps)."""
    sign = "-" if v < -1e-9 else ""
    v = abs(v)
    if step < 1:
        m, sec = divmod(round(v, 1), 60.0)
        return f"{sign}{int(m)}:{sec:04.1f}"
    m, sec = divmod(int(round(v)), 60)
    return f"{sign}{m}:{sec:02d}"


def _dots_label(match: dict[str, Any], n_points: int) -> str:
    """What the plot's dots are: a recording's matched landmarks (several share an anchor's
    times and long uses are sampled, so there can be fewer points than landmarks), or a
    derivation's aligned patches.

    >>> _dots_label({"kind": "recording", "score": 244}, 122)
    '244 matched landmarks (122 points)'
    >>> _dots_label({"score": 30}, 30), _dots_label({"kind": "derivation", "score": 9}, 9)
    ('30 matched landmarks', '9 aligned patches')
    """
    if match.get("kind", "recording") != "recording":
        return f"{n_points} aligned patches"
    try:
        score = int(match.get("score"))
    except (TypeError, ValueError):
        score = n_points
    if score > n_points:
        return f"{score} matched landmarks ({n_points} points)"
    return f"{n_points} matched landmarks"


#: Most dots an alignment plot draws (of its matched landmarks, evenly taken).
MAX_PLOT_DOTS = 300


def alignment_svg(match: dict[str, Any], width: int = 420, height: int = 284) -> str:
    """Inline SVG: query time (x) against reference time (y) of the matched landmarks, with
    the fitted line (slope = speed factor) over the matched segment."""
    try:
        points = match.get("alignment")
        pts = np.asarray(points if points is not None else [], dtype=np.float64).reshape(-1, 2)
    except (TypeError, ValueError):  # a hand-edited journal line: no points, still a plot
        pts = np.zeros((0, 2))
    pts = pts[np.isfinite(pts).all(axis=1)]
    qs, qe = float(match.get("query_start") or 0.0), float(match.get("query_end") or 0.0)
    rs = float(match.get("reference_start") or 0.0)
    speed = float(match.get("speed") or 1.0)
    line = [(qs, rs), (qe, rs + speed * (qe - qs))]
    xs = np.concatenate([pts[:, 0], [line[0][0], line[1][0]]])
    ys = np.concatenate([pts[:, 1], [line[0][1], line[1][1]]])
    x0, x1, y0, y1 = float(xs.min()), float(xs.max()), float(ys.min()), float(ys.max())
    if x1 - x0 < 1.0:
        x0, x1 = x0 - 0.5, x1 + 0.5
    if y1 - y0 < 1.0:
        y0, y1 = y0 - 0.5, y1 + 0.5
    padx, pady = 0.04 * (x1 - x0), 0.04 * (y1 - y0)
    x0, x1, y0, y1 = x0 - padx, x1 + padx, y0 - pady, y1 + pady
    ml, mr, mt, mb = 58, 14, 40, 42   # mt: two legend lines over the plot
    pw, ph = width - ml - mr, height - mt - mb

    def X(v):  # seconds -> pixels (a float or an array)
        return ml + (v - x0) / (x1 - x0) * pw

    def Y(v):
        return mt + ph - (v - y0) / (y1 - y0) * ph

    out = [f'<svg class="plot" xmlns="http://www.w3.org/2000/svg" viewBox="0 0 {width} {height}" '
           f'width="{width}" height="{height}" role="img" aria-label="alignment plot">',
           f'<rect x="{ml}" y="{mt}" width="{pw}" height="{ph}" fill="#fbfcfd" stroke="#c9d1d9"/>']
    sx, sy = _nice_step(x1 - x0), _nice_step(y1 - y0)
    v = math.ceil(x0 / sx) * sx
    while v <= x1 + 1e-9:
        px = X(v)
        out.append(f'<line x1="{px:.1f}" y1="{mt}" x2="{px:.1f}" y2="{mt + ph}" stroke="#eaeef2"/>'
                   f'<text x="{px:.1f}" y="{mt + ph + 14}" font-size="10" text-anchor="middle" '
                   f'fill="#57606a">{_tick_label(v, sx)}</text>')
        v += sx
    v = math.ceil(y0 / sy) * sy
    while v <= y1 + 1e-9:
        py = Y(v)
        out.append(f'<line x1="{ml}" y1="{py:.1f}" x2="{ml + pw}" y2="{py:.1f}" stroke="#eaeef2"/>'
                   f'<text x="{ml - 5}" y="{py + 3.5:.1f}" font-size="10" text-anchor="end" '
                   f'fill="#57606a">{_tick_label(v, sy)}</text>')
        v += sy
    out.append(f'<text x="{ml + pw / 2:.0f}" y="{height - 8}" font-size="11" text-anchor="middle" '
               f'fill="#24292f">query time (m:s)</text>'
               f'<text transform="translate(13 {mt + ph / 2:.0f}) rotate(-90)" font-size="11" '
               f'text-anchor="middle" fill="#24292f">reference time (m:s)</text>')
    if len(pts):
        dot = 5.0 if len(pts) < 80 else 3.5 if len(pts) < 250 else 2.6
        # Dots on a half-pixel grid; dots that land on one place are drawn once (a long
        # use's hundreds of landmarks on a line of ~300 px), at most MAX_PLOT_DOTS.
        px = np.round(X(pts[:, 0]) * 2.0) / 2.0
        py = np.round(Y(pts[:, 1]) * 2.0) / 2.0
        keep = np.sort(np.unique(px * 4096.0 + py, return_index=True)[1])
        keep = keep[:: max(1, -(-keep.size // MAX_PLOT_DOTS))]
        d = "".join(map("M{:g} {:g}h0".format, px[keep].tolist(), py[keep].tolist()))
        out.append(f'<path d="{d}" stroke="#1f6feb" stroke-opacity="0.6" stroke-width="{dot}" '
                   f'stroke-linecap="round" fill="none"/>')
    out.append(f'<line x1="{X(line[0][0]):.1f}" y1="{Y(line[0][1]):.1f}" x2="{X(line[1][0]):.1f}" '
               f'y2="{Y(line[1][1]):.1f}" stroke="#cf222e" stroke-width="1.4" stroke-dasharray="6 3"/>')
    # The legend on two lines: on one, a long label ran past the plot's width.
    out.append(f'<text x="{ml + 6}" y="{mt - 22}" font-size="11" fill="#24292f">'
               f'<tspan fill="#1f6feb">●</tspan> {_dots_label(match, len(pts))}</text>'
               f'<text x="{ml + 6}" y="{mt - 8}" font-size="11" fill="#24292f">'
               f'<tspan fill="#cf222e">- -</tspan> fit: slope {speed:.3f} = speed factor</text>')
    out.append("</svg>")
    return "".join(out)


# --------------------------------------------------------------------------- page

_CSS = """
:root{--fg:#1f2328;--muted:#59636e;--line:#d1d9e0;--bg:#f6f8fa;--accent:#0969da;--bad:#cf222e}
*{box-sizing:border-box}
body{font:14px/1.45 system-ui,-apple-system,"Segoe UI",Roboto,"Helvetica Neue",Arial,sans-serif;
color:var(--fg);margin:0;background:#fff}
main{max-width:1320px;margin:0 auto;padding:20px 28px 60px}
h1{font-size:24px;margin:4px 0 2px}h2{font-size:18px;margin:30px 0 10px;
border-bottom:1px solid var(--line);padding-bottom:4px}h3{font-size:15px;margin:0 0 6px;word-break:break-all}
.meta{color:var(--muted);font-size:12.5px;word-break:break-all}
.cards{display:flex;gap:12px;flex-wrap:wrap;margin:16px 0}
.card{border:1px solid var(--line);border-radius:8px;padding:10px 16px;min-width:130px;background:var(--bg)}
.card b{display:block;font-size:24px}.card span{color:var(--muted);font-size:12px}
.card.flag b{color:var(--bad)}
.grid{display:flex;flex-wrap:wrap;gap:0 32px}.grid>section{flex:1 1 420px;min-width:0}
.grid>section.wide{flex:2 1 640px}.scroll{overflow-x:auto;max-width:100%}
table{border-collapse:collapse;width:100%;font-size:13px}
th,td{border-bottom:1px solid var(--line);padding:5px 8px;text-align:left;vertical-align:top}
th{background:var(--bg);position:sticky;top:0;white-space:nowrap}
td.n,th.n{text-align:right;font-variant-numeric:tabular-nums}
table.sortable th{cursor:pointer;user-select:none}
table.sortable th::after{content:" \\2195";color:#aab}
table.sortable th[aria-sort=ascending]::after{content:" \\25B2";color:var(--fg)}
table.sortable th[aria-sort=descending]::after{content:" \\25BC";color:var(--fg)}
td.file{word-break:break-all;min-width:200px}
.small{font-size:12px;color:var(--muted)}
a{color:var(--accent);text-decoration:none}a:hover{text-decoration:underline}
.file-ev{border:1px solid var(--line);border-radius:8px;padding:14px 16px;margin:14px 0;break-inside:avoid;
content-visibility:auto;contain-intrinsic-size:auto 520px}
.match{display:flex;gap:18px;flex-wrap:wrap;align-items:flex-start;border-top:1px dashed var(--line);
padding-top:10px;margin-top:10px}
.match .facts{flex:1;min-width:300px}
.facts table td:first-child{color:var(--muted);width:150px;white-space:nowrap}
.plot{max-width:100%;height:auto;background:#fff}
dl.kv{display:grid;grid-template-columns:max-content 1fr;gap:2px 12px;margin:4px 0 0;font-size:12.5px}
dl.kv dt{color:var(--muted)}dl.kv dd{margin:0;word-break:break-all}
.errors td{word-break:break-all}
.empty{color:var(--muted);font-style:italic}
"""

_JS = """
(function(){
function key(td,num){var v=td.getAttribute('data-v');if(v===null)v=td.textContent;
if(num){var x=parseFloat(v);return isNaN(x)?-Infinity:x;}return v.toLowerCase();}
document.querySelectorAll('table.sortable').forEach(function(t){
var ths=t.tHead.rows[0].cells;
Array.prototype.forEach.call(ths,function(th,i){th.addEventListener('click',function(){
var asc=th.getAttribute('aria-sort')!=='ascending',num=th.classList.contains('n');
Array.prototype.forEach.call(ths,function(h){h.removeAttribute('aria-sort');});
th.setAttribute('aria-sort',asc?'ascending':'descending');
var b=t.tBodies[0],rows=Array.prototype.slice.call(b.rows);
rows.sort(function(a,c){var x=key(a.cells[i],num),y=key(c.cells[i],num);
return (x<y?-1:x>y?1:0)*(asc?1:-1);});
rows.forEach(function(r){b.appendChild(r);});});});});
})();
"""


def _csp_hash(text: str) -> str:
    return "sha256-" + base64.b64encode(hashlib.sha256(text.encode("utf-8")).digest()).decode()


def _basename(path: str) -> str:
    return path.rstrip("/").rsplit("/", 1)[-1] or path


def _audio_check(check: AudioCheck) -> str:
    """The evidence row of a match let through by :mod:`earmark.verify`."""
    peaks = "" if check.peaks is None or check.peaks_z is None else (
        f"{_pct(check.peaks)} of the recording's spectral peaks are in the query at the "
        f"matched place ({_num(check.peaks_z)} standard deviations above other alignments "
        f"within 2 s); ")
    waveform = "" if check.coherence is None or check.coherence_z is None else (
        f"the query holds the recording's waveform: phase coherence "
        f"{_num(check.coherence, '{:.2f}')} at the matched place "
        f"({_num(check.coherence_z)} standard deviations above other alignments within 2 s); ")
    return (f"{waveform}{peaks}spectrogram correlation {_num(check.correlation, '{:.2f}')} with the "
            f"catalogue file <span class=\"small\">(the landmarks alone were under the "
            f"threshold)</span>")


def _facts(m: dict[str, Any], group: dict[str, Any]) -> str:
    ref = m.get("reference") or {}
    check = AudioCheck.from_json(m.get("verified"))
    derived = m.get("kind") == "derivation"
    rows = [
        ("finding", "<b>derived from</b> this composition (re-performed or regenerated; "
                    "no recording reused)" if derived else "<b>uses the recording</b>"),
        ("recording", f"<b>{esc(group['label'])}</b>"),
        ("rights holder", esc(ref.get("rights_holder") or "(unknown)")),
        ("ISRC", esc(ref.get("isrc") or "–")),
        ("catalogue file", f'<span class="small">{esc(ref.get("path"))}</span>'),
        ("query segment", f"{_t(m.get('query_start'))} – {_t(m.get('query_end'))} "
                          f"({_pct(m.get('coverage'))} of the file)"),
        ("reference segment", f"{_t(m.get('reference_start'))} – {_t(m.get('reference_end'))}"
                              + (f" of {_t(ref.get('duration'))}" if ref.get("duration") else "")),
        ("score", f"{esc(m.get('score'))} "
                  + ("agreeing segments" if derived else "aligned landmarks")),
        ("significance", f"{_num(m.get('significance'))} "
                         f"<span class=\"small\">(chance probability 10<sup>−"
                         f"{_num(m.get('significance'), '{:.0f}')}</sup>)</span>"),
        *([("checked on the audio", _audio_check(check))] if check is not None else []),
        ("speed", f"{_num(m.get('speed'), '{:.3f}')}× "
                  f"<span class=\"small\">(reference seconds per query second)</span>"),
        ("pitch" if not derived else "key shift",
         f"{_num(m.get('pitch_semitones'), '{:+.2f}')} semitones"),
    ]
    for k, v in ref.items():
        if k not in ("track_id", "path", "duration", "title", "artist", "isrc", "rights_holder"):
            rows.append((esc(k), esc(v)))
    return "<table>" + "".join(f"<tr><td>{k}</td><td>{v}</td></tr>" for k, v in rows) + "</table>"


def render_report(results: list[dict[str, Any]], errors: list[dict[str, Any]], summary: Any,
                  context: dict[str, Any] | None = None,
                  sink: Callable[[str], Any] | None = None) -> str | None:
    """The whole page as a string, or, given ``sink``, piece by piece into it (a page of
    thousands of flagged files is tens of MB: written as it is made, it is never whole in
    memory) and ``None``.

    Parameters
    ----------
    results, errors : lists of ``results.jsonl`` / ``errors.jsonl`` records
        (newest line per path, see :func:`earmark.scan.load_records`).
    summary : earmark.scan.ScanSummary
    context : dict, optional
        ``index`` (path) and ``mcfg`` (MatchConfig) of the run, shown in the header.
    """
    from earmark import __version__
    from earmark.scan import group_by_recording

    context = context or {}
    flagged = []
    for r in results:
        groups = group_by_recording(r)
        if groups:
            best = max((g["best"].get("significance") or 0.0) for g in groups)
            flagged.append((r, groups, best))
    flagged.sort(key=lambda t: (-t[2], t[0]["query"]))

    parts: list[str] = []
    add = parts.append if sink is None else sink
    style, script = _CSS, _JS
    csp = (f"default-src 'none'; style-src '{_csp_hash(style)}'; "
           f"script-src '{_csp_hash(script)}'; img-src data:")
    add("<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">")
    add(f'<meta http-equiv="Content-Security-Policy" content="{esc(csp)}">')
    add('<meta name="viewport" content="width=device-width, initial-scale=1">')
    add("<title>Earmark scan report</title>")
    add(f"<style>{style}</style></head><body><main>")
    add("<h1>Earmark scan report</h1>")
    mcfg = context.get("mcfg")
    mode = ""
    if mcfg is not None:
        searching = any(getattr(mcfg, a, False) for a in ("search_speed", "search_tempo",
                                                            "search_pitch", "search_tempo_key"))
        mode = (f" · matching: {'speed/tempo/pitch search' if searching else 'plain (--fast)'}, "
                f"min significance {getattr(mcfg, 'min_significance', 0):g}")
    add(f'<div class="meta">report folder {esc(os.path.abspath(summary.out_dir))} · index '
        f'{esc(context.get("index", "?"))}{esc(mode)} · generated '
        f'{esc(time.strftime("%Y-%m-%d %H:%M:%S %Z"))} by Earmark {esc(__version__)}</div>')

    add('<div class="cards">'
        f'<div class="card"><b>{summary.files}</b><span>files scanned</span></div>'
        f'<div class="card"><b>{summary.audio_seconds / 3600:.2f}</b><span>hours of audio</span></div>'
        f'<div class="card flag"><b>{summary.flagged}</b><span>flagged (use catalogue recordings)</span></div>'
        f'<div class="card"><b>{max(summary.files - summary.flagged - summary.errors, 0)}</b>'
        f'<span>no match</span></div>'
        f'<div class="card"><b>{summary.errors}</b><span>errors (not analysed)</span></div>'
        "</div>")

    # Per rights holder / per recording.
    add('<div class="grid"><section><h2>By rights holder</h2>')
    if summary.per_rights_holder:
        add('<div class="scroll"><table class="sortable"><thead><tr><th>rights holder</th><th class="n">flagged files</th>'
            '<th class="n">recordings</th><th class="n">matched</th></tr></thead><tbody>')
        for h, c in summary.per_rights_holder.items():
            add(f"<tr><td>{esc(h)}</td><td class=\"n\">{c['files']}</td>"
                f"<td class=\"n\">{c['recordings']}</td>"
                f"<td class=\"n\" data-v=\"{_sortval(c['seconds'])}\">{_t(c['seconds'])}</td></tr>")
        add("</tbody></table></div>")
    else:
        add('<p class="empty">No catalogue recording found.</p>')
    add('</section><section class="wide"><h2>By catalogue recording</h2>')
    if summary.per_recording:
        add('<div class="scroll"><table class="sortable"><thead><tr><th>recording</th><th>ISRC</th><th>rights holder</th>'
            '<th class="n">flagged files</th><th class="n">matched</th>'
            '<th class="n">best significance</th></tr></thead><tbody>')
        for e in summary.per_recording:
            add(f"<tr><td title=\"{esc(e['path'])}\">{esc(e['label'])}</td><td>{esc(e['isrc'] or '–')}</td>"
                f"<td>{esc(e['rights_holder'])}</td><td class=\"n\">{e['files']}</td>"
                f"<td class=\"n\" data-v=\"{_sortval(e['seconds'])}\">{_t(e['seconds'])}</td>"
                f"<td class=\"n\" data-v=\"{_sortval(e['best_significance'])}\">"
                f"{_num(e['best_significance'])}</td></tr>")
        add("</tbody></table></div>")
    else:
        add('<p class="empty">No catalogue recording found.</p>')
    add("</section></div>")

    # Flagged files table.
    add(f"<h2>Flagged files ({len(flagged)})</h2>")
    if flagged:
        cols: list[str] = []
        for r, _, _ in flagged:
            for k in (r.get("manifest") or {}):
                if k not in cols and len(cols) < MAX_TABLE_COLUMNS:
                    cols.append(k)
        add('<p class="small">Click a column to sort; click a file for its evidence.</p>')
        add('<div class="scroll"><table class="sortable"><thead><tr><th class="n">#</th><th>file</th>'
            + "".join(f"<th>{esc(c)}</th>" for c in cols)
            + '<th class="n">duration</th><th>recordings</th><th>rights holders</th>'
              '<th class="n">best score</th><th class="n">best significance</th>'
              '<th class="n">matched s</th><th class="n">speed</th>'
              '<th class="n" title="key shift of the best match, semitones">pitch (st)</th>'
              '</tr></thead><tbody>')
        for n, (r, groups, best) in enumerate(flagged, 1):
            top = max(groups, key=lambda g: g["best"].get("score") or 0)
            holders = sorted({(g["reference"].get("rights_holder") or "(unknown)") for g in groups})
            man = r.get("manifest") or {}
            add(f'<tr><td class="n">{n}</td><td class="file" data-v="{esc(r["query"])}">'
                f'<a href="#f{n}" title="{esc(r["query"])}">{esc(_basename(r["query"]))}</a></td>'
                + "".join(f"<td>{esc(man.get(c, ''))}</td>" for c in cols)
                + f'<td class="n" data-v="{_sortval(r.get("duration"))}">{_t(r.get("duration"))}</td>'
                  f'<td>{"<br>".join(esc(g["label"]) for g in groups)}</td>'
                  f'<td>{"<br>".join(esc(h) for h in holders)}</td>'
                  f'<td class="n">{esc(top["best"].get("score"))}</td>'
                  f'<td class="n" data-v="{_sortval(best)}">{_num(best)}</td>'
                  f'<td class="n">{sum(g["seconds"] for g in groups):.1f}</td>'
                  f'<td class="n">{_num(top["best"].get("speed"), "{:.3f}")}</td>'
                  f'<td class="n">{_semitones(top["best"].get("pitch_semitones"))}</td></tr>')
        add("</tbody></table></div>")
    else:
        add('<p class="empty">No file uses a catalogue recording.</p>')

    # Evidence.
    if flagged:
        add("<h2>Evidence</h2>")
        add('<p class="small">Each plot shows the matched landmarks: time in the scanned file '
            "(x) against time in the catalogue recording (y).  Points on one straight line are "
            "the same music in the same order; the line's slope is the speed factor (1 = "
            "unchanged, 1.1 = played 10 % faster).</p>")
    for n, (r, groups, best) in enumerate(flagged, 1):
        add(f'<section class="file-ev" id="f{n}"><h3>{n}. {esc(_basename(r["query"]))}</h3>')
        add('<dl class="kv">'
            f'<dt>path</dt><dd>{esc(r["query"])}</dd>'
            f'<dt>content hash</dt><dd>{esc(r.get("content_hash"))}</dd>'
            f'<dt>duration</dt><dd>{_t(r.get("duration"))}</dd>')
        for k, v in (r.get("manifest") or {}).items():
            add(f"<dt>{esc(k)}</dt><dd>{esc(v)}</dd>")
        add("</dl>")
        for m in r.get("matches") or []:
            ref = m.get("reference") or {}
            g = next(g for g in groups if g["reference"] is ref
                     or g["reference"].get("track_id") == ref.get("track_id"))
            add(f'<div class="match"><div>{alignment_svg(m)}</div>'
                f'<div class="facts">{_facts(m, g)}</div></div>')
        add("</section>")

    # Errors.
    add(f"<h2>Errors ({len(errors)})</h2>")
    if errors:
        add('<p class="small">These files could not be analysed; they are not flagged and '
            "not cleared.  Re-run with <code>--retry-errors</code> to try them again.</p>")
        add('<div class="scroll"><table class="sortable errors"><thead><tr><th>file</th><th>reason</th></tr></thead><tbody>')
        for e in errors:
            add(f'<tr><td title="{esc(e["query"])}">{esc(e["query"])}</td>'
                f'<td>{esc(e.get("error"))}</td></tr>')
        add("</tbody></table></div>")
    else:
        add('<p class="empty">None.</p>')
    add('<p class="small">Machine-readable: results.jsonl (one line per file, the schema of '
        "<code>fp match --json</code> plus content_hash and manifest), errors.jsonl, "
        "summary.csv.</p>")
    add(f"</main><script>{script}</script></body></html>\n")
    return "".join(parts) if sink is None else None
