"""``fp bench``: accuracy, speed and cost of Earmark (and peers) on any music folder.

Entry point: :func:`run_bench`.  It writes everything under ``out_dir``::

    out_dir/index/          the Earmark index built by the run (jobs = N)
    out_dir/queries/        every query as a 16-bit WAV (22050 Hz), named by query id
    out_dir/peers/NAME/     each peer's own database and logs
    out_dir/results.json    the results document (schema: :mod:`earmark.bench.report`)
    out_dir/queries.jsonl   one line per (system, query): the scored outcome
    out_dir/results.md      README-ready tables
    out_dir/*.png           plots

Steps (each timed; progress with ETA through ``progress``):

1. **Indexing** - the catalogue is indexed fresh with ``jobs=N`` (this is the index the
   queries run against) and with ``jobs=1`` (on a seeded subset of the indexed files,
   see ``single_process_seconds``), each in a child process so that their memory is
   measured apart from matching.  A *decode-only* pass (``iter_audio_blocks`` at the
   index rate, same files, same process count) gives the ceiling indexing is compared
   with.  Per-stage times (decode, resample, spectrogram, peaks, hashing, store) come
   from timing the front-end functions one by one on a sample of files.
2. **Queries** - seeded and reproducible: for every transform, ``n_queries`` excerpts at
   random offsets of random catalogue tracks (decoded once per track at 22050 Hz, in a
   process pool) go through :func:`earmark.bench.transforms.apply_transform`, with
   another-music drawn from the negatives folder.  Negatives: excerpts of negative
   tracks (some transformed), white and pink noise, silence.  Self-query windows: one or
   two clean 10 s windows of *every* indexed track.
3. **Matching** in process with :meth:`Index.match_audio` under the default
   :class:`MatchConfig` and ``MATCH_PRESETS["fast"]`` (the cost of the robustness
   search, same run; in alternating blocks of 16 queries), plus a *threshold probe* on
   the negatives with the thresholds lowered, to show how close chance alignments come
   to the default threshold.
4. **Scoring** (:func:`score_result`): hit@1, reference offset within 0.1 s (a different
   offset is accepted only where the reference audio itself repeats, verified on the
   reference samples: looped game/film music), location of embedded excerpts within
   0.5 s, speed and pitch errors, false positives on negatives.
5. **Whole-track self-query**, ``fp match`` CLI latency (skipped with a note when ``fp``
   is not installed), index bytes per audio second, opening time, peak RSS, machine.
6. **Peers** (:mod:`earmark.bench.peers`): index the same files, match the same query
   WAVs, scored by the same rules.
7. ``compare``: a previous ``results.json`` gives a before/after table.

Budget on the 2-core dev machine (8.9 h catalogue): a full run is ~15-20 min; ``quick``
indexes at most ~30 min of the catalogue and runs the 8 transforms of ``QUICK_SET`` with
12 queries each (~2-4 min, more with peers).  Peers see the first 20 queries of each
transform in a full run (audfprint matches ~0.4-0.7 s per query here).  These full-mode
defaults were set from measured per-step costs, not from a complete timed full run.
"""

from __future__ import annotations

import dataclasses
import datetime as _dt
import json
import math
import multiprocessing
import os
import platform
import resource
import shutil
import subprocess
import tempfile
import time
import traceback
import zlib
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from earmark.errors import EarmarkError
from earmark.evidence import Match, QueryResult

#: Version of the results document (bump on incompatible changes; see report.py).
SCHEMA_VERSION = 1
#: Sample rate queries are generated and written at.
QUERY_SR = 22050
#: Tolerances of the scorer.
OFFSET_TOL_S = 0.1
LOCATE_TOL_S = 0.5
#: A top match on another catalogue file counts as a hit when that file holds the same
#: recording at the matched place (:func:`same_recording`): time-frequency correlation
#: at least this (another master measured 0.74-0.85 on the dev corpus, other audio < 0.2).
MASTER_MIN_CORR = 0.5
#: Full-mode sizes.
FULL_QUERIES_PER_TRANSFORM = 60
QUICK_QUERIES_PER_TRANSFORM = 12
FULL_NEGATIVES = 220
QUICK_NEGATIVES = 30
#: Transforms applied to negative excerpts too.
NEGATIVE_TRANSFORMS = ("speed_1.25", "pitch_+2", "tempo_-10", "mp3_64k", "slowed_reverb",
                       "reverb")

ProgressFn = Callable[[str, int, int], None]


# =============================================================================== progress


class RichProgress:
    """``progress(stage, done, total)`` callback drawing one rich bar per stage (with ETA)."""

    def __init__(self) -> None:
        from rich.console import Console
        from rich.progress import (BarColumn, MofNCompleteColumn, Progress, TextColumn,
                                   TimeElapsedColumn, TimeRemainingColumn)

        self._progress = Progress(TextColumn("{task.description:<28}"), BarColumn(),
                                  MofNCompleteColumn(), TimeElapsedColumn(), TextColumn("eta"),
                                  TimeRemainingColumn(), console=Console(stderr=True))
        self._tasks: dict[str, Any] = {}

    def __enter__(self) -> "RichProgress":
        self._progress.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self._progress.stop()

    def __call__(self, stage: str, done: int, total: int) -> None:
        task = self._tasks.get(stage)
        if task is None:
            task = self._tasks[stage] = self._progress.add_task(stage, total=max(total, 1))
        self._progress.update(task, completed=done, total=max(total, 1))


def _null_progress(stage: str, done: int, total: int) -> None:
    return None


# =============================================================================== ground truth


@dataclass
class QuerySpec:
    """One query and its ground truth.

    ``kind`` is ``"positive"`` (an excerpt of ``reference``), ``"self"`` (a clean window of an
    indexed track, reported apart) or ``"negative"`` (must match nothing).  ``offset`` is where
    the excerpt starts in the reference (seconds); ``speed``/``pitch`` are the transform's
    ground truth (reference seconds per query second, semitones); ``embed_offset`` is where
    the excerpt starts inside the query (embedding transforms; 0 otherwise).
    """

    qid: str
    kind: str
    transform: str
    family: str
    source: str                # catalogue/negative path, or "noise:white" / "noise:pink" / "silence"
    offset: float
    excerpt_seconds: float
    seed: int
    reference: str | None = None
    speed: float = 1.0
    pitch: float = 0.0
    embed_offset: float = 0.0
    embeds: bool = False
    duration: float = 0.0
    path: str = ""
    facts: dict[str, float] = field(default_factory=dict)
    transform_seconds: float = 0.0


def _stable(name: str) -> int:
    return zlib.crc32(name.encode()) & 0x7FFFFFFF


def plan_queries(catalogue: Sequence[tuple[str, float]], negatives: Sequence[tuple[str, float]],
                 transforms: Sequence[Any], n_queries: int, n_negatives: int,
                 self_windows: int, seed: int) -> list[QuerySpec]:
    """Seeded query plan (identical for the same inputs and seed).

    Parameters
    ----------
    catalogue, negatives : sequences of (path, duration seconds)
    transforms : :class:`earmark.bench.transforms.Transform` objects for the positives.
    n_queries : excerpts per transform.
    n_negatives : negative queries in total (excerpts, transformed excerpts, noise, silence).
    self_windows : clean 10 s windows per indexed track.
    """
    from earmark.bench.transforms import TRANSFORMS

    specs: list[QuerySpec] = []
    for t in transforms:
        rng = np.random.default_rng([seed, _stable(t.name)])
        usable = [(p, d) for p, d in catalogue if d >= t.excerpt_seconds + 1.0]
        if not usable:
            continue
        for i in range(n_queries):
            path, dur = usable[int(rng.integers(len(usable)))]
            off = float(rng.uniform(0.0, dur - t.excerpt_seconds - 0.5))
            off = round(off * QUERY_SR) / QUERY_SR
            specs.append(QuerySpec(
                qid=f"{t.name}-{i:03d}", kind="positive", transform=t.name, family=t.family,
                source=path, reference=path, offset=off, excerpt_seconds=t.excerpt_seconds,
                seed=int(rng.integers(2**31)), speed=t.speed, pitch=t.pitch_semitones,
                embeds=t.embeds))
    if self_windows > 0:
        clean = TRANSFORMS["clean_10s"]
        rng = np.random.default_rng([seed, _stable("self")])
        for ti, (path, dur) in enumerate(catalogue):
            if dur < clean.excerpt_seconds + 1.0:
                continue
            for k in range(self_windows):
                lo = (dur - clean.excerpt_seconds - 0.5) * k / self_windows
                hi = (dur - clean.excerpt_seconds - 0.5) * (k + 1) / self_windows
                off = round(float(rng.uniform(lo, hi)) * QUERY_SR) / QUERY_SR
                specs.append(QuerySpec(
                    qid=f"self-{ti:04d}-{k}", kind="self", transform="clean_10s",
                    family="self", source=path, reference=path, offset=off,
                    excerpt_seconds=clean.excerpt_seconds, seed=int(rng.integers(2**31))))
    # Negatives: 55 % clean excerpts of other music, 25 % transformed, 8 % white noise,
    # 8 % pink noise, 4 % silence.
    if n_negatives > 0:
        rng = np.random.default_rng([seed, _stable("negatives")])
        n_tr = int(round(0.25 * n_negatives))
        n_white = n_pink = max(1, int(round(0.08 * n_negatives)))
        n_sil = max(1, int(round(0.04 * n_negatives)))
        n_clean = max(0, n_negatives - n_tr - n_white - n_pink - n_sil)
        if not negatives:  # nothing to excerpt: more noise instead
            n_white += (n_clean + n_tr) // 2
            n_pink += (n_clean + n_tr) - (n_clean + n_tr) // 2
            n_clean = n_tr = 0
        neg_tf = [TRANSFORMS[n] for n in NEGATIVE_TRANSFORMS if n in TRANSFORMS]
        i = 0
        for j in range(n_clean + n_tr):
            t = TRANSFORMS["clean_10s"] if j < n_clean else neg_tf[(j - n_clean) % len(neg_tf)]
            usable = [(p, d) for p, d in negatives if d >= t.excerpt_seconds + 1.0]
            if not usable:
                continue
            path, dur = usable[int(rng.integers(len(usable)))]
            off = round(float(rng.uniform(0.0, dur - t.excerpt_seconds - 0.5)) * QUERY_SR) / QUERY_SR
            specs.append(QuerySpec(
                qid=f"neg-{'music' if j < n_clean else t.name}-{i:03d}", kind="negative",
                transform=t.name if j >= n_clean else "clean_10s",
                family="music" if j < n_clean else "music-transformed", source=path,
                offset=off, excerpt_seconds=t.excerpt_seconds, seed=int(rng.integers(2**31)),
                speed=t.speed, pitch=t.pitch_semitones))
            i += 1
        for source, count in (("noise:white", n_white), ("noise:pink", n_pink), ("silence", n_sil)):
            for _ in range(count):
                specs.append(QuerySpec(
                    qid=f"neg-{source.replace(':', '-')}-{i:03d}", kind="negative",
                    transform="clean_10s", family=source.split(":")[-1], source=source,
                    offset=0.0, excerpt_seconds=10.0, seed=int(rng.integers(2**31))))
                i += 1
    return specs


