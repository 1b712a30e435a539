"""Named, seeded audio transforms for the benchmark.

Each :class:`Transform` models one thing that uploaders or generative-AI pipelines do to
catalogue audio: additive noise, another song mixed over, lossy codecs, a room, a
telephone channel, speed / tempo / pitch changes, vocoder-style regeneration, a short
excerpt buried inside other music, and chains of these.

A transform takes a reference *excerpt* of ``Transform.excerpt_seconds`` (cut by the
caller), a sample rate, a seeded :class:`numpy.random.Generator` and a
:class:`TransformContext` (a source of non-catalogue music for mixing and embedding) and
returns the query audio.  :func:`apply_transform` wraps that call: it checks the input,
peak-normalises the output if it clips and returns a :class:`TransformOutput` with the
audio, the actual embed offset and what was measured on the way (achieved SNR, removed
codec delay, achieved bitrate, ...).

Ground truth travels with the transform: ``speed`` is reference seconds per query second
(the convention of :class:`earmark.evidence.Match`) and ``pitch_semitones`` is the
frequency shift of the query relative to the reference.

Nothing here assumes catalogue audio: the bench applies the same transforms to negative
(non-catalogue) excerpts.  All randomness comes from the ``rng`` argument, so the same
seed gives bit-identical output.

Examples
--------
>>> import numpy as np
>>> from earmark.bench.transforms import TRANSFORMS, TransformContext, apply_transform
>>> sr = 22050
>>> t = TRANSFORMS["speed_1.25"]
>>> excerpt = np.zeros(int(round(t.excerpt_seconds * sr)), dtype=np.float32)
>>> out = apply_transform(t, excerpt, sr, np.random.default_rng(0))
>>> round(out.duration, 3)
10.0
"""

from __future__ import annotations

import functools
import io
import math
import time
from dataclasses import dataclass, field, replace
from typing import Callable, Iterable, Mapping

import numpy as np

__all__ = [
    "Transform",
    "TransformContext",
    "TransformOutput",
    "TRANSFORMS",
    "EXTENDED",
    "EXTENDED_SET",
    "QUICK_SET",
    "register",
    "get_transforms",
    "transform_named",
    "apply_transform",
    "add_noise",
    "colored_noise",
    "mix_at_snr",
    "codec_roundtrip",
    "reverb",
    "telephone",
    "change_speed",
    "change_tempo",
    "change_tempo_phase_vocoder",
    "shift_pitch",
    "shift_pitch_phase_vocoder",
    "griffin_lim_resynth",
    "embed_excerpt",
    "peak_normalise",
    "wow_flutter",
    "speed_drift",
    "chop",
    "stem",
    "pedalboard_effect",
]

#: Peak level outputs are scaled down to when they would clip.
PEAK_MAX = 0.99

#: Query length (seconds) most transforms produce.
QUERY_SECONDS = 10.0


# ----------------------------------------------------------------------------- types


@dataclass
class TransformContext:
    """What a transform may draw on besides its excerpt.

    Attributes
    ----------
    other_audio : callable ``(seconds, rng) -> np.ndarray``
        Returns ``seconds`` of some negative (non-catalogue) music, mono, at the same sample
        rate as the excerpt.  Used by mixing and embedding transforms; may be ``None`` when
        only other transforms are run.
    facts : dict
        Filled by the transform during one call with measured values (``snr_db``,
        ``codec_delay_s``, ...).  :func:`apply_transform` gives each call a fresh dict.
    """

    other_audio: Callable[[float, np.random.Generator], np.ndarray] | None = None
    facts: dict[str, float] = field(default_factory=dict)


ApplyFn = Callable[[np.ndarray, int, np.random.Generator, TransformContext], np.ndarray]


@dataclass(frozen=True)
class Transform:
    """A named, seeded transform and its ground truth.

    Attributes
    ----------
    name : str
        Registry key, e.g. ``"speed_1.25"``.
    family : str
        Group for selection and reporting: ``"clean"``, ``"short"``, ``"noise"``, ``"mix"``,
        ``"codec"``, ``"reverb"``, ``"telephone"``, ``"speed"``, ``"tempo"``, ``"pitch"``,
        ``"vocoder"``, ``"embed"``, ``"chain"``.
    excerpt_seconds : float
        Length of the reference excerpt to cut before transforming.  Time-scaling
        transforms cut ``10 * speed`` seconds so that the query lasts 10 s.
    apply : callable ``(y, sr, rng, ctx) -> np.ndarray``
        The transform itself (use :func:`apply_transform` to call it).
    speed : float
        Ground-truth time scale: reference seconds per query second.
    pitch_semitones : float
        Ground-truth frequency shift of the output relative to the reference.
    embed_offset : float or None
        ``None`` for transforms that do not embed.  Embedding transforms carry ``nan`` in
        the registry (the offset is drawn per call); the copy returned in
        :attr:`TransformOutput.transform` holds the actual offset in seconds.
    description : str
        One line for reports.
    bed_seconds : float
        For embedding transforms, the length of the other audio the excerpt is placed
        in: the query's length.
    """

    name: str
    family: str
    excerpt_seconds: float
    apply: ApplyFn
    speed: float = 1.0
    pitch_semitones: float = 0.0
    embed_offset: float | None = None
    description: str = ""
    bed_seconds: float = 30.0

    @property
    def embeds(self) -> bool:
        """True when the excerpt is placed inside longer, unrelated audio."""
        return self.embed_offset is not None


@dataclass(frozen=True)
class TransformOutput:
    """Result of :func:`apply_transform`.

    Attributes
    ----------
    audio : np.ndarray
        float32 mono query audio, finite, peak ``<= 0.99``.
    sr : int
        Sample rate (Hz), the same as the input's.
    transform : Transform
        The transform applied; for embedding transforms a copy with ``embed_offset`` set
        to the actual offset.
    embed_offset : float
        Where the excerpt starts inside ``audio`` (seconds); ``0.0`` for non-embedding
        transforms.
    duration : float
        ``len(audio) / sr`` (seconds).
    gain : float
        Peak-normalisation gain applied to the transform's raw output (``1.0`` unless it
        clipped).  ``audio / gain`` is the raw output.
    elapsed : float
        Wall-clock seconds spent in the transform.
    facts : Mapping[str, float]
        Values measured by the transform, e.g. ``snr_db`` (achieved signal-to-noise or
        signal-to-other-music ratio), ``codec_delay_s`` (delay detected and removed),
        ``bitrate_kbps`` (achieved by the encoder), ``embed_offset_s``.
    """

    audio: np.ndarray
    sr: int
    transform: Transform
    embed_offset: float
    duration: float
    gain: float
    elapsed: float
    facts: Mapping[str, float]


