"""Audio verification: a weak candidate checked against the catalogue file itself.

The landmark evidence of a match (:mod:`earmark.match`) counts exact coincidences of peak
pairs.  Some queries keep a recording plain to hear but leave few of its landmarks:

* a phase vocoder (librosa's ``pitch_shift`` / ``time_stretch``, 2048-point STFT) smears
  onsets, so peaks move by 1-2 frames at random and a third of the landmarks survive;
* another song or noise mixed over at 0 dB is louder in half of the recording's peak
  bins, and a landmark needs both of its peaks: a fifth of the landmarks survive.

The matcher still finds the right recording, place and transform, at a significance under
the threshold.  This stage takes such candidates and compares the audio they claim to
align: the query segment and the reference segment of the catalogue file, as
log-frequency spectrograms (the engine's own front end), the reference mapped through the
candidate's speed (frame positions) and pitch (a shift along the log-frequency axis).  Two
statistics, neither of which comes from the landmarks:

``correlation``
    Pearson correlation of the two dB spectrograms, each frequency's mean removed (EQ
    and level do not count), best over lags of +-``CORRELATION_MAX_LAG_SECONDS``.  It
    sees a vocoded recording (0.80-0.92 at the true alignments the vocoder pushed under
    the threshold) but not one under a 0 dB mix, where the other music is half the
    picture (0.3-0.6, within the range of chance alignments).
``peaks`` and ``peaks_z``
    The fraction of the recording's spectral peaks (local maxima of its spectrogram,
    ``PEAK_MIN_DB_ABOVE_MEDIAN`` over the frame's median) that have a query peak within
    +-``PEAK_TOLERANCE_FRAMES`` frames and +-``PEAK_TOLERANCE_BINS`` bins, best within
    +-``ALIGNMENT_SLACK_SECONDS`` of the claimed alignment, and how far it stands above the
    same fraction at the other alignments of the same two signals
    (``NULL_MIN_LAG_SECONDS`` to ``NULL_MAX_LAG_SECONDS`` away), in standard deviations
    of those.  Added music adds peaks but removes few of the recording's, and the null
    is made of the same two pieces of music, so their density, key and rhythm are
    discounted: a shifted beat grid is one of the alternatives.
``coherence`` and ``coherence_z``
    For a match at identity only: whether the query holds the recording's *waveform*.
    At each frequency, how consistently the phase difference between the query and the
    catalogue file holds over the segment (:func:`phase_coherence_per_lag`), and how far
    that stands above the same at the peak test's null alignments (in plain or in robust
    standard deviations, whichever a recurring loop or beat grid widens less).  A
    recording used as it is (sampled under new vocals, embedded in another song,
    re-encoded) keeps its phase in every bin where it is louder than what was added, and
    a fixed filter only adds a constant phase per frequency; different recordings drift
    apart in phase however alike they sound, and the two-signal null discounts what
    drifts slowly (held tones).  So it reads far more of the audio than the peaks do:
    on the bench's 5-s excerpts under other music at 0 dB the true alignments stand
    15-249 out (median 93) over the whole 5 s, 31-150 for the 13 where the peak test
    reached 0.4-14.  A regenerated recording (vocoder, Griffin-Lim, a neural codec)
    keeps its spectrogram and loses its phase: the other two tests are for it.

A candidate is accepted when its waveform stands out
(:attr:`~earmark.fingerprint.config.MatchConfig.verify_min_coherence_z`, 10), when its
peaks stand out
(:attr:`~earmark.fingerprint.config.MatchConfig.verify_min_peaks_z`, 10), or when it
correlates (:attr:`~earmark.fingerprint.config.MatchConfig.verify_min_correlation`, 0.8)
and has the contrast, landmarks and significance (10) the correlation test asks
(:func:`passes`).  The peak test also takes candidates under a match's landmark floor
(7 landmarks, significance 6: ``verify_min_score``, ``verify_peaks_min_fraction``): a 5-s
excerpt under equally loud music often leaves no more at the right place.  A check
counts the found peaks of all its alignments in one pass (:func:`_found_per_lag`), ~50 ms
for a 10-s segment, half of it decoding the catalogue file.  Measured with this module on the dev
corpus (``fp bench`` query files; candidates with thresholds and contrast off):

===================================================================  ===  ===========  =========
alignments                                                             n  correlation  peaks_z
===================================================================  ===  ===========  =========
chance: every candidate on the 220 negatives (score >= 6)            228  <= 0.57      <= 4.0
wrong recordings in hard rows (mixes, noise, vocoder, 2-3 s) [1]_     14  <= 0.44      <= 5.4
tracks of one game against 47 others, under the threshold [2]_        14  <= 0.58      <= 2.9
the tests' synthetic songs, not in the catalogue, score >= 6 [3]_    156  <= 0.89      <= 8.6
true, under the threshold: mixes, noise at 0-5 dB, 5-s excerpts       17  0.32-0.75    7.0-27.2
true, under the threshold: phase vocoder                              18  0.79-0.91    7.7-21.4
===================================================================  ===  ===========  =========

.. [1] Leaving out one that is a real reuse: two catalogue recordings that share audio
   (``peaks_z`` 10.2, already significant on its landmarks).
.. [2] Above the threshold (on landmarks alone) the same set has whole-mix reuses
   (correlation 0.85-0.96, ``peaks_z`` 11-20) and shared material (0.3-0.54, up to 16.5).
.. [3] Near-copies of each other once tempo and key match: the correlation test lets
   three 60-s songs through at significance 12-17 (see the README), the peak test none.

The coherence test, measured with this module (this release; identity alignments):

======================================================================  =====  ==========  ===========
alignments                                                                  n  coherence   coherence_z
======================================================================  =====  ==========  ===========
chance: the 17 negative tracks' 2-10 s against random catalogue places   2917              <= 4.4
chance: candidates checked on the 220 bench negatives (default settings)   62              <= 4.0
the tests' synthetic songs not in the catalogue (20, at 20 s and 60 s)      2              <= 2.6
tracks of one game against the other half: faint shared audio [4]_        5  0.07-0.15   12-29
tracks of one game against the other half: shared stems [4]_               5  0.21-0.36   22-93
true: the bench's 5-s excerpts under other music at 0 dB, whole 5 s        60  0.17-       15-249
true: another song mixed over at 0 dB, first 5 s                           60  0.29-       15-273
======================================================================  =====  ==========  ===========

.. [4] Under :attr:`~earmark.fingerprint.config.MatchConfig.verify_min_coherence` (0.15)
   a coherence that stands out is a faint layer or a few hits the two tracks share, not
   a share of the recording; the stems pass (one of them already passed on its peaks).

Candidates need the catalogue file where the index found it; when it is missing or
unreadable the candidate is simply not verified.

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
from collections.abc import Sequence

import numpy as np
import scipy.fft
from numba import njit

from earmark.errors import EarmarkError
from earmark.evidence import AudioCheck
from earmark.fingerprint import audio as audio_io
from earmark.fingerprint.config import FingerprintConfig, MatchConfig
from earmark.fingerprint.spectrogram import log_spectrogram

#: Longest query segment compared (seconds): enough for stable statistics, bounded cost.
MAX_VERIFY_SECONDS = 10.0
#: Correlation: search of the alignment line's offset on either side (seconds).
CORRELATION_MAX_LAG_SECONDS = 0.5
#: Kept for callers of :func:`aligned_correlation` (its reference starts this early).
MAX_LAG_SECONDS = CORRELATION_MAX_LAG_SECONDS
#: Peaks: the claimed alignment is searched within this many seconds (the landmark line
#: is good to a frame or two; 0.1 s = 6 frames of 16 ms).
ALIGNMENT_SLACK_SECONDS = 0.1
#: Peaks: the null alignments lie this far from the claimed one.  0.32 s (20 frames)
#: clears the slack and the 128-ms analysis window; 2 s spans a bar or more of music, so
#: beat-shifted alignments are among the alternatives.
NULL_MIN_LAG_SECONDS = 0.32
NULL_MAX_LAG_SECONDS = 2.0
#: Peaks: a spectral peak is a local maximum over +-1 frame and +-1 bin that stands this
#: many dB over its frame's median (quieter maxima are the noise floor's texture).
PEAK_MIN_DB_ABOVE_MEDIAN = 10.0
#: Peaks: a recording's peak is found in the query when a query peak lies within this many
#: frames (16 ms each) and bins (1/3 semitone each): the front end's own precision.
PEAK_TOLERANCE_FRAMES = 1
PEAK_TOLERANCE_BINS = 1
#: Peaks: fewest null alignments for a spread (a match at the very start or end of its
#: file has them on one side only).
MIN_NULL_ALIGNMENTS = 40
#: Peaks: fewest peaks of the recording in the compared window for the peak test (its
#: ``peaks_z`` is ``None`` below).  True alignments on the bench have 36 or more a second
#: (73 in the 2-s excerpts); a sparse passage with a handful of notes can coincide with
#: the query at one alignment and nowhere else, which no spread of other alignments
#: measures.
MIN_REFERENCE_PEAKS = 50


#: Coherence: analysis window (samples at ``cfg.sr``; 512 = 64 ms at 8 kHz).  The lags are
#: the engine's frames (16 ms), so a use sits up to 8 ms off the nearest lag: a 64-ms window
#: keeps 7/8 of its samples in common there, where the fingerprint's 128-ms window would
#: halve the number of independent frames in a 5-s segment.
COHERENCE_N_FFT = 512
#: Coherence: frequencies compared (Hz).  Under 60 Hz a 64-ms window holds too few
#: periods; over 3.6 kHz lies the transition band of the resampling to ``cfg.sr`` (the query
#: and the catalogue file may come from different sample rates).
COHERENCE_MIN_HZ = 60.0
COHERENCE_MAX_HZ = 3600.0
#: Coherence: bins this far under the loudest bin of the segment (dB) count as silent
#: (digital silence and the dither of a fade have no phase worth comparing).
COHERENCE_FLOOR_DB = 100.0
#: Coherence is measured only for a match at identity (the waveform is compared sample for
#: sample, so a speed or pitch change would have to be undone first): within this much of
#: speed 1 (fraction) and pitch 0 (semitones), the estimates' spread at identity.
COHERENCE_MAX_SPEED_ERROR = 0.02
COHERENCE_MAX_PITCH_ERROR = 0.25
#: Most candidates per query checked by the coherence test alone (those under the other
#: tests' landmark floors): each reads a few seconds of a catalogue file (~25 ms).
COHERENCE_MAX_CHECKS = 3
#: The median absolute deviation of a normal sample times this is its standard deviation.
MAD_TO_SIGMA = 1.4826


def _spectrogram(y: np.ndarray, cfg: FingerprintConfig) -> np.ndarray:
    return log_spectrogram(np.asarray(y, np.float32), cfg.sr, cfg.n_fft, cfg.hop_length,
                           cfg.fmin_hz, cfg.fmax_hz, cfg.bins_per_semitone)


def _neighbourhood_max(x: np.ndarray, frames: int, bins: int) -> np.ndarray:
    """Maximum of ``x`` over +-``frames`` x +-``bins`` (edges padded with the minimum)."""
    fill = x.min() if x.dtype != np.bool_ else False
    padded = np.pad(x, ((frames, frames), (bins, bins)), constant_values=fill)
    out = x.copy()
    n_frames, n_bins = x.shape
    for i in range(2 * frames + 1):
        for j in range(2 * bins + 1):
            np.maximum(out, padded[i:i + n_frames, j:j + n_bins], out=out)
    return out


def spectral_peaks(spec_db: np.ndarray,
                   min_db_above_median: float = PEAK_MIN_DB_ABOVE_MEDIAN) -> np.ndarray:
    """Boolean mask of the local maxima (over +-1 frame and +-1 bin) of a dB spectrogram
    ``(n_frames, n_bins)`` that stand ``min_db_above_median`` dB over their frame's median.

    >>> s = np.zeros((5, 6), np.float32); s[2, 3] = 30.0; s[0, 0] = 5.0
    >>> np.argwhere(spectral_peaks(s)).tolist()
    [[2, 3]]
    """
    floor = np.median(spec_db, axis=1, keepdims=True) + min_db_above_median
    return (spec_db >= _neighbourhood_max(spec_db, 1, 1)) & (spec_db > floor)


def _near_query_peaks(query_spec: np.ndarray) -> np.ndarray:
    """Where a recording's peak counts as found: within the tolerance of a query peak."""
    return _neighbourhood_max(spectral_peaks(query_spec), PEAK_TOLERANCE_FRAMES,
                              PEAK_TOLERANCE_BINS)


