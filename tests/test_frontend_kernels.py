"""The fast front-end kernels against plain dense references (same values, same peaks)."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.fft

from earmark.fingerprint import peaks as peaks_mod
from earmark.fingerprint import spectrogram as spec_mod
from earmark.fingerprint.config import DEFAULT
from earmark.fingerprint.spectrogram import (ABSOLUTE_POWER_FLOOR, RELATIVE_POWER_FLOOR,
                                             log_frequency_filterbank, log_spectrogram,
                                             log_spectrogram_frames, sparse_filterbank)
from earmark.synth import synth_song

CFG = DEFAULT
SR = CFG.sr


def dense_log_spectrogram(y: np.ndarray, sr: int, n_fft: int, hop_length: int, fmin_hz: float,
                          fmax_hz: float, bins_per_semitone: int) -> np.ndarray:
    """Reference: centred frames, Hann window, float64 FFT, dense filterbank product."""
    pad = np.zeros(n_fft // 2)
    yp = np.concatenate([pad, np.asarray(y, np.float64), pad])
    n_frames = 1 + (yp.shape[0] - n_fft) // hop_length
    idx = np.arange(n_fft)[None, :] + hop_length * np.arange(n_frames)[:, None]
    window = np.hanning(n_fft + 1)[:-1]
    spec = np.fft.rfft(yp[idx] * window, axis=1)
    W = log_frequency_filterbank(sr, n_fft, fmin_hz, fmax_hz, bins_per_semitone).astype(np.float64)
    power = (np.abs(spec) ** 2) @ W
    floor = power.max(axis=1, keepdims=True) * RELATIVE_POWER_FLOOR + ABSOLUTE_POWER_FLOOR
    return 10.0 * np.log10(power + floor)


def _signals():
    rng = np.random.default_rng(7)
    t = np.arange(3 * SR) / SR
    chirp = 0.4 * np.sin(2 * np.pi * (100 * t + 600 * t ** 2))
    quiet = np.zeros(3 * SR)
    quiet[SR:SR + 800] = 1e-3 * rng.standard_normal(800)  # mostly digital silence
    return {
        "song": synth_song(seed=5, seconds=6.0, sr=SR),
        "noise": (0.1 * rng.standard_normal(4 * SR)).astype(np.float32),
        "chirp": chirp.astype(np.float32),
        "quiet": quiet.astype(np.float32),
    }


@pytest.mark.parametrize("name", ["song", "noise", "chirp", "quiet"])
@pytest.mark.parametrize("sr,n_fft,hop", [(8000, 1024, 128), (11025, 2048, 256), (8000, 512, 64)])
def test_spectrogram_matches_dense_reference(name, sr, n_fft, hop):
    y = _signals()[name]
    args = (sr, n_fft, hop, CFG.fmin_hz, CFG.fmax_hz, CFG.bins_per_semitone)
    got = log_spectrogram(y, *args)
    want = dense_log_spectrogram(y, *args)
    assert got.dtype == np.float32 and got.shape == want.shape
    # Bins within 60 dB of the signal's strongest are float32-accurate; further down the
    # float32 FFT's own rounding noise is what is measured (the float64 reference has none).
    near = want > want.max() - 60
    assert near.sum() > 100
    np.testing.assert_allclose(got[near], want[near], rtol=0, atol=1e-3)
    assert np.all(got >= got.max(axis=1, keepdims=True) - 100.001)


def test_spectrogram_equals_float32_dense_product():
    """The fused kernel computes what ``|rfft|**2 @ W`` (float32) does, to float32 rounding."""
    y = synth_song(seed=9, seconds=8.0, sr=SR)
    args = (SR, CFG.n_fft, CFG.hop_length, CFG.fmin_hz, CFG.fmax_hz, CFG.bins_per_semitone)
    pad = np.zeros(CFG.n_fft // 2, np.float32)
    yp = np.concatenate([pad, y, pad])
    frames = spec_mod.frame_signal(yp, CFG.n_fft, CFG.hop_length)
    spec = scipy.fft.rfft(frames * spec_mod._window(CFG.n_fft), axis=1)
    power = (spec.real ** 2 + spec.imag ** 2).astype(np.float32) @ log_frequency_filterbank(
        SR, CFG.n_fft, CFG.fmin_hz, CFG.fmax_hz, CFG.bins_per_semitone)
    floor = power.max(axis=1, keepdims=True) * RELATIVE_POWER_FLOOR + ABSOLUTE_POWER_FLOOR
    want = 10.0 * np.log10(power + floor)
    got = log_spectrogram_frames(yp, *args)
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-3)


def test_spectrogram_frames_do_not_depend_on_chunking(monkeypatch):
    y = synth_song(seed=3, seconds=5.0, sr=SR)
    whole = log_spectrogram(y, SR)
    for chunk in (1, 7, 64, 10_000):
        monkeypatch.setattr(spec_mod, "CHUNK_FRAMES", chunk)
        np.testing.assert_array_equal(log_spectrogram(y, SR), whole)


def test_sparse_filterbank_is_the_dense_one():
    W = log_frequency_filterbank(SR, CFG.n_fft, CFG.fmin_hz, CFG.fmax_hz, CFG.bins_per_semitone)
    starts, offsets, weights = sparse_filterbank(SR, CFG.n_fft, CFG.fmin_hz, CFG.fmax_hz,
                                                 CFG.bins_per_semitone)
    dense = np.zeros_like(W)
    for k in range(W.shape[1]):
        n = offsets[k + 1] - offsets[k]
        dense[starts[k]:starts[k] + n, k] = weights[offsets[k]:offsets[k + 1]]
    np.testing.assert_array_equal(dense, W)


def naive_max_filter(S: np.ndarray, rf: int, rb: int) -> np.ndarray:
    n_frames, n_bins = S.shape
    out = np.empty_like(S)
    for t in range(n_frames):
        for b in range(n_bins):
            out[t, b] = S[max(0, t - rf):t + rf + 1, max(0, b - rb):b + rb + 1].max()
    return out


def naive_candidates(S, rf, rb, pf, min_prom, first, end):
    """The candidate rule written out plainly (dense max filter and dense bin means)."""
    n_frames, n_bins = S.shape
    local_max = naive_max_filter(S, rf, rb)
    csum = np.concatenate([np.zeros((1, n_bins)), np.cumsum(S.astype(np.float64), axis=0)])
    out = []
    for t in range(max(first, 0), min(end, n_frames)):
        lo, hi = max(0, t - pf), min(n_frames, t + pf + 1)
        for b in range(1, n_bins - 1):
            v = S[t, b]
            if v != local_max[t, b]:
                continue
            p = v - np.float32((csum[hi, b] - csum[lo, b]) / (hi - lo))
            if p < min_prom:
                continue
            if (t > 0 and S[t - 1, b] == v) or S[t, b - 1] == v:
                continue
            out.append((t, b, p))
    return out


@pytest.mark.parametrize("tile", [1, 5, peaks_mod.TILE_FRAMES])
@pytest.mark.parametrize("rf,rb", [(6, 6), (0, 0), (2, 9), (40, 3)])
def test_candidate_peaks_match_naive_rule(tile, rf, rb):
    # Quantised values make plateaus and exact ties common.
    rng = np.random.default_rng(rf * 100 + rb)
    S = np.round(rng.standard_normal((150, 40)) * 4).astype(np.float32)
    S[60:80] = -100.0
    np.testing.assert_array_equal(peaks_mod._max_filter_2d(S, rf, rb, tile),
                                  naive_max_filter(S, rf, rb))
    for first, end in [(-10, 1000), (0, 150), (37, 91), (149, 150), (5, 5)]:
        frames, bins, prom = peaks_mod.find_candidate_peaks(S, rf, rb, 31, 3.0, first,
                                                            end, tile)
        want = naive_candidates(S, rf, rb, 31, 3.0, first, end)
        assert frames.shape[0] == len(want)
        want_t = np.array([t for t, _, _ in want], np.float64)
        want_b = np.array([b for _, b, _ in want], np.float64)
        assert np.all(np.abs(frames - want_t) <= 0.5) and np.all(np.abs(bins - want_b) <= 0.5)
        np.testing.assert_array_equal(prom, np.array([p for _, _, p in want], np.float32))