# =============================================================================== query generation (pool workers)

_NEG_SOURCES: list[tuple[str, float]] = []


def _other_audio_factory(negatives: Sequence[tuple[str, float]]):
    """``other_audio(seconds, rng)`` for :class:`TransformContext`: a random stretch of a
    random negative track (synthetic music when there is no negatives folder)."""
    from earmark.fingerprint import audio as audio_io

    def other_audio(seconds: float, rng: np.random.Generator) -> np.ndarray:
        n = int(round(seconds * QUERY_SR))
        if not negatives:
            from earmark.synth import synth_song

            return synth_song(int(rng.integers(2**31)), seconds=seconds, sr=QUERY_SR)[:n]
        path, dur = negatives[int(rng.integers(len(negatives)))]
        off = float(rng.uniform(0.0, max(0.0, dur - seconds - 0.1)))
        y = audio_io.load_audio(path, QUERY_SR, max_seconds=seconds, offset_seconds=off)
        if y.shape[0] == 0:
            y = np.zeros(n, np.float32)
        if y.shape[0] < n:
            y = np.tile(y, int(math.ceil(n / y.shape[0])))
        return y[:n].astype(np.float32)

    return other_audio


def _make_queries(job: tuple[str, list[QuerySpec], str, list[tuple[str, float]]]
                  ) -> list[QuerySpec] | str:
    """Pool worker: decode one source once, cut, transform and write its queries."""
    source, specs, qdir, negatives = job
    try:
        import soundfile as sf

        from earmark.bench.transforms import TransformContext, apply_transform, transform_named
        from earmark.fingerprint import audio as audio_io

        ctx = TransformContext(other_audio=_other_audio_factory(negatives))
        y = None
        if not (source.startswith("noise:") or source == "silence"):
            y = audio_io.load_audio(source, QUERY_SR)
        out = []
        for s in specs:
            t = transform_named(s.transform)
            n = int(round(s.excerpt_seconds * QUERY_SR))
            if source.startswith("noise:"):
                from earmark.synth import synth_noise

                excerpt = synth_noise(s.seed, s.excerpt_seconds, QUERY_SR, source.split(":")[1])
            elif source == "silence":
                excerpt = np.zeros(n, np.float32)
            else:
                start = int(round(s.offset * QUERY_SR))
                excerpt = y[start:start + n]
            if source == "silence":
                audio, emb, facts, el = excerpt, 0.0, {}, 0.0
            else:
                o = apply_transform(t, excerpt, QUERY_SR, np.random.default_rng(s.seed), ctx)
                audio, emb, facts, el = o.audio, o.embed_offset, dict(o.facts), o.elapsed
            path = os.path.join(qdir, f"{s.qid}.wav")
            sf.write(path, audio, QUERY_SR, subtype="PCM_16")
            out.append(dataclasses.replace(
                s, embed_offset=float(emb), duration=len(audio) / QUERY_SR, path=path,
                facts={k: float(v) for k, v in facts.items()}, transform_seconds=float(el)))
        return out
    except Exception as e:  # reported by the parent, never swallowed
        return f"{source}: {type(e).__name__}: {e}\n{traceback.format_exc()}"


def generate_queries(specs: list[QuerySpec], qdir: str, negatives: Sequence[tuple[str, float]],
                     jobs: int, progress: ProgressFn) -> tuple[list[QuerySpec], float]:
    """Generate all query WAVs in a process pool; returns the completed specs and seconds."""
    os.makedirs(qdir, exist_ok=True)
    cost = {"griffinlim": 10.0, "vocoder": 10.0, "tempo": 2.0, "pitch": 2.0, "tempokey": 4.0,
            "phasevocoder": 2.0}
    by_source: dict[str, list[QuerySpec]] = {}
    for s in specs:
        by_source.setdefault(s.source, []).append(s)
    chunks: list[tuple[float, tuple]] = []
    for source, group in by_source.items():
        for i in range(0, len(group), 16):
            part = group[i:i + 16]
            est = sum(cost.get(s.transform, cost.get(s.family, 0.3)) for s in part) + 2.0
            chunks.append((est, (source, part, qdir, list(negatives))))
    chunks.sort(key=lambda c: -c[0])
    t0 = time.perf_counter()
    done: list[QuerySpec] = []
    total = len(specs)
    progress("queries: generate", 0, total)
    ctx = multiprocessing.get_context("fork")
    with ctx.Pool(processes=max(1, jobs)) as pool:
        for res in pool.imap_unordered(_make_queries, [c[1] for c in chunks]):
            if isinstance(res, str):
                raise RuntimeError(f"query generation failed: {res}")
            done.extend(res)
            progress("queries: generate", len(done), total)
    order = {s.qid: i for i, s in enumerate(specs)}
    done.sort(key=lambda s: order[s.qid])
    return done, time.perf_counter() - t0


# =============================================================================== scoring


def _same_path(a: str | None, b: str | None) -> bool:
    if a is None or b is None:
        return False
    return a == b or os.path.realpath(a) == os.path.realpath(b)


def repeated_section(path: str, true_offset: float, est_offset: float, seconds: float,
                     tol: float = OFFSET_TOL_S, sr: int = 8000, min_corr: float = 0.8) -> bool:
    """True if the reference audio at ``est_offset`` (within ``tol``) repeats the audio at
    ``true_offset`` - a looped section, where any of the copies is a correct answer.

    Verified on the reference samples (normalised cross-correlation >= ``min_corr`` over lags
    of +-``tol``), independent of any fingerprint.
    """
    from scipy.signal import fftconvolve

    from earmark.fingerprint import audio as audio_io

    seconds = max(1.0, min(seconds, 10.0))
    if est_offset < -tol:
        return False
    try:
        a = audio_io.load_audio(path, sr, max_seconds=seconds, offset_seconds=max(0.0, true_offset))
        lo = max(0.0, est_offset - tol)
        b = audio_io.load_audio(path, sr, max_seconds=seconds + 2 * tol, offset_seconds=lo)
    except EarmarkError:
        return False
    if a.shape[0] < sr or b.shape[0] < a.shape[0]:
        return False
    a = a.astype(np.float64) - a.mean()
    b = b.astype(np.float64)
    na = float(np.sqrt(np.sum(a * a)))
    if na < 1e-3 * math.sqrt(a.shape[0]):  # silent stretch: no evidence either way
        return False
    corr = fftconvolve(b, a[::-1], mode="valid")
    csum = np.concatenate([[0.0], np.cumsum(b)])
    csq = np.concatenate([[0.0], np.cumsum(b * b)])
    m = a.shape[0]
    win_sum = csum[m:] - csum[:-m]
    win_sq = csq[m:] - csq[:-m]
    nb = np.sqrt(np.maximum(win_sq - win_sum ** 2 / m, 1e-12))
    ncc = corr[: nb.shape[0]] / (na * nb)
    return bool(ncc.size and float(np.max(ncc)) >= min_corr)


