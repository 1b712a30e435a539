"""Tests for earmark.fingerprint.audio: decoding, resampling, block streaming, errors."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from earmark.errors import AudioError
from earmark.fingerprint import audio
from earmark.fingerprint.audio import (
    SUPPORTED_EXTENSIONS,
    audio_duration,
    check_usable,
    content_hash,
    iter_audio_blocks,
    load_audio,
    resample,
)

SR_IN = 44100
SR = 11025
SECONDS = 2.5


def _stereo(seconds: float = SECONDS, sr: int = SR_IN, seed: int = 0) -> np.ndarray:
    """1 kHz tone on the left, 300 Hz tone + a little seeded noise on the right."""
    rng = np.random.default_rng(seed)
    t = np.arange(int(round(seconds * sr))) / sr
    left = 0.5 * np.sin(2 * np.pi * 1000.0 * t)
    right = 0.25 * np.sin(2 * np.pi * 300.0 * t) + 0.01 * rng.standard_normal(len(t))
    return np.stack([left, right], axis=1).astype(np.float32)


def _write_m4a(path: Path, x: np.ndarray, sr: int) -> None:
    """Encode (frames, channels) float32 to AAC in MP4 with PyAV."""
    import av

    with av.open(str(path), "w", format="mp4") as container:
        stream = container.add_stream("aac", rate=sr)
        stream.layout = "stereo" if x.shape[1] == 2 else "mono"
        stream.format = "fltp"
        hop = 1024
        for i in range(0, len(x), hop):
            frame = av.AudioFrame.from_ndarray(np.ascontiguousarray(x[i:i + hop].T),
                                               format="fltp", layout=stream.layout.name)
            frame.sample_rate = sr
            frame.pts = i
            for packet in stream.encode(frame):
                container.mux(packet)
        for packet in stream.encode(None):
            container.mux(packet)


def _has_aac_encoder() -> bool:
    try:
        import av

        av.codec.Codec("aac", "w")
        return True
    except Exception:
        return False


@pytest.fixture(scope="module")
def files(tmp_path_factory) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("audio")
    x = _stereo()
    out = {}
    for ext, kw in (("wav", {}), ("flac", {}), ("ogg", {"subtype": "VORBIS"})):
        p = d / f"tone.{ext}"
        sf.write(p, x, SR_IN, **kw)
        out[ext] = p
    if _has_aac_encoder():
        out["m4a"] = d / "tone.m4a"
        _write_m4a(out["m4a"], x, SR_IN)
    return out


def _peak_hz(y: np.ndarray, sr: int) -> float:
    spec = np.abs(np.fft.rfft(y * np.hanning(len(y))))
    return float(np.fft.rfftfreq(len(y), 1.0 / sr)[np.argmax(spec)])


# --------------------------------------------------------------------------- decoding


@pytest.mark.parametrize("ext", ["wav", "flac", "ogg"])
def test_decodes_mono_at_target_rate(files, ext):
    y = load_audio(files[ext], SR)
    assert y.dtype == np.float32 and y.ndim == 1
    assert abs(len(y) / SR - SECONDS) <= 1e-3
    assert np.isfinite(y).all()
    assert audio_duration(files[ext]) == pytest.approx(SECONDS, abs=1e-3)


def test_decodes_m4a_with_pyav(files):
    # PyAV's wheels ship FFmpeg with its native AAC encoder: its absence is a failure.
    assert "m4a" in files, "PyAV's FFmpeg has no AAC encoder"
    y = load_audio(files["m4a"], SR)
    assert y.dtype == np.float32 and y.ndim == 1
    # AAC pads to whole 1024-sample frames at the end, so allow a few frames of slack.
    assert abs(len(y) / SR - SECONDS) <= 0.05
    assert audio_duration(files["m4a"]) == pytest.approx(SECONDS, abs=0.05)
    # Priming samples are trimmed: the decoded tone lines up with the WAV original.
    ref = load_audio(files["wav"], SR)
    n = 4000
    lag = np.argmax(np.correlate(y[:n], ref[:n], "full")) - (n - 1)
    assert abs(lag) <= 2


def test_downmix_is_channel_average(files):
    y = load_audio(files["wav"], SR_IN)  # no resampling: exact comparison
    x = sf.read(files["wav"], dtype="float32")[0]
    np.testing.assert_allclose(y, x.mean(axis=1), atol=1e-6)


def test_tone_frequency_survives_resampling(files):
    y = load_audio(files["wav"], SR)
    # Left channel carries the 1 kHz tone at -6 dB; after downmix it is the strongest peak.
    assert _peak_hz(y, SR) == pytest.approx(1000.0, abs=2.0)
    z = resample(y, SR, 8000)
    assert z.dtype == np.float32 and len(z) == round(len(y) * 8000 / SR)
    assert _peak_hz(z, 8000) == pytest.approx(1000.0, abs=2.0)


@pytest.mark.parametrize("ext", ["wav", "flac", "m4a"])
def test_blocks_equal_whole(files, ext):
    assert ext in files, "PyAV's FFmpeg has no AAC encoder"
    whole = load_audio(files[ext], SR)
    block_seconds = 0.37  # does not divide the 2.5 s length
    blocks = list(iter_audio_blocks(files[ext], SR, block_seconds=block_seconds))
    assert all(len(b) == round(block_seconds * SR) for b in blocks[:-1])
    assert 0 < len(blocks[-1]) <= round(block_seconds * SR)
    joined = np.concatenate(blocks)
    assert len(joined) == len(whole)
    assert np.abs(joined - whole).max() < 1e-4


def test_streaming_resample_matches_one_shot(files):
    native = load_audio(files["flac"], SR_IN)
    streamed = np.concatenate(list(iter_audio_blocks(files["flac"], SR, block_seconds=0.13)))
    one_shot = resample(native, SR_IN, SR)
    assert len(streamed) == len(one_shot)
    assert np.abs(streamed - one_shot).max() < 1e-4


def test_window_offset_and_max_seconds(files):
    whole = load_audio(files["flac"], SR)
    win = load_audio(files["flac"], SR, max_seconds=1.0, offset_seconds=1.0)
    assert len(win) == SR
    # Resampling restarts at the offset, so allow filter edge effects at the very start.
    np.testing.assert_allclose(win[200:], whole[SR + 200: 2 * SR], atol=1e-3)
    assert len(load_audio(files["flac"], SR, offset_seconds=10.0)) == 0


def test_content_hash(files, tmp_path):
    h = content_hash(files["wav"])
    assert len(h) == 32 and int(h, 16) >= 0
    assert h == content_hash(str(files["wav"]))
    copy = tmp_path / "copy.wav"
    copy.write_bytes(files["wav"].read_bytes())
    assert content_hash(copy) == h
    assert content_hash(files["flac"]) != h


def test_supported_extensions():
    for ext in ("wav", "flac", "ogg", "oga", "opus", "mp3", "aiff", "aif", "m4a", "mp4",
                "aac", "wma", "webm", "mka", "mkv"):
        assert f".{ext}" in SUPPORTED_EXTENSIONS
    assert ".txt" not in SUPPORTED_EXTENSIONS


def test_truncated_wav_decodes_what_is_there(tmp_path):
    p = tmp_path / "cut.wav"
    sf.write(p, _stereo(2.0), SR_IN, subtype="PCM_16")
    data = p.read_bytes()
    p.write_bytes(data[: 44 + 4 * SR_IN])  # header claims 2 s; 1 s of frames remain
    y = load_audio(p, SR)
    assert abs(len(y) / SR - 1.0) <= 1e-3


# --------------------------------------------------------------------------- bad inputs


def _assert_audio_error(path) -> str:
    """load_audio must fail with a one-line AudioError naming the file."""
    with pytest.raises(AudioError) as info:
        load_audio(path, SR)
    msg = str(info.value)
    assert Path(path).name in msg
    assert "\n" not in msg
    return msg


def test_missing_file(tmp_path):
    msg = _assert_audio_error(tmp_path / "nope.wav")
    assert "not found" in msg


def test_directory(tmp_path):
    d = tmp_path / "folder.wav"
    d.mkdir()
    assert "directory" in _assert_audio_error(d)


def test_empty_file(tmp_path):
    p = tmp_path / "empty.wav"
    p.touch()
    assert "empty" in _assert_audio_error(p)


@pytest.mark.parametrize("ext", ["wav", "flac", "mp3", "m4a", "ogg"])
def test_random_bytes(tmp_path, ext):
    p = tmp_path / f"garbage.{ext}"
    p.write_bytes(np.random.default_rng(1).integers(0, 256, 50_000, dtype=np.uint8).tobytes())
    _assert_audio_error(p)
    # iter_audio_blocks fails at call time, not on first iteration.
    with pytest.raises(AudioError):
        iter_audio_blocks(p, SR)


def test_text_file_unsupported(tmp_path):
    p = tmp_path / "notes.txt"
    p.write_text("this is not audio\n" * 100)
    assert "not a supported audio file" in _assert_audio_error(p)


def test_nan_samples(tmp_path):
    p = tmp_path / "nan.wav"
    x = np.zeros(SR_IN, dtype=np.float32)
    x[1000] = np.nan
    sf.write(p, x, SR_IN, subtype="FLOAT")
    assert "NaN" in _assert_audio_error(p)


def _in_unprivileged_child(fn) -> str:
    """Run ``fn()`` in a forked child that has dropped root (uid/gid 65534, "nobody");
    returns what it returned, or ``"<ExcType>: message"`` for an exception.

    Root ignores file modes, so a real permission check needs a process that is not
    root; forking (rather than exec-ing Python again) keeps every module loaded.
    """
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:  # child
        os.close(r)
        try:
            try:
                os.setgroups([])
                os.setgid(65534)
                os.setuid(65534)
                text = str(fn())
            except BaseException as e:  # noqa: BLE001 - reported to the parent
                text = f"{type(e).__name__}: {e}"
            os.write(w, text.encode())
        finally:
            os._exit(0)
    os.close(w)
    chunks = []
    while chunk := os.read(r, 65536):
        chunks.append(chunk)
    os.close(r)
    os.waitpid(pid, 0)
    return b"".join(chunks).decode()


def test_permission_denied_real(files):
    """A file the user may not read: a real permission check (as root, from a child
    process that gave up root), both for decoding and for hashing."""
    import tempfile

    folder = Path(tempfile.mkdtemp(prefix="earmark-perm-"))
    try:
        folder.chmod(0o755)  # others may look up the file, not read it
        p = folder / "locked.wav"
        p.write_bytes(files["wav"].read_bytes())
        p.chmod(0)

        def attempt() -> str:
            msgs = []
            for fn in (lambda: load_audio(p, SR), lambda: content_hash(p)):
                try:
                    fn()
                    msgs.append("no error")
                except AudioError as e:
                    msgs.append(f"AudioError: {e}")
            return "\n".join(msgs)

        if hasattr(os, "geteuid") and os.geteuid() == 0:
            out = _in_unprivileged_child(attempt)
        else:
            out = attempt()
        lines = out.splitlines()
        assert len(lines) == 2, out
        for line in lines:
            assert line.startswith("AudioError: ") and str(p) in line, line
            assert "permission denied" in line, line
        # Root can still read it: the error came from the file mode, not the content.
        if hasattr(os, "geteuid") and os.geteuid() == 0:
            assert len(load_audio(p, SR)) > 0
    finally:
        for q in folder.iterdir():
            q.chmod(0o644)
        shutil.rmtree(folder)


def test_permission_denied(files, monkeypatch):
    # Simulated, so it also runs as root (which bypasses chmod).
    def denied(*args, **kwargs):
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(audio, "open", denied, raising=False)
    assert "permission denied" in _assert_audio_error(files["wav"])
    with pytest.raises(AudioError, match="permission denied"):
        content_hash(files["wav"])


def test_other_entry_points_raise_audio_error(tmp_path):
    p = tmp_path / "garbage.wav"
    p.write_bytes(b"RIFF\x00\x00\x00\x00WAVEjunkjunkjunk" * 10)
    with pytest.raises(AudioError, match="garbage.wav"):
        audio_duration(p)
    with pytest.raises(AudioError, match="nope.wav"):
        content_hash(tmp_path / "nope.wav")
    with pytest.raises(AudioError, match="nope.wav"):
        audio_duration(tmp_path / "nope.wav")


# --------------------------------------------------------------------------- check_usable


def test_check_usable_accepts_tone(files):
    check_usable(load_audio(files["wav"], SR), SR)


def test_check_usable_too_short():
    y = 0.5 * np.sin(2 * np.pi * 440 * np.arange(int(0.2 * SR)) / SR).astype(np.float32)
    with pytest.raises(AudioError, match=r"clip\.wav is too short \(0\.2 s; need at least 1\.0 s\)"):
        check_usable(y, SR, name="clip.wav")
    with pytest.raises(AudioError, match="too short"):
        check_usable(np.zeros(0, np.float32), SR)


def test_check_usable_silent():
    with pytest.raises(AudioError, match="silent"):
        check_usable(np.zeros(3 * SR, np.float32), SR, name="quiet.wav")
    hiss = (1e-5 * np.random.default_rng(0).standard_normal(3 * SR)).astype(np.float32)
    with pytest.raises(AudioError, match="quiet.wav is silent"):
        check_usable(hiss, SR, name="quiet.wav")


@pytest.mark.parametrize("fmt,subtype,sr_file,exact", [
    ("OGG", "OPUS", 48000, True), ("MP3", "MPEG_LAYER_III", 44100, True),
    ("OGG", "VORBIS", 22050, False)])   # libsndfile's Vorbis writer crashes on long 44.1 kHz input
def test_fast_seek_reads_the_same_window(tmp_path, monkeypatch, fmt, subtype, sr_file, exact):
    """``fast_seek`` reaches a far offset by seeking (it decodes a fraction of the frames)
    and reads the same audio as decoding from the start: exactly for Opus and MP3, within a
    Vorbis block for Vorbis."""
    from earmark.fingerprint import audio as audio_mod
    from earmark.synth import synth_song

    path = tmp_path / ("seek.mp3" if fmt == "MP3" else "seek.ogg")
    sf.write(path, synth_song(seed=21, seconds=55.0, sr=sr_file), sr_file, format=fmt,
             subtype=subtype)
    decoded = []
    real_frames = audio_mod._pyav_frames

    def counting(*args):
        for frame in real_frames(*args):
            decoded.append(frame.samples)
            yield frame

    monkeypatch.setattr(audio_mod, "_pyav_frames", counting)
    offset, sr = 47.3, 8000
    plain = load_audio(path, sr, max_seconds=3.0, offset_seconds=offset)
    plain_samples, decoded[:] = sum(decoded), []
    seeked = load_audio(path, sr, max_seconds=3.0, offset_seconds=offset, fast_seek=True)
    assert sum(decoded) < plain_samples / 4
    assert seeked.shape == plain.shape == (3 * sr,)
    if exact:
        assert np.max(np.abs(seeked - plain)) < 1e-4
    else:
        lags = range(-100, 101)                       # 12.5 ms at 8 kHz
        inner = slice(200, -200)
        errs = [np.max(np.abs(np.roll(seeked, k)[inner] - plain[inner])) for k in lags]
        assert min(errs) < 1e-3


def test_channel_mean_is_numpys_mean_bit_for_bit():
    """The decoder's downmix equals numpy's float32 mean over the stacked channels
    exactly (same order of additions, same division), for stereo and more channels."""
    rng = np.random.default_rng(11)
    for n_channels in (2, 3, 6):
        channels = [(rng.standard_normal(48_001) * 10.0 ** rng.uniform(-4, 1)).astype(np.float32)
                    for _ in range(n_channels)]
        expected = np.stack(channels).mean(axis=0, dtype=np.float32)
        got = audio._mean_of_channels(channels)
        assert got.dtype == np.float32 and got.flags.c_contiguous
        assert np.array_equal(got.view(np.uint32), expected.view(np.uint32))


@pytest.mark.parametrize("ext", ["ogg", "m4a", "mp3"])
def test_ffmpeg_decoding_keeps_every_frames_samples_in_order(tmp_path, ext):
    """Files FFmpeg decodes (Vorbis frames can hold 128 samples) are downmixed in groups
    of whole frames joined by FFmpeg's FIFO: at the file's own rate the result is every
    decoded frame's samples, in order, averaged over the channels - bit for bit, over
    several groups and a final partial one."""
    import av

    x = _stereo(seconds=3.3 * audio.GROUP_SAMPLES / SR_IN, seed=3)
    path = tmp_path / f"long.{ext}"
    if ext == "m4a":
        assert _has_aac_encoder(), "PyAV's FFmpeg has no AAC encoder"
        _write_m4a(path, x, SR_IN)
    elif ext == "mp3":
        sf.write(path, x, SR_IN, format="MP3", subtype="MPEG_LAYER_III")
    else:
        sf.write(path, x, SR_IN, subtype="VORBIS")
    with av.open(str(path)) as container:
        frames = [f.to_ndarray() for f in container.decode(audio=0)]
    assert len(frames) > 4
    stacked = np.concatenate(frames, axis=1).astype(np.float32)
    expected = stacked.mean(axis=0, dtype=np.float32)
    y = load_audio(path, SR_IN)
    assert y.shape == expected.shape
    assert np.array_equal(y.view(np.uint32), expected.view(np.uint32))
