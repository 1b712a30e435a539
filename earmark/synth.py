"""Seeded synthetic music for the demo and the tests: chords, melody, bass and drums.

Every piece is determined by its seed, so tests get known answers anywhere without
shipping audio.

>>> y = synth_song(seed=1, seconds=4.0, sr=8000)
>>> y.shape, y.dtype
((32000,), dtype('float32'))
>>> bool(abs(y).max() <= 1.0)
True
"""

from __future__ import annotations

import numpy as np

#: Scales (semitones above the tonic); each piece picks one.
_SCALES = (np.array([0, 2, 4, 5, 7, 9, 11]), np.array([0, 2, 3, 5, 7, 8, 10]),
           np.array([0, 2, 3, 5, 7, 9, 10]), np.array([0, 1, 3, 5, 7, 8, 10]))


def _note(freq_hz: float, n_samples: int, sr: int, n_harmonics: int, decay_s: float,
          brightness: float, profile: np.ndarray | None = None) -> np.ndarray:
    """A plucked/struck tone: harmonics with 1/k^brightness amplitudes (times an optional
    per-instrument ``profile``) and exponential decay."""
    t = np.arange(n_samples) / sr
    k = np.arange(1, n_harmonics + 1)[:, None]
    keep = (k[:, 0] * freq_hz) < sr / 2 * 0.95
    amp = 1.0 / k[keep] ** brightness
    if profile is not None:
        amp = amp * profile[: n_harmonics][keep[: profile.shape[0]]][:, None] if profile.shape[0] >= n_harmonics else amp
    partials = np.sin(2 * np.pi * freq_hz * k[keep] * t) * amp
    env = np.exp(-t / decay_s) * np.minimum(1.0, t / 0.005)
    return (partials.sum(axis=0) * env).astype(np.float32)


def _add(y: np.ndarray, x: np.ndarray, start: int, gain: float) -> None:
    end = min(y.shape[0], start + x.shape[0])
    if end > start:
        y[start:end] += gain * x[: end - start]


def synth_song(seed: int, seconds: float = 30.0, sr: int = 22050,
               drums: bool = True) -> np.ndarray:
    """A short seeded piece of music (mono float32, peak 0.9).

    Parameters
    ----------
    seed : int
        Determines tempo, key, progression, melody and drum pattern.
    seconds : float
        Length.
    sr : int
        Sample rate, Hz.
    drums : bool
        ``False``: the same piece without its drums (a stem separator's "no drums"
        output): the tonal parts are sample for sample those of the full mix, before
        the peak normalisation.
    """
    rng = np.random.default_rng(seed)
    n = int(round(seconds * sr))
    y = np.zeros(n, dtype=np.float32)
    bpm = rng.uniform(84, 150)
    beat = int(sr * 60 / bpm)
    tonic = 48 + int(rng.integers(0, 12))  # MIDI note of the key's C3..B3 tonic
    progression = rng.choice(7, size=4, replace=True)
    brightness = rng.uniform(0.8, 1.6)
    melody_decay = rng.uniform(0.15, 0.5)
    _MAJOR = _SCALES[int(rng.integers(0, len(_SCALES)))]
    # Per-piece timbres: random harmonic profiles, drum tunings and groove.
    lead_profile = rng.uniform(0.2, 1.0, 8)
    pad_profile = rng.uniform(0.2, 1.0, 6)
    kick_hz = rng.uniform(40, 70)
    snare_decay = rng.uniform(0.02, 0.08)
    swing = rng.uniform(0.0, 0.15)
    melody_rate = int(rng.integers(2, 4))  # notes per beat
    # A performance, not a grid: each piece has its own tuning (A4 = 440 Hz +- 40 cents)
    # and each note its own timing (+- 12 ms) and level, as recordings do.
    tuning_cents = rng.uniform(-40, 40)
    jitter = int(0.012 * sr)

    def at(sample: int) -> int:
        return max(0, sample + int(rng.integers(-jitter, jitter + 1)))

    def hz(midi: float) -> float:
        return 440.0 * 2 ** ((midi - 69 + tuning_cents / 100) / 12)

    n_beats = n // beat + 1
    drum_gain = 1.0 if drums else 0.0
    for b in range(n_beats):
        start = b * beat
        degree = int(progression[(b // 4) % 4])
        if b % 2 == 0:  # chord every two beats
            for third in (0, 2, 4):
                d = degree + third
                midi = tonic + 12 + _MAJOR[d % 7] + 12 * (d // 7)
                _add(y, _note(hz(midi), 2 * beat, sr, 6, 0.6, brightness + 0.4, pad_profile),
                     at(start), 0.12 * rng.uniform(0.7, 1.0))
            _add(y, _note(hz(tonic - 12 + _MAJOR[degree]), beat, sr, 4, 0.3, 1.0), at(start), 0.3)
        for sub in range(melody_rate):  # melody, with rests and swing
            if rng.random() < 0.25:
                continue
            d = degree + int(rng.integers(0, 8))
            midi = tonic + 24 + _MAJOR[d % 7] + 12 * (d // 7)
            offset = int(sub * beat / melody_rate + (swing * beat if sub % 2 else 0))
            _add(y, _note(hz(midi), beat, sr, 8, melody_decay, brightness, lead_profile),
                 at(start + offset), 0.22 * rng.uniform(0.6, 1.0))
        # drums: kick on 1 and 3, snare on 2 and 4, hats every eighth (drawn whether or
        # not they are kept, so the tonal parts do not depend on ``drums``)
        t = np.arange(int(0.12 * sr)) / sr
        if b % 2 == 0:
            kick = np.sin(2 * np.pi * (kick_hz + 90 * np.exp(-t / 0.03)) * t) * np.exp(-t / 0.05)
            _add(y, kick.astype(np.float32), at(start), 0.5 * drum_gain)
        else:
            snare = rng.standard_normal(t.shape[0]) * np.exp(-t / snare_decay)
            _add(y, snare.astype(np.float32), at(start), 0.15 * drum_gain)
        for half in range(2):
            hat = np.diff(rng.standard_normal(int(0.03 * sr) + 1)) * np.exp(-np.arange(int(0.03 * sr)) / (0.008 * sr))
            _add(y, hat.astype(np.float32), at(start + half * beat // 2), 0.05 * drum_gain)
    y /= max(float(np.abs(y).max()), 1e-9) / 0.9
    return y.astype(np.float32)


def synth_noise(seed: int, seconds: float, sr: int, colour: str = "white") -> np.ndarray:
    """Seeded white or pink noise at -10 dBFS RMS."""
    rng = np.random.default_rng(seed)
    n = int(round(seconds * sr))
    x = rng.standard_normal(n)
    if colour == "pink":
        spec = np.fft.rfft(x)
        f = np.arange(spec.shape[0])
        spec[1:] /= np.sqrt(f[1:])
        x = np.fft.irfft(spec, n)
    x *= 10 ** (-10 / 20) / max(float(np.sqrt(np.mean(x ** 2))), 1e-12)
    return x.astype(np.float32)
