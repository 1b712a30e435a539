"""``fp bench scale``: what an Earmark index costs as the catalogue grows far past the corpus.

:func:`run_scale` builds one index that grows step by step (``steps`` tracks in total) and
measures, at each size: in-process match latency of real queries (default search and
``--fast``), hit@1 of those queries, index size on disk, opening time, memory (RSS) and the
false-positive rate on negative queries.  It writes ``scale.json`` and ``scale.png``.

How the index is grown
----------------------
* **Real tracks.**  The index starts as a copy of ``real_index`` (e.g. ``bench-out/index``
  of a ``fp bench`` run), or - without one - an index of ``n_real_tracks`` seeded synthetic
  songs (:func:`earmark.synth.synth_song`).  Queries are excerpts of these real tracks, so
  hit@1 and latency are measured on real evidence while the rest of the index is filler.
* **Synthetic tracks** are postings with the real hash statistics: keys are drawn from the
  key frequencies of the real index (its segments' keys; smoothed with the product of the
  per-field marginals, ``f1 x df x dt``, so that keys unseen in a small sample still occur),
  at the real index's landmarks per audio second, with anchor times uniform over each
  synthetic track of ``track_seconds``.  Segments hold 16 384 tracks, as
  :meth:`Index.merge` lays out a large catalogue, and are written with
  :func:`earmark.index.store.write_segment` plus a manifest, exactly as a commit does (the
  arrays are built directly in key order instead of by :func:`build_segment_arrays`'
  argsort, which would need ~3x the memory at 100 M postings per segment).
* Caveat: synthetic postings are independent in time, while real music repeats itself;
  chance alignments in a real catalogue of the same size are therefore somewhat more
  frequent than here, and the false-positive column is a lower bound.

Cost: 100 000 tracks x 4 min x ~25 landmarks/s ~ 600 M postings ~ 3 GB on disk, built one
segment (~100 M postings, ~1 GB of arrays) at a time.  On the 2-core dev machine building
takes a few minutes; the default (speed/pitch-searching) matcher scans every bucket under
~180 hypotheses, so its latency grows linearly with the index and at 100 000 tracks one
query takes tens of seconds: each step measures queries until ``seconds_per_step`` is
spent (at least one), so the run stays bounded.  Use ``steps``/``tracks``/``track_seconds``
to trade reach for time.
"""

from __future__ import annotations

import dataclasses
import datetime as _dt
import json
import os
import resource
import shutil
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from earmark.errors import EarmarkError

#: Tracks per synthetic segment (what Index.merge produces for a large catalogue).
SEGMENT_TRACKS = 16384
QUERY_SR = 22050
#: Transforms the real queries cycle through.
SCALE_TRANSFORMS = ("clean_10s", "noise_pink_5db", "speed_1.1", "pitch_+2")

ProgressFn = Callable[[str, int, int], None]


def _rss_mb() -> float:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024.0
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def key_statistics(index_dir: str | os.PathLike, smoothing: float = 0.5) -> dict[str, Any]:
    """Key probabilities and landmark rate of a real index.

    Returns ``{"p": float64[2**KEY_BITS], "landmarks_per_second": float, "landmarks": int,
    "distinct_keys": int}``; ``p`` mixes the empirical key frequencies with weight
    ``1 - smoothing/(1+smoothing)`` and the product of the (f1, df, dt) marginals.
    """
    from earmark.fingerprint import hashes
    from earmark.index.catalogue import Index

    idx = Index.open(index_dir)
    try:
        counts = np.zeros(1 << hashes.KEY_BITS, dtype=np.float64)
        for seg in idx.segments:
            per_bucket = np.diff(np.asarray(seg.bucket_start, dtype=np.int64))
            buckets = np.repeat(np.arange(per_bucket.shape[0], dtype=np.int64), per_bucket)
            keys = (buckets << hashes.LO_BITS) | np.asarray(seg.key_lo, dtype=np.int64)
            counts += np.bincount(keys, minlength=counts.shape[0])
        seconds = idx.total_frames * idx.config.frame_seconds
    finally:
        idx.close()
    n = counts.sum()
    if n == 0:
        raise EarmarkError(f"index {index_dir} has no landmarks")
    f1, df, dt = hashes.unpack_key(np.arange(counts.shape[0], dtype=np.int64))
    m_f1 = np.bincount(f1, weights=counts, minlength=1 << hashes.F1_BITS) / n
    m_df = np.bincount(df, weights=counts, minlength=1 << hashes.DF_BITS) / n
    m_dt = np.bincount(dt, weights=counts, minlength=1 << hashes.DT_BITS) / n
    q = m_f1[f1] * m_df[df] * m_dt[dt]
    q /= q.sum()
    p = (counts / n + smoothing * q) / (1.0 + smoothing)
    return {"p": p / p.sum(), "landmarks_per_second": n / max(seconds, 1e-9),
            "landmarks": int(n), "distinct_keys": int((counts > 0).sum())}


