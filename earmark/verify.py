"""Audio verification: a weak candidate checked against the catalogue file itself.

The landmark evidence of a match (:mod:`earmark.match`) counts exact coincidences of peak
pairs.  Some transforms keep a recording plain to hear but move its peaks: a phase
vocoder (librosa's ``pitch_shift`` / ``time_stretch``, 2048-point STFT) smears onsets, so
peaks move by 1-2 frames at random and a third of the landmarks survive.  The matcher
still finds the right recording, place and transform, at a significance under the
threshold.  This stage takes such candidates and compares the audio they claim to align:
the query segment and the reference segment of the catalogue file, as log-frequency
spectrograms (the engine's own front end), the reference mapped through the candidate's
speed (frame positions) and pitch (a shift along the log-frequency axis), each frequency's
mean removed so that EQ and level do not count, over lags of +-``max_lag_seconds``.

The correlation is independent evidence: it does not come from the landmarks.  Measured on
the dev corpus (``fp bench`` query files): the true alignments that the vocoder pushed
under the threshold correlate 0.80-0.92; 198 chance alignments (every candidate on the
220 negatives and the wrong-recording candidates of five hard rows, thresholds off)
correlate 0.17 in the median, 0.48 at the 99th percentile and 0.60 at most.  A candidate
is accepted at :attr:`~earmark.fingerprint.config.MatchConfig.verify_min_correlation`
(0.8).  Candidates need the catalogue file where the index found it; when it is missing
or unreadable the candidate is simply not verified.

>>> import numpy as np
>>> from earmark.fingerprint.config import DEFAULT
>>> from earmark.synth import synth_song
>>> y = synth_song(seed=5, seconds=8.0, sr=DEFAULT.sr)
>>> start = 32 * DEFAULT.hop_length                   # the excerpt starts 32 frames in
>>> c = aligned_correlation(y[start:start + 4 * DEFAULT.sr], y, 1.0, 0.0, DEFAULT)
>>> other = synth_song(seed=6, seconds=8.0, sr=DEFAULT.sr)
>>> bool(c > 0.95), bool(aligned_correlation(y[start:start + 4 * DEFAULT.sr], other, 1.0, 0.0, DEFAULT) < 0.7)
(True, True)
"""

from __future__ import annotations

import os

import numpy as np

from earmark.errors import EarmarkError
from earmark.fingerprint import audio as audio_io
from earmark.fingerprint.config import FingerprintConfig
from earmark.fingerprint.spectrogram import log_spectrogram

#: Longest query segment compared (seconds): enough for a stable correlation, bounded cost.
MAX_VERIFY_SECONDS = 10.0
#: Search of the alignment line's offset on either side (seconds).
MAX_LAG_SECONDS = 0.5


def _spectrogram(y: np.ndarray, cfg: FingerprintConfig) -> np.ndarray:
    return log_spectrogram(np.asarray(y, np.float32), cfg.sr, cfg.n_fft, cfg.hop_length,
                           cfg.fmin_hz, cfg.fmax_hz, cfg.bins_per_semitone)


def aligned_correlation(query: np.ndarray, reference: np.ndarray, speed: float,
                        pitch_semitones: float, cfg: FingerprintConfig,
                        max_lag_seconds: float = MAX_LAG_SECONDS) -> float:
    """Best correlation of the query's spectrogram with the reference's, mapped through
    ``speed`` and ``pitch_semitones``, over reference offsets ``0 .. 2 * max_lag_seconds``.

    Parameters
    ----------
    query : np.ndarray
        The query segment, mono at ``cfg.sr``.
    reference : np.ndarray
        Reference audio starting ``max_lag_seconds`` before the aligned start, and at
        least ``speed`` times the query's length plus ``2 * max_lag_seconds`` long (less
        reaches fewer lags).
    speed : float
        Reference seconds per query second.
    pitch_semitones : float
        Frequency shift of the query relative to the reference.

    Returns
    -------
    float
        Pearson correlation in [-1, 1] of the two dB spectrograms, each frequency's mean
        removed; -1.0 when the reference is too short for any lag.
    """
    q = _spectrogram(query, cfg)
    r = _spectrogram(reference, cfg)
    shift = int(round(pitch_semitones * cfg.bins_per_semitone))
    n_bins = q.shape[1]
    # Query bin k holds the reference's bin k - shift: compare the bins both cover.
    q = q[:, max(0, shift):n_bins + min(0, shift)]
    r = r[:, max(0, -shift):n_bins - max(0, shift)]
    q = q - q.mean(axis=0)
    q_norm = float(np.sqrt(np.sum(q * q)))
    ref_frames = np.round(np.arange(q.shape[0]) * speed).astype(np.int64)
    max_lag = int(round(2 * max_lag_seconds / cfg.frame_seconds))
    best = -1.0
    for lag in range(max_lag + 1):
        idx = ref_frames + lag
        if idx[-1] >= r.shape[0]:
            break
        w = r[idx]
        w = w - w.mean(axis=0)
        w_norm = float(np.sqrt(np.sum(w * w)))
        if q_norm > 0 and w_norm > 0:
            best = max(best, float(np.sum(q * w)) / (q_norm * w_norm))
    return best


def verify_segment(query: np.ndarray, query_start: float, query_end: float,
                   reference_path: str | os.PathLike, reference_start: float, speed: float,
                   pitch_semitones: float, cfg: FingerprintConfig) -> float | None:
    """:func:`aligned_correlation` of a match's segments, the reference read from its
    catalogue file (at most :data:`MAX_VERIFY_SECONDS` of the query, mono at ``cfg.sr``).
    ``None`` when the file cannot be read (moved, deleted, damaged)."""
    sr = cfg.sr
    seconds = min(query_end - query_start, MAX_VERIFY_SECONDS)
    first = int(round(query_start * sr))
    segment = query[first:first + int(round(seconds * sr))]
    if segment.shape[0] < cfg.n_fft:
        return None
    lo = max(0.0, reference_start - MAX_LAG_SECONDS)
    try:
        reference = audio_io.load_audio(reference_path, sr,
                                        max_seconds=seconds * speed + 2 * MAX_LAG_SECONDS + 0.5,
                                        offset_seconds=lo)
    except (EarmarkError, OSError):
        return None
    if reference.shape[0] < cfg.n_fft:
        return None
    # A reference that starts before its file (lo clipped at 0) is padded so that lag 0
    # still means "MAX_LAG_SECONDS early".
    pad = int(round((lo - (reference_start - MAX_LAG_SECONDS)) * sr))
    if pad > 0:
        reference = np.concatenate([np.zeros(pad, np.float32), reference])
    return aligned_correlation(segment, reference, speed, pitch_semitones, cfg)
