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
from collections.abc import Iterable, Iterator, Sequence
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
    peak_time, peak_semitone, peak_rank : arrays, optional
        The peaks themselves with their density rank (query side: the matcher forms a
        sparser landmark set from the strongest of them, see :func:`sparser`).
    spectrogram : tuple of float32 arrays, optional
        The dB log-frequency spectrogram the peaks were picked on, in consecutive runs of
        frames (``np.concatenate`` gives the ``(n_frames, n_log_bins)`` whole), when asked
        for: another peak density of the same audio then needs no second analysis (see
        :func:`peaks_from_blocks`).  Runs of one analysis block, not one array: freeing a
        28 MB array after each 10-minute window raised glibc's mmap threshold and kept
        ~100 MB more of a 3-hour file's scan resident.
    """

    anchor_time: np.ndarray
    anchor_semitone: np.ndarray
    delta_semitone: np.ndarray
    delta_time: np.ndarray
    duration: float
    n_peaks: int
    audio: np.ndarray | None = None  # the analysed samples at cfg.sr, when asked for
    peak_time: np.ndarray | None = None
    peak_semitone: np.ndarray | None = None
    peak_rank: np.ndarray | None = None
    spectrogram: tuple[np.ndarray, ...] | None = None

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
                      peak_cfg: PeakConfig, min_chunk_frames: int = 2048,
                      return_rank: bool = False,
                      spectrogram_rows: list[np.ndarray] | None = None,
                      spectrogram: Sequence[np.ndarray] | None = None) -> tuple:
    """Peaks of a stream of mono blocks at ``cfg.sr``.

    ``spectrogram_rows``, when given, receives the spectrogram in consecutive runs of
    frames (``np.concatenate`` gives the whole signal's, as
    :func:`~earmark.fingerprint.spectrogram.log_spectrogram` computes it).
    ``spectrogram``, when given, is that of the same stream in runs of frames (kept by an
    earlier analysis, ``Landmarks.spectrogram``): its frames are read instead of
    computed, the blocks then only set the pace, and the peaks are those of a fresh
    analysis to the last bit (another peak density of the same audio costs a third of an
    analysis).

    Returns
    -------
    times, semitones : float64 arrays
        Peak positions (frames from the start of the stream, semitones).
    duration : float
        Seconds of audio consumed.
    rank : int32 array
        Only with ``return_rank``: each peak's density rank
        (:func:`earmark.fingerprint.peaks.density_rank`).
    """
    hop, n_fft = cfg.hop_length, cfg.n_fft
    margin = context_frames(cfg, peak_cfg)
    run_starts = None if spectrogram is None else \
        np.cumsum([0] + [run.shape[0] for run in spectrogram])
    buf = np.zeros(n_fft // 2, dtype=np.float32)  # centre padding of frame 0
    buf_frame0 = 0      # absolute frame index of buf[0]
    next_core = 0       # first frame whose peaks are not emitted yet
    n_samples = 0
    out_t: list[np.ndarray] = []
    out_f: list[np.ndarray] = []
    out_r: list[np.ndarray] = []

    def process(final: bool) -> None:
        nonlocal buf, buf_frame0, next_core
        if buf.shape[0] < n_fft:
            return
        n_avail = 1 + (buf.shape[0] - n_fft) // hop
        last = buf_frame0 + n_avail
        core_end = last if final else last - margin
        if core_end - next_core < (1 if final else min_chunk_frames):
            return
        if spectrogram is not None:     # frames depend only on their own samples
            S = _frame_range(spectrogram, run_starts, buf_frame0, last)
        else:
            S = log_spectrogram_frames(buf[: (n_avail - 1) * hop + n_fft], cfg.sr, n_fft,
                                       hop, cfg.fmin_hz, cfg.fmax_hz, cfg.bins_per_semitone)
        t, f, r = pick_peaks(S, cfg, peak_cfg, first_frame=next_core - buf_frame0,
                             end_frame=core_end - buf_frame0, frame_offset=buf_frame0,
                             return_rank=True)
        out_t.append(t)
        out_f.append(f)
        out_r.append(r)
        if spectrogram_rows is not None:    # a copy: S (with its context) can go
            spectrogram_rows.append(S[next_core - buf_frame0:core_end - buf_frame0].copy())
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
    if return_rank:
        ranks = np.concatenate(out_r) if out_r else np.zeros(0, np.int32)
        return times[keep], semis[keep], n_samples / cfg.sr, ranks[keep]
    return times[keep], semis[keep], n_samples / cfg.sr


def _with_peaks(lm: Landmarks, side: str, times: np.ndarray, semis: np.ndarray,
                rank: np.ndarray) -> Landmarks:
    """Query landmarks keep their peaks (for :func:`sparser`); catalogue ones need not."""
    if side == "index":
        return lm
    return dataclasses.replace(lm, peak_time=times, peak_semitone=semis, peak_rank=rank)


def sparser(lm: Landmarks, cfg: FingerprintConfig, peak_cfg: PeakConfig,
            max_dt_frames: float | None = None) -> Landmarks:
    """The landmarks the same audio would give at a sparser peak density.

    Only the peaks whose density rank is below ``peak_cfg``'s per-window count are kept
    (exactly the peaks that density would pick: same candidates, same window) and paired
    with ``peak_cfg.fan_out``.  The matcher uses this to search transform hypotheses with
    the strongest landmarks first (:func:`earmark.match.search`).

    Raises
    ------
    ValueError
        If ``lm`` does not carry its peaks (catalogue-side landmarks).
    """
    if lm.peak_time is None or lm.peak_semitone is None or lm.peak_rank is None:
        raise ValueError("these landmarks do not carry their peaks (query side only)")
    per_window = max(1, int(round(peak_cfg.peaks_per_second * peak_cfg.density_window_seconds)))
    keep = lm.peak_rank < per_window
    return landmarks_from_peaks(lm.peak_time[keep], lm.peak_semitone[keep], cfg, peak_cfg,
                                lm.duration, max_dt_frames)


def _frame_range(runs: Sequence[np.ndarray], run_starts: np.ndarray, first: int,
                 end: int) -> np.ndarray:
    """Frames ``[first, end)`` of a spectrogram kept in consecutive runs (``run_starts``:
    the first frame of each, and the total at the end); a view when one run holds them.

    >>> runs = (np.zeros((3, 2)), np.ones((2, 2)))
    >>> _frame_range(runs, np.array([0, 3, 5]), 2, 4)[:, 0].tolist()
    [0.0, 1.0]
    """
    if end > run_starts[-1]:
        raise ValueError("the spectrogram is shorter than the audio it stands for")
    k0 = int(np.searchsorted(run_starts, first, side="right")) - 1
    k1 = int(np.searchsorted(run_starts, end, side="left"))
    parts = [runs[k][max(first - run_starts[k], 0):end - run_starts[k]] for k in range(k0, k1)]
    return parts[0] if len(parts) == 1 else np.concatenate(parts)


def _chunks(y: np.ndarray, block: int) -> Iterator[np.ndarray]:
    for start in range(0, y.shape[0], block):
        yield y[start:start + block]


def fingerprint_audio(y: np.ndarray, cfg: FingerprintConfig, side: str = "index",
                      max_dt_frames: float | None = None,
                      keep_spectrogram: bool = False,
                      spectrogram: Sequence[np.ndarray] | None = None) -> Landmarks:
    """Landmarks of mono samples already at ``cfg.sr``.

    Parameters
    ----------
    y : np.ndarray
        Mono float samples at ``cfg.sr``.
    side : {"index", "query"}
        Which peak density to use (catalogue side sparse, query side dense).
    keep_spectrogram : bool
        Also return the spectrogram (``Landmarks.spectrogram``, 48 kB per second).
    spectrogram : sequence of np.ndarray, optional
        ``y``'s spectrogram, kept by an earlier analysis (``Landmarks.spectrogram``):
        only the peaks are picked (:func:`peaks_from_blocks`).

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
    rows: list[np.ndarray] | None = [] if keep_spectrogram else None
    times, semis, duration, rank = peaks_from_blocks(
        _chunks(np.asarray(y, np.float32), cfg.sr * 60), cfg, peak_cfg, return_rank=True,
        spectrogram_rows=rows, spectrogram=spectrogram)
    lm = _with_peaks(landmarks_from_peaks(times, semis, cfg, peak_cfg, duration, max_dt_frames),
                     side, times, semis, rank)
    return _with_spectrogram(lm, rows)


