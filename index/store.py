"""The on-disk hash store: immutable segments plus an atomically replaced manifest.

Layout of an index folder::

    manifest.json        which segments are live, which tracks were removed, the config
    seg-000001.emk ...   immutable segments (inverted index: key -> postings)
    seg-000001.drv ...   the derivation tier of the same tracks (earmark.index.derivation)
    tracks.sqlite        track metadata (see :mod:`earmark.index.metadata`)
    lock                 writer lock (one writer at a time; readers never lock)

Atomicity: a writer writes a new segment to a temporary name, fsyncs it, renames it into
place, and only then replaces ``manifest.json`` (write temporary, fsync, ``os.replace``,
fsync the folder).  Readers read the manifest once and memory-map the segments it names,
so they always see a complete generation.  A crash at any point leaves the previous
manifest, which names only complete segments; unreferenced files are swept by the next
writer.  No pickle: the manifest is JSON and segments are raw little-endian arrays behind
a validated header.

Segment file (little-endian)::

    0   8  magic b"EMKSEG\\x00\\x01"
    8   4  segment format version (SEGMENT_VERSION)
    12  4  hash layout version (hashes.LAYOUT_VERSION)
    16  4  KEY_BITS     20  4  TABLE_BITS
    24  8  n_postings   32  8  n_slots
    40 24  reserved (zero)
    64 ..  bucket_start uint32[2**TABLE_BITS + 1] | key_lo uint8[n] | postings uint32[n]
           | slot_track int64[n_slots] | slot_frame0 int64[n_slots]   (each 64-byte aligned)
"""

from __future__ import annotations

import contextlib
import json
import os
import struct
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO, Iterator

import numpy as np

from earmark.errors import IndexError_
from earmark.fingerprint import hashes

SEGMENT_MAGIC = b"EMKSEG\x00\x01"
SEGMENT_VERSION = 1
MANIFEST_FORMAT = "earmark-index"
#: Version of the index folder format.  An index with a larger number is refused.
INDEX_VERSION = 1
_HEADER = struct.Struct("<8sIIIIQQ24x")
_ALIGN = 64


def _aligned(n: int) -> int:
    return (n + _ALIGN - 1) // _ALIGN * _ALIGN


def fsync_dir(path: Path) -> None:
    """fsync a directory so a rename in it is durable."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


@contextlib.contextmanager
def atomic_file(path: Path) -> Iterator[BinaryIO]:
    """Write ``path`` atomically: a temporary file in the same folder, fsynced, renamed
    over ``path``, folder fsynced.  Readers see the old file or the complete new one; an
    exception (or a crash) leaves the old one and, at worst, a ``.name.*.tmp`` file that
    the next writer sweeps."""
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise
    fsync_dir(path.parent)


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` so that readers see either the old or the new file."""
    with atomic_file(path) as f:
        f.write(data)


def write_aligned(f: BinaryIO, header: bytes, parts: list[bytes]) -> int:
    """Header padded to 64 bytes, then each part padded to a 64-byte boundary (so every
    array can be memory-mapped aligned).  Returns the bytes written."""
    f.write(header.ljust(_ALIGN, b"\0"))
    pos = _ALIGN
    for data in parts:
        f.write(data)
        pos += len(data)
        pad = _aligned(pos) - pos
        f.write(b"\0" * pad)
        pos += pad
    return pos


@dataclass
class Segment:
    """One memory-mapped segment.

    Attributes
    ----------
    bucket_start : uint32 array, 2**TABLE_BITS + 1
        Postings of bucket ``b`` are ``[bucket_start[b], bucket_start[b+1])``.
    key_lo : uint8 array
        Low ``LO_BITS`` of each posting's key.
    postings : uint32 array
        Packed (slot, anchor frame) - see :mod:`earmark.fingerprint.hashes`.
    slot_track, slot_frame0 : int64 arrays
        Track id and first frame of each slot.
    """

    name: str
    bucket_start: np.ndarray
    key_lo: np.ndarray
    postings: np.ndarray
    slot_track: np.ndarray
    slot_frame0: np.ndarray

    @property
    def n_postings(self) -> int:
        return int(self.postings.shape[0])

    @property
    def nbytes(self) -> int:
        return sum(a.nbytes for a in (self.bucket_start, self.key_lo, self.postings,
                                      self.slot_track, self.slot_frame0)) + _HEADER.size