def same_recording(true_path: str, true_offset: float, other_path: str, other_offset: float,
                   seconds: float, tol: float = OFFSET_TOL_S, sr: int = 8000,
                   min_corr: float = MASTER_MIN_CORR) -> bool:
    """True if another catalogue file holds the same recording at ``other_offset`` (within
    ``tol``) as ``true_path`` at ``true_offset``: a second master of it (a remaster, a
    re-release), where naming either file is right.

    Verified on the audio, independent of any fingerprint: the correlation of the two
    log-magnitude spectrograms, each frequency's mean removed (so that EQ and level
    differences between masters do not count), over lags of +-``tol``.  A remaster's
    waveform can differ (on the dev corpus, a pair correlates 0.38 sample by sample) while
    its time-frequency pattern is the recording's (0.74 and 0.85 for the corpus's two
    "enhanced" masters); different music or another place of the same track stays under
    0.2.

    Examples
    --------
    >>> import tempfile, os, numpy as np, soundfile as sf
    >>> from earmark.synth import synth_song
    >>> d = tempfile.mkdtemp()
    >>> y = synth_song(seed=3, seconds=12.0, sr=8000)
    >>> sf.write(os.path.join(d, "a.wav"), y, 8000)
    >>> sf.write(os.path.join(d, "b.wav"), np.convolve(y, [0.6, 0.3, 0.1])[: y.size] * 0.5, 8000)
    >>> sf.write(os.path.join(d, "c.wav"), synth_song(seed=4, seconds=12.0, sr=8000), 8000)
    >>> a, b, c = (os.path.join(d, n) for n in ("a.wav", "b.wav", "c.wav"))
    >>> same_recording(a, 2.0, b, 2.05, 5.0), same_recording(a, 2.0, c, 2.0, 5.0)
    (True, False)
    """
    from scipy.signal import stft

    from earmark.fingerprint import audio as audio_io

    seconds = max(1.0, min(seconds, 10.0))
    if other_offset < -tol:
        return False
    hop, n_fft = 128, 512
    try:
        a = audio_io.load_audio(true_path, sr, max_seconds=seconds,
                                offset_seconds=max(0.0, true_offset))
        lo = max(0.0, other_offset - tol)
        b = audio_io.load_audio(other_path, sr, max_seconds=seconds + 2 * tol + n_fft / sr,
                                offset_seconds=lo)
    except EarmarkError:
        return False
    if a.shape[0] < sr or b.shape[0] < a.shape[0]:
        return False

    def log_spec(x: np.ndarray) -> np.ndarray:
        _, _, z = stft(x, sr, nperseg=n_fft, noverlap=n_fft - hop, boundary=None, padded=False)
        return np.log(np.abs(z[4:-8]) ** 2 + 1e-9)   # ~60 Hz to ~3.8 kHz

    la, lb = log_spec(a), log_spec(b)
    la = la - la.mean(axis=1, keepdims=True)
    na = float(np.sqrt(np.sum(la * la)))
    n = la.shape[1]
    best = -1.0
    for lag in range(0, lb.shape[1] - n + 1):
        w = lb[:, lag:lag + n]
        w = w - w.mean(axis=1, keepdims=True)
        nw = float(np.sqrt(np.sum(w * w)))
        if na > 0 and nw > 0:
            best = max(best, float(np.sum(la * w)) / (na * nw))
    return best >= min_corr


def _expected_ref_offset(m: Match, embed_offset: float) -> float:
    """Reference time (s) at which the excerpt starts, per the match's alignment line."""
    return float(m.reference_start - m.speed * (m.query_start - embed_offset))


#: A compilation query: this many catalogue excerpts of COMPILATION_SECONDS each, back to
#: back, with one excerpt of negative music among them (a DJ mix, a "best of" upload).
COMPILATION_RECORDINGS = 5
COMPILATION_SECONDS = 20.0


def compilation_bench(idx: Any, catalogue: Sequence[tuple[str, float]],
                      negatives: Sequence[tuple[str, float]], seed: int, mcfg: Any,
                      n_queries: int = 8, prog: ProgressFn | None = None) -> dict[str, Any]:
    """Queries that use several catalogue recordings one after another.

    Each of ``n_queries`` seeded queries holds ``COMPILATION_RECORDINGS`` excerpts of
    ``COMPILATION_SECONDS`` from distinct catalogue files (and one of negative music when
    a negatives folder is given).  A use is *found* when its recording is reported with
    the middle of its query segment inside the excerpt's slot and its reference offset
    within ``OFFSET_TOL_S``; a match of any other recording is *wrong*.

    Returns ``{n_queries, uses, found, wrong, per_query[]}``.
    """
    from earmark.fingerprint import audio as audio_io

    rng = np.random.default_rng([seed, _stable("compilations")])
    long_enough = [c for c in catalogue if c[1] >= COMPILATION_SECONDS + 2.0]
    neg_ok = [n for n in negatives if n[1] >= COMPILATION_SECONDS + 2.0]
    per_query = []
    if len(long_enough) < COMPILATION_RECORDINGS:
        return {"n_queries": 0, "uses": 0, "found": 0, "wrong": 0, "per_query": []}
    for q in range(n_queries):
        picks = rng.choice(len(long_enough), COMPILATION_RECORDINGS, replace=False)
        slots = [(long_enough[int(i)][0], float(rng.uniform(1.0, long_enough[int(i)][1]
                                                           - COMPILATION_SECONDS - 1.0)))
                 for i in picks]
        if neg_ok:
            n_path, n_dur = neg_ok[int(rng.integers(len(neg_ok)))]
            slots.insert(int(rng.integers(1, len(slots))),
                         (None, float(rng.uniform(0.0, n_dur - COMPILATION_SECONDS))))
        parts, uses = [], []
        for k, (path, start) in enumerate(slots):
            src = path if path is not None else n_path
            y = audio_io.load_audio(src, QUERY_SR, max_seconds=COMPILATION_SECONDS,
                                    offset_seconds=start)
            y = np.pad(y, (0, max(0, int(COMPILATION_SECONDS * QUERY_SR) - y.shape[0])))
            parts.append(y[: int(COMPILATION_SECONDS * QUERY_SR)])
            if path is not None:
                uses.append((path, k * COMPILATION_SECONDS, start))
        res = idx.match_audio(np.concatenate(parts), QUERY_SR, mcfg)
        found, used = 0, {u[0] for u in uses}
        for path, q0, ref0 in uses:
            found += any(_same_path(m.reference.path, path)
                         and q0 <= 0.5 * (m.query_start + m.query_end) < q0 + COMPILATION_SECONDS
                         and abs(m.reference_start - m.speed * m.query_start - (ref0 - q0))
                         <= OFFSET_TOL_S
                         for m in res.matches)
        wrong = sum(not any(_same_path(m.reference.path, u) for u in used) for m in res.matches)
        per_query.append({"uses": len(uses), "found": found, "wrong": wrong,
                          "seconds": res.elapsed})
        if prog is not None:
            prog("compilations", q + 1, n_queries)
    return {"n_queries": len(per_query), "uses": sum(p["uses"] for p in per_query),
            "found": sum(p["found"] for p in per_query),
            "wrong": sum(p["wrong"] for p in per_query), "per_query": per_query}


def score_result(spec: QuerySpec, result: QueryResult, system: str = "earmark",
                 alias_check: Callable[[str, float, float, float], bool] | None = None,
                 master_check: Callable[[str, float, str, float, float], bool] | None = None
                 ) -> dict[str, Any]:
    """Score one Earmark :class:`QueryResult` against its ground truth.

    Returns a flat record: ``hit`` (top match is the right track), ``wrong`` (top match is
    another track), ``false_positive`` (negatives: any match), ``offset_ok`` (hit and the
    reference offset within 0.1 s, or at a verified repeat of the reference),
    ``offset_exact`` (within 0.1 s of the true offset), ``located_ok`` (embedding
    transforms: query location within 0.5 s), ``speed_err`` (``|speed/true - 1|``),
    ``pitch_err`` (semitones), ``score``, ``significance``, ``latency_ms``, ``error``.
    A top match on another file is a hit only where ``master_check`` verifies that file
    holds the same recording at the matched place (``other_master`` is then set).
    """
    rec = _base_record(spec, system)
    rec["latency_ms"] = round(float(result.elapsed) * 1000.0, 3)
    rec["error"] = result.error
    rec["n_matches"] = len(result.matches)
    top = result.matches[0] if result.matches else None
    if top is not None:
        rec["top_reference"] = top.reference.path
        rec["score"] = int(top.score)
        rec["significance"] = float(top.significance)
        if top.verified is not None:    # under the threshold, passed on the audio
            rec["verified"] = top.verified.to_dict()
    if spec.kind == "negative":
        rec["false_positive"] = top is not None
        return rec
    if top is None:
        return rec
    est = _expected_ref_offset(top, spec.embed_offset)
    hit = _is_hit(rec, spec, top.reference.path, est, master_check)
    if not hit:
        return rec
    _score_offset(rec, spec, est, alias_check)
    if spec.embeds:
        rec["located_ok"] = abs(top.query_start - spec.embed_offset) <= LOCATE_TOL_S
    rec["speed_est"] = round(float(top.speed), 5)
    rec["pitch_est"] = round(float(top.pitch_semitones), 4)
    rec["speed_err"] = abs(float(top.speed) / spec.speed - 1.0)
    rec["pitch_err"] = abs(float(top.pitch_semitones) - spec.pitch)
    return rec


