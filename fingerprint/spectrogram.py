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


def log_spectrogram_frames(y_padded: np.ndarray, sr: int, n_fft: int, hop_length: int,
                           fmin_hz: float, fmax_hz: float,
                           bins_per_semitone: int) -> np.ndarray:
    """Log-frequency spectrogram in dB of already-padded samples.

    Parameters
    ----------
    y_padded : np.ndarray
        Mono float32 samples; frame ``i`` covers ``y_padded[i*hop : i*hop + n_fft]``.

    Returns
    -------
    np.ndarray, shape (n_frames, n_log_bins), float32
        Power in dB (``10 log10``), floored 100 dB below each frame's strongest bin.
    """
    frames = frame_signal(np.ascontiguousarray(y_padded, dtype=np.float32), n_fft, hop_length)
    W = log_frequency_filterbank(sr, n_fft, fmin_hz, fmax_hz, bins_per_semitone)
    if frames.shape[0] == 0:
        return np.zeros((0, W.shape[1]), dtype=np.float32)
    spec = scipy.fft.rfft(frames * _window(n_fft), axis=1)
    power = (spec.real ** 2 + spec.imag ** 2).astype(np.float32)
    log_power = power @ W
    floor = log_power.max(axis=1, keepdims=True) * RELATIVE_POWER_FLOOR + ABSOLUTE_POWER_FLOOR
    return (10.0 * np.log10(log_power + floor)).astype(np.float32)


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
