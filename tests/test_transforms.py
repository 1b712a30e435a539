"""Tests for earmark.bench.transforms: each family is measured on synthetic, seeded signals."""

from __future__ import annotations

import math
import time

import numpy as np
import pytest
from scipy.signal import correlate, find_peaks, welch

from earmark.bench import transforms as T
from earmark.bench.transforms import (
    EXTENDED,
    QUICK_SET,
    TRANSFORMS,
    Transform,
    TransformContext,
    apply_transform,
    get_transforms,
    register,
    transform_named,
)

SR = 22050


# ----------------------------------------------------------------------------- signals


def tone(freq_hz: float, seconds: float, amp: float = 0.5, sr: int = SR) -> np.ndarray:
    t = np.arange(int(round(seconds * sr))) / sr
    return (amp * np.sin(2 * np.pi * freq_hz * t)).astype(np.float32)


def clicks(period_s: float, seconds: float, sr: int = SR) -> np.ndarray:
    y = np.zeros(int(round(seconds * sr)), dtype=np.float32)
    y[int(0.05 * sr) :: int(round(period_s * sr))] = 0.9
    return y


def music(seconds: float, rng: np.random.Generator, sr: int = SR, peak: float = 0.5) -> np.ndarray:
    """Random notes (3 harmonics, decaying) every 125 ms plus a little noise: non-periodic."""
    n = int(round(seconds * sr))
    t = np.arange(n) / sr
    y = np.zeros(n)
    step = int(0.125 * sr)
    for s in range(0, n, step):
        f = 110.0 * 2 ** (rng.integers(0, 36) / 12)
        seg = slice(s, min(n, s + 4 * step))
        tt = t[seg] - t[s]
        for h in (1, 2, 3):
            y[seg] += np.sin(2 * np.pi * f * h * tt + rng.uniform(0, 2 * np.pi)) * np.exp(-6 * tt) / h
    y += 0.02 * rng.standard_normal(n)
    return (peak * y / np.max(np.abs(y))).astype(np.float32)


def other_ctx(log: list | None = None) -> TransformContext:
    """Negative 'music' drawn from the transform's rng; records what it returned."""

    def other_audio(seconds: float, rng: np.random.Generator) -> np.ndarray:
        o = music(seconds, rng, peak=0.3)
        if log is not None:
            log.append((seconds, o))
        return o

    return TransformContext(other_audio=other_audio)


def power(y: np.ndarray) -> float:
    return float(np.mean(np.square(y, dtype=np.float64)))


def db(ratio: float) -> float:
    return 10 * math.log10(ratio)


def peak_freq(y: np.ndarray, sr: int = SR) -> float:
    """Frequency of the strongest spectral peak (Hann window, zero-padded, parabolic)."""
    n = len(y)
    spec = np.abs(np.fft.rfft(y * np.hanning(n), n=4 * n))
    k = int(np.argmax(spec[1:-1])) + 1
    a, b, c = np.log(spec[k - 1 : k + 2] + 1e-30)
    d = 0.5 * (a - c) / (a - 2 * b + c)
    return (k + d) * sr / (4 * n)


def middle(y: np.ndarray, frac: float = 0.6) -> np.ndarray:
    cut = int(len(y) * (1 - frac) / 2)
    return y[cut : len(y) - cut]


def click_period(y: np.ndarray, expected_s: float, sr: int = SR) -> float:
    """Median spacing (s) of detected clicks."""
    env = np.abs(y)
    pk, _ = find_peaks(env, height=0.3 * env.max(), distance=int(0.6 * expected_s * sr))
    d = np.diff(pk)
    d = d[d < 1.5 * np.median(d)]
    assert len(d) >= 5, "too few clicks detected"
    return float(np.median(d)) / sr


def xcorr_lag(a: np.ndarray, b: np.ndarray) -> int:
    """Lag of ``a`` relative to ``b`` in samples (positive: ``a`` late)."""
    c = correlate(a.astype(np.float64), b.astype(np.float64), mode="full", method="fft")
    return int(np.argmax(np.abs(c))) - (len(b) - 1)