# ----------------------------------------------------------------------------- helpers


def _as_mono_f32(y: np.ndarray, what: str = "audio") -> np.ndarray:
    y = np.asarray(y)
    if y.ndim != 1:
        raise ValueError(f"{what} must be mono (1-D), got shape {y.shape}")
    y = y.astype(np.float32, copy=False)
    if not np.all(np.isfinite(y)):
        raise ValueError(f"{what} contains non-finite samples")
    return y


def _fit_length(y: np.ndarray, n_samples: int) -> np.ndarray:
    """Trim or zero-pad ``y`` at the end to exactly ``n_samples``."""
    if len(y) >= n_samples:
        return y[:n_samples]
    return np.concatenate([y, np.zeros(n_samples - len(y), dtype=y.dtype)])


def _power(y: np.ndarray) -> float:
    return float(np.mean(np.square(y, dtype=np.float64))) if len(y) else 0.0


def _db(ratio: float) -> float:
    if ratio <= 0:
        return -math.inf
    if not math.isfinite(ratio):
        return math.inf
    return 10.0 * math.log10(ratio)


def peak_normalise(y: np.ndarray, peak: float = PEAK_MAX) -> tuple[np.ndarray, float]:
    """Scale ``y`` down so that ``max|y| <= peak`` (never up).

    Returns
    -------
    y_out : np.ndarray
        float32 audio.
    gain : float
        Applied gain (``1.0`` when ``y`` did not exceed ``peak``).
    """
    y = np.asarray(y, dtype=np.float32)
    m = float(np.max(np.abs(y))) if len(y) else 0.0
    if m <= peak:
        return y, 1.0
    gain = peak / m
    out = (y * np.float32(gain)).astype(np.float32)
    # float32 rounding may land a hair above `peak`
    np.clip(out, -peak, peak, out=out)
    return out, gain


# ----------------------------------------------------------------------------- noise & mixing


def colored_noise(n_samples: int, *, color: str, rng: np.random.Generator) -> np.ndarray:
    """Gaussian noise with a white (flat) or pink (``1/f`` power) spectrum.

    Parameters
    ----------
    n_samples : int
        Length of the noise.
    color : {"white", "pink"}
        Spectral shape.  Pink noise has equal power per octave (PSD slope -3 dB/octave),
        shaped in the frequency domain; DC is removed.
    rng : np.random.Generator
        Source of randomness.

    Returns
    -------
    np.ndarray
        float64 noise of unit power (mean square), or zeros when ``n_samples < 2``.
    """
    if n_samples < 2:
        return np.zeros(max(n_samples, 0))
    w = rng.standard_normal(n_samples)
    if color == "white":
        n = w
    elif color == "pink":
        spec = np.fft.rfft(w)
        f = np.arange(len(spec), dtype=np.float64)
        f[0] = 1.0
        spec /= np.sqrt(f)
        spec[0] = 0.0
        n = np.fft.irfft(spec, n=n_samples)
    else:
        raise ValueError(f"unknown noise color {color!r}; valid: white, pink")
    p = _power(n)
    return n / math.sqrt(p) if p > 0 else n


def mix_at_snr(y: np.ndarray, other: np.ndarray, snr_db: float) -> tuple[np.ndarray, float]:
    """Add ``other`` to ``y`` scaled so that ``power(y) / power(other) = snr_db`` exactly.

    Powers are mean squares over the whole (equal) length.  When either signal is silent
    no scaling is possible: ``other`` is added unscaled if ``y`` is silent, dropped if it
    is itself silent.

    Returns
    -------
    mixed : np.ndarray
        float32 mixture (may exceed ±1; see :func:`peak_normalise`).
    snr_db : float
        Achieved ratio, measured on the float32 components.
    """
    y = np.asarray(y, dtype=np.float64)
    other = _fit_length(np.asarray(other, dtype=np.float64), len(y))
    ps, po = _power(y), _power(other)
    if ps > 0 and po > 0:
        other = other * math.sqrt(ps / (po * 10.0 ** (snr_db / 10.0)))
    elif po > 0 and ps == 0:
        pass  # a silent excerpt: SNR is -inf whatever the scale
    else:
        other = np.zeros_like(y)
    mixed = (y + other).astype(np.float32)
    achieved = _db(ps / _power(other.astype(np.float32))) if _power(other) > 0 else math.inf
    return mixed, achieved


def add_noise(
    y: np.ndarray, sr: int, *, snr_db: float, color: str, rng: np.random.Generator
) -> tuple[np.ndarray, float]:
    """Add white or pink Gaussian noise at an exact SNR (noise scaled to the signal power).

    Parameters
    ----------
    y : np.ndarray
        Mono audio.
    sr : int
        Sample rate (Hz); unused, kept for a uniform signature.
    snr_db : float
        Signal-to-noise power ratio over the whole excerpt (dB).
    color : {"white", "pink"}
        Noise spectrum.
    rng : np.random.Generator
        Source of the noise.

    Returns
    -------
    noisy : np.ndarray
        float32 audio.
    snr_db : float
        Achieved SNR (equals the request to float32 precision unless ``y`` is silent).
    """
    del sr
    return mix_at_snr(y, colored_noise(len(y), color=color, rng=rng), snr_db)


# ----------------------------------------------------------------------------- codecs

_MP3_RATES_HZ = (8000, 11025, 12000, 16000, 22050, 24000, 32000, 44100, 48000)
_OPUS_RATE_HZ = 48000
_MAX_CODEC_DELAY_S = 0.25


def _resample(y: np.ndarray, sr_in: float, sr_out: float) -> np.ndarray:
    if sr_in == sr_out:
        return np.asarray(y, dtype=np.float32)
    import soxr

    return soxr.resample(np.asarray(y, dtype=np.float32), sr_in, sr_out, quality="HQ").astype(
        np.float32, copy=False
    )