def score_peer_match(spec: QuerySpec, pm: Any, system: str,
                     alias_check: Callable[[str, float, float, float], bool] | None = None,
                     latency_ms: float | None = None,
                     master_check: Callable[[str, float, str, float, float], bool] | None = None
                     ) -> dict[str, Any]:
    """Score a peer's :class:`~earmark.bench.peers.PeerMatch` by the same rules (peers report
    no speed/pitch; their offset is the reference time of the query's first sample)."""
    rec = _base_record(spec, system)
    rec["latency_ms"] = latency_ms
    found = pm is not None and pm.reference is not None
    rec["n_matches"] = 1 if found else 0
    if found:
        rec["top_reference"] = pm.reference
        rec["score"] = float(pm.score)
    if spec.kind == "negative":
        rec["false_positive"] = bool(found)
        return rec
    if not found:
        return rec
    est = None if pm.reference_offset is None else float(pm.reference_offset) + spec.embed_offset
    hit = _is_hit(rec, spec, pm.reference, est, master_check)
    if not hit or est is None:
        return rec
    _score_offset(rec, spec, est, alias_check)
    return rec


def _is_hit(rec: dict[str, Any], spec: QuerySpec, top_path: str, est: float | None,
            master_check: Callable | None) -> bool:
    """Sets ``hit`` / ``wrong`` (and ``other_master``) of a record whose top match is
    ``top_path`` at reference offset ``est``; the same rule for Earmark and peers."""
    hit = _same_path(top_path, spec.reference)
    if (not hit and master_check is not None and est is not None
            and spec.reference is not None):
        hit = bool(master_check(spec.reference, spec.offset, top_path, est, spec.excerpt_seconds))
        rec["other_master"] = hit
    rec["hit"] = hit
    rec["wrong"] = not hit
    return hit


def _score_offset(rec: dict[str, Any], spec: QuerySpec, est: float,
                  alias_check: Callable | None) -> None:
    """Offset fields of a hit, the same for Earmark and peers: exact within
    ``OFFSET_TOL_S``, else accepted if ``alias_check`` verifies a repeat of the section."""
    err = est - spec.offset
    rec["offset_err"] = round(err, 4)
    rec["offset_exact"] = abs(err) <= OFFSET_TOL_S
    ok = rec["offset_exact"]
    if not ok and rec.get("other_master"):
        ok = True   # same_recording found the recording within OFFSET_TOL_S of est there
    if not ok and alias_check is not None and spec.reference is not None:
        ok = alias_check(spec.reference, spec.offset, est, spec.excerpt_seconds)
        rec["offset_repeat"] = bool(ok)
    rec["offset_ok"] = bool(ok)


def _base_record(spec: QuerySpec, system: str) -> dict[str, Any]:
    return {"system": system, "qid": spec.qid, "kind": spec.kind, "transform": spec.transform,
            "family": spec.family, "duration": round(spec.duration, 3),
            "reference": spec.reference, "true_offset": spec.offset, "true_speed": spec.speed,
            "true_pitch": spec.pitch, "embed_offset": spec.embed_offset, "hit": False,
            "wrong": False, "false_positive": False, "offset_ok": None, "offset_exact": None,
            "located_ok": None, "speed_err": None, "pitch_err": None, "score": None,
            "significance": None, "top_reference": None, "n_matches": 0, "error": None,
            "latency_ms": None, "verified": None}


def _pct(values: Sequence[float], q: float) -> float | None:
    v = [x for x in values if x is not None]
    return float(np.percentile(v, q)) if v else None


def _frac(values: Sequence[Any]) -> float | None:
    v = [bool(x) for x in values if x is not None]
    return sum(v) / len(v) if v else None


