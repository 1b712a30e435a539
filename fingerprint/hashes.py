"""The hash layout: the one place that says how a landmark becomes a key and a posting.

A landmark is a pair of spectral peaks: an anchor at ``(t1, f1)`` and a target at
``(t1 + dt, f1 + df)``, with times in frames and frequencies in semitones above
``fmin_hz``.  Its key packs three quantised coordinates into ``KEY_BITS = 20`` bits::

    bit 19 .......... 13 12 .......... 6 5 ..... 0
        f1 (7 bits)         df (7 bits)     dt (6 bits)
        0.5 semitone        1/3 semitone    1 frame (16 ms)
        0 .. 63.5 st        -21.3 .. +21 st 3 .. 66 frames

Why these coordinates: ``df`` (a log-frequency *difference*) does not change under a
pitch shift; ``f1`` moves by the shift and ``dt`` scales with tempo, so the matcher
applies each speed/pitch hypothesis to the query's continuous coordinates and then
quantises (:mod:`earmark.match`).  ``f1`` is kept because without it keys lose 7 bits of
selectivity; its 0.5-semitone bins match the pitch-hypothesis grid.

A posting (what the store keeps per landmark) is a ``uint32``::

    bit 31 ....... 16 15 ........ 0
        slot (16 bits)   anchor frame within the slot (16 bits, 17.5 min)

A *slot* is a (track, first frame) pair of a segment: tracks longer than 65 536 frames
(17.5 min) take several slots, so a 3-hour file still fits.  The key's upper
``TABLE_BITS`` select a bucket of a dense offset table; the low ``LO_BITS`` are stored
beside each posting as a ``uint8`` (5 bytes per landmark on disk).

>>> import numpy as np
>>> k = pack_key(np.array([10]), np.array([70]), np.array([5]))
>>> unpack_key(k)
(array([10]), array([70]), array([5]))
"""

from __future__ import annotations

import numpy as np
from numba import njit

#: Format version of keys and postings; stored in every segment header.
LAYOUT_VERSION = 1

F1_BITS = 7
DF_BITS = 7
DT_BITS = 6
KEY_BITS = F1_BITS + DF_BITS + DT_BITS
#: Bits of the key resolved by the bucket table; the rest are stored per posting.
TABLE_BITS = 16
LO_BITS = KEY_BITS - TABLE_BITS

#: Quantisation steps (semitones, semitones, frames).
F1_STEP_SEMITONES = 0.5
DF_STEP_SEMITONES = 1.0 / 3.0
DT_STEP_FRAMES = 1.0
#: df bins are centred: bin DF_ZERO holds df in [0, DF_STEP).
DF_ZERO = 1 << (DF_BITS - 1)
#: dt bins start at 3 frames: pairs closer than 48 ms are mostly partials of one onset
#: (harmonic intervals shared by all tonal music), which match across unrelated songs.
DT_MIN_FRAMES = 3.0

SLOT_BITS = 16
FRAME_BITS = 16
MAX_SLOT_FRAMES = 1 << FRAME_BITS
MAX_SLOTS = 1 << SLOT_BITS


def pack_key(f1_q: np.ndarray, df_q: np.ndarray, dt_q: np.ndarray) -> np.ndarray:
    """Pack quantised landmark coordinates into 20-bit keys (``uint32``)."""
    return ((f1_q.astype(np.uint32) << (DF_BITS + DT_BITS))
            | (df_q.astype(np.uint32) << DT_BITS)
            | dt_q.astype(np.uint32))


def unpack_key(keys: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Inverse of :func:`pack_key`: ``(f1_q, df_q, dt_q)``."""
    keys = keys.astype(np.uint32)
    return ((keys >> (DF_BITS + DT_BITS)).astype(np.int64),
            ((keys >> DT_BITS) & ((1 << DF_BITS) - 1)).astype(np.int64),
            (keys & ((1 << DT_BITS) - 1)).astype(np.int64))


def pack_posting(slot: np.ndarray, frame: np.ndarray) -> np.ndarray:
    """Pack (slot, anchor frame within slot) into ``uint32`` postings."""
    return (slot.astype(np.uint32) << FRAME_BITS) | frame.astype(np.uint32)


def unpack_posting(postings: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Inverse of :func:`pack_posting`: ``(slot, frame)``."""
    p = postings.astype(np.uint32)
    return (p >> FRAME_BITS).astype(np.int64), (p & (MAX_SLOT_FRAMES - 1)).astype(np.int64)


@njit(cache=True)
def quantise_coords(f1: float, df: float, dt: float) -> tuple[float, float, float]:
    """Continuous landmark coordinates -> continuous *bin* coordinates.

    ``floor`` of each gives the bin; the fractional part says how close to a bin edge
    the value is (used for query-side multi-probing).
    """
    return (f1 / F1_STEP_SEMITONES,
            df / DF_STEP_SEMITONES + DF_ZERO,
            (dt - DT_MIN_FRAMES) / DT_STEP_FRAMES)


@njit(cache=True)
def key_from_bins(f1_b: int, df_b: int, dt_b: int) -> int:
    """Bin indices -> key, or -1 when a bin is outside the layout."""
    if f1_b < 0 or f1_b >= (1 << F1_BITS):
        return -1
    if df_b < 0 or df_b >= (1 << DF_BITS):
        return -1
    if dt_b < 0 or dt_b >= (1 << DT_BITS):
        return -1
    return (f1_b << (DF_BITS + DT_BITS)) | (df_b << DT_BITS) | dt_b


@njit(cache=True)
def landmark_keys(f1: np.ndarray, df: np.ndarray, dt: np.ndarray) -> np.ndarray:
    """Catalogue-side keys (no probing); -1 where a landmark falls outside the layout.

    Parameters
    ----------
    f1 : np.ndarray
        Anchor frequency, semitones above ``fmin_hz``.
    df : np.ndarray
        Target minus anchor frequency, semitones.
    dt : np.ndarray
        Target minus anchor time, frames.
    """
    n = f1.shape[0]
    keys = np.empty(n, dtype=np.int64)
    for i in range(n):
        a, b, c = quantise_coords(f1[i], df[i], dt[i])
        keys[i] = key_from_bins(int(np.floor(a)), int(np.floor(b)), int(np.floor(c)))
    return keys
