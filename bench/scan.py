"""``fp bench scan``: throughput and memory of ``fp scan`` against decoding alone, in one run.

What is measured (same files, same machine, one run, so the ratios are meaningful even on a
shared machine whose absolute speed drifts)
--------------------------------------------------------------------------------------------
``decode``
    Decoding only, in this process: :func:`earmark.fingerprint.audio.iter_audio_blocks` at
    the index's rate in 60 s blocks - exactly the decoder path of ``fp scan`` (FFmpeg or
    libsndfile, downmix, resampling to the engine rate).
``fingerprint``
    Decode + query front end (:func:`~earmark.fingerprint.landmarks.fingerprint_file` as the
    matcher calls it), in this process.
``in_process``
    Fingerprint + hash matching + derivation tier, in this process, per file: the split by
    stage (``stages``: decode, front end, hash matching, derivation tier) comes from here.
``scan_j1`` / ``scan_jN``
    ``fp scan @list --out ... -j 1`` and ``-j N`` as fresh subprocesses (Python start-up,
    index opening, worker start-up, journaling and the report included: what a user
    waits for).  A sampler reads ``/proc`` every ``sample_seconds``: CPU seconds, peak RSS,
    PSS and USS (private memory) per process; the exact CPU of the whole process tree comes
    from ``wait4``.

Reported per phase: seconds, CPU seconds, files/s, x real time; ratios against decode-only
and ``-jN`` against ``-j1``; memory per extra worker (USS of a worker: the index pages are
shared file-backed pages, counted apart as ``index.bytes``); and the known answers (files
flagged, right recording) when the inputs were built here.

Inputs
------
Either any folder of audio (``inputs``), or built here (:func:`build_inputs`) from a
catalogue folder and a negatives folder: ``n_files`` files of 30-180 s (seeded lengths),
stereo, in a mix of formats AI services and uploads use - MP3 (LAME 128-192 kbit/s,
44.1 kHz), Ogg/Opus (96 kbit/s, 48 kHz: Opus has no 44.1 kHz mode), M4A/AAC (128 kbit/s,
44.1 kHz) and Ogg/Vorbis (44.1 kHz).  The music is a montage of non-catalogue tracks;
about half the files carry one 12-30 s audible catalogue excerpt (replacing the music
there at its level, short fades), whose recording and position are written to
``truth.json``.  Half of the excerpts are changed the way a sample is fitted to a new song
(:data:`EXCERPT_TRANSFORMS`: sped up or slowed down, tempo alone, key alone), so the batch
path is measured on what AI pipelines do and not on verbatim copies alone; the transform
and its speed and pitch go into ``truth.json`` and the known answers check the match's
estimate of them.  Built inputs are kept in ``out_dir/inputs`` and reused when the same
settings are asked again.

Writes ``scan-bench.json`` and ``scan-bench.md`` into ``out_dir``.
"""

from __future__ import annotations

import dataclasses
import datetime as _dt
import json
import os
import subprocess
import sys
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from earmark.errors import EarmarkError

SCHEMA_VERSION = 1
#: Sample rate the inputs are composed at (before each format's encoder).
BUILD_SR = 44100
#: (name, weight): the share of each format among built inputs.
FORMAT_MIX: tuple[tuple[str, float], ...] = (("mp3", 0.4), ("opus", 0.3), ("m4a", 0.2),
                                             ("ogg", 0.1))
#: What each format is written as: (suffix, PyAV codec or None for libsndfile, rate, kbit/s).
FORMATS: dict[str, tuple[str, str | None, int, int | None]] = {
    "mp3": (".mp3", "libmp3lame", 44100, 160),
    "opus": (".opus", "libopus", 48000, 96),
    "m4a": (".m4a", "aac", 44100, 128),
    "ogg": (".ogg", None, 44100, None),
}
#: The issue's throughput and memory targets.
TARGETS = {"scan_jN_over_j1": 1.8, "scan_j1_over_decode": 0.7, "extra_worker_mb": 300.0}


# =============================================================================== inputs


def _encode(path: Path, stereo: np.ndarray, sr: int, fmt: str, kbps: int | None = None) -> None:
    """Write ``(2, n)`` float audio at ``sr`` as ``fmt`` (see :data:`FORMATS`)."""
    suffix, codec, rate, default_kbps = FORMATS[fmt]
    kbps = kbps or default_kbps
    x = np.clip(stereo, -1.0, 1.0).astype(np.float32)
    if rate != sr:
        import soxr

        x = soxr.resample(x.T, sr, rate).T.astype(np.float32)
    if codec is None:
        import soundfile as sf

        # Small writes: libsndfile's Vorbis encoder crashes on very large single writes.
        with sf.SoundFile(str(path), "w", rate, 2, format="OGG", subtype="VORBIS") as f:
            for a in range(0, x.shape[1], 1 << 14):
                f.write(np.ascontiguousarray(x[:, a:a + (1 << 14)].T))
        return
    import av

    with av.open(str(path), "w") as c:
        s = c.add_stream(codec, rate=rate, layout="stereo")
        if kbps:
            s.bit_rate = kbps * 1000
        step = rate * 10
        for a in range(0, x.shape[1], step):
            frame = av.AudioFrame.from_ndarray(np.ascontiguousarray(x[:, a:a + step]),
                                               format="fltp", layout="stereo")
            frame.sample_rate = rate
            for p in s.encode(frame):
                c.mux(p)
        for p in s.encode(None):
            c.mux(p)


#: A catalogue excerpt quieter than this (RMS, dBFS) is not used: it is not evidence.
AUDIBLE_DBFS = -40.0