def summarise_transform(records: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """One accuracy row from the scored records of one (system, transform)."""
    n = len(records)
    hits = [r for r in records if r["hit"]]
    row: dict[str, Any] = {
        "n": n, "hits": len(hits), "hit_at_1": len(hits) / n if n else None,
        "other_master": sum(1 for r in hits if r.get("other_master")),
        "verified": sum(1 for r in hits if r.get("verified")),
        "wrong": sum(1 for r in records if r["wrong"]),
        "offset_ok": _frac([r["offset_ok"] for r in hits]),
        "offset_exact": _frac([r["offset_exact"] for r in hits]),
        "located_ok": _frac([r["located_ok"] for r in hits]),
        "speed_err_median": _pct([r["speed_err"] for r in hits], 50),
        "speed_err_p95": _pct([r["speed_err"] for r in hits], 95),
        "speed_within_1pct": _frac([r["speed_err"] <= 0.01 for r in hits if r["speed_err"] is not None]),
        "pitch_err_median": _pct([r["pitch_err"] for r in hits], 50),
        "pitch_err_p95": _pct([r["pitch_err"] for r in hits], 95),
        "pitch_within_025": _frac([r["pitch_err"] <= 0.25 for r in hits if r["pitch_err"] is not None]),
        "latency_p50_ms": _pct([r["latency_ms"] for r in records], 50),
        "latency_p95_ms": _pct([r["latency_ms"] for r in records], 95),
        "score_median": _pct([r["score"] for r in hits], 50),
    }
    return row


def summarise(records: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """Accuracy rows per system and transform, negatives per system, self-query windows.

    Returns ``{"accuracy": {system: {transform: row}}, "negatives": {system: {...}},
    "self_query_windows": {system: row}}`` (rows from :func:`summarise_transform`).
    """
    acc: dict[str, dict[str, Any]] = {}
    neg: dict[str, Any] = {}
    selfq: dict[str, Any] = {}
    groups: dict[tuple[str, str], list[dict[str, Any]]] = {}
    negs: dict[str, list[dict[str, Any]]] = {}
    selfs: dict[str, list[dict[str, Any]]] = {}
    for r in records:
        if r["kind"] == "positive":
            groups.setdefault((r["system"], r["transform"]), []).append(r)
        elif r["kind"] == "negative":
            negs.setdefault(r["system"], []).append(r)
        elif r["kind"] == "self":
            selfs.setdefault(r["system"], []).append(r)
    for (system, tname), recs in groups.items():
        acc.setdefault(system, {})[tname] = summarise_transform(recs)
    for system, recs in negs.items():
        by_family: dict[str, dict[str, int]] = {}
        for r in recs:
            f = by_family.setdefault(r["family"], {"n": 0, "false_positives": 0})
            f["n"] += 1
            f["false_positives"] += int(bool(r["false_positive"]))
        fp = sum(int(bool(r["false_positive"])) for r in recs)
        neg[system] = {"n": len(recs), "false_positives": fp, "fp_rate": fp / len(recs) if recs else None,
                       "by_family": by_family,
                       "max_fp_significance": max((r["significance"] for r in recs
                                                   if r["false_positive"] and r["significance"] is not None),
                                                  default=None)}
    for system, recs in selfs.items():
        selfq[system] = summarise_transform(recs)
    return {"accuracy": acc, "negatives": neg, "self_query_windows": selfq}


# =============================================================================== child processes


def _run_in_child(fn: Callable[..., Any], args: tuple, progress: ProgressFn, stage: str) -> Any:
    """Run ``fn(*args, report=...)`` in a forked child (not daemonic, so it may start its own
    pool); ``report(done, total)`` is relayed to ``progress``.  Returns ``fn``'s result."""
    ctx = multiprocessing.get_context("fork")
    parent, child = ctx.Pipe(duplex=False)

    def target() -> None:
        def report(done: int, total: int) -> None:
            child.send(("progress", done, total))
        try:
            res = fn(*args, report=report)
            res["rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0
            res["rss_children_mb"] = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024.0
            child.send(("result", res))
        except BaseException as e:  # noqa: BLE001 - relayed as one line
            child.send(("error", f"{type(e).__name__}: {e}"))
        finally:
            child.close()

    proc = ctx.Process(target=target, daemon=False)
    proc.start()
    child.close()
    result: Any = None
    error: str | None = None
    try:
        while True:
            try:
                msg = parent.recv()
            except EOFError:
                break
            if msg[0] == "progress":
                progress(stage, msg[1], msg[2])
            elif msg[0] == "result":
                result = msg[1]
            else:
                error = msg[1]
    finally:
        proc.join()
        parent.close()
    if error is not None or result is None:
        raise RuntimeError(f"{stage} failed: {error or f'child exited with {proc.exitcode}'}")
    return result


#: Most catalogue bytes the warm-up reads into the page cache.
WARMUP_READ_MAX_BYTES = 4 << 30


def _warmup_child(work_dir: str, files: list[str], report: Callable) -> dict[str, Any]:
    """Before the timed indexing runs: compile the indexing kernels and read the catalogue.

    Numba compiles each kernel on its first call in a process with no cache for it (a
    fresh install, or a changed kernel) and caches it on disk for the next one; every
    worker of the first ``fp index`` pays it.  Measured on a fresh checkout: 8.4 s for the
    first one-file ``fp index``, 1.2 s for the next; a full bench on that checkout read
    indexing at 0.56x decode-only, the next run (warm, after this warm-up) 0.725x.  A
    20-s synthetic song indexed here compiles the kernels once; reading the catalogue
    files (up to ``WARMUP_READ_MAX_BYTES``) puts indexing and decode-only on the same
    page cache.  The one-time compile is reported, not hidden (``seconds``).
    """
    import soundfile as sf

    from earmark.index.catalogue import Index
    from earmark.synth import synth_song

    t0 = time.perf_counter()
    sr = 22050
    wav = os.path.join(work_dir, "warmup.wav")
    sf.write(wav, synth_song(seed=7, seconds=20.0, sr=sr), sr)
    with Index.open_writer(os.path.join(work_dir, "index")) as idx:
        idx.add([wav], jobs=1)
    compile_s = time.perf_counter() - t0
    n_bytes = 0
    for i, f in enumerate(files):
        if n_bytes >= WARMUP_READ_MAX_BYTES:
            break   # a catalogue this large is read from disk by every run alike
        with open(f, "rb") as fh:
            while chunk := fh.read(1 << 22):
                n_bytes += len(chunk)
        report(i + 1, len(files))
    return {"seconds": compile_s, "read_seconds": time.perf_counter() - t0 - compile_s,
            "read_bytes": n_bytes}


def _index_child(index_dir: str, files: list[str], jobs: int, report: Callable) -> dict[str, Any]:
    from earmark.index.catalogue import Index

    shutil.rmtree(index_dir, ignore_errors=True)
    t0 = time.perf_counter()
    with Index.open_writer(index_dir) as idx:
        rep = idx.add(files, jobs=jobs, progress=lambda d, t, s, p: report(d, t))
        info = idx.info()
    wall = time.perf_counter() - t0
    return {"jobs": jobs, "files": len(files), "added": len(rep.added),
            "failed": [list(f) for f in rep.failed], "audio_seconds": rep.audio_seconds,
            "seconds": wall, "x_realtime": rep.audio_seconds / wall if wall > 0 else None,
            "x_realtime_per_process": rep.audio_seconds / wall / jobs if wall > 0 else None,
            "landmarks": info["landmarks"], "bytes": info["bytes"]}


def _decode_job(args: tuple[str, int]) -> tuple[str, float, str | None]:
    from earmark.fingerprint import audio as audio_io

    path, sr = args
    n = 0
    try:
        for block in audio_io.iter_audio_blocks(path, sr, block_seconds=60.0):
            n += block.shape[0]
        return path, n / sr, None
    except EarmarkError as e:
        return path, n / sr, str(e)


def decode_only(files: list[str], sr: int, jobs: int, progress: ProgressFn) -> dict[str, Any]:
    """Decode (and resample to ``sr``) every file, ``jobs`` processes; nothing else."""
    t0 = time.perf_counter()
    seconds = 0.0
    failed = []
    ctx = multiprocessing.get_context("fork")
    with ctx.Pool(processes=max(1, jobs)) as pool:
        for i, (path, s, err) in enumerate(pool.imap(_decode_job, [(f, sr) for f in files],
                                                     chunksize=1)):
            seconds += s
            if err:
                failed.append(path)
            progress("decode-only", i + 1, len(files))
    wall = time.perf_counter() - t0
    return {"jobs": jobs, "files": len(files), "audio_seconds": seconds, "seconds": wall,
            "x_realtime": seconds / wall if wall > 0 else None, "failed": failed}


def _stages_child(files: list[str], report: Callable) -> dict[str, Any]:
    """Time each front-end stage separately, in one process, on ``files``."""
    import soundfile as sf

    from earmark.fingerprint import audio as audio_io
    from earmark.fingerprint.config import DEFAULT
    from earmark.fingerprint.landmarks import landmarks_from_peaks
    from earmark.fingerprint.peaks import context_frames, pick_peaks
    from earmark.fingerprint.spectrogram import log_spectrogram_frames
    from earmark.index import store

    cfg = DEFAULT
    pc = cfg.index
    t = {"decode": 0.0, "resample": 0.0, "spectrogram": 0.0, "peaks": 0.0, "hashing": 0.0,
         "store": 0.0}
    audio_seconds = 0.0
    keys_all, frames_all, ids = [], [], []
    hop, n_fft = cfg.hop_length, cfg.n_fft
    margin = context_frames(cfg, pc)
    block_frames = int(60.0 / cfg.frame_seconds)
    for i, path in enumerate(files):
        try:
            native = int(sf.info(path).samplerate)
        except Exception:  # noqa: BLE001 - not a soundfile format: PyAV decodes at 48 kHz
            native = 48000
        t0 = time.perf_counter()
        y = audio_io.load_audio(path, native)
        t1 = time.perf_counter()
        y8 = audio_io.resample(y, native, cfg.sr) if native != cfg.sr else y
        t2 = time.perf_counter()
        t["decode"] += t1 - t0
        t["resample"] += t2 - t1
        del y
        audio_seconds += y8.shape[0] / cfg.sr
        pad = np.zeros(n_fft // 2, np.float32)
        yp = np.concatenate([pad, y8.astype(np.float32), pad])
        n_frames = 1 + (yp.shape[0] - n_fft) // hop
        times, semis = [], []
        for f0 in range(0, n_frames, block_frames):
            c0 = max(0, f0 - margin)
            c1 = min(n_frames, f0 + block_frames + margin)
            ta = time.perf_counter()
            S = log_spectrogram_frames(yp[c0 * hop:(c1 - 1) * hop + n_fft], cfg.sr, n_fft, hop,
                                       cfg.fmin_hz, cfg.fmax_hz, cfg.bins_per_semitone)
            tb = time.perf_counter()
            tt, ff = pick_peaks(S, cfg, pc, first_frame=f0 - c0,
                                end_frame=min(n_frames, f0 + block_frames) - c0, frame_offset=c0)
            tc = time.perf_counter()
            t["spectrogram"] += tb - ta
            t["peaks"] += tc - tb
            times.append(tt)
            semis.append(ff)
        ta = time.perf_counter()
        lm = landmarks_from_peaks(np.concatenate(times), np.concatenate(semis), cfg, pc,
                                  y8.shape[0] / cfg.sr)
        keys = lm.keys()
        frames = np.floor(lm.anchor_time + 0.5).astype(np.int64)
        ok = keys >= 0
        keys_all.append(keys[ok].astype(np.int64))
        frames_all.append(frames[ok])
        ids.append(i + 1)
        t["hashing"] += time.perf_counter() - ta
        report(i + 1, len(files))
    with tempfile.TemporaryDirectory() as tmp:
        ta = time.perf_counter()
        arrays = store.build_segment_arrays(ids, keys_all, frames_all)
        store.write_segment(Path(tmp) / "seg-000001.emk", arrays)
        t["store"] += time.perf_counter() - ta
    total = sum(t.values())
    return {"files": len(files), "audio_seconds": audio_seconds, "seconds": t,
            "total_seconds": total,
            "x_realtime": {k: (audio_seconds / v if v > 0 else None) for k, v in t.items()},
            "x_realtime_total": audio_seconds / total if total > 0 else None,
            "share": {k: (v / total if total > 0 else None) for k, v in t.items()}}


# =============================================================================== misc measurements


def machine_info() -> dict[str, Any]:
    """CPU model, cores, memory, OS and library versions."""
    info: dict[str, Any] = {"platform": platform.platform(), "python": platform.python_version(),
                            "logical_cpus": os.cpu_count()}
    try:
        text = Path("/proc/cpuinfo").read_text()
        models = [l.split(":", 1)[1].strip() for l in text.splitlines() if l.startswith("model name")]
        info["cpu_model"] = models[0] if models else platform.processor() or None
        cores = {(l.split(":", 1)[1].strip()) for l in text.splitlines() if l.startswith("core id")}
        info["physical_cores"] = len(cores) or None
    except OSError:
        info["cpu_model"] = platform.processor() or None
    try:
        info["affinity_cpus"] = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        pass
    try:
        mem = [l for l in Path("/proc/meminfo").read_text().splitlines() if l.startswith("MemTotal")]
        info["mem_gb"] = round(int(mem[0].split()[1]) / 1024 / 1024, 1)
    except (OSError, IndexError, ValueError):
        pass
    try:
        info["load_average"] = [round(x, 2) for x in os.getloadavg()]
    except OSError:
        pass
    from importlib import metadata as md

    for pkg in ("earmark", "numpy", "numba", "scipy", "soxr", "soundfile", "av", "pedalboard"):
        try:
            info[pkg] = md.version(pkg)
        except md.PackageNotFoundError:
            info[pkg] = None
    try:
        here = Path(__file__).resolve().parent
        commit = subprocess.run(["git", "-C", str(here), "rev-parse", "--short", "HEAD"],
                                capture_output=True, text=True, timeout=5, check=False).stdout.strip()
        info["earmark_commit"] = commit or None
    except (OSError, subprocess.SubprocessError):
        info["earmark_commit"] = None
    return info


def cli_latency(index_dir: str, wavs: Sequence[str], progress: ProgressFn) -> dict[str, Any]:
    """Wall time of ``fp match --json --index INDEX WAV`` per call (after one warm-up call)."""
    exe = shutil.which("fp")
    if exe is None:
        return {"available": False, "note": "`fp` is not on PATH; CLI latency not measured"}
    if not wavs:
        return {"available": False, "note": "no query files for CLI timing"}
    env = dict(os.environ, FP_INDEX=index_dir)

    def call(wav: str) -> tuple[float, subprocess.CompletedProcess]:
        t0 = time.perf_counter()
        p = subprocess.run([exe, "match", "--json", "--index", index_dir, wav],
                           capture_output=True, text=True, env=env, timeout=120, check=False)
        return time.perf_counter() - t0, p

    first, p = call(wavs[0])
    if p.returncode not in (0, 1):
        last = (p.stderr.strip().splitlines() or ["(no message)"])[-1]
        return {"available": False, "note": f"`fp match` failed (exit {p.returncode}): {last[:200]}"}
    times, hits = [], 0
    for i, w in enumerate(wavs):
        dt, p = call(w)
        times.append(dt)
        if p.returncode == 0:
            try:
                doc = json.loads(p.stdout.strip().splitlines()[0])
                hits += int(bool(doc.get("matches")))
            except (ValueError, IndexError):
                pass
        progress("cli: fp match", i + 1, len(wavs))
    return {"available": True, "command": "fp match --json --index INDEX QUERY.wav",
            "n": len(times), "first_call_s": first, "p50_s": _pct(times, 50),
            "p95_s": _pct(times, 95), "mean_s": float(np.mean(times)), "matched": hits}


def _open_time(index_dir: str, repeats: int = 5) -> dict[str, float]:
    from earmark.index.catalogue import Index

    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        idx = Index.open(index_dir)
        times.append(time.perf_counter() - t0)
        idx.close()
    return {"first_s": times[0], "median_s": float(np.median(times))}


def _durations(files: Sequence[str]) -> list[tuple[str, float]]:
    from earmark.fingerprint import audio as audio_io

    out = []
    for f in files:
        try:
            out.append((f, float(audio_io.audio_duration(f))))
        except EarmarkError:
            continue
    return out


def _subset_by_seconds(items: Sequence[tuple[str, float]], seconds: float | None,
                       seed: int) -> list[tuple[str, float]]:
    """Seeded subset whose total duration is about ``seconds`` (all if ``None``), preferring
    tracks shorter than ``seconds / 8``."""
    if seconds is None or sum(d for _, d in items) <= seconds:
        return list(items)
    rng = np.random.default_rng([seed, _stable("subset")])
    order = [int(i) for i in rng.permutation(len(items))]
    # Prefer tracks shorter than 1/8 of the budget so a small subset still has many tracks.
    order = [i for i in order if items[i][1] <= seconds / 8] + [i for i in order if items[i][1] > seconds / 8]
    out, tot = [], 0.0
    for i in order:
        if tot >= seconds:
            break
        out.append(items[i])
        tot += items[i][1]
    return sorted(out)


def _match_all(idx: Any, specs: Sequence[QuerySpec], mcfg: Any, stage: str,
               progress: ProgressFn) -> dict[str, QueryResult]:
    return _match_interleaved(idx, specs, [mcfg], stage, progress)[0]


def _match_interleaved(idx: Any, specs: Sequence[QuerySpec], mcfgs: Sequence[Any], stage: str,
                       progress: ProgressFn, block: int = 16,
                       cpu: list[dict[str, float]] | None = None) -> list[dict[str, QueryResult]]:
    """Match every query with each config, in alternating blocks of ``block`` queries.
    With ``cpu`` (one dict per config), each query's CPU seconds go there: those of the
    whole process, so the matcher's voting threads count.

    Latencies of the configs are compared as a ratio, and the machine may be shared: run
    one config over all queries and then the other, and a neighbour busy during one half
    only moves the ratio (two such runs on one day, around a change that measured 0.96x,
    read 2.94 and 2.30).  In blocks of a few queries both see the same load, while each
    still runs on caches warmed by its own queries, as it would serving a batch (query by
    query, each ran on caches the other had filled: the ratio read ~4 % lower).  The
    config that starts a block alternates.
    """
    import soundfile as sf

    out: list[dict[str, QueryResult]] = [{} for _ in mcfgs]
    for b, first in enumerate(range(0, len(specs), block)):
        part = specs[first:first + block]
        audio = [sf.read(s.path, dtype="float32", always_2d=False) for s in part]
        order = range(len(mcfgs)) if b % 2 == 0 else reversed(range(len(mcfgs)))
        for k in order:
            for s, (y, sr) in zip(part, audio):
                cpu0 = time.process_time()
                try:
                    out[k][s.qid] = idx.match_audio(y, sr, mcfgs[k], label=s.qid)
                except EarmarkError as e:
                    out[k][s.qid] = QueryResult(query=s.qid, duration=len(y) / sr, error=str(e))
                if cpu is not None:
                    cpu[k][s.qid] = time.process_time() - cpu0
        progress(stage, first + len(part), len(specs))
    return out


def _score_samples(records: Sequence[dict[str, Any]]) -> dict[str, Any]:
    true = [r for r in records if r["hit"]]
    false = [r for r in records if r["false_positive"] or r["wrong"]]
    return {"true": {"score": [r["score"] for r in true],
                     "significance": [r["significance"] for r in true]},
            "false": {"score": [r["score"] for r in false],
                      "significance": [r["significance"] for r in false]}}


# =============================================================================== the run


def run_bench(catalogue_dir: str | os.PathLike, negatives_dir: str | os.PathLike | None = None,
              out_dir: str | os.PathLike = "bench-out", quick: bool = False, seed: int = 0,
              transforms: Iterable[str] | None = None, n_queries: int | None = None,
              jobs: int = 2, peers: Sequence[Any] = (), compare: str | os.PathLike | None = None,
              progress: ProgressFn | bool | None = None, *,
              n_negatives: int | None = None,
              max_catalogue_seconds: float | None = None,
              single_process_seconds: float | None = None,
              peer_queries_per_transform: int | None = None,
              self_query_tracks: int | None = None,
              cli_queries: int = 10, plots: bool = True) -> dict[str, Any]:
    """Run the benchmark and write ``results.json``, ``results.md``, ``queries.jsonl`` and
    the plots into ``out_dir``; return the results document.

    Parameters
    ----------
    catalogue_dir : folder of catalogue audio (walked recursively).
    negatives_dir : folder of non-catalogue music for negatives and mixing (synthetic music
        and noise are used when ``None``).
    out_dir : output folder (its ``index/``, ``queries/`` and ``peers/`` are rebuilt).
    quick : smoke run: ``QUICK_SET`` transforms, 12 queries each, 30 negatives, at most
        ~30 min of the catalogue indexed (``max_catalogue_seconds=1800``), 15 min of it
        indexed again by one process.
    seed : everything random derives from it.
    transforms : transform names and/or families (default: all, or ``QUICK_SET`` if quick).
    n_queries : excerpts per transform (default 60, quick 12).
    jobs : worker processes for indexing, decode-only and query generation (N).
    peers : ``"name=PATH"`` specs or :class:`~earmark.bench.peers.Peer` objects.
    compare : a previous ``results.json``: a before/after table is added.
    progress : ``progress(stage, done, total)``; ``None`` draws rich progress bars with ETA
        on stderr; ``False`` is silent.
    n_negatives : negative queries (default 220, quick 30).
    max_catalogue_seconds : index only a seeded subset of about this much audio.
    single_process_seconds : audio indexed by the ``jobs=1`` run (a seeded subset of the
        indexed files; default: 3 h in full mode, 15 min in quick mode).  The speed-up
        is a throughput ratio: on 1 h the ``-j 2`` run lasted 3.5 s, and its start-up and
        the last file's tail gave 1.80-1.84 over three runs where the whole 8.9-h
        catalogue gave 1.92.
    peer_queries_per_transform : queries per transform sent to peers (default: 15 in full
        mode, all in quick mode); peer rows use the first k queries of each transform (the
        same files Earmark matched) and all negatives.
    self_query_tracks : tracks queried whole (default 8, quick 3).
    cli_queries : ``fp match`` calls timed.
    plots : write PNG plots.
    """
    t_run = time.perf_counter()
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    if progress is None:
        rich_ctx: Any = RichProgress()
    else:
        rich_ctx = None
    prog: ProgressFn = rich_ctx if rich_ctx is not None else (progress or _null_progress)
    if rich_ctx is not None:
        rich_ctx.__enter__()
    try:
        return _run(catalogue_dir, negatives_dir, out, quick, seed, transforms, n_queries, jobs,
                    peers, compare, prog, n_negatives, max_catalogue_seconds,
                    single_process_seconds, peer_queries_per_transform, self_query_tracks,
                    cli_queries, plots, t_run)
    finally:
        if rich_ctx is not None:
            rich_ctx.__exit__(None, None, None)


def _run(catalogue_dir, negatives_dir, out: Path, quick, seed, transforms, n_queries, jobs,
         peers, compare, prog: ProgressFn, n_negatives, max_catalogue_seconds,
         single_process_seconds, peer_queries_per_transform, self_query_tracks, cli_queries,
         plots, t_run) -> dict[str, Any]:
    from earmark.bench import report as report_mod
    from earmark.bench.transforms import QUICK_SET, get_transforms
    from earmark.fingerprint.config import DEFAULT, MATCH_PRESETS
    from earmark.index.catalogue import Index, find_audio_files

    jobs = max(1, int(jobs))
    timings: dict[str, float] = {}
    n_queries = n_queries if n_queries is not None else (
        QUICK_QUERIES_PER_TRANSFORM if quick else FULL_QUERIES_PER_TRANSFORM)
    n_negatives = n_negatives if n_negatives is not None else (
        QUICK_NEGATIVES if quick else FULL_NEGATIVES)
    if max_catalogue_seconds is None and quick:
        max_catalogue_seconds = 1800.0
    if single_process_seconds is None:
        single_process_seconds = 900.0 if quick else 3 * 3600.0
    if peer_queries_per_transform is None and not quick:
        peer_queries_per_transform = 15
    if self_query_tracks is None:
        self_query_tracks = 3 if quick else 8
    tlist = get_transforms(list(transforms) if transforms is not None else
                           (list(QUICK_SET) if quick else None))

    # ---------------------------------------------------------------- corpus
    t0 = time.perf_counter()
    files, problems = find_audio_files([catalogue_dir])
    if not files:
        raise EarmarkError(f"no audio files in {catalogue_dir}")
    all_cat = _durations(files)
    catalogue = _subset_by_seconds(all_cat, max_catalogue_seconds, seed)
    cat_files = [p for p, _ in catalogue]
    negatives: list[tuple[str, float]] = []
    if negatives_dir is not None:
        nfiles, _ = find_audio_files([negatives_dir])
        cat_real = {os.path.realpath(f) for f in files}
        negatives = [x for x in _durations(nfiles) if os.path.realpath(x[0]) not in cat_real]
    timings["corpus_scan"] = time.perf_counter() - t0
    doc: dict[str, Any] = {
        "schema_version": SCHEMA_VERSION, "tool": "earmark-bench",
        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "mode": "quick" if quick else "full", "seed": seed,
        "args": {"catalogue_dir": os.fspath(catalogue_dir),
                 "negatives_dir": os.fspath(negatives_dir) if negatives_dir else None,
                 "out_dir": str(out), "jobs": jobs, "n_queries": n_queries,
                 "n_negatives": n_negatives, "transforms": [t.name for t in tlist],
                 "max_catalogue_seconds": max_catalogue_seconds,
                 "single_process_seconds": single_process_seconds,
                 "peer_queries_per_transform": peer_queries_per_transform,
                 "peers": [p if isinstance(p, str) else getattr(p, "name", repr(p)) for p in peers]},
        "machine": machine_info(),
        "corpus": {"catalogue_files": len(files), "catalogue_seconds": sum(d for _, d in all_cat),
                   "indexed_files": len(cat_files),
                   "indexed_seconds": sum(d for _, d in catalogue),
                   "unreadable": [p for p, _ in problems],
                   "negative_files": len(negatives),
                   "negative_seconds": sum(d for _, d in negatives)},
        "config": {"fingerprint": dataclasses.asdict(DEFAULT),
                   "match_default": dataclasses.asdict(MATCH_PRESETS["recording"]),
                   "match_fast": dataclasses.asdict(MATCH_PRESETS["fast"])},
    }

    # ---------------------------------------------------------------- (a) indexing
    with tempfile.TemporaryDirectory(dir=out) as tmp:
        warmup = _run_in_child(_warmup_child, (tmp, cat_files), prog, "warm-up (JIT, page cache)")
    index_dir = str(out / "index")
    t0 = time.perf_counter()
    run_n = _run_in_child(_index_child, (index_dir, cat_files, jobs), prog, f"index -j{jobs}")
    timings["index_jN"] = time.perf_counter() - t0
    single = _subset_by_seconds(catalogue, single_process_seconds, seed + 1)
    run_n_subset = None
    with tempfile.TemporaryDirectory(dir=out) as tmp:
        t0 = time.perf_counter()
        run_1 = _run_in_child(_index_child, (os.path.join(tmp, "index-j1"), [p for p, _ in single], 1),
                              prog, "index -j1")
        timings["index_j1"] = time.perf_counter() - t0
        if jobs > 1 and run_1["files"] < len(cat_files):
            # The speed-up compares like with like: -jN on the same subset as -j1 (the
            # full run also pays for the final merge, which a subset may not need).
            run_n_subset = _run_in_child(_index_child, (os.path.join(tmp, "index-jN"),
                                                        [p for p, _ in single], jobs),
                                         prog, f"index -j{jobs} (subset)")
    t0 = time.perf_counter()
    dec = decode_only(cat_files, DEFAULT.sr, jobs, prog)
    timings["decode_only"] = time.perf_counter() - t0
    rng = np.random.default_rng([seed, _stable("stages")])
    n_stage = min(len(cat_files), 2 if quick else 5)
    stage_files = sorted(cat_files[int(i)] for i in rng.choice(len(cat_files), n_stage, replace=False))
    t0 = time.perf_counter()
    stages = _run_in_child(_stages_child, (stage_files,), prog, "per-stage timing")
    timings["stages"] = time.perf_counter() - t0
    speedup = None
    same_files_n = run_n_subset or run_n
    if run_1.get("x_realtime") and same_files_n.get("x_realtime"):
        speedup = same_files_n["x_realtime"] / run_1["x_realtime"]
    doc["indexing"] = {
        "runs": [run_1] + ([run_n_subset] if run_n_subset else []) + [run_n],
        "speedup": speedup, "decode_only": dec,
        "warmup": warmup,
        "ratio_to_decode_only": (run_n["x_realtime"] / dec["x_realtime"]
                                 if dec.get("x_realtime") and run_n.get("x_realtime") else None),
        "stages": stages,
        "note": (f"speed-up: -j1 and -j{jobs} on the same seeded subset ({run_1['files']} files, "
                 f"{run_1['audio_seconds'] / 3600:.2f} h) of the indexed files"
                 if run_1["files"] < run_n["files"] else "jobs=1 and jobs=N on the same files"),
    }

    # ---------------------------------------------------------------- index size / open
    idx = Index.open(index_dir)
    doc["index"] = dict(idx.info(), open_time=_open_time(index_dir))

    # ---------------------------------------------------------------- (b) queries
    specs = plan_queries(catalogue, negatives, tlist, n_queries, n_negatives,
                         self_windows=1 if quick else 2, seed=seed)
    qdir = out / "queries"
    shutil.rmtree(qdir, ignore_errors=True)
    specs, gen_s = generate_queries(specs, str(qdir), negatives, jobs, prog)
    timings["queries_generate"] = gen_s
    tinfo = []
    for t in tlist:
        tinfo.append({"name": t.name, "family": t.family, "description": t.description,
                      "speed": t.speed, "pitch_semitones": t.pitch_semitones,
                      "excerpt_seconds": t.excerpt_seconds,
                      "n": sum(1 for s in specs if s.transform == t.name and s.kind == "positive")})
    doc["queries"] = {
        "dir": str(qdir), "sample_rate": QUERY_SR, "per_transform": n_queries,
        "n_positive": sum(s.kind == "positive" for s in specs),
        "n_self_windows": sum(s.kind == "self" for s in specs),
        "n_negative": sum(s.kind == "negative" for s in specs),
        "negative_families": _count(s.family for s in specs if s.kind == "negative"),
        "transforms": tinfo, "generation_seconds": gen_s,
        "transform_seconds_mean": {t.name: float(np.mean([s.transform_seconds for s in specs
                                                          if s.transform == t.name] or [0.0]))
                                   for t in tlist},
    }

    # ---------------------------------------------------------------- (c) matching
    m_default = MATCH_PRESETS["recording"]  # the recording tier (derivation: fp bench derivation)
    m_fast = MATCH_PRESETS["fast"]
    warm = next((s for s in specs if s.kind == "positive"), specs[0])
    _match_all(idx, [warm], m_default, "warm-up", _null_progress)
    _match_all(idx, [warm], m_fast, "warm-up", _null_progress)
    t0 = time.perf_counter()
    cpu_default: dict[str, float] = {}
    cpu_fast: dict[str, float] = {}
    res_default, res_fast = _match_interleaved(idx, specs, [m_default, m_fast],
                                               "match (default and fast)", prog,
                                               cpu=[cpu_default, cpu_fast])
    timings["match_default_and_fast"] = time.perf_counter() - t0
    rss_match = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0
    probe_cfg = m_default.with_(min_significance=0.0, min_score=4)
    neg_specs = [s for s in specs if s.kind == "negative"]
    t0 = time.perf_counter()
    res_probe = _match_all(idx, neg_specs, probe_cfg, "threshold probe", prog)
    timings["threshold_probe"] = time.perf_counter() - t0

    alias_cache: dict[tuple, bool] = {}

    def alias(path: str, true_off: float, est_off: float, secs: float) -> bool:
        key = (path, round(true_off, 2), round(est_off, 2), round(secs, 2))
        if key not in alias_cache:
            alias_cache[key] = repeated_section(path, true_off, est_off, secs)
        return alias_cache[key]

    master_cache: dict[tuple, bool] = {}

    def master(true_path: str, true_off: float, other_path: str, est_off: float,
               secs: float) -> bool:
        key = (true_path, round(true_off, 2), other_path, round(est_off, 2), round(secs, 2))
        if key not in master_cache:
            master_cache[key] = same_recording(true_path, true_off, other_path, est_off, secs)
        return master_cache[key]

    t0 = time.perf_counter()
    records: list[dict[str, Any]] = []
    for s in specs:
        records.append(score_result(s, res_default[s.qid], "earmark", alias, master))
        records.append(score_result(s, res_fast[s.qid], "earmark-fast", alias, master))
    timings["scoring"] = time.perf_counter() - t0

    probe_false = {"score": [], "significance": []}
    for s in neg_specs:
        for m in res_probe[s.qid].matches:
            probe_false["score"].append(int(m.score))
            probe_false["significance"].append(float(m.significance))
    earmark_recs = [r for r in records if r["system"] == "earmark" and r["kind"] != "self"]
    doc["scores"] = dict(_score_samples(earmark_recs),
                         threshold={"min_significance": m_default.min_significance,
                                    "min_score": m_default.min_score},
                         probe_false=probe_false,
                         probe_config={"min_significance": probe_cfg.min_significance,
                                       "min_score": probe_cfg.min_score},
                         fast=_score_samples([r for r in records if r["system"] == "earmark-fast"
                                              and r["kind"] != "self"]))

    lat = {}
    for system, res, cpu_s in (("earmark", res_default, cpu_default),
                               ("earmark-fast", res_fast, cpu_fast)):
        by_dur: dict[str, list[float]] = {}
        allv = []
        cpu_ms = []
        for s in specs:
            if res[s.qid].error is None:
                v = res[s.qid].elapsed * 1000.0
                allv.append(v)
                cpu_ms.append(cpu_s[s.qid] * 1000.0)
                by_dur.setdefault(f"{round(s.duration):d}s", []).append(v)
        clean10 = [res[s.qid].elapsed * 1000.0 for s in specs
                   if s.transform == "clean_10s" and s.kind in ("positive", "self")]
        lat[system] = {"n": len(allv), "p50_ms": _pct(allv, 50), "p95_ms": _pct(allv, 95),
                       "mean_ms": float(np.mean(allv)) if allv else None,
                       "mean_cpu_ms": float(np.mean(cpu_ms)) if cpu_ms else None,
                       "clean_10s_p50_ms": _pct(clean10, 50), "clean_10s_p95_ms": _pct(clean10, 95),
                       "samples_ms": [round(v, 3) for v in allv],
                       "by_duration": {k: {"n": len(v), "p50_ms": _pct(v, 50), "p95_ms": _pct(v, 95)}
                                       for k, v in sorted(by_dur.items(), key=lambda kv: float(kv[0][:-1]))}}
    doc["latency"] = lat

    # ---------------------------------------------------------------- whole-track self-query
    rng = np.random.default_rng([seed, _stable("whole")])
    whole_pick = sorted(int(i) for i in rng.choice(len(catalogue), min(self_query_tracks, len(catalogue)),
                                                   replace=False))
    whole = []
    t0 = time.perf_counter()
    for k, i in enumerate(whole_pick):
        path, dur = catalogue[i]
        try:
            r = idx.match_file(path, m_fast)
            top = r.matches[0] if r.matches else None
            ok = top is not None and _same_path(top.reference.path, path)
            off = _expected_ref_offset(top, 0.0) if ok else None
            whole.append({"path": path, "duration": dur, "hit": ok,
                          "offset_err": off, "offset_ok": ok and abs(off) <= OFFSET_TOL_S,
                          "speed": float(top.speed) if top else None,
                          "coverage": float(top.coverage) if top else None,
                          "seconds": r.elapsed})
        except EarmarkError as e:
            whole.append({"path": path, "duration": dur, "hit": False, "error": str(e)})
        prog("self-query (whole tracks)", k + 1, len(whole_pick))
    timings["self_query_whole"] = time.perf_counter() - t0
    summ = summarise(records)
    doc["self_query"] = {
        "whole": {"n": len(whole), "hits": sum(bool(w["hit"]) for w in whole),
                  "offset_ok": sum(bool(w.get("offset_ok")) for w in whole),
                  "match_config": "fast", "tracks": whole},
        "windows": summ["self_query_windows"],
    }

    # ---------------------------------------------------------------- compilations
    t0 = time.perf_counter()
    doc["compilations"] = compilation_bench(idx, catalogue, negatives, seed, m_default,
                                            n_queries=2 if quick else 8, prog=prog)
    timings["compilations"] = time.perf_counter() - t0

    # ---------------------------------------------------------------- (d) CLI latency
    t0 = time.perf_counter()
    cli_wavs = [s.path for s in specs if s.kind == "positive" and s.transform in ("clean_10s", "clean_5s")]
    if len(cli_wavs) < cli_queries:
        cli_wavs += [s.path for s in specs if s.kind == "positive" and s.path not in cli_wavs]
    doc["cli"] = cli_latency(index_dir, cli_wavs[:cli_queries], prog)
    timings["cli"] = time.perf_counter() - t0

    # ---------------------------------------------------------------- (f) peers
    doc["peers"] = {}
    systems = {"earmark": {"label": "Earmark", "kind": "earmark", "match_config": "default"},
               "earmark-fast": {"label": "Earmark --fast", "kind": "earmark", "match_config": "fast"}}
    for p in peers:
        name = p if isinstance(p, str) else getattr(p, "name", "peer")
        t0 = time.perf_counter()
        try:
            records.extend(_run_peer(p, cat_files, catalogue, specs, out, jobs,
                                     peer_queries_per_transform, alias, prog, doc, systems,
                                     master))
        except (EarmarkError, ValueError, OSError) as e:
            pname = name.split("=", 1)[0] if isinstance(name, str) else name
            doc["peers"][pname] = {"error": str(e).splitlines()[0] if str(e) else type(e).__name__}
        timings[f"peer_{name.split('=', 1)[0]}"] = time.perf_counter() - t0
    doc["systems"] = systems

    summ = summarise(records)
    doc["accuracy"] = summ["accuracy"]
    doc["negatives"] = summ["negatives"]
    doc["memory"] = {"peak_rss_mb_matching_process": rss_match,
                     "peak_rss_mb_index_jN": run_n.get("rss_mb"),
                     "peak_rss_mb_index_jN_workers": run_n.get("rss_children_mb"),
                     "peak_rss_mb_index_j1": run_1.get("rss_mb"),
                     "peak_rss_mb_run": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0}
    idx.close()

    # ---------------------------------------------------------------- scale results, compare
    scale_path = out / "scale.json"
    if scale_path.is_file():
        try:
            doc["scale"] = json.loads(scale_path.read_text())
        except ValueError:
            pass
    if compare is not None:
        try:
            before = json.loads(Path(compare).read_text())
            doc["compare"] = report_mod.compare_results(before, doc)
            doc["compare"]["before_path"] = os.fspath(compare)
        except (OSError, ValueError) as e:
            doc["compare"] = {"error": f"cannot read {compare}: {e}"}
    timings["total"] = time.perf_counter() - t_run
    doc["timings"] = timings
    doc["targets"] = report_mod.evaluate_targets(doc)
    report_mod.write_reports(doc, out, records=records, plots=plots)
    return doc


def _count(items: Iterable[str]) -> dict[str, int]:
    d: dict[str, int] = {}
    for x in items:
        d[x] = d.get(x, 0) + 1
    return d


def _run_peer(p: Any, cat_files: list[str], catalogue, specs: list[QuerySpec], out: Path,
              jobs: int, per_transform: int | None, alias, prog: ProgressFn,
              doc: dict[str, Any], systems: dict[str, Any],
              master: Callable | None = None) -> list[dict[str, Any]]:
    from earmark.bench.peers import make_peer

    peer = make_peer(p) if isinstance(p, str) else p
    name = peer.name
    workdir = out / "peers" / name
    shutil.rmtree(workdir, ignore_errors=True)
    workdir.mkdir(parents=True, exist_ok=True)
    prog(f"peer {name}: index", 0, 1)
    stats = peer.index(list(cat_files), str(workdir), jobs)
    prog(f"peer {name}: index", 1, 1)
    chosen: list[QuerySpec] = []
    seen: dict[str, int] = {}
    for s in specs:
        if s.kind == "self":
            continue
        key = s.transform if s.kind == "positive" else "negative"
        if per_transform is not None and s.kind == "positive" and seen.get(key, 0) >= per_transform:
            continue
        seen[key] = seen.get(key, 0) + 1
        chosen.append(s)
    prog(f"peer {name}: match", 0, 1)
    matches, elapsed = peer.match([s.path for s in chosen], jobs)
    prog(f"peer {name}: match", 1, 1)
    if len(matches) != len(chosen):
        raise EarmarkError(f"peer {name} returned {len(matches)} answers for {len(chosen)} queries")
    per_q = elapsed * 1000.0 / max(1, len(chosen))
    recs = [score_peer_match(s, m, name, alias, latency_ms=None, master_check=master)
            for s, m in zip(chosen, matches)]
    audio_s = sum(d for _, d in catalogue)
    doc["peers"][name] = {
        "describe": peer.describe(),
        "index": {"seconds": stats.seconds, "bytes": stats.bytes_on_disk,
                  "jobs": jobs, "audio_seconds": audio_s,
                  "x_realtime": audio_s / stats.seconds if stats.seconds > 0 else None,
                  "bytes_per_audio_second": stats.bytes_on_disk / audio_s if audio_s else None,
                  "detail": stats.detail},
        "match": {"queries": len(chosen), "seconds": elapsed, "jobs": jobs,
                  "per_query_ms": per_q,
                  "per_query_cpu_ms": per_q * jobs,
                  "note": "one batch call over all queries (database load included), "
                          f"{jobs} processes; per_query_cpu_ms = wall x processes"},
        "queries_per_transform": per_transform,
    }
    systems[name] = {"label": name, "kind": "peer"}
    return recs