def _av_encode_decode(y: np.ndarray, sr: int, codec: str, bitrate_bps: int) -> tuple[np.ndarray, int]:
    """Encode mono float audio with PyAV/ffmpeg in memory and decode it again.

    Returns the decoded mono float32 audio (at ``sr``) and the encoded size in bytes.
    """
    import av

    container_fmt = {"libmp3lame": "mp3", "libopus": "ogg"}[codec]
    buf = io.BytesIO()
    with av.open(buf, "w", format=container_fmt) as oc:
        # Opus: constrained VBR keeps the bitrate near the target whatever the content
        options = {"vbr": "constrained"} if codec == "libopus" else {}
        st = oc.add_stream(codec, rate=sr, layout="mono", options=options)
        st.bit_rate = int(bitrate_bps)
        block = 4096
        pts = 0
        for i in range(0, len(y), block):
            chunk = np.ascontiguousarray(y[i : i + block], dtype=np.float32)[None, :]
            frame = av.AudioFrame.from_ndarray(chunk, format="flt", layout="mono")
            frame.sample_rate = sr
            frame.pts = pts
            pts += chunk.shape[1]
            for packet in st.encode(frame):
                oc.mux(packet)
        for packet in st.encode(None):
            oc.mux(packet)
    data = buf.getvalue()
    parts: list[np.ndarray] = []
    out_sr = sr
    with av.open(io.BytesIO(data), "r") as ic:
        for frame in ic.decode(audio=0):
            out_sr = frame.sample_rate
            a = frame.to_ndarray().astype(np.float32, copy=False)
            n_ch = len(frame.layout.channels)
            if frame.format.is_planar:
                a = a.mean(axis=0) if n_ch > 1 else a.reshape(-1)
            else:
                a = a.reshape(-1, n_ch).mean(axis=1) if n_ch > 1 else a.reshape(-1)
            parts.append(a)
    dec = np.concatenate(parts) if parts else np.zeros(0, dtype=np.float32)
    if out_sr != sr:
        dec = _resample(dec, out_sr, sr)
    return dec, len(data)


def _xcorr_lag(a: np.ndarray, b: np.ndarray, max_lag: int) -> int:
    """Lag (samples) by which ``a`` is delayed relative to ``b`` (positive: ``a`` late)."""
    from scipy.signal import correlate

    n = min(len(a), len(b))
    c = correlate(np.asarray(a[:n], np.float64), np.asarray(b[:n], np.float64), mode="full", method="fft")
    lags = np.arange(-(n - 1), n)
    keep = np.abs(lags) <= max_lag
    return int(lags[keep][np.argmax(c[keep])])


def _codec_rate(codec: str, sr: int) -> int:
    if codec == "libopus":
        return _OPUS_RATE_HZ
    return sr if sr in _MP3_RATES_HZ else 44100


def _codec_chain(y: np.ndarray, sr: int, codec: str, bitrate_bps: int) -> tuple[np.ndarray, int]:
    rate = _codec_rate(codec, sr)
    dec, n_bytes = _av_encode_decode(_resample(y, sr, rate), rate, codec, bitrate_bps)
    return _resample(dec, rate, sr), n_bytes


@functools.lru_cache(maxsize=32)
def _codec_delay_samples(codec: str, sr: int, bitrate_bps: int) -> int:
    """Delay (samples at ``sr``) of the encode/decode chain, measured once on a fixed probe.

    The delay of an encoder/decoder pair is a property of the codec settings, not of the
    content, so it is measured with seeded band-limited noise (unambiguous cross-correlation
    peak) rather than on the excerpt, whose periodicities could fool a correlation.
    """
    rng = np.random.default_rng(20240601)
    probe = colored_noise(int(2.0 * sr), color="pink", rng=rng).astype(np.float32) * np.float32(0.1)
    dec, _ = _codec_chain(probe, sr, codec, bitrate_bps)
    return _xcorr_lag(dec, probe, int(_MAX_CODEC_DELAY_S * sr))


def codec_roundtrip(
    y: np.ndarray, sr: int, *, codec: str, bitrate_kbps: float
) -> tuple[np.ndarray, dict[str, float]]:
    """Encode with a real lossy codec (ffmpeg via PyAV) and decode, time-aligned.

    Parameters
    ----------
    y : np.ndarray
        Mono audio.
    sr : int
        Sample rate (Hz).  MP3 runs at ``sr`` when MPEG allows it (else 44.1 kHz); Opus
        always runs at 48 kHz (soxr round-trip).
    codec : {"mp3", "opus"}
        ``"mp3"`` uses libmp3lame (CBR), ``"opus"`` libopus (constrained VBR) in Ogg.
    bitrate_kbps : float
        Target bitrate.

    Returns
    -------
    decoded : np.ndarray
        float32 audio of exactly ``len(y)`` samples, shifted by the codec delay (measured
        once per codec/rate/bitrate with a probe, see ``_codec_delay_samples``) so that it
        lines up with ``y``.
    facts : dict
        ``codec_delay_s`` (removed delay) and ``bitrate_kbps`` (achieved, from the
        encoded size including container overhead).
    """
    name = {"mp3": "libmp3lame", "opus": "libopus"}.get(codec)
    if name is None:
        raise ValueError(f"unknown codec {codec!r}; valid: mp3, opus")
    bps = int(round(bitrate_kbps * 1000))
    y = np.asarray(y, dtype=np.float32)
    if len(y) == 0:
        return y.copy(), {"codec_delay_s": 0.0, "bitrate_kbps": 0.0}
    delay = _codec_delay_samples(name, int(sr), bps)
    dec, n_bytes = _codec_chain(y, sr, name, bps)
    if delay > 0:
        dec = dec[delay:]
    elif delay < 0:
        dec = np.concatenate([np.zeros(-delay, dtype=np.float32), dec])
    facts = {
        "codec_delay_s": delay / sr,
        "bitrate_kbps": n_bytes * 8.0 / (len(y) / sr) / 1000.0,
    }
    return _fit_length(dec.astype(np.float32, copy=False), len(y)), facts


# ----------------------------------------------------------------------------- rooms & channels


def reverb(
    y: np.ndarray,
    sr: int,
    *,
    room_size: float = 0.6,
    damping: float = 0.4,
    wet_level: float = 0.35,
    dry_level: float = 0.75,
) -> np.ndarray:
    """Freeverb-style room (``pedalboard.Reverb``), tail cut at the input length.

    The defaults are one fixed, medium-large room with a clearly audible tail.  The
    reverb starts from silence on every call, so the result depends only on ``y``.
    """
    from pedalboard import Reverb

    plug = Reverb(room_size=room_size, damping=damping, wet_level=wet_level, dry_level=dry_level, width=1.0)
    out = plug.process(np.asarray(y, dtype=np.float32)[None, :], float(sr), reset=True)
    return _fit_length(np.asarray(out, dtype=np.float32).reshape(-1), len(y))


