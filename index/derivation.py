"""The derivation tier: segment embeddings in FAISS, searched with aligned votes.

Where the hash store (:mod:`earmark.index.store`) answers "which *recording* is this?",
this tier answers "which catalogue *composition* does this re-perform?" - other
instruments, another key, another tempo, the melody over a new backing.  Embeddings come
from :mod:`earmark.fingerprint.chroma`; this module stores, searches and votes.

Files
-----
One immutable file per hash segment, named after it (:func:`segment_file_name`:
``seg-000007.emk`` -> ``seg-000007.drv``), written like the hash segments: temporary
name, fsync, ``os.replace``, fsync of the folder; the manifest that names it is the commit
point, so a crash leaves either the previous generation or the new one, never a half
file in use.  Layout (little-endian, no pickle)::

    0   8  magic b"EMKDRV\\x00\\x01"
    8   4  file format version (FORMAT_VERSION)
    12  4  embedding version (chroma.EMBED_VERSION)   16 4  dim
    20  4  index kind: 0 flat, 1 IVF-PQ               24 8  n_vectors
    32  8  faiss blob bytes, chroma view (0 for flat)
    40  8  faiss blob bytes, melody view (0 for flat) 48 16 reserved
    64  .. vec_track int64[n] | vec_start float32[n] | chroma vectors float16[n, dim]
           | melody vectors float16[n, dim] | chroma rotation int8[n]
           | melody rotation int8[n] | chroma faiss blob | melody faiss blob
           (each 64-byte aligned; blobs are faiss.serialize_index output)

The vectors are stored as embedded (the track's own key); the rotation of each is its
canonical key rotation (:func:`earmark.fingerprint.chroma.canonical_rotation` of the
float16 vector, 0..11), and the FAISS indexes hold the vectors in that rotation.
Format 1 files (chroma view only, embedding version 1) and format 2 files (no
rotations; FAISS over unrotated vectors) are refused with a one-line "re-index" error,
as is any other embedding version: vectors of another recipe must never be compared
with this one's.

Two views share the rows (track, start): the whole-mix chroma patch and the melody
patch (:mod:`earmark.fingerprint.chroma`, step 5; a zero melody row where the top line
is silent or barely moves).  The float16 vectors are the source of truth (about 400
bytes per catalogue second with the ids and rotations: ~1.4 MB per catalogue hour,
~1.7 MB with the IVF-PQ blobs); they are memory-mapped and serve the exact re-ranking
and merges.  The FAISS structure is chosen per file from its size
(:func:`choose_index_kind`), one per view:

* ``n_vectors <= FLAT_MAX_VECTORS`` (20 000 vectors, ~5.5 catalogue hours): exact
  ``IndexFlatIP`` built at open time from the float16 vectors (no blob, nothing to
  train).  Measured on the dev machine when a query searched all 12 key rotations: a
  flat scan of one view's 480 query variants cost ~0.13 s at 20 000 catalogue vectors
  and ~0.22 s at 35 000, twice that for both views, which is why the flat kind stops at
  20 000 (with 3 rotations, ~114 variants a view, it costs a quarter of that);
* larger: ``IndexIVFPQFastScan`` (inner product; an exact flat coarse quantiser up to
  ``FLAT_QUANTIZER_MAX_LISTS`` lists, HNSW beyond; ``nlist``
  about ``4 sqrt(n)`` but with lists of at least ``IVF_MIN_LIST`` vectors on average -
  fast-scan codes sit in blocks of 32, short lists are mostly padding - rounded to a
  power of two within 64..16 384; PQ with 48 sub-quantisers of 4 bits = 24 bytes a
  vector, scanned with FAISS's SIMD fast-scan kernels), trained on a seeded sample of
  the file's own canonically rotated vectors, searched with ``nprobe = NPROBE``; its
  ``RERANK_FACTOR x k`` best candidates (at least ``RERANK_MIN``) are re-scored exactly
  from the float16 vectors.  The two views train concurrently in two threads
  (:func:`_serialized_ivfpq`; FAISS itself stays single-threaded and releases the GIL;
  the bytes equal a serial build's): the bench catalogue's 35 000-vector file (50
  pieces and the 81 dev corpus tracks) is written in ~2 s, against 10-13 s for the
  former 8-bit IVF-PQ trained view after view (same run, machine under load).

  At scale this is the cost that matters.
  :func:`earmark.bench.derivation.scale_search_bench` simulates 100 000 tracks (24 M
  vectors a view, nlist 16 384 lists of ~1 465 vectors) with the query vectors the
  matcher really sends for a fully textured 20 s query (38 patches x 3 rotations = 114
  a view, both views).  Measured in one run on the dev machine (2 shared vCPUs), per
  query, quantiser + list scan + exact re-scoring: the former search (8-bit PQ, nprobe
  16, 12 rotations, 912 vectors) 420 ms; 3 rotations alone 99 ms; fast scan alone
  (12 rotations, nprobe 32) 121 ms; both, nprobe 16, 28 ms; both, nprobe 32 (the
  default) 36 ms (9 + 20 + 7 ms) - under the 100 ms target with room for recall.
  ``nprobe`` was chosen by recall per millisecond: on the bench catalogue's vectors
  (35 000, queries at cosine ~0.85 to a catalogue vector), the share of the exact top-10
  neighbours with cosine >= 0.6 that the search returns is 0.94 (chroma) / 0.96
  (melody) with fast scan at nprobe 32 (nlist 256), 0.93 / 0.94 at nprobe 16, against
  0.96 / 0.94 for the former 8-bit codes at nprobe 16 (nlist 1 024).  At 16 384 lists,
  nprobe 32 visits 0.2 % of the catalogue per query vector, so recall at that scale
  rests on the clustering and is not measured here (no real catalogue of that size).

Removal: a removed track's vectors stay in their file until the next merge
(:func:`merge_segments`, called where the hash tier merges) and are filtered out of every
search by the ``removed_track_ids`` the store was opened with - the hash tier's
tombstones (``manifest["removed"]``).

Matching: votes, refinement, decision
-------------------------------------
1. *Coarse votes.*  Each query patch (every 2 s), at each tempo ratio ``r`` and each of
   its candidate key rotations ``s_q`` (:func:`earmark.fingerprint.chroma.query_embeddings`:
   5 x ``key_rotations`` = 5 x 3 variants), retrieves its ``k_neighbours`` nearest
   catalogue patches, all in their canonical rotation ``s_ref``; a neighbour with cosine
   ``>= min_similarity`` implies the key shift ``k = s_q - s_ref`` (mod 12, in -5..6)
   and votes for ``(track, k, r, b)`` where ``b = t_ref - r * t_query``
   (offset bins of ``OFFSET_BIN`` s, +-1 bin).  A patch counts once per hypothesis.  The
   ``max_candidates`` tracks with most votes go on: a bag of similar-sounding patches
   scattered over a track, over keys or over tempi does not add up to votes.
2. *Refinement* (:func:`refine`).  Tempo (+-15 % around the coarse ratio, on one fixed
   lattice of 1.5 % steps through 1.0, so the result does not depend on which coarse
   ratio won the votes) and offset (+-1.5 s, 0.125 s steps) are searched exactly against
   the track's own float16 vectors in the hypothesis's key; the aligned patches (one
   per catalogue second the query covers) give per-patch cosines ``s_i``.  ``score`` =
   patches with ``s_i >= PATCH_SIMILARITY``.
3. *Contrast* (:func:`_background`).  The same query is compared with the same track
   shifted by 1.5-7.5 s; ``contrast = mean(s_i) - median(shifted means)``.  Static or
   generic material (a held chord, a drone, a loop) matches just as well shifted and has
   low contrast; a derivation's harmony and melody move with it.  On the dev corpus
   this is what separates real non-catalogue techno (contrast <= 0.50 against real
   catalogue tracks, though its mean cosine reaches 0.88) from derivations (contrast
   0.6-0.9).
4. *Decision* (:func:`is_flag`): ``significance >= min_significance`` and ``score >=
   min_votes`` and ``contrast >= min_contrast``.

Steps 1-4 run once per view (:attr:`DerivationConfig.melody`): the chroma view catches
re-instrumented, transposed and re-timed renditions; the melody view catches the tune
over a new backing, where the whole-mix chroma is dominated by the new harmony.  Each
view has its own agreeing cosine, chance probability and contrast threshold
(``MELODY_*``); a track is reported once, by the view with the stronger evidence.

Significance
------------
Under the null (the query does not derive from the track), each aligned patch reaches
``PATCH_SIMILARITY`` with probability ``p = CHANCE_PATCH_P``; query patches one catalogue
second apart overlap by 5/6, so ``m`` agreeing of ``n`` aligned patches is modelled as
``Binomial(n / c, p)`` evaluated at ``m / c`` with ``c = CORRELATION`` patches per
independent observation.  With ``A = V * 12 * T * N_vectors`` alignments searched (views x
keys x tempi x catalogue positions),

    significance = -log10 min(1, A * P[Binomial(n/c, p) >= m/c])

so the threshold rises with the catalogue size.  ``p`` and ``c`` are not first
principles: they were fitted on non-catalogue music (synthetic compositions, and the dev
corpus's real non-catalogue music searched against a catalogue holding the real dev
catalogue) so that the default threshold (5, about 10 agreeing of 14 patches at a
20 000-vector catalogue) together with ``min_contrast`` flags none of them
(``fp bench derivation``).

The melody view uses the same ``p``, agreeing cosine and contrast threshold
(``MELODY_CHANCE_PATCH_P``, ``MELODY_PATCH_SIMILARITY``, ``MELODY_MIN_CONTRAST``), checked
rather than fitted.  Without the ``MELODY_MIN_CHANGES`` patch rule of
:mod:`earmark.fingerprint.chroma`, real non-catalogue excerpts reached melody
significance 17 (held notes and slow lines agree by chance far more often than the
binomial model says) and one of 102 was flagged (contrast 0.60).  With it, no melody
candidate of the 100 synthetic or 102 real negatives reaches significance 0.1 (their
largest melody contrast is 0.53, below 0.55 too), so both rules hold with margin;
``fp bench derivation`` prints both margins per view.
"""

