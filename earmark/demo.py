"""``fp demo``: the whole job on synthetic material, in a few seconds.

Synthesises a small catalogue (with the metadata of ``data/demo_tracks.csv``), indexes it, then
matches transformed excerpts: clean, sped up with noise, pitch-shifted, embedded in other
music, and an unrelated piece that must match nothing.
"""

from __future__ import annotations

import csv
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path

import numpy as np
import soundfile as sf
import soxr

from earmark.synth import synth_song

SR = 22050
N_TRACKS = 6
SECONDS = 40.0

#: Demo catalogue metadata (also in ``data/demo_tracks.csv``, the example metadata CSV).
DEMO_METADATA = [
    ("track01.wav", "Harbour Lights", "The Synthetic Quartet", "XX-EMK-26-00001", "Earmark Demo Records"),
    ("track02.wav", "Paper Moon Rising", "The Synthetic Quartet", "XX-EMK-26-00002", "Earmark Demo Records"),
    ("track03.wav", "Seeded Rain", "Nora Numpy", "XX-EMK-26-00003", "Open Tone Music"),
    ("track04.wav", "Clickwork", "Nora Numpy", "XX-EMK-26-00004", "Open Tone Music"),
    ("track05.wav", "Chord Atlas", "Scipy & the Filters", "XX-EMK-26-00005", "Earmark Demo Records"),
    ("track06.wav", "Last Landmark", "Scipy & the Filters", "XX-EMK-26-00006", "Open Tone Music"),
]


def _speed(y: np.ndarray, factor: float) -> np.ndarray:
    """Play ``factor`` x faster (tempo and pitch together), by resampling."""
    return soxr.resample(y, SR * factor, SR).astype(np.float32)


def _noise(y: np.ndarray, snr_db: float, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    n = rng.standard_normal(y.shape[0]).astype(np.float32)
    n *= np.sqrt(np.mean(y ** 2) / np.mean(n ** 2) / 10 ** (snr_db / 10))
    return y + n


def run_demo(workdir: Path | None, echo: Callable[[str], None] = print,
             show: Callable | None = None) -> int:
    """Run the demo; returns 0 when every expectation held, else 1."""
    import librosa

    from earmark.index.catalogue import Index

    tmp = None
    if workdir is None:
        tmp = tempfile.mkdtemp(prefix="earmark-demo-")
        workdir = Path(tmp)
    try:
        cat = workdir / "catalogue"
        cat.mkdir(parents=True, exist_ok=True)
        songs = {}
        for i, (name, *_rest) in enumerate(DEMO_METADATA):
            songs[name] = synth_song(seed=100 + i, seconds=SECONDS, sr=SR)
            sf.write(cat / name, songs[name], SR)
        meta_csv = workdir / "tracks.csv"
        with open(meta_csv, "w", newline="", encoding="utf-8") as f:
            w = csv.writer(f)
            w.writerow(["path", "title", "artist", "isrc", "rights_holder"])
            for row in DEMO_METADATA:
                w.writerow([f"catalogue/{row[0]}", *row[1:]])
        echo(f"1. synthesised {len(songs)} catalogue recordings in {cat}")
        index_dir = workdir / "index"
        with Index.open_writer(index_dir) as idx:
            report = idx.add([cat], jobs=1, metadata_csv=meta_csv)
        echo(f"2. indexed them into {index_dir} ({report.audio_seconds:.0f} s of audio, "
             f"{report.elapsed:.1f} s)")
        idx = Index.open(index_dir)

        a, b, c = songs["track02.wav"], songs["track04.wav"], songs["track05.wav"]
        other = synth_song(seed=999, seconds=20.0, sr=SR)
        embedded = 0.5 * other.copy()
        embedded[int(8 * SR):int(13 * SR)] += a[int(20 * SR):int(25 * SR)]
        cases = [
            ("clean 8 s excerpt of 'Paper Moon Rising' from 12 s", a[12 * SR:20 * SR], "track02.wav"),
            ("'Clickwork' sped up 1.15x with noise at 5 dB SNR", _noise(_speed(b[5 * SR:17 * SR], 1.15), 5, 1), "track04.wav"),
            ("'Chord Atlas' pitch-shifted +2 semitones (tempo kept)",
             librosa.effects.pitch_shift(c[10 * SR:20 * SR], sr=SR, n_steps=2).astype(np.float32), "track05.wav"),
            ("5 s of 'Paper Moon Rising' inside 20 s of other music, at 8 s", embedded, "track02.wav"),
            ("an unrelated piece", other, None),
        ]
        ok = True
        echo("3. matching:")
        for k, (label, y, expected) in enumerate(cases, 1):
            res = idx.match_audio(y, SR, label=f"query {k}: {label}")
            top = res.matches[0].reference.path.rsplit("/", 1)[-1] if res.matches else None
            good = top == expected
            ok &= good
            if show is not None:
                show(res)
            else:
                echo(res.to_json())
            echo(f"   -> {'as expected' if good else 'UNEXPECTED'}"
                 f"{'' if expected else ' (no match is the right answer)'}\n")
        echo("demo finished: all results as expected" if ok else "demo: some results were unexpected")
        return 0 if ok else 1
    finally:
        if tmp is not None:
            shutil.rmtree(tmp, ignore_errors=True)
