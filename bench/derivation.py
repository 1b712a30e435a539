"""``fp bench derivation``: does the derivation tier flag re-performed compositions?

Everything is synthetic and seeded except the optional real negatives, so the benchmark
runs anywhere with known answers.

Compositions (:func:`compose`)
------------------------------
A piece is symbolic: a key (tonic and one of four modes), a tempo, and a form of 4-bar
sections (``A B A B' ...``) each with its own chord progression (one or two chords a
bar, drawn from common degree patterns and random ones) and its own melody (a rhythm
per bar from a palette of eighth/quarter/dotted patterns, pitches a biased random walk
on the scale that lands on chord tones on strong beats), a bass line (roots and fifths)
and a drum groove.  Catalogue pieces and negative pieces use disjoint seeds.

Rendering (:func:`render`)
--------------------------
Own additive synthesis at 8 kHz: each part is played by an :class:`Instrument` (harmonic
amplitudes, odd/even balance, attack/decay/sustain/release, vibrato, detuned chorus,
breath noise, slight inharmonicity) from a palette of 12 distinct timbres (piano-like,
organ, strings, flute, clarinet, brass, square lead, bell, pluck, pad, reed, soft sine),
and drums from one of three kits.  A rendition is ``(piece, instrument set, transpose,
tempo factor)``; the catalogue holds rendition set A, queries use other sets.

Conditions (20 s queries at a random offset)
--------------------------------------------
``instruments``  other instrument set, same key and tempo
``transposed``   catalogue instruments, +-1..3 semitones
``tempo``        catalogue instruments, tempo x0.85..0.9 or x1.1..1.15
``all``          other instruments + transposed + tempo
``melody``       the melody alone (other instrument) over a new backing: chords, bass and
                 drums of another (negative-seed) piece moved to the same key and tempo
``negative``     non-catalogue pieces, any instruments/key/tempo
``real_negative`` 20 s excerpts of real music that is not in the catalogue
                 (a folder given with ``--other``)
"""

from __future__ import annotations

import json
import math
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

SR = 8000

_SCALES = (np.array([0, 2, 4, 5, 7, 9, 11]), np.array([0, 2, 3, 5, 7, 8, 10]),
           np.array([0, 2, 3, 5, 7, 9, 10]), np.array([0, 2, 4, 5, 7, 9, 10]))
_PROGRESSIONS = ((0, 4, 5, 3), (0, 5, 3, 4), (5, 3, 0, 4), (0, 3, 4, 0), (1, 4, 0, 0),
                 (0, 3, 5, 4), (3, 4, 2, 5), (0, 6, 5, 4))
# Melody rhythms per bar, in eighth notes: (onset, duration) pairs.
_RHYTHMS = (((0, 2), (2, 2), (4, 2), (6, 2)), ((0, 1), (1, 1), (2, 2), (4, 1), (5, 1), (6, 2)),
            ((0, 3), (3, 1), (4, 4)), ((0, 1), (1, 1), (2, 1), (3, 1), (4, 2), (6, 2)),
            ((0, 2), (2, 1), (3, 1), (4, 3), (7, 1)), ((1, 1), (2, 2), (4, 1), (5, 3)),
            ((0, 4), (4, 2), (6, 2)), ((0, 1), (1, 2), (3, 1), (4, 1), (5, 2), (7, 1)))


@dataclass
class Composition:
    """A symbolic piece.  Times are in beats, pitches are MIDI numbers.

    ``notes`` rows: ``(onset_beats, duration_beats, midi, velocity, part)`` with part
    0 melody, 1 chords, 2 bass; ``drums`` rows: ``(onset_beats, kind, velocity)`` with kind
    0 kick, 1 snare, 2 hat.
    """

    seed: int
    tonic: int
    bpm: float
    n_beats: int
    notes: np.ndarray
    drums: np.ndarray

    @property
    def seconds(self) -> float:
        return self.n_beats * 60.0 / self.bpm


