"""Front end: spectrogram, peaks, landmark keys and postings, on signals with known answers."""

from __future__ import annotations

import numpy as np
import pytest

from earmark.fingerprint import hashes
from earmark.fingerprint.config import DEFAULT, PRESETS
from earmark.fingerprint.hashes import (landmark_keys, pack_key, pack_posting, unpack_key,
                                        unpack_posting)
from earmark.fingerprint.landmarks import (fingerprint_audio, fingerprint_file,
                                           landmarks_from_peaks, peaks_from_blocks, sparser)
from earmark.fingerprint.peaks import pick_peaks
from earmark.fingerprint.spectrogram import log_frequency_filterbank, log_spectrogram
from earmark.synth import synth_noise, synth_song

CFG = DEFAULT
SR = CFG.sr
FRAME = CFG.hop_length / SR  # seconds per frame


def semitones(f_hz: float) -> float:
    """Frequency on the peak axis: semitones above fmin."""
    return 12.0 * np.log2(f_hz / CFG.fmin_hz)


def tone_burst(y: np.ndarray, f_hz: float, start: float, seconds: float, amp: float = 0.3,
               phase: float = 0.0) -> float:
    """Add a Hann-windowed sine burst to ``y`` (in place); returns its centre time (s)."""
    n = int(round(seconds * SR))
    a = int(round(start * SR))
    t = np.arange(n) / SR
    y[a:a + n] += (amp * np.hanning(n) * np.sin(2 * np.pi * f_hz * t + phase)).astype(np.float32)
    return (a + (n - 1) / 2) / SR


def nearest_peak(times: np.ndarray, semis: np.ndarray, t_frames: float, st: float,
                 max_frames: float = 1.0) -> tuple[float, float] | None:
    """The peak within ``max_frames`` of ``t_frames`` closest in frequency to ``st``."""
    near = np.flatnonzero(np.abs(times - t_frames) <= max_frames)
    if near.size == 0:
        return None
    j = near[np.argmin(np.abs(semis[near] - st))]
    return float(times[j]), float(semis[j])


def peaks(y: np.ndarray, side: str = "query") -> tuple[np.ndarray, np.ndarray]:
    """Whole-signal peaks (one spectrogram of the whole signal, no blocks)."""
    pc = CFG.query if side == "query" else CFG.index
    return pick_peaks(log_spectrogram(y, SR, CFG.n_fft, CFG.hop_length, CFG.fmin_hz, CFG.fmax_hz,
                                      CFG.bins_per_semitone), CFG, pc)


# --------------------------------------------------------------------------- peaks


BURSTS = [(0.50, 440.0), (1.30, 660.0), (2.10, 1000.0), (2.90, 250.0), (3.70, 1800.0),
          (4.50, 3000.0), (5.30, 330.0)]


@pytest.mark.parametrize("side", ["index", "query"])
def test_tone_bursts_give_peaks_at_their_time_and_pitch(side):
    y = np.zeros(int(6.2 * SR), np.float32)
    expected = [(tone_burst(y, f, t, 0.1), f) for t, f in BURSTS]
    times, semis = peaks(y, side)
    assert np.all(np.diff(times) >= 0), "peaks must be in time order"
    for centre, f in expected:
        want_t, want_st = centre / FRAME, semitones(f)
        got = nearest_peak(times, semis, want_t, want_st)
        assert got is not None, f"no peak within 1 frame of the {f:.0f} Hz burst at {centre:.2f} s"
        assert abs(got[0] - want_t) <= 1.0
        assert abs(got[1] - want_st) <= 0.2, (f, got, want_st)


def test_single_440_hz_burst_at_known_time():
    y = np.zeros(3 * SR, np.float32)
    centre = tone_burst(y, 440.0, 1.2, 0.08, amp=0.5)
    times, semis = peaks(y)
    # The strongest bin at the burst is the 440 Hz one, and it is a peak.
    got = nearest_peak(times, semis, centre / FRAME, semitones(440.0))
    assert got is not None
    assert abs(got[0] - centre / FRAME) <= 1.0
    assert abs(got[1] - 12 * np.log2(440.0 / CFG.fmin_hz)) <= 0.2
    # Nothing is picked far from the burst but the window's own leakage: every peak
    # lies within the analysis window (+- n_fft/2) of the burst.
    reach = (CFG.n_fft / 2 + 0.04 * SR) / CFG.hop_length + 1
    assert np.all(np.abs(times - centre / FRAME) <= reach), times


