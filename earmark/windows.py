"""Long queries in windows: bounded memory for a DJ mix or a three-hour livestream.

A query is matched whole while it is at most ``window_seconds`` long.  A longer one
is cut into windows of ``window_seconds`` that overlap by ``overlap_seconds``, each
matched on its own, and the matches are put back together:

* a match is kept by the window that *owns* its middle (each window owns its span minus
  half the overlap at each inner edge), so a use inside an overlap, found twice, is
  reported once;
* the parts of one long use that runs across windows (same recording, same transform,
  same alignment line, touching or overlapping segments) are joined into one match.

Why: matching holds every query landmark at once (~600 per second with the query side's
density) and the vote tables grow with them; a 3-hour file took 4.2 GB of memory whole.
Ten-minute windows hold about 1/18 of that.  A use shorter than the overlap lies
entirely in one window and is found as it would be in a query of one window's length;
the significance of each part is that of a ``window_seconds`` query.

A joined match's ``significance`` is the largest of its parts' (each part alone is
already that unlikely), and its ``score`` adds the parts' scores less each later
part's share in the overlap with the earlier one (an estimate: the same landmarks are
aligned in both windows there).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Iterator

import numpy as np

from earmark.evidence import Match

#: Queries longer than this are matched in windows (10 minutes at 8 kHz: ~380 000 query
#: landmarks, a few hundred MB of matcher state).
WINDOW_SECONDS = 600.0
#: Consecutive windows share this much audio: a use up to this long is inside one window.
OVERLAP_SECONDS = 60.0
#: Parts of one use are joined when their alignment lines agree within this many
#: seconds, their speeds within this ratio and their pitch within this many semitones
#: (recording matches are far more precise; derivation matches are estimated on a
#: coarser lattice).
JOIN_LINE_SECONDS = {"recording": 0.25, "derivation": 3.0}
JOIN_SPEED_RATIO = {"recording": 0.005, "derivation": 0.03}
JOIN_PITCH_SEMITONES = {"recording": 0.3, "derivation": 0.5}
#: Alignment points kept per joined match (as for one query).
MAX_ALIGNMENT_POINTS = 400


def audio_windows(blocks: Iterable[np.ndarray], sr: int, window_seconds: float = WINDOW_SECONDS,
                  overlap_seconds: float = OVERLAP_SECONDS
                  ) -> Iterator[tuple[float, np.ndarray, bool]]:
    """Cut a stream of mono blocks into overlapping windows.

    Yields ``(start_seconds, samples, is_last)``; only one window (plus a block) is held
    at a time.  A stream no longer than one window yields it whole, once.

    Examples
    --------
    >>> sr = 10
    >>> blocks = (np.full(7, i, np.float32) for i in range(5))           # 35 samples
    >>> [(t, len(y), last) for t, y, last in audio_windows(blocks, sr, 2.0, 0.5)]
    [(0.0, 20, False), (1.5, 20, True)]
    >>> [(t, len(y)) for t, y, _ in audio_windows([np.zeros(12, np.float32)], sr, 2.0, 0.5)]
    [(0.0, 12)]
    """
    if not 0 <= overlap_seconds < window_seconds:
        raise ValueError("need 0 <= overlap_seconds < window_seconds")
    n_win = int(round(window_seconds * sr))
    n_step = n_win - int(round(overlap_seconds * sr))
    pending: list[np.ndarray] = []
    n_pending = 0
    start = 0            # sample index of the first pending sample
    emitted_to = 0       # end (sample index) of the last window yielded
    held: tuple[int, np.ndarray] | None = None   # a full window, yielded once we know more

    for block in blocks:
        block = np.asarray(block, dtype=np.float32)
        pending.append(block)
        n_pending += block.shape[0]
        while n_pending >= n_win + 1:     # a full window, and audio after it
            buf = np.concatenate(pending)
            if held is not None:
                yield held[0] / sr, held[1], False
            held = (start, buf[:n_win].copy())
            emitted_to = start + n_win
            pending, n_pending = [buf[n_step:]], buf.shape[0] - n_step
            start += n_step
    buf = np.concatenate(pending) if pending else np.zeros(0, np.float32)
    tail_new = start + buf.shape[0] > emitted_to
    if held is not None:
        yield held[0] / sr, held[1], not tail_new
    if tail_new or held is None:
        yield start / sr, buf, True


def owned_span(start: float, end: float, first: bool, last: bool,
               overlap_seconds: float) -> tuple[float, float]:
    """The part of a window whose matches it reports: its span less half the overlap at
    each edge it shares with a neighbour.

    >>> owned_span(540.0, 1140.0, False, False, 60.0)
    (570.0, 1110.0)
    >>> owned_span(0.0, 600.0, True, False, 60.0)
    (0.0, 570.0)
    """
    half = 0.5 * overlap_seconds
    return (start if first else start + half, math.inf if last else end - half)


def shift(m: Match, seconds: float) -> Match:
    """``m`` with its query times moved by ``seconds`` (window -> whole query; its
    ``coverage`` is the caller's to recompute once the whole query's length is known)."""
    from dataclasses import replace

    return replace(m, query_start=m.query_start + seconds, query_end=m.query_end + seconds,
                   alignment=tuple((round(q + seconds, 3), r) for q, r in m.alignment))


def line_offset(m: Match) -> float:
    """Reference time at query time 0 on the match's alignment line."""
    return m.reference_start - m.speed * m.query_start


