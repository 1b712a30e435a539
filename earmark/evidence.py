"""The one match-evidence type.

A :class:`Match` says which catalogue recording a query uses, where (segments on both sides),
how it was transformed (speed factor, pitch shift) and how strongly (aligned landmarks and a
significance).  The same objects flow unchanged into the CLI table, ``fp match --json``,
``fp scan`` reports and ``fp bench``: nothing downstream recomputes evidence.

JSON schema of one query line (``fp match --json``, ``results.jsonl`` of ``fp scan``)::

    {
      "query": "suspect.wav",            # path (or label) of the query
      "duration": 30.0,                  # seconds of query audio analysed
      "error": null,                     # one-line reason when the query could not be read
      "matches": [
        {
          "kind": "recording",           # landmark tier: the same recording is used
          "reference": {"track_id": 3, "path": "...", "title": "...", "artist": "...",
                        "isrc": "...", "rights_holder": "...", "duration": 201.3},
          "score": 57,                   # landmarks aligned on one offset / time-scale line
          "significance": 41.2,          # -log10 of the chance probability (see matcher)
          "query_start": 4.02, "query_end": 9.98,          # seconds in the query
          "reference_start": 61.3, "reference_end": 67.6,  # seconds in the reference
          "coverage": 0.6,               # fraction of the query the segment covers
          "speed": 1.05,                 # time-scale: reference seconds per query second
          "pitch_semitones": 0.84,       # frequency shift of the query vs. the reference
          "verified": null,              # when the landmarks alone were under the threshold:
                                         # {"correlation", "peaks", "peaks_z"} of the audio
                                         # check against the catalogue file (AudioCheck)
          "alignment": [[q_t, r_t], ...] # optional: matched landmark times (distinct, for plots)
        }
      ]
    }
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field
from typing import Any


@dataclass(frozen=True)
class Reference:
    """A catalogue recording as stored in the index metadata."""

    track_id: int
    path: str
    duration: float = 0.0
    title: str | None = None
    artist: str | None = None
    isrc: str | None = None
    rights_holder: str | None = None
    extra: dict[str, str] = field(default_factory=dict)

    def label(self) -> str:
        """Short human-readable name: ``artist – title`` if known, else the file name."""
        if self.title:
            return f"{self.artist} – {self.title}" if self.artist else self.title
        return self.path.rsplit("/", 1)[-1]


@dataclass(frozen=True)
class AudioCheck:
    """How a match's audio compares with its catalogue file at the matched place
    (:mod:`earmark.verify`).

    Attributes
    ----------
    correlation : float
        Correlation of the aligned log-frequency spectrograms (each frequency's mean
        removed), in [-1, 1].
    peaks : float or None
        Fraction of the recording's spectral peaks that the query has at the alignment
        (within 16 ms and 1/3 semitone).
    peaks_z : float or None
        How far ``peaks`` stands above the same fraction at other alignments of the two
        signals (0.3-2 s away), in standard deviations of those.
    coherence : float or None
        Phase coherence of the query with the catalogue file's waveform at the alignment,
        in [0, 1] (mean over 60 Hz-3.6 kHz); ``None`` for a match with a speed or pitch
        change, which is not compared sample for sample.
    coherence_z : float or None
        How far ``coherence`` stands above the coherence at the same other alignments.
    """

    correlation: float
    peaks: float | None = None
    peaks_z: float | None = None
    coherence: float | None = None
    coherence_z: float | None = None

    def to_dict(self) -> dict[str, float | None]:
        def rounded(v: float | None, digits: int) -> float | None:
            return None if v is None else round(float(v), digits)

        return {"correlation": round(float(self.correlation), 3),
                "peaks": rounded(self.peaks, 3), "peaks_z": rounded(self.peaks_z, 2),
                "coherence": rounded(self.coherence, 3),
                "coherence_z": rounded(self.coherence_z, 2)}

    def summary(self) -> str:
        """One short line: ``"waveform 0.49 (z 93.3), peaks 58 % (z 20.6), corr. 0.51"``."""
        waveform = "" if self.coherence is None or self.coherence_z is None else \
            f"waveform {self.coherence:.2f} (z {self.coherence_z:.1f}), "
        peaks = "" if self.peaks is None or self.peaks_z is None else \
            f"peaks {100 * self.peaks:.0f} % (z {self.peaks_z:.1f}), "
        return f"{waveform}{peaks}corr. {self.correlation:.2f}"

    @classmethod
    def from_json(cls, value: Any) -> "AudioCheck | None":
        """Read back what :meth:`to_dict` wrote (or an older release's bare correlation);
        ``None`` for anything else: results files are untrusted input."""
        def number(v: Any) -> float | None:
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
                return None
            return float(v)

        if isinstance(value, dict):
            corr = number(value.get("correlation"))
            if corr is None:
                return None
            return cls(corr, number(value.get("peaks")), number(value.get("peaks_z")),
                       number(value.get("coherence")), number(value.get("coherence_z")))
        corr = number(value)
        return None if corr is None else cls(corr)


@dataclass(frozen=True)
class Match:
    """Evidence that a query uses one catalogue recording over one segment.

    Attributes
    ----------
    reference : Reference
        The matched catalogue recording.
    score : int
        Number of query landmarks that agree on one time offset and time-scale line.
    significance : float
        ``-log10`` of the probability that a chance alignment would score at least
        ``score`` given the index and the query size (higher is stronger; ``>= 6`` is
        roughly "one in a million queries").
    query_start, query_end : float
        Segment of the query, in seconds: the estimated extent of the use.  The aligned
        landmarks (``alignment``) are a sample of it, so the ends extend one mean gap
        between them beyond the first and last (:func:`earmark.match.evidence_to_match`),
        clipped to the query; with ``MatchConfig.audio_edges`` (the default search) an
        end inside the query is then read off the audio, where the recording's spectral
        peaks stop being found along the alignment (:func:`earmark.verify.use_edges`).
    reference_start, reference_end : float
        The corresponding segment of the reference recording, in seconds.
    coverage : float
        ``(query_end - query_start) / query duration``.
    speed : float
        Reference seconds per query second: ``1.25`` means the query plays the
        reference 25 % faster (tempo); 1.0 when unchanged.
    pitch_semitones : float
        Frequency shift of the query relative to the reference, in semitones.
        A plain speed change ``s`` gives ``12 * log2(s)``; tempo-only changes give 0.
    kind : str
        ``"recording"`` for landmark matches.
    alignment : list of (float, float)
        Query and reference times (seconds) of the aligned landmarks, for plots.
    verified : AudioCheck or None
        Set when the landmark evidence alone was under the significance threshold and the
        match was let through by a check on the audio (:mod:`earmark.verify`): how the
        aligned spectrograms of query and catalogue file compare.  ``None`` otherwise.
    """

    reference: Reference
    score: int
    significance: float
    query_start: float
    query_end: float
    reference_start: float
    reference_end: float
    coverage: float
    speed: float = 1.0
    pitch_semitones: float = 0.0
    kind: str = "recording"
    alignment: tuple[tuple[float, float], ...] = ()
    verified: AudioCheck | None = None

    def to_dict(self, with_alignment: bool = False) -> dict[str, Any]:
        """JSON-ready dict (floats rounded for readability)."""
        d = asdict(self)
        ref = d.pop("reference")
        extra = ref.pop("extra") or {}
        ref.update(extra)
        out: dict[str, Any] = {"kind": self.kind, "reference": ref}
        for k in ("score",):
            out[k] = int(d[k])
        for k in ("significance", "query_start", "query_end", "reference_start",
                  "reference_end", "coverage", "speed", "pitch_semitones"):
            v = float(d[k])
            out[k] = round(v, 4) if math.isfinite(v) else None
        out["verified"] = None if self.verified is None else self.verified.to_dict()
        if with_alignment:
            # Distinct points only: the landmarks of one anchor peak share its two times.
            out["alignment"] = [list(p) for p in dict.fromkeys(
                (round(q, 3), round(r, 3)) for q, r in self.alignment)]
        return out


@dataclass(frozen=True)
class QueryResult:
    """Everything one query produced: its matches (best first) or an error."""

    query: str
    duration: float
    matches: tuple[Match, ...] = ()
    error: str | None = None
    elapsed: float = 0.0

    @property
    def ok(self) -> bool:
        return self.error is None

    def to_dict(self, with_alignment: bool = False) -> dict[str, Any]:
        return {
            "query": self.query,
            "duration": round(float(self.duration), 3),
            "error": self.error,
            "matches": [m.to_dict(with_alignment) for m in self.matches],
        }

    def to_json(self, with_alignment: bool = False) -> str:
        return json.dumps(self.to_dict(with_alignment), ensure_ascii=False)