def expected_len(t: Transform, n_in: int, sr: int = SR) -> int:
    if t.embeds:
        return int(round(t.bed_seconds * sr))
    return int(round(n_in / t.speed))


# ----------------------------------------------------------------------------- contract (all transforms)


@pytest.mark.parametrize("name", [*TRANSFORMS, *EXTENDED])
def test_contract_length_dtype_peak_determinism(name):
    t = transform_named(name)
    # loud input so that the 0 dB mixes clip and exercise the peak normalisation
    x = music(t.excerpt_seconds, np.random.default_rng(11), peak=0.95)
    a = apply_transform(t, x, SR, np.random.default_rng(7), other_ctx())
    b = apply_transform(t, x, SR, np.random.default_rng(7), other_ctx())
    y = a.audio
    assert y.dtype == np.float32 and y.ndim == 1
    assert np.all(np.isfinite(y))
    assert np.max(np.abs(y)) <= 0.99 + 1e-7
    assert 0 < a.gain <= 1.0
    assert abs(len(y) - expected_len(t, len(x))) <= 1
    out_s = t.bed_seconds if t.embeds else 10.0 * (t.excerpt_seconds / 10.0) / t.speed
    if t.family not in ("clean", "short") and not t.embeds:
        assert abs(a.duration - 10.0) <= 1.5 / SR  # every 10 s query is 10 s ± 1 sample
    assert abs(a.duration - out_s) <= 1.5 / SR
    assert a.sr == SR
    assert np.array_equal(y, b.audio), "same seed must give identical output"
    assert a.facts == b.facts
    if not t.embeds:
        assert a.embed_offset == 0.0 and a.transform is t


@pytest.mark.parametrize("name", [*TRANSFORMS, *EXTENDED])
def test_any_excerpt_silence_and_short(name):
    """Nothing assumes catalogue audio: silence and an arbitrary short negative excerpt work."""
    t = transform_named(name)
    for x in (np.zeros(int(1.5 * SR), np.float32), music(1.3, np.random.default_rng(5), peak=0.01)):
        out = apply_transform(t, x, SR, np.random.default_rng(0), other_ctx())
        assert out.audio.dtype == np.float32 and np.all(np.isfinite(out.audio))
        assert abs(len(out.audio) - expected_len(t, len(x))) <= 1


def test_different_seeds_differ():
    x = music(10.0, np.random.default_rng(1))
    for name in ("noise_white_5db", "noise_pink_0db", "mix_0db", "embed_5s_in_30s"):
        t = TRANSFORMS[name]
        x_in = x[: int(t.excerpt_seconds * SR)]
        a = apply_transform(t, x_in, SR, np.random.default_rng(1), other_ctx()).audio
        b = apply_transform(t, x_in, SR, np.random.default_rng(2), other_ctx()).audio
        assert not np.array_equal(a, b), name


def test_int_seed_and_input_checks():
    t = TRANSFORMS["noise_white_5db"]
    x = music(2.0, np.random.default_rng(0))
    a = apply_transform(t, x, SR, 3).audio
    b = apply_transform(t, x, SR, np.random.default_rng(3)).audio
    assert np.array_equal(a, b)
    with pytest.raises(ValueError):
        apply_transform(t, np.stack([x, x]), SR, 0)
    with pytest.raises(ValueError):
        apply_transform(TRANSFORMS["mix_0db"], x, SR, 0)  # needs ctx.other_audio
    with pytest.raises(ValueError):
        apply_transform(TRANSFORMS["embed_5s_in_30s"], x, SR, 0, TransformContext())


# ----------------------------------------------------------------------------- noise & mix

NOISE = {
    "noise_white_5db": ("white", 5.0),
    "noise_white_0db": ("white", 0.0),
    "noise_pink_5db": ("pink", 5.0),
    "noise_pink_0db": ("pink", 0.0),
    "noise_white_5db_3s": ("white", 5.0),
}