from __future__ import annotations

import math
import os
import struct
import threading
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from scipy.special import betainc, gammaln

from earmark.errors import IndexError_
from earmark.evidence import Match, Reference
from earmark.fingerprint import chroma
from earmark.fingerprint.chroma import QueryEmbeddings, SegmentEmbeddings
from earmark.index import store

__all__ = [
    "FORMAT_VERSION", "Candidate", "DerivationConfig", "DerivationSegment", "DerivationStore",
    "SegmentArrays", "build_segment", "choose_index_kind", "match_derivations",
    "merge_segments", "read_segment", "segment_file_name", "write_segment",
]

MAGIC = b"EMKDRV\x00\x01"
FORMAT_VERSION = 3
_HEADER = struct.Struct("<8sIIIIQQQ16x")
_ALIGN = 64
KIND_FLAT, KIND_IVFPQ = 0, 1
#: A file with at most this many vectors is searched exactly (IndexFlatIP).
FLAT_MAX_VECTORS = 20_000
#: IVF lists visited per query vector.
NPROBE = 32
#: Up to this many lists the coarse quantiser is an exact flat index, beyond it HNSW.  An
#: exact scan of the centroids is also the faster one there: 9 000 query vectors (96-d,
#: nprobe 32, one thread) took 38 / 69 / 143 / 348 ms flat against 126 / 159 / 204 / 299 ms
#: through HNSW (M 32, efSearch 16) at 256 / 1 024 / 4 096 / 16 384 lists; and an exact
#: quantiser probes the lists HNSW only approximates.
FLAT_QUANTIZER_MAX_LISTS = 4096
#: Product quantiser: DIM / 2 sub-quantisers of 2 dimensions, 4 bits each (24 bytes a
#: vector), scanned with FAISS's SIMD "fast scan" kernels.
PQ_SUBQUANTIZERS = 48
PQ_BITS = 4
#: IVF lists: about 4 sqrt(n), but at least this many vectors a list on average (fast-scan
#: codes are stored in blocks of 32, so short lists are mostly padding), within 64..16 384.
IVF_MIN_LIST = 128
#: IVF-PQ candidates re-scored exactly from the float16 vectors: this many per neighbour
#: asked for, at least RERANK_MIN (4-bit codes rank near neighbours coarsely).
RERANK_FACTOR = 4
RERANK_MIN = 32
#: Offset histogram bin (seconds of reference time).
OFFSET_BIN = 1.0
#: Overlapping query patches per independent chance observation (see module doc).
CORRELATION = 2.0
#: An aligned patch "agrees" at this cosine or above (after refinement).
PATCH_SIMILARITY = 0.75
#: Probability that an unrelated catalogue patch, at the best of 12 keys and 7 tempi,
#: reaches PATCH_SIMILARITY with a query patch (measured on non-catalogue music).
CHANCE_PATCH_P = 0.002
#: Misalignments (seconds) whose similarity is the background of a match.
BACKGROUND_SHIFTS = (-7.5, -6.5, -5.5, -4.5, -3.5, -2.5, -1.5, 1.5, 2.5, 3.5, 4.5, 5.5, 6.5, 7.5)
#: Default threshold on significance (calibrated by ``fp bench derivation``).
DEFAULT_MIN_SIGNIFICANCE = 5.0
#: Default contrast a flag needs (see DerivationConfig.min_contrast).
MIN_CONTRAST = 0.55
#: Melody view: an aligned patch agrees at this cosine or above.
MELODY_PATCH_SIMILARITY = 0.75
#: Melody view: chance probability of an agreeing patch (measured on non-catalogue music).
MELODY_CHANCE_PATCH_P = 0.002
#: Melody view: contrast a flag needs.
MELODY_MIN_CONTRAST = 0.55
SUFFIX = ".drv"


def _faiss():
    """Import FAISS single-threaded.  Its OpenMP pool does not survive ``fork``: a scan or
    index worker forked after a multi-threaded search in the parent would hang in its
    first search.  Searches here are small (one query's patches), so one thread loses
    little; batch throughput comes from worker processes."""
    import faiss

    if faiss.omp_get_max_threads() != 1:
        faiss.omp_set_num_threads(1)
    return faiss


def segment_file_name(hash_segment_file: str) -> str:
    """Name of the derivation file that goes with a hash segment (``seg-000007.emk`` ->
    ``seg-000007.drv``)."""
    stem = hash_segment_file.rsplit(".", 1)[0]
    return stem + SUFFIX