def build_segment_arrays(track_ids: list[int], keys: list[np.ndarray],
                         anchor_frames: list[np.ndarray]) -> dict[str, np.ndarray]:
    """Group landmarks of several tracks into the inverted-index arrays of one segment.

    Parameters
    ----------
    track_ids : list of int
        Track id of each track.
    keys : list of int64 arrays
        Landmark keys per track (negative keys are dropped).
    anchor_frames : list of int arrays
        Anchor frame (from the track start) of each landmark.
    """
    slot_track: list[int] = []
    slot_frame0: list[int] = []
    all_keys, all_postings = [], []
    for tid, k, fr in zip(track_ids, keys, anchor_frames):
        ok = k >= 0
        k, fr = k[ok], np.asarray(fr, dtype=np.int64)[ok]
        n_slots = int(fr.max() // hashes.MAX_SLOT_FRAMES) + 1 if fr.size else 1
        first_slot = len(slot_track)
        for s in range(n_slots):
            slot_track.append(int(tid))
            slot_frame0.append(s * hashes.MAX_SLOT_FRAMES)
        slot = first_slot + fr // hashes.MAX_SLOT_FRAMES
        all_keys.append(k)
        all_postings.append(hashes.pack_posting(slot, fr % hashes.MAX_SLOT_FRAMES))
    if len(slot_track) > hashes.MAX_SLOTS:
        raise ValueError("too many slots for one segment")
    keys_cat = np.concatenate(all_keys) if all_keys else np.zeros(0, np.int64)
    post_cat = np.concatenate(all_postings) if all_postings else np.zeros(0, np.uint32)
    order = np.argsort(keys_cat, kind="stable")
    keys_cat, post_cat = keys_cat[order], post_cat[order]
    buckets = keys_cat >> hashes.LO_BITS
    counts = np.bincount(buckets, minlength=1 << hashes.TABLE_BITS)
    bucket_start = np.zeros((1 << hashes.TABLE_BITS) + 1, dtype=np.uint32)
    np.cumsum(counts, out=bucket_start[1:])
    return {
        "bucket_start": bucket_start,
        "key_lo": (keys_cat & ((1 << hashes.LO_BITS) - 1)).astype(np.uint8),
        "postings": post_cat.astype(np.uint32),
        "slot_track": np.asarray(slot_track, dtype=np.int64),
        "slot_frame0": np.asarray(slot_frame0, dtype=np.int64),
    }


def key_offsets(bucket_start: np.ndarray, key_lo: np.ndarray,
                chunk_buckets: int = 4096) -> np.ndarray:
    """Per-key offsets of a segment, derived from its bucket table and low key bits.

    The postings of key ``k`` are ``[out[k], out[k + 1])``: one read instead of a search
    inside ``k``'s bucket (``bucket_start``, then ``key_lo``), which is most of what a
    look-up costs.  2**KEY_BITS + 1 ``uint32`` offsets (4 MB), counted ``chunk_buckets``
    buckets at a time (the temporaries stay ~4 bytes per posting of one chunk).  For a
    sorted bucket ``out[k]`` is exactly where the bucket search finds ``k``; an unsorted
    (damaged) bucket can only give wrong postings, as every offset stays inside its
    bucket.  ``bucket_start`` must be valid (from 0, non-decreasing, ending at
    ``len(key_lo)``), as :func:`open_segment` checks.

    >>> a = build_segment_arrays([1], [np.array([5, 5, 17, 40])], [np.arange(4)])
    >>> out = key_offsets(a["bucket_start"], a["key_lo"])
    >>> [int(out[k]) for k in (5, 6, 17, 18)], int(out[-1])
    ([0, 2, 2, 3], 4)
    """
    n_lo = 1 << hashes.LO_BITS
    starts = np.asarray(bucket_start, dtype=np.int64)
    n_buckets = starts.shape[0] - 1
    # Postings per key first (in place of the offsets: no second 2**KEY_BITS array).
    out = np.zeros(n_buckets * n_lo + 1, dtype=np.uint32)
    for b0 in range(0, n_buckets, chunk_buckets):
        b1 = min(b0 + chunk_buckets, n_buckets)
        first, last = int(starts[b0]), int(starts[b1])
        # Each posting's key relative to the chunk's first: (bucket - b0, low bits).
        local = np.repeat(np.arange(b1 - b0, dtype=np.uint32) * n_lo, np.diff(starts[b0:b1 + 1]))
        local |= np.asarray(key_lo[first:last], dtype=np.uint32) & (n_lo - 1)
        out[1 + b0 * n_lo:1 + b1 * n_lo] = np.bincount(local, minlength=(b1 - b0) * n_lo)
    # A segment holds at most 2**32 - 1 postings (uint32 bucket table): no overflow.
    np.cumsum(out[1:], out=out[1:])
    return out


_ARRAY_ORDER = (("bucket_start", np.uint32), ("key_lo", np.uint8), ("postings", np.uint32),
                ("slot_track", np.int64), ("slot_frame0", np.int64))


def write_segment(path: Path, arrays: dict[str, np.ndarray]) -> None:
    """Write a segment file atomically (temporary name, fsync, rename)."""
    n = int(arrays["postings"].shape[0])
    n_slots = int(arrays["slot_track"].shape[0])
    header = _HEADER.pack(SEGMENT_MAGIC, SEGMENT_VERSION, hashes.LAYOUT_VERSION,
                          hashes.KEY_BITS, hashes.TABLE_BITS, n, n_slots)
    parts = [np.ascontiguousarray(arrays[name], dtype=np.dtype(dtype).newbyteorder("<")).tobytes()
             for name, dtype in _ARRAY_ORDER]
    with atomic_file(path) as f:
        write_aligned(f, header, parts)


def open_segment(path: Path) -> Segment:
    """Memory-map a segment, validating its header and sizes.

    Raises
    ------
    earmark.errors.IndexError_
        On a missing, truncated, foreign or newer-version segment.
    """
    try:
        size = path.stat().st_size
        with open(path, "rb") as f:
            head = f.read(_HEADER.size)
    except OSError as e:
        raise IndexError_(f"index segment {path.name} is unreadable: {e.strerror or e}") from None
    if len(head) < _HEADER.size:
        raise IndexError_(f"index segment {path.name} is truncated")
    magic, version, layout, key_bits, table_bits, n, n_slots = _HEADER.unpack(head)
    if magic != SEGMENT_MAGIC:
        raise IndexError_(f"{path.name} is not an Earmark index segment")
    if version > SEGMENT_VERSION or layout > hashes.LAYOUT_VERSION:
        raise IndexError_(f"index segment {path.name} was written by a newer Earmark "
                          f"(format {version}, layout {layout}); upgrade Earmark")
    if (version, layout, key_bits, table_bits) != (SEGMENT_VERSION, hashes.LAYOUT_VERSION,
                                                   hashes.KEY_BITS, hashes.TABLE_BITS):
        raise IndexError_(f"index segment {path.name} has an unsupported layout; re-index")
    counts = {"bucket_start": (1 << table_bits) + 1, "key_lo": n, "postings": n,
              "slot_track": n_slots, "slot_frame0": n_slots}
    pos = _ALIGN
    arrays: dict[str, np.ndarray] = {}
    for name, dtype in _ARRAY_ORDER:
        nbytes = counts[name] * np.dtype(dtype).itemsize
        if pos + nbytes > size:
            raise IndexError_(f"index segment {path.name} is truncated")
        if counts[name] == 0:
            arrays[name] = np.zeros(0, dtype=dtype)
        else:
            arrays[name] = np.memmap(path, dtype=np.dtype(dtype).newbyteorder("<"), mode="r",
                                     offset=pos, shape=(counts[name],))
        pos = _aligned(pos + nbytes)
    bs = arrays["bucket_start"]
    # Look-ups trust the table to stay within [0, n]: it must start at 0, end at n and
    # never decrease (one pass over 2**TABLE_BITS entries, whatever the index size).
    if bs[0] != 0 or int(bs[-1]) != n or bool(np.any(np.diff(np.asarray(bs, dtype=np.int64)) < 0)):
        raise IndexError_(f"index segment {path.name} is corrupt (bucket table)")
    return Segment(name=path.name, **arrays)


@dataclass
class Manifest:
    """What an index generation consists of (``manifest.json``)."""

    generation: int
    segments: list[dict[str, Any]]     # {"file", "tracks": [ids], "frames": [n], "postings"}
    removed: list[int]                 # track ids removed but still in a segment
    config: dict[str, Any]
    next_segment: int = 1

    def live_track_ids(self) -> set[int]:
        ids: set[int] = set()
        for s in self.segments:
            ids.update(int(t) for t in s["tracks"])
        return ids - set(self.removed)

    def live_frames(self) -> float:
        """Total frames of audio of the live tracks (for significance)."""
        removed = set(self.removed)
        return float(sum(f for s in self.segments for t, f in zip(s["tracks"], s["frames"])
                         if t not in removed))

    def to_json(self) -> bytes:
        return json.dumps({
            "format": MANIFEST_FORMAT, "version": INDEX_VERSION,
            "layout_version": hashes.LAYOUT_VERSION, "generation": self.generation,
            "next_segment": self.next_segment, "config": self.config,
            "segments": self.segments, "removed": sorted(set(self.removed)),
        }, indent=1).encode()


def read_manifest(folder: Path) -> Manifest | None:
    """Read and validate ``manifest.json``; ``None`` if the folder has no index yet."""
    path = folder / "manifest.json"
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        return None
    except OSError as e:
        raise IndexError_(f"index manifest {path} is unreadable: {e.strerror or e}") from None
    try:
        doc = json.loads(raw)
    except (ValueError, UnicodeDecodeError):
        raise IndexError_(f"index manifest {path} is corrupt (not JSON)") from None
    if not isinstance(doc, dict) or doc.get("format") != MANIFEST_FORMAT:
        raise IndexError_(f"{path} is not an Earmark index manifest")
    version = doc.get("version")
    if not isinstance(version, int):
        raise IndexError_(f"index manifest {path} is corrupt (no version)")
    if version > INDEX_VERSION or int(doc.get("layout_version", 0)) > hashes.LAYOUT_VERSION:
        raise IndexError_(f"index at {folder} was written by a newer Earmark (format "
                          f"{version}); upgrade Earmark to read it")
    try:
        segments = []
        for s in doc["segments"]:
            seg = {"file": str(s["file"]), "tracks": [int(t) for t in s["tracks"]],
                   "frames": [float(f) for f in s["frames"]], "postings": int(s["postings"])}
            if s.get("derivation") is not None:
                seg["derivation"] = str(s["derivation"])
            segments.append(seg)
        for s in segments:
            if len(s["frames"]) != len(s["tracks"]):
                raise ValueError("frames")
            for name in (s["file"], s.get("derivation", "x")):
                if "/" in name or "\\" in name or name.startswith("."):
                    raise ValueError(name)
        return Manifest(generation=int(doc["generation"]), segments=segments,
                        removed=[int(t) for t in doc.get("removed", [])],
                        config=dict(doc.get("config", {})),
                        next_segment=int(doc.get("next_segment", 1)))
    except (KeyError, TypeError, ValueError):
        raise IndexError_(f"index manifest {path} is corrupt") from None


def write_manifest(folder: Path, manifest: Manifest) -> None:
    """Atomically replace ``manifest.json`` (the commit point of every index change)."""
    atomic_write_bytes(folder / "manifest.json", manifest.to_json())