def synthetic_segment_arrays(rng: np.random.Generator, p: np.ndarray, track_ids: Sequence[int],
                             track_frames: int, n_postings: int) -> dict[str, np.ndarray]:
    """Segment arrays (the layout of :func:`earmark.index.store.build_segment_arrays`) for
    synthetic tracks: ``n_postings`` keys drawn from ``p``, each on a uniform random track
    and anchor frame."""
    from earmark.fingerprint import hashes

    if track_frames > hashes.MAX_SLOT_FRAMES:
        raise ValueError("synthetic tracks must be shorter than one slot (17.5 min)")
    n_tracks = len(track_ids)
    counts = rng.multinomial(n_postings, p)
    bucket_counts = counts.reshape(1 << hashes.TABLE_BITS, -1).sum(axis=1)
    bucket_start = np.zeros((1 << hashes.TABLE_BITS) + 1, dtype=np.uint32)
    np.cumsum(bucket_counts, out=bucket_start[1:])
    key_lo = np.repeat((np.arange(counts.shape[0]) & ((1 << hashes.LO_BITS) - 1)).astype(np.uint8),
                       counts)
    postings = np.empty(n_postings, dtype=np.uint32)
    chunk = 1 << 24
    for s in range(0, n_postings, chunk):
        e = min(n_postings, s + chunk)
        slot = rng.integers(0, n_tracks, size=e - s, dtype=np.uint32)
        frame = rng.integers(0, track_frames, size=e - s, dtype=np.uint32)
        postings[s:e] = (slot << np.uint32(hashes.FRAME_BITS)) | frame
    return {"bucket_start": bucket_start, "key_lo": key_lo, "postings": postings,
            "slot_track": np.asarray(track_ids, dtype=np.int64),
            "slot_frame0": np.zeros(n_tracks, dtype=np.int64)}


def _append_synthetic(folder: Path, rng: np.random.Generator, p: np.ndarray, rate: float,
                      first_id: int, n_tracks: int, track_seconds: float,
                      progress: ProgressFn, stage: str) -> int:
    """Add ``n_tracks`` synthetic tracks as new segments + one manifest commit.  Returns the
    number of postings written."""
    from earmark.fingerprint.config import DEFAULT
    from earmark.index import store

    manifest = store.read_manifest(folder)
    frame_s = DEFAULT.frame_seconds
    track_frames = int(track_seconds / frame_s)
    segments = list(manifest.segments)
    next_seg = manifest.next_segment
    written = 0
    done = 0
    while done < n_tracks:
        k = min(SEGMENT_TRACKS, n_tracks - done)
        ids = list(range(first_id + done, first_id + done + k))
        n_post = int(rng.poisson(rate * track_seconds * k))
        arrays = synthetic_segment_arrays(rng, p, ids, track_frames, n_post)
        name = f"seg-{next_seg:06d}.emk"
        store.write_segment(folder / name, arrays)
        del arrays
        segments.append({"file": name, "tracks": ids, "frames": [float(track_frames)] * k,
                         "postings": n_post})
        next_seg += 1
        written += n_post
        done += k
        progress(stage, done, n_tracks)
    store.write_manifest(folder, dataclasses.replace(manifest, generation=manifest.generation + 1,
                                                     next_segment=next_seg, segments=segments))
    return written