def _aligned(n: int) -> int:
    return (n + _ALIGN - 1) // _ALIGN * _ALIGN


# --------------------------------------------------------------------------- building


@dataclass
class SegmentArrays:
    """The content of one derivation file before it is written.

    Attributes
    ----------
    track : int64 array (n,)
        Track id of each vector.
    start : float32 array (n,)
        Start of each patch in its track, seconds.
    vectors : float16 array (n, dim)
        Chroma-view patches.
    melody : float16 array (n, dim), optional
        Melody-view patches at the same starts (zero rows: no melody there); ``None``
        becomes all zero.
    """

    track: np.ndarray
    start: np.ndarray
    vectors: np.ndarray
    melody: np.ndarray | None = None

    def __post_init__(self) -> None:
        if self.melody is None:
            self.melody = np.zeros(np.shape(self.vectors), np.float16)
        if np.shape(self.melody) != np.shape(self.vectors):
            raise ValueError("melody and chroma vectors differ in shape")

    def view(self, name: str) -> np.ndarray:
        """The vectors of one view (``"chroma"`` or ``"melody"``)."""
        return self.melody if name == "melody" else self.vectors

    @property
    def n_vectors(self) -> int:
        return int(self.track.shape[0])

    def track_ids(self) -> list[int]:
        return sorted({int(t) for t in np.unique(self.track)})


def build_segment(track_ids: Sequence[int], embeddings: Sequence[SegmentEmbeddings]
                  ) -> SegmentArrays:
    """Gather the embeddings of several tracks into one file's arrays.

    A track with no embeddings (silence, shorter than 3 s) simply has no vectors: it can
    still be matched by the hash tier.
    """
    if len(track_ids) != len(embeddings):
        raise ValueError("track_ids and embeddings differ in length")
    tr, st, ve, me = [], [], [], []
    for tid, e in zip(track_ids, embeddings):
        n = len(e)
        if n == 0:
            continue
        if e.vectors.shape[1] != chroma.DIM:
            raise ValueError(f"embedding dimension {e.vectors.shape[1]} != {chroma.DIM}")
        tr.append(np.full(n, int(tid), np.int64))
        st.append(np.asarray(e.starts, np.float32))
        ve.append(np.asarray(e.vectors, np.float16))
        mel = getattr(e, "melody", None)
        me.append(np.zeros((n, chroma.DIM), np.float16) if mel is None
                  else np.asarray(mel, np.float16).reshape(n, chroma.DIM))
    if not tr:
        return SegmentArrays(np.zeros(0, np.int64), np.zeros(0, np.float32),
                             np.zeros((0, chroma.DIM), np.float16),
                             np.zeros((0, chroma.DIM), np.float16))
    return SegmentArrays(np.concatenate(tr), np.concatenate(st), np.concatenate(ve),
                         np.concatenate(me))


def choose_index_kind(n_vectors: int) -> int:
    """``KIND_FLAT`` up to ``FLAT_MAX_VECTORS`` vectors, else ``KIND_IVFPQ``."""
    return KIND_FLAT if n_vectors <= FLAT_MAX_VECTORS else KIND_IVFPQ


def _ivf_nlist(n: int) -> int:
    n = max(n, 1)
    target = min(4 * math.sqrt(n), n / IVF_MIN_LIST)
    return int(min(16384, max(64, 2 ** round(math.log2(max(target, 1.0))))))


def _new_ivfpq(d: int, nlist: int):
    """Empty IVF-PQ (inner product): flat coarse quantiser up to
    ``FLAT_QUANTIZER_MAX_LISTS`` lists, HNSW above; ``PQ_SUBQUANTIZERS`` x ``PQ_BITS``
    fast-scan codes (``IndexIVFPQFastScan``)."""
    faiss = _faiss()
    if nlist <= FLAT_QUANTIZER_MAX_LISTS:
        quantizer = faiss.IndexFlatIP(d)
    else:
        quantizer = faiss.IndexHNSWFlat(d, 32, faiss.METRIC_INNER_PRODUCT)
    index = faiss.IndexIVFPQFastScan(quantizer, d, nlist, PQ_SUBQUANTIZERS, PQ_BITS,
                                     faiss.METRIC_INNER_PRODUCT)
    index.cp.min_points_per_centroid = 5
    return index


def _build_ivfpq(vectors: np.ndarray, rotation: np.ndarray, seed: int = 0):
    """IVF-PQ over the canonically rotated patches (``vectors`` rolled by ``rotation``)."""
    n, d = vectors.shape
    nlist = _ivf_nlist(n)
    index = _new_ivfpq(d, nlist)
    rng = np.random.default_rng(seed)
    live = np.flatnonzero(np.any(np.asarray(vectors) != 0, axis=1))   # zero rows: no patch
    pool = live if live.size >= nlist else np.arange(n)
    n_train = min(pool.size, 40 * nlist)
    pick = np.sort(rng.choice(pool, n_train, replace=False))
    train = chroma.rotate(vectors[pick], rotation[pick])
    # k-means assigns with an exact flat index; only the final centroids go into the
    # quantiser (assigning through an HNSW one rebuilt it every iteration: ~6x slower).
    clustering_index = _faiss().IndexFlatIP(d)
    index.clustering_index = clustering_index
    index.train(train)
    index.clustering_index = None
    step = 1_000_000
    for i in range(0, n, step):
        index.add(chroma.rotate(vectors[i:i + step], rotation[i:i + step]))
    index.nprobe = NPROBE
    return index


def _serialized_ivfpq(views: Sequence[tuple[np.ndarray, np.ndarray, int]]) -> list[bytes]:
    """Build and serialise one IVF-PQ per ``(vectors, rotation, seed)``, concurrently.

    FAISS stays single-threaded (see :func:`_faiss`) but releases the GIL, so the views
    train in parallel in Python threads, each exactly as it would alone (its own seeded
    sample, deterministic k-means): the bytes equal those of a serial build."""
    faiss = _faiss()
    out: list[bytes | None] = [None] * len(views)
    errors: list[BaseException] = []

    def build(i: int) -> None:
        try:
            v, r, seed = views[i]
            out[i] = faiss.serialize_index(_build_ivfpq(v, r, seed=seed)).tobytes()
        except BaseException as e:   # re-raised in the caller's thread
            errors.append(e)

    threads = [threading.Thread(target=build, args=(i,), daemon=True) for i in range(1, len(views))]
    for t in threads:
        t.start()
    if views:
        build(0)
    for t in threads:
        t.join()
    if errors:
        raise errors[0]
    return [b for b in out if b is not None]


def _rotations(vectors: np.ndarray, step: int = 1_000_000) -> np.ndarray:
    """Canonical rotation (int8) of every stored patch (0 for a zero row)."""
    out = np.zeros(vectors.shape[0], np.int8)
    for i in range(0, vectors.shape[0], step):
        out[i:i + step] = chroma.canonical_rotation(np.asarray(vectors[i:i + step], np.float32))
    return out


