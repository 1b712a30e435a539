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


#: Frames per tile of the peak search: a tile's scratch arrays stay in the L2 cache, and
#: no array of the size of the spectrogram is allocated (fresh pages cost page faults).
TILE_FRAMES = 128


@njit(cache=True, inline="never")
def _pairwise_max(a: np.ndarray, b: np.ndarray, out: np.ndarray) -> None:
    """``out[i] = max(a[i], b[i])``.  A separate (not inlined) function, so that LLVM sees
    plain unit-stride loops and emits SIMD maxima."""
    for i in range(out.shape[0]):
        x = a[i]
        y = b[i]
        out[i] = x if x > y else y


@njit(cache=True)
def _running_max(src: np.ndarray, dst: np.ndarray, window: int, step: int) -> np.ndarray:
    """``max(x[i], x[i + step], ..., x[i + (window - 1) * step])`` of a 1-D array ``x``.

    By doubling: about ``log2(window)`` passes, each an element-wise maximum of the array
    and a shifted copy of itself, instead of ``window`` comparisons per element.

    Parameters
    ----------
    src : np.ndarray
        ``x``; used as scratch (overwritten).
    dst : np.ndarray
        Scratch of the same size.

    Returns
    -------
    np.ndarray
        ``src`` or ``dst``, whichever holds the result.  Only its first
        ``x.size - (window - 1) * step`` values are defined.
    """
    n = src.shape[0]
    p = 1  # src[i] is the maximum of p terms from i (for i < n - (p - 1) * step)
    while 2 * p <= window:
        m = n - (2 * p - 1) * step
        _pairwise_max(src[:m], src[p * step:p * step + m], dst[:m])
        src, dst = dst, src
        p *= 2
    # Two overlapping p-term windows, window - p apart, make the window-term maximum.
    m = n - (window - 1) * step
    shift = (window - p) * step
    _pairwise_max(src[:m], src[shift:shift + m], dst[:m])
    return dst


@njit(cache=True)
def _tile_max_filter(S: np.ndarray, t0: int, t1: int, radius_frames: int, radius_bins: int,
                     scratch: np.ndarray) -> np.ndarray:
    """Maximum of ``S`` over +-radius_frames x +-radius_bins (truncated at the edges), for
    frames ``[t0, t1)``.

    Separable: the rows ``t0 - radius_frames .. t1 + radius_frames`` are padded with
    ``-inf`` on both axes and reduced by :func:`_running_max`, along bins with step 1 and
    along frames with a step of one row.

    Parameters
    ----------
    scratch : np.ndarray, float32, shape (2, >= (t1 - t0 + 2 * radius_frames) * (n_bins + 2 * radius_bins))

    Returns
    -------
    np.ndarray, shape (t1 - t0, n_bins)
        A view into ``scratch``.
    """
    n_frames, n_bins = S.shape
    width = n_bins + 2 * radius_bins
    n_rows = t1 - t0 + 2 * radius_frames
    padded = scratch[0, : n_rows * width]
    padded[:] = -np.inf
    for r in range(n_rows):
        t = t0 - radius_frames + r
        if 0 <= t < n_frames:
            padded[r * width + radius_bins:r * width + radius_bins + n_bins] = S[t]
    along_bins = _running_max(padded, scratch[1, : n_rows * width], 2 * radius_bins + 1, 1)
    # Compact the rows (drop the bin padding) into the other scratch row for the time pass.
    rows = scratch[0] if along_bins is scratch[1] else scratch[1]
    for r in range(n_rows):
        rows[r * n_bins:(r + 1) * n_bins] = along_bins[r * width:r * width + n_bins]
    rows = rows[: n_rows * n_bins]
    both = _running_max(rows, along_bins[: n_rows * n_bins], 2 * radius_frames + 1, n_bins)
    return both[: (t1 - t0) * n_bins].reshape(t1 - t0, n_bins)


