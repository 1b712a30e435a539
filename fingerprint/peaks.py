"""Log-frequency spectrogram -> spectral peaks.

A peak is a point that is

1. the maximum of its neighbourhood (+-``neighbourhood_frames`` in time,
   +-``neighbourhood_semitones`` along log-frequency), so the same point is found in a
   transformed copy as long as the local shape of the spectrum survives;
2. *prominent*: at least ``min_prominence_db`` above the mean level of its own bin over
   +-``prominence_window_frames`` (level-independent: gain changes do nothing, and flat
   noise or digital silence yields no peaks);
3. among the ``peaks_per_second * density_window_seconds`` most prominent candidates in a
   window of ``density_window_seconds`` centred on it.  Being centred, the rule does not
   depend on where an excerpt starts (block-based "top N per second" rules do).

Positions are refined by parabolic interpolation on both axes, so times are fractional
frames and frequencies fractional semitones: a speed hypothesis can then scale them
without the rounding of the original grid.
"""

from __future__ import annotations

import numpy as np
from numba import njit

from .config import FingerprintConfig, PeakConfig


@njit(cache=True)
def _max_filter_2d(S: np.ndarray, radius_frames: int, radius_bins: int) -> np.ndarray:
    """Separable running maximum over +-radius_frames x +-radius_bins."""
    n_frames, n_bins = S.shape
    along_bins = np.empty_like(S)
    for t in range(n_frames):
        for b in range(n_bins):
            lo = max(0, b - radius_bins)
            hi = min(n_bins, b + radius_bins + 1)
            m = S[t, lo]
            for k in range(lo + 1, hi):
                if S[t, k] > m:
                    m = S[t, k]
            along_bins[t, b] = m
    out = np.empty_like(S)
    for t in range(n_frames):
        lo = max(0, t - radius_frames)
        hi = min(n_frames, t + radius_frames + 1)
        for b in range(n_bins):
            m = along_bins[lo, b]
            for k in range(lo + 1, hi):
                if along_bins[k, b] > m:
                    m = along_bins[k, b]
            out[t, b] = m
    return out


@njit(cache=True)
def _time_mean(S: np.ndarray, radius_frames: int) -> np.ndarray:
    """Mean of each bin over +-radius_frames (truncated at the edges)."""
    n_frames, n_bins = S.shape
    csum = np.zeros((n_frames + 1, n_bins), dtype=np.float64)
    for t in range(n_frames):
        for b in range(n_bins):
            csum[t + 1, b] = csum[t, b] + S[t, b]
    out = np.empty(S.shape, dtype=np.float32)
    for t in range(n_frames):
        lo = max(0, t - radius_frames)
        hi = min(n_frames, t + radius_frames + 1)
        for b in range(n_bins):
            out[t, b] = (csum[hi, b] - csum[lo, b]) / (hi - lo)
    return out


@njit(cache=True)
def _parabolic_offset(left: float, centre: float, right: float) -> float:
    """Vertex offset (-0.5..0.5) of the parabola through three equally spaced points."""
    denom = left - 2.0 * centre + right
    if denom >= 0.0:
        return 0.0
    off = 0.5 * (left - right) / denom
    if off > 0.5:
        return 0.5
    if off < -0.5:
        return -0.5
    return off


@njit(cache=True)
def find_candidate_peaks(S: np.ndarray, radius_frames: int, radius_bins: int,
                         prominence_frames: int, min_prominence_db: float,
                         first_frame: int, end_frame: int):
    """Local maxima of ``S`` that are prominent enough, in frames ``[first_frame, end_frame)``.

    Returns
    -------
    frames : float64 array   (interpolated, in frames of ``S``)
    bins : float64 array     (interpolated log-frequency bins)
    prominence : float32 array (dB above the bin's local mean)
    """
    n_frames, n_bins = S.shape
    local_max = _max_filter_2d(S, radius_frames, radius_bins)
    mean = _time_mean(S, prominence_frames)
    cap = 1024
    frames = np.empty(cap, dtype=np.float64)
    bins = np.empty(cap, dtype=np.float64)
    prom = np.empty(cap, dtype=np.float32)
    n = 0
    for t in range(max(first_frame, 0), min(end_frame, n_frames)):
        # Edge bins are not maxima of a neighbourhood (energy outside the range piles up
        # there, e.g. every kick drum at fmin): never peaks.
        for b in range(1, n_bins - 1):
            v = S[t, b]
            if v != local_max[t, b]:
                continue
            p = v - mean[t, b]
            if p < min_prominence_db:
                continue
            # Plateaus: keep only the first point of equal maxima.
            if (t > 0 and S[t - 1, b] == v) or (b > 0 and S[t, b - 1] == v):
                continue
            dt = 0.0
            if 0 < t < n_frames - 1:
                dt = _parabolic_offset(S[t - 1, b], v, S[t + 1, b])
            db = 0.0
            if 0 < b < n_bins - 1:
                db = _parabolic_offset(S[t, b - 1], v, S[t, b + 1])
            if n == cap:
                cap *= 2
                frames = np.resize(frames, cap)
                bins = np.resize(bins, cap)
                prom = np.resize(prom, cap)
            frames[n] = t + dt
            bins[n] = b + db
            prom[n] = p
            n += 1
    return frames[:n], bins[:n], prom[:n]