#: How a transformed excerpt is changed, one drawn per excerpt: ``kind -> (smallest,
#: largest)`` size of the change, either sign.  ``speed``: played faster or slower by
#: resampling (tempo and key together, x0.88-0.96 or x1.04-1.12); ``tempo``: Rubber Band,
#: key kept (4-10 %); ``pitch``: Rubber Band, tempo kept (1-3 whole semitones).  All within
#: the default search's grid (:class:`~earmark.fingerprint.config.MatchConfig`).
EXCERPT_TRANSFORMS: dict[str, tuple[float, float]] = {
    "speed": (0.04, 0.12), "tempo": (0.04, 0.10), "pitch": (1.0, 3.0)}
#: A hit's transform estimate counts as right within these (speed: relative; pitch: semitones).
SPEED_TOLERANCE = 0.01
PITCH_TOLERANCE = 0.3


def _transform_excerpt(e: np.ndarray, sr: int, rng: np.random.Generator
                       ) -> tuple[np.ndarray, str, float, float]:
    """``e`` changed by one of :data:`EXCERPT_TRANSFORMS`, drawn with ``rng``:
    ``(audio, kind, speed, pitch_semitones)``, where ``speed`` is reference seconds per
    second of the result (a match's ``speed``)."""
    from earmark.bench import transforms

    kinds = sorted(EXCERPT_TRANSFORMS)
    kind = kinds[int(rng.integers(len(kinds)))]
    low, high = EXCERPT_TRANSFORMS[kind]
    sign = 1.0 if rng.random() < 0.5 else -1.0
    if kind == "pitch":
        st = sign * float(rng.integers(int(low), int(high) + 1))
        return transforms.shift_pitch(e, sr, semitones=st), kind, 1.0, st
    speed = float(np.round(1.0 + sign * rng.uniform(low, high), 3))
    if kind == "speed":
        return (transforms.change_speed(e, sr, speed=speed), kind, speed,
                float(12.0 * np.log2(speed)))
    return transforms.change_tempo(e, sr, speed=speed), kind, speed, 0.0


def _dbfs(y: np.ndarray) -> float:
    return float(10 * np.log10(np.mean(np.square(y, dtype=np.float64)) + 1e-20))