def _mapped_frames(n_query_frames: int, speed: float) -> np.ndarray:
    """Reference frame (before any lag) of each query frame under ``speed``."""
    return np.round(np.arange(n_query_frames) * speed).astype(np.int64)


def _found_per_frame(q_near: np.ndarray, r_peaks: np.ndarray, speed: float, lag: int
                     ) -> tuple[np.ndarray, np.ndarray]:
    """Per query frame: the reference's peaks at the mapped frame (+ ``lag``) and how
    many of them have a query peak near them (``q_near``: dilated query peaks)."""
    ref_frames = _mapped_frames(q_near.shape[0], speed) + lag
    inside = (ref_frames >= 0) & (ref_frames < r_peaks.shape[0])
    n = np.zeros(q_near.shape[0])
    found = np.zeros(q_near.shape[0])
    at = r_peaks[ref_frames[inside]]
    n[inside] = at.sum(axis=1)
    found[inside] = (at & q_near[inside]).sum(axis=1)
    return n, found


@njit(cache=True)
def _found_per_lag(q_near: np.ndarray, r_peaks: np.ndarray, ref_frames: np.ndarray,
                   lags: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Totals of :func:`_found_per_frame` for many lags: per lag, the reference's peaks
    at the frames query frame ``i`` maps to (``ref_frames[i] + lag``) and how many of
    them have a query peak near them.  The reference's peaks are listed once per frame,
    so a lag costs a pass over the query's frames and the peaks they meet (the dense
    comparison of every bin at 250 lags was most of a check's time)."""
    n_ref, n_bins = r_peaks.shape
    frame_start = np.zeros(n_ref + 1, dtype=np.int64)
    for f in range(n_ref):
        frame_start[f + 1] = frame_start[f] + np.count_nonzero(r_peaks[f])
    peak_bins = np.empty(frame_start[n_ref], dtype=np.int64)
    k = 0
    for f in range(n_ref):
        for b in range(n_bins):
            if r_peaks[f, b]:
                peak_bins[k] = b
                k += 1
    n_peaks = np.zeros(lags.shape[0])
    found = np.zeros(lags.shape[0])
    for li in range(lags.shape[0]):
        n = 0
        hit = 0
        for i in range(ref_frames.shape[0]):
            f = ref_frames[i] + lags[li]
            if f < 0 or f >= n_ref:
                continue
            for k in range(frame_start[f], frame_start[f + 1]):
                n += 1
                if q_near[i, peak_bins[k]]:
                    hit += 1
        n_peaks[li] = n
        found[li] = hit
    return n_peaks, found


def _unit_stft(y: np.ndarray, cfg: FingerprintConfig) -> np.ndarray:
    """Short-time spectrum of ``y`` on the engine's frame grid (hop ``cfg.hop_length``,
    window :data:`COHERENCE_N_FFT`) over the compared band, each bin reduced to its phase
    (unit magnitude; silent bins 0): ``(n_frames, n_bins)`` complex64."""
    n_fft, hop = COHERENCE_N_FFT, cfg.hop_length
    if y.shape[0] < n_fft:
        return np.zeros((0, 0), np.complex64)
    frames = np.lib.stride_tricks.sliding_window_view(np.asarray(y, np.float32), n_fft)[::hop]
    spec = scipy.fft.rfft(frames * np.hanning(n_fft).astype(np.float32), axis=1)
    lo = int(np.ceil(COHERENCE_MIN_HZ * n_fft / cfg.sr))
    hi = int(np.floor(COHERENCE_MAX_HZ * n_fft / cfg.sr)) + 1
    spec = spec[:, lo:hi].astype(np.complex64)
    mag = np.abs(spec)
    floor = float(mag.max(initial=0.0)) * 10.0 ** (-COHERENCE_FLOOR_DB / 20.0)
    return np.divide(spec, mag, out=np.zeros_like(spec), where=mag > max(floor, 1e-20))


def phase_coherence_per_lag(query_unit: np.ndarray, reference_unit: np.ndarray) -> np.ndarray:
    """Mean over frequencies of ``|sum_t q[t, f] conj(r[t + lag, f])| / n_frames`` for every
    lag ``0 .. len(r) - len(q)`` (frames): how consistently the two signals keep the same
    phase difference at each frequency over the segment.

    1.0 when the query is the reference (or the reference through any fixed filter: EQ, a
    codec's band limits, a fixed delay within the window); ``~1 / sqrt(frames)`` between
    unrelated signals, whose phases drift apart.  Another song or noise mixed over the
    recording scrambles the phase of the bins it dominates and leaves the others, so the
    coherence falls with the mix's level but stays far over chance.  One FFT per
    frequency along time gives every lag at once.

    >>> rng = np.random.default_rng(0)
    >>> r = np.exp(2j * np.pi * rng.random((400, 50))).astype(np.complex64)
    >>> c = phase_coherence_per_lag(r[100:300], r)
    >>> int(np.argmax(c)), bool(c[100] > 0.99), bool(np.delete(c, 100).max() < 0.2)
    (100, True, True)
    """
    n_q, n_r = query_unit.shape[0], reference_unit.shape[0]
    if n_q == 0 or n_r < n_q or query_unit.shape[1] == 0:
        return np.zeros(0)
    n = scipy.fft.next_fast_len(n_q + n_r)
    cross = scipy.fft.ifft(np.conj(scipy.fft.fft(query_unit, n, axis=0))
                           * scipy.fft.fft(reference_unit, n, axis=0), axis=0)
    return np.abs(cross[: n_r - n_q + 1]).mean(axis=1) / n_q


def _transposed(query_spec: np.ndarray, reference_spec: np.ndarray, pitch_semitones: float,
                cfg: FingerprintConfig) -> tuple[np.ndarray, np.ndarray]:
    """The bins both spectrograms cover once the reference is moved by the pitch shift:
    query bin ``k`` holds the reference's bin ``k - shift``."""
    shift = int(round(pitch_semitones * cfg.bins_per_semitone))
    n_bins = query_spec.shape[1]
    return (query_spec[:, max(0, shift):n_bins + min(0, shift)],
            reference_spec[:, max(0, -shift):n_bins - max(0, shift)])


def _lag_frames(n_query_frames: int, n_reference_frames: int, speed: float,
                lags: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Reference frame of each query frame for each lag that fits: ``(lags, frames)``
    with ``frames[l, i] = lags[l] + round(i * speed)``."""
    ref_frames = _mapped_frames(n_query_frames, speed)
    fits = lags + ref_frames[-1] < n_reference_frames
    lags = lags[fits]
    return lags, lags[:, None] + ref_frames[None, :]


def _correlations(q: np.ndarray, r: np.ndarray, frames: np.ndarray) -> np.ndarray:
    """Correlation of ``q`` with ``r[frames[l]]`` for each row ``l`` of ``frames``,
    each frequency's mean removed."""
    q = q - q.mean(axis=0)
    q_norm = float(np.sqrt(np.sum(q * q)))
    out = np.full(frames.shape[0], -1.0)
    for n, idx in enumerate(frames):
        w = r[idx]
        w = w - w.mean(axis=0)
        w_norm = float(np.sqrt(np.sum(w * w)))
        if q_norm > 0 and w_norm > 0:
            out[n] = float(np.sum(q * w)) / (q_norm * w_norm)
    return out


def aligned_correlation(query: np.ndarray, reference: np.ndarray, speed: float,
                        pitch_semitones: float, cfg: FingerprintConfig,
                        max_lag_seconds: float = CORRELATION_MAX_LAG_SECONDS) -> float:
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
    return _spectrogram_correlation(_spectrogram(query, cfg), _spectrogram(reference, cfg),
                                    speed, pitch_semitones, cfg, max_lag_seconds)


def _spectrogram_correlation(query_spec: np.ndarray, reference_spec: np.ndarray,
                             speed: float, pitch_semitones: float, cfg: FingerprintConfig,
                             max_lag_seconds: float) -> float:
    """:func:`aligned_correlation` on the two spectrograms (:func:`_spectrogram`)."""
    q, r = _transposed(query_spec, reference_spec, pitch_semitones, cfg)
    max_lag = int(round(2 * max_lag_seconds / cfg.frame_seconds))
    _, frames = _lag_frames(q.shape[0], r.shape[0], speed, np.arange(max_lag + 1))
    return float(_correlations(q, r, frames).max(initial=-1.0))


def check_alignment(query: np.ndarray, reference: np.ndarray, speed: float,
                    pitch_semitones: float, cfg: FingerprintConfig,
                    min_coherence_z: float | None = None,
                    min_coherence: float = 0.0) -> AudioCheck | None:
    """Compare a query segment with the reference audio a match aligns it with.

    Parameters
    ----------
    query : np.ndarray
        The query segment, mono at ``cfg.sr``.
    reference : np.ndarray
        Reference audio starting :data:`NULL_MAX_LAG_SECONDS` before the aligned start
        and ``speed`` times the query's length plus ``2 * NULL_MAX_LAG_SECONDS`` long.
    speed, pitch_semitones : float
        The match's transform (reference seconds per query second; query pitch minus
        reference pitch).
    min_coherence_z, min_coherence : float, optional
        Return ``None`` at once unless the coherence test applies and reaches both (the
        other statistics are computed only for a candidate that passes it).

    Returns
    -------
    AudioCheck or None
        ``correlation``, ``peaks`` and ``peaks_z`` (module docstring; ``peaks_z`` is
        ``None`` under :data:`MIN_REFERENCE_PEAKS` peaks of the recording), ``coherence``
        and ``coherence_z`` (``None`` unless the match is at identity,
        :func:`coherence_applies`); ``None`` when the reference is too short for the null
        alignments or holds no spectral peak.

    Examples
    --------
    >>> from earmark.fingerprint.config import DEFAULT as cfg
    >>> from earmark.synth import synth_song
    >>> song = synth_song(seed=5, seconds=20.0, sr=cfg.sr)
    >>> excerpt = song[6 * cfg.sr:12 * cfg.sr]                      # 6 s from second 6
    >>> noise = np.random.default_rng(0).normal(0, excerpt.std(), excerpt.shape)
    >>> mixed = (excerpt + noise).astype(np.float32)                 # white noise at 0 dB
    >>> check = check_alignment(mixed, song[4 * cfg.sr:], 1.0, 0.0, cfg)
    >>> bool(check.peaks_z > 10), bool(check.correlation < 0.8)
    (True, True)
    """
    centre = int(round(NULL_MAX_LAG_SECONDS / cfg.frame_seconds))
    coherence = coherence_z = None
    if coherence_applies(speed, pitch_semitones):
        coherence, coherence_z = _coherence_test(query, reference, centre, cfg)
    if min_coherence_z is not None and (coherence_z is None or coherence_z < min_coherence_z
                                        or coherence < min_coherence):
        return None
    q, r = _transposed(_spectrogram(query, cfg), _spectrogram(reference, cfg),
                       pitch_semitones, cfg)
    lags, frames = _lag_frames(q.shape[0], r.shape[0], speed, np.arange(2 * centre + 1))
    null_gap = int(round(NULL_MIN_LAG_SECONDS / cfg.frame_seconds))
    near = np.abs(lags - centre) <= int(round(ALIGNMENT_SLACK_SECONDS / cfg.frame_seconds))
    null = np.abs(lags - centre) >= null_gap
    if not near.any() or null.sum() < MIN_NULL_ALIGNMENTS:
        return None
    corr_lag = int(round(CORRELATION_MAX_LAG_SECONDS / cfg.frame_seconds))
    in_reach = np.abs(lags - centre) <= corr_lag
    correlation = float(_correlations(q, r, frames[in_reach]).max(initial=-1.0))

    query_near_peak = _near_query_peaks(q)
    reference_peaks = spectral_peaks(r)
    n_peaks, found = _found_per_lag(query_near_peak, reference_peaks,
                                    _mapped_frames(q.shape[0], speed), lags.astype(np.int64))
    fraction = np.divide(found, n_peaks, out=np.zeros(lags.shape[0]), where=n_peaks > 0)
    if not n_peaks[near].any():
        if coherence is None:
            return None
        return AudioCheck(correlation=round(correlation, 4), coherence=round(coherence, 4),
                          coherence_z=round(coherence_z, 2))
    best = int(np.argmax(np.where(near & (n_peaks > 0), fraction, -1.0)))
    peaks = float(fraction[best])
    chance = float(fraction[null].mean())
    # The spread of the null alignments, but never under the binomial spread of a
    # fraction of this many peaks: a recording with few peaks in the window (a sparse or
    # quiet passage) can be found nowhere else by chance, and a spread of zero would make
    # one coincidence stand out without bound.
    binomial = np.sqrt(max(chance, 1.0 / n_peaks[best]) * (1.0 - chance) / n_peaks[best])
    spread = max(float(fraction[null].std()), float(binomial), 1e-3)
    # Too few peaks to tell (peaks come in clusters, one note or hit making several).
    peaks_z = (peaks - chance) / spread if n_peaks[best] >= MIN_REFERENCE_PEAKS else None
    return AudioCheck(correlation=round(correlation, 4), peaks=round(peaks, 4),
                      peaks_z=None if peaks_z is None else round(peaks_z, 2),
                      coherence=None if coherence is None else round(coherence, 4),
                      coherence_z=None if coherence_z is None else round(coherence_z, 2))


def coherence_applies(speed: float, pitch_semitones: float) -> bool:
    """Whether a match's transform is identity within the estimates' spread: the only one
    the coherence test compares (the waveform sample for sample)."""
    return abs(speed - 1.0) <= COHERENCE_MAX_SPEED_ERROR \
        and abs(pitch_semitones) <= COHERENCE_MAX_PITCH_ERROR


def _coherence_test(query: np.ndarray, reference: np.ndarray, centre: int,
                    cfg: FingerprintConfig) -> tuple[float | None, float | None]:
    """``(coherence, coherence_z)`` of a query segment against a reference that starts
    ``centre`` frames before the aligned place (speed 1): the best phase coherence
    (:func:`phase_coherence_per_lag`) within the alignment slack, and how far it stands
    above the coherence at the null alignments of the peak test, in standard deviations
    of those: the larger of two readings, over their mean in plain standard deviations
    and over their median in robust ones (``MAD_TO_SIGMA`` x the median absolute
    deviation).  ``(None, None)`` when there are too few null alignments.

    Music repeats itself, and either reading can be widened by it.  Where a loop recurs a
    beat or a bar away, a few null alignments are copies of the use and hold its
    coherence: the plain deviation grows with them, the robust one does not (a 5-s
    electronic excerpt under other music: 9.1 plain, 42.7 robust).  On a strict beat
    grid the null splits into on-beat and off-beat lags, which widens the robust
    reading instead (a synthetic song under louder music: 12.8 plain, 9.9 robust).
    Unrelated music stands out of neither: 2 821 chance pairs (the calibration of the
    module docstring, session 24) reached 4.33 plain and 4.34 robust at most, so the
    larger of the two stays at 4.34."""
    per_lag = phase_coherence_per_lag(_unit_stft(query, cfg), _unit_stft(reference, cfg))
    lags = np.arange(per_lag.shape[0])
    near = np.abs(lags - centre) <= int(round(ALIGNMENT_SLACK_SECONDS / cfg.frame_seconds))
    null = np.abs(lags - centre) >= int(round(NULL_MIN_LAG_SECONDS / cfg.frame_seconds))
    if not near.any() or null.sum() < MIN_NULL_ALIGNMENTS:
        return None, None
    best = float(per_lag[near].max())
    null_coherence = per_lag[null]
    plain = (best - float(null_coherence.mean())) / max(float(null_coherence.std()), 1e-3)
    median = float(np.median(null_coherence))
    mad = float(np.median(np.abs(null_coherence - median)))
    robust = (best - median) / max(MAD_TO_SIGMA * mad, 1e-3)
    return best, max(plain, robust)


def _read_reference(path: str | os.PathLike, start_seconds: float, seconds: float,
                    cfg: FingerprintConfig) -> np.ndarray | None:
    """``seconds`` of a catalogue file from ``start_seconds`` (mono at ``cfg.sr``); the
    part before the file's start (``start_seconds < 0``) is silence, so sample 0 is
    always ``start_seconds``.  ``None`` when the file cannot be read (moved, deleted,
    damaged) or holds less than one analysis window there."""
    lead = max(0.0, -start_seconds)
    try:
        reference = audio_io.load_audio(path, cfg.sr, max_seconds=max(seconds - lead, 0.0),
                                        offset_seconds=max(0.0, start_seconds),
                                        fast_seek=True)
    except (EarmarkError, OSError):
        return None
    if reference.shape[0] < cfg.n_fft:
        return None
    if lead > 0:
        reference = np.concatenate([np.zeros(int(round(lead * cfg.sr)), np.float32),
                                    reference])
    return reference


def verify_segment(query: np.ndarray, query_start: float, query_end: float,
                   reference_path: str | os.PathLike, reference_start: float, speed: float,
                   pitch_semitones: float, cfg: FingerprintConfig,
                   min_coherence_z: float | None = None,
                   min_coherence: float = 0.0) -> AudioCheck | None:
    """:func:`check_alignment` of a match's segments, the reference read from its
    catalogue file (at most :data:`MAX_VERIFY_SECONDS` of the query, mono at ``cfg.sr``).
    ``None`` when the file cannot be read (moved, deleted, damaged) or is too short."""
    sr = cfg.sr
    seconds = min(query_end - query_start, MAX_VERIFY_SECONDS)
    first = int(round(query_start * sr))
    segment = query[first:first + int(round(seconds * sr))]
    if segment.shape[0] < cfg.n_fft:
        return None
    reference = _read_reference(reference_path, reference_start - NULL_MAX_LAG_SECONDS,
                                seconds * speed + 2 * NULL_MAX_LAG_SECONDS + 0.5, cfg)
    if reference is None:
        return None
    return check_alignment(segment, reference, speed, pitch_semitones, cfg, min_coherence_z,
                           min_coherence)


def passes(check: AudioCheck | None, mcfg: MatchConfig, contrast: float = np.inf,
           significance: float = np.inf, score: int | None = None) -> bool:
    """Whether an audio check lets a weak candidate through: its peaks stand out
    (``verify_min_peaks_z``), or its spectrogram correlates (``verify_min_correlation``)
    and its votes have the ``contrast``, ``significance`` and ``score`` the correlation
    test asks (``min_contrast``, ``verify_min_significance``, ``min_score``).

    The peak test is calibrated without contrast: it compares the alignment with other
    alignments of the same two signals, a sharper form of what contrast asks (that a use
    stands out of the query's coincidences with other recordings).  Correlation does not
    tell near-copies of one style apart (0.60-0.90 between the tests' synthetic songs at
    their chance alignments), so it keeps the contrast rule.
    """
    if check is None:
        return False
    if check.peaks_z is not None and check.peaks_z >= mcfg.verify_min_peaks_z:
        return True
    if check.coherence_z is not None and check.coherence_z >= mcfg.verify_min_coherence_z \
            and check.coherence >= mcfg.verify_min_coherence:
        return True
    return (check.correlation >= mcfg.verify_min_correlation and contrast >= mcfg.min_contrast
            and significance >= mcfg.verify_min_significance
            and (score is None or score >= mcfg.min_score))


def refutes(check: AudioCheck | None, mcfg: MatchConfig) -> bool:
    """Whether an audio check contradicts a match its landmarks made: the aligned
    spectrograms do not correlate (under ``refute_max_correlation``), the recording's
    peaks do not stand out of chance (under ``refute_max_peaks_z``), and the waveform,
    where it is compared, does not pass the coherence test either.  ``False`` when there
    is no check (the catalogue file could not be read: nothing to go by).

    >>> from earmark.fingerprint.config import MatchConfig
    >>> refutes(AudioCheck(correlation=0.24, peaks=0.16, peaks_z=2.7), MatchConfig())
    True
    >>> refutes(AudioCheck(correlation=0.47, peaks=0.4, peaks_z=14.8), MatchConfig())
    False
    >>> refutes(AudioCheck(correlation=0.58, peaks=0.3, peaks_z=3.5), MatchConfig())
    False
    """
    if check is None:
        return False
    if check.coherence_z is not None and check.coherence_z >= mcfg.verify_min_coherence_z \
            and check.coherence is not None and check.coherence >= mcfg.verify_min_coherence:
        return False
    return (check.correlation < mcfg.refute_max_correlation
            and (check.peaks_z is None or check.peaks_z < mcfg.refute_max_peaks_z))


# ----------------------------------------------------------------------------- repeated sections

#: Placing a use among the copies of a repeated section (:func:`placement_gain`): a copy
#: whose audio correlation with the query gains at least this fraction of what the
#: landmarks' choice leaves unexplained (``1 - correlation``) is the better place.
PLACE_MIN_GAIN_FRACTION = 0.25
#: ... and at least this much: copies of an exact loop correlate alike within ~0.01, and
#: then the landmarks' choice stands (either copy is right).
PLACE_MIN_GAIN = 0.02
#: Alignments with rivals placed per query, strongest first (each reads its own and its
#: rivals' catalogue segments: ~7 ms apiece).
PLACE_MAX_CHECKS = 3
#: The query audio compared at each place: the middle of the segment, at most this long
#: (seconds).  3 s and 5 s placed the same uses on the bench's queries (both corpora,
#: in process); 3 s costs a third less (a 3-s Vorbis read ~7 ms against ~9 ms).
PLACE_MAX_SECONDS = 3.0


def placement_correlations(query: np.ndarray, query_start: float, query_end: float,
                           places: Sequence[tuple[str | os.PathLike, float, float, float]],
                           cfg: FingerprintConfig) -> list[float | None]:
    """How well each of several places of the catalogue audio agrees with one query
    segment: the spectrogram correlation (:func:`aligned_correlation`) of the middle
    :data:`PLACE_MAX_SECONDS` of the segment with each place, within
    +-:data:`ALIGNMENT_SLACK_SECONDS` of its alignment.

    Used to tell which copy of a repeated section a use took: the landmark counts of two
    copies differ by chance (a few landmarks in a hundred), while a loop that is not
    copied sample for sample (another layer, a variation, a different mix) differs in
    the spectrogram.

    Parameters
    ----------
    query : np.ndarray
        The whole query, mono at ``cfg.sr``.
    query_start, query_end : float
        The segment (seconds).
    places : sequence of (reference_path, reference_seconds, speed, pitch_semitones)
        Each place: a catalogue file, the reference time aligned with ``query_start``,
        and the alignment's transform.

    Returns
    -------
    list of float or None
        One correlation per place; ``None`` where the file cannot be read, or for every
        place when the segment is shorter than one analysis window.
    """
    sr = cfg.sr
    seconds = min(query_end - query_start, PLACE_MAX_SECONDS)
    start = query_start + 0.5 * (query_end - query_start - seconds)
    first = int(round(start * sr))
    segment = query[first:first + int(round(seconds * sr))]
    if segment.shape[0] < cfg.n_fft:
        return [None] * len(places)
    query_spec = _spectrogram(segment, cfg)
    slack = ALIGNMENT_SLACK_SECONDS
    out: list[float | None] = []
    for path, reference_seconds, speed, pitch_semitones in places:
        aligned = reference_seconds + (start - query_start) * speed
        reference = _read_reference(path, aligned - slack, seconds * speed + 2 * slack, cfg)
        out.append(None if reference is None else _spectrogram_correlation(
            query_spec, _spectrogram(reference, cfg), speed, pitch_semitones, cfg, slack))
    return out


def placement_gain(kept: float, rival: float) -> bool:
    """Whether a copy correlating ``rival`` is a better place of the use than the
    landmarks' choice correlating ``kept`` (:data:`PLACE_MIN_GAIN_FRACTION`,
    :data:`PLACE_MIN_GAIN`).

    Measured in process on the bench's queries, placing against not placing in the same
    run (:meth:`earmark.index.catalogue.Index._placed_by_audio`, the rival rules of
    :mod:`earmark.match`): with the 17 electronic tracks as the catalogue, 511 -> 518 of
    558 hits at the right place (or a verified repeat of it); on the game soundtracks
    2 486 -> 2 490 of 2 495; no hit lost and no use moved away from its place.  Under a 0 dB mix the
    true place correlates 0.4-0.6 and a similar copy can reach 0.1 more by chance, which
    the relative gain asks more of.

    >>> placement_gain(0.72, 0.93), placement_gain(0.617, 0.70), placement_gain(0.99, 0.995)
    (True, False, False)
    """
    gain = rival - kept
    return gain >= PLACE_MIN_GAIN and gain >= PLACE_MIN_GAIN_FRACTION * (1.0 - kept)


# ----------------------------------------------------------------------------- segment edges

#: Edges: a use's start and end are looked for this far outside (and inside) the
#: landmark segment's (seconds).  Landmarks further out would have joined the segment
#: (``MatchConfig.max_gap_seconds``).
EDGE_SEARCH_SECONDS = 2.5
#: Edges: the in-use rate of found peaks is measured on up to this much of the segment
#: next to each edge (seconds).
EDGE_INSIDE_SECONDS = 3.0
#: Edges: the alignment is re-centred within this many frames (a Vorbis seek or the
#: line fit can be a frame or two off).
EDGE_ALIGN_FRAMES = 2
#: Edges: an edge closer than this to the query's own start or end is left as it is
#: (seconds).  The landmarks' segment of a use that runs to the query's end stops short
#: of it by up to ~0.5 s (the last peaks have no pairs), and within a second of the end
#: there is little to gain for the cost: at 0.25 s the check ran on most 10-s bench
#: queries (their p50 16.5 -> 20.3 ms).
EDGE_MIN_INTERIOR_SECONDS = 1.0
#: Edges: refined only when the in-use rate stands this far above the chance rate (the
#: fraction of peaks found at other alignments); otherwise the audio cannot tell.
EDGE_MIN_RATE_GAIN = 0.1
#: Edges: the catalogue file is read from this many frames before the window, so the
#: chance alignments (20-60 frames off) lie on both sides of the use.
EDGE_LEAD_FRAMES = 64
#: Edges of a use at identity are read off the waveform's phase coherence (per frame, its
#: agreement with the use's phase difference at each frequency) when its in-use mean stands
#: this far above the same at chance alignments: far sharper than the peaks' found rate
#: (in use about the segment's coherence, 0.17-0.9 under a 0 dB mix on the bench; outside
#: 0 +- 0.07 a frame).
EDGE_MIN_COHERENCE_GAIN = 0.1
#: Edges from the coherence: a frame counts as in use above this fraction of the way from
#: the chance level to the use's mean (the peaks' rule takes half).  The agreement of a
#: frame follows how loud the recording is there against what was added, and a use
#: that opens on a quiet note agrees at a third to a half of its mean at first.
EDGE_COHERENCE_LEVEL = 0.35


def _coherence_per_frame(query_unit: np.ndarray, reference_unit: np.ndarray, offset: int
                         ) -> tuple[np.ndarray, np.ndarray]:
    """``(n, agreement)`` per query frame against reference frame ``frame + offset``:
    ``n`` is 1 where that reference frame exists, ``agreement`` the mean over frequencies
    of how well the frame's phase difference agrees with the use's at that frequency (its
    mean over every frame): ~1 where the query holds the waveform, ~0 where not.

    The use's phase difference is fitted to every frame at every alignment alike: fitted
    to the in-use frames only, it would raise their chance level over the others' (by
    ~1/sqrt(frames)) and set the edges late."""
    n_q = query_unit.shape[0]
    at = np.arange(n_q) + offset
    exists = (at >= 0) & (at < reference_unit.shape[0])
    cross = np.zeros_like(query_unit)
    cross[exists] = query_unit[exists] * np.conj(reference_unit[at[exists]])
    use_phase = cross.sum(axis=0)
    size = np.abs(use_phase)
    use_phase = np.divide(use_phase, size, out=np.zeros_like(use_phase), where=size > 0)
    return exists.astype(np.float64), np.real(cross * np.conj(use_phase)).mean(axis=1)


def _edge_rates(per_frame, in_use: np.ndarray, lead: int, min_gain: float, level: float):
    """``(n, found, theta)`` of the best of the alignments within :data:`EDGE_ALIGN_FRAMES`
    of ``lead`` (``per_frame(offset) -> (n, found)`` per query frame): a frame is in use
    where ``found`` exceeds ``theta`` times ``n``, ``theta`` ``level`` of the way from the
    chance rate (over every frame, at alignments 20-60 frames off on either side) to the
    in-use rate.  ``None`` when the use does not stand ``min_gain`` above chance."""
    best = None
    for off in range(lead - EDGE_ALIGN_FRAMES, lead + EDGE_ALIGN_FRAMES + 1):
        n, found = per_frame(off)
        if best is None or found[in_use].sum() > best[1][in_use].sum():
            best = (n, found, off)
    n, found, off = best
    chance = [per_frame(off + side * gap) for gap in (20, 40, 60) for side in (-1, 1)]
    chance_rate = sum(f.sum() for _, f in chance) / max(sum(c.sum() for c, _ in chance), 1)
    use_rate = found[in_use].sum() / max(n[in_use].sum(), 1)
    if use_rate < chance_rate + min_gain:
        return None
    return n, found, chance_rate + level * (use_rate - chance_rate)


def use_edges(query: np.ndarray, query_start: float, query_end: float,
              reference_path: str | os.PathLike, reference_start: float, speed: float,
              pitch_semitones: float, cfg: FingerprintConfig,
              refine_start: bool = True, refine_end: bool = True,
              anchor_times: np.ndarray | None = None) -> tuple[float, float] | None:
    """Where a use of a recording begins and ends in the query, read off the audio.

    A match's segment comes from its matched landmarks, which are a sample of the used
    audio: under a loud mix the first one can come a second after the use begins.  Along
    the match's alignment line the fraction of the recording's spectral peaks found in
    the query is high inside the use and at the chance rate outside it.  Each edge is the
    change point of that rate within :data:`EDGE_SEARCH_SECONDS` of the landmark
    segment's: the frame that maximises the found peaks minus ``theta`` times the
    recording's peaks between it and the inside of the segment, ``theta`` halfway
    between the in-use rate and the chance rate (the rate at alignments 0.3-1 s off).
    For a use at identity (:func:`coherence_applies`) the rate is, per frame, how well
    its phase differences agree with the use's (:func:`_coherence_per_frame`), when that
    stands :data:`EDGE_MIN_COHERENCE_GAIN` over chance, with ``theta`` at
    :data:`EDGE_COHERENCE_LEVEL`: on the bench's 5-s excerpts in 30 s of other music it
    located 52 of 54 hits within 0.5 s, the peaks 48.

    Parameters
    ----------
    query : np.ndarray
        The whole query, mono at ``cfg.sr``.
    query_start, query_end, reference_start, speed, pitch_semitones
        The match (seconds; its alignment maps query time ``t`` to reference time
        ``reference_start + (t - query_start) * speed``).
    reference_path : path
        The catalogue file.
    refine_start, refine_end : bool
        Which edges to look for (an edge at the query's own start or end stays).
    anchor_times : np.ndarray, optional
        Query times of the matched landmarks.  They are evidence of their own: the start
        stays at or before the second of them, the end at or after the last but one (a
        single one may be a chance coincidence).

    Returns
    -------
    (float, float) or None
        The refined ``(query_start, query_end)``; ``None`` when the catalogue file cannot
        be read or the audio does not separate the use from chance.
    """
    sr = cfg.sr
    duration = query.shape[0] / sr
    frame = cfg.frame_seconds
    inside = min(EDGE_INSIDE_SECONDS, query_end - query_start)
    windows = []
    if query_end - query_start <= 2 * EDGE_INSIDE_SECONDS + MAX_VERIFY_SECONDS:
        windows.append((max(0.0, query_start - EDGE_SEARCH_SECONDS),
                        min(duration, query_end + EDGE_SEARCH_SECONDS), "both"))
    else:
        windows += [(max(0.0, query_start - EDGE_SEARCH_SECONDS), query_start + inside,
                     "start"),
                    (query_end - inside, min(duration, query_end + EDGE_SEARCH_SECONDS),
                     "end")]
    new_start, new_end = query_start, query_end
    lead = EDGE_LEAD_FRAMES
    for t0, t1, which in windows:
        segment = query[int(round(t0 * sr)):int(round(t1 * sr))]
        reference = _read_reference(reference_path,
                                    reference_start + (t0 - query_start) * speed - lead * frame,
                                    (t1 - t0) * speed + 1.0 + lead * frame, cfg)
        if reference is None or segment.shape[0] < cfg.n_fft:
            return None

        def in_use_of(n_frames: int) -> tuple[np.ndarray, np.ndarray]:
            times = t0 + np.arange(n_frames) * frame
            in_use = (times >= query_start) & (times <= query_end)
            if which == "start":
                in_use &= times <= query_start + inside
            elif which == "end":
                in_use &= times >= query_end - inside
            return times, in_use

        rates = None
        if coherence_applies(speed, pitch_semitones):
            q_unit, r_unit = _unit_stft(segment, cfg), _unit_stft(reference, cfg)
            times, in_use = in_use_of(q_unit.shape[0])
            if not in_use.any():
                return None
            rates = _edge_rates(lambda off: _coherence_per_frame(q_unit, r_unit, off),
                                in_use, lead, EDGE_MIN_COHERENCE_GAIN, EDGE_COHERENCE_LEVEL)
        if rates is None:
            q_spec, r_spec = _transposed(_spectrogram(segment, cfg),
                                         _spectrogram(reference, cfg), pitch_semitones, cfg)
            times, in_use = in_use_of(q_spec.shape[0])
            if not in_use.any():
                return None
            q_near = _near_query_peaks(q_spec)
            r_peaks = spectral_peaks(r_spec)
            rates = _edge_rates(lambda off: _found_per_frame(q_near, r_peaks, speed, off),
                                in_use, lead, EDGE_MIN_RATE_GAIN, 0.5)
        if rates is None:
            return None
        n, found, theta = rates
        gain = np.concatenate([[0.0], np.cumsum(found - theta * n)])   # gain[i]: frames < i
        first, last = np.flatnonzero(in_use)[[0, -1]]
        if which in ("both", "start") and refine_start:
            # start s maximises gain[last + 1] - gain[s]: the lowest gain before `last`;
            # ties go to the latest frame (no evidence is no extension).
            lowest = gain[:last + 1]
            s = int(lowest.shape[0] - 1 - np.argmin(lowest[::-1]))
            new_start = max(0.0, float(times[min(s, times.shape[0] - 1)]))
        if which in ("both", "end") and refine_end:
            # end e maximises gain[e + 1] - gain[first]: the highest gain after `first`.
            highest = gain[first + 1:]
            e = first + int(np.argmax(highest))
            new_end = min(duration, float(times[e]) + frame)
    if anchor_times is not None and np.unique(anchor_times).shape[0] >= 2:
        anchors = np.unique(anchor_times)
        new_start = min(new_start, float(anchors[1]))
        new_end = max(new_end, float(anchors[-2]))
    if new_end <= new_start:
        return None
    return new_start, new_end
