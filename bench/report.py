"""Reports of ``fp bench``: ``results.json`` (schema below), ``results.md``, ``queries.jsonl``, plots.

``results.json`` schema (``schema_version`` 1)
-----------------------------------------------
Stable: keys are only ever added within a schema version; a removal or change of meaning
bumps ``schema_version``.  Times are seconds unless the key ends in ``_ms``; rates are
fractions in [0, 1]; ``x_realtime`` is audio seconds per wall-clock second.  ``null`` means
"not measured" (e.g. no hits to measure an offset on).

::

    schema_version   int (1)
    tool             "earmark-bench"
    created          ISO-8601 UTC time of the run
    mode             "full" | "quick"
    seed             int: every random choice derives from it
    args             the run's parameters (catalogue_dir, negatives_dir, jobs, n_queries, ...)
    machine          cpu_model, physical_cores, logical_cpus, affinity_cpus, mem_gb,
                     load_average, platform, python, earmark, earmark_commit, numpy, numba,
                     scipy, soxr, soundfile, av, pedalboard
    corpus           catalogue_files, catalogue_seconds, indexed_files, indexed_seconds,
                     unreadable[], negative_files, negative_seconds
    config           fingerprint (FingerprintConfig), match_default, match_fast (MatchConfig)
    indexing
      runs[]         {jobs, files, added, failed[], audio_seconds, seconds, x_realtime,
                      x_realtime_per_process, landmarks, bytes, rss_mb, rss_children_mb}
                     (first jobs=1, then jobs=N)
      speedup        x_realtime(jobs=N) / x_realtime(jobs=1)
      decode_only    {jobs, files, audio_seconds, seconds, x_realtime, failed[]}
      ratio_to_decode_only   x_realtime(index, jobs=N) / x_realtime(decode-only, jobs=N)
      stages         {files, audio_seconds, seconds{decode, resample, spectrogram, peaks,
                      hashing, store}, x_realtime{...}, share{...}, total_seconds,
                      x_realtime_total}   (one process, stage by stage)
      note           which files the jobs=1 run used
    index            Index.info() (tracks, audio_hours, landmarks, segments, bytes,
                     bytes_per_audio_second, ...) + open_time{first_s, median_s}
    queries          dir, sample_rate, per_transform, n_positive, n_self_windows, n_negative,
                     negative_families{family: n}, transforms[]{name, family, description,
                     speed, pitch_semitones, excerpt_seconds, n}, generation_seconds,
                     transform_seconds_mean{name: s}
    systems          {system: {label, kind: "earmark"|"peer", match_config?}}
                     systems: "earmark" (default MatchConfig), "earmark-fast"
                     (MATCH_PRESETS["fast"]), then one per peer (e.g. "audfprint")
    accuracy         {system: {transform: row}}; row = {n, hits, hit_at_1, wrong,
                     offset_ok, offset_exact, located_ok, speed_err_median, speed_err_p95,
                     speed_within_1pct, pitch_err_median, pitch_err_p95, pitch_within_025,
                     latency_p50_ms, latency_p95_ms, score_median}
                     offset_ok/offset_exact/located_ok/speed_*/pitch_* are fractions of the
                     hits; offset_ok accepts a verified repeat of the reference audio
    negatives        {system: {n, false_positives, fp_rate, by_family{family: {n,
                     false_positives}}, max_fp_significance}}
    latency          {system: {n, p50_ms, p95_ms, mean_ms, mean_cpu_ms, clean_10s_p50_ms,
                     clean_10s_p95_ms, samples_ms[], by_duration{"10s": {n, p50_ms, p95_ms}}}}
                     (in process, Index.match_audio: resample + fingerprint + search;
                     mean_cpu_ms: CPU time of the process, every thread)
    scores           true{score[], significance[]} (top matches on the right track),
                     false{score[], significance[]} (matches on negatives and wrong tracks),
                     threshold{min_significance, min_score}, probe_false{score[],
                     significance[]} + probe_config (negatives re-matched with lowered
                     thresholds: how close chance comes), fast{true, false}
    self_query       whole{n, hits, offset_ok, match_config, tracks[]{path, duration, hit,
                     offset_err, offset_ok, speed, coverage, seconds}},
                     windows{system: row}  (clean 10 s windows of every indexed track)
    compilations     {n_queries, uses, found, wrong, per_query[]{uses, found, wrong, seconds}}
                     (five catalogue recordings back to back, default preset; see
                     :func:`earmark.bench.runner.compilation_bench`)
    cli              {available, note?, command, n, first_call_s, p50_s, p95_s, mean_s, matched}
    peers            {name: {describe{}, index{seconds, bytes, jobs, audio_seconds,
                     x_realtime, bytes_per_audio_second, detail{}}, match{queries, seconds,
                     jobs, per_query_ms, per_query_cpu_ms, note}, queries_per_transform}
                     | {error}}
    memory           peak_rss_mb_matching_process, peak_rss_mb_index_jN,
                     peak_rss_mb_index_jN_workers, peak_rss_mb_index_j1, peak_rss_mb_run
    scale            (optional) the content of scale.json (see earmark.bench.scale)
    compare          (optional) {before_path, before_created, rows[]{metric, before, after,
                     delta}, transforms[]{transform, before, after, delta}}
    targets[]        {group, target, value, goal, pass (bool|null)}: the issue #2 / #4 targets
    timings          seconds per bench step and total

``queries.jsonl``: one JSON object per (system, query) - the scored record of
:func:`earmark.bench.runner.score_result` (``system, qid, kind, transform, family, duration,
hit, wrong, false_positive, offset_ok, offset_exact, offset_err, located_ok, speed_est,
pitch_est, speed_err, pitch_err, score, significance, top_reference, n_matches, error,
latency_ms``).
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any, Sequence

import numpy as np

SCHEMA_VERSION = 1

#: Targets of issue #2 (engine) and issue #4 (robustness): transform -> minimum hit@1.
HIT_TARGETS: dict[str, float] = {
    "clean_5s": 0.99, "noise_white_5db": 0.97, "noise_white_0db": 0.90, "mix_0db": 0.90,
    "mp3_64k": 0.99, "reverb": 0.95, "telephone": 0.95,
    "speed_0.95": 0.97, "speed_1.05": 0.97, "speed_0.9": 0.95, "speed_1.1": 0.95,
    "speed_0.8": 0.90, "speed_1.25": 0.90, "tempo_-5": 0.95, "tempo_+5": 0.95,
    "tempo_-10": 0.90, "tempo_+10": 0.90, "tempo_-20": 0.80, "tempo_+20": 0.80,
    "pitch_-1": 0.95, "pitch_+1": 0.95, "pitch_-2": 0.90, "pitch_+2": 0.90,
    "pitch_-4": 0.80, "pitch_+4": 0.80, "speed_0.7": 0.80, "speed_1.5": 0.80,
    "pitch_-6": 0.80, "pitch_+6": 0.80, "griffinlim": 0.90, "opus_24k": 0.97,
    "slowed_reverb": 0.85, "clean_2s": 0.90, "noise_white_5db_3s": 0.85,
    "embed_5s_in_30s": 0.95,
}
ENGINE_ROWS = ("clean_5s", "noise_white_5db", "noise_white_0db", "mix_0db", "mp3_64k", "reverb",
               "telephone")


# =============================================================================== helpers


def _f(x: Any, fmt: str = "{:.1f}", none: str = "–") -> str:
    if x is None or (isinstance(x, float) and not math.isfinite(x)):
        return none
    return fmt.format(x)


def _pct(x: Any) -> str:
    return _f(None if x is None else 100.0 * x, "{:.0f} %")


def _pct1(x: Any) -> str:
    return _f(None if x is None else 100.0 * x, "{:.1f} %")


def _table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    out = ["| " + " | ".join(header) + " |",
           "|" + "|".join("---" if i == 0 else "--:" for i in range(len(header))) + "|"]
    out += ["| " + " | ".join(str(c) for c in r) + " |" for r in rows]
    return "\n".join(out)


def _systems(doc: dict[str, Any]) -> list[str]:
    systems = list(doc.get("systems", {}) or {})
    for s in doc.get("accuracy", {}):
        if s not in systems:
            systems.append(s)
    return systems


def _label(doc: dict[str, Any], system: str) -> str:
    return (doc.get("systems", {}).get(system) or {}).get("label", system)


def _transform_order(doc: dict[str, Any]) -> list[str]:
    names = [t["name"] for t in doc.get("queries", {}).get("transforms", [])]
    for rows in doc.get("accuracy", {}).values():
        for t in rows:
            if t not in names:
                names.append(t)
    return names


def _pooled(rows: Sequence[dict[str, Any]], key: str) -> float | None:
    """Hit-weighted mean of a per-hit fraction over several rows."""
    num = den = 0.0
    for r in rows:
        if r.get(key) is not None and r.get("hits"):
            num += r[key] * r["hits"]
            den += r["hits"]
    return num / den if den else None


# =============================================================================== targets


def evaluate_targets(doc: dict[str, Any]) -> list[dict[str, Any]]:
    """The issue #2 and #4 targets, each with its measured value and pass/fail (``None`` when
    the run did not measure it)."""
    from earmark.bench.transforms import TRANSFORMS

    out: list[dict[str, Any]] = []
    acc = doc.get("accuracy", {})
    # The targets are about the default run's rows: an extended transform (a speed that
    # glides, a room no target names) is reported in the tables, never judged here.
    em = {t: r for t, r in acc.get("earmark", {}).items() if t in TRANSFORMS}
    fast = acc.get("earmark-fast", {})

    def add(group: str, target: str, value: Any, goal: str, ok: bool | None) -> None:
        out.append({"group": group, "target": target, "value": value, "goal": goal, "pass": ok})

    for name, goal in HIT_TARGETS.items():
        row = em.get(name)
        if row is None or row.get("hit_at_1") is None:
            continue
        group = "engine (#2)" if name in ENGINE_ROWS else "robustness (#4)"
        add(group, f"hit@1 {name}", row["hit_at_1"], f">= {goal:.0%}", row["hit_at_1"] >= goal - 1e-9)
    rows = [em[t] for t in ENGINE_ROWS if t in em]
    v = _pooled(rows, "offset_ok")
    if v is not None:
        add("engine (#2)", "reference offset within 0.1 s (hits of engine rows)", v, ">= 98 %", v >= 0.98)
    neg = doc.get("negatives", {}).get("earmark")
    if neg:
        add("engine (#2)", f"false positives on {neg['n']} negatives", neg["false_positives"],
            "0 on >= 200", (False if neg["false_positives"] else (True if neg["n"] >= 200 else None)))
    ix = doc.get("indexing", {})
    if ix.get("ratio_to_decode_only") is not None:
        add("engine (#2)", "indexing / decode-only throughput", ix["ratio_to_decode_only"], ">= 0.7",
            ix["ratio_to_decode_only"] >= 0.7)
    if ix.get("speedup") is not None:
        n = ix["runs"][-1]["jobs"]
        add("engine (#2)", f"-j {n} speed-up over one process", ix["speedup"], ">= 1.8 (j2)",
            ix["speedup"] >= 1.8 if n == 2 else None)
    lat = doc.get("latency", {}).get("earmark", {})
    if lat.get("clean_10s_p50_ms") is not None:
        add("engine (#2)", "10 s query p50 in process (default search)", lat["clean_10s_p50_ms"],
            "<= 20 ms", lat["clean_10s_p50_ms"] <= 20.0)
    latf = doc.get("latency", {}).get("earmark-fast", {})
    if latf.get("clean_10s_p50_ms") is not None:
        add("engine (#2)", "10 s query p50 in process (--fast)", latf["clean_10s_p50_ms"],
            "<= 20 ms", latf["clean_10s_p50_ms"] <= 20.0)
    cli = doc.get("cli", {})
    if cli.get("available"):
        add("engine (#2)", "fp match, one file, warm JIT cache (p50)", cli["p50_s"], "<= 1.5 s",
            cli["p50_s"] <= 1.5)
    ind = doc.get("index", {})
    if ind.get("bytes_per_audio_second") is not None:
        add("engine (#2)", "index bytes per audio second", ind["bytes_per_audio_second"], "<= 150",
            ind["bytes_per_audio_second"] <= 150)
    if ind.get("open_time"):
        add("engine (#2)", "Index.open time", ind["open_time"]["median_s"], "<= 0.2 s",
            ind["open_time"]["median_s"] <= 0.2)
    # issue 4: speed/pitch estimates
    est_rows = [r for t, r in em.items() if t.split("_")[0] in ("speed", "tempo", "pitch", "slowed",
                                                                "tempokey")]
    v1 = _pooled(est_rows, "speed_within_1pct")
    v2 = _pooled(est_rows, "pitch_within_025")
    if v1 is not None:
        add("robustness (#4)", "speed estimate within 1 % (hits of speed/tempo/pitch rows)", v1,
            ">= 95 %", v1 >= 0.95)
    if v2 is not None:
        add("robustness (#4)", "pitch estimate within 0.25 st (hits of speed/tempo/pitch rows)", v2,
            ">= 95 %", v2 >= 0.95)
    emb = em.get("embed_5s_in_30s")
    if emb and emb.get("located_ok") is not None:
        add("robustness (#4)", "embedded excerpt located within 0.5 s (of hits)", emb["located_ok"],
            ">= 95 %", emb["located_ok"] >= 0.95)
    # cost of the robustness search (default vs fast in this run)
    if lat.get("p50_ms") and latf.get("p50_ms"):
        r = lat["p50_ms"] / latf["p50_ms"]
        add("robustness (#4)", "match latency, default / --fast (p50)", r, "<= 3x", r <= 3.0)
    for name in ENGINE_ROWS:
        if name in em and name in fast and em[name].get("hit_at_1") is not None:
            a, b = em[name]["hit_at_1"], fast[name]["hit_at_1"]
            add("robustness (#4)", f"no loss vs plain matching: {name}", a - b, ">= 0 (pts)",
                a >= b - 1e-9)
    # peers
    for peer, pdoc in (doc.get("peers") or {}).items():
        if "error" in pdoc:
            continue
        prow = acc.get(peer, {})
        better = [t for t in prow if t in em and em[t]["hit_at_1"] is not None
                  and prow[t]["hit_at_1"] is not None]
        if better:
            wins = sum(em[t]["hit_at_1"] > prow[t]["hit_at_1"] or em[t]["hit_at_1"] == 1.0
                       for t in better)
            add(f"vs {peer}", "higher hit@1 on every row", f"{wins}/{len(better)}", "all",
                wins == len(better))
        pidx = pdoc.get("index", {})
        runs = ix.get("runs") or []
        if pidx.get("x_realtime") and runs and runs[-1].get("x_realtime"):
            r = runs[-1]["x_realtime"] / pidx["x_realtime"]
            add(f"vs {peer}", "indexing speed (same cores)", r, ">= 2x", r >= 2.0)
        pm = pdoc.get("match", {})
        # CPU against CPU: Earmark's voting threads count (runs before mean_cpu_ms was
        # recorded compared the peer's CPU with Earmark's wall time).
        own = lat.get("mean_cpu_ms") or lat.get("mean_ms")
        if pm.get("per_query_cpu_ms") and own:
            r = pm["per_query_cpu_ms"] / own
            add(f"vs {peer}", "matching speed per query (CPU time, default search)", r, ">= 5x",
                r >= 5.0)
        pneg = doc.get("negatives", {}).get(peer)
        if pneg and neg:
            add(f"vs {peer}", "fewer false positives",
                f"{neg['false_positives']} vs {pneg['false_positives']}", "fewer",
                neg["false_positives"] < pneg["false_positives"]
                or neg["false_positives"] == pneg["false_positives"] == 0)
    return out


# =============================================================================== compare


def compare_results(before: dict[str, Any], after: dict[str, Any]) -> dict[str, Any]:
    """Before/after rows: per-transform hit@1 (Earmark default) and headline metrics."""

    def g(d: dict[str, Any], *path: Any) -> Any:
        for p in path:
            if isinstance(d, dict) and p in d:
                d = d[p]
            elif isinstance(d, list) and isinstance(p, int) and -len(d) <= p < len(d):
                d = d[p]
            else:
                return None
        return d

    metrics = [
        ("index x real-time (jobs=N)", ("indexing", "runs", -1, "x_realtime")),
        ("index x real-time (jobs=1)", ("indexing", "runs", 0, "x_realtime")),
        ("index / decode-only", ("indexing", "ratio_to_decode_only")),
        ("index bytes per audio second", ("index", "bytes_per_audio_second")),
        ("Index.open (s)", ("index", "open_time", "median_s")),
        ("latency p50 ms (default)", ("latency", "earmark", "p50_ms")),
        ("latency p95 ms (default)", ("latency", "earmark", "p95_ms")),
        ("latency p50 ms (fast)", ("latency", "earmark-fast", "p50_ms")),
        ("10 s query p50 ms (default)", ("latency", "earmark", "clean_10s_p50_ms")),
        ("false positives (default)", ("negatives", "earmark", "false_positives")),
        ("negatives", ("negatives", "earmark", "n")),
        ("fp match p50 (s)", ("cli", "p50_s")),
        ("peak RSS matching (MB)", ("memory", "peak_rss_mb_matching_process")),
    ]
    rows = []
    for label, path in metrics:
        b, a = g(before, *path), g(after, *path)
        d = a - b if isinstance(a, (int, float)) and isinstance(b, (int, float)) else None
        rows.append({"metric": label, "before": b, "after": a, "delta": d})
    trows = []
    for system in ("earmark", "earmark-fast"):
        ba = g(before, "accuracy", system) or {}
        aa = g(after, "accuracy", system) or {}
        for t in list(aa) + [t for t in ba if t not in aa]:
            b = (ba.get(t) or {}).get("hit_at_1")
            a = (aa.get(t) or {}).get("hit_at_1")
            trows.append({"system": system, "transform": t, "before": b, "after": a,
                          "delta": a - b if a is not None and b is not None else None,
                          "n_before": (ba.get(t) or {}).get("n"), "n_after": (aa.get(t) or {}).get("n")})
    return {"before_created": before.get("created"), "before_commit": g(before, "machine", "earmark_commit"),
            "after_commit": g(after, "machine", "earmark_commit"), "rows": rows, "transforms": trows}


# =============================================================================== markdown


def _counts_per_row(doc: dict[str, Any], systems: list[str], key: str) -> list[str]:
    """Per system, ``"<label> <total> (<row> <count>, ...)"`` of an accuracy-row count
    (``other_master``, ``verified``), for the systems that have any."""
    out = []
    for s in systems:
        per_row = {t: row[key] for t, row in doc.get("accuracy", {}).get(s, {}).items()
                   if row.get(key)}
        if per_row:
            out.append(f"{_label(doc, s)} {sum(per_row.values())} ("
                       + ", ".join(f"{t} {k}" for t, k in per_row.items()) + ")")
    return out


def render_markdown(doc: dict[str, Any]) -> str:
    """``results.md``: tables ready to paste into a README."""
    m = doc.get("machine", {})
    c = doc.get("corpus", {})
    L: list[str] = []
    L.append(f"# Earmark benchmark ({doc.get('mode', '?')} run, seed {doc.get('seed')})\n")
    L.append(f"Machine: {m.get('cpu_model') or '?'}, {m.get('affinity_cpus') or m.get('logical_cpus')} CPUs, "
             f"{m.get('mem_gb', '?')} GB; Python {m.get('python')}, numpy {m.get('numpy')}, "
             f"numba {m.get('numba')}; Earmark {m.get('earmark')} ({m.get('earmark_commit') or '?'}); "
             f"load average at start {m.get('load_average')}.  ")
    L.append(f"Catalogue: {c.get('indexed_files')} files, {c.get('indexed_seconds', 0) / 3600:.2f} h indexed"
             f" (of {c.get('catalogue_files')} files, {c.get('catalogue_seconds', 0) / 3600:.2f} h); "
             f"negatives folder: {c.get('negative_files')} files.  ")
    q = doc.get("queries", {})
    L.append(f"Queries: {q.get('n_positive')} transformed excerpts ({q.get('per_transform')} per transform), "
             f"{q.get('n_negative')} negatives, {q.get('n_self_windows')} self-query windows; "
             f"{doc.get('timings', {}).get('total', 0) / 60:.1f} min in all.\n")

    systems = _systems(doc)
    acc = doc.get("accuracy", {})
    peers = [s for s in systems if s not in ("earmark", "earmark-fast")]
    L.append("## Accuracy per transform\n")
    L.append("hit@1: the top match is the right recording (or another master of it: another "
             "catalogue file holding the same recording at the matched place, verified on the "
             "audio; counted below).  offset: reference offset within 0.1 s "
             "(of hits; a verified repeat of the reference counts).  speed / pitch err: median "
             "|speed/true − 1| and |pitch − true| of hits.  p50: in-process latency.\n")
    header = ["transform", "n", "Earmark hit@1", "offset ok", "speed err", "pitch err (st)", "p50 ms",
              "--fast hit@1", "--fast p50 ms"]
    for p in peers:
        header += [f"{_label(doc, p)} hit@1 (n)"]
    rows = []
    for t in _transform_order(doc):
        e = acc.get("earmark", {}).get(t)
        f = acc.get("earmark-fast", {}).get(t)
        if e is None and f is None:
            continue
        e = e or {}
        f = f or {}
        r = [t, str(e.get("n", "")), _pct(e.get("hit_at_1")), _pct(e.get("offset_ok")),
             _f(None if e.get("speed_err_median") is None else 100 * e["speed_err_median"], "{:.2f} %"),
             _f(e.get("pitch_err_median"), "{:.2f}"), _f(e.get("latency_p50_ms")),
             _pct(f.get("hit_at_1")), _f(f.get("latency_p50_ms"))]
        for p in peers:
            pr = acc.get(p, {}).get(t)
            r.append(f"{_pct(pr.get('hit_at_1'))} ({pr['n']})" if pr else "–")
        rows.append(r)
    L.append(_table(header, rows) + "\n")
    masters = _counts_per_row(doc, systems, "other_master")
    if masters:
        from earmark.bench.runner import MASTER_MIN_CORR

        L.append("Hits on another master of the right recording (time-frequency correlation "
                 f"≥ {MASTER_MIN_CORR} with the right file at the true place; without them "
                 "hit@1 is lower by that many queries): " + "; ".join(masters) + ".\n")

    verified = _counts_per_row(doc, systems, "verified")
    if verified:
        L.append("Hits through audio verification (landmark evidence under the threshold, "
                 "checked against the catalogue file; see `earmark.verify`): "
                 + "; ".join(verified) + ".\n")

    neg = doc.get("negatives", {})
    if neg:
        L.append("## False positives on negatives (default threshold)\n")
        fams = sorted({f for s in neg.values() for f in s.get("by_family", {})})
        header = ["system", "negatives", "false positives", "rate"] + fams
        rows = []
        for s in systems:
            n = neg.get(s)
            if not n:
                continue
            fam = n.get("by_family", {})
            rows.append([_label(doc, s), n.get("n"), n.get("false_positives"), _pct1(n.get("fp_rate"))]
                        + [f"{fam.get(f, {}).get('false_positives', 0)}/"
                           f"{fam.get(f, {}).get('n', 0)}" for f in fams])
        L.append(_table(header, rows) + "\n")
        sc = doc.get("scores", {})
        thr = sc.get("threshold", {})
        tsig = [x for x in sc.get("true", {}).get("significance", []) if x is not None]
        psig = sc.get("probe_false", {}).get("significance", [])
        if tsig or psig:
            L.append(f"Margin: default threshold significance ≥ {thr.get('min_significance')} "
                     f"(score ≥ {thr.get('min_score')}); true matches: median significance "
                     f"{_f(float(np.median(tsig)) if tsig else None)}, 5th percentile "
                     f"{_f(float(np.percentile(tsig, 5)) if tsig else None)}; strongest chance "
                     f"alignment on negatives (thresholds lowered): "
                     f"{_f(max(psig) if psig else None, '{:.2f}')}.\n")

    sq = doc.get("self_query", {})
    if sq:
        w = sq.get("windows", {}).get("earmark", {})
        wh = sq.get("whole", {})
        L.append("## Self-query\n")
        L.append(f"Clean 10 s windows of every indexed track: hit@1 {_pct(w.get('hit_at_1'))} "
                 f"of {w.get('n')}, offset ok {_pct(w.get('offset_ok'))} of hits.  Whole tracks "
                 f"(--fast): {wh.get('hits')}/{wh.get('n')} found, {wh.get('offset_ok')} at offset 0 "
                 f"± 0.1 s.\n")

    comp = doc.get("compilations", {})
    if comp.get("n_queries"):
        L.append("## Compilations\n")
        L.append(f"{comp['n_queries']} queries, each {comp['uses'] // comp['n_queries']} catalogue "
                 f"recordings of 20 s back to back with 20 s of negative music among them: "
                 f"{comp['found']} of {comp['uses']} uses found at their place, "
                 f"{comp['wrong']} matches of a recording the query does not use.\n")

    ix = doc.get("indexing", {})
    if ix:
        L.append("## Throughput\n")
        rows = []
        for r in ix.get("runs", []):
            rows.append([f"Earmark index -j {r['jobs']}", r["files"], f"{r['audio_seconds'] / 3600:.2f}",
                         _f(r["seconds"]), _f(r["x_realtime"], "{:.0f}×"),
                         _f(r["x_realtime_per_process"], "{:.0f}×")])
        d = ix.get("decode_only", {})
        if d:
            rows.append([f"decode only -j {d['jobs']}", d["files"], f"{d['audio_seconds'] / 3600:.2f}",
                         _f(d["seconds"]), _f(d["x_realtime"], "{:.0f}×"),
                         _f(d["x_realtime"] / d["jobs"] if d.get("x_realtime") else None, "{:.0f}×")])
        for p, pd in (doc.get("peers") or {}).items():
            pi = pd.get("index")
            if pi:
                rows.append([f"{p} index -j {pi['jobs']}", pi.get("detail", {}).get("files", "?"),
                             f"{pi['audio_seconds'] / 3600:.2f}", _f(pi["seconds"]),
                             _f(pi["x_realtime"], "{:.0f}×"),
                             _f(pi["x_realtime"] / pi["jobs"] if pi.get("x_realtime") else None, "{:.0f}×")])
        L.append(_table(["run", "files", "audio h", "seconds", "× real-time", "× RT per process"], rows))
        L.append(f"\nIndexing at -j {ix['runs'][-1]['jobs']} runs at {_f(ix.get('ratio_to_decode_only'), '{:.2f}')}× "
                 f"the decode-only throughput; speed-up over one process {_f(ix.get('speedup'), '{:.2f}')}×"
                 f" ({ix.get('note')}).")
        wu = ix.get("warmup")
        if wu:
            L.append(f"The timed runs follow a warm-up: indexing one 20-s synthetic song took "
                     f"{_f(wu['seconds'], '{:.1f}')} s (Numba compiles the indexing kernels on a "
                     f"first run with no cache: a one-time cost per install and per kernel "
                     f"change), and reading the catalogue files {_f(wu['read_seconds'], '{:.1f}')} s "
                     f"(indexing and decode-only then read the same page cache).")
        L.append("")
        st = ix.get("stages")
        if st:
            names = ["decode", "resample", "spectrogram", "peaks", "hashing", "store"]
            L.append(f"Per-stage, one process, {st['files']} files ({st['audio_seconds'] / 60:.1f} min of audio):\n")
            L.append(_table(["stage"] + names + ["total"],
                            [["seconds"] + [_f(st["seconds"][k], "{:.2f}") for k in names] + [_f(st["total_seconds"], "{:.2f}")],
                             ["× real-time"] + [_f(st["x_realtime"][k], "{:.0f}") for k in names] + [_f(st["x_realtime_total"], "{:.0f}")],
                             ["share"] + [_pct(st["share"][k]) for k in names] + ["100 %"]]) + "\n")

    L.append("## Size, latency, memory\n")
    ind = doc.get("index", {})
    lat = doc.get("latency", {})
    rows = []
    rows.append(["index size", f"{ind.get('bytes', 0) / 1e6:.1f} MB, "
                 f"{_f(ind.get('bytes_per_audio_second'))} bytes per audio second, "
                 f"{ind.get('landmarks')} landmarks, {ind.get('segments')} segments"])
    ot = ind.get("open_time") or {}
    rows.append(["Index.open", f"{_f(1000 * ot['first_s'] if ot.get('first_s') is not None else None)} ms first, "
                 f"{_f(1000 * ot['median_s'] if ot.get('median_s') is not None else None)} ms median"])
    for s in ("earmark", "earmark-fast"):
        x = lat.get(s)
        if x:
            rows.append([f"match in process, {_label(doc, s)}",
                         f"p50 {_f(x['p50_ms'])} ms, p95 {_f(x['p95_ms'])} ms, mean "
                         f"{_f(x.get('mean_ms'))} ms wall and {_f(x.get('mean_cpu_ms'))} ms CPU "
                         f"(all {x['n']} queries); "
                         f"10 s clean: p50 {_f(x.get('clean_10s_p50_ms'))} ms"])
    for p, pd in (doc.get("peers") or {}).items():
        if "match" in pd:
            pm = pd["match"]
            rows.append([f"match, {p} (batch)", f"{_f(pm['per_query_ms'])} ms wall per query over "
                         f"{pm['queries']} queries with {pm['jobs']} processes "
                         f"({_f(pm['per_query_cpu_ms'])} ms CPU per query)"])
        elif "error" in pd:
            rows.append([f"{p}", f"failed: {pd['error']}"])
    cli = doc.get("cli", {})
    if cli.get("available"):
        rows.append(["fp match (CLI, one file)", f"p50 {_f(cli['p50_s'], '{:.2f}')} s, p95 "
                     f"{_f(cli['p95_s'], '{:.2f}')} s over {cli['n']} calls (first call "
                     f"{_f(cli['first_call_s'], '{:.2f}')} s)"])
    else:
        rows.append(["fp match (CLI)", cli.get("note", "not measured")])
    mem = doc.get("memory", {})
    rows.append(["peak RSS", f"matching process {_f(mem.get('peak_rss_mb_matching_process'), '{:.0f}')} MB; "
                 f"indexing -j N parent {_f(mem.get('peak_rss_mb_index_jN'), '{:.0f}')} MB, "
                 f"largest worker {_f(mem.get('peak_rss_mb_index_jN_workers'), '{:.0f}')} MB"])
    L.append(_table(["what", "value"], rows) + "\n")

    tg = doc.get("targets") or []
    if tg:
        L.append("## Targets (issues #2 and #4)\n")
        rows = []
        for t in tg:
            v = t["value"]
            if isinstance(v, float):
                v = (f"{100 * v:.1f} %" if ("hit@1" in t["target"] or "within" in t["target"]
                                            or "located" in t["target"]) else f"{v:.3g}")
            rows.append([t["group"], t["target"], v, t["goal"],
                         "pass" if t["pass"] else ("–" if t["pass"] is None else "**FAIL**")])
        L.append(_table(["group", "target", "measured", "goal", ""], rows) + "\n")

    sc = doc.get("scale")
    if sc and sc.get("steps"):
        L.append("## Scale (synthetic postings with the real hash statistics)\n")
        rows = [[s["tracks"], f"{s['audio_hours']:.0f}", f"{s['index_bytes'] / 1e9:.2f}",
                 _f(s.get("latency_default_p50_ms")), _f(s.get("latency_fast_p50_ms")),
                 _f(s.get("rss_mb"), "{:.0f}"), _pct1(s.get("fp_rate_default")),
                 _pct(s.get("hit_at_1_default"))] for s in sc["steps"]]
        L.append(_table(["tracks", "audio h", "index GB", "p50 ms default", "p50 ms fast", "RSS MB",
                         "FP rate", "hit@1 (real queries)"], rows) + "\n")

    cmp_ = doc.get("compare")
    if cmp_ and "rows" in cmp_:
        L.append(f"## Before / after (before: {cmp_.get('before_path')}, {cmp_.get('before_created')})\n")
        rows = [[r["metric"], _f(r["before"], "{:.3g}"), _f(r["after"], "{:.3g}"),
                 _f(r["delta"], "{:+.3g}")] for r in cmp_["rows"]]
        L.append(_table(["metric", "before", "after", "Δ"], rows) + "\n")
        rows = [[f"{r['transform']}" + (" (fast)" if r["system"] == "earmark-fast" else ""),
                 _pct(r["before"]), _pct(r["after"]),
                 _f(None if r["delta"] is None else 100 * r["delta"], "{:+.0f} pts")]
                for r in cmp_["transforms"]]
        L.append(_table(["hit@1", "before", "after", "Δ"], rows) + "\n")
    elif cmp_ and "error" in cmp_:
        L.append(f"## Before / after\n\n{cmp_['error']}\n")
    return "\n".join(L)


# =============================================================================== plots


def write_plots(doc: dict[str, Any], out: Path) -> list[str]:
    """PNG plots (matplotlib, Agg).  Returns the file names written."""
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    written = []
    systems = [s for s in _systems(doc) if s in doc.get("accuracy", {})]
    names = [t for t in _transform_order(doc) if any(t in doc["accuracy"][s] for s in systems)]

    # 1. hit@1 per transform, systems side by side
    fig, ax = plt.subplots(figsize=(max(8, 0.38 * len(names) * max(1, len(systems))), 5))
    width = 0.8 / max(1, len(systems))
    x = np.arange(len(names))
    for i, s in enumerate(systems):
        vals = [(doc["accuracy"][s].get(t) or {}).get("hit_at_1") for t in names]
        ax.bar(x + (i - (len(systems) - 1) / 2) * width,
               [np.nan if v is None else 100 * v for v in vals], width, label=_label(doc, s))
    ax.set_xticks(x)
    ax.set_xticklabels(names, rotation=60, ha="right", fontsize=8)
    ax.set_ylabel("hit@1 (%)")
    ax.set_ylim(0, 105)
    ax.set_title("hit@1 per transform")
    ax.legend(fontsize=8)
    ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    fig.savefig(out / "hit_at_1.png", dpi=110)
    plt.close(fig)
    written.append("hit_at_1.png")

    # 2. significance distributions, true vs false, with the threshold
    sc = doc.get("scores", {})
    fig, ax = plt.subplots(figsize=(8, 4.5))
    tsig = [v for v in sc.get("true", {}).get("significance", []) if v is not None]
    fsig = [v for v in sc.get("false", {}).get("significance", []) if v is not None]
    psig = [v for v in sc.get("probe_false", {}).get("significance", []) if v is not None]
    allv = tsig + fsig + psig
    hi = max(allv) if allv else 10.0
    bins = np.logspace(-1, math.log10(max(hi, 10.0) * 1.1), 50)
    for vals, label, color in ((tsig, "true matches (right track)", "tab:green"),
                               (fsig, "false matches (reported)", "tab:red"),
                               (psig, "chance alignments on negatives (thresholds lowered)", "tab:gray")):
        if vals:
            ax.hist(np.maximum(vals, 0.1), bins=bins, alpha=0.6, label=f"{label} (n={len(vals)})", color=color)
    thr = sc.get("threshold", {}).get("min_significance")
    if thr is not None:
        ax.axvline(thr, color="k", ls="--", label=f"default threshold ({thr})")
    ax.set_xscale("log")
    ax.set_xlabel("significance (−log10 chance probability)")
    ax.set_ylabel("queries")
    ax.set_title("Significance of true and false matches")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out / "scores.png", dpi=110)
    plt.close(fig)
    written.append("scores.png")

    # 3. latency histogram
    fig, ax = plt.subplots(figsize=(8, 4.5))
    lat = doc.get("latency", {})
    allv = [v for s in lat.values() for v in s.get("samples_ms", [])]
    if allv:
        bins = np.logspace(math.log10(max(min(allv), 0.1)), math.log10(max(allv) * 1.05), 50)
        for s, x in lat.items():
            if x.get("samples_ms"):
                ax.hist(x["samples_ms"], bins=bins, alpha=0.6,
                        label=f"{_label(doc, s)}: p50 {x['p50_ms']:.1f} ms, p95 {x['p95_ms']:.1f} ms")
        ax.set_xscale("log")
    ax.set_xlabel("match latency in process (ms)")
    ax.set_ylabel("queries")
    ax.set_title("Query latency (resample + fingerprint + search)")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out / "latency.png", dpi=110)
    plt.close(fig)
    written.append("latency.png")

    # 4. scaling curves
    sc = doc.get("scale")
    if sc and sc.get("steps"):
        written.append(plot_scale(sc, out / "scale.png"))
    return written


def plot_scale(scale: dict[str, Any], path: Path) -> str:
    """Scaling curves: latency, index size, RSS, false-positive rate vs catalogue size."""
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    steps = scale["steps"]
    n = [s["tracks"] for s in steps]
    fig, axes = plt.subplots(2, 2, figsize=(10, 7))
    ax = axes[0, 0]
    for key, label in (("latency_default_p50_ms", "default p50"), ("latency_default_p95_ms", "default p95"),
                       ("latency_fast_p50_ms", "--fast p50")):
        ys = [s.get(key) for s in steps]
        if any(y is not None for y in ys):
            ax.plot(n, ys, "o-", label=label)
    ax.set_ylabel("match latency (ms)")
    ax.legend(fontsize=8)
    ax = axes[0, 1]
    ax.plot(n, [s["index_bytes"] / 1e9 for s in steps], "o-")
    ax.set_ylabel("index on disk (GB)")
    ax = axes[1, 0]
    ax.plot(n, [s.get("rss_mb") for s in steps], "o-", label="RSS after matching")
    ax.set_ylabel("RSS (MB)")
    ax = axes[1, 1]
    ax.plot(n, [100 * (s.get("fp_rate_default") or 0) for s in steps], "o-", label="default")
    ax.plot(n, [100 * (s.get("fp_rate_fast") or 0) for s in steps], "s--", label="--fast")
    ax.set_ylabel("false positives on negatives (%)")
    ax.legend(fontsize=8)
    for a in axes.flat:
        a.set_xscale("log")
        a.set_xlabel("catalogue tracks")
        a.grid(alpha=0.3)
    fig.suptitle("Earmark cost as the index grows")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return Path(path).name


# =============================================================================== writing


def _jsonable(x: Any) -> Any:
    if isinstance(x, dict):
        return {str(k): _jsonable(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_jsonable(v) for v in x]
    if isinstance(x, (np.integer,)):
        return int(x)
    if isinstance(x, (np.floating, float)):
        v = float(x)
        return v if math.isfinite(v) else None
    if isinstance(x, np.bool_):
        return bool(x)
    if isinstance(x, np.ndarray):
        return _jsonable(x.tolist())
    return x


def write_reports(doc: dict[str, Any], out: str | Path, records: Sequence[dict[str, Any]] | None = None,
                  plots: bool = True) -> dict[str, str]:
    """Write ``results.json``, ``results.md``, ``queries.jsonl`` (if ``records``) and plots."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    files: dict[str, str] = {}
    if plots:
        doc["plots"] = write_plots(doc, out)
    clean = _jsonable(doc)
    (out / "results.json").write_text(json.dumps(clean, indent=1, ensure_ascii=False))
    files["json"] = str(out / "results.json")
    (out / "results.md").write_text(render_markdown(clean))
    files["md"] = str(out / "results.md")
    if records is not None:
        with open(out / "queries.jsonl", "w") as fh:
            for r in records:
                fh.write(json.dumps(_jsonable(r), ensure_ascii=False) + "\n")
        files["queries"] = str(out / "queries.jsonl")
    return files