@pytest.mark.parametrize("name", list(NOISE))
@pytest.mark.parametrize("peak", [0.3, 0.95])
def test_noise_snr_and_colour(name, peak):
    color, snr = NOISE[name]
    t = TRANSFORMS[name]
    x = music(t.excerpt_seconds, np.random.default_rng(2), peak=peak)
    out = apply_transform(t, x, SR, np.random.default_rng(4))
    noise = out.audio.astype(np.float64) / out.gain - x
    measured = db(power(x) / power(noise))
    assert abs(measured - snr) < 0.2
    assert abs(out.facts["snr_db"] - snr) < 0.01
    # spectral slope of the added noise: 0 dB/octave (white) or -3 dB/octave (pink)
    f, psd = welch(noise, fs=SR, nperseg=4096)
    band = (f >= 100) & (f <= 8000)
    slope = np.polyfit(np.log2(f[band]), 10 * np.log10(psd[band]), 1)[0]
    assert abs(slope - (0.0 if color == "white" else -3.0)) < 0.5


def test_mix_other_song_at_0db():
    log: list = []
    t = TRANSFORMS["mix_0db"]
    x = music(10.0, np.random.default_rng(3))
    out = apply_transform(t, x, SR, np.random.default_rng(5), other_ctx(log))
    assert len(log) == 1 and log[0][0] == pytest.approx(10.0)
    added = out.audio.astype(np.float64) / out.gain - x
    assert abs(db(power(x) / power(added))) < 0.2
    assert np.corrcoef(added, log[0][1])[0, 1] > 0.999  # it is the other song, scaled


# ----------------------------------------------------------------------------- codecs


@pytest.mark.parametrize("name,kbps", [("mp3_64k", 64.0), ("opus_24k", 24.0)])
def test_codec_time_aligned_and_lossy(name, kbps):
    t = TRANSFORMS[name]
    x = music(10.0, np.random.default_rng(6))
    out = apply_transform(t, x, SR, np.random.default_rng(0))
    y = out.audio
    assert len(y) == len(x)
    assert abs(xcorr_lag(y, x)) <= 0.005 * SR
    assert not np.array_equal(y, x)
    assert np.corrcoef(y, x)[0, 1] > 0.9  # coded, not destroyed
    assert abs(out.facts["bitrate_kbps"] - kbps) < 0.3 * kbps
    assert abs(out.facts["codec_delay_s"]) < 0.25


def test_codec_delay_is_detected_and_removed(monkeypatch):
    """A decoder that does not trim the encoder delay (simulated) is still re-aligned."""
    real = T._av_encode_decode
    pad = 700  # samples at the codec rate, ~32 ms at 22.05 kHz

    def late_decoder(y, sr, codec, bitrate_bps):
        dec, n = real(y, sr, codec, bitrate_bps)
        return np.concatenate([np.zeros(pad, np.float32), dec]), n

    T._codec_delay_samples.cache_clear()
    monkeypatch.setattr(T, "_av_encode_decode", late_decoder)
    try:
        x = music(4.0, np.random.default_rng(7))
        out = apply_transform(TRANSFORMS["mp3_64k"], x, SR, np.random.default_rng(0))
        assert out.facts["codec_delay_s"] == pytest.approx(pad / SR, abs=0.001)
        assert len(out.audio) == len(x)
        assert abs(xcorr_lag(out.audio, x)) <= 0.005 * SR
    finally:
        T._codec_delay_samples.cache_clear()


# ----------------------------------------------------------------------------- rooms & channels


def test_reverb_adds_a_decaying_tail_and_keeps_alignment():
    x = np.zeros(3 * SR, np.float32)
    x[SR] = 0.9
    out = apply_transform(TRANSFORMS["reverb"], x, SR, np.random.default_rng(0))
    y = out.audio
    assert len(y) == len(x)
    assert abs(int(np.argmax(np.abs(y))) - SR) <= int(0.005 * SR)  # direct sound stays put
    energy = lambda a, b: float(np.sum(np.square(y[int(a * SR) : int(b * SR)], dtype=np.float64)))
    direct = float(y[SR]) ** 2
    early, late = energy(1.05, 1.3), energy(1.8, 2.05)
    assert early > 0.01 * direct  # a real tail (reflections 50-300 ms after the impulse)
    assert late < 0.5 * early  # that decays
    assert power(y[: SR - 10]) == 0.0  # nothing before the impulse