def write_segment(folder: str | os.PathLike, name: str, arrays: SegmentArrays,
                  kind: int | None = None) -> int:
    """Write one derivation file atomically (temporary name, fsync, ``os.replace``).

    Returns the number of bytes written.  ``kind`` overrides :func:`choose_index_kind`.
    """
    folder = Path(folder)
    path = folder / name
    n = arrays.n_vectors
    kind = choose_index_kind(n) if kind is None else kind
    vec = np.ascontiguousarray(arrays.vectors, dtype="<f2")
    mel = np.ascontiguousarray(arrays.melody, dtype="<f2")
    # canonical rotations, from the float16 patches exactly as stored
    rot, rot_m = _rotations(vec), _rotations(mel)
    blob = blob_m = b""
    if kind == KIND_IVFPQ and n > 0:
        blob, blob_m = _serialized_ivfpq([(vec, rot, 0), (mel, rot_m, 1)])
    elif kind == KIND_IVFPQ:
        kind = KIND_FLAT
    header = _HEADER.pack(MAGIC, FORMAT_VERSION, chroma.EMBED_VERSION, chroma.DIM, kind, n,
                          len(blob), len(blob_m))
    parts = [np.ascontiguousarray(arrays.track, dtype="<i8").tobytes(),
             np.ascontiguousarray(arrays.start, dtype="<f4").tobytes(),
             vec.tobytes(), mel.tobytes(), rot.tobytes(), rot_m.tobytes(), blob, blob_m]
    with store.atomic_file(path) as f:
        written = store.write_aligned(f, header, parts)
    return written


# --------------------------------------------------------------------------- reading


@dataclass
class DerivationSegment:
    """One opened derivation file (arrays memory-mapped, FAISS index in memory)."""

    name: str
    kind: int
    track: np.ndarray
    start: np.ndarray
    vectors: np.ndarray
    index: object = field(repr=False)
    nbytes: int = 0
    melody: np.ndarray | None = field(default=None, repr=False)
    melody_index: object = field(default=None, repr=False)
    rotation: np.ndarray | None = field(default=None, repr=False)
    melody_rotation: np.ndarray | None = field(default=None, repr=False)
    _runs: dict | None = field(default=None, repr=False)

    def view(self, name: str) -> tuple[np.ndarray, object]:
        """``(float16 vectors, FAISS index)`` of one view (the index holds the patches in
        their canonical rotation, :meth:`rotations`)."""
        if name == "melody":
            return self.melody, self.melody_index
        return self.vectors, self.index

    def rotations(self, name: str) -> np.ndarray:
        """Canonical rotation (int8, 0..11) of every patch of one view."""
        return self.melody_rotation if name == "melody" else self.rotation

    @property
    def n_vectors(self) -> int:
        return int(self.track.shape[0])

    def runs(self) -> dict[int, list[tuple[int, int]]]:
        """``track id -> [(first row, end row), ...]`` (a track's rows are contiguous)."""
        if self._runs is None:
            t = np.asarray(self.track)
            runs: dict[int, list[tuple[int, int]]] = {}
            if t.size:
                b = np.concatenate([[0], np.flatnonzero(np.diff(t)) + 1, [t.size]])
                for i0, i1 in zip(b[:-1], b[1:]):
                    runs.setdefault(int(t[i0]), []).append((int(i0), int(i1)))
            self._runs = runs
        return self._runs


def read_segment(path: str | os.PathLike, load_index: bool = True) -> DerivationSegment:
    """Open and validate a derivation file.

    Raises
    ------
    earmark.errors.IndexError_
        Missing, truncated, foreign, older- or newer-version or other-embedding file
        (one-line message; an older file means: re-index).
    """
    faiss = _faiss()
    path = Path(path)
    try:
        size = path.stat().st_size
        with open(path, "rb") as f:
            head = f.read(_HEADER.size)
    except OSError as e:
        raise IndexError_(f"derivation file {path.name} is unreadable: {e.strerror or e}") from None
    if len(head) < _HEADER.size:
        raise IndexError_(f"derivation file {path.name} is truncated")
    magic, version, embed_version, dim, kind, n, blob_len, blob_m_len = _HEADER.unpack(head)
    if magic != MAGIC:
        raise IndexError_(f"{path.name} is not an Earmark derivation file")
    if version > FORMAT_VERSION:
        raise IndexError_(f"derivation file {path.name} was written by a newer Earmark; upgrade")
    if version < FORMAT_VERSION or embed_version != chroma.EMBED_VERSION:
        raise IndexError_(f"derivation file {path.name} was built with an older derivation "
                          f"recipe (format {version}, embedding {embed_version}); re-index "
                          f"the catalogue into a new index")
    if dim != chroma.DIM or kind not in (KIND_FLAT, KIND_IVFPQ):
        raise IndexError_(f"derivation file {path.name} has another embedding; re-index")
    if n > size or blob_len > size or blob_m_len > size:
        raise IndexError_(f"derivation file {path.name} is truncated")
    pos = _ALIGN
    arrays = []
    for count, dt, shape in ((n, "<i8", (n,)), (n, "<f4", (n,)), (n * dim, "<f2", (n, dim)),
                             (n * dim, "<f2", (n, dim)), (n, "<i1", (n,)), (n, "<i1", (n,))):
        nbytes = count * np.dtype(dt).itemsize
        if pos + nbytes > size:
            raise IndexError_(f"derivation file {path.name} is truncated")
        arrays.append(np.memmap(path, dtype=dt, mode="r", offset=pos, shape=shape)
                      if count else np.zeros(shape, dt))
        pos = _aligned(pos + nbytes)
    blob_pos = pos
    pos_m = _aligned(blob_pos + blob_len) if blob_len else blob_pos
    if blob_pos + blob_len > size or pos_m + blob_m_len > size:
        raise IndexError_(f"derivation file {path.name} is truncated")
    if kind == KIND_IVFPQ and n and not (blob_len and blob_m_len):
        raise IndexError_(f"derivation file {path.name} lacks its FAISS index; re-index")
    # Validated before the flat indexes are built from them (an untrusted file).
    rot, rot_m = np.asarray(arrays[4]), np.asarray(arrays[5])
    if n and (rot.min() < 0 or rot.max() > 11 or rot_m.min() < 0 or rot_m.max() > 11):
        raise IndexError_(f"derivation file {path.name} has invalid rotations; re-index")
    index = index_m = None
    if load_index:
        if kind == KIND_IVFPQ and n:
            try:
                index = faiss.deserialize_index(
                    np.fromfile(path, dtype=np.uint8, count=blob_len, offset=blob_pos))
                index_m = faiss.deserialize_index(
                    np.fromfile(path, dtype=np.uint8, count=blob_m_len, offset=pos_m))
            except RuntimeError:
                raise IndexError_(f"derivation file {path.name} has a damaged FAISS index; "
                                  f"re-index") from None
            if index.ntotal != n or index_m.ntotal != n or index.d != dim or index_m.d != dim:
                raise IndexError_(f"derivation file {path.name} has an inconsistent FAISS "
                                  f"index; re-index")
            index.nprobe = NPROBE
            index_m.nprobe = NPROBE
        else:
            index, index_m = faiss.IndexFlatIP(dim), faiss.IndexFlatIP(dim)
            if n:
                step = 500_000
                for i in range(0, n, step):
                    index.add(chroma.rotate(arrays[2][i:i + step], arrays[4][i:i + step]))
                    index_m.add(chroma.rotate(arrays[3][i:i + step], arrays[5][i:i + step]))
    return DerivationSegment(name=path.name, kind=int(kind), track=arrays[0], start=arrays[1],
                             vectors=arrays[2], index=index, nbytes=int(size),
                             melody=arrays[3], melody_index=index_m, rotation=arrays[4],
                             melody_rotation=arrays[5])