def _with_spectrogram(lm: Landmarks, rows: list[np.ndarray] | None) -> Landmarks:
    return lm if not rows else dataclasses.replace(lm, spectrogram=tuple(rows))


def fingerprint_file(path: str | os.PathLike, cfg: FingerprintConfig, side: str = "index",
                     max_dt_frames: float | None = None,
                     block_seconds: float = 60.0, keep_audio: bool = False,
                     keep_spectrogram: bool = False) -> Landmarks:
    """Decode ``path`` block by block and return its landmarks (see :func:`fingerprint_audio`).

    ``keep_audio`` also returns the decoded samples at ``cfg.sr`` (``Landmarks.audio``),
    so another analysis (the derivation tier's chroma) needs no second decode;
    ``keep_spectrogram`` the spectrogram (``Landmarks.spectrogram``).

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

    rows: list[np.ndarray] | None = [] if keep_spectrogram else None
    times, semis, duration, rank = peaks_from_blocks(blocks(), cfg, peak_cfg, return_rank=True,
                                                     spectrogram_rows=rows)
    check_fingerprintable(os.fspath(path), duration, times.shape[0])
    lm = _with_spectrogram(_with_peaks(landmarks_from_peaks(times, semis, cfg, peak_cfg, duration,
                                                            max_dt_frames),
                                       side, times, semis, rank), rows)
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