def _same_use(a: Match, b: Match, gap_seconds: float) -> bool:
    kind = a.kind if a.kind in JOIN_LINE_SECONDS else "recording"
    return (a.reference.track_id == b.reference.track_id and a.kind == b.kind
            and abs(b.speed / a.speed - 1.0) <= JOIN_SPEED_RATIO[kind]
            and abs(b.pitch_semitones - a.pitch_semitones) <= JOIN_PITCH_SEMITONES[kind]
            and abs(line_offset(b) - line_offset(a)) <= JOIN_LINE_SECONDS[kind]
            and b.query_start <= a.query_end + gap_seconds)


def _join(a: Match, b: Match, query_duration: float) -> Match:
    from dataclasses import replace

    shared = max(0.0, min(a.query_end, b.query_end) - b.query_start)
    b_len = max(b.query_end - b.query_start, 1e-9)
    score = a.score + b.score - int(round(b.score * min(shared / b_len, 1.0)))
    w_a, w_b = max(a.score, 1), max(b.score, 1)
    later = b if b.query_end >= a.query_end else a
    points = sorted(set(a.alignment) | set(b.alignment))
    step = max(1, len(points) // MAX_ALIGNMENT_POINTS)
    q0, q1 = a.query_start, later.query_end
    return replace(a, score=max(score, a.score, b.score),
                   significance=max(a.significance, b.significance),
                   query_start=q0, query_end=q1,
                   reference_start=min(a.reference_start, b.reference_start),
                   reference_end=later.reference_end,
                   coverage=(q1 - q0) / query_duration if query_duration > 0 else 0.0,
                   speed=(a.speed * w_a + b.speed * w_b) / (w_a + w_b),
                   pitch_semitones=(a.pitch_semitones * w_a + b.pitch_semitones * w_b)
                   / (w_a + w_b),
                   alignment=tuple(points[::step]))


def join_parts(parts: list[Match], query_duration: float, gap_seconds: float) -> list[Match]:
    """Join the parts of each use that runs across windows (module docstring).  Parts
    of one recording at different places, or under different transforms, stay apart."""
    out: list[Match] = []
    for m in sorted(parts, key=lambda x: (x.kind, x.reference.track_id, x.query_start)):
        for i in range(len(out) - 1, -1, -1):
            if _same_use(out[i], m, gap_seconds):
                out[i] = _join(out[i], m, query_duration)
                break
        else:
            out.append(m)
    return out