@dataclass
class Neighbours:
    """Flat list of (query variant, catalogue vector) pairs that passed the floor."""

    variant: np.ndarray   # int64 index into the QueryEmbeddings
    track: np.ndarray     # int64
    start: np.ndarray     # float32 (reference seconds)
    sim: np.ndarray       # float32 cosine
    rotation: np.ndarray | None = None   # int8 canonical rotation of the catalogue patch


class DerivationStore:
    """The live derivation files of an index generation.

    Open with :meth:`open`; cheap to re-open after each commit (flat files rebuild their
    in-memory index, ~0.1 s per 100 000 vectors).
    """

    def __init__(self, segments: list[DerivationSegment], removed_track_ids: Iterable[int] = ()):
        self.segments = segments
        self.removed = frozenset(int(t) for t in removed_track_ids)
        self._removed_arr = np.array(sorted(self.removed), dtype=np.int64)
        n = 0
        tracks: set[int] = set()
        for s in segments:
            t = np.asarray(s.track)
            if self._removed_arr.size:
                live = ~np.isin(t, self._removed_arr)
                n += int(live.sum())
                tracks.update(int(x) for x in np.unique(t[live]))
            else:
                n += s.n_vectors
                tracks.update(int(x) for x in np.unique(t))
        self.n_vectors = n
        self.track_ids = frozenset(tracks)

    @classmethod
    def open(cls, folder: str | os.PathLike, names: Iterable[str],
             removed_track_ids: Iterable[int] = ()) -> "DerivationStore":
        """Open the derivation files ``names`` in ``folder`` (as listed by the manifest),
        hiding ``removed_track_ids``."""
        folder = Path(folder)
        return cls([read_segment(folder / n) for n in names], removed_track_ids)

    def with_removed(self, removed_track_ids: Iterable[int]) -> "DerivationStore":
        """The same files with another set of removed tracks (no re-reading)."""
        return DerivationStore(self.segments, removed_track_ids)

    @property
    def nbytes(self) -> int:
        return sum(s.nbytes for s in self.segments)

    def track_vectors(self, track_id: int, view: str = "chroma") -> tuple[np.ndarray, np.ndarray]:
        """``(starts, float32 vectors)`` of one live track in one view, by start time."""
        if int(track_id) in self.removed:
            return np.zeros(0, np.float32), np.zeros((0, chroma.DIM), np.float32)
        st, ve = [], []
        for seg in self.segments:
            vectors = seg.view(view)[0]
            for i0, i1 in seg.runs().get(int(track_id), ()):
                st.append(np.asarray(seg.start[i0:i1], np.float32))
                ve.append(np.asarray(vectors[i0:i1], np.float32))
        if not st:
            return np.zeros(0, np.float32), np.zeros((0, chroma.DIM), np.float32)
        starts, vecs = np.concatenate(st), np.concatenate(ve)
        o = np.argsort(starts, kind="stable")
        return starts[o], vecs[o]

    def search(self, vectors: np.ndarray, k: int = 10, min_similarity: float = 0.0,
               view: str = "chroma") -> Neighbours:
        """k nearest catalogue patches (in their canonical rotation) of every query vector
        (cosine) in one view, live tracks only; each neighbour carries its rotation."""
        vectors = np.ascontiguousarray(vectors, dtype=np.float32)
        out_v, out_t, out_s, out_c, out_r = [], [], [], [], []
        extra = 4 if self.removed else 0
        for seg in self.segments:
            if seg.n_vectors == 0 or vectors.shape[0] == 0:
                continue
            kk = min(k + extra, seg.n_vectors)
            seg_vectors, seg_index = seg.view(view)
            seg_rot = np.asarray(seg.rotations(view))
            if seg.kind == KIND_IVFPQ:
                kk_c = min(max(RERANK_FACTOR * kk, RERANK_MIN), seg.n_vectors)
                _, idx = seg_index.search(vectors, kk_c)
                # exact re-scoring from the float16 vectors (canonically rotated)
                valid = idx >= 0
                rows = np.where(valid, idx, 0)
                sims = chroma.rotated_dots(vectors, seg_vectors, rows, seg_rot[rows])
                sims[~valid] = -2
                order = np.argsort(-sims, axis=1)[:, :kk]
                idx = np.take_along_axis(rows, order, 1)
                sims = np.take_along_axis(sims, order, 1)
                valid = np.take_along_axis(valid, order, 1)
                sims[~valid] = -2
            else:
                sims, idx = seg_index.search(vectors, kk)
            q = np.repeat(np.arange(vectors.shape[0]), idx.shape[1])
            idx = idx.ravel()
            sims = sims.ravel()
            keep = (idx >= 0) & (sims >= min_similarity)
            q, idx, sims = q[keep], idx[keep], sims[keep]
            tr = np.asarray(seg.track)[idx]
            if self._removed_arr.size:
                live = ~np.isin(tr, self._removed_arr)
                q, idx, sims, tr = q[live], idx[live], sims[live], tr[live]
            out_v.append(q)
            out_t.append(tr)
            out_s.append(np.asarray(seg.start)[idx])
            out_c.append(sims)
            out_r.append(seg_rot[idx])
        if not out_v:
            z = np.zeros(0)
            return Neighbours(z.astype(np.int64), z.astype(np.int64), z.astype(np.float32),
                              z.astype(np.float32), z.astype(np.int8))
        return Neighbours(np.concatenate(out_v), np.concatenate(out_t),
                          np.concatenate(out_s).astype(np.float32),
                          np.concatenate(out_c).astype(np.float32),
                          np.concatenate(out_r).astype(np.int8))


def merge_segments(folder: str | os.PathLike, names: Iterable[str],
                   removed_track_ids: Iterable[int], out_name: str) -> SegmentArrays:
    """Rewrite several derivation files as one, physically dropping removed tracks.

    Writes ``out_name`` atomically and returns its arrays; the caller commits it in the
    manifest and then deletes the old files (like :meth:`Index.merge` does for hashes).
    """
    folder = Path(folder)
    removed = np.array(sorted(int(t) for t in removed_track_ids), dtype=np.int64)
    tr, st, ve, me = [], [], [], []
    for n in names:
        seg = read_segment(folder / n, load_index=False)
        t = np.asarray(seg.track)
        keep = ~np.isin(t, removed) if removed.size else np.ones(t.shape[0], bool)
        tr.append(t[keep])
        st.append(np.asarray(seg.start)[keep])
        ve.append(np.asarray(seg.vectors)[keep])
        me.append(np.asarray(seg.melody)[keep])
    if tr:
        arrays = SegmentArrays(np.concatenate(tr), np.concatenate(st), np.concatenate(ve),
                               np.concatenate(me))
    else:
        arrays = build_segment([], [])
    write_segment(folder, out_name, arrays)
    return arrays


# --------------------------------------------------------------------------- matching