def telephone(
    y: np.ndarray,
    sr: int,
    *,
    low_hz: float = 300.0,
    high_hz: float = 3400.0,
    channel_sr: int = 8000,
    order: int = 4,
) -> np.ndarray:
    """Narrow-band telephone channel: resample to 8 kHz, band-pass 300–3400 Hz, resample back.

    The band-pass is a Butterworth filter of ``order`` designed at the channel rate and run
    forwards and backwards (zero phase, so the output stays time-aligned; the magnitude
    response is the Butterworth's squared).
    """
    from scipy.signal import butter, sosfiltfilt

    y = np.asarray(y, dtype=np.float32)
    rate = min(int(channel_sr), int(sr))
    x = _resample(y, sr, rate).astype(np.float64)
    high = min(high_hz, 0.45 * rate)
    sos = butter(order, [low_hz, high], btype="bandpass", fs=rate, output="sos")
    if len(x) > 3 * (2 * order + 1) * 2:
        x = sosfiltfilt(sos, x)
    else:
        x = np.zeros_like(x)
    return _fit_length(_resample(x.astype(np.float32), rate, sr), len(y))


# ----------------------------------------------------------------------------- time & pitch


def change_speed(y: np.ndarray, sr: int, *, speed: float) -> np.ndarray:
    """Play ``y`` ``speed`` times faster by resampling (tempo and pitch change together).

    Output length is ``round(len(y) / speed)``; every frequency is multiplied by ``speed``.
    Uses soxr (linear phase, time-aligned).
    """
    if speed <= 0:
        raise ValueError(f"speed must be > 0, got {speed}")
    y = np.asarray(y, dtype=np.float32)
    n_out = int(round(len(y) / speed))
    if len(y) == 0:
        return y.copy()
    return _fit_length(_resample(y, sr * speed, sr), n_out)


def _rubberband(y: np.ndarray, sr: int, stretch: float, semitones: float) -> np.ndarray:
    from pedalboard import time_stretch

    y = np.asarray(y, dtype=np.float32)
    if len(y) == 0:
        return y.copy()
    out = time_stretch(
        y[None, :], float(sr), stretch_factor=float(stretch), pitch_shift_in_semitones=float(semitones),
        high_quality=True, preserve_formants=False,
    )
    return np.asarray(out, dtype=np.float32).reshape(-1)


def change_tempo(y: np.ndarray, sr: int, *, speed: float) -> np.ndarray:
    """Tempo-only change (pitch kept) with Rubber Band (``pedalboard.time_stretch``).

    ``speed = 1.10`` plays 10 % faster: output length ``round(len(y) / speed)``.
    """
    if speed <= 0:
        raise ValueError(f"speed must be > 0, got {speed}")
    return _fit_length(_rubberband(y, sr, speed, 0.0), int(round(len(y) / speed)))


def shift_pitch(y: np.ndarray, sr: int, *, semitones: float) -> np.ndarray:
    """Pitch-only shift by ``semitones`` (duration kept) with Rubber Band, formants not preserved."""
    return _fit_length(_rubberband(y, sr, 1.0, semitones), len(y))


def change_tempo_phase_vocoder(y: np.ndarray, sr: int, *, speed: float) -> np.ndarray:
    """Tempo-only change with librosa's phase vocoder (``librosa.effects.time_stretch``).

    A second stretching algorithm beside Rubber Band: librosa's plain phase vocoder
    (2048-point STFT, no transient handling), a common step in Python pipelines, smears
    onsets by tens of milliseconds.  ``speed`` as in :func:`change_tempo`.
    """
    import librosa

    if speed <= 0:
        raise ValueError(f"speed must be > 0, got {speed}")
    y = np.asarray(y, dtype=np.float32)
    out = librosa.effects.time_stretch(y, rate=float(speed)) if len(y) else y.copy()
    return _fit_length(np.asarray(out, dtype=np.float32), int(round(len(y) / speed)))


def shift_pitch_phase_vocoder(y: np.ndarray, sr: int, *, semitones: float) -> np.ndarray:
    """Pitch-only shift with librosa's phase vocoder and resampling
    (``librosa.effects.pitch_shift``); see :func:`change_tempo_phase_vocoder`."""
    import librosa

    y = np.asarray(y, dtype=np.float32)
    out = librosa.effects.pitch_shift(y, sr=sr, n_steps=float(semitones)) if len(y) else y.copy()
    return _fit_length(np.asarray(out, dtype=np.float32), len(y))


# ----------------------------------------------------------------------------- time warps, edits, effects


def wow_flutter(y: np.ndarray, sr: int, *, depth: float = 0.006, rate_hz: float = 0.7) -> np.ndarray:
    """Periodic speed wobble (tape or vinyl wow): the playback speed swings between
    ``1 - depth`` and ``1 + depth`` at ``rate_hz``, so time *and* pitch drift back and
    forth around the original; same length as ``y``.

    >>> import numpy as np
    >>> y = np.sin(2 * np.pi * 440 * np.arange(22050) / 22050).astype(np.float32)
    >>> out = wow_flutter(y, 22050)
    >>> out.shape == y.shape and out.dtype == np.float32
    True
    """
    y = np.asarray(y, dtype=np.float32)
    if len(y) < 2:
        return y.copy()
    t = np.arange(len(y)) / float(sr)
    # read position: integral of 1 + depth * cos(2 pi f t)
    pos = t + depth / (2 * np.pi * rate_hz) * np.sin(2 * np.pi * rate_hz * t)
    return np.interp(np.clip(pos, 0.0, t[-1]), t, y).astype(np.float32)


def speed_drift(y: np.ndarray, sr: int, *, end_speed: float) -> np.ndarray:
    """Playback speed gliding linearly from 1 to ``end_speed`` over the output (a DJ
    nudging the pitch fader, a tempo ramp): tempo and pitch change together, as in
    :func:`change_speed`, but not at one rate.  The output has ``len(y) / mean speed``
    samples, the mean speed being ``(1 + end_speed) / 2``."""
    y = np.asarray(y, dtype=np.float32)
    mean = 0.5 * (1.0 + end_speed)
    n_out = int(round(len(y) / mean))
    if n_out < 2 or len(y) < 2:
        return _fit_length(y, n_out)
    speed = np.linspace(1.0, end_speed, n_out)
    pos = np.concatenate([[0.0], np.cumsum(speed[:-1])])      # input samples read so far
    return np.interp(np.clip(pos, 0, len(y) - 1), np.arange(len(y)), y).astype(np.float32)


