"""Shared fixtures: a seeded synthetic catalogue and its index, built once per test session.

The catalogue is eight pieces from :func:`earmark.synth.synth_song` (distinct seeds,
30-40 s at 22.05 kHz): six WAV, one FLAC and one OGG/Vorbis, so indexing goes through
every soundfile path.  Tests that only read use the session index (``index``); tests
that change an index work on a private copy (``index_copy``).  Every expected answer
comes from how the audio was made: which piece, which offset, which transform.
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from earmark.index.catalogue import Index, IndexReport
from earmark.synth import synth_noise, synth_song

#: Sample rate of the synthetic catalogue files (the engine resamples to its own rate).
SR = 22050

#: (file name, synth seed, seconds).  Seeds are distinct from every non-catalogue seed.
TRACKS: tuple[tuple[str, int, float], ...] = (
    ("track01.wav", 1101, 30.0),
    ("track02.wav", 1102, 32.0),
    ("track03.wav", 1103, 34.0),
    ("track04.wav", 1104, 36.0),
    ("track05.wav", 1105, 38.0),
    ("track06.wav", 1106, 40.0),
    ("track07.flac", 1107, 31.0),
    ("track08.ogg", 1108, 35.0),
)

#: Seeds of synthetic music that is *not* in the catalogue.
NON_CATALOGUE_SEEDS: tuple[int, ...] = (9001, 9002, 9003, 9004, 9005)


def write_audio(path: Path, y: np.ndarray, sr: int = SR) -> Path:
    """Write mono float audio; the format follows the suffix (WAV, FLAC, OGG/Vorbis, MP3)."""
    ext = path.suffix.lower()
    if ext == ".ogg":
        sf.write(path, y, sr, format="OGG", subtype="VORBIS")
    elif ext == ".mp3":
        # Constant 64 kbit/s (soundfile's compression level 0.6 at 22.05 kHz).
        sf.write(path, y, sr, format="MP3", subtype="MPEG_LAYER_III",
                 bitrate_mode="CONSTANT", compression_level=0.6)
    else:
        sf.write(path, y, sr)
    return path


def cut(y: np.ndarray, start: float, seconds: float, sr: int = SR) -> tuple[np.ndarray, float]:
    """``seconds`` of ``y`` from ``start``; returns the samples and the exact start used."""
    a = int(round(start * sr))
    b = a + int(round(seconds * sr))
    assert b <= y.shape[0], "excerpt runs past the end of the piece"
    return y[a:b].copy(), a / sr


def add_noise(y: np.ndarray, snr_db: float, seed: int) -> np.ndarray:
    """``y`` plus seeded white noise at ``snr_db`` dB signal-to-noise ratio."""
    rng = np.random.default_rng(seed)
    n = rng.standard_normal(y.shape[0]).astype(np.float32)
    n *= np.sqrt(np.mean(y.astype(np.float64) ** 2) / np.mean(n.astype(np.float64) ** 2)
                 / 10 ** (snr_db / 10))
    return (y + n).astype(np.float32)


@dataclass
class Catalogue:
    """The synthetic catalogue on disk plus the samples it was written from."""

    folder: Path
    sr: int
    songs: dict[str, np.ndarray]
    seeds: dict[str, int]
    _others: dict[tuple[int, float], np.ndarray] = field(default_factory=dict)

    @property
    def names(self) -> list[str]:
        return [name for name, _seed, _s in TRACKS]

    def path(self, name: str) -> Path:
        return self.folder / name

    def duration(self, name: str) -> float:
        return self.songs[name].shape[0] / self.sr

    def excerpt(self, name: str, start: float, seconds: float) -> tuple[np.ndarray, float]:
        """A clean excerpt of a catalogue piece and its exact start (seconds)."""
        return cut(self.songs[name], start, seconds, self.sr)

    def other_song(self, seed: int, seconds: float) -> np.ndarray:
        """Non-catalogue synthetic music (cached per session)."""
        assert seed not in self.seeds.values()
        key = (seed, seconds)
        if key not in self._others:
            self._others[key] = synth_song(seed=seed, seconds=seconds, sr=self.sr)
        return self._others[key]

    def noise(self, seed: int, seconds: float, colour: str = "white") -> np.ndarray:
        return synth_noise(seed, seconds, self.sr, colour)


@pytest.fixture(scope="session")
def catalogue(tmp_path_factory) -> Catalogue:
    folder = tmp_path_factory.mktemp("catalogue")
    songs, seeds = {}, {}
    for name, seed, seconds in TRACKS:
        songs[name] = synth_song(seed=seed, seconds=seconds, sr=SR)
        seeds[name] = seed
        write_audio(folder / name, songs[name])
    return Catalogue(folder=folder, sr=SR, songs=songs, seeds=seeds)


@dataclass
class BuiltIndex:
    path: Path
    report: IndexReport


@pytest.fixture(scope="session")
def built_index(catalogue, tmp_path_factory) -> BuiltIndex:
    """The catalogue indexed once, with the library API (one process)."""
    path = tmp_path_factory.mktemp("index") / "catalogue.fpindex"
    with Index.open_writer(path) as idx:
        report = idx.add([catalogue.folder], jobs=1)
    return BuiltIndex(path=path, report=report)


@pytest.fixture(scope="session")
def index(built_index) -> Index:
    """The session index, opened read-only (never modified by any test)."""
    return Index.open(built_index.path)


@pytest.fixture
def index_copy(built_index, tmp_path) -> Path:
    """A private, writable copy of the session index folder."""
    dst = tmp_path / "copy.fpindex"
    shutil.copytree(built_index.path, dst, ignore=shutil.ignore_patterns("lock"))
    return dst


def track_of(item) -> str:
    """File name of a :class:`Match`'s reference, or of a :class:`Reference`."""
    ref = getattr(item, "reference", item)
    return Path(ref.path).name


def alignment_offset(match) -> float:
    """Reference time aligned with query time 0: ``reference_start - speed * query_start``."""
    return match.reference_start - match.speed * match.query_start