def compose(seed: int, seconds: float = 90.0) -> Composition:
    """A seeded piece of about ``seconds`` (at its own tempo)."""
    rng = np.random.default_rng([seed, 7919])
    bpm = float(rng.uniform(80, 140))
    tonic = 55 + int(rng.integers(0, 12))  # melody octave G3..F#4 region
    scale = _SCALES[int(rng.integers(0, len(_SCALES)))]
    n_bars = max(4, int(math.ceil(seconds * bpm / 60 / 4)))
    n_sections = int(math.ceil(n_bars / 4))
    kinds = [int(rng.integers(0, 3)) for _ in range(3)]
    # Section material: progression (chord degree per half bar) and melody per bar.
    sections = []
    for _ in range(3):
        if rng.random() < 0.6:
            prog = list(_PROGRESSIONS[int(rng.integers(0, len(_PROGRESSIONS)))])
        else:
            prog = [0] + [int(x) for x in rng.integers(0, 7, 3)]
        two_per_bar = rng.random() < 0.4
        if two_per_bar:
            halves = []
            for d in prog:
                halves += [d, int((d + rng.choice([0, 3, 4, 5])) % 7)]
        else:
            halves = [d for d in prog for _ in range(2)]
        melody_bars = []
        pos = int(rng.integers(0, 7))
        for bar in range(4):
            rhythm = _RHYTHMS[int(rng.integers(0, len(_RHYTHMS)))]
            bar_notes = []
            for onset, dur in rhythm:
                chord = halves[bar * 2 + (1 if onset >= 4 else 0)]
                if onset in (0, 4):  # strong beats: nearest chord tone
                    tones = [chord + t for t in (0, 2, 4, 7, 9, 11)]
                    pos = min(tones, key=lambda t: abs(t - pos) + 0.1 * rng.random())
                else:
                    pos += int(rng.choice([-2, -1, -1, 1, 1, 2, 3, -3]))
                pos = int(np.clip(pos, -2, 11))
                if rng.random() < 0.08:
                    continue
                bar_notes.append((onset / 2, dur / 2 * 0.95, pos))
            melody_bars.append(bar_notes)
        sections.append((halves, melody_bars))
    form = [0, 1, 0, 2, 0, 1, 2, 0] * (n_sections // 8 + 1)
    form = form[:n_sections]
    notes, drums = [], []

    def deg_midi(d: int, base: int) -> int:
        return base + int(scale[d % 7]) + 12 * (d // 7)

    groove = int(rng.integers(0, 3))
    for si, sec in enumerate(form):
        halves, melody_bars = sections[sec]
        for bar in range(4):
            b0 = (si * 4 + bar) * 4
            for h in range(2):
                d = halves[bar * 2 + h]
                for third in (0, 2, 4):
                    notes.append((b0 + 2 * h, 1.9, deg_midi(d + third, tonic - 12), 0.5, 1))
                root = deg_midi(d, tonic - 24)
                notes.append((b0 + 2 * h, 0.9, root, 0.8, 2))
                notes.append((b0 + 2 * h + 1, 0.9, root + (7 if groove else 12), 0.7, 2))
            for onset, dur, pos in melody_bars[bar]:
                notes.append((b0 + onset, dur, deg_midi(pos, tonic), 0.9, 0))
            for beat in range(4):
                if beat in (0, 2) or (groove == 2 and beat == 3):
                    drums.append((b0 + beat, 0, 1.0))
                if beat in (1, 3):
                    drums.append((b0 + beat, 1, 0.8))
                drums.append((b0 + beat, 2, 0.5))
                drums.append((b0 + beat + 0.5, 2, 0.35))
    del kinds
    return Composition(seed=seed, tonic=tonic, bpm=bpm, n_beats=len(form) * 16,
                       notes=np.array(notes, dtype=np.float64),
                       drums=np.array(drums, dtype=np.float64))


def with_new_backing(melody_of: Composition, backing_of: Composition) -> Composition:
    """The melody of one piece over the chords, bass and drums of another, moved to the
    first piece's key and tempo."""
    mel = melody_of.notes[melody_of.notes[:, 4] == 0]
    back = backing_of.notes[backing_of.notes[:, 4] != 0].copy()
    back[:, 2] += melody_of.tonic - backing_of.tonic
    n_beats = melody_of.n_beats
    reps = int(math.ceil(n_beats / backing_of.n_beats))
    backs = [back + np.array([k * backing_of.n_beats, 0, 0, 0, 0]) for k in range(reps)]
    back = np.concatenate(backs)
    back = back[back[:, 0] < n_beats]
    dr = np.concatenate([backing_of.drums + np.array([k * backing_of.n_beats, 0, 0])
                         for k in range(reps)])
    dr = dr[dr[:, 0] < n_beats]
    return Composition(seed=melody_of.seed, tonic=melody_of.tonic, bpm=melody_of.bpm,
                       n_beats=n_beats, notes=np.concatenate([mel, back]), drums=dr)


@dataclass(frozen=True)
class Instrument:
    """An additive-synthesis timbre."""

    name: str
    harmonics: tuple[float, ...]
    attack: float
    decay: float
    sustain: float
    release: float
    vibrato: float = 0.0        # depth in semitones
    chorus: float = 0.0         # detune of a second voice, semitones
    noise: float = 0.0          # breath/bow noise level
    inharmonic: float = 0.0     # stretch of partial k: k * (1 + b k^2)
    octave: int = 0


PALETTE = (
    Instrument("piano", (1, .6, .45, .3, .2, .12, .08, .05), .003, .7, 0.0, .15, inharmonic=4e-4),
    Instrument("organ", (1, .8, .6, .5, 0, .4, 0, .3), .01, .1, 0.9, .05),
    Instrument("strings", tuple(1 / k for k in range(1, 11)), .12, .3, 0.8, .25, vibrato=.12,
               chorus=.08),
    Instrument("flute", (1, .25, .1, .05), .05, .2, 0.85, .1, vibrato=.08, noise=.04),
    Instrument("clarinet", (1, .05, .55, .03, .35, .02, .2, .01, .1), .03, .2, .8, .08),
    Instrument("brass", (1, .85, .7, .55, .42, .32, .24, .18, .12), .06, .25, .75, .12,
               vibrato=.05),
    Instrument("square", (1, 0, .33, 0, .2, 0, .14, 0, .11), .005, .3, .6, .05),
    Instrument("bell", (1, .4, .25, .15), .002, 1.2, 0.0, .3, inharmonic=2e-3, octave=1),
    Instrument("pluck", (1, .7, .5, .35, .25, .18, .1), .002, .35, 0.0, .05),
    Instrument("pad", (1, .5, .25, .12), .35, .5, .9, .4, chorus=.15),
    Instrument("reed", (.6, 1, .8, .5, .4, .3, .2), .02, .2, .8, .06, vibrato=.06),
    Instrument("sine", (1, .1), .02, .4, .7, .1),
)
_BY_NAME = {i.name: i for i in PALETTE}


def instrument_set(seed: int, avoid: tuple[str, ...] = ()) -> dict[str, Any]:
    """Seeded instruments for melody, chords and bass (avoiding names in ``avoid``) and a kit."""
    rng = np.random.default_rng([seed, 104729])
    names = [i.name for i in PALETTE if i.name not in avoid]
    pick = rng.choice(len(names), size=3, replace=False)
    return {"melody": names[pick[0]], "chords": names[pick[1]], "bass": names[pick[2]],
            "kit": int(rng.integers(0, 3)), "mix": rng.uniform(0.7, 1.3, 4).tolist()}


def _tone(inst: Instrument, midi: float, dur: float, vel: float, rng: np.random.Generator
          ) -> np.ndarray:
    total = dur + inst.release
    n = max(1, int(total * SR))
    t = np.arange(n, dtype=np.float64) / SR
    f0 = 440.0 * 2 ** ((midi + 12 * inst.octave - 69) / 12)
    phase_mod = 0.0
    if inst.vibrato:
        vib = inst.vibrato * np.sin(2 * np.pi * 5.5 * t + rng.uniform(0, 6.28))
        inst_f = f0 * 2 ** (vib / 12)
        phase = 2 * np.pi * np.cumsum(inst_f) / SR
    else:
        phase = 2 * np.pi * f0 * t
    out = np.zeros(n)
    voices = [0.0] + ([inst.chorus] if inst.chorus else [])
    for det in voices:
        ratio = 2 ** (det / 12)
        for k, a in enumerate(inst.harmonics, start=1):
            if a == 0:
                continue
            kk = k * (1 + inst.inharmonic * k * k)
            if f0 * kk * ratio >= SR / 2 * 0.95:
                break
            out += a * np.sin(kk * ratio * phase + phase_mod + k)
    out /= len(voices)
    env = np.ones(n)
    a_n = max(1, int(inst.attack * SR))
    env[:a_n] = np.linspace(0, 1, a_n)
    dec = np.exp(-(t - inst.attack).clip(0) / max(inst.decay, 1e-3))
    env *= inst.sustain + (1 - inst.sustain) * dec
    rel_start = int(dur * SR)
    if rel_start < n:
        env[rel_start:] *= np.exp(-(t[rel_start:] - dur) / max(inst.release / 4, 1e-3))
    if inst.noise:
        out += inst.noise * rng.standard_normal(n) * 3
    return (out * env * vel).astype(np.float32)


def _drum(kind: int, kit: int, rng: np.random.Generator) -> np.ndarray:
    n = int(0.25 * SR)
    t = np.arange(n) / SR
    if kind == 0:
        f = (45 + 12 * kit) + (80 + 30 * kit) * np.exp(-t / 0.03)
        x = np.sin(2 * np.pi * np.cumsum(f) / SR) * np.exp(-t / (0.08 + 0.03 * kit))
    elif kind == 1:
        x = rng.standard_normal(n) * np.exp(-t / (0.05 + 0.03 * kit))
        x += 0.5 * np.sin(2 * np.pi * (180 + 40 * kit) * t) * np.exp(-t / 0.04)
    else:
        x = np.diff(rng.standard_normal(n + 1)) * np.exp(-t / (0.01 + 0.01 * kit))
        x *= 0.5
    return x.astype(np.float32)



def _add_at(y: np.ndarray, x: np.ndarray, t0_seconds: float) -> None:
    """Add ``x`` into ``y`` starting at ``t0_seconds`` (clipped at both ends), in place."""
    i0 = int(round(t0_seconds * SR))
    if i0 < 0:
        x = x[-i0:]
        i0 = 0
    m = min(x.shape[0], y.shape[0] - i0)
    if m > 0:
        y[i0:i0 + m] += x[:m]

def render(comp: Composition, instruments: dict[str, Any], transpose: int = 0,
           tempo: float = 1.0, seed: int = 0, start: float = 0.0,
           seconds: float | None = None) -> np.ndarray:
    """Render ``comp`` at 8 kHz, transposed and at ``tempo`` x its own tempo.

    ``start`` and ``seconds`` select a window of the *rendered* time line (so a window of
    ``seconds`` at tempo 1.15 covers ``1.15 * seconds`` of the original piece).
    """
    rng = np.random.default_rng([seed, 31337])
    spb = 60.0 / (comp.bpm * tempo)
    total = comp.n_beats * spb
    end = total if seconds is None else min(total, start + seconds)
    n = int(round((end - start) * SR))
    y = np.zeros(n + SR * 3, dtype=np.float32)
    parts = {0: _BY_NAME[instruments["melody"]], 1: _BY_NAME[instruments["chords"]],
             2: _BY_NAME[instruments["bass"]]}
    mix = instruments.get("mix", [1, 1, 1, 1])
    gains = {0: 0.9 * mix[0], 1: 0.35 * mix[1], 2: 0.55 * mix[2]}
    for onset, dur, midi, vel, part in comp.notes:
        t0 = onset * spb - start
        d = dur * spb
        if t0 + d + 1.0 < 0 or t0 >= end - start:
            continue
        x = _tone(parts[int(part)], midi + transpose, d, vel * gains[int(part)], rng)
        _add_at(y, x, t0)
    kit = int(instruments.get("kit", 0))
    for onset, kind, vel in comp.drums:
        t0 = onset * spb - start
        if t0 < -0.3 or t0 >= end - start:
            continue
        x = _drum(int(kind), kit, rng) * vel * 0.6 * mix[3]
        _add_at(y, x, t0)
    y = y[:n]
    peak = float(np.abs(y).max()) if y.size else 0.0
    if peak > 0:
        y *= 0.9 / peak
    return y


# --------------------------------------------------------------------------- the benchmark

CONDITIONS = ("instruments", "transposed", "tempo", "all", "melody")
QUERY_SECONDS = 20.0
PIECE_SECONDS = 75.0


def _catalogue_seed(seed: int, i: int) -> int:
    return 1_000_000 * (seed + 1) + i


def _negative_seed(seed: int, i: int) -> int:
    return 1_000_000 * (seed + 1) + 500_000 + i


def make_query(seed: int, piece: int, condition: str) -> dict[str, Any]:
    """One seeded query: audio (8 kHz, 20 s) and its ground truth."""
    rng = np.random.default_rng([seed, piece, CONDITIONS.index(condition), 4242])
    comp = compose(_catalogue_seed(seed, piece), PIECE_SECONDS)
    cat_inst = instrument_set(_catalogue_seed(seed, piece))
    inst, transpose, tempo = cat_inst, 0, 1.0
    if condition in ("instruments", "all", "melody"):
        inst = instrument_set(_catalogue_seed(seed, piece) + 17,
                              avoid=(cat_inst["melody"], cat_inst["chords"], cat_inst["bass"]))
    if condition in ("transposed", "all"):
        transpose = int(rng.choice([-3, -2, -1, 1, 2, 3]))
    if condition in ("tempo", "all"):
        tempo = float(rng.choice([0.85, 0.87, 0.9, 1.1, 1.13, 1.15]))
    if condition == "melody":
        comp = with_new_backing(comp, compose(_negative_seed(seed, 900_000 + piece), PIECE_SECONDS))
    total = comp.seconds / tempo
    start = float(rng.uniform(0, max(0.0, total - QUERY_SECONDS)))
    y = render(comp, inst, transpose, tempo, seed=piece, start=start, seconds=QUERY_SECONDS)
    return {"y": y, "piece": piece, "condition": condition, "transpose": transpose,
            "tempo": tempo, "reference_start": start * tempo}


def _render_catalogue(args: tuple[int, int]) -> np.ndarray:
    seed, i = args
    s = _catalogue_seed(seed, i)
    return render(compose(s, PIECE_SECONDS), instrument_set(s), seed=i)


def _render_negative(args: tuple[int, int]) -> np.ndarray:
    seed, i = args
    s = _negative_seed(seed, i)
    rng = np.random.default_rng([s, 5])
    comp = compose(s, 40.0)
    y = render(comp, instrument_set(s + 3), int(rng.integers(-3, 4)), float(rng.uniform(0.85, 1.15)),
               seed=i, seconds=QUERY_SECONDS)
    return y


def _make_query_job(args: tuple[int, int, str]) -> dict[str, Any]:
    return make_query(*args)


def _real_excerpts(folder: str, per_track: int, seed: int) -> list[tuple[str, float, np.ndarray]]:
    from earmark.errors import AudioError
    from earmark.fingerprint.audio import audio_duration, load_audio
    out = []
    files = sorted(str(p) for p in Path(folder).rglob("*") if p.is_file()
                   and p.suffix.lower() in (".ogg", ".opus", ".mp3", ".flac", ".wav", ".m4a"))
    rng = np.random.default_rng([seed, 77])
    for f in files:
        try:
            dur = audio_duration(f)
            for _ in range(per_track):
                off = float(rng.uniform(0, max(0.0, dur - QUERY_SECONDS)))
                out.append((f, off, load_audio(f, SR, max_seconds=QUERY_SECONDS, offset_seconds=off)))
        except AudioError:
            continue
    return out


def _load_real_catalogue(folder: str) -> list[tuple[str, np.ndarray]]:
    from earmark.errors import AudioError
    from earmark.fingerprint.audio import load_audio
    out = []
    for p in sorted(Path(folder).rglob("*")):
        if p.suffix.lower() in (".ogg", ".opus", ".mp3", ".flac", ".wav", ".m4a"):
            try:
                out.append((str(p), load_audio(p, SR)))
            except AudioError:
                continue
    return out


def query_vectors_per_view(config=None) -> list[int]:
    """FAISS query vectors a fully textured 20 s query sends to each view searched, built
    by the matcher's own code (:func:`earmark.index.derivation._queries`) from frames whose
    every patch is valid in both views (a query with silent or static stretches sends
    fewer): patches at every tempo ratio x the candidate key rotations."""
    from earmark.fingerprint import chroma
    from earmark.index import derivation as drv
    cfg = config or drv.DerivationConfig()
    rng = np.random.default_rng(0)
    n_frames = int(round(QUERY_SECONDS / chroma.FRAME_SECONDS))
    frames = np.zeros((n_frames, 12), np.float32)
    frames[np.arange(n_frames), rng.integers(0, 12, n_frames)] = 1.0
    return [q.vectors.shape[0]
            for q in drv._queries(None, SR, cfg, None, frames={v: frames for v in cfg.views()})]


def scale_search_bench(n_tracks: int = 100_000, seconds_per_track: float = 240.0,
                       n_queries: int = 5, seed: int = 0, max_vectors: int | None = None,
                       n_views: int | None = None, config=None) -> dict[str, Any]:
    """Search latency of the IVF-PQ tier at catalogue scale, with random unit vectors.

    One query searches every view (``n_views``, default both) with the query vectors the
    matcher builds for a fully textured 20 s query (:func:`query_vectors_per_view`: 5
    tempi x 8 patches x ``config.key_rotations`` candidate key rotations, ~114 a view),
    asking FAISS for as many candidates as :meth:`DerivationStore.search` does, which are
    then re-scored exactly from float16 vectors (rotated to their canonical key).

    The full index (``n_full`` vectors in ``nlist`` lists) is simulated in two parts:

    * the coarse quantiser: HNSW over ``nlist`` centroids, full size, timed alone;
    * the list scan: an index of ``max_vectors`` vectors in proportionally fewer lists,
      so its lists are as long as the full index's (``n_full / nlist`` vectors); a query
      visits ``nprobe`` of them, exactly as many codes as at full size.  Its own (smaller)
      quantiser is timed and subtracted.  Nothing is extrapolated.

    The exact re-scoring gathers a fixed number of rows per query (timed on a 1 M-row
    float16 stand-in).  k-means runs 5 iterations on 10 points a list: the vectors are
    random, so clustering quality does not matter, only the list sizes, which are
    balanced either way.
    """
    import faiss
    from earmark.fingerprint import chroma
    from earmark.index import derivation as drv
    cfg = config or drv.DerivationConfig()
    per_view = query_vectors_per_view(cfg)
    if n_views is not None:
        per_view = (per_view * int(n_views))[: int(n_views)]
    n_views = len(per_view)
    n_full = int(n_tracks * seconds_per_track / chroma.INDEX_HOP_SECONDS)
    n = n_full if max_vectors is None else min(n_full, max_vectors)
    nlist = drv._ivf_nlist(n_full)
    nprobe = drv.NPROBE
    nlist_sim = min(nlist, max(nprobe, int(round(nlist * n / n_full))))
    n = min(n_full, int(round(n_full / nlist * nlist_sim)))
    rng = np.random.default_rng(seed)
    d = chroma.DIM

    def unit(m: int) -> np.ndarray:
        x = rng.standard_normal((m, d)).astype(np.float32)
        return x / np.linalg.norm(x, axis=1, keepdims=True)

    t0 = time.perf_counter()
    full_quantiser = faiss.IndexHNSWFlat(d, 32, faiss.METRIC_INNER_PRODUCT)
    full_quantiser.add(unit(nlist))
    index = drv._new_ivfpq(d, nlist_sim)
    index.cp.niter = 5
    index.train(unit(min(n, 10 * nlist_sim)))
    step = 500_000
    for i in range(0, n, step):
        index.add(unit(min(step, n - i)))
    build = time.perf_counter() - t0
    index.nprobe = nprobe
    k_c = max(drv.RERANK_FACTOR * cfg.k_neighbours, drv.RERANK_MIN)
    qv = [[unit(m) for m in per_view] for _ in range(n_queries)]
    # float16 vectors and rotations the candidates are re-scored from (a 1 M-row stand-in:
    # the cost is per row gathered)
    n_f16 = min(n, 1_000_000)
    f16 = rng.standard_normal((n_f16, d)).astype(np.float16)
    rot16 = rng.integers(0, 12, n_f16).astype(np.int8)
    sim_quantiser = faiss.downcast_index(index.quantizer)
    index.search(qv[0][0], k_c)
    full_q, sim_q, total, rescore = [], [], [], []
    for q in qv:
        t = time.perf_counter()
        for v in q:
            full_quantiser.search(v, nprobe)
        full_q.append(time.perf_counter() - t)
        t = time.perf_counter()
        for v in q:
            sim_quantiser.search(v, nprobe)
        sim_q.append(time.perf_counter() - t)
        t = time.perf_counter()
        ids = [index.search(v, k_c)[1] for v in q]
        total.append(time.perf_counter() - t)
        t = time.perf_counter()
        for v, idx in zip(q, ids):
            rows = np.where(idx >= 0, idx, 0) % n_f16
            flat = rows.ravel()
            cand = chroma.rotate(f16[flat], rot16[flat]).reshape(rows.shape[0], rows.shape[1], -1)
            np.einsum("qkd,qd->qk", cand, v)
        rescore.append(time.perf_counter() - t)
    med = lambda x: 1000 * float(np.median(x))   # noqa: E731
    scan = max(0.0, med(total) - min(med(sim_q), med(total)))
    return {"n_tracks": n_tracks, "vectors_full": n_full, "vectors_simulated": n,
            "nlist": nlist, "nlist_simulated": nlist_sim, "list_size": round(n_full / nlist),
            "nprobe": nprobe, "views": n_views, "index": type(index).__name__,
            "query_vectors": int(sum(per_view)), "candidates_per_vector": int(k_c),
            "build_seconds": round(build, 1), "quantiser_ms": round(med(full_q), 1),
            "scan_ms": round(scan, 1), "rescore_ms": round(med(rescore), 1),
            "search_ms": round(med(full_q) + scan + med(rescore), 1),
            "threads": faiss.omp_get_max_threads()}


def run_derivation_bench(out_dir: str | os.PathLike, seed: int = 0, n_pieces: int = 60,
                         quick: bool = False, other_dir: str | None = None,
                         real_catalogue_dir: str | None = None,
                         jobs: int = 2, real_per_track: int = 6, scale: bool = False,
                         config=None, progress=None) -> dict[str, Any]:
    """Run the composition-level benchmark and write ``results.json`` + ``results.md``.

    Parameters
    ----------
    out_dir : folder for the derivation index and the results.
    seed : everything is determined by it.
    n_pieces : catalogue pieces (one query per piece and condition; twice as many
        synthetic negatives).
    quick : 12 pieces, 2 real excerpts per track, no real catalogue.
    other_dir : real non-catalogue music (skipped when missing or None).
    real_catalogue_dir : real music added to the catalogue, so real negatives are searched
        against real music too (skipped when missing or None).
    jobs : processes for rendering.
    scale : also run :func:`scale_search_bench` (minutes).
    config : :class:`earmark.index.derivation.DerivationConfig` (default thresholds).
    """
    import multiprocessing
    from earmark.fingerprint import chroma
    from earmark.index import derivation as drv

    say = progress or (lambda msg: None)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    if quick:
        n_pieces, real_per_track, real_catalogue_dir = min(n_pieces, 12), 2, None
    cfg = config or drv.DerivationConfig()
    t_all = time.perf_counter()
    ctx = multiprocessing.get_context("fork")
    with ctx.Pool(max(1, jobs)) as pool:
        say("rendering catalogue")
        cat_audio = pool.map(_render_catalogue, [(seed, i) for i in range(n_pieces)])
        say("rendering queries")
        jobs_q = [(seed, i, c) for c in CONDITIONS for i in range(n_pieces)]
        queries = pool.map(_make_query_job, jobs_q, chunksize=4)
        negatives = pool.map(_render_negative, [(seed, i) for i in range(2 * n_pieces)], chunksize=4)
    # index
    say("embedding catalogue")
    t0 = time.perf_counter()
    embs = [chroma.embed_audio(y, SR) for y in cat_audio]
    embed_s = time.perf_counter() - t0
    cat_seconds = sum(y.shape[0] / SR for y in cat_audio)
    track_ids = list(range(n_pieces))
    real_cat: list[tuple[str, np.ndarray]] = []
    if real_catalogue_dir and Path(real_catalogue_dir).is_dir():
        say("decoding real catalogue")
        real_cat = _load_real_catalogue(real_catalogue_dir)
        t0 = time.perf_counter()
        for k, (_, y) in enumerate(real_cat):
            embs.append(chroma.embed_audio(y, SR))
            track_ids.append(100_000 + k)
        embed_s += time.perf_counter() - t0
        cat_seconds += sum(y.shape[0] / SR for _, y in real_cat)
    arrays = drv.build_segment(track_ids, embs)
    idx_dir = out / "index"
    idx_dir.mkdir(exist_ok=True)
    nbytes = drv.write_segment(idx_dir, "seg-000001.drv", arrays)
    store = drv.DerivationStore.open(idx_dir, ["seg-000001.drv"])
    mb_per_hour = nbytes / 1e6 / (cat_seconds / 3600)

    def run(y: np.ndarray) -> tuple[list, float]:
        t = time.perf_counter()
        ms = drv._candidates(store, y, SR, None, cfg, None, per_track=False)
        return ms, time.perf_counter() - t

    def flagged(cands: list) -> list:
        return [c.match for c in cands if drv.is_flag(c, cfg)]

    def by_view(cands: list) -> dict[str, dict[str, float]]:
        """Per view, for calibration: the strongest candidate's significance and contrast,
        and each rule's margin with the other rules passed (the contrast of candidates
        that are significant enough, the significance of those contrasted enough)."""
        out = {}
        for v in cfg.views():
            cv = [c for c in cands if c.view == v]
            _, min_contrast, _ = cfg.view_thresholds(v)
            sig_ok = [c for c in cv if c.match.significance >= cfg.min_significance
                      and c.match.score >= cfg.min_votes]
            con_ok = [c for c in cv if c.contrast >= min_contrast and c.match.score >= cfg.min_votes]
            out[v] = {"max_significance": max((c.match.significance for c in cv), default=0.0),
                      "max_contrast": round(max((c.contrast for c in cv), default=0.0), 3),
                      "max_score": max((c.match.score for c in cv), default=0),
                      "max_contrast_if_significant": round(max((c.contrast for c in sig_ok),
                                                               default=0.0), 3),
                      "max_significance_if_contrasted": max((c.match.significance for c in con_ok),
                                                            default=0.0)}
        return out

    def calibration(rows: list[dict[str, dict[str, float]]]) -> dict[str, dict[str, float]]:
        return {v: {k: max((r[v][k] for r in rows), default=0.0)
                    for k in ("max_significance", "max_contrast_if_significant",
                              "max_significance_if_contrasted")} for v in cfg.views()}

    rows: dict[str, dict[str, Any]] = {}
    latencies: list[float] = []
    per_query: list[dict[str, Any]] = []
    say("matching")
    for q in queries:
        cands, el = run(q["y"])
        ms = [c.match for c in cands]
        latencies.append(el)
        fl = flagged(cands)
        flag_view = next((c.view for c in cands if drv.is_flag(c, cfg)
                          and c.match.reference.track_id == q["piece"]), None)
        right = [m for m in fl if m.reference.track_id == q["piece"]]
        wrong = [m for m in fl if m.reference.track_id != q["piece"]]
        best_right = next((m for m in ms if m.reference.track_id == q["piece"]), None)
        key_ok = bool(right) and int(right[0].pitch_semitones) == q["transpose"]
        tempo_err = abs(right[0].speed / q["tempo"] - 1) if right else None
        views = {c.view: {"significance": c.match.significance, "contrast": round(c.contrast, 3),
                          "score": c.match.score, "key": c.match.pitch_semitones}
                 for c in cands if c.match.reference.track_id == q["piece"]}
        per_query.append({"condition": q["condition"], "piece": q["piece"], "views": views,
                          "transpose": q["transpose"], "tempo": q["tempo"],
                          "flagged": bool(right), "view": flag_view,
                          "key_ok": key_ok, "tempo_err": tempo_err,
                          "significance": best_right.significance if best_right else 0.0,
                          "score": best_right.score if best_right else 0,
                          "wrong_flags": len(wrong),
                          "max_wrong_significance": max((m.significance for m in ms
                                                         if m.reference.track_id != q["piece"]),
                                                        default=0.0),
                          "latency": el})
    for c in CONDITIONS:
        pq = [p for p in per_query if p["condition"] == c]
        fl = [p for p in pq if p["flagged"]]
        rows[c] = {"queries": len(pq), "flagged_right": len(fl) / len(pq),
                   "key_correct": (sum(p["key_ok"] for p in fl) / len(fl)) if fl else None,
                   "tempo_within_3pct": (sum(p["tempo_err"] <= 0.03 for p in fl) / len(fl)) if fl else None,
                   "wrong_piece_flag_rate": sum(p["wrong_flags"] > 0 for p in pq) / len(pq)}
    neg_sig = []
    neg_flags = 0
    neg_rows = []
    for y in negatives:
        cands, el = run(y)
        latencies.append(el)
        neg_sig.append(max((c.match.significance for c in cands), default=0.0))
        neg_flags += bool(flagged(cands))
        neg_rows.append(by_view(cands))
    real_rows = []
    real_flags = 0
    if other_dir and Path(other_dir).is_dir():
        say("real negatives")
        for f, off, y in _real_excerpts(other_dir, real_per_track, seed):
            if y.shape[0] < 10 * SR:
                continue
            cands, el = run(y)
            latencies.append(el)
            fl = flagged(cands)
            real_flags += bool(fl)
            real_rows.append({"file": f, "offset": round(off, 1),
                              "max_significance": max((c.match.significance for c in cands),
                                                      default=0.0),
                              "max_contrast": max((c.contrast for c in cands), default=0.0),
                              "views": by_view(cands),
                              "flagged": [m.reference.track_id for m in fl]})
    n_wrong = sum(p["wrong_flags"] > 0 for p in per_query)
    lat = np.array(latencies)
    res: dict[str, Any] = {
        "seed": seed, "n_pieces": n_pieces, "query_seconds": QUERY_SECONDS,
        "config": {k: (list(v) if isinstance(v, tuple) else v)
                   for k, v in cfg.__dict__.items()},
        "conditions": rows,
        "wrong_piece_flag_rate": n_wrong / max(1, len(per_query)),
        "negatives": {"queries": len(negatives), "flag_rate": neg_flags / max(1, len(negatives)),
                      "max_significance": float(max(neg_sig, default=0.0)),
                      "p99_significance": float(np.percentile(neg_sig, 99)) if neg_sig else 0.0},
        "real_negatives": {"queries": len(real_rows), "flags": real_flags,
                           "max_significance": float(max((r["max_significance"] for r in real_rows), default=0.0)),
                           "source": str(other_dir) if other_dir else None},
        "real_catalogue_tracks": len(real_cat),
        "calibration": {"synthetic_negatives": calibration(neg_rows),
                        "real_negatives": calibration([r["views"] for r in real_rows])},
        "positives_significance_p10": {c: float(np.percentile([p["significance"] for p in per_query
                                                               if p["condition"] == c], 10))
                                       for c in CONDITIONS},
        "max_wrong_significance": float(max((p["max_wrong_significance"] for p in per_query), default=0.0)),
        "latency_s": {"mean": float(lat.mean()), "p95": float(np.percentile(lat, 95)),
                      "max": float(lat.max())},
        "index": {"vectors": arrays.n_vectors, "bytes": nbytes,
                  "catalogue_hours": cat_seconds / 3600, "mb_per_catalogue_hour": mb_per_hour},
        "embed_x_realtime": embed_s / cat_seconds,
        "elapsed_s": time.perf_counter() - t_all,
    }
    if scale:
        say("scale")
        res["scale"] = scale_search_bench(max_vectors=4_000_000)
    (out / "results.json").write_text(json.dumps(res, indent=1))
    (out / "queries.json").write_text(json.dumps({"positives": per_query, "real": real_rows,
                                                  "negatives": neg_rows}, indent=1))
    (out / "results.md").write_text(results_markdown(res))
    return res


def results_markdown(res: dict[str, Any]) -> str:
    """README-ready table of a :func:`run_derivation_bench` result."""
    def pct(x):
        return "-" if x is None else f"{100 * x:.1f} %"
    lines = [f"Derivation bench: {res['n_pieces']} catalogue pieces"
             f" (+{res['real_catalogue_tracks']} real tracks), {res['query_seconds']:.0f} s queries,"
             f" min_significance {res['config']['min_significance']}", "",
             "| condition | queries | right piece flagged | key correct | tempo within 3 % | wrong piece flagged |",
             "|---|---|---|---|---|---|"]
    for c, r in res["conditions"].items():
        lines.append(f"| {c} | {r['queries']} | {pct(r['flagged_right'])} | {pct(r['key_correct'])}"
                     f" | {pct(r['tempo_within_3pct'])} | {pct(r['wrong_piece_flag_rate'])} |")
    neg, real = res["negatives"], res["real_negatives"]
    lines += ["", "| measure | value |", "|---|---|",
              f"| wrong piece flagged (all positives) | {pct(res['wrong_piece_flag_rate'])} |",
              f"| non-catalogue compositions flagged | {pct(neg['flag_rate'])} of {neg['queries']}"
              f" (max significance {neg['max_significance']:.2f}) |",
              f"| real non-catalogue music flagged | {real['flags']} of {real['queries']}"
              f" (max significance {real['max_significance']:.2f}) |",
              f"| latency per 20 s query (mean / p95) | {res['latency_s']['mean']:.3f} s /"
              f" {res['latency_s']['p95']:.3f} s |",
              f"| index size | {res['index']['mb_per_catalogue_hour']:.2f} MB per catalogue hour |",
              f"| embedding time | {100 * res['embed_x_realtime']:.2f} % of real time |"]
    for name, cal in res.get("calibration", {}).items():
        for v, c in cal.items():
            lines.append(f"| {name.replace('_', ' ')}, {v} view: max significance / contrast of"
                         f" significant / significance of contrasted | {c['max_significance']:.2f}"
                         f" / {c['max_contrast_if_significant']:.3f}"
                         f" / {c['max_significance_if_contrasted']:.2f} |")
    if "scale" in res:
        s = res["scale"]
        lines.append(f"| search at {s['n_tracks']} tracks ({s['vectors_full']} vectors a view,"
                     f" {s.get('index', 'IVF-PQ')} nlist {s['nlist']}, nprobe {s['nprobe']},"
                     f" {s.get('views', 1)} views, {s.get('query_vectors', '-')} query vectors)"
                     f" | {s['search_ms']} ms per query: quantiser {s['quantiser_ms']} ms, list"
                     f" scan {s['scan_ms']} ms, exact re-scoring {s['rescore_ms']} ms"
                     f" (lists of {s['list_size']} vectors, {s['vectors_simulated']} simulated) |")
    return "\n".join(lines) + "\n"