def test_silence_and_a_steady_tone_give_no_peaks():
    assert peaks(np.zeros(3 * SR, np.float32))[0].size == 0
    # A constant-amplitude sine is not "prominent" anywhere in time.
    t = np.arange(4 * SR) / SR
    steady = (0.3 * np.sin(2 * np.pi * 523.25 * t)).astype(np.float32)
    times, _ = peaks(steady)
    inner = times[(times > 40) & (times < 4 * SR / CFG.hop_length - 40)]
    assert inner.size == 0, inner


def test_filterbank_centre_frequencies():
    W = log_frequency_filterbank(SR, CFG.n_fft, CFG.fmin_hz, CFG.fmax_hz, CFG.bins_per_semitone)
    assert W.shape == (CFG.n_fft // 2 + 1, CFG.n_log_bins)
    assert np.all(W >= 0)
    assert np.allclose(W.sum(axis=0), 1.0, atol=1e-5)  # every log bin sees energy
    linear_hz = np.arange(W.shape[0]) * SR / CFG.n_fft
    centres = CFG.fmin_hz * 2.0 ** (np.arange(W.shape[1]) / (12.0 * CFG.bins_per_semitone))
    assert centres[-1] <= CFG.fmax_hz < centres[-1] * 2 ** (1 / 36) + 1e-9
    bin_hz = SR / CFG.n_fft
    # Each filter's heaviest linear bin is the one nearest its centre frequency (a
    # centre almost exactly between two linear bins weighs them equally: 0.05 Hz slack).
    heaviest = linear_hz[W.argmax(axis=0)]
    assert np.all(np.abs(heaviest - centres) <= bin_hz / 2 + 0.05)
    # A sine at a bin's centre frequency lights that bin up most.  Below ~200 Hz one
    # linear FFT bin (7.8 Hz) spans several log bins, so allow one bin there.
    t = np.arange(SR) / SR
    for k in range(0, W.shape[1], 2):
        S = log_spectrogram(np.sin(2 * np.pi * centres[k] * t).astype(np.float32), SR)
        got = int(S[10:-10].mean(axis=0).argmax())
        tol = 0 if centres[k] > 205.0 else 1
        assert abs(got - k) <= tol, (k, centres[k], got)


# --------------------------------------------------------------------------- hash layout


def test_key_pack_unpack_round_trip_full_bit_range():
    rng = np.random.default_rng(42)
    n = 20000
    f1 = rng.integers(0, 1 << hashes.F1_BITS, n)
    df = rng.integers(0, 1 << hashes.DF_BITS, n)
    dt = rng.integers(0, 1 << hashes.DT_BITS, n)
    # Include the corners of every field.
    f1[:4] = [0, 0, (1 << hashes.F1_BITS) - 1, (1 << hashes.F1_BITS) - 1]
    df[:4] = [0, (1 << hashes.DF_BITS) - 1, 0, (1 << hashes.DF_BITS) - 1]
    dt[:4] = [(1 << hashes.DT_BITS) - 1, 0, 0, (1 << hashes.DT_BITS) - 1]
    keys = pack_key(f1, df, dt)
    assert keys.dtype == np.uint32
    assert int(keys.max()) < (1 << hashes.KEY_BITS)
    g1, gd, gt = unpack_key(keys)
    np.testing.assert_array_equal(g1, f1)
    np.testing.assert_array_equal(gd, df)
    np.testing.assert_array_equal(gt, dt)
    # Injective: distinct coordinates, distinct keys.
    coords = f1 * 10**6 + df * 10**3 + dt
    assert np.unique(coords).size == np.unique(keys).size
    assert hashes.KEY_BITS == hashes.TABLE_BITS + hashes.LO_BITS and hashes.LO_BITS <= 8


def test_posting_pack_unpack_round_trip_full_bit_range():
    rng = np.random.default_rng(7)
    n = 20000
    slot = rng.integers(0, hashes.MAX_SLOTS, n)
    frame = rng.integers(0, hashes.MAX_SLOT_FRAMES, n)
    slot[:2] = [0, hashes.MAX_SLOTS - 1]
    frame[:2] = [hashes.MAX_SLOT_FRAMES - 1, 0]
    p = pack_posting(slot, frame)
    assert p.dtype == np.uint32
    s2, f2 = unpack_posting(p)
    np.testing.assert_array_equal(s2, slot)
    np.testing.assert_array_equal(f2, frame)


def test_landmark_keys_quantise_in_range_values():
    rng = np.random.default_rng(3)
    n = 5000
    f1 = rng.uniform(0, 63.4, n)
    df = rng.uniform(-21.0, 21.0, n)
    dt = rng.uniform(3.0, 66.9, n)
    keys = landmark_keys(f1, df, dt)
    assert np.all(keys >= 0)
    want = pack_key(np.floor(f1 / hashes.F1_STEP_SEMITONES).astype(np.int64),
                    (np.floor(df / hashes.DF_STEP_SEMITONES) + hashes.DF_ZERO).astype(np.int64),
                    np.floor(dt - hashes.DT_MIN_FRAMES).astype(np.int64))
    np.testing.assert_array_equal(keys, want.astype(np.int64))
    # And the coordinates come back (to within their bins).
    g1, gd, gt = unpack_key(keys.astype(np.uint32))
    assert np.all(np.abs(g1 * hashes.F1_STEP_SEMITONES + 0.25 - f1) <= 0.25 + 1e-9)
    assert np.all(np.abs((gd - hashes.DF_ZERO + 0.5) * hashes.DF_STEP_SEMITONES - df)
                  <= hashes.DF_STEP_SEMITONES / 2 + 1e-9)
    assert np.all(np.abs(gt + hashes.DT_MIN_FRAMES + 0.5 - dt) <= 0.5 + 1e-9)


@pytest.mark.parametrize("f1, df, dt", [
    (-0.01, 0.0, 10.0),      # anchor below fmin
    (64.0, 0.0, 10.0),       # anchor at/above 128 half-semitone bins
    (10.0, -21.4, 10.0),     # df below the signed range
    (10.0, 21.34, 10.0),     # df above it
    (10.0, 0.0, 2.99),       # dt shorter than the 48 ms minimum
    (10.0, 0.0, 67.0),       # dt past the 6-bit range
])
def test_landmark_keys_out_of_range_are_minus_one(f1, df, dt):
    keys = landmark_keys(np.array([f1, 10.0]), np.array([df, 0.0]), np.array([dt, 10.0]))
    assert keys[0] == -1
    assert keys[1] >= 0  # its in-range neighbour is unaffected


# --------------------------------------------------------------------------- streaming


def _irregular_blocks(y: np.ndarray, seed: int):
    rng = np.random.default_rng(seed)
    i = 0
    while i < y.shape[0]:
        n = int(rng.integers(1, 3000))
        yield y[i:i + n]
        i += n


@pytest.mark.parametrize("side", ["index", "query"])
def test_blockwise_analysis_equals_whole_signal(side):
    y = synth_song(seed=31, seconds=40.0, sr=SR)
    pc = CFG.index if side == "index" else CFG.query
    whole_t, whole_f = peaks(y, side)
    assert whole_t.size > 100
    # Small, irregular blocks (1..3000 samples), and a short processing chunk so that
    # many chunk boundaries fall inside the piece.
    for min_chunk in (40, 333):
        t, f, duration = peaks_from_blocks(_irregular_blocks(y, min_chunk), CFG, pc,
                                           min_chunk_frames=min_chunk)
        assert duration == pytest.approx(40.0, abs=1 / SR)
        assert t.shape == whole_t.shape, (t.size, whole_t.size)
        np.testing.assert_allclose(t, whole_t, rtol=0, atol=1e-6)
        np.testing.assert_allclose(f, whole_f, rtol=0, atol=1e-6)
    # fingerprint_audio (array API) forms its landmarks from the same peaks.
    lm = fingerprint_audio(y, CFG, side=side)
    ref = landmarks_from_peaks(whole_t, whole_f, CFG, pc, 40.0)
    assert lm.n_peaks == whole_t.size and len(lm) == len(ref) > 0
    np.testing.assert_allclose(lm.anchor_time, ref.anchor_time, atol=1e-6)
    np.testing.assert_allclose(lm.anchor_semitone, ref.anchor_semitone, atol=1e-6)
    np.testing.assert_allclose(lm.delta_time, ref.delta_time, atol=1e-6)
    np.testing.assert_array_equal(lm.keys(), ref.keys())


def test_a_kept_spectrogram_is_the_whole_signals_and_gives_another_densitys_landmarks(tmp_path):
    """The spectrogram kept by the query's analysis (block-wise, from the array or the
    file) is the whole signal's, and peaks at another density picked on it are exactly a
    fresh analysis's (the mix look's, which so skips the spectrogram)."""
    import soundfile as sf

    from earmark.fingerprint.config import MatchConfig

    y = synth_song(seed=37, seconds=130.0, sr=SR)       # three of the analysis' 60-s blocks
    whole = log_spectrogram(y, SR, CFG.n_fft, CFG.hop_length, CFG.fmin_hz, CFG.fmax_hz,
                            CFG.bins_per_semitone)
    lm = fingerprint_audio(y, CFG, side="query", keep_spectrogram=True)
    assert len(lm.spectrogram) >= 3                      # in runs of at most a block
    np.testing.assert_array_equal(np.concatenate(lm.spectrogram), whole)
    assert fingerprint_audio(y, CFG, side="query").spectrogram is None
    path = tmp_path / "song.wav"
    sf.write(path, y, SR, subtype="FLOAT")
    from_file = fingerprint_file(path, CFG, side="query", keep_spectrogram=True)
    np.testing.assert_array_equal(np.concatenate(from_file.spectrogram), whole)

    mix_cfg = CFG.with_(query=MatchConfig().mix_peak_config(CFG.query))
    fresh = fingerprint_audio(y, mix_cfg, side="query", max_dt_frames=CFG.max_pair_frames)
    again = fingerprint_audio(y, mix_cfg, side="query", max_dt_frames=CFG.max_pair_frames,
                              spectrogram=lm.spectrogram)
    assert len(again) > len(lm) > 1000 and again.n_peaks == fresh.n_peaks
    assert again.duration == fresh.duration
    for field in ("anchor_time", "anchor_semitone", "delta_semitone", "delta_time",
                  "peak_time", "peak_semitone", "peak_rank"):
        np.testing.assert_array_equal(getattr(again, field), getattr(fresh, field))
    with pytest.raises(ValueError, match="shorter"):
        fingerprint_audio(y, mix_cfg, side="query",
                          spectrogram=(*lm.spectrogram[:-1], lm.spectrogram[-1][:-100]))


def test_sparser_density_gives_exactly_the_catalogue_side_landmarks():
    """The density rank of the query's peaks says which of them a sparser density keeps:
    the query-side analysis thinned to the catalogue side's density and fan-out is exactly
    the catalogue-side analysis of the same audio (the matcher's coarse search set)."""
    y = synth_song(seed=33, seconds=30.0, sr=SR)
    query = fingerprint_audio(y, CFG, side="query")
    catalogue_side = fingerprint_audio(y, CFG, side="index")
    assert query.peak_rank is not None and catalogue_side.peak_rank is None
    assert query.n_peaks > 1.5 * catalogue_side.n_peaks  # really a sparser set
    thinned = sparser(query, CFG, CFG.index)
    assert thinned.n_peaks == catalogue_side.n_peaks
    assert len(thinned) == len(catalogue_side) > 100
    np.testing.assert_allclose(thinned.anchor_time, catalogue_side.anchor_time, atol=1e-9)
    np.testing.assert_allclose(thinned.delta_time, catalogue_side.delta_time, atol=1e-9)
    np.testing.assert_array_equal(thinned.keys(), catalogue_side.keys())
    with pytest.raises(ValueError, match="peaks"):
        sparser(catalogue_side, CFG, CFG.index)


def test_landmarks_respect_target_zone_and_fan_out():
    y = synth_song(seed=32, seconds=20.0, sr=SR)
    for side, pc in (("index", CFG.index), ("query", CFG.query)):
        lm = fingerprint_audio(y, CFG, side=side)
        assert len(lm) > 0
        assert np.all(lm.delta_time >= CFG.min_pair_frames)
        assert np.all(lm.delta_time <= CFG.max_pair_frames)
        assert np.all(np.abs(lm.delta_semitone) <= CFG.max_pair_semitones)
        _, per_anchor = np.unique(lm.anchor_time, return_counts=True)
        assert per_anchor.max() <= pc.fan_out
    # The query side is denser than the catalogue side (the catalogue's landmarks should
    # mostly be a subset of the query's).
    assert fingerprint_audio(y, CFG, "query").n_peaks > fingerprint_audio(y, CFG, "index").n_peaks
    # And the densest preset is denser than the default on the catalogue side.
    assert (fingerprint_audio(y, PRESETS["dense"], "index").n_peaks
            > fingerprint_audio(y, CFG, "index").n_peaks)


# --------------------------------------------------------------------------- invariances


def _tone_stacks(ratio: float) -> tuple[np.ndarray, list[tuple[float, float]]]:
    """20 three-note stacks (0.12 s bursts every 0.45 s), every frequency times ``ratio``.

    Notes are >= 250 Hz: below ~200 Hz one linear FFT bin is wider than a log bin and
    the interpolated pitch is coarser than the 0.1-semitone tolerance.
    """
    rng = np.random.default_rng(11)
    y = np.zeros(int(9.6 * SR), np.float32)
    tones = []
    for k in range(20):
        start = 0.3 + 0.45 * k
        base = rng.uniform(semitones(250.0), semitones(600.0))
        for interval in (0.0, rng.uniform(4, 7), rng.uniform(12, 19)):
            f = CFG.fmin_hz * 2 ** ((base + interval) / 12) * ratio
            centre = tone_burst(y, f, start, 0.12, amp=0.2, phase=rng.uniform(0, 2 * np.pi))
            tones.append((centre / FRAME, semitones(f)))
    return y, tones


def test_pitch_shift_moves_peaks_by_the_shift():
    y0, tones0 = _tone_stacks(1.0)
    y2, tones2 = _tone_stacks(2 ** (2 / 12))
    t0, f0 = peaks(y0)
    t2, f2 = peaks(y2)
    shifts = []
    for (tt, st), (tt2, st2) in zip(tones0, tones2):
        a = nearest_peak(t0, f0, tt, st)
        b = nearest_peak(t2, f2, tt2, st2)
        assert a is not None and abs(a[1] - st) <= 0.2
        assert b is not None and abs(b[1] - st2) <= 0.2
        assert abs(b[0] - a[0]) <= 0.5  # same time
        shifts.append(b[1] - a[1])
    shifts = np.array(shifts)
    assert np.all(np.abs(shifts - 2.0) <= 0.1), shifts
    assert abs(float(np.median(shifts)) - 2.0) <= 0.02


def _with_noise_floor(y: np.ndarray) -> np.ndarray:
    """Add a -60 dBFS white-noise floor, as every real recording has."""
    return (y + synth_noise(5, y.shape[0] / SR, SR) * np.float32(10 ** (-50 / 20))).astype(np.float32)


@pytest.mark.parametrize("gain", [0.03, 0.1, 0.5, 2.0, 3.0])
def test_gain_change_does_not_change_peaks(gain):
    y = _with_noise_floor(synth_song(seed=33, seconds=20.0, sr=SR))
    t, f, _ = peaks_from_blocks([y], CFG, CFG.index)
    tg, fg, _ = peaks_from_blocks([y * np.float32(gain)], CFG, CFG.index)
    assert t.size > 50
    assert tg.shape == t.shape
    np.testing.assert_allclose(tg, t, atol=1e-3)
    np.testing.assert_allclose(fg, f, atol=1e-3)


@pytest.mark.parametrize("gain", [0.5, 3.0])
def test_gain_change_does_not_change_peaks_of_digitally_silent_bins(gain):
    """Synthetic music has time-frequency regions of digital silence (a bass note ends
    and nothing else sounds below 175 Hz).  The documented contract of the picker is
    that it is level-independent: scaling the signal must not change a single peak."""
    y = synth_song(seed=33, seconds=20.0, sr=SR)
    t, f, _ = peaks_from_blocks([y], CFG, CFG.index)
    tg, fg, _ = peaks_from_blocks([y * np.float32(gain)], CFG, CFG.index)
    lost = sorted(set(np.round(t, 2)) - set(np.round(tg, 2)))
    new = sorted(set(np.round(tg, 2)) - set(np.round(t, 2)))
    assert tg.shape == t.shape and not lost and not new, (
        f"gain {gain}: {len(lost)} peaks lost at frames {lost[:5]}, {len(new)} new at {new[:5]}")
    np.testing.assert_allclose(fg, f, atol=1e-3)