def _fade(y: np.ndarray, n: int) -> np.ndarray:
    n = min(n, y.shape[0] // 2)
    if n > 0:
        ramp = np.linspace(0.0, 1.0, n, dtype=np.float32)
        y[:n] *= ramp
        y[-n:] *= ramp[::-1]
    return y


def build_inputs(catalogue: str | os.PathLike, negatives: str | os.PathLike,
                 out_dir: str | os.PathLike, n_files: int = 40, seed: int = 0,
                 min_seconds: float = 30.0, max_seconds: float = 180.0,
                 catalogue_share: float = 0.5, excerpt_seconds: tuple[float, float] = (12.0, 30.0),
                 transformed_share: float = 0.5,
                 formats: Sequence[tuple[str, float]] = FORMAT_MIX,
                 progress: bool = False) -> dict[str, Any]:
    """Write ``n_files`` seeded scan inputs into ``out_dir`` and return the truth document
    (also written to ``out_dir/truth.json``): ``{"settings", "files": [{"path", "seconds",
    "format", "rate", "catalogue" (path or None), "query_start", "reference_start",
    "excerpt_seconds" (in the file), "transform" (None or a kind of
    :data:`EXCERPT_TRANSFORMS`), "speed", "pitch_semitones"}]}``.  ``transformed_share`` of
    the excerpts are transformed.  A folder already holding the files of the same settings
    is reused as it is."""
    from earmark.fingerprint.audio import audio_duration, load_audio
    from earmark.index.catalogue import find_audio_files

    out = Path(out_dir)
    settings = {"catalogue": os.path.abspath(catalogue), "negatives": os.path.abspath(negatives),
                "n_files": n_files, "seed": seed, "min_seconds": min_seconds,
                "max_seconds": max_seconds, "catalogue_share": catalogue_share,
                "excerpt_seconds": list(excerpt_seconds), "formats": [list(f) for f in formats],
                "transformed_share": transformed_share,
                "transforms": {k: list(v) for k, v in EXCERPT_TRANSFORMS.items()},
                "build_sr": BUILD_SR, "version": 3}
    truth_path = out / "truth.json"
    try:
        old = json.loads(truth_path.read_text())
        if old.get("settings") == settings and all(Path(f["path"]).is_file()
                                                   for f in old["files"]):
            return old
    except (OSError, ValueError, KeyError, TypeError):
        pass
    cat_files, _ = find_audio_files([catalogue])
    neg_files, _ = find_audio_files([negatives])
    if not cat_files or not neg_files:
        raise EarmarkError(f"need audio in both {catalogue} and {negatives} to build inputs")
    out.mkdir(parents=True, exist_ok=True)
    for old_file in out.iterdir():
        if old_file.suffix in {FORMATS[f][0] for f in FORMATS} or old_file.name == "truth.json":
            old_file.unlink()
    rng = np.random.default_rng(seed)
    names = [f for f, _ in formats]
    weights = np.array([w for _, w in formats], dtype=np.float64)
    # Exact shares: a shuffled list of formats in proportion to the weights.
    counts = np.floor(weights / weights.sum() * n_files).astype(int)
    for k in np.argsort(-(weights / weights.sum() * n_files - counts))[: n_files - counts.sum()]:
        counts[k] += 1
    fmt_list = [f for f, c in zip(names, counts) for _ in range(c)]
    rng.shuffle(fmt_list)
    n_cat = int(round(catalogue_share * n_files))
    has_cat = np.zeros(n_files, dtype=bool)
    has_cat[rng.permutation(n_files)[:n_cat]] = True
    # Which excerpts are transformed: an exact share, seeded.
    transformed = np.zeros(n_cat, dtype=bool)
    transformed[rng.permutation(n_cat)[:int(round(transformed_share * n_cat))]] = True
    n_excerpt = 0
    neg_cache: dict[str, np.ndarray] = {}
    cat_dur: dict[str, float] = {}

    def negative(path: str) -> np.ndarray:
        if path not in neg_cache:
            neg_cache[path] = load_audio(path, BUILD_SR)
        return neg_cache[path]

    files = []
    for k in range(n_files):
        seconds = float(np.round(rng.uniform(min_seconds, max_seconds), 2))
        n = int(round(seconds * BUILD_SR))
        # Backing: consecutive pieces (20-60 s) of random non-catalogue tracks.
        parts, have = [], 0
        while have < n:
            y = negative(neg_files[int(rng.integers(len(neg_files)))])
            want = min(n - have, int(rng.uniform(20.0, 60.0) * BUILD_SR), y.shape[0])
            a = int(rng.integers(0, max(1, y.shape[0] - want)))
            parts.append(_fade(y[a:a + want].copy(), int(0.05 * BUILD_SR)))
            have += want
        y = np.concatenate(parts)[:n]
        rec = {"path": None, "seconds": seconds, "format": fmt_list[k],
               "rate": FORMATS[fmt_list[k]][2], "catalogue": None, "query_start": None,
               "reference_start": None, "excerpt_seconds": None, "transform": None,
               "speed": None, "pitch_semitones": None}
        if has_cat[k]:
            # An audible excerpt (a catalogue can hold silent tracks and quiet intros):
            # up to 50 draws of recording and offset.
            for _ in range(50):
                ref = cat_files[int(rng.integers(len(cat_files)))]
                if ref not in cat_dur:
                    cat_dur[ref] = audio_duration(ref)
                ex = float(min(rng.uniform(*excerpt_seconds), cat_dur[ref] - 1.0,
                               seconds - 2.0))
                r0 = float(np.round(rng.uniform(0.0, max(0.0, cat_dur[ref] - ex - 0.5)), 2))
                e = load_audio(ref, BUILD_SR, max_seconds=ex, offset_seconds=r0)
                if e.shape[0] and _dbfs(e) > AUDIBLE_DBFS:
                    break
            else:
                raise EarmarkError(f"{catalogue}: no audible excerpt found in 50 draws")
            kind, speed, pitch = None, 1.0, 0.0
            if transformed[n_excerpt]:
                e, kind, speed, pitch = _transform_excerpt(e, BUILD_SR, rng)
                e = e[: int(round((seconds - 2.0) * BUILD_SR))]
            n_excerpt += 1
            q0 = float(np.round(rng.uniform(0.0, seconds - e.shape[0] / BUILD_SR), 2))
            a = int(round(q0 * BUILD_SR))
            m = min(e.shape[0], y.shape[0] - a)
            # At the level of the music it replaces (a quoted sample, not a quiet insert).
            e = _fade(e[:m] * np.float32(10 ** ((_dbfs(y[a:a + m]) - _dbfs(e[:m])) / 20)),
                      int(0.05 * BUILD_SR))
            w = np.ones(m, dtype=np.float32)
            w = 1.0 - _fade(w, int(0.05 * BUILD_SR))
            y[a:a + m] = y[a:a + m] * w + e
            rec.update(catalogue=ref, query_start=q0, reference_start=r0,
                       excerpt_seconds=round(m / BUILD_SR, 3), transform=kind, speed=speed,
                       pitch_semitones=pitch)
        peak = float(np.max(np.abs(y))) or 1.0
        y = (y * (0.89 / peak)).astype(np.float32)
        # Stereo: the right channel 0.3 ms late and slightly quieter (not a dual-mono file).
        d = 13
        right = np.concatenate([np.zeros(d, np.float32), y[:-d]]) * np.float32(0.9)
        suffix = FORMATS[fmt_list[k]][0]
        path = out / f"scan{k:04d}{suffix}"
        kbps = 192 if fmt_list[k] == "mp3" and k % 2 else None
        _encode(path, np.stack([y, right]), BUILD_SR, fmt_list[k], kbps)
        rec["path"] = str(path.resolve())
        files.append(rec)
        if progress:
            print(f"  built {k + 1}/{n_files}: {path.name} {seconds:.0f} s"
                  + (f" (catalogue {Path(rec['catalogue']).name} at {rec['query_start']} s"
                     + (f", {rec['transform']} x{rec['speed']:g} {rec['pitch_semitones']:+.2f} st"
                        if rec["transform"] else "") + ")"
                     if rec["catalogue"] else ""), file=sys.stderr, flush=True)
    doc = {"settings": settings, "files": files}
    truth_path.write_text(json.dumps(doc, indent=1) + "\n")
    return doc


# =============================================================================== /proc sampling


def _proc_mem(pid: int) -> dict[str, float] | None:
    """RSS, PSS and USS (private clean + dirty) of a process, MB (``smaps_rollup``)."""
    vals: dict[str, float] = {}
    try:
        with open(f"/proc/{pid}/smaps_rollup") as f:
            for line in f:
                parts = line.split()
                if len(parts) >= 2 and parts[0].endswith(":") and parts[1].isdigit():
                    vals[parts[0][:-1]] = int(parts[1]) / 1024.0
    except OSError:
        return None
    return {"rss": vals.get("Rss", 0.0), "pss": vals.get("Pss", 0.0),
            "uss": vals.get("Private_Clean", 0.0) + vals.get("Private_Dirty", 0.0)}


def _proc_cpu(pid: int) -> float | None:
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    except (OSError, IndexError, ValueError):
        return None


def _children(pid: int) -> list[int]:
    out: list[int] = []
    try:
        for t in os.listdir(f"/proc/{pid}/task"):
            try:
                with open(f"/proc/{pid}/task/{t}/children") as f:
                    out += [int(c) for c in f.read().split()]
            except OSError:
                pass
    except OSError:
        pass
    return out


class _TreeSampler:
    """Samples a process and its children (workers) from ``/proc`` in a thread: peak memory
    per process, last CPU time seen per process, peak total PSS / USS."""

    def __init__(self, root: int, interval: float = 0.2):
        self.root, self.interval = root, interval
        self.procs: dict[int, dict[str, float]] = {}
        self.peak_total_pss = self.peak_total_uss = 0.0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            self.sample()
            self._stop.wait(self.interval)

    def sample(self) -> None:
        tot_pss = tot_uss = 0.0
        for pid in [self.root, *_children(self.root)]:
            m = _proc_mem(pid)
            cpu = _proc_cpu(pid)
            if m is None:
                continue
            p = self.procs.setdefault(pid, {"rss": 0.0, "pss": 0.0, "uss": 0.0, "cpu": 0.0,
                                            "first_seen": time.perf_counter()})
            for k in ("rss", "pss", "uss"):
                p[k] = max(p[k], m[k])
            if cpu is not None:
                p["cpu"] = max(p["cpu"], cpu)
            tot_pss += m["pss"]
            tot_uss += m["uss"]
        self.peak_total_pss = max(self.peak_total_pss, tot_pss)
        self.peak_total_uss = max(self.peak_total_uss, tot_uss)

    def __enter__(self) -> "_TreeSampler":
        self._thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self._stop.set()
        self._thread.join()


# =============================================================================== phases


def _rate(n_files: int, audio_s: float, seconds: float, cpu: float | None) -> dict[str, Any]:
    d: dict[str, Any] = {"seconds": round(seconds, 3), "files": n_files,
                         "files_per_second": round(n_files / seconds, 4) if seconds > 0 else None,
                         "x_realtime": round(audio_s / seconds, 1) if seconds > 0 else None}
    if cpu is not None:
        d["cpu_seconds"] = round(cpu, 3)
        d["cpu_x_realtime"] = round(audio_s / cpu, 1) if cpu > 0 else None
    return d


def _cpu_now() -> float:
    t = os.times()
    return t.user + t.system


def _fp_cmd() -> list[str]:
    return [sys.executable, "-c", "import sys; from earmark.cli import main; sys.argv[0] = 'fp'; "
                                  "main()"]


def _run_scan_process(list_file: Path, out: Path, index: Path, jobs: int, args: list[str],
                      audio_s: float, n_files: int, sample_seconds: float) -> dict[str, Any]:
    """``fp scan @list --out out -j jobs`` in a fresh process, sampled from /proc."""
    import shutil

    shutil.rmtree(out, ignore_errors=True)
    cmd = [*_fp_cmd(), "scan", f"@{list_file}", "--out", str(out), "--index", str(index),
           "-j", str(jobs), "-q", *args]
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    with _TreeSampler(proc.pid, sample_seconds) as sampler:
        _, status, usage = os.wait4(proc.pid, 0)
        seconds = time.perf_counter() - t0
    proc.returncode = os.waitstatus_to_exitcode(status)
    stdout, stderr = proc.communicate()
    if proc.returncode not in (0, 1):
        raise EarmarkError(f"fp scan -j {jobs} failed (exit {proc.returncode}): "
                           f"{stderr.decode(errors='replace').strip()[-2000:]}")
    cpu_tree = usage.ru_utime + usage.ru_stime
    d = _rate(n_files, audio_s, seconds, cpu_tree)
    d["jobs"] = jobs
    d["cores_busy"] = round(cpu_tree / seconds, 2) if seconds > 0 else None
    d["stdout"] = stdout.decode(errors="replace").strip().splitlines()
    d["peak_total_pss_mb"] = round(sampler.peak_total_pss, 1)
    d["peak_total_uss_mb"] = round(sampler.peak_total_uss, 1)
    procs = []
    for pid, p in sampler.procs.items():
        procs.append({"role": "parent" if pid == proc.pid else "worker", "pid": pid,
                      "cpu_seconds": round(p["cpu"], 2), "peak_rss_mb": round(p["rss"], 1),
                      "peak_pss_mb": round(p["pss"], 1), "peak_uss_mb": round(p["uss"], 1)})
    d["processes"] = procs
    workers = [p for p in procs if p["role"] == "worker"]
    d["workers_seen"] = len(workers)
    parent_cpu = next((p["cpu_seconds"] for p in procs if p["role"] == "parent"), 0.0)
    if workers:
        busiest = max(p["cpu_seconds"] for p in workers)
        d["busiest_worker_cpu_seconds"] = busiest
        # What the run would take with a core per process and nobody else on the machine:
        # the parent's CPU (start-up, journals, report: mostly serial) plus the busiest
        # worker's (a shared machine inflates wall time, hardly CPU time).
        d["idle_estimate_seconds"] = round(parent_cpu + busiest, 3)
    return d


def _flag(record: dict[str, Any]) -> dict[str, Any]:
    """What the known answers read of one file's result (a ``results.jsonl`` record): its
    top recording (else derivation) match, where it starts, and its speed and key shift (a
    derivation match has no estimate of them)."""
    matches = record.get("matches") or []
    recs = [m for m in matches if m.get("kind", "recording") == "recording"]
    drv = [m for m in matches if m.get("kind") == "derivation"]
    top = recs[0] if recs else None
    return {"flagged": bool(matches),
            "top": (top or (drv[0] if drv else {})).get("reference", {}).get("path"),
            "query_start": top["query_start"] if top else None,
            "speed": top.get("speed") if top else None,
            "pitch_semitones": top.get("pitch_semitones") if top else None,
            "duration": record.get("duration")}


def _read_flags(out: Path) -> dict[str, dict[str, Any]]:
    from earmark.scan import load_records

    results, errors = load_records(out)
    flags = {r["query"]: _flag(r) for r in results}
    for e in errors:
        flags[e["query"]] = {"flagged": False, "top": None, "error": e.get("error")}
    return flags


def _known_answers(truth: list[dict[str, Any]], flags: dict[str, dict[str, Any]]
                   ) -> dict[str, Any]:
    expected = [t for t in truth if t["catalogue"]]
    right = sum(1 for t in expected if flags.get(t["path"], {}).get("top") and
                os.path.realpath(flags[t["path"]]["top"]) == os.path.realpath(t["catalogue"]))
    located = sum(1 for t in expected if flags.get(t["path"], {}).get("query_start") is not None
                  and t["query_start"] - 1.0 <= flags[t["path"]]["query_start"]
                  <= t["query_start"] + t["excerpt_seconds"])
    flagged = sum(1 for t in truth if flags.get(t["path"], {}).get("flagged"))
    fp = sum(1 for t in truth if not t["catalogue"] and flags.get(t["path"], {}).get("flagged"))

    def right_recording(t: dict[str, Any]) -> bool:
        top = flags.get(t["path"], {}).get("top")
        return bool(top) and os.path.realpath(top) == os.path.realpath(t["catalogue"])

    def transform_ok(t: dict[str, Any]) -> bool:
        f = flags[t["path"]]
        if f.get("speed") is None or f.get("pitch_semitones") is None:
            return False  # found by the derivation tier only: no transform estimate
        return (abs(f["speed"] / (t.get("speed") or 1.0) - 1.0) <= SPEED_TOLERANCE
                and abs(f["pitch_semitones"] - (t.get("pitch_semitones") or 0.0))
                <= PITCH_TOLERANCE)

    changed = [t for t in expected if t.get("transform")]
    return {"files": len(truth), "with_catalogue": len(expected), "flagged": flagged,
            "right_recording": right, "located": located, "missed": len(expected) - right,
            "false_positives": fp, "transformed": len(changed),
            "transformed_right": sum(1 for t in changed if right_recording(t)),
            "transform_ok": sum(1 for t in expected if right_recording(t) and transform_ok(t))}


def run_scan_bench(out_dir: str | os.PathLike, index: str | os.PathLike,
                   inputs: str | os.PathLike | None = None,
                   catalogue: str | os.PathLike | None = None,
                   negatives: str | os.PathLike | None = None, n_files: int = 40, seed: int = 0,
                   min_seconds: float = 30.0, max_seconds: float = 180.0, jobs: int = 2,
                   fast: bool = False, min_significance: float | None = None,
                   repeats: int = 1, sample_seconds: float = 0.2,
                   transformed_share: float = 0.5, recordings_only: bool = False,
                   progress: bool = True) -> dict[str, Any]:
    """Measure ``fp scan`` (``-j 1`` and ``-j jobs``) against decode-only and the in-process
    stages on the same files; write ``scan-bench.json`` / ``scan-bench.md`` into ``out_dir``.

    Give ``inputs`` (any folder of audio, scanned as it is) or ``catalogue`` + ``negatives``
    (inputs built by :func:`build_inputs` into ``out_dir/inputs``).  ``repeats`` runs the
    ``-j 1`` / ``-j N`` pair that many times, alternating, and keeps the fastest of each.
    Returns the JSON document.
    """
    from earmark.bench.runner import machine_info
    from earmark.fingerprint import audio as audio_io
    from earmark.fingerprint.config import MATCH_PRESETS
    from earmark.fingerprint.landmarks import fingerprint_file
    from earmark.index.catalogue import Index, find_audio_files
    from earmark.errors import EarmarkError as _E

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)

    def say(msg: str) -> None:
        if progress:
            print(msg, file=sys.stderr, flush=True)

    truth = None
    if inputs is not None:
        files, _ = find_audio_files([inputs])
        tp = Path(inputs) / "truth.json"
        if tp.is_file():
            try:
                truth = json.loads(tp.read_text())["files"]
            except (OSError, ValueError, KeyError):
                truth = None
    elif catalogue is not None and negatives is not None:
        say(f"building {n_files} inputs in {out / 'inputs'} ...")
        doc = build_inputs(catalogue, negatives, out / "inputs", n_files=n_files, seed=seed,
                           min_seconds=min_seconds, max_seconds=max_seconds,
                           transformed_share=transformed_share, progress=progress)
        truth = doc["files"]
        files = [t["path"] for t in truth]
    else:
        raise EarmarkError("give a folder of inputs, or a catalogue and a negatives folder "
                           "to build them from")
    if not files:
        raise EarmarkError(f"no audio files in {inputs}")
    list_file = out / "files.txt"
    list_file.write_text("".join(f + "\n" for f in files))
    # One voting thread, as in each fp scan worker: the in-process stages are one worker's.
    mcfg = MATCH_PRESETS["fast" if fast else "default"].with_(threads=1)
    scan_args = ["--fast"] if fast else []
    if recordings_only:
        mcfg = mcfg.with_(derivation=False)
        scan_args.append("--recordings-only")
    if min_significance is not None:
        mcfg = mcfg.with_(min_significance=min_significance)
        scan_args += ["--min-significance", repr(float(min_significance))]
    idx = Index.open(index)
    cfg = idx.config
    max_dt = idx._query_max_dt(mcfg)
    index_bytes = sum(p.stat().st_size for p in Path(index).rglob("*") if p.is_file())
    load_before = os.getloadavg()

    # Warm-up (JIT kernels, imports, page cache of every input): not timed.
    say("warming up ...")
    for f in files:
        with open(f, "rb") as fh:
            while fh.read(1 << 20):
                pass
    warm = min(files, key=lambda f: os.path.getsize(f))
    try:
        idx.match_file(warm, mcfg)
    except _E:
        pass

    # -- decode only
    say("decode only ...")
    audio_s = 0.0
    durations: dict[str, float] = {}
    c0, t0 = _cpu_now(), time.perf_counter()
    for f in files:
        n = 0
        try:
            for b in audio_io.iter_audio_blocks(f, cfg.sr, block_seconds=60.0):
                n += b.shape[0]
        except _E:
            pass
        durations[f] = n / cfg.sr
        audio_s += n / cfg.sr
    decode = _rate(len(files), audio_s, time.perf_counter() - t0, _cpu_now() - c0)

    # -- decode + front end, then hash matching and derivation tier, per file
    say("decode + fingerprint + match, in process ...")
    st = {"fingerprint": 0.0, "hash_match": 0.0, "derivation": 0.0}
    cpu = dict(st)
    rec_cfg = dataclasses.replace(mcfg, derivation=False)
    c0, t0 = _cpu_now(), time.perf_counter()
    flags_inproc: dict[str, dict[str, Any]] = {}
    for f in files:
        a, ca = time.perf_counter(), _cpu_now()
        try:
            lm = fingerprint_file(f, cfg, side="query", max_dt_frames=max_dt,
                                  keep_audio=mcfg.needs_audio, keep_spectrogram=mcfg.mix_look)
        except _E:
            continue
        b, cb = time.perf_counter(), _cpu_now()
        res = idx.match_landmarks(lm, rec_cfg, f)
        c, cc = time.perf_counter(), _cpu_now()
        matches = list(res.matches)
        if mcfg.derivation and lm.audio is not None and lm.audio.shape[0]:
            matches += idx._derivations(lm.audio, {m.reference.track_id for m in matches})
        d, cd = time.perf_counter(), _cpu_now()
        st["fingerprint"] += b - a
        st["hash_match"] += c - b
        st["derivation"] += d - c
        cpu["fingerprint"] += cb - ca
        cpu["hash_match"] += cc - cb
        cpu["derivation"] += cd - cc
        flags_inproc[f] = _flag({"matches": [m.to_dict() for m in matches],
                                 "duration": lm.duration})
    in_process = _rate(len(files), audio_s, time.perf_counter() - t0, _cpu_now() - c0)
    fingerprint = _rate(len(files), audio_s, st["fingerprint"], cpu["fingerprint"])
    idx.close()
    # The split is by CPU time (robust on a busy machine; the voting threads' CPU counts);
    # decode comes from the decode-only pass, the front end is the rest of the fingerprint.
    dec_cpu = decode["cpu_seconds"]
    stages = {"cpu_seconds": {"decode": round(dec_cpu, 3),
                              "front_end": round(max(0.0, cpu["fingerprint"] - dec_cpu), 3),
                              "hash_match": round(cpu["hash_match"], 3),
                              "derivation": round(cpu["derivation"], 3)},
              "wall_seconds": {"fingerprint": round(st["fingerprint"], 3),
                               "hash_match": round(st["hash_match"], 3),
                               "derivation": round(st["derivation"], 3)}}
    total_cpu = sum(stages["cpu_seconds"].values())
    stages["share"] = {k: round(v / total_cpu, 3) if total_cpu > 0 else None
                       for k, v in stages["cpu_seconds"].items()}

    # -- fp scan -j 1 and -j N, fresh processes
    # Alternating -j 1 / -j N runs; with repeats the fastest of each is kept (on a shared
    # machine the slower ones mostly measure the neighbours).
    runs: dict[int, dict[str, Any]] = {}
    all_seconds: dict[int, list[float]] = {}
    for rep in range(max(1, repeats)):
        for j in sorted({1, jobs}):
            say(f"fp scan -j {j} ..." + (f" (repeat {rep + 1}/{repeats})" if repeats > 1 else ""))
            r = _run_scan_process(list_file, out / f"scan-j{j}", Path(index), j, scan_args,
                                  audio_s, len(files), sample_seconds)
            flags = _read_flags(out / f"scan-j{j}")
            r["known_answers"] = _known_answers(truth, flags) if truth else None
            r["flagged"] = sum(1 for v in flags.values() if v.get("flagged"))
            r["errors"] = sum(1 for v in flags.values() if v.get("error"))
            all_seconds.setdefault(j, []).append(r["seconds"])
            if j not in runs or r["seconds"] < runs[j]["seconds"]:
                runs[j] = r
    for j, r in runs.items():
        r["all_seconds"] = all_seconds[j]
    j1, jn = runs[1], runs[jobs]

    def ratio(a: float | None, b: float | None) -> float | None:
        return round(a / b, 3) if a and b else None

    worker_uss = [p["peak_uss_mb"] for p in jn["processes"] if p["role"] == "worker"]
    worker_pss = [p["peak_pss_mb"] for p in jn["processes"] if p["role"] == "worker"]
    memory = {
        "index_bytes": index_bytes,
        "worker_peak_uss_mb": max(worker_uss) if worker_uss else None,
        "worker_peak_pss_mb": max(worker_pss) if worker_pss else None,
        "extra_worker_mb": (round((jn["peak_total_pss_mb"] - j1["peak_total_pss_mb"])
                                  / (jobs - 1), 1) if jobs > 1 else None),
    }
    ratios = {
        "fingerprint_over_decode": ratio(decode["seconds"], fingerprint["seconds"]),
        "in_process_over_decode": ratio(decode["seconds"], in_process["seconds"]),
        "scan_j1_over_decode": ratio(decode["seconds"], j1["seconds"]),
        "scan_j1_over_in_process": ratio(in_process["seconds"], j1["seconds"]),
        "scan_jN_over_j1": ratio(j1["seconds"], jn["seconds"]) if jobs > 1 else None,
        "scan_jN_over_j1_idle_estimate": (ratio(j1.get("idle_estimate_seconds"),
                                                jn.get("idle_estimate_seconds"))
                                          if jobs > 1 else None),
        # By CPU seconds (what the work costs, whatever else the machine runs):
        "fingerprint_over_decode_cpu": ratio(decode["cpu_seconds"], fingerprint["cpu_seconds"]),
        "in_process_over_decode_cpu": ratio(decode["cpu_seconds"], in_process["cpu_seconds"]),
        "scan_j1_over_decode_cpu": ratio(decode["cpu_seconds"], j1["cpu_seconds"]),
        "scan_jN_over_j1_cpu_total": (ratio(j1["cpu_seconds"], jn["cpu_seconds"])
                                      if jobs > 1 else None),
    }
    targets = {
        "scan_jN_over_j1": {"target": TARGETS["scan_jN_over_j1"],
                            "value": ratios["scan_jN_over_j1"]},
        "scan_j1_over_decode": {"target": TARGETS["scan_j1_over_decode"],
                                "value": ratios["scan_j1_over_decode"]},
        "extra_worker_mb": {"target": TARGETS["extra_worker_mb"],
                            "value": memory["worker_peak_uss_mb"], "max": True},
    }
    for t in targets.values():
        v = t["value"]
        t["met"] = None if v is None else (v <= t["target"] if t.get("max") else v >= t["target"])
    fmt_counts: dict[str, int] = {}
    for f in files:
        ext = Path(f).suffix.lower().lstrip(".")
        fmt_counts[ext] = fmt_counts.get(ext, 0) + 1
    lengths = [durations[f] for f in files if durations.get(f)]
    doc = {
        "schema_version": SCHEMA_VERSION,
        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "machine": machine_info(),
        "load_average_before": [round(x, 2) for x in load_before],
        "load_average_after": [round(x, 2) for x in os.getloadavg()],
        "index": {"path": os.path.abspath(index), "bytes": index_bytes},
        "match": ("fast" if fast else "default") + (" --recordings-only" if recordings_only
                                                     else ""),
        "min_significance": min_significance,
        "inputs": {"folder": os.path.abspath(inputs) if inputs else str((out / "inputs").resolve()),
                   "built": inputs is None, "seed": seed if inputs is None else None,
                   "files": len(files), "audio_seconds": round(audio_s, 2),
                   "min_seconds": round(min(lengths), 2) if lengths else None,
                   "max_seconds": round(max(lengths), 2) if lengths else None,
                   "formats": fmt_counts,
                   "with_catalogue": sum(1 for t in truth if t["catalogue"]) if truth else None,
                   "transformed": ({k: sum(1 for t in truth if t.get("transform") == k)
                                    for k in sorted(EXCERPT_TRANSFORMS)} if truth else None)},
        "jobs": jobs,
        "repeats": repeats,
        "phases": {"decode": decode, "fingerprint": fingerprint, "in_process": in_process,
                   "scan_j1": j1, "scan_jN": jn},
        "stages": stages,
        "ratios": ratios,
        "memory": memory,
        "targets": targets,
        "known_answers": {"in_process": _known_answers(truth, flags_inproc) if truth else None,
                          "scan_j1": j1["known_answers"], "scan_jN": jn["known_answers"]},
    }
    (out / "scan-bench.json").write_text(json.dumps(doc, indent=1) + "\n")
    (out / "scan-bench.md").write_text(scan_bench_markdown(doc))
    return doc


