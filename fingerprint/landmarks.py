"""Peaks -> landmarks (anchor/target peak pairs), and the whole front end as one call.

Pipeline of this package::

    file --audio.iter_audio_blocks--> samples --spectrogram--> dB log-freq frames
         --peaks.pick_peaks--> (time, semitone) --pair_peaks--> landmarks --hashes--> keys

:func:`peaks_from_blocks` runs the first three stages block by block with overlapping
context (:func:`earmark.fingerprint.peaks.context_frames`), so a 3-hour file uses bounded
memory and gives exactly the peaks the whole-file analysis would.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Iterable, Iterator
from dataclasses import dataclass

import numpy as np
from numba import njit

from . import audio as audio_io
from .config import FingerprintConfig, PeakConfig
from .hashes import landmark_keys
from .peaks import context_frames, pick_peaks
from .spectrogram import log_spectrogram_frames


@dataclass(frozen=True)
class Landmarks:
    """Landmarks of one signal, continuous coordinates (one entry per pair).

    Attributes
    ----------
    anchor_time : float64 array
        Anchor time, frames.
    anchor_semitone : float64 array
        Anchor frequency, semitones above ``fmin_hz``.
    delta_semitone : float64 array
        Target minus anchor frequency, semitones.
    delta_time : float64 array
        Target minus anchor time, frames.
    duration : float
        Seconds of audio analysed.
    n_peaks : int
        Number of peaks the landmarks were formed from.
    """

    anchor_time: np.ndarray
    anchor_semitone: np.ndarray
    delta_semitone: np.ndarray
    delta_time: np.ndarray
    duration: float
    n_peaks: int
    audio: np.ndarray | None = None  # the analysed samples at cfg.sr, when asked for

    def __len__(self) -> int:
        return int(self.anchor_time.shape[0])

    def keys(self) -> np.ndarray:
        """Catalogue-side keys (int64, -1 outside the layout)."""
        return landmark_keys(self.anchor_semitone, self.delta_semitone, self.delta_time)


@njit(cache=True)
def pair_peaks(times: np.ndarray, semitones: np.ndarray, fan_out: int,
               min_dt: float, max_dt: float, max_df: float):
    """Pair each peak with up to ``fan_out`` following peaks in the target zone.

    The target zone is ``min_dt <= dt <= max_dt`` frames and ``|df| <= max_df`` semitones.
    ``times`` must be ascending.

    Returns
    -------
    anchor_index, target_index : int64 arrays
    """
    n = times.shape[0]
    cap = n * fan_out + 1
    a_idx = np.empty(cap, dtype=np.int64)
    b_idx = np.empty(cap, dtype=np.int64)
    m = 0
    for i in range(n):
        found = 0
        j = i + 1
        while j < n and found < fan_out:
            dt = times[j] - times[i]
            if dt > max_dt:
                break
            if dt >= min_dt and abs(semitones[j] - semitones[i]) <= max_df:
                a_idx[m] = i
                b_idx[m] = j
                m += 1
                found += 1
            j += 1
    return a_idx[:m], b_idx[:m]


def landmarks_from_peaks(times: np.ndarray, semitones: np.ndarray, cfg: FingerprintConfig,
                         peak_cfg: PeakConfig, duration: float,
                         max_dt_frames: float | None = None) -> Landmarks:
    """Form landmarks from peaks (see :func:`pair_peaks`).

    ``max_dt_frames`` widens the time zone (the matcher does so for queries, whose time
    axis may be compressed or stretched relative to the catalogue).
    """
    max_dt = float(cfg.max_pair_frames if max_dt_frames is None else max_dt_frames)
    a, b = pair_peaks(times, semitones, peak_cfg.fan_out, float(cfg.min_pair_frames), max_dt,
                      float(cfg.max_pair_semitones))
    return Landmarks(anchor_time=times[a], anchor_semitone=semitones[a],
                     delta_semitone=semitones[b] - semitones[a],
                     delta_time=times[b] - times[a], duration=float(duration),
                     n_peaks=int(times.shape[0]))


def peaks_from_blocks(blocks: Iterable[np.ndarray], cfg: FingerprintConfig,
                      peak_cfg: PeakConfig, min_chunk_frames: int = 2048
                      ) -> tuple[np.ndarray, np.ndarray, float]:
    """Peaks of a stream of mono blocks at ``cfg.sr``.

    Returns
    -------
    times, semitones : float64 arrays
        Peak positions (frames from the start of the stream, semitones).
    duration : float
        Seconds of audio consumed.
    """
    hop, n_fft = cfg.hop_length, cfg.n_fft
    margin = context_frames(cfg, peak_cfg)
    buf = np.zeros(n_fft // 2, dtype=np.float32)  # centre padding of frame 0
    buf_frame0 = 0      # absolute frame index of buf[0]
    next_core = 0       # first frame whose peaks are not emitted yet
    n_samples = 0
    out_t: list[np.ndarray] = []
    out_f: list[np.ndarray] = []

    def process(final: bool) -> None:
        nonlocal buf, buf_frame0, next_core
        if buf.shape[0] < n_fft:
            return
        n_avail = 1 + (buf.shape[0] - n_fft) // hop
        last = buf_frame0 + n_avail
        core_end = last if final else last - margin
        if core_end - next_core < (1 if final else min_chunk_frames):
            return
        S = log_spectrogram_frames(buf[: (n_avail - 1) * hop + n_fft], cfg.sr, n_fft, hop,
                                   cfg.fmin_hz, cfg.fmax_hz, cfg.bins_per_semitone)
        t, f = pick_peaks(S, cfg, peak_cfg, first_frame=next_core - buf_frame0,
                          end_frame=core_end - buf_frame0, frame_offset=buf_frame0)
        out_t.append(t)
        out_f.append(f)
        next_core = core_end
        keep_from = max(buf_frame0, next_core - margin)
        buf = buf[(keep_from - buf_frame0) * hop:]
        buf_frame0 = keep_from

    for block in blocks:
        block = np.asarray(block, dtype=np.float32)
        n_samples += block.shape[0]
        buf = np.concatenate([buf, block])
        process(final=False)
    # End padding: frames are centred, the last one reaches n_fft/2 past the end.
    buf = np.concatenate([buf, np.zeros(n_fft // 2, dtype=np.float32)])
    process(final=True)
    times = np.concatenate(out_t) if out_t else np.zeros(0)
    semis = np.concatenate(out_f) if out_f else np.zeros(0)
    # Frames past the last real sample carry only padding.
    last_frame = n_samples / hop
    keep = times <= last_frame
    return times[keep], semis[keep], n_samples / cfg.sr


def _chunks(y: np.ndarray, block: int) -> Iterator[np.ndarray]:
    for start in range(0, y.shape[0], block):
        yield y[start:start + block]


def fingerprint_audio(y: np.ndarray, cfg: FingerprintConfig, side: str = "index",
                      max_dt_frames: float | None = None) -> Landmarks:
    """Landmarks of mono samples already at ``cfg.sr``.

    Parameters
    ----------
    y : np.ndarray
        Mono float samples at ``cfg.sr``.
    side : {"index", "query"}
        Which peak density to use (catalogue side sparse, query side dense).

    Examples
    --------
    >>> import numpy as np
    >>> from earmark.fingerprint.config import DEFAULT
    >>> rng = np.random.default_rng(0)
    >>> y = rng.standard_normal(DEFAULT.sr * 5).astype(np.float32) * np.repeat(rng.random(50), DEFAULT.sr // 10).astype(np.float32)
    >>> lm = fingerprint_audio(y, DEFAULT)
    >>> len(lm) > 0
    True
    """
    peak_cfg = cfg.index if side == "index" else cfg.query
    times, semis, duration = peaks_from_blocks(_chunks(np.asarray(y, np.float32), cfg.sr * 60),
                                               cfg, peak_cfg)
    return landmarks_from_peaks(times, semis, cfg, peak_cfg, duration, max_dt_frames)


def fingerprint_file(path: str | os.PathLike, cfg: FingerprintConfig, side: str = "index",
                     max_dt_frames: float | None = None,
                     block_seconds: float = 60.0, keep_audio: bool = False) -> Landmarks:
    """Decode ``path`` block by block and return its landmarks (see :func:`fingerprint_audio`).

    ``keep_audio`` also returns the decoded samples at ``cfg.sr`` (``Landmarks.audio``),
    so another analysis (the derivation tier's chroma) needs no second decode.

    Raises
    ------
    earmark.errors.AudioError
        When the file cannot be decoded, or is too short or silent to fingerprint.
    """
    peak_cfg = cfg.index if side == "index" else cfg.query
    kept: list[np.ndarray] = []

    def blocks() -> Iterator[np.ndarray]:
        for b in audio_io.iter_audio_blocks(path, cfg.sr, block_seconds=block_seconds):
            if keep_audio:
                kept.append(b)
            yield b

    times, semis, duration = peaks_from_blocks(blocks(), cfg, peak_cfg)
    check_fingerprintable(os.fspath(path), duration, times.shape[0])
    lm = landmarks_from_peaks(times, semis, cfg, peak_cfg, duration, max_dt_frames)
    if keep_audio:
        lm = dataclasses.replace(lm, audio=np.concatenate(kept) if kept else np.zeros(0, np.float32))
    return lm


#: Audio shorter than this cannot carry enough landmarks to be evidence of anything.
MIN_SECONDS = 1.0


def check_fingerprintable(name: str, duration: float, n_peaks: int) -> None:
    """Raise :class:`~earmark.errors.AudioError` for audio that is too short or silent."""
    from earmark.errors import AudioError

    if duration <= 0:
        raise AudioError(f"{name}: no audio samples")
    if duration < MIN_SECONDS:
        raise AudioError(f"{name}: too short ({duration:.1f} s; need at least {MIN_SECONDS:.0f} s)")
    if n_peaks == 0:
        raise AudioError(f"{name}: silent or featureless audio (no spectral peaks)")
