"""Audio -> log-frequency spectrogram (dB).

The STFT is taken on a linear frequency axis and mapped onto ``bins_per_semitone`` bins
per semitone with triangular filters, so that a pitch shift of ``s`` semitones becomes a
shift of ``s * bins_per_semitone`` rows.  Frames are centred: frame ``i`` is centred on
sample ``i * hop_length`` (the signal is conceptually padded with ``n_fft // 2`` zeros).
"""

from __future__ import annotations

from functools import lru_cache

import numpy as np
import scipy.fft
from numba import njit

#: Power floor, relative to each frame's strongest bin (-100 dB), added before taking dB.
#: Relative, so that a gain change shifts every value equally (peaks are gain-invariant)
#: and bins of digital silence sit at a fixed distance below the frame's content.
RELATIVE_POWER_FLOOR = 1e-10
#: Absolute floor for all-zero frames.
ABSOLUTE_POWER_FLOOR = 1e-30


@lru_cache(maxsize=8)
def log_frequency_filterbank(sr: int, n_fft: int, fmin_hz: float, fmax_hz: float,
                             bins_per_semitone: int) -> np.ndarray:
    """Triangular filters mapping ``n_fft // 2 + 1`` linear bins to log-frequency bins.

    Returns
    -------
    np.ndarray, shape (n_fft // 2 + 1, n_log_bins), float32
        Column ``k`` is centred on ``fmin_hz * 2 ** (k / (12 * bins_per_semitone))``.
        Its half-width is one log bin, widened to one linear bin where the linear
        resolution is the coarser (low frequencies), so every log bin sees energy.

    Examples
    --------
    >>> W = log_frequency_filterbank(8000, 1024, 100.0, 3900.0, 3)
    >>> W.shape
    (513, 191)
    """
    n_log = int(np.floor(12 * np.log2(fmax_hz / fmin_hz) * bins_per_semitone)) + 1
    centres = fmin_hz * 2.0 ** (np.arange(n_log) / (12.0 * bins_per_semitone))
    linear_hz = np.arange(n_fft // 2 + 1) * sr / n_fft
    bin_hz = sr / n_fft
    ratio = 2.0 ** (1.0 / (12.0 * bins_per_semitone))
    lower = np.minimum(centres / ratio, centres - bin_hz)
    upper = np.maximum(centres * ratio, centres + bin_hz)
    f = linear_hz[:, None]
    rising = (f - lower) / (centres - lower)
    falling = (upper - f) / (upper - centres)
    weights = np.clip(np.minimum(rising, falling), 0.0, None)
    weights /= weights.sum(axis=0, keepdims=True)
    return weights.astype(np.float32)


@lru_cache(maxsize=8)
def _window(n_fft: int) -> np.ndarray:
    return np.hanning(n_fft + 1)[:-1].astype(np.float32)


def frame_signal(y: np.ndarray, n_fft: int, hop_length: int) -> np.ndarray:
    """View ``y`` as overlapping frames, shape ``(n_frames, n_fft)`` (no copy)."""
    if y.shape[0] < n_fft:
        return np.zeros((0, n_fft), dtype=np.float32)
    n_frames = 1 + (y.shape[0] - n_fft) // hop_length
    return np.lib.stride_tricks.as_strided(
        y, shape=(n_frames, n_fft), strides=(y.strides[0] * hop_length, y.strides[0]),
        writeable=False)


@lru_cache(maxsize=8)
def sparse_filterbank(sr: int, n_fft: int, fmin_hz: float, fmax_hz: float,
                      bins_per_semitone: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """:func:`log_frequency_filterbank` as one contiguous range of linear bins per filter.

    Returns
    -------
    starts : np.ndarray, shape (n_log_bins,), int64
        First linear bin of each filter.
    offsets : np.ndarray, shape (n_log_bins + 1,), int64
        Filter ``k``'s weights are ``weights[offsets[k]:offsets[k + 1]]``, applied to the
        linear bins from ``starts[k]`` on.
    weights : np.ndarray, float32
        The non-zero span of every column of the dense filterbank, concatenated.

    Examples
    --------
    >>> starts, offsets, weights = sparse_filterbank(8000, 1024, 100.0, 3900.0, 3)
    >>> starts.shape, offsets.shape
    ((191,), (192,))
    """
    W = log_frequency_filterbank(sr, n_fft, fmin_hz, fmax_hz, bins_per_semitone)
    nonzero = W != 0
    starts = nonzero.argmax(axis=0).astype(np.int64)
    ends = W.shape[0] - nonzero[::-1].argmax(axis=0)
    offsets = np.concatenate([[0], np.cumsum(ends - starts)]).astype(np.int64)
    weights = np.concatenate([W[a:b, k] for k, (a, b) in enumerate(zip(starts, ends))])
    return starts, offsets, np.ascontiguousarray(weights, dtype=np.float32)


#: Frames per FFT call: the windowed frames and their spectrum stay in the L2 cache.
CHUNK_FRAMES = 128
#: Frames filtered together (the filter sums run across frames, in SIMD lanes).
_FRAME_GROUP = 16


@njit(cache=True)
def _floored_filterbank_power(spec: np.ndarray, starts: np.ndarray, offsets: np.ndarray,
                              weights: np.ndarray, relative_floor: np.float32,
                              absolute_floor: np.float32, out: np.ndarray) -> None:
    """Per frame: ``|spec|**2`` through the sparse filterbank, plus the frame's floor.

    Writes ``P @ W + (P @ W).max(axis=1) * relative_floor + absolute_floor`` into ``out``,
    with ``P = |spec|**2`` (float32) and ``W`` the dense filterbank of
    :func:`sparse_filterbank`'s ranges.  Each filter sum is accumulated in float64 over
    its range of linear bins, in order, and rounded once to float32.
    """
    n_frames = spec.shape[0]
    n_log = starts.shape[0]
    lo = spec.shape[1]
    hi = 0
    for k in range(n_log):
        lo = min(lo, starts[k])
        hi = max(hi, starts[k] + offsets[k + 1] - offsets[k])
    G = _FRAME_GROUP
    power = np.zeros((spec.shape[1], G), dtype=np.float64)  # linear bin x frame of group
    acc = np.empty(G, dtype=np.float64)
    top = np.empty(G, dtype=np.float32)
    for t0 in range(0, n_frames, G):
        g = min(G, n_frames - t0)
        for f in range(g):
            for j in range(lo, hi):
                re = spec[t0 + f, j].real
                im = spec[t0 + f, j].imag
                power[j, f] = re * re + im * im  # float32 product and sum, as numpy's
        top[:] = 0.0
        for k in range(n_log):
            acc[:] = 0.0
            base = starts[k] - offsets[k]
            for i in range(offsets[k], offsets[k + 1]):
                w = np.float64(weights[i])
                for f in range(G):
                    acc[f] += power[base + i, f] * w
            for f in range(g):
                v = np.float32(acc[f])
                out[t0 + f, k] = v
                top[f] = max(top[f], v)
        for f in range(g):
            floor = top[f] * relative_floor + absolute_floor
            for k in range(n_log):
                out[t0 + f, k] += floor


def log_spectrogram_frames(y_padded: np.ndarray, sr: int, n_fft: int, hop_length: int,
                           fmin_hz: float, fmax_hz: float,
                           bins_per_semitone: int) -> np.ndarray:
    """Log-frequency spectrogram in dB of already-padded samples.

    Parameters
    ----------
    y_padded : np.ndarray
        Mono float32 samples; frame ``i`` covers ``y_padded[i*hop : i*hop + n_fft]``.
    sr, n_fft, hop_length : int
        Sample rate, FFT size and hop, samples.
    fmin_hz, fmax_hz, bins_per_semitone
        Log-frequency axis (see :func:`log_frequency_filterbank`).

    Returns
    -------
    np.ndarray, shape (n_frames, n_log_bins), float32
        Power in dB (``10 log10``), floored 100 dB below each frame's strongest bin.
        Each frame depends only on its own samples (block-wise analysis relies on it).
    """
    frames = frame_signal(np.ascontiguousarray(y_padded, dtype=np.float32), n_fft, hop_length)
    starts, offsets, weights = sparse_filterbank(sr, n_fft, fmin_hz, fmax_hz, bins_per_semitone)
    out = np.empty((frames.shape[0], starts.shape[0]), dtype=np.float32)
    window = _window(n_fft)
    for a in range(0, frames.shape[0], CHUNK_FRAMES):
        chunk = out[a:a + CHUNK_FRAMES]
        spec = scipy.fft.rfft(frames[a:a + CHUNK_FRAMES] * window, axis=1)
        _floored_filterbank_power(spec, starts, offsets, weights,
                                  np.float32(RELATIVE_POWER_FLOOR),
                                  np.float32(ABSOLUTE_POWER_FLOOR), chunk)
        np.log10(chunk, out=chunk)  # numpy's vectorised float32 log10
        chunk *= np.float32(10.0)
    return out


def log_spectrogram(y: np.ndarray, sr: int = 8000, n_fft: int = 1024, hop_length: int = 128,
                    fmin_hz: float = 100.0, fmax_hz: float = 3900.0,
                    bins_per_semitone: int = 3) -> np.ndarray:
    """Centred log-frequency spectrogram of a whole signal, in dB.

    Examples
    --------
    >>> import numpy as np
    >>> sr = 8000
    >>> t = np.arange(sr) / sr
    >>> S = log_spectrogram(np.sin(2 * np.pi * 440 * t).astype(np.float32), sr)
    >>> int(S[30].argmax()) == round(12 * np.log2(440 / 100) * 3)
    True
    """
    pad = np.zeros(n_fft // 2, dtype=np.float32)
    y_padded = np.concatenate([pad, np.asarray(y, dtype=np.float32), pad])
    return log_spectrogram_frames(y_padded, sr, n_fft, hop_length, fmin_hz, fmax_hz,
                                  bins_per_semitone)