def _real_seed_index(out: Path, n_tracks: int, track_seconds: float, seed: int) -> Path:
    """Index of ``n_tracks`` seeded synthetic songs (used when no real index is given)."""
    import soundfile as sf

    from earmark.index.catalogue import Index
    from earmark.synth import synth_song

    audio = out / "seed-audio"
    audio.mkdir(parents=True, exist_ok=True)
    for i in range(n_tracks):
        path = audio / f"song{i:03d}.wav"
        if not path.exists():
            sf.write(path, synth_song(seed * 1000 + i, seconds=track_seconds, sr=QUERY_SR), QUERY_SR)
    folder = out / "seed-index"
    shutil.rmtree(folder, ignore_errors=True)
    with Index.open_writer(folder) as idx:
        idx.add([audio], jobs=1)
    return folder


def _make_queries(tracks: list[tuple[str, float]], negatives: list[str], n_queries: int,
                  n_negatives: int, seed: int) -> list[dict[str, Any]]:
    """Real queries (excerpts of indexed tracks, transformed) and negatives."""
    from earmark.bench.transforms import TRANSFORMS, TransformContext, apply_transform
    from earmark.fingerprint import audio as audio_io
    from earmark.synth import synth_noise, synth_song

    rng = np.random.default_rng([seed, 7])
    ctx = TransformContext(other_audio=lambda s, r: synth_song(int(r.integers(2**31)), seconds=s,
                                                               sr=QUERY_SR))
    out = []
    usable = [t for t in tracks if t[1] >= 14.0]
    for i in range(n_queries if usable else 0):
        t = TRANSFORMS[SCALE_TRANSFORMS[i % len(SCALE_TRANSFORMS)]]
        path, dur = usable[int(rng.integers(len(usable)))]
        off = float(rng.uniform(0.0, dur - t.excerpt_seconds - 0.5))
        y = audio_io.load_audio(path, QUERY_SR, max_seconds=t.excerpt_seconds, offset_seconds=off)
        o = apply_transform(t, y, QUERY_SR, np.random.default_rng([seed, i]), ctx)
        out.append({"kind": "positive", "transform": t.name, "reference": path, "offset": off,
                    "speed": t.speed, "audio": o.audio})
    for i in range(n_negatives):
        if i % 3 == 2:
            y = synth_noise(seed * 31 + i, 10.0, QUERY_SR, "pink" if i % 2 else "white")
            src = "noise"
        elif negatives:
            path = negatives[i % len(negatives)]
            dur = audio_io.audio_duration(path)
            off = float(rng.uniform(0.0, max(0.0, dur - 10.5)))
            y = audio_io.load_audio(path, QUERY_SR, max_seconds=10.0, offset_seconds=off)
            src = path
        else:
            y = synth_song(10_000_000 + seed * 100 + i, seconds=10.0, sr=QUERY_SR)
            src = "synthetic music"
        out.append({"kind": "negative", "transform": "clean_10s", "reference": None, "offset": 0.0,
                    "speed": 1.0, "audio": y.astype(np.float32), "source": src})
    return out


def _measure(folder: Path, queries: list[dict[str, Any]], mcfg: Any, budget_s: float,
             ) -> dict[str, Any]:
    from earmark.index.catalogue import Index

    idx = Index.open(folder)
    try:
        lat, hits, n_pos, fp, n_neg = [], 0, 0, 0, 0
        # interleave positives and negatives so a time-capped step measures both
        pos = [q for q in queries if q["kind"] == "positive"]
        neg = [q for q in queries if q["kind"] == "negative"]
        order = [x for pair in zip(pos, neg) for x in pair] + pos[len(neg):] + neg[len(pos):]
        t_start = time.perf_counter()
        for q in order:
            if lat and time.perf_counter() - t_start > budget_s:
                break
            try:
                r = idx.match_audio(q["audio"], QUERY_SR, mcfg, label=q["kind"])
            except EarmarkError:
                continue
            lat.append(r.elapsed * 1000.0)
            top = r.matches[0] if r.matches else None
            if q["kind"] == "positive":
                n_pos += 1
                hits += int(top is not None and os.path.realpath(top.reference.path)
                            == os.path.realpath(q["reference"]))
            else:
                n_neg += 1
                fp += int(top is not None)
        rss = _rss_mb()
    finally:
        idx.close()
    return {"n": len(lat), "p50_ms": float(np.percentile(lat, 50)) if lat else None,
            "p95_ms": float(np.percentile(lat, 95)) if lat else None,
            "hit_at_1": hits / n_pos if n_pos else None, "n_positive": n_pos,
            "false_positives": fp, "n_negative": n_neg, "fp_rate": fp / n_neg if n_neg else None,
            "rss_mb": rss}