@dataclass(frozen=True)
class DerivationConfig:
    """Tunables of :func:`match_derivations` (defaults calibrated by ``fp bench derivation``).

    Attributes
    ----------
    k_neighbours : int
        Nearest catalogue patches retrieved per query variant (patch x tempo x key).
    min_similarity : float
        Cosine below which a neighbour does not vote.
    min_votes : int
        Distinct agreeing query patches a match needs, whatever its significance.
    min_significance : float
        ``-log10`` chance probability a match needs (see module docstring).
    tempos : tuple of float
        Tempo ratios searched (reference seconds per query second).
    search_keys : bool
        Search the 12 key shifts (else only the original key).
    key_rotations : int
        Candidate key rotations searched per query patch
        (:func:`earmark.fingerprint.chroma.rotation_candidates`; 12 = all).
    max_matches : int
        At most this many derivation matches per query (best first).
    patch_similarity : float
        After refinement, an aligned patch counts towards the score when its cosine
        with the catalogue patch reaches this.
    min_contrast : float
        Mean aligned cosine minus the background (the same query shifted by 1.5-7.5 s
        against the same track) a flag needs: rejects static or generic material.
    min_candidate_votes, max_candidates : int
        Hypotheses refined per query and view: at most ``max_candidates`` tracks with at
        least ``min_candidate_votes`` coarse votes.
    melody : bool
        Also search the melody view (the top melodic line alone: catches a melody sung or
        played over a new backing).
    melody_patch_similarity, melody_min_contrast : float
        ``patch_similarity`` and ``min_contrast`` of the melody view.
    """

    k_neighbours: int = 10
    min_similarity: float = 0.6
    min_votes: int = 4
    min_significance: float = DEFAULT_MIN_SIGNIFICANCE
    tempos: tuple[float, ...] = chroma.TEMPO_RATIOS
    search_keys: bool = True
    key_rotations: int = chroma.QUERY_ROTATIONS
    max_matches: int = 5
    patch_similarity: float = PATCH_SIMILARITY
    min_candidate_votes: int = 3
    max_candidates: int = 4
    min_contrast: float = MIN_CONTRAST
    melody: bool = True
    melody_patch_similarity: float = MELODY_PATCH_SIMILARITY
    melody_min_contrast: float = MELODY_MIN_CONTRAST

    def views(self) -> tuple[str, ...]:
        """The views searched."""
        return chroma.VIEWS if self.melody else ("chroma",)

    def view_thresholds(self, view: str) -> tuple[float, float, float]:
        """``(patch_similarity, min_contrast, chance patch probability)`` of a view."""
        if view == "melody":
            return self.melody_patch_similarity, self.melody_min_contrast, MELODY_CHANCE_PATCH_P
        return self.patch_similarity, self.min_contrast, CHANCE_PATCH_P


def _log10_binom_sf(m: float, n: float, p: float) -> float:
    """log10 P[X >= m] for X ~ Binomial(n, p), continuous in m and n (regularised beta)."""
    if m <= 0:
        return 0.0
    if m > n:
        m = n
    p = min(max(p, 1e-300), 1 - 1e-12)
    # P[X >= m] = I_p(m, n - m + 1)
    v = betainc(m, n - m + 1, p)
    if v > 0:
        return math.log10(v)
    # underflow: leading term of the tail
    lg = (gammaln(n + 1) - gammaln(m + 1) - gammaln(n - m + 1) + m * math.log(p)
          + (n - m) * math.log1p(-p))
    return lg / math.log(10)


@dataclass
class _Hypothesis:
    track: int
    key: int
    tempo: float
    offset: float
    votes: int
    sim_sum: float
    q_times: np.ndarray
    r_times: np.ndarray
    significance: float = 0.0