def chop(y: np.ndarray, sr: int, *, piece_seconds: float, rng: np.random.Generator) -> np.ndarray:
    """Cut ``y`` into pieces of ``piece_seconds`` and put them back in a random order (a
    producer chopping a sample), with 5 ms fades at the cuts; same length as ``y``."""
    y = np.asarray(y, dtype=np.float32)
    n = max(1, int(round(piece_seconds * sr)))
    pieces = [y[i:i + n].copy() for i in range(0, len(y), n)]
    fade = min(int(0.005 * sr), n // 4)
    if fade > 0:
        ramp = np.linspace(0.0, 1.0, fade, dtype=np.float32)
        for p in pieces:
            if len(p) > 2 * fade:
                p[:fade] *= ramp
                p[-fade:] *= ramp[::-1]
    order = rng.permutation(len(pieces))
    return np.concatenate([pieces[i] for i in order]) if pieces else y.copy()


def stem(y: np.ndarray, sr: int, *, part: str, margin: float = 2.0) -> np.ndarray:
    """One stem of ``y`` by harmonic-percussive separation (``librosa.effects.hpss``, with
    ``margin`` for a cleaner split): ``part="harmonic"`` is the music without its drums
    (what a stem separator hands an AI pipeline to sing over), ``"percussive"`` the drums
    alone (a reused break); same length as ``y``.

    >>> import numpy as np
    >>> sr = 22050
    >>> tone = np.sin(2 * np.pi * 440 * np.arange(sr) / sr).astype(np.float32)
    >>> clicks = np.zeros(sr, np.float32); clicks[::2205] = 1.0
    >>> h = stem(tone + clicks, sr, part="harmonic")
    >>> p = stem(tone + clicks, sr, part="percussive")
    >>> bool(np.corrcoef(h, tone)[0, 1] > 0.9), bool(abs(np.corrcoef(p, tone)[0, 1]) < 0.2)
    (True, True)
    """
    import librosa

    if part not in ("harmonic", "percussive"):
        raise ValueError(f"stem part must be 'harmonic' or 'percussive', not {part!r}")
    y = np.asarray(y, dtype=np.float32)
    if len(y) < 2048:
        return y.copy()
    split = librosa.effects.harmonic if part == "harmonic" else librosa.effects.percussive
    return _fit_length(np.asarray(split(y, margin=margin), np.float32), len(y))


def pedalboard_effect(y: np.ndarray, sr: int, *plugins) -> np.ndarray:
    """``y`` through a chain of :mod:`pedalboard` plugins (EQ, dynamics, distortion,
    modulation); same length as ``y``."""
    from pedalboard import Pedalboard

    y = np.asarray(y, dtype=np.float32)
    if len(y) == 0:
        return y.copy()
    return _fit_length(np.asarray(Pedalboard(list(plugins))(y, sr), np.float32).reshape(-1), len(y))


# ----------------------------------------------------------------------------- vocoder stand-in


@functools.lru_cache(maxsize=8)
def _mel_basis(sr: int, n_fft: int, n_mels: int):
    """Mel filterbank as sparse matrices (``fb``, ``fb.T``) and its dense pseudo-inverse."""
    import librosa
    from scipy.sparse import csr_matrix

    fb = librosa.filters.mel(sr=sr, n_fft=n_fft, n_mels=n_mels).astype(np.float64)
    return csr_matrix(fb), csr_matrix(fb.T), np.linalg.pinv(fb)


def griffin_lim_resynth(
    y: np.ndarray,
    sr: int,
    *,
    rng: np.random.Generator,
    n_mels: int = 128,
    n_fft: int = 2048,
    hop_length: int = 512,
    n_iter: int = 32,
    nnls_iter: int = 25,
) -> np.ndarray:
    """Mel spectrogram → audio by Griffin-Lim: a stand-in for neural-vocoder regeneration.

    Same pipeline as ``librosa.feature.inverse.mel_to_audio`` (power mel spectrogram from
    ``librosa.feature.melspectrogram``, non-negative least-squares inversion of the mel
    filterbank, ``librosa.griffinlim``) with two changes: the NNLS step uses
    ``nnls_iter`` multiplicative updates started from the clipped pseudo-inverse (librosa's
    L-BFGS NNLS takes ~2.5 s per 10 s of audio at 22.05 kHz), and the random initial phase
    comes from ``rng`` so that the output is reproducible.  Phase is discarded, so the
    output keeps the time alignment and spectral envelope but not the waveform.
    """
    import librosa

    y = np.asarray(y, dtype=np.float32)
    if len(y) < n_fft:
        return y.copy()
    M = librosa.feature.melspectrogram(
        y=y, sr=sr, n_fft=n_fft, hop_length=hop_length, n_mels=n_mels, power=2.0
    ).astype(np.float64)
    fb, fb_t, fb_pinv = _mel_basis(int(sr), n_fft, n_mels)
    floor = 1e-10 * max(float(M.max()), 1e-30)
    S = np.maximum(fb_pinv @ M, floor)
    FtM = fb_t @ M
    for _ in range(nnls_iter):  # Lee-Seung multiplicative updates: S stays >= 0
        S *= FtM / np.maximum(fb_t @ (fb @ S), 1e-30)
    mag = np.sqrt(S)
    seed = int(rng.integers(0, 2**31 - 1))
    out = librosa.griffinlim(
        mag.astype(np.float32), n_iter=n_iter, hop_length=hop_length, n_fft=n_fft,
        length=len(y), random_state=np.random.RandomState(seed),
    )
    return np.asarray(out, dtype=np.float32)


# ----------------------------------------------------------------------------- embedding


def embed_excerpt(
    y: np.ndarray, bed: np.ndarray, *, offset_samples: int, snr_db: float = 0.0
) -> tuple[np.ndarray, float]:
    """Place ``y`` at ``offset_samples`` inside ``bed``, the bed continuing underneath.

    The bed is scaled so that, over the samples the excerpt covers, excerpt power /
    bed power equals ``snr_db`` (the excerpt keeps its level).  If that part of the bed is
    silent the bed's overall power is used; if the excerpt or the bed is silent the bed is
    left as is.

    Returns
    -------
    mixed : np.ndarray
        float32, ``len(bed)`` samples.
    snr_db : float
        Achieved excerpt-to-bed ratio over the covered samples.
    """
    y = np.asarray(y, dtype=np.float64)
    bed = np.asarray(bed, dtype=np.float64)
    if offset_samples < 0 or offset_samples + len(y) > len(bed):
        raise ValueError(
            f"excerpt of {len(y)} samples does not fit at offset {offset_samples} in {len(bed)} samples"
        )
    sl = slice(offset_samples, offset_samples + len(y))
    pe, pw = _power(y), _power(bed[sl])
    if pw <= 0:
        pw = _power(bed)
    if pe > 0 and pw > 0:
        bed = bed * math.sqrt(pe / (pw * 10.0 ** (snr_db / 10.0)))
    out = bed.copy()
    out[sl] += y
    pw_final = _power(bed[sl])
    achieved = _db(pe / pw_final) if pw_final > 0 else math.inf
    return out.astype(np.float32), achieved


# ----------------------------------------------------------------------------- adapters


def _other(ctx: TransformContext, seconds: float, sr: int, rng: np.random.Generator) -> np.ndarray:
    if ctx is None or ctx.other_audio is None:
        raise ValueError("this transform needs TransformContext.other_audio (negative music to mix in)")
    o = np.asarray(ctx.other_audio(seconds, rng), dtype=np.float32)
    if o.ndim != 1:
        raise ValueError(f"other_audio must return mono (1-D) audio, got shape {o.shape}")
    o = np.nan_to_num(o, nan=0.0, posinf=0.0, neginf=0.0)
    return _fit_length(o, int(round(seconds * sr)))


def _t_clean(y, sr, rng, ctx):
    return np.array(y, dtype=np.float32, copy=True)


def _t_noise(color: str, snr_db: float) -> ApplyFn:
    def fn(y, sr, rng, ctx):
        out, snr = add_noise(y, sr, snr_db=snr_db, color=color, rng=rng)
        ctx.facts["snr_db"] = snr
        return out

    return fn


def _t_mix(snr_db: float) -> ApplyFn:
    def fn(y, sr, rng, ctx):
        out, snr = mix_at_snr(y, _other(ctx, len(y) / sr, sr, rng), snr_db)
        ctx.facts["snr_db"] = snr
        return out

    return fn


def _t_codec(codec: str, kbps: float) -> ApplyFn:
    def fn(y, sr, rng, ctx):
        out, facts = codec_roundtrip(y, sr, codec=codec, bitrate_kbps=kbps)
        ctx.facts.update(facts)
        return out

    return fn


def _t_reverb(y, sr, rng, ctx):
    return reverb(y, sr)


def _t_telephone(y, sr, rng, ctx):
    return telephone(y, sr)


def _t_speed(speed: float) -> ApplyFn:
    return lambda y, sr, rng, ctx: change_speed(y, sr, speed=speed)


def _t_tempo(speed: float) -> ApplyFn:
    return lambda y, sr, rng, ctx: change_tempo(y, sr, speed=speed)


def _t_pitch(semitones: float) -> ApplyFn:
    return lambda y, sr, rng, ctx: shift_pitch(y, sr, semitones=semitones)


def _t_tempo_pv(speed: float) -> ApplyFn:
    return lambda y, sr, rng, ctx: change_tempo_phase_vocoder(y, sr, speed=speed)


def _t_pitch_pv(semitones: float) -> ApplyFn:
    return lambda y, sr, rng, ctx: shift_pitch_phase_vocoder(y, sr, semitones=semitones)


def _t_griffinlim(y, sr, rng, ctx):
    return griffin_lim_resynth(y, sr, rng=rng)


def _t_embed(total_seconds: float, snr_db: float = 0.0) -> ApplyFn:
    def fn(y, sr, rng, ctx):
        n_total = int(round(total_seconds * sr))
        if len(y) > n_total:
            raise ValueError(f"excerpt ({len(y) / sr:.2f} s) is longer than the {total_seconds:g} s bed")
        bed = _other(ctx, total_seconds, sr, rng)
        offset = int(rng.integers(0, n_total - len(y) + 1))
        out, snr = embed_excerpt(y, bed, offset_samples=offset, snr_db=snr_db)
        ctx.facts["embed_offset_s"] = offset / sr
        ctx.facts["snr_db"] = snr
        return out

    return fn


def _t_chain(*fns: ApplyFn) -> ApplyFn:
    def fn(y, sr, rng, ctx):
        for f in fns:
            y = f(y, sr, rng, ctx)
        return y

    return fn


# ----------------------------------------------------------------------------- registry

TRANSFORMS: dict[str, Transform] = {}
#: Transforms outside the default run, selected by name or all together as
#: ``"extended"`` (``fp bench run --transform extended``): kinds of change no target
#: names (EQ, dynamics, modulation effects, heavy rooms, wobbling speed, chopped samples,
#: stems, key changes beyond the searched region, lower bitrates), to measure how far the
#: engine generalises beyond what it was tuned on.
EXTENDED: dict[str, Transform] = {}
#: The selection name of :data:`EXTENDED` as a whole.
EXTENDED_SET = "extended"


def register(t: Transform, extended: bool = False) -> Transform:
    """Add ``t`` to :data:`TRANSFORMS` (or to :data:`EXTENDED`; names are unique across
    both) and return it."""
    if t.name in TRANSFORMS or t.name in EXTENDED or t.name == EXTENDED_SET:
        raise ValueError(f"transform {t.name!r} is already registered")
    if not t.name or not t.family:
        raise ValueError("a transform needs a name and a family")
    if t.excerpt_seconds <= 0:
        raise ValueError(f"transform {t.name!r}: excerpt_seconds must be > 0")
    (EXTENDED if extended else TRANSFORMS)[t.name] = t
    return t


def transform_named(name: str) -> Transform:
    """The registered transform ``name``, default or :data:`EXTENDED` (``KeyError`` if
    neither has it)."""
    if name in TRANSFORMS:
        return TRANSFORMS[name]
    return EXTENDED[name]


def get_transforms(names_or_families: Iterable[str] | None = None) -> list[Transform]:
    """Select transforms by exact name or by family, in the order asked, without duplicates.

    Parameters
    ----------
    names_or_families : iterable of str or None
        Transform names (``"speed_1.25"``) and/or families (``"speed"``) of the default
        registry, names of :data:`EXTENDED` transforms, and ``"extended"`` for all of
        those; ``None`` selects the default registry in registration order.  A single
        string is treated as one item.

    Raises
    ------
    ValueError
        For an item that is neither a name nor a family (one-line message listing the valid
        names and families).
    """
    if names_or_families is None:
        return list(TRANSFORMS.values())
    if isinstance(names_or_families, str):
        names_or_families = [names_or_families]
    families: dict[str, list[Transform]] = {}
    for t in TRANSFORMS.values():
        families.setdefault(t.family, []).append(t)
    families[EXTENDED_SET] = list(EXTENDED.values())
    out: list[Transform] = []
    seen: set[str] = set()
    for item in names_or_families:
        key = str(item).strip()
        if key in TRANSFORMS or key in EXTENDED:
            picked = [transform_named(key)]
        elif key in families:
            picked = families[key]
        else:
            raise ValueError(
                f"unknown transform or family {key!r}; valid names: "
                f"{', '.join([*TRANSFORMS, *EXTENDED])}; families: {', '.join(families)}"
            )
        for t in picked:
            if t.name not in seen:
                seen.add(t.name)
                out.append(t)
    return out


def apply_transform(
    t: Transform,
    excerpt: np.ndarray,
    sr: int,
    rng: np.random.Generator | int,
    ctx: TransformContext | None = None,
) -> TransformOutput:
    """Apply ``t`` to a mono excerpt and return the query audio with what was measured.

    Parameters
    ----------
    t : Transform
        The transform (e.g. ``TRANSFORMS["mp3_64k"]``).
    excerpt : np.ndarray
        Mono audio of (normally) ``t.excerpt_seconds``; any length is accepted and
        time-scaling transforms output ``len / speed`` samples.
    sr : int
        Sample rate (Hz).
    rng : np.random.Generator or int
        Randomness (an int is used as a seed); the same seed gives identical output.
    ctx : TransformContext, optional
        Source of negative music; required by the ``mix`` and ``embed`` families.  It is
        not modified: the call fills the ``facts`` of a copy.

    Returns
    -------
    TransformOutput
    """
    y = _as_mono_f32(excerpt, "excerpt")
    if not isinstance(rng, np.random.Generator):
        rng = np.random.default_rng(rng)
    call_ctx = TransformContext(other_audio=ctx.other_audio if ctx is not None else None)
    t0 = time.perf_counter()
    raw = t.apply(y, int(sr), rng, call_ctx)
    elapsed = time.perf_counter() - t0
    raw = np.asarray(raw, dtype=np.float32).reshape(-1)
    if not np.all(np.isfinite(raw)):
        raise RuntimeError(f"transform {t.name!r} produced non-finite samples")
    audio, gain = peak_normalise(raw)
    facts = dict(call_ctx.facts)
    offset = float(facts.get("embed_offset_s", 0.0)) if t.embeds else 0.0
    used = replace(t, embed_offset=offset) if t.embeds else t
    return TransformOutput(
        audio=audio,
        sr=int(sr),
        transform=used,
        embed_offset=offset,
        duration=len(audio) / float(sr),
        gain=float(gain),
        elapsed=elapsed,
        facts=facts,
    )


def _fmt(x: float) -> str:
    return f"{x:g}"


def _register_defaults() -> None:
    q = QUERY_SECONDS
    register(Transform("clean_10s", "clean", q, _t_clean, description="unchanged 10 s excerpt"))
    register(Transform("clean_5s", "clean", 5.0, _t_clean, description="unchanged 5 s excerpt"))
    register(Transform("clean_2s", "short", 2.0, _t_clean, description="unchanged 2 s excerpt"))
    register(Transform("noise_white_5db_3s", "short", 3.0, _t_noise("white", 5.0),
                       description="3 s excerpt, white noise at 5 dB SNR"))
    for color in ("white", "pink"):
        for snr in (5.0, 0.0):
            register(Transform(f"noise_{color}_{_fmt(snr)}db", "noise", q, _t_noise(color, snr),
                               description=f"{color} noise at {_fmt(snr)} dB SNR"))
    register(Transform("mix_0db", "mix", q, _t_mix(0.0),
                       description="another (negative) song mixed over at 0 dB"))
    register(Transform("mp3_64k", "codec", q, _t_codec("mp3", 64),
                       description="MP3 64 kbps CBR (libmp3lame) round-trip"))
    register(Transform("opus_24k", "codec", q, _t_codec("opus", 24),
                       description="Opus 24 kbps constrained VBR (libopus, 48 kHz) round-trip"))
    register(Transform("reverb", "reverb", q, _t_reverb, description="fixed medium-large room (Freeverb)"))
    register(Transform("telephone", "telephone", q, _t_telephone,
                       description="8 kHz, 300-3400 Hz band-pass"))
    for s in (0.95, 1.05, 0.9, 1.1, 0.8, 1.25, 0.7, 1.5):
        register(Transform(f"speed_{_fmt(s)}", "speed", q * s, _t_speed(s), speed=s,
                           pitch_semitones=12.0 * math.log2(s),
                           description=f"resampled x{_fmt(s)} (tempo and pitch)"))
    for pct in (5, 10, 20):
        for sign in (-1, +1):
            s = 1.0 + sign * pct / 100.0
            register(Transform(f"tempo_{sign * pct:+d}", "tempo", q * s, _t_tempo(s), speed=s,
                               description=f"tempo {sign * pct:+d} %, pitch kept"))
    for st in (1, 2, 4, 6):
        for sign in (-1, +1):
            register(Transform(f"pitch_{sign * st:+d}", "pitch", q, _t_pitch(float(sign * st)),
                               pitch_semitones=float(sign * st),
                               description=f"pitch {sign * st:+d} semitones, tempo kept"))
    # A sample fitted to a new song's beat and key: tempo and key changed independently.
    for s, st in ((1.06, -2.0), (0.92, 3.0)):
        register(Transform(f"tempokey_{round((s - 1) * 100):+d}_{st:+g}", "tempokey", q * s,
                           _t_chain(_t_tempo(s), _t_pitch(st)), speed=s, pitch_semitones=st,
                           description=f"tempo {round((s - 1) * 100):+d} % and key {st:+g} "
                                       f"semitones together"))
    # The same kinds of change through a different algorithm: librosa's phase vocoder.
    s = 0.85
    register(Transform("pv_tempo_-15", "phasevocoder", q * s, _t_tempo_pv(s), speed=s,
                       description="tempo -15 %, pitch kept, librosa phase vocoder"))
    register(Transform("pv_pitch_-3", "phasevocoder", q, _t_pitch_pv(-3.0), pitch_semitones=-3.0,
                       description="pitch -3 semitones, tempo kept, librosa phase vocoder"))
    register(Transform("griffinlim", "vocoder", q, _t_griffinlim,
                       description="128-band mel spectrogram resynthesised by Griffin-Lim (32 iter)"))
    register(Transform("embed_5s_in_30s", "embed", 5.0, _t_embed(30.0), embed_offset=math.nan,
                       description="5 s excerpt at a random position in 30 s of other music, 0 dB"))
    s = 0.85
    register(Transform("slowed_reverb", "chain", q * s, _t_chain(_t_speed(s), _t_reverb), speed=s,
                       pitch_semitones=12.0 * math.log2(s),
                       description="slowed x0.85 (resampled) + reverb"))


_register_defaults()


def _t_effect(*plugin_specs) -> ApplyFn:
    """A pedalboard chain built per call (plugins keep state between calls)."""
    def fn(y, sr, rng, ctx):
        import pedalboard

        return pedalboard_effect(y, sr, *(getattr(pedalboard, name)(**kw) for name, kw in plugin_specs))

    return fn


def _register_extended() -> None:
    q = QUERY_SECONDS

    def add(name, family, apply, description, seconds=q, **truth):
        register(Transform(name, family, seconds, apply, description=description, **truth),
                 extended=True)

    add("eq_highpass_1k", "eq", _t_effect(("HighpassFilter", {"cutoff_frequency_hz": 1000.0})),
        "high-pass at 1 kHz (no bass, no fundamentals of low voices)")
    add("eq_lowpass_1500", "eq", _t_effect(("LowpassFilter", {"cutoff_frequency_hz": 1500.0})),
        "low-pass at 1.5 kHz (muffled)")
    add("eq_bass_boost_12db", "eq", _t_effect(("LowShelfFilter", {"cutoff_frequency_hz": 200.0,
                                                                   "gain_db": 12.0})),
        "low shelf +12 dB under 200 Hz")
    add("compress_heavy", "dynamics",
        _t_effect(("Compressor", {"threshold_db": -35.0, "ratio": 12.0, "attack_ms": 1.0,
                                  "release_ms": 50.0}), ("Gain", {"gain_db": 18.0}),
                  ("Limiter", {"threshold_db": -1.0})),
        "compressor 12:1 from -35 dB, +18 dB make-up, limiter")
    add("distortion_25db", "dynamics", _t_effect(("Distortion", {"drive_db": 25.0})),
        "tanh distortion, 25 dB drive")
    add("bitcrush_6bit", "dynamics", _t_effect(("Bitcrush", {"bit_depth": 6.0})),
        "6-bit quantisation")
    add("chorus", "modulation", _t_effect(("Chorus", {"rate_hz": 1.5, "depth": 0.5,
                                                     "centre_delay_ms": 7.0, "feedback": 0.3,
                                                     "mix": 0.5})),
        "chorus, 50 % mix")
    add("phaser", "modulation", _t_effect(("Phaser", {})), "phaser (pedalboard defaults)")
    add("mp3_32k", "codec", _t_codec("mp3", 32), "MP3 32 kbps CBR round-trip")
    add("opus_12k", "codec", _t_codec("opus", 12), "Opus 12 kbps round-trip")
    add("wow_flutter", "timewarp", lambda y, sr, rng, ctx: wow_flutter(y, sr),
        "speed wobbling +-0.6 % at 0.7 Hz (tape or vinyl wow)")
    add("speed_drift_+6", "timewarp", lambda y, sr, rng, ctx: speed_drift(y, sr, end_speed=1.06),
        "speed gliding from x1.00 to x1.06 (tempo and pitch)", seconds=q * 1.03, speed=1.03,
        pitch_semitones=12.0 * math.log2(1.03))
    add("reverb_heavy", "reverb",
        lambda y, sr, rng, ctx: reverb(y, sr, room_size=0.9, wet_level=0.8, dry_level=0.4),
        "very large room, reverb twice as loud as the direct sound (Freeverb)")
    add("nightcore", "chain", _t_chain(_t_speed(1.25), _t_reverb), "sped up x1.25 + reverb",
        seconds=q * 1.25, speed=1.25, pitch_semitones=12.0 * math.log2(1.25))
    add("tempokey_-10_+5", "tempokey", _t_chain(_t_tempo(0.9), _t_pitch(5.0)),
        "tempo -10 % and key +5 semitones (beyond the searched tempo-and-key region)",
        seconds=q * 0.9, speed=0.9, pitch_semitones=5.0)
    # Tempo changed by more than 10 % with the key: a sample fitted to a song of another
    # tempo (a 100-BPM loop in an 85- or 115-BPM song), away from the speed line.
    for s, st in ((1.15, -3.0), (0.85, 4.0)):
        add(f"tempokey_{round((s - 1) * 100):+d}_{st:+g}", "tempokey",
            _t_chain(_t_tempo(s), _t_pitch(st)),
            f"tempo {round((s - 1) * 100):+d} % and key {st:+g} semitones (beyond tempo +-10 %)",
            seconds=q * s, speed=s, pitch_semitones=st)
    add("pv_tempo_+10", "phasevocoder", _t_tempo_pv(1.1),
        "tempo +10 %, pitch kept, librosa phase vocoder", seconds=q * 1.1, speed=1.1)
    add("pv_pitch_+2", "phasevocoder", _t_pitch_pv(2.0),
        "pitch +2 semitones, tempo kept, librosa phase vocoder", pitch_semitones=2.0)
    add("chop_1s", "edit", lambda y, sr, rng, ctx: chop(y, sr, piece_seconds=1.0, rng=rng),
        "1 s pieces of the excerpt in a random order (a chopped sample)")
    add("stem_no_drums", "stem", lambda y, sr, rng, ctx: stem(y, sr, part="harmonic"),
        "the drums taken out (harmonic-percussive separation, margin 2)")
    add("stem_drums_only", "stem", lambda y, sr, rng, ctx: stem(y, sr, part="percussive"),
        "the drums alone (harmonic-percussive separation, margin 2)")
    add("embed_tempo_+10_6db", "embed", _t_chain(_t_tempo(1.1), _t_embed(30.0, 6.0)),
        "5 s excerpt at tempo +10 % in 30 s of other music, 6 dB over it", seconds=5.5,
        speed=1.1, embed_offset=math.nan)
    add("embed_pitch_-2_8s_in_90s", "embed", _t_chain(_t_pitch(-2.0), _t_embed(90.0, 0.0)),
        "8 s excerpt at pitch -2 semitones in 90 s of other music as loud (a sample inside "
        "a longer song)", seconds=8.0, pitch_semitones=-2.0, embed_offset=math.nan,
        bed_seconds=90.0)


_register_extended()

#: A small representative subset for ``--quick`` runs.
QUICK_SET: tuple[str, ...] = (
    "clean_10s",
    "noise_pink_5db",
    "mix_0db",
    "mp3_64k",
    "speed_1.1",
    "tempo_-10",
    "pitch_+2",
    "embed_5s_in_30s",
)