# =============================================================================== report


def scan_bench_markdown(doc: dict[str, Any]) -> str:
    """``scan-bench.md``: the throughput table, ratios, memory, stage split, known answers."""
    inp, ph, r = doc["inputs"], doc["phases"], doc["ratios"]
    fmts = ", ".join(f"{n} {k.upper()}" for k, n in sorted(inp["formats"].items()))
    m = doc["machine"]
    lines = [
        "# fp scan benchmark", "",
        f"{inp['files']} files ({fmts}), {inp['audio_seconds'] / 3600:.2f} h of audio, "
        f"{inp['min_seconds']:.0f}-{inp['max_seconds']:.0f} s each"
        + (f", {inp['with_catalogue']} with a catalogue excerpt" if inp.get("with_catalogue")
           is not None else "")
        + (" (transformed: " + ", ".join(f"{k} {n}" for k, n in inp["transformed"].items())
           + ")" if inp.get("transformed") else "")
        + f"; inputs `{inp['folder']}`; index `{doc['index']['path']}` "
          f"({doc['index']['bytes'] / 1e6:.1f} MB); match preset `{doc['match']}`.",
        f"Machine: {m.get('cpu_model')}, {m.get('logical_cpus')} logical CPUs; load average "
        f"{doc['load_average_before'][0]} before, {doc['load_average_after'][0]} after "
        f"(commit {m.get('earmark_commit')}, {doc['created']}).", "",
        "| run | seconds | files/s | × real time | CPU s | cores busy | vs decode-only | "
        "vs decode-only (CPU) |",
        "|---|--:|--:|--:|--:|--:|--:|--:|",
    ]
    dec = ph["decode"]["seconds"]
    dec_cpu = ph["decode"].get("cpu_seconds") or float("nan")
    names = [("decode", "decode only (in process)"),
             ("fingerprint", "decode + front end (in process)"),
             ("in_process", "decode + front end + match (in process)"),
             ("scan_j1", "`fp scan -j 1`"), ("scan_jN", f"`fp scan -j {doc['jobs']}`")]
    for key, label in names:
        p = ph[key]
        rel = dec / p["seconds"] if p["seconds"] else float("nan")
        c = p.get("cpu_seconds") or float("nan")
        lines.append(f"| {label} | {p['seconds']:.1f} | {p['files_per_second']:.2f} | "
                     f"{p['x_realtime']:.0f}× | {c:.1f} | {c / p['seconds']:.2f} | "
                     f"{rel:.3f} | {dec_cpu / c:.3f} |")
    busy = ph["scan_jN"].get("cores_busy")
    cpus = min(doc["jobs"], m.get("logical_cpus") or doc["jobs"])
    if busy is not None and doc["jobs"] > 1 and busy < 0.8 * cpus:
        lines += ["", f"**The machine was shared**: `-j {doc['jobs']}` kept only {busy:.2f} of "
                      f"{cpus} cores busy, so the wall-clock ratios understate it; the CPU-second "
                      f"ratios below do not depend on the neighbours."]
    if doc.get("repeats", 1) > 1:
        lines += ["", "Scan runs: fastest of " + ", ".join(
            f"`-j {ph[k]['jobs']}` " + " / ".join(f"{x:.1f}" for x in ph[k]["all_seconds"]) + " s"
            for k in ("scan_j1", "scan_jN")) + "."]
    lines += ["", "| ratio | value | target |", "|---|--:|--:|"]
    tg = doc["targets"]
    for k, label in (("scan_j1_over_decode", "`-j 1` throughput / decode-only"),
                     ("scan_jN_over_j1", f"`-j {doc['jobs']}` throughput / `-j 1`"),
                     ("extra_worker_mb", "private memory (USS) per worker, MB")):
        t = tg[k]
        v = "–" if t["value"] is None else f"{t['value']:.2f}"
        sign = "≤" if t.get("max") else "≥"
        mark = "" if t["met"] is None else (" ✓" if t["met"] else " ✗")
        lines.append(f"| {label} | {v} | {sign} {t['target']:g}{mark} |")
    for k, label in (("scan_j1_over_decode_cpu", "`-j 1` / decode-only, by CPU seconds"),
                     ("scan_jN_over_j1_idle_estimate",
                      f"`-j {doc['jobs']}` / `-j 1`, idle-machine estimate (parent + busiest "
                      f"worker CPU s)"),
                     ("scan_jN_over_j1_cpu_total",
                      f"`-j 1` / `-j {doc['jobs']}` CPU seconds (parallel overhead)"),
                     ("fingerprint_over_decode", "decode + front end / decode-only"),
                     ("in_process_over_decode", "in process, all stages / decode-only"),
                     ("scan_j1_over_in_process", "`-j 1` / in process (scan overhead)")):
        v = r.get(k)
        lines.append(f"| {label} | {'–' if v is None else f'{v:.2f}'} | |")
    s = doc["stages"]
    lines += ["", "Where one process's time goes (in process, CPU seconds summed over files):",
              "", "| stage | CPU s | share |", "|---|--:|--:|"]
    for k, label in (("decode", "decode (+ downmix, resample)"), ("front_end", "front end"),
                     ("hash_match", "hash matching"), ("derivation", "derivation tier")):
        lines.append(f"| {label} | {s['cpu_seconds'][k]:.1f} | "
                     f"{100 * (s['share'][k] or 0):.0f} % |")
    lines += ["", "Processes of the scan runs (peak memory sampled from /proc):", "",
              "| run | process | CPU s | RSS MB | PSS MB | USS MB |", "|---|---|--:|--:|--:|--:|"]
    for key in ("scan_j1", "scan_jN"):
        p = ph[key]
        for q in p["processes"]:
            lines.append(f"| -j {p['jobs']} | {q['role']} | {q['cpu_seconds']:.1f} | "
                         f"{q['peak_rss_mb']:.0f} | {q['peak_pss_mb']:.0f} | "
                         f"{q['peak_uss_mb']:.0f} |")
    mem = doc["memory"]
    if mem.get("extra_worker_mb") is not None:
        lines += ["", f"Peak total PSS grows by {mem['extra_worker_mb']:.0f} MB per extra "
                      f"worker; the index is {mem['index_bytes'] / 1e6:.1f} MB on disk (shared "
                      f"page cache)."]
    ka = doc["known_answers"]
    if ka.get("scan_j1"):
        lines += ["", "| known answers | files | with catalogue | flagged | right recording | "
                      "located | transformed: right recording | speed and pitch right | "
                      "false positives |", "|---|--:|--:|--:|--:|--:|--:|--:|--:|"]
        for key, label in (("in_process", "in process"), ("scan_j1", "-j 1"),
                           ("scan_jN", f"-j {doc['jobs']}")):
            k = ka.get(key)
            if k:
                lines.append(f"| {label} | {k['files']} | {k['with_catalogue']} | {k['flagged']} "
                             f"| {k['right_recording']} | {k['located']} | "
                             f"{k.get('transformed_right', 0)} of {k.get('transformed', 0)} | "
                             f"{k.get('transform_ok', 0)} | {k['false_positives']} |")
        lines += ["", f"Speed and pitch right: the top match's estimate within "
                      f"{SPEED_TOLERANCE:.0%} and {PITCH_TOLERANCE:g} semitones of the "
                      f"excerpt's (every found excerpt, transformed or not)."]
    return "\n".join(lines) + "\n"