def vote(q: QueryEmbeddings, nb: Neighbours, cfg: DerivationConfig) -> list[_Hypothesis]:
    """Aligned voting: the best hypotheses, one per track (see module docstring)."""
    if nb.variant.size == 0:
        return []
    key = chroma.key_shift(q.rotation[nb.variant], nb.rotation).astype(np.int64)
    if not cfg.search_keys:
        keep = key == 0
        nb = Neighbours(nb.variant[keep], nb.track[keep], nb.start[keep], nb.sim[keep],
                        nb.rotation[keep])
        key = key[keep]
        if nb.variant.size == 0:
            return []
    tempos = np.asarray(cfg.tempos, np.float64)
    v = nb.variant
    r = q.tempo[v].astype(np.float64)
    t_idx = np.searchsorted(np.round(tempos, 4), np.round(r, 4))
    t_idx = np.clip(t_idx, 0, len(tempos) - 1)
    key = key + 6                                 # 1..12
    qs = q.q_start[v].astype(np.float64)
    # compare patch centres: the centre of a query patch maps to the reference centre
    q_c = qs + 0.5 * chroma.PATCH_SECONDS / r
    r_c = nb.start.astype(np.float64) + 0.5 * chroma.PATCH_SECONDS
    off = r_c - r * q_c
    obin = np.floor(off / OFFSET_BIN).astype(np.int64) + 100_000
    patch = q.patch[v].astype(np.int64)
    # one vote per (hypothesis bin, patch): its best similarity; spread to +-1 bin
    hyp_base = ((nb.track.astype(np.int64) * 13 + key) * 16 + t_idx)
    rows = []
    for d in (-1, 0, 1):
        rows.append(np.stack([hyp_base, obin + d, patch, np.arange(v.shape[0])], axis=1))
    allv = np.concatenate(rows)
    sims = np.tile(nb.sim, 3)
    order = np.lexsort((-sims, allv[:, 2], allv[:, 1], allv[:, 0]))
    allv, sims = allv[order], sims[order]
    first = np.ones(allv.shape[0], bool)
    first[1:] = np.any(allv[1:, :3] != allv[:-1, :3], axis=1)
    allv, sims = allv[first], sims[first]
    # per (hyp, bin): count, sim sum
    hb = allv[:, :2]
    brk = np.ones(hb.shape[0], bool)
    brk[1:] = np.any(hb[1:] != hb[:-1], axis=1)
    starts = np.flatnonzero(brk)
    counts = np.diff(np.append(starts, hb.shape[0]))
    simsum = np.add.reduceat(sims, starts)
    score = counts + 1e-3 * simsum
    # best bin per track
    trk = hb[starts, 0] // (13 * 16)
    order = np.lexsort((-score, trk))
    best_first = np.ones(order.shape[0], bool)
    best_first[1:] = trk[order][1:] != trk[order][:-1]
    out = []
    for gi in order[best_first]:
        if counts[gi] < 2:
            continue
        s0 = starts[gi]
        members = allv[s0:s0 + counts[gi], 3]
        hyp = int(hb[s0, 0])
        t_i = hyp % 16
        k_i = (hyp // 16) % 13
        out.append(_Hypothesis(
            track=int(hyp // (13 * 16)), key=int(k_i - 6), tempo=float(tempos[t_i]),
            offset=float((hb[s0, 1] - 100_000) * OFFSET_BIN), votes=int(counts[gi]),
            sim_sum=float(simsum[gi]), q_times=q_c[members], r_times=r_c[members]))
    return out


def significance(m: int, n: int, n_vectors: int, n_keys: int = 12, n_tempos: int = 5,
                 p: float = CHANCE_PATCH_P, n_views: int = 1) -> float:
    """``-log10`` of the chance that any alignment in the catalogue, in any of ``n_views``
    views, reaches ``m`` of ``n`` aligned patches at the view's agreeing cosine, each with
    chance probability ``p`` (see module docstring)."""
    if m <= 0 or n <= 0:
        return 0.0
    alignments = n_views * n_keys * n_tempos * max(n_vectors, 1)
    c = CORRELATION
    lg = _log10_binom_sf(m / c, max(n, m) / c, p)
    return float(max(0.0, -(math.log10(alignments) + lg)))


@dataclass
class _Refined:
    tempo: float
    offset: float          # reference patch start at query time 0
    q_start: np.ndarray    # query patch starts
    r_start: np.ndarray    # reference patch starts
    sims: np.ndarray
    background: float = 0.0  # median mean-cosine of the same query at other offsets


#: Catalogue patches a refinement lattice is scored on, at most (:func:`refine`).
REFINE_MAX_PATCHES = 32


def refine(q: QueryEmbeddings, store: DerivationStore, h: _Hypothesis,
           tempo_span: float = 0.15, tempo_steps: int = 21, offset_span: float = 1.5,
           offset_step: float = 0.125) -> _Refined | None:
    """Fine search of tempo and offset for one hypothesis, against the track's own vectors.

    For tempo ``r`` and offset ``b`` the catalogue patch starting at ``t`` is compared with
    the query patch starting at ``(t - b) / r`` and spanning ``PATCH_SECONDS / r``; the
    (r, b) with the highest mean cosine (over the patches a full-length alignment has)
    wins.  Coarse votes tolerate about +-5 % of tempo and +-1.5 s; this recovers tempo
    to about 1.5 % and the offset to 0.125 s.  The tempi are a fixed lattice of log tempo
    through 1.0 (the ``tempo_steps`` nearest the coarse ratio), so two coarse hypotheses
    of one alignment refine to the same answer.  Two vectorised passes (every other cell,
    then the cells around the best): ~160 of the 21 x 25 cells, ~15 patches each.
    """
    starts, vecs = store.track_vectors(h.track, getattr(q, "view", "chroma"))
    if starts.size == 0:
        return None
    sampler = (q.sampler if getattr(q, "sampler", None) is not None
               else chroma.sampler(q.chroma, getattr(q, "view", "chroma")))
    W = chroma.PATCH_SECONDS
    dur = q.duration
    # one fixed lattice of log tempo (steps of 2 tempo_span / (tempo_steps - 1), through
    # 1.0): the refined tempo does not depend on which coarse ratio won the votes
    step = 2 * tempo_span / max(tempo_steps - 1, 1)
    centre = round(math.log(h.tempo) / step)
    half = (tempo_steps - 1) // 2
    tempos = np.exp(step * np.arange(centre - half, centre + half + 1))
    # the patch-centre offset of the votes equals the patch-start offset t - r qs
    offs = h.offset + 0.5 * OFFSET_BIN + np.arange(-offset_span, offset_span + 1e-9, offset_step)
    # Only the catalogue patches some (tempo, offset) of the lattice can overlap are
    # scored; the rest of a long track would be (T, O, n_ref) work that is never used.
    # Patch start t overlaps when  b - 0.05 r <= t <= b + r (dur + 0.05) - W; the bounds
    # are widened by a second (float32 starts), and every test below stays exact.
    first_ref, end_ref = np.searchsorted(
        starts, [offs.min() - 0.05 * tempos.max() - 1.0,
                 offs.max() + tempos.max() * (dur + 0.05) - W + 1.0])
    all_starts, all_vecs = starts, vecs
    starts, vecs = starts[first_ref:end_ref], vecs[first_ref:end_ref]
    R = tempos[:, None, None]
    qs = (starts[None, None, :] - offs[None, :, None]) / R        # (T, O, n_ref)
    ok = (qs >= -0.05) & (qs + W / R <= dur + 0.05)
    if not ok.any():
        return None
    # A long query overlaps hundreds of catalogue patches: the lattice is scored on at
    # most REFINE_MAX_PATCHES of them, evenly spaced (the cell score is a mean cosine, which
    # they estimate well), so work and memory per candidate stop growing with the query's
    # length; the winning cell's evidence is then taken from every patch.  A 20 s query
    # overlaps ~15, so its result is exact.
    in_range = np.flatnonzero(ok.any(axis=(0, 1)))
    n_full_ref = in_range.size
    if n_full_ref > REFINE_MAX_PATCHES:
        keep = np.zeros(starts.size, dtype=bool)
        keep[in_range[np.unique(np.linspace(0, n_full_ref - 1, REFINE_MAX_PATCHES).round()
                                .astype(np.int64))]] = True
        lattice_ok = ok & keep[None, None, :]
    else:
        lattice_ok = ok
    n_full = (dur - W / tempos) * tempos / chroma.INDEX_HOP_SECONDS + 1     # per tempo
    if lattice_ok is not ok:
        n_full = n_full * (REFINE_MAX_PATCHES / n_full_ref)
    floor = 0.8 * np.maximum(n_full, 1.0)
    # Coarse to fine on the lattice: every other tempo and offset first, then the cells
    # within two steps of the best one (the cell score, a mean cosine over 6-s patches,
    # changes smoothly over a step of 1.5 % or 0.125 s).  ~160 cells of 525 are scored.
    score = np.full((tempos.size, offs.size), -np.inf)
    points = []

    def score_cells(cells: np.ndarray) -> None:
        ti, oi, ri = np.nonzero(lattice_ok & cells[:, :, None])
        qv, valid = chroma.patches_at(sampler, np.clip(qs[ti, oi, ri], 0, None), tempos[ti],
                                      h.key)
        sims = np.where(valid, np.einsum("md,md->m", qv, vecs[ri]), 0.0)
        points.append((ti, oi, ri, sims))
        ct, co = np.nonzero(cells)
        flat = ct * offs.size + co
        n = tempos.size * offs.size
        tot = np.bincount(ti * offs.size + oi, weights=sims, minlength=n)[flat]
        cnt = np.bincount(ti * offs.size + oi, minlength=n)[flat]
        score[ct, co] = tot / np.maximum(cnt, floor[ct])

    first = np.zeros(score.shape, dtype=bool)
    first[::2, ::2] = True
    score_cells(first)
    t1, o1 = np.unravel_index(int(np.argmax(score)), score.shape)
    near = np.zeros(score.shape, dtype=bool)
    near[max(t1 - 2, 0):t1 + 3, max(o1 - 2, 0):o1 + 3] = True
    score_cells(near & ~first)
    j = int(np.argmax(score))
    t_best, o_best = j // offs.size, j % offs.size
    r_best, off_best = float(tempos[t_best]), float(offs[o_best])
    if lattice_ok is ok:
        ti, oi, ri, sims = (np.concatenate(a) for a in zip(*points))
        m = (ti == t_best) & (oi == o_best)
        q_start, r_idx, best_sims = qs[ti[m], oi[m], ri[m]], ri[m], sims[m]
    else:
        r_idx = np.flatnonzero(ok[t_best, o_best])
        q_start = qs[t_best, o_best, r_idx]
        qv, valid = chroma.patches_at(sampler, np.clip(q_start, 0, None), r_best, h.key)
        best_sims = np.where(valid, np.einsum("md,md->m", qv, vecs[r_idx]), 0.0)
    return _Refined(tempo=r_best, offset=off_best,
                    q_start=np.asarray(q_start, np.float64),
                    r_start=starts[r_idx].astype(np.float64),
                    sims=np.asarray(best_sims, np.float64),
                    background=_background(sampler, dur, all_starts, all_vecs, r_best,
                                           off_best, h.key))


def _background(sampler, dur: float, starts: np.ndarray, vecs: np.ndarray, r: float,
                off_best: float, key: int) -> float:
    """Median, over nearby misalignments of the query with the same track (same tempo and
    key, offsets shifted by ``BACKGROUND_SHIFTS`` seconds), of the mean patch cosine.
    Static or generic material (one chord held, a drone, a loop of a common progression)
    matches just as well when shifted by a few seconds; a derivation's harmony and melody
    move, so it matches at its own alignment only."""
    W = chroma.PATCH_SECONDS
    offs = off_best + np.asarray(BACKGROUND_SHIFTS)
    if offs.size == 0:
        return 0.0
    qs = (starts[None, :] - offs[:, None]) / r
    ok = (qs >= -0.05) & (qs + W / r <= dur + 0.05)
    oi, ri = np.nonzero(ok)
    if oi.size == 0:
        return 0.0
    qv, valid = chroma.patches_at(sampler, np.clip(qs[oi, ri], 0, None), r, key)
    sims = np.where(valid, np.einsum("md,md->m", qv, vecs[ri]), 0.0)
    cnt = np.bincount(oi, minlength=offs.size)
    tot = np.bincount(oi, weights=sims, minlength=offs.size)
    full = cnt >= 0.5 * cnt.max()
    return float(np.median(tot[full] / cnt[full])) if full.any() else 0.0


@dataclass
class Candidate:
    """A refined derivation hypothesis before the decision: its evidence, its contrast and
    the view (``"chroma"`` or ``"melody"``) that found it."""

    match: Match
    contrast: float
    view: str = "chroma"


def match_derivations(store: DerivationStore, y: np.ndarray | None, sr: int,
                      references: Callable[[int], Reference] | Mapping[int, Reference] | None = None,
                      config: DerivationConfig | None = None,
                      query: QueryEmbeddings | None = None) -> list[Match]:
    """Derivation matches of a query (mono samples at any rate), best first.

    Parameters
    ----------
    store : DerivationStore
    y, sr : query audio (``y`` may be ``None`` when ``query`` is given).
    references : callable or mapping
        ``track_id -> Reference``; missing ids get a placeholder reference.
    config : DerivationConfig
    query : QueryEmbeddings, optional
        Precomputed :func:`earmark.fingerprint.chroma.query_embeddings` of one view; the
        other view is computed from ``y`` when ``y`` is given, else skipped.

    Returns
    -------
    list of Match
        ``kind="derivation"``, at most one per track; ``score`` = aligned query patches
        whose cosine reaches the view's agreeing cosine; ``speed`` = tempo ratio
        (reference seconds per query second); ``pitch_semitones`` = key shift (integer
        semitones, query minus reference); ``alignment`` = (query, reference) patch
        centres.
    """
    cfg = config or DerivationConfig()
    return [c.match for c in _candidates(store, y, sr, references, cfg, query)
            if is_flag(c, cfg)][: cfg.max_matches]


def is_flag(c: Candidate, cfg: DerivationConfig) -> bool:
    """The decision rule: significance, agreeing patches and the view's contrast all reach
    the config."""
    _, min_contrast, _ = cfg.view_thresholds(c.view)
    return (c.match.significance >= cfg.min_significance and c.match.score >= cfg.min_votes
            and c.contrast >= min_contrast)


def _queries(y, sr, cfg: DerivationConfig, query: QueryEmbeddings | None,
             frames: Mapping[str, np.ndarray] | None = None) -> list[QueryEmbeddings]:
    """The query embeddings of every view searched (one STFT for both; ``frames``: the
    frames of each view, precomputed)."""
    views = cfg.views()
    have = {query.view: query} if query is not None else {}
    need = [v for v in views if v not in have]
    if need and (y is not None or frames is not None):
        if frames is None:
            frames = dict(zip(chroma.VIEWS, chroma.analyse(y, sr)))
        for v in need:
            have[v] = chroma.query_embeddings(None, sr, tempos=cfg.tempos,
                                              keys=cfg.search_keys, chroma=frames[v], view=v,
                                              rotations=cfg.key_rotations)
    return [have[v] for v in views if v in have]


def _candidates(store, y, sr, references, cfg: DerivationConfig, query, per_track: bool = True
                ) -> list[Candidate]:
    """All refined candidates of all views with their significance and contrast (no
    threshold), flagged first, then by significance; with ``per_track`` only the first of
    each track (else one per track and view, for calibration)."""
    if store.n_vectors == 0:
        return []
    views = cfg.views()
    n_keys = 12 if cfg.search_keys else 1
    n_tempos = len(cfg.tempos)
    found: list[tuple[Candidate, bool]] = []
    for q in _queries(y, sr, cfg, query):
        if q.vectors.shape[0] == 0:
            continue
        patch_sim, _, chance_p = cfg.view_thresholds(q.view)
        nb = store.search(q.vectors, cfg.k_neighbours, cfg.min_similarity, view=q.view)
        hyps = vote(q, nb, cfg)
        hyps = [h for h in hyps if h.votes >= cfg.min_candidate_votes]
        hyps.sort(key=lambda h: (-h.votes, -h.sim_sum, h.track))
        for h in hyps[: cfg.max_candidates]:
            rf = refine(q, store, h)
            if rf is None or rf.sims.size == 0:
                continue
            good = rf.sims >= patch_sim
            m = int(good.sum())
            sig = significance(m, int(rf.sims.size), store.n_vectors, n_keys, n_tempos,
                               chance_p, len(views))
            contrast = float(rf.sims.mean() - rf.background)
            cand = Candidate(_evidence(h, rf, good, m, sig, q.duration, references), contrast,
                             q.view)
            found.append((cand, is_flag(cand, cfg)))
    found.sort(key=lambda x: (-x[1], -x[0].match.significance, -x[0].match.score,
                              x[0].match.reference.track_id, x[0].view))
    if not per_track:
        return [c for c, _ in found]
    out, seen = [], set()
    for cand, _ in found:
        t = cand.match.reference.track_id
        if t not in seen:
            seen.add(t)
            out.append(cand)
    return out


def _evidence(h: _Hypothesis, rf: _Refined, good: np.ndarray, m: int, sig: float,
              duration: float, references) -> Match:
    ref = None
    if references is not None:
        ref = references.get(h.track) if isinstance(references, Mapping) else references(h.track)
    if ref is None:
        ref = Reference(track_id=h.track, path=f"<track {h.track}>")
    W = chroma.PATCH_SECONDS
    sel = good if good.any() else np.ones(good.shape, bool)
    qs, rs = rf.q_start[sel], rf.r_start[sel]
    q0 = max(0.0, float(qs.min()))
    q1 = min(duration, float(qs.max()) + W / rf.tempo)
    r0 = float(rs.min())
    r1 = float(rs.max()) + W
    order = np.argsort(qs)
    return Match(
        reference=ref, score=m, significance=round(sig, 2),
        query_start=round(q0, 3), query_end=round(q1, 3),
        reference_start=round(r0, 3), reference_end=round(r1, 3),
        coverage=round((q1 - q0) / duration, 4) if duration else 0.0,
        speed=round(rf.tempo, 4), pitch_semitones=float(h.key), kind="derivation",
        alignment=tuple((round(float(a + 0.5 * W / rf.tempo), 3), round(float(b + 0.5 * W), 3))
                        for a, b in zip(qs[order], rs[order])))