@pytest.mark.parametrize("freq_hz,min_atten_db", [(100.0, 20.0), (3900.0, 20.0)])
def test_telephone_band_attenuates_out_of_band(freq_hz, min_atten_db):
    x = tone(freq_hz, 2.0)
    y = apply_transform(TRANSFORMS["telephone"], x, SR, np.random.default_rng(0)).audio
    atten = db(power(middle(x)) / max(power(middle(y)), 1e-30))
    assert atten > min_atten_db


def test_telephone_passes_in_band_and_stays_aligned():
    x = tone(1000.0, 2.0)
    y = apply_transform(TRANSFORMS["telephone"], x, SR, np.random.default_rng(0)).audio
    assert abs(db(power(middle(y)) / power(middle(x)))) < 1.0
    m = music(4.0, np.random.default_rng(8))
    ym = apply_transform(TRANSFORMS["telephone"], m, SR, np.random.default_rng(0)).audio
    assert abs(xcorr_lag(ym, m)) <= 0.005 * SR


# ----------------------------------------------------------------------------- time & pitch ground truth

TIME_PITCH = [n for n, t in TRANSFORMS.items()
              if t.family in ("speed", "tempo", "pitch", "chain", "phasevocoder")]


@pytest.mark.parametrize("name", TIME_PITCH)
def test_ground_truth_speed_and_pitch_measured(name):
    """A tone moves by 2**(pitch/12) and click spacing scales by 1/speed, as declared."""
    t = TRANSFORMS[name]
    out_seconds = 4.0
    x = tone(440.0, out_seconds * t.speed)
    y = apply_transform(t, x, SR, np.random.default_rng(0)).audio
    assert abs(len(y) - round(len(x) / t.speed)) <= 1
    ratio = peak_freq(middle(y)) / 440.0
    tol = {"speed": 0.005, "chain": 0.005, "tempo": 0.01}.get(t.family)
    if tol is None:  # pitch: within 0.1 semitone
        assert abs(12 * math.log2(ratio) - t.pitch_semitones) < 0.1
    else:
        assert abs(ratio / 2 ** (t.pitch_semitones / 12) - 1) < tol
    if t.family == "tempo":
        assert abs(ratio - 1) < 0.01  # tempo only: the tone keeps its frequency
    if t.family == "speed":
        assert abs(ratio - t.speed) < 0.005 * t.speed
    if t.family == "chain":
        return  # reverb smears clicks
    period = 0.25
    c = clicks(period, out_seconds * t.speed)
    yc = apply_transform(t, c, SR, np.random.default_rng(0)).audio
    if t.family == "phasevocoder":
        # The phase vocoder spreads a click over its 93-ms window and jitters its peak:
        # fit the spacing over the whole train of a smoothed envelope instead.
        env = np.convolve(np.abs(yc), np.ones(SR // 20) / (SR // 20), mode="same")
        pk, _ = find_peaks(env, height=0.3 * env.max(), distance=int(0.6 * period / t.speed * SR))
        # (a few clicks come out too weak to detect: number them by expected position)
        number = np.round((pk - pk[0]) / (period / t.speed * SR))
        spacing = np.polyfit(number, pk / SR, 1)[0]
        assert len(pk) >= 8 and abs(spacing * t.speed / period - 1) < 0.01
        return
    assert abs(click_period(yc, period / t.speed) * t.speed / period - 1) < 0.01


# ----------------------------------------------------------------------------- vocoder stand-in


def test_griffinlim_keeps_spectrum_and_alignment_and_is_fast():
    import librosa

    t = TRANSFORMS["griffinlim"]
    rng = np.random.default_rng(9)
    x = (music(10.0, rng, peak=0.4) + tone(1234.0, 10.0, amp=0.3)).astype(np.float32)
    apply_transform(t, x[: 2 * SR], SR, np.random.default_rng(0))  # warm-up (librosa caches)
    t0 = time.perf_counter()
    out = apply_transform(t, x, SR, np.random.default_rng(0))
    elapsed = time.perf_counter() - t0
    y = out.audio
    assert len(y) == len(x)
    assert elapsed < 4.0  # ~1 s on 2 cores; generous for loaded machines
    assert abs(peak_freq(middle(y)) / 1234.0 - 1) < 0.01
    assert abs(db(power(y) / power(x))) < 3.0
    mx = librosa.power_to_db(librosa.feature.melspectrogram(y=x, sr=SR, n_mels=64))
    my = librosa.power_to_db(librosa.feature.melspectrogram(y=y, sr=SR, n_mels=64))
    assert np.corrcoef(mx.ravel(), my.ravel())[0, 1] > 0.9
    assert not np.allclose(y, x, atol=0.05)  # the waveform is regenerated
    # time-aligned: onset envelopes line up
    ox = librosa.onset.onset_strength(y=x, sr=SR)
    oy = librosa.onset.onset_strength(y=y, sr=SR)
    assert abs(xcorr_lag(oy - oy.mean(), ox - ox.mean())) <= 1  # within one 23 ms hop


# ----------------------------------------------------------------------------- embedding


def test_embed_places_excerpt_at_reported_offset_at_0db():
    log: list = []
    t = TRANSFORMS["embed_5s_in_30s"]
    assert t.embeds and math.isnan(t.embed_offset)
    x = music(5.0, np.random.default_rng(12))
    out = apply_transform(t, x, SR, np.random.default_rng(13), other_ctx(log))
    y = out.audio.astype(np.float64) / out.gain
    assert len(y) == 30 * SR and log[0][0] == pytest.approx(30.0)
    off = int(round(out.embed_offset * SR))
    assert out.transform.embed_offset == out.embed_offset
    assert out.transform.name == t.name
    assert 0 <= off <= 25 * SR
    assert xcorr_lag(y, x) == off  # the lag of the excerpt inside the output
    bed = y.copy()
    bed[off : off + len(x)] -= x
    assert np.corrcoef(bed, log[0][1])[0, 1] > 0.999  # the other music continues under it
    assert abs(db(power(x) / power(bed[off : off + len(x)]))) < 0.2
    offsets = {
        apply_transform(t, x, SR, np.random.default_rng(s), other_ctx()).embed_offset for s in range(5)
    }
    assert len(offsets) >= 3


# ----------------------------------------------------------------------------- registry


def test_registry_selection():
    assert [t.name for t in get_transforms(None)] == list(TRANSFORMS)
    speeds = get_transforms(["speed"])
    assert {t.name for t in speeds} == {
        f"speed_{s}" for s in ("0.95", "1.05", "0.9", "1.1", "0.8", "1.25", "0.7", "1.5")
    }
    assert all(t.family == "speed" for t in speeds)
    picked = get_transforms(["mp3_64k", "codec", "clean_10s", "mp3_64k"])
    assert [t.name for t in picked] == ["mp3_64k", "opus_24k", "clean_10s"]
    assert [t.name for t in get_transforms("tempo")][:2] == ["tempo_-5", "tempo_+5"]
    assert len(get_transforms(["pitch"])) == 8 and len(get_transforms(["tempo"])) == 6


def test_extended_set_is_outside_the_default_run_and_selectable():
    assert len(EXTENDED) >= 15 and not set(EXTENDED) & set(TRANSFORMS)
    assert not {t.name for t in get_transforms(None)} & set(EXTENDED)
    assert [t.name for t in get_transforms("extended")] == list(EXTENDED)
    picked = get_transforms(["clean_10s", "reverb_heavy", "extended"])
    assert [t.name for t in picked][:2] == ["clean_10s", "reverb_heavy"]
    assert len(picked) == 1 + len(EXTENDED)
    assert [t.name for t in get_transforms(["reverb"])] == ["reverb"]   # default families only
    with pytest.raises(ValueError):
        register(Transform("reverb_heavy", "reverb", 10.0, lambda y, sr, rng, ctx: y))
    t = EXTENDED["tempokey_-10_+5"]
    assert (t.speed, t.pitch_semitones, t.excerpt_seconds) == (0.9, 5.0, pytest.approx(9.0))
    assert EXTENDED["embed_tempo_+10_6db"].embeds


def test_speed_drift_glides_from_one_to_the_end_speed():
    """Clicks 1 s apart come out 1 s apart at the start and 1 / 1.06 s apart at the end."""
    y = np.zeros(int(10.3 * SR), np.float32)
    y[np.arange(1, 11) * SR - SR // 2] = 1.0
    out = T.speed_drift(y, SR, end_speed=1.06)
    assert len(out) == int(round(len(y) / 1.03))
    found = np.flatnonzero(out > 0.3)
    found = found[np.concatenate([[True], np.diff(found) > 10])] / SR
    gaps = np.diff(found)
    assert gaps[0] == pytest.approx(1.0 / 1.003, abs=0.01)    # speed ~1.003 around 1 s
    assert gaps[-1] == pytest.approx(1.0 / 1.055, abs=0.01)   # ~1.055 near the end
    assert np.all(np.diff(gaps) < 0)                          # ever faster


def test_wow_flutter_wobbles_pitch_by_its_depth():
    """A 1 kHz tone comes out between 1000 (1 - depth) and 1000 (1 + depth) Hz."""
    y = tone(1000.0, 4.0)
    out = T.wow_flutter(y, SR, depth=0.02, rate_hz=0.5)
    assert out.shape == y.shape
    zero_up = np.flatnonzero((out[:-1] < 0) & (out[1:] >= 0))
    freq = SR / np.diff(zero_up[:: 50]) * 50                  # over 50 cycles
    assert freq.max() == pytest.approx(1020, abs=4) and freq.min() == pytest.approx(980, abs=4)


def test_chop_reorders_whole_pieces():
    y = np.repeat(np.arange(10, dtype=np.float32) + 1.0, SR)  # piece k holds the value k + 1
    out = T.chop(y, SR, piece_seconds=1.0, rng=np.random.default_rng(3))
    assert out.shape == y.shape
    middles = out[SR // 2 :: SR]
    assert sorted(middles.tolist()) == list(range(1, 11)) and middles.tolist() != list(range(1, 11))
    again = T.chop(y, SR, piece_seconds=1.0, rng=np.random.default_rng(3))
    assert np.array_equal(out, again)


def test_unknown_name_raises_one_line_listing_valid_names():
    with pytest.raises(ValueError) as e:
        get_transforms(["clean_10s", "speed_9"])
    msg = str(e.value)
    assert "\n" not in msg and "speed_9" in msg and "clean_10s" in msg and "speed_1.25" in msg


def test_register_rejects_duplicates():
    with pytest.raises(ValueError):
        register(Transform("clean_10s", "clean", 10.0, lambda y, sr, rng, ctx: y))


def test_registry_ground_truth_metadata_and_quick_set():
    families = {t.family for t in TRANSFORMS.values()}
    assert {"clean", "short", "noise", "mix", "codec", "reverb", "telephone", "speed", "tempo",
            "pitch", "vocoder", "embed", "chain", "phasevocoder"} <= families
    for t in TRANSFORMS.values():
        if t.family in ("speed", "tempo", "chain"):
            assert t.excerpt_seconds == pytest.approx(10.0 * t.speed)
        if t.family in ("speed", "chain"):
            assert t.pitch_semitones == pytest.approx(12 * math.log2(t.speed))
        if t.family == "tempo":
            assert t.pitch_semitones == 0.0 and t.speed != 1.0
        if t.family == "pitch":
            assert t.speed == 1.0 and t.pitch_semitones != 0.0
        assert t.embeds == (t.family == "embed")
    assert TRANSFORMS["tempo_+10"].speed == pytest.approx(1.10)
    assert TRANSFORMS["speed_1.25"].excerpt_seconds == pytest.approx(12.5)
    assert TRANSFORMS["slowed_reverb"].speed == pytest.approx(0.85)
    assert 6 <= len(QUICK_SET) <= 10 and all(n in TRANSFORMS for n in QUICK_SET)
    assert len({TRANSFORMS[n].family for n in QUICK_SET}) >= 6
    assert T.get_transforms(QUICK_SET)  # selectable as a whole