def run_scale(out_dir: str | os.PathLike, tracks: int = 100000,
              steps: Sequence[int] = (1000, 10000, 100000), seed: int = 0,
              real_index: str | os.PathLike | None = None, *, track_seconds: float = 240.0,
              negatives_dir: str | os.PathLike | None = None, n_real_tracks: int = 24,
              n_queries: int = 12, n_negatives: int = 12, seconds_per_step: float = 60.0,
              keep_index: bool = False, progress: ProgressFn | bool | None = None
              ) -> dict[str, Any]:
    """Grow an index to ``tracks`` tracks through ``steps`` and measure each size.

    Parameters
    ----------
    out_dir : folder for ``scale-index/``, ``scale.json`` and ``scale.png``.
    tracks : largest catalogue size (steps above it are dropped; it is added as the last step).
    steps : catalogue sizes (tracks, real ones included) at which to measure.
    seed : all randomness derives from it.
    real_index : an existing Earmark index: its tracks are the real part of the catalogue and
        its key statistics drive the synthetic postings.  ``None``: ``n_real_tracks``
        synthetic songs of 30 s are indexed instead.
    track_seconds : duration of each synthetic track (4 min by default).
    negatives_dir : folder of non-catalogue music for negative queries (else synthetic
        songs and noise).
    n_queries, n_negatives : real and negative queries (time-capped per step and config).
    seconds_per_step : time budget for the queries of one step and one match config.
    keep_index : keep ``scale-index/`` (several GB at 100 000 tracks) after the run.
    progress : ``progress(stage, done, total)``, ``None`` for rich bars, ``False`` silent.
    """
    from earmark.bench import report as report_mod
    from earmark.bench.runner import RichProgress, _null_progress, machine_info
    from earmark.fingerprint.config import MATCH_PRESETS
    from earmark.index.catalogue import Index, find_audio_files

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    rich_ctx = RichProgress() if progress is None else None
    prog: ProgressFn = rich_ctx if rich_ctx is not None else (progress or _null_progress)
    if rich_ctx is not None:
        rich_ctx.__enter__()
    t_run = time.perf_counter()
    try:
        if real_index is None:
            real_index = _real_seed_index(out, n_real_tracks, 30.0, seed)
        stats = key_statistics(real_index)
        folder = out / "scale-index"
        shutil.rmtree(folder, ignore_errors=True)
        shutil.copytree(real_index, folder, ignore=shutil.ignore_patterns("lock", "*.tmp", ".*"))
        base = Index.open(folder)
        real = [(r.path, r.duration) for r in base.tracks()]
        n_real = len(real)
        next_id = max((r.track_id for r in base.tracks()), default=0) + 1
        base.close()
        negs: list[str] = []
        if negatives_dir is not None:
            negs, _ = find_audio_files([negatives_dir])
        queries = _make_queries(real, negs, n_queries, n_negatives, seed)
        sizes = sorted({int(s) for s in steps if int(s) <= tracks} | {int(tracks)})
        sizes = [s for s in sizes if s >= n_real] or [n_real]
        rng = np.random.default_rng([seed, 11])
        results = []
        current = n_real
        m_default, m_fast = MATCH_PRESETS["recording"], MATCH_PRESETS["fast"]
        for si, size in enumerate(sizes):
            t0 = time.perf_counter()
            add = size - current
            postings = 0
            if add > 0:
                postings = _append_synthetic(folder, rng, stats["p"], stats["landmarks_per_second"],
                                             next_id, add, track_seconds, prog,
                                             f"scale: build {size:,} tracks")
                next_id += add
                current = size
            build_s = time.perf_counter() - t0
            t0 = time.perf_counter()
            idx = Index.open(folder)
            open_s = time.perf_counter() - t0
            info = idx.info()
            idx.close()
            if si == 0:  # JIT warm-up, not measured
                _measure(folder, queries[:1], m_fast, 0.0)
                _measure(folder, queries[:1], m_default, 0.0)
            prog(f"scale: match {size:,} tracks", 0, 2)
            fast = _measure(folder, queries, m_fast, seconds_per_step)
            prog(f"scale: match {size:,} tracks", 1, 2)
            default = _measure(folder, queries, m_default, seconds_per_step)
            prog(f"scale: match {size:,} tracks", 2, 2)
            results.append({
                "tracks": size, "real_tracks": n_real, "synthetic_tracks": size - n_real,
                "audio_hours": info["audio_hours"], "postings": info["landmarks"],
                "segments": info["segments"], "index_bytes": info["bytes"],
                "bytes_per_audio_second": info["bytes_per_audio_second"],
                "build_seconds": build_s, "open_seconds": open_s,
                "latency_default_p50_ms": default["p50_ms"], "latency_default_p95_ms": default["p95_ms"],
                "latency_fast_p50_ms": fast["p50_ms"], "latency_fast_p95_ms": fast["p95_ms"],
                "queries_default": default["n"], "queries_fast": fast["n"],
                "hit_at_1_default": default["hit_at_1"], "hit_at_1_fast": fast["hit_at_1"],
                "fp_rate_default": default["fp_rate"], "fp_rate_fast": fast["fp_rate"],
                "false_positives_default": default["false_positives"],
                "negatives_default": default["n_negative"],
                "false_positives_fast": fast["false_positives"], "negatives_fast": fast["n_negative"],
                "rss_mb": max(default["rss_mb"], fast["rss_mb"]),
                "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0,
            })
        doc = {
            "schema_version": 1, "tool": "earmark-bench-scale",
            "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
            "seed": seed, "machine": machine_info(),
            "params": {"tracks": tracks, "steps": sizes, "track_seconds": track_seconds,
                       "real_index": os.fspath(real_index), "n_queries": n_queries,
                       "n_negatives": n_negatives, "seconds_per_step": seconds_per_step,
                       "segment_tracks": SEGMENT_TRACKS, "query_transforms": list(SCALE_TRANSFORMS)},
            "key_statistics": {"landmarks_per_second": stats["landmarks_per_second"],
                               "landmarks": stats["landmarks"], "distinct_keys": stats["distinct_keys"]},
            "steps": results,
            "extrapolation": extrapolate(results),
            "seconds": time.perf_counter() - t_run,
        }
        (out / "scale.json").write_text(json.dumps(report_mod._jsonable(doc), indent=1))
        report_mod.plot_scale(doc, out / "scale.png")
        if not keep_index:
            shutil.rmtree(folder, ignore_errors=True)
        return doc
    finally:
        if rich_ctx is not None:
            rich_ctx.__exit__(None, None, None)


def extrapolate(steps: Sequence[dict[str, Any]], target_tracks: int = 10_000_000) -> dict[str, Any]:
    """Linear extrapolation (per track) of size and latency to ``target_tracks``."""
    if not steps:
        return {}
    last = steps[-1]
    k = target_tracks / max(last["tracks"], 1)
    out = {"tracks": target_tracks,
           "index_bytes": last["index_bytes"] * k,
           "note": "index size scales linearly; look-up cost per query grows with postings per "
                   "bucket (linear); one machine stops where the index no longer fits in RAM "
                   "(page cache) and per-query latency exceeds the use case's budget"}
    for key in ("latency_fast_p50_ms", "latency_default_p50_ms"):
        pts = [(s["tracks"], s[key]) for s in steps if s.get(key) is not None]
        if len(pts) >= 2:
            (x0, y0), (x1, y1) = pts[-2], pts[-1]
            slope = (y1 - y0) / max(x1 - x0, 1)
            out[key] = y1 + slope * (target_tracks - x1)
    return out