@njit(cache=True)
def density_rank(frames: np.ndarray, prominence: np.ndarray, half_window_frames: float,
                 max_in_window: int) -> np.ndarray:
    """Number of more prominent peaks within +-half_window_frames of each peak, counted up
    to ``max_in_window`` (the density rule keeps a peak if its rank is below that).

    The rank says at which sparser density a peak would still be kept: with the same
    window, a density of ``d`` peaks per window keeps exactly the peaks of rank ``< d``.
    ``frames`` must be sorted ascending.
    """
    n = frames.shape[0]
    rank = np.zeros(n, dtype=np.int32)
    lo = 0
    hi = 0
    for i in range(n):
        while frames[lo] < frames[i] - half_window_frames:
            lo += 1
        while hi < n and frames[hi] <= frames[i] + half_window_frames:
            hi += 1
        stronger = 0
        for j in range(lo, hi):
            if prominence[j] > prominence[i] or (prominence[j] == prominence[i] and j < i):
                stronger += 1
                if stronger >= max_in_window:
                    break
        rank[i] = stronger
    return rank


def context_frames(cfg: FingerprintConfig, peak_cfg: PeakConfig) -> int:
    """Frames of context on each side that a peak decision depends on.

    Blocks of a long file overlap by this much, so that block-wise and whole-file
    analysis give identical peaks.
    """
    half_window = int(np.ceil(peak_cfg.density_window_seconds / 2 / cfg.frame_seconds))
    return (half_window + peak_cfg.neighbourhood_frames + peak_cfg.prominence_window_frames
            + 2)


def pick_peaks(S: np.ndarray, cfg: FingerprintConfig, peak_cfg: PeakConfig,
               first_frame: int = 0, end_frame: int | None = None,
               frame_offset: int = 0, return_rank: bool = False) -> tuple[np.ndarray, ...]:
    """Peaks of a log-frequency spectrogram.

    Parameters
    ----------
    S : np.ndarray, shape (n_frames, n_log_bins)
        dB spectrogram from :func:`earmark.fingerprint.spectrogram.log_spectrogram`.
    cfg, peak_cfg : FingerprintConfig, PeakConfig
        Analysis parameters and the side's density.
    first_frame, end_frame : int
        Only peaks with integer frame in ``[first_frame, end_frame)`` of ``S`` are
        returned (the rest of ``S`` is context).
    frame_offset : int
        Added to the returned times (the absolute frame of ``S[0]``).
    return_rank : bool
        Also return each peak's density rank (:func:`density_rank`).

    Returns
    -------
    times : np.ndarray, float64
        Peak times in frames, ascending.
    semitones : np.ndarray, float64
        Peak frequencies in semitones above ``cfg.fmin_hz``.
    rank : np.ndarray, int32
        Only with ``return_rank``: more prominent peaks in the density window.

    Examples
    --------
    >>> import numpy as np
    >>> from earmark.fingerprint.config import DEFAULT
    >>> from earmark.fingerprint.spectrogram import log_spectrogram
    >>> sr = DEFAULT.sr
    >>> y = np.zeros(2 * sr, np.float32); y[sr:sr + 400] = np.sin(np.arange(400) * 2 * np.pi * 800 / sr)
    >>> times, st = pick_peaks(log_spectrogram(y, sr), DEFAULT, DEFAULT.query)
    >>> bool(abs(st[0] - 12 * np.log2(800 / 100)) < 0.2)
    True
    """
    if end_frame is None:
        end_frame = S.shape[0]
    half_window = peak_cfg.density_window_seconds / 2 / cfg.frame_seconds
    # Candidates are needed over the density window around the emitted range too.
    pad = int(np.ceil(half_window)) + 1
    frames, bins, prom = find_candidate_peaks(
        np.ascontiguousarray(S, dtype=np.float32), peak_cfg.neighbourhood_frames,
        int(round(peak_cfg.neighbourhood_semitones * cfg.bins_per_semitone)),
        peak_cfg.prominence_window_frames, peak_cfg.min_prominence_db,
        first_frame - pad, end_frame + pad)
    order = np.argsort(frames, kind="stable")
    frames, bins, prom = frames[order], bins[order], prom[order]
    max_in_window = max(1, int(round(peak_cfg.peaks_per_second * peak_cfg.density_window_seconds)))
    rank = density_rank(frames, prom, half_window, max_in_window)
    whole = np.floor(frames + 0.5)
    keep = (rank < max_in_window) & (whole >= first_frame) & (whole < end_frame)
    if return_rank:
        return frames[keep] + frame_offset, bins[keep] / cfg.bins_per_semitone, rank[keep]
    return frames[keep] + frame_offset, bins[keep] / cfg.bins_per_semitone