@njit(cache=True)
def _max_filter_scratch(tile_frames: int, n_bins: int, radius_frames: int,
                        radius_bins: int) -> np.ndarray:
    """Scratch for :func:`_tile_max_filter` on tiles of up to ``tile_frames`` frames."""
    return np.empty((2, (tile_frames + 2 * radius_frames) * (n_bins + 2 * radius_bins)),
                    dtype=np.float32)


@njit(cache=True)
def _max_filter_2d(S: np.ndarray, radius_frames: int, radius_bins: int,
                   tile_frames: int = TILE_FRAMES) -> np.ndarray:
    """Running maximum over +-radius_frames x +-radius_bins (truncated at the edges)."""
    n_frames, n_bins = S.shape
    out = np.empty_like(S)
    scratch = _max_filter_scratch(tile_frames, n_bins, radius_frames, radius_bins)
    for t0 in range(0, n_frames, tile_frames):
        t1 = min(t0 + tile_frames, n_frames)
        out[t0:t1] = _tile_max_filter(S, t0, t1, radius_frames, radius_bins, scratch)
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
                         first_frame: int, end_frame: int, tile_frames: int = TILE_FRAMES):
    """Local maxima of ``S`` that are prominent enough, in frames ``[first_frame, end_frame)``.

    Frames are searched in tiles of ``tile_frames`` (the result does not depend on it).  A bin's mean over
    +-``prominence_frames`` comes from a running sum over frames (float64, from frame 0,
    kept in a ring of rows) and is only evaluated at local maxima.

    Returns
    -------
    frames : float64 array   (interpolated, in frames of ``S``)
    bins : float64 array     (interpolated log-frequency bins)
    prominence : float32 array (dB above the bin's local mean)
    """
    n_frames, n_bins = S.shape
    t_begin = max(first_frame, 0)
    t_end = min(end_frame, n_frames)
    scratch = _max_filter_scratch(tile_frames, n_bins, radius_frames, radius_bins)
    # csum[r & mask] = S[:r].sum(axis=0), for the rows r a tile's means need.
    ring = 1
    while ring < tile_frames + 2 * prominence_frames + 2:
        ring *= 2
    mask = ring - 1
    csum = np.zeros((ring, n_bins), dtype=np.float64)
    n_summed = 0
    cap = 1024
    frames = np.empty(cap, dtype=np.float64)
    bins = np.empty(cap, dtype=np.float64)
    prom = np.empty(cap, dtype=np.float32)
    n = 0
    for t0 in range(t_begin, t_end, tile_frames):
        t1 = min(t0 + tile_frames, t_end)
        local_max = _tile_max_filter(S, t0, t1, radius_frames, radius_bins, scratch)
        while n_summed < min(n_frames, t1 + prominence_frames):
            prev = csum[n_summed & mask]
            cur = csum[(n_summed + 1) & mask]
            for b in range(n_bins):
                cur[b] = prev[b] + S[n_summed, b]
            n_summed += 1
        for t in range(t0, t1):
            lo = max(0, t - prominence_frames)
            hi = min(n_frames, t + prominence_frames + 1)
            # Edge bins are not maxima of a neighbourhood (energy outside the range piles
            # up there, e.g. every kick drum at fmin): never peaks.
            for b in range(1, n_bins - 1):
                v = S[t, b]
                if v != local_max[t - t0, b]:
                    continue
                mean = np.float32((csum[hi & mask, b] - csum[lo & mask, b]) / (hi - lo))
                p = v - mean
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
    >>> y = np.zeros(2 * sr, np.float32); y[sr:sr + 2000] = np.sin(np.arange(2000) * 2 * np.pi * 800 / sr)
    >>> times, st = pick_peaks(log_spectrogram(y, sr), DEFAULT, DEFAULT.query)
    >>> len(st), bool(abs(st[0] - 12 * np.log2(800 / 100)) < 0.2)   # one peak, at 800 Hz
    (1, True)
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
