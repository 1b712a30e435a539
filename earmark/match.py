"""Matcher: query landmarks -> hash look-ups -> aligned votes -> evidence.

Why transform hypotheses on peak coordinates (the design choice of issue #4)
-------------------------------------------------------------------------
Plain landmark hashes break under speed, tempo and pitch change because the time gap
``dt`` and the frequencies in the key change.  Two remedies were weighed:

* **Scale-invariant keys** (Panako-style peak triplets with time *ratios* and frequency
  *differences*): no search at query time, but each key carries fewer bits of the
  original signal (ratios of small integers collide), triplets multiply the index size,
  and the transform is only known after a second, per-candidate estimation step.
* **Hypothesis search on peak coordinates** (chosen): the front end puts peaks on a
  log-frequency axis with fractional positions, so a query under speed factor ``s`` and
  pitch shift ``p`` relates to the reference by ``t_ref = s * t_query + b`` and
  ``f_ref = f_query - p``.  For each hypothesis ``(s, p)`` on a grid the matcher
  re-quantises the query's *continuous* landmark coordinates (no re-decoding, no new
  spectrogram) and looks them up in the ordinary index.  The catalogue index is exactly
  the plain one (same size, same indexing speed); the cost moves to query time and is
  linear in the number of hypotheses, and each match comes with its transform.

The grid covers three families (each a line in the (s, p) plane): speed (time and pitch
together, ``p = 12 log2 s``), tempo only (``p = 0``) and pitch only (``s = 1``), and a
region of the plane around identity where tempo and key change independently (a sample
fitted to a new song's beat and key: tempo +-10 %, key +-3 semitones; off the lines,
10-s excerpts at tempo 1.06 with key -2 were found 9 times of 30, with the region 30);
spacing is :class:`~earmark.fingerprint.config.MatchConfig` ``speed_step`` and
``pitch_step_semitones``.  Off-grid transforms are caught by query-side multi-probing:
a coordinate within ``probe_margin`` of a bin edge is also looked up in the neighbouring
bin.  The best hypothesis is then refined: a least-squares line through the matched
(query time, reference time) pairs gives the speed factor, and the mean residual of the
anchor frequencies inside their key bins gives the pitch shift; a final look-up at the
refined ``(s, p)`` collects the evidence (:func:`refine_pairs`: the keys a landmark
probes at both the grid point and the refined hypothesis are not looked up again).

Coarse to fine: voting every hypothesis with all query landmarks (~200 per second then) made the
search ~15x the cost of plain matching.  The grid is first voted with the query's
strongest landmarks only (its peaks thinned to the catalogue side's density, paired with
the catalogue side's fan-out: ~27 per second, the ones most likely to be in the index at
all); identity and the ``refine_hypotheses`` strongest transforms are then voted with every
landmark, and only they yield candidates.  A transform whose coarse votes fall on tracks
where identity's are at least as strong is an echo of a recording used as it is (the
grid's neighbours of identity collect part of its votes) and is not voted again: a clean
10-s query went from identity plus four echoes to identity alone (fine stage 8.8 -> 4.0
ms, no bench row changed).  A real transform stands out in the coarse vote
long before it is needed for the evidence.  Measured on the dev corpus (``fp bench``), the
coarse stage loses no hit, and a clean 10-s query went from ~72 to ~14 ms (the faster front
end contributes a few ms); at 20 000 tracks, from 7.9 s to 0.75 s.

A second coarse round runs where the first leaves most of the query unexplained (the
matches' segments cover under ``dense_coarse_max_explained`` of it: no match, or a short
use in a long file).  The strongest landmarks are the query's, not the recording's:
under other music as loud, that music takes about half of the strongest peaks and pairs
the recording's remaining ones with its own, and an 8-s excerpt at tempo 1.07 in 90 s of
other music left its transform without a coarse cell of 4 votes while every landmark
aligned 65 (significance 156).  So the speed, tempo and pitch lines are voted again with
twice the peak density (``dense_coarse_peaks_per_second``), and the strongest transforms
not voted yet go to the fine stage as before.  On 42 such excerpts 27 -> 34 were found.

Where that round too finds nothing, the tempo-and-key plane is widened from key +-3 to
+-6 semitones (``wide_tempo_key_max_semitones``): a sample fitted to a new song's key
by 4-6 semitones as well as its beat.  Searching the whole +-6 plane in the first round
found 58 of 60 ``tempokey_-10_+5`` excerpts (none before) but cost every query ~11 %
CPU and pushed the default / ``--fast`` latency ratio over its target; as a last
round it costs only the queries nothing explains.  It runs after the lines' round, not
beside it: its chance cells, voted with every landmark, joined the background a
match's contrast is judged against and cost a pitch-shifted excerpt under other music
its match.  Its evidence must be significant on its landmarks alone, at a higher bar
(``wide_min_significance``), and each round has its own quota of alignments per
recording (chance alignments of the right recording under the lines had used it up
for 4 of the 60).  The chance model counts the hypotheses of the first two rounds
only: the ring's bar, ten orders of magnitude over a match's, covers its own 144
(counting them everywhere lowered every transformed match's significance by 0.18 and
cost a borderline ``pv_pitch_-3`` query).

The mix look
------------
A recording used as it is under other music as loud (a sample under new vocals and
beats, a 0 dB mix) loses its landmarks before it loses its audio: the added music is
louder somewhere in most of the recording's peak neighbourhoods (+-6 frames x +-2
semitones), so those points stop being local maxima of the query, and a landmark needs
two of them.  On the bench's five 5-s excerpts in 30 s of other music that the search
missed, 8-22 % of the catalogue side's peaks were still query peaks, and the true
alignment held 0-4 landmarks, ranked 34th or lower among the identity cells; more query
peaks at the same neighbourhood (70 per second) did not bring them back.  Yet the
waveform was there (``coherence_z`` 44-106 at the true alignments,
:mod:`earmark.verify`).  So a query with no match over the landmarks' threshold (none,
or only matches that rest on an audio check) is analysed once more with small
neighbourhoods (+-2 frames x +-2 bins, 60 peaks per second, fan-out 20:
:attr:`~earmark.fingerprint.config.MatchConfig.mix_peaks_per_second`), which keeps
12-41 % of those peaks and 9-10 landmarks at the true alignment in three of the five.
Such dense landmarks also find chance alignments everywhere, and a short use must
stand out of its own few seconds, not of the whole query: :func:`mix_search` votes
identity window by window (2.5 s, two neighbouring windows summed), refines the four
strongest alignments on the landmarks around them, and hands those reaching a fifth of
``min_significance`` to the coherence test alone (the two most significant, and the
others of a recording whose waveform stood out there but held over too little of the
segment: a repeat of the section, say).  No landmark count of the mix look makes a
match by itself; the waveform decides.  Beside a match that rests on an audio check, the
mix look's alignment of the same recording elsewhere takes its place where the waveform
holds better there (a repeat of the section matched weakly, the use itself elsewhere).

Significance
------------
Under the null hypothesis (the query does not use the recording), a look-up returns
postings that fall on unrelated tracks and times: each of the ``V`` postings visited
for one hypothesis lands within ``+-tol`` frames of any given alignment line with
probability about ``(2 tol + 1) / F``, where ``F`` is the number of live catalogue
frames.  The number of chance-aligned landmarks is then ``Poisson(mu)`` with
``mu = V (2 tol + 1) / F``.  Searching ``F / (2 tol + 1)`` alignments in each of ``H``
hypotheses, the probability that *any* reaches ``score`` is bounded by
``P = min(1, H F / (2 tol + 1) * P[Poisson(mu) >= score])``; ``significance =
-log10 P``.  It grows with the score and shrinks with the index size and the query size
(more postings visited).  The bound is a *weighted* Bonferroni correction: half of the
false-alarm budget goes to the identity hypothesis (the recording used as it is, the
commonest case), half is shared by the ``H - 1`` transforms, so ``H`` is 2 for identity
and ``2 (H - 1)`` for a transform (:func:`hypothesis_tests`).  Real music is burstier than Poisson, so the default threshold
(``min_significance``) is set with margin on measured negatives (``fp bench``).
"""

from __future__ import annotations

import functools
import math
import os
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import numpy as np
from numba import njit

from earmark import verify
from earmark.evidence import Match, Reference
from earmark.fingerprint import hashes
from earmark.fingerprint.config import FingerprintConfig, MatchConfig
from earmark.fingerprint.hashes import key_from_bins, quantise_coords
from earmark.fingerprint.landmarks import Landmarks
from earmark.threads import usable_cpus

_LO_MASK = (1 << hashes.LO_BITS) - 1
_FRAME_MASK = hashes.MAX_SLOT_FRAMES - 1
_OFFSET_BIAS = 1 << 23
_OFFSET_SPAN = 1 << 24
#: A vote-histogram candidate is refined only if its coarse significance reaches this
#: fraction of ``min_significance`` (refinement is the expensive part of a query).
PREFILTER_FRACTION = 0.5
#: The same for candidates the audio may still accept (``verify_peaks_min_significance``):
#: a few aligned landmarks stand out less in the coarse two-bin window than on the
#: fitted line, and half their final significance lost 5-s excerpts whose audio passes.
VERIFY_PREFILTER_FRACTION = 0.25
#: Most of those weaker candidates refined per query (each an audio check if it holds).
VERIFY_MAX_REFINE = 4
#: Most candidates at identity that miss that pre-filter refined per query, for the
#: coherence test alone (``MatchConfig.coherence_min_significance``).
COHERENCE_MAX_REFINE = 4
#: Alignments of one track refined per round of the search (a track used several times
#: in one query, or repeated sections of the reference that align with the same query
#: segment; the evidence found counts as one more).
MAX_ALIGNMENTS_PER_TRACK = 4
#: A repeated section: another alignment of the same recording with the same query
#: segment, at least this fraction of the kept one's landmarks, is kept beside it as a
#: *rival* (``_Evidence.rivals``), for the audio to place the use (the landmark counts of
#: two copies of a looped section differ by chance; :meth:`Index._placed_by_audio`).
RIVAL_MIN_SCORE_RATIO = 0.8
#: ... and at least this far from it in the reference (seconds): a different place.
RIVAL_MIN_SHIFT_SECONDS = 1.0
#: Rivals kept per alignment.
MAX_RIVALS = 2
#: ... unless the two alignments rest on mostly the same query landmarks (this share of
#: their distinct anchor times, intersection over union): then the two copies hold the
#: same peaks (an exact loop), the audio tells them apart no better than the landmarks,
#: and either is right.  On the bench's queries with rivals, 47 % of the pairs on the
#: game soundtracks and 16 % on the electronic tracks share >= 0.8, and none of the
#: uses the audio moved to their true place shared more than 0.74.
RIVAL_MAX_SHARED = 0.8
#: Recordings whose best vote counts form the per-query background (see track_contrast).
CONTRAST_BACKGROUND = 5
#: Recordings under the candidate threshold (``min_score``) count as this fraction of it.
CONTRAST_FLOOR_FRACTION = 0.7


# ----------------------------------------------------------------------------- kernels


@njit(cache=True)
def _probe(x: float, margin: float, out: np.ndarray) -> int:
    """Bins to look up for continuous bin coordinate ``x``: its own, plus the neighbour
    when ``x`` is within ``margin`` of an edge.  Returns how many were written."""
    b = math.floor(x)
    out[0] = b
    frac = x - b
    if frac < margin:
        out[1] = b - 1
        return 2
    if frac > 1.0 - margin:
        out[1] = b + 1
        return 2
    return 1


@njit(cache=True, nogil=True)
def _probe_keys(f1: float, df: float, dt: float, margin: float, out_keys: np.ndarray,
                out_f1_bin: np.ndarray, scratch: np.ndarray) -> int:
    """Keys to look up for one landmark (continuous coordinates already transformed by
    the hypothesis): its own bins, plus the neighbouring bin of any coordinate within
    ``margin`` of a bin edge (up to 2 x 2 x 2 keys).  Writes the keys and the f1 bin of
    each into ``out_keys`` / ``out_f1_bin`` (length >= 8); returns how many."""
    cf, cd, ct = quantise_coords(f1, df, dt)
    nf = _probe(cf, margin, scratch[0])
    nd = _probe(cd, margin, scratch[1])
    nt = _probe(ct, margin, scratch[2])
    n = 0
    for a in range(nf):
        for b in range(nd):
            for c in range(nt):
                key = key_from_bins(scratch[0, a], scratch[1, b], scratch[2, c])
                if key >= 0:
                    out_keys[n] = key
                    out_f1_bin[n] = scratch[0, a]
                    n += 1
    return n


#: Buckets up to this size are scanned; larger ones (big catalogues) are bisected.
_LINEAR_BUCKET = 32


@njit(cache=True, nogil=True)
def _lower_bound(key_lo: np.ndarray, first: int, last: int, lo: int) -> int:
    """First position in ``[first, last)`` whose ``key_lo`` is ``>= lo`` (sorted run)."""
    if last - first <= _LINEAR_BUCKET:
        while first < last and key_lo[first] < lo:
            first += 1
        return first
    while first < last:
        mid = (first + last) // 2
        if key_lo[mid] < lo:
            first = mid + 1
        else:
            last = mid
    return first


_KEY_TABLE_LENGTH = (1 << hashes.KEY_BITS) + 1


@njit(cache=True, nogil=True)
def _key_range(key_table: np.ndarray, key_lo: np.ndarray, key: int) -> tuple[int, int]:
    """Postings ``[first, last)`` of ``key``.

    ``key_table`` is either a per-key offset table (2**KEY_BITS + 1 entries,
    :func:`earmark.index.store.key_offsets`): one read; or the segment's bucket table:
    ``key``'s bucket, then the run of its low bits (postings are sorted by key within a
    bucket).  An unsorted (damaged) bucket can only give wrong postings, never a read
    outside the bucket."""
    if key_table.shape[0] == _KEY_TABLE_LENGTH:
        return np.int64(key_table[key]), np.int64(key_table[key + 1])
    bucket_start = key_table
    bucket = key >> hashes.LO_BITS
    lo = key & _LO_MASK
    first = np.int64(bucket_start[bucket])  # (uint32 + int64 would be float in Numba)
    last = np.int64(bucket_start[bucket + 1])
    start = _lower_bound(key_lo, first, last, lo)
    return start, _lower_bound(key_lo, start, last, lo + 1)


@njit(cache=True)
def _table_insert(keys: np.ndarray, counts: np.ndarray, key: int) -> int:
    """Open-addressing increment; returns the slot index, or -1 if the key was new and
    the slot index encoded as ``-2 - slot``."""
    mask = keys.shape[0] - 1
    h = ((key * 2654435761) >> 11) & mask
    while True:
        k = keys[h]
        if k == key:
            counts[h] += 1
            return h
        if k == -1:
            keys[h] = key
            counts[h] = 1
            return -2 - h
        h = (h + 1) & mask


@njit(cache=True)
def _table_get(keys: np.ndarray, counts: np.ndarray, key: int) -> int:
    mask = keys.shape[0] - 1
    h = ((key * 2654435761) >> 11) & mask
    while True:
        k = keys[h]
        if k == key:
            return counts[h]
        if k == -1:
            return 0
        h = (h + 1) & mask


#: Offset cells gathered before they are counted (8 bytes each).  Reading postings and
#: counting cells run as two tight loops instead of one that alternates between them.
#: Measured with identical votes, single-threaded, the whole recording search took 0.84x
#: the time on 10-s bench queries, 0.78x on the scan bench's 42-179 s files and 0.68x on
#: 10-s queries against a 5 000-track index.  The chunk bounds the buffer on long queries.
CELL_CHUNK = 1 << 18


#: Query landmarks whose keys are looked up together before their postings are read.
#: The look-ups wait on memory (the key table and the postings are megabytes, read at
#: scattered places): a batch's table reads are independent of each other, so the
#: processor overlaps their cache misses instead of waiting for one landmark's before it
#: computes the next one's keys.  Measured with identical votes on the scan bench's 40
#: files (one thread, the same run): the grid votes took 0.84x the time (2.71 s against
#: 3.23 s) and the full-landmark votes 0.88x; batches of 8 gained half of that, 64 and
#: 128 no more than 32.
GATHER_BATCH = 32


@njit(cache=True, nogil=True)
def _gather_cells(s, p, q_time, q_f1, q_df, q_dt, j, bucket_start, key_lo, postings,
                  slot_track, slot_frame0, slot_live, offset_bin_frames, probe_margin,
                  max_key_postings, cells, chunk):
    """Vote cells of one hypothesis, from query landmark ``j`` on, until at least
    ``chunk`` are gathered (at the end of a batch of ``GATHER_BATCH`` landmarks) or the
    query ends.  A cell is ``track * _OFFSET_SPAN + offset bin + _OFFSET_BIAS``; cells
    come in the order of landmark, probed key, posting.

    Returns ``(cells, n, next_j)``: ``cells`` grows (a new array) when a batch's postings
    overflow it."""
    n = 0
    n_slots = slot_track.shape[0]
    batch_keys = 8 * GATHER_BATCH          # up to 2 x 2 x 2 probed keys per landmark
    probe_keys = np.empty(batch_keys, dtype=np.int64)
    probe_f1 = np.empty(batch_keys, dtype=np.int64)
    key_t_ref = np.empty(batch_keys, dtype=np.float64)
    key_first = np.empty(batch_keys, dtype=np.int64)
    key_last = np.empty(batch_keys, dtype=np.int64)
    scratch = np.empty((3, 2), dtype=np.int64)
    n_q = q_time.shape[0]
    while j < n_q and n < chunk:
        batch_end = min(j + GATHER_BATCH, n_q)
        # Probe keys of the batch (compute only) ...
        n_keys = 0
        for jj in range(j, batch_end):
            m = _probe_keys(q_f1[jj] - p, q_df[jj], q_dt[jj] * s, probe_margin,
                            probe_keys[n_keys:], probe_f1[n_keys:], scratch)
            t_ref = q_time[jj] * s
            for k in range(n_keys, n_keys + m):
                key_t_ref[k] = t_ref
            n_keys += m
        # ... their posting ranges (independent reads) ...
        need = 0
        for k in range(n_keys):
            first, last = _key_range(bucket_start, key_lo, probe_keys[k])
            key_first[k] = first
            key_last[k] = last
            if last - first <= max_key_postings:
                need += last - first
        if n + need > cells.shape[0]:
            grown = np.empty(2 * (n + need), dtype=np.int64)
            grown[:n] = cells[:n]
            cells = grown
        # ... then their postings.
        for k in range(n_keys):
            first = key_first[k]
            last = key_last[k]
            if last - first > max_key_postings:  # a stop key (see vote_hypotheses)
                continue
            t_ref = key_t_ref[k]
            for i in range(first, last):
                post = postings[i]
                slot = post >> hashes.FRAME_BITS
                if slot >= n_slots:  # untrusted file: never read past the slot table
                    continue
                if not slot_live[slot]:
                    continue
                ref_frame = slot_frame0[slot] + (post & _FRAME_MASK)
                off_bin = math.floor((ref_frame - t_ref) / offset_bin_frames)
                cells[n] = slot_track[slot] * _OFFSET_SPAN + off_bin + _OFFSET_BIAS
                n += 1
        j = batch_end
    return cells, n, j


@njit(cache=True, nogil=True)
def _grown_table(keys, counts, touched, n_touched, min_size):
    """The vote table rehashed into at least ``min_size`` slots (a power of two), with
    its ``touched`` list (room for half the slots)."""
    size = keys.shape[0]
    while size < min_size:
        size *= 2
    new_keys = np.full(size, -1, dtype=np.int64)
    new_counts = np.zeros(size, dtype=np.int32)
    new_touched = np.empty(size // 2, dtype=np.int64)
    for i in range(n_touched):
        slot = -2 - _table_insert(new_keys, new_counts, keys[touched[i]])
        new_counts[slot] = counts[touched[i]]
        new_touched[i] = slot
    return new_keys, new_counts, new_touched


@njit(cache=True, nogil=True)
def vote_hypotheses(q_time, q_f1, q_df, q_dt, hyp_scale, hyp_pitch,
                    bucket_start, key_lo, postings, slot_track, slot_frame0, slot_live,
                    offset_bin_frames, probe_margin, min_score, max_key_postings):
    """Offset-vote histogram per hypothesis; returns the cells that reach ``min_score``.

    For hypothesis ``h`` each query landmark is mapped to reference coordinates
    (``t * s``, ``f1 - p``, ``dt * s``), quantised with multi-probing, and looked up; each
    posting found votes for (track, offset bin) with ``offset = ref_frame - s * t``.  A
    cell's score is its count plus the larger neighbouring count (alignment drift).

    A key holding more than ``max_key_postings`` postings is a *stop key* and casts no
    votes: its postings are mostly chance (every chord and drum pattern shares them), so
    skipping it removes far more chance votes than true ones, and at catalogue scale
    these few keys are most of the postings a query visits.  (The evidence collected for
    a candidate afterwards, :func:`collect_pairs`, uses every key.)

    Returns
    -------
    cand_h, cand_track, cand_bin, cand_score : int64 arrays
    visits : int64 array, one per hypothesis (postings visited)
    """
    n_h = hyp_scale.shape[0]
    keys = np.full(1 << 14, -1, dtype=np.int64)
    counts = np.zeros(1 << 14, dtype=np.int32)
    touched = np.empty(1 << 13, dtype=np.int64)
    cells = np.empty(1 << 14, dtype=np.int64)
    visits = np.zeros(n_h, dtype=np.int64)
    out_cap = 256
    cand_h = np.empty(out_cap, dtype=np.int64)
    cand_track = np.empty(out_cap, dtype=np.int64)
    cand_bin = np.empty(out_cap, dtype=np.int64)
    cand_score = np.empty(out_cap, dtype=np.int64)
    n_out = 0
    for h in range(n_h):
        n_touched = 0
        v = 0
        j = 0
        while j < q_time.shape[0]:
            cells, n, j = _gather_cells(hyp_scale[h], hyp_pitch[h], q_time, q_f1, q_df, q_dt,
                                        j, bucket_start, key_lo, postings, slot_track,
                                        slot_frame0, slot_live, offset_bin_frames,
                                        probe_margin, max_key_postings, cells, CELL_CHUNK)
            v += n
            # At most half full whatever these cells are (a long probe chain is slow).
            if 2 * (n_touched + n) > keys.shape[0]:
                keys, counts, touched = _grown_table(keys, counts, touched, n_touched,
                                                     2 * (n_touched + n))
            for i in range(n):
                r = _table_insert(keys, counts, cells[i])
                if r < 0:
                    touched[n_touched] = -2 - r
                    n_touched += 1
        visits[h] = v
        for i in range(n_touched):
            slot_i = touched[i]
            c = counts[slot_i]
            if 2 * c < min_score:
                continue
            cell = keys[slot_i]
            nb = max(_table_get(keys, counts, cell - 1), _table_get(keys, counts, cell + 1))
            if c + nb < min_score or nb > c:  # too weak, or reported from the stronger bin
                continue
            if n_out == out_cap:
                out_cap *= 2
                cand_h = np.resize(cand_h, out_cap)
                cand_track = np.resize(cand_track, out_cap)
                cand_bin = np.resize(cand_bin, out_cap)
                cand_score = np.resize(cand_score, out_cap)
            cand_h[n_out] = h
            cand_track[n_out] = cell // _OFFSET_SPAN
            cand_bin[n_out] = (cell % _OFFSET_SPAN) - _OFFSET_BIAS
            cand_score[n_out] = c + nb
            n_out += 1
        for i in range(n_touched):
            keys[touched[i]] = -1
            counts[touched[i]] = 0
    return cand_h[:n_out], cand_track[:n_out], cand_bin[:n_out], cand_score[:n_out], visits


@njit(cache=True)
def _grown_pairs(out_q, out_ref, out_post, out_res, out_key) -> tuple:
    """The pair collectors' output arrays at twice their length, contents kept."""
    cap = 2 * out_q.shape[0]
    return (np.resize(out_q, cap), np.resize(out_ref, cap), np.resize(out_post, cap),
            np.resize(out_res, cap), np.resize(out_key, cap))


@njit(cache=True)
def _has_key(keys: np.ndarray, n_keys: int, key: int) -> bool:
    for k in range(n_keys):
        if keys[k] == key:
            return True
    return False


@njit(cache=True)
def _pairs(q_time, q_f1, q_df, q_dt, scale, pitch, track, line_b, line_s, tol_frames,
           bucket_start, key_lo, postings, slot_track, slot_frame0, slot_live, probe_margin,
           grid_q, grid_ref, grid_post, grid_key, grid_scale, grid_pitch, use_grid):
    """:func:`collect_pairs`, and with ``use_grid`` :func:`refine_pairs`."""
    n_q = q_time.shape[0]
    n_slots = slot_track.shape[0]
    n_grid_pairs = grid_q.shape[0]
    out_q = np.empty(256, dtype=np.int64)
    out_ref = np.empty(256, dtype=np.float64)
    out_post = np.empty(256, dtype=np.int64)
    out_res = np.empty(256, dtype=np.float64)
    out_key = np.empty(256, dtype=np.int64)
    n = 0
    probe_keys = np.empty(8, dtype=np.int64)
    probe_f1 = np.empty(8, dtype=np.int64)
    grid_keys = np.empty(8, dtype=np.int64)
    grid_f1 = np.empty(8, dtype=np.int64)
    scratch = np.empty((3, 2), dtype=np.int64)
    r = 0          # first pair of landmark j among the grid pairs (sorted by landmark)
    r_end = 0
    for j in range(n_q):
        f1 = q_f1[j] - pitch
        n_keys = _probe_keys(f1, q_df[j], q_dt[j] * scale, probe_margin, probe_keys,
                             probe_f1, scratch)
        n_grid = 0
        if use_grid:
            while r < n_grid_pairs and grid_q[r] < j:
                r += 1
            r_end = r
            while r_end < n_grid_pairs and grid_q[r_end] == j:
                r_end += 1
            n_grid = _probe_keys(q_f1[j] - grid_pitch, q_df[j], q_dt[j] * grid_scale,
                                 probe_margin, grid_keys, grid_f1, scratch)
        predicted = line_b + line_s * q_time[j]
        for k in range(n_keys):
            key = probe_keys[k]
            reuse = n_grid > 0 and _has_key(grid_keys, n_grid, key)
            # Probed at the grid point too: this track's postings of the key are the grid
            # pairs of this landmark with this key (in posting order); else look it up.
            first, last = (r, r_end) if reuse else _key_range(bucket_start, key_lo, key)
            for i in range(first, last):
                if reuse:
                    if grid_key[i] != key:
                        continue
                    ref_frame = grid_ref[i]
                    post_index = grid_post[i]
                else:
                    post = postings[i]
                    slot = post >> hashes.FRAME_BITS
                    if slot >= n_slots:  # untrusted file: never read past the slot table
                        continue
                    if slot_track[slot] != track or not slot_live[slot]:
                        continue
                    ref_frame = slot_frame0[slot] + (post & _FRAME_MASK)
                    post_index = i
                if abs(ref_frame - predicted) > tol_frames:
                    continue
                if n == out_q.shape[0]:
                    out_q, out_ref, out_post, out_res, out_key = _grown_pairs(
                        out_q, out_ref, out_post, out_res, out_key)
                out_q[n] = j
                out_key[n] = key
                out_ref[n] = ref_frame
                out_post[n] = post_index
                out_res[n] = f1 / hashes.F1_STEP_SEMITONES - (probe_f1[k] + 0.5)
                n += 1
    return out_q[:n], out_ref[:n], out_post[:n], out_res[:n], out_key[:n]


_NO_PAIRS_I = np.zeros(0, dtype=np.int64)
_NO_PAIRS_F = np.zeros(0, dtype=np.float64)


def collect_pairs(q_time, q_f1, q_df, q_dt, scale, pitch, track, line_b, line_s, tol_frames,
                  bucket_start, key_lo, postings, slot_track, slot_frame0, slot_live,
                  probe_margin):
    """Matched (query landmark, reference posting) pairs of one track near a line.

    Keeps pairs with ``|ref_frame - (line_b + line_s * t_query)| <= tol_frames``, in
    the order of query landmark, probed key, posting.

    Returns
    -------
    q_index : int64 array      query landmark index
    ref_frame : float64 array  reference anchor frame
    post_index : int64 array   posting index (identifies the reference landmark)
    f1_residual : float64 array  (query f1 - pitch) minus the centre of the matched f1
                                 bin, in bins (its mean estimates the pitch error)
    key : int64 array          the matched key
    """
    return _pairs(q_time, q_f1, q_df, q_dt, scale, pitch, track, line_b, line_s, tol_frames,
                  bucket_start, key_lo, postings, slot_track, slot_frame0, slot_live,
                  probe_margin, _NO_PAIRS_I, _NO_PAIRS_F, _NO_PAIRS_I, _NO_PAIRS_I, 1.0, 0.0,
                  False)


def refine_pairs(q_time, q_f1, q_df, q_dt, scale, pitch, grid_pairs, grid_scale, grid_pitch,
                 track, line_b, line_s, tol_frames, bucket_start, key_lo, postings,
                 slot_track, slot_frame0, slot_live, probe_margin):
    """:func:`collect_pairs` at a refined ``(scale, pitch)``, given ``grid_pairs``, that
    function's output for the same track at the grid hypothesis ``(grid_scale,
    grid_pitch)`` with no line filter (``tol_frames=inf``).

    The result is identical to ``collect_pairs(..., scale, pitch, track, line_b, line_s,
    tol_frames, ...)``.  A refined hypothesis is within a grid step of its grid point, so
    most query landmarks probe the keys they probed there: this track's postings of such
    a key are the grid pairs already found (filtered by the line here), and only the keys
    that changed are looked up.  (On the dev corpus's bench queries 86 % of the keys are
    probed at both, and the pass takes 2/3 of the time of a fresh one: the probing
    itself remains.)
    """
    g_q, g_ref, g_post, _, g_key = grid_pairs
    return _pairs(q_time, q_f1, q_df, q_dt, scale, pitch, track, line_b, line_s, tol_frames,
                  bucket_start, key_lo, postings, slot_track, slot_frame0, slot_live,
                  probe_margin, g_q, g_ref, g_post, g_key, grid_scale, grid_pitch, True)


# ----------------------------------------------------------------------------- search


@functools.lru_cache(maxsize=16)
def hypothesis_grid(cfg: MatchConfig) -> tuple[np.ndarray, np.ndarray]:
    """The (speed, pitch) hypotheses searched, identity first (read-only arrays, built
    once per setting: 0.2 ms a query, 1-2 % of one, had gone to rebuilding them).

    Examples
    --------
    >>> s, p = hypothesis_grid(MatchConfig())
    >>> float(s[0]), float(p[0])
    (1.0, 0.0)
    >>> len(s) > 100
    True
    >>> s, p = hypothesis_grid(MatchConfig(search_speed=False, search_tempo=False, search_pitch=False,
    ...                                    search_tempo_key=False))
    >>> len(s)
    1
    >>> s, p = hypothesis_grid(MatchConfig())
    >>> int(tempo_key_region(s, p, 3.0).sum())      # tempo +-10 % x key +-3 st, off the lines
    132
    >>> int(tempo_key_region(s, p).sum())           # and its ring out to key +-6 st
    276
    """
    hyps = [(1.0, 0.0)]
    step = math.log1p(cfg.speed_step)
    k_lo = math.ceil(math.log(cfg.min_speed) / step)
    k_hi = math.floor(math.log(cfg.max_speed) / step)
    scales = [math.exp(k * step) for k in range(k_lo, k_hi + 1) if k != 0]
    if cfg.search_tempo:
        hyps += [(s, 0.0) for s in scales]
    if cfg.search_speed:
        hyps += [(s, 12.0 * math.log2(s)) for s in scales]
    if cfg.search_pitch:
        n = int(math.floor(cfg.max_pitch_semitones / cfg.pitch_step_semitones + 1e-9))
        hyps += [(1.0, k * cfg.pitch_step_semitones) for k in range(-n, n + 1) if k != 0]
    if cfg.search_tempo_key:
        # The region, then its wider ring (second round only), so that grid indices of
        # the first round do not depend on the ring.
        def within(x: float, limit: float) -> bool:
            return abs(x) <= limit + 1e-9

        n_p = int(math.floor(cfg.wide_tempo_key_max_semitones / cfg.pitch_step_semitones + 1e-9))
        pitches = [k * cfg.pitch_step_semitones for k in range(-n_p, n_p + 1) if k != 0]
        first = math.log1p(cfg.tempo_key_max_change)
        wide = max(first, math.log1p(cfg.wide_tempo_key_max_change))
        for in_first_round in (True, False):
            hyps += [(s, p) for s in scales for p in pitches
                     if within(math.log(s), wide)
                     and abs(p - 12.0 * math.log2(s)) >= 0.5 * cfg.pitch_step_semitones
                     and in_first_round == (within(math.log(s), first)
                                            and within(p, cfg.tempo_key_max_semitones))]
    arr = np.asarray(hyps, dtype=np.float64)
    speeds, shifts = arr[:, 0].copy(), arr[:, 1].copy()
    speeds.flags.writeable = shifts.flags.writeable = False
    return speeds, shifts


def tempo_key_region(hyp_s: np.ndarray, hyp_p: np.ndarray,
                     max_semitones: float = math.inf,
                     max_tempo_change: float = math.inf) -> np.ndarray:
    """Mask of the hypotheses on none of the speed, tempo and pitch lines: the region
    where tempo and key changed independently (``MatchConfig.search_tempo_key``), key
    within ``max_semitones`` and tempo within ``max_tempo_change`` (0.1: +-10 %, on a
    log scale).

    >>> s = np.array([1.0, 1.06, 1.06, 1.06, 1.0, 0.95, 0.85])
    >>> p = np.array([0.0, 0.0, 12 * np.log2(1.06), -2.0, 3.0, 5.0, 2.0])
    >>> tempo_key_region(s, p).tolist()
    [False, False, False, True, False, True, True]
    >>> tempo_key_region(s, p, 3.0).tolist()
    [False, False, False, True, False, False, True]
    >>> tempo_key_region(s, p, 3.0, 0.1).tolist()
    [False, False, False, True, False, False, False]
    """
    return (hyp_s != 1.0) & (hyp_p != 0.0) & (np.abs(hyp_p - 12.0 * np.log2(hyp_s)) > 1e-9) \
        & (np.abs(hyp_p) <= max_semitones + 1e-9) \
        & (np.abs(np.log(hyp_s)) <= np.log1p(max_tempo_change) + 1e-9)


def key_order(f1_bin: np.ndarray, df: np.ndarray, dt: np.ndarray) -> np.ndarray:
    """The permutation ``np.lexsort((dt, df, f1_bin))``: by anchor bin, then pitch
    difference, then time difference, ties in input order.

    ``np.lexsort`` runs a stable comparison sort per key: 0.77 ms for the ~5 800
    landmarks of a 10-s query, 5 % of its whole match.  Here, when the pitch differences
    are all distinct (continuous peak positions make that the rule), an unstable SIMD
    sort on them and a stable radix sort on the small integer anchor bins give the same
    permutation in ~0.1 ms; otherwise ``np.lexsort`` itself.

    >>> f1, df, dt = np.array([2., 1., 2., 1.]), np.array([.5, .7, .1, .2]), np.zeros(4)
    >>> key_order(f1, df, dt).tolist()
    [3, 1, 2, 0]
    >>> key_order(f1, np.array([.5, .7, .5, .2]), np.array([3., 0., 1., 0.])).tolist()  # ties
    [3, 1, 2, 0]
    """
    n = f1_bin.shape[0]
    if n > 1 and float(f1_bin.min()) >= 0 and float(f1_bin.max()) < (1 << 15):
        by_df = np.argsort(df)
        sorted_df = df[by_df]
        if not ((sorted_df[1:] == sorted_df[:-1]).any() or np.isnan(sorted_df[-1])):
            return by_df[np.argsort(f1_bin[by_df].astype(np.int16), kind="stable")]
    return np.lexsort((dt, df, f1_bin))


@dataclass
class QueryLandmarks:
    """Query landmarks as contiguous arrays for the kernels."""

    time: np.ndarray
    f1: np.ndarray
    df: np.ndarray
    dt: np.ndarray
    duration: float

    @classmethod
    def from_landmarks(cls, lm: Landmarks) -> "QueryLandmarks":
        """Arrays in key order: under any (speed, pitch) hypothesis the f1 and df bins keep
        their order, so look-ups walk the bucket table almost sequentially (the index is
        memory-bound: this ordering alone makes the search ~2x faster)."""
        order = key_order(np.floor(lm.anchor_semitone / hashes.F1_STEP_SEMITONES),
                          lm.delta_semitone, lm.delta_time)
        c = np.ascontiguousarray
        return cls(c(lm.anchor_time[order], np.float64), c(lm.anchor_semitone[order], np.float64),
                   c(lm.delta_semitone[order], np.float64), c(lm.delta_time[order], np.float64),
                   lm.duration)


@dataclass
class SegmentView:
    """Arrays of one store segment plus its live-slot mask, and optionally the segment's
    per-key offsets (:func:`earmark.index.store.key_offsets`), which the kernels then read
    instead of searching ``bucket_start`` and ``key_lo`` (the same postings)."""

    bucket_start: np.ndarray
    key_lo: np.ndarray
    postings: np.ndarray
    slot_track: np.ndarray
    slot_frame0: np.ndarray
    slot_live: np.ndarray
    key_start: np.ndarray | None = None

    def arrays(self) -> tuple:
        table = self.bucket_start if self.key_start is None else self.key_start
        return (table, self.key_lo, self.postings, self.slot_track, self.slot_frame0,
                self.slot_live)


@dataclass
class _Evidence:
    track: int
    segment: int
    score: int
    significance: float
    speed: float
    pitch: float
    line_b: float
    q_frames: np.ndarray
    ref_frames: np.ndarray
    q_end_frames: np.ndarray
    contrast: float = math.inf
    #: Weaker alignments of the same track with the same query segment at another place
    #: of the reference (a repeated section), strongest first (see ``RIVAL_MIN_SCORE_RATIO``).
    rivals: list["_Evidence"] = field(default_factory=list)


def track_contrast(track_best: dict[int, int], track: int, score: int, floor: float,
                   n_background: int = CONTRAST_BACKGROUND) -> float:
    """How far ``score`` stands above what *other* recordings reach in the same query.

    Structured music breaks any independence-based chance model: two songs in one style
    (same chords, same beat grid, same sounds) align in places under some speed/pitch
    hypothesis.  Such coincidences are not specific - many recordings reach similar
    vote counts - while a real use of a recording stands out.  The background is the
    median of the best vote counts of the ``n_background`` strongest *other* recordings
    (recordings below the candidate threshold count as ``floor``), so a query that uses
    two recordings still reports both.

    >>> track_contrast({1: 90, 2: 12, 3: 10}, 1, 90, floor=4.0)
    22.5
    """
    others = sorted((v for t, v in track_best.items() if t != track), reverse=True)
    others = (others + [floor] * n_background)[:n_background]
    return score / max(float(np.median(others)), floor)


def poisson_log10_sf(k: int, mu: float) -> float:
    """``log10 P[Poisson(mu) >= k]``, finite far into the tail (no SciPy: it is the
    import that dominates a one-shot ``fp match``).

    >>> round(poisson_log10_sf(1, 1.0), 4)     # 1 - e^-1
    -0.1992
    >>> round(poisson_log10_sf(3, 2.0), 4)     # 1 - 5 e^-2
    -0.4904
    >>> poisson_log10_sf(500, 0.5) < -300
    True
    """
    if k <= 0:
        return 0.0
    mu = max(float(mu), 1e-300)
    log_mu = math.log(mu)
    if k <= mu:  # upper tail is large: 1 - P[X < k]
        cdf = sum(math.exp(i * log_mu - mu - math.lgamma(i + 1)) for i in range(k))
        return math.log10(max(1.0 - cdf, 1e-300))
    # Sum the tail from its largest term (i = k) until the terms stop mattering.
    first = k * log_mu - mu - math.lgamma(k + 1)
    total, term, i = 1.0, 1.0, k
    while term > 1e-17 * total and i < k + 10_000:
        i += 1
        term *= mu / i
        total += term
    return (first + math.log(total)) / math.log(10)


def hypothesis_tests(n_hypotheses: int, h: np.ndarray | int) -> np.ndarray | float:
    """Multiple-testing factor of hypothesis ``h`` (index 0 is identity) in a grid of
    ``n_hypotheses``: weighted Bonferroni, half the budget on identity.

    >>> float(hypothesis_tests(1, 0)), float(hypothesis_tests(143, 0)), float(hypothesis_tests(143, 5))
    (1.0, 2.0, 284.0)
    """
    if n_hypotheses <= 1:
        return np.ones_like(np.asarray(h), dtype=np.float64)
    return np.where(np.asarray(h) == 0, 2.0, 2.0 * (n_hypotheses - 1))


def _densest_run(q_frames: np.ndarray, max_gap_frames: float) -> np.ndarray:
    """Indices of the run of matched landmarks (gaps <= max_gap_frames in query time)
    holding the most matches.  A real use of a recording is dense in time; chance
    alignments are thin and spread out, and must not add up across a long query."""
    order = np.argsort(q_frames, kind="stable")
    t = q_frames[order]
    breaks = np.flatnonzero(np.diff(t) > max_gap_frames) + 1
    starts = np.concatenate([[0], breaks])
    ends = np.concatenate([breaks, [t.shape[0]]])
    best = int(np.argmax(ends - starts))
    return np.sort(order[starts[best]:ends[best]])


def _significance(score: int, chance_pairs: int, run_frames: float, query_frames: float,
                  track_frames: float, total_frames: float, tol_frames: float,
                  hyp_tests: float) -> float:
    """``-log10`` of the chance probability of ``score`` aligned landmarks (module docstring).

    ``chance_pairs`` look-up hits on the track, spread over ``track_frames + query_frames``
    possible offsets and over the query's length, give ``mu`` expected hits inside a band
    of ``+-2 tol`` (the fitted line's freedom) along a run of ``run_frames``.  Tests: every
    offset band of every track, every hypothesis, every run position.
    """
    band = 4.0 * tol_frames + 1.0
    run_frames = min(max(run_frames, 1.0), max(query_frames, 1.0))
    mu = max(chance_pairs - score, 1) * band / (track_frames + query_frames) \
        * run_frames / max(query_frames, 1.0)
    n_tests = hyp_tests * (total_frames + query_frames) / band * max(query_frames, 1.0) / run_frames
    return max(0.0, -(math.log10(n_tests) + poisson_log10_sf(score, mu)))


def _min_count(mu: float, log10_budget: float, upper: int) -> int:
    """Smallest ``k`` with ``log10 P[Poisson(mu) >= k] <= -log10_budget`` (``upper`` if
    none below it): the tail probability falls with ``k``, so bisect."""
    lo, hi = 0, max(upper, 1)
    while lo < hi:
        mid = (lo + hi) // 2
        if poisson_log10_sf(mid, mu) <= -log10_budget:
            hi = mid
        else:
            lo = mid + 1
    return lo


def _cell_min_count(visits: int, h: int, n_hypotheses: int, total_frames: float,
                    offset_bin_frames: int, min_significance: float, upper: int) -> int:
    """Vote count a two-bin offset cell of hypothesis ``h`` needs to reach significance
    ``min_significance`` when ``visits`` postings were visited (the chance model of the
    module docstring on the coarse two-bin window).  Used to screen hypotheses and
    candidates before the expensive refinement."""
    frames = max(total_frames, 1.0)
    mu = max(int(visits), 1) * (2.0 * offset_bin_frames) / frames
    log10_tests = math.log10(float(hypothesis_tests(n_hypotheses, h)) * frames / offset_bin_frames)
    return _min_count(mu, log10_tests + min_significance, upper)


def _fit_line(x: np.ndarray, y: np.ndarray, slope0: float, min_span: float) -> tuple[float, float]:
    """Least-squares ``y = b + s x``; falls back to slope ``slope0`` for short spans."""
    if x.shape[0] >= 3 and float(x.max() - x.min()) >= min_span:
        xm, ym = float(x.mean()), float(y.mean())
        dx = x - xm
        s = float(dx @ (y - ym)) / float(dx @ dx)
        if abs(s / slope0 - 1.0) < 0.05:
            return ym - s * xm, s
    return float(np.median(y - slope0 * x)), slope0


def _unique_count(q_idx: np.ndarray, post_idx: np.ndarray, keys: np.ndarray) -> int:
    """Evidence count: distinct matched keys, at most one per query landmark and per
    reference landmark.  Counting *distinct keys* is what keeps repetitive material
    honest: a drum loop aligned with another song's beat grid repeats a handful of keys
    many times (chance alignment, not evidence), while a real match brings many
    different landmarks."""
    return int(min(np.unique(q_idx).shape[0], np.unique(post_idx).shape[0],
                   np.unique(keys).shape[0]))


def stop_key_limit(n_postings: int, ratio: float, min_postings: int) -> int:
    """Postings above which a key of a segment is a stop key: ``ratio`` times the mean
    postings per key (scale-free: the same share of keys at any catalogue size), never
    below ``min_postings`` (small indexes have no stop keys).

    >>> stop_key_limit(1 << 20, 32.0, 64), stop_key_limit(100 << 20, 32.0, 64)
    (64, 3200)
    """
    if not math.isfinite(ratio):
        return 1 << 62
    return int(max(min_postings, ratio * n_postings / float(1 << hashes.KEY_BITS)))


_POOL: tuple[int, int, ThreadPoolExecutor] | None = None


def _voting_threads(mcfg: MatchConfig, n_jobs: int) -> int:
    """Threads for votes of ``n_jobs`` independent parts (``mcfg.threads``, 0 = one per
    core; never more than the parts)."""
    return max(1, min(mcfg.threads or usable_cpus(), n_jobs))


def _thread_pool(n_threads: int) -> ThreadPoolExecutor:
    """The process's voting threads, started once (starting a pool per query cost ~1-3 ms,
    a sizeable share of a 15 ms query).  Keyed by process id: a forked scan or index
    worker inherits the parent's pool object but not its threads, so it starts its own."""
    global _POOL
    if _POOL is None or _POOL[0] != os.getpid() or _POOL[1] != n_threads:
        if _POOL is not None and _POOL[0] == os.getpid():
            _POOL[2].shutdown(wait=False)
        _POOL = (os.getpid(), n_threads,
                 ThreadPoolExecutor(max_workers=n_threads, thread_name_prefix="earmark-vote"))
    return _POOL[2]


@dataclass(frozen=True)
class _VotePass:
    """One voting pass: ``query`` landmarks under the grid hypotheses ``hyp_index``."""

    query: QueryLandmarks
    hyp_index: np.ndarray
    min_score: int
    probe_margin: float
    stop_key_ratio: float


def _vote_passes(passes: list[_VotePass], hyp_s: np.ndarray, hyp_p: np.ndarray,
                 segments: list[SegmentView], n_threads: int,
                 mcfg: MatchConfig) -> list[tuple[np.ndarray, np.ndarray]]:
    """Vote several passes together, each in every segment.

    Hypotheses are independent: each pass's are split over threads (the kernel releases
    the GIL), and passes share the threads, the first pass's jobs starting first (the
    matcher votes identity with every landmark while the coarse pass runs).  Returns, per
    pass, candidate rows ``(score, hypothesis, track, offset bin, segment)`` and the
    postings visited per grid hypothesis.
    """
    jobs = []
    for k, vp in enumerate(passes):
        n_slices = max(1, min(n_threads, vp.hyp_index.shape[0]))
        slices = [vp.hyp_index[j::n_slices] for j in range(n_slices)]
        jobs += [(k, si, hs) for si in range(len(segments)) for hs in slices if hs.shape[0]]

    def run(job):
        k, si, hs = job
        vp = passes[k]
        ch, ct, cb, cs, visits = vote_hypotheses(
            vp.query.time, vp.query.f1, vp.query.df, vp.query.dt, hyp_s[hs], hyp_p[hs],
            *segments[si].arrays(), float(mcfg.offset_bin_frames), vp.probe_margin,
            vp.min_score, stop_key_limit(segments[si].postings.shape[0], vp.stop_key_ratio,
                                         mcfg.stop_key_min_postings))
        return k, si, hs, ch, ct, cb, cs, visits

    if len(jobs) > 1 and n_threads > 1:
        outputs = list(_thread_pool(n_threads).map(run, jobs))
    else:
        outputs = [run(j) for j in jobs]
    parts: list[list[np.ndarray]] = [[np.zeros((0, 5), np.int64)] for _ in passes]
    visits_total = [np.zeros(hyp_s.shape[0], dtype=np.int64) for _ in passes]
    for k, si, hs, ch, ct, cb, cs, visits in outputs:
        visits_total[k][hs] += visits
        parts[k].append(np.stack([cs, hs[ch], ct, cb, np.full_like(cs, si)], axis=1))
    return [(np.concatenate(p), v) for p, v in zip(parts, visits_total)]


def _unexplained_best(coarse_cands: np.ndarray, n_h: int) -> np.ndarray:
    """Per hypothesis, its best coarse cell that identity does not explain (0 if none).

    A recording used as it is also collects votes under the grid's neighbouring
    transforms (speed 1.015, pitch +0.5 ...), fewer than under identity.  A transform's
    cell on a track where identity's best cell is at least as strong is that echo: voting
    the transform again with every landmark would only find the identity match a second
    time.  Ranking transforms by their other cells keeps the fine stage for transforms
    that may explain something identity does not (measured on the dev corpus: a clean
    10-s query votes identity alone instead of identity and four echoes).

    >>> rows = np.array([[40, 0, 7, 0, 0], [25, 1, 7, 3, 0], [12, 2, 9, 5, 0]])
    >>> _unexplained_best(rows, 3).tolist()     # hyp 1 echoes track 7; hyp 2 is new
    [40, 0, 12]
    """
    best = np.zeros(n_h, dtype=np.int64)
    if coarse_cands.shape[0] == 0:
        return best
    score, hyp, track = coarse_cands[:, 0], coarse_cands[:, 1], coarse_cands[:, 2]
    ident = hyp == 0
    _, track_index = np.unique(track, return_inverse=True)
    identity_best = np.full(int(track_index.max()) + 1, -1, dtype=np.int64)
    np.maximum.at(identity_best, track_index[ident], score[ident])
    echo = (identity_best[track_index] >= score) & ~ident
    np.maximum.at(best, hyp[~echo], score[~echo])
    return best


def refine_candidate(query: QueryLandmarks, seg: SegmentView, si: int, track: int, h: int,
                     n_tests: int, b0: float, least: int, grid_pairs: dict,
                     total_frames: float, track_frames: dict[int, float],
                     fcfg: FingerprintConfig, mcfg: MatchConfig,
                     final_look_up: bool = True) -> "_Evidence | None":
    """Evidence of one candidate: ``track`` aligned near ``ref = b0 + s * query`` under grid
    hypothesis ``h``, refined to its own line and transform (``None`` under ``least``
    landmarks); its significance counts ``n_tests`` hypotheses (:func:`hypothesis_tests`).  Without ``final_look_up`` the evidence is the pairs found under the grid
    hypothesis near the fitted line (the mix look's candidates, which only the audio
    decides).

    Every pair of this track under the hypothesis is collected once (``grid_pairs``
    caches them per segment, track and hypothesis): how many postings of *this* track
    the query hits anywhere is its own chance rate (tracks made of common material - the
    same drum sounds, the same chords - are hit more often).  A line is fitted through
    the pairs near the candidate's, the pitch is read off the anchors' residuals in
    their key bins, and a final look-up at the refined transform collects the evidence:
    the densest run of aligned landmarks.
    """
    hyp_s, hyp_p = hypothesis_grid(mcfg)
    s, p = float(hyp_s[h]), float(hyp_p[h])
    W = mcfg.offset_bin_frames
    tol_final = mcfg.inlier_seconds / fcfg.frame_seconds
    max_gap_frames = mcfg.max_gap_seconds / fcfg.frame_seconds
    query_frames = query.duration / fcfg.frame_seconds
    min_span = 1.0 / fcfg.frame_seconds
    # (No line filter, so the same for every candidate of this track and hypothesis:
    # a track's second alignment, e.g. a repeated section, reuses them.)
    grid = grid_pairs.get((si, track, h))
    if grid is None:
        grid = grid_pairs[(si, track, h)] = collect_pairs(
            query.time, query.f1, query.df, query.dt, s, p, track, 0.0, s, np.inf,
            *seg.arrays(), mcfg.probe_margin)
    q_idx, ref_f, post_idx, res, _ = grid
    chance_pairs = q_idx.shape[0]
    x = query.time[q_idx]
    band = np.abs(ref_f - (b0 + s * x)) <= 2.0 * W
    if band.sum() < 3:
        return None
    x, ref_f, res = x[band], ref_f[band], res[band]
    b, slope = _fit_line(x, ref_f, s, min_span)
    for tol in (W, tol_final):
        keep = np.abs(ref_f - (b + slope * x)) <= tol
        if keep.sum() < 3:
            break
        b, slope = _fit_line(x[keep], ref_f[keep], slope, min_span)
    pitch = p + float(np.mean(res)) * hashes.F1_STEP_SEMITONES
    # Final look-up at the refined hypothesis: the evidence.
    if final_look_up:
        q_idx, ref_f, post_idx, res, keys = refine_pairs(
            query.time, query.f1, query.df, query.dt, slope, pitch, grid, s, p, track, b,
            slope, tol_final, *seg.arrays(), mcfg.probe_margin)
    else:
        q_idx, ref_f, post_idx, res, keys = grid
        on_line = np.abs(ref_f - (b + slope * query.time[q_idx])) <= tol_final
        q_idx, ref_f, post_idx, res, keys = (a[on_line] for a in (q_idx, ref_f, post_idx,
                                                                   res, keys))
    if q_idx.shape[0] < least:
        return None
    run = _densest_run(query.time[q_idx], max_gap_frames)
    q_idx, ref_f, post_idx, res, keys = q_idx[run], ref_f[run], post_idx[run], res[run], keys[run]
    score = _unique_count(q_idx, post_idx, keys)
    if score < least:
        return None
    if q_idx.shape[0] >= 8:
        pitch = pitch + float(np.mean(res)) * hashes.F1_STEP_SEMITONES
    x = query.time[q_idx]
    significance = _significance(score, chance_pairs, float(x.max() - x.min()) + max_gap_frames,
                                 query_frames, track_frames.get(track, total_frames),
                                 total_frames, tol_final, float(hypothesis_tests(n_tests, h)))
    return _Evidence(track=track, segment=si, score=score, significance=significance,
                     speed=slope, pitch=pitch, line_b=b, q_frames=x,
                     ref_frames=ref_f, q_end_frames=x + query.dt[q_idx])


def needs_review(e: _Evidence, mcfg: MatchConfig) -> bool:
    """Whether evidence is a match with a speed or pitch change that rests on its
    landmarks alone under ``mcfg.review_max_significance``: one the audio must not refute
    (:func:`earmark.verify.refutes`).  Not at identity: the wrong matches measured were
    all transformed (a free tempo and key let a repeated figure of one recording align
    with another's), while the 135 matches at identity under significance 60 on the
    game bench all held the catalogue file's waveform (``coherence_z`` 16 or more), so
    reviewing them would cost a check each and change nothing measured."""
    return (mcfg.min_significance <= e.significance < mcfg.review_max_significance
            and not verify.coherence_applies(e.speed, e.pitch))


def _coarse_contenders(coarse_out: list[tuple[np.ndarray, np.ndarray]], n_h: int,
                       n_tests: int, total_frames: float, offset_bin_frames: int,
                       mcfg: MatchConfig, exclude: np.ndarray, n_keep: int) -> np.ndarray:
    """Hypotheses (sorted grid indices of the ``n_h``) the fine stage votes with every
    landmark: the ``n_keep`` whose best coarse cell that identity does not explain is
    strongest, among those whose cell is itself unlikely by chance (the pre-filter's model
    on the coarse landmarks' visits, ``n_tests`` hypotheses counted).  Identity and
    ``exclude`` never are.  ``coarse_out`` holds the coarse passes' ``(cells, visits)``."""
    coarse_visits = sum(v for _, v in coarse_out)
    best = _unexplained_best(np.concatenate([c for c, _ in coarse_out]), n_h)
    best[0] = 0   # identity is voted with every landmark anyway
    best[exclude] = 0
    for h in np.flatnonzero(best).tolist():
        if best[h] < _cell_min_count(coarse_visits[h], h, n_tests, total_frames, offset_bin_frames,
                                     mcfg.coarse_min_significance, int(best[h]) + 1):
            best[h] = 0
    ranked = np.lexsort((np.arange(n_h), -best))
    return np.sort(ranked[best[ranked] > 0][:n_keep])


def explained_fraction(found: list["_Evidence"], query_frames: float,
                       min_significance: float) -> float:
    """Share of the query's ``query_frames`` covered by the segments of the evidence at
    least ``min_significance`` significant (overlapping segments counted once).

    >>> e = lambda a, b, sig: _Evidence(0, 0, 10, sig, 1.0, 0.0, 0.0, np.array([a, b], float),
    ...                                 np.array([a, b], float), np.array([a + 1, b + 1], float))
    >>> explained_fraction([e(0, 29, 30.0), e(20, 49, 25.0), e(80, 99, 5.0)], 100.0, 20.0)
    0.5
    """
    spans = sorted(_span(e) for e in found if e.significance >= min_significance)
    covered, reach = 0.0, -math.inf
    for lo, hi in spans:
        covered += max(0.0, hi - max(lo, reach))
        reach = max(reach, hi)
    return covered / max(query_frames, 1.0)


def search(query: QueryLandmarks, segments: list[SegmentView], total_frames: float,
           track_frames: dict[int, float], fcfg: FingerprintConfig,
           mcfg: MatchConfig, coarse: QueryLandmarks | None = None,
           dense_coarse: Callable[[], QueryLandmarks] | None = None,
           audio_agrees: Callable[[_Evidence], bool] | None = None) -> list[_Evidence]:
    """Find aligned evidence of catalogue tracks in the query (see module docstring).

    ``coarse`` (the query's strongest landmarks, :func:`earmark.fingerprint.landmarks.sparser`)
    enables the coarse-to-fine search over the hypothesis grid.  ``dense_coarse`` gives
    the same at ``mcfg.dense_coarse_peaks_per_second``: called only when the first round
    leaves most of the query unexplained (the second coarse round, module docstring).
    ``audio_agrees`` reviews transformed matches under ``mcfg.review_max_significance``
    (:func:`needs_review`): those it refutes are dropped as soon as they are found, so
    that the later rounds search as if they had not been.
    """
    hyp_s, hyp_p = hypothesis_grid(mcfg)
    n_h = hyp_s.shape[0]
    W = mcfg.offset_bin_frames
    n_threads = _voting_threads(mcfg, n_h)
    # Candidates the audio check may still accept are weaker than a match's floor.
    min_score = mcfg.candidate_min_score
    coherence_min_score = min(mcfg.coherence_min_score, min_score) if mcfg.verifies else min_score
    coarse_to_fine = coarse is not None and mcfg.refine_hypotheses > 0 \
        and n_h > 1 + mcfg.refine_hypotheses
    # The lines and the tempo-and-key region are separate jobs for the voting threads
    # (the region is as large as the lines: one pass would split unevenly).
    region = tempo_key_region(hyp_s, hyp_p, mcfg.tempo_key_max_semitones,
                              mcfg.tempo_key_max_change)
    ring = tempo_key_region(hyp_s, hyp_p) & ~region     # the second round's wider plane
    lines, plane = np.flatnonzero(~region & ~ring), np.flatnonzero(region)
    # Significance counts the hypotheses of the first two rounds: the ring is voted only
    # where they found nothing, and its evidence must reach wide_min_significance, ten
    # orders of magnitude over min_significance where its own count is a factor of 1.5.
    n_tests = n_h - int(ring.sum()) if coarse_to_fine else n_h

    def coarse_passes(q: QueryLandmarks, parts: tuple[np.ndarray, ...]) -> list[_VotePass]:
        """One coarse pass per non-empty array of grid indices."""
        return [_VotePass(q, part, mcfg.coarse_min_score, mcfg.coarse_probe_margin,
                          mcfg.coarse_stop_key_ratio) for part in parts if part.size]

    def fine_vote(hyps: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        (c, v), = _vote_passes([_VotePass(query, hyps, min_score, mcfg.probe_margin,
                                          mcfg.stop_key_ratio)],
                               hyp_s, hyp_p, segments, n_threads, mcfg)
        return c, v

    ranked = np.zeros(0, dtype=np.int64)
    if coarse_to_fine:
        # Coarse to fine: vote the whole grid with the strongest landmarks, then the
        # strongest transforms that identity does not explain with all of them.
        # Identity is voted with all of them in any case, alongside the coarse pass.
        identity = _VotePass(query, np.zeros(1, np.int64), min_score, mcfg.probe_margin,
                             mcfg.stop_key_ratio)
        (cands, visits_total), *coarse_out = _vote_passes(
            [identity] + coarse_passes(coarse, (lines, plane)), hyp_s, hyp_p, segments,
            n_threads, mcfg)
        ranked = _coarse_contenders(coarse_out, n_h, n_tests, total_frames, W, mcfg, ranked,
                                    mcfg.refine_hypotheses)
        if ranked.size:
            t_cands, t_visits = fine_vote(ranked)
            cands, visits_total = np.concatenate([cands, t_cands]), visits_total + t_visits
    else:
        cands, visits_total = fine_vote(np.arange(n_h))
    max_refine = 4 * mcfg.max_matches + 8
    budget = [max_refine, VERIFY_MAX_REFINE, COHERENCE_MAX_REFINE]
    found: list[_Evidence] = []
    attempts: dict[int, list[tuple[float, float]]] = {}
    grid_pairs: dict[tuple[int, int, int], tuple] = {}
    refined = [0, 0, 0]

    def refine_round(cands: np.ndarray, landmarks_alone: float | None = None) -> None:
        """Refine the strongest of ``cands`` into ``found`` (shared budgets and attempts);
        with ``landmarks_alone``, only evidence at least that significant on its
        landmarks (no candidate for the audio checks)."""
        if cands.shape[0] == 0:
            return
        # Strongest first; ties broken deterministically (hypothesis, track, offset, segment).
        order = np.lexsort((cands[:, 4], cands[:, 3], cands[:, 2], cands[:, 1], -cands[:, 0]))
        top = cands[order[: 8 * max_refine]]

        # Pre-filter with the same chance model as the final significance, on the coarse
        # two-bin window: refining a candidate costs a look-up pass and most of another.
        # The chance rate depends on the hypothesis only, so each hypothesis gets a minimum
        # vote count (significance grows with the count).
        def passes_prefilter(significance: float) -> np.ndarray:
            min_count = {h: _cell_min_count(visits_total[h], h, n_tests, total_frames, W,
                                            significance, int(top[:, 0].max()) + 1)
                         for h in np.unique(top[:, 1]).tolist()}
            return top[:, 0] >= np.array([min_count[h] for h in top[:, 1].tolist()],
                                         dtype=np.int64)

        # Candidates that may become matches first, as many as ``max_refine``; then, when
        # none of them is significant, at most VERIFY_MAX_REFINE weaker ones for the audio
        # check (its cost bounds how many it can take; on every query they would cost a
        # clean 10-s query ~25 % more time).
        strong = (top[:, 0] >= mcfg.min_score) & passes_prefilter(
            PREFILTER_FRACTION * mcfg.min_significance)
        weak = ~strong & passes_prefilter(VERIFY_PREFILTER_FRACTION
                                          * mcfg.verify_peaks_min_significance) \
            if mcfg.verifies else np.zeros(top.shape[0], dtype=bool)
        # Last, candidates at identity too weak for that pre-filter, for the coherence
        # test alone: a recording used as it is keeps its waveform, which stands out of
        # chance by far more than its few surviving landmarks do (:mod:`earmark.verify`).
        # That includes identity candidates of the tier above that its budget left out (a
        # refined one is not refined twice: see ``attempts``).
        coherent = (~strong & (top[:, 1] == 0) & passes_prefilter(
            VERIFY_PREFILTER_FRACTION * mcfg.coherence_min_significance)) \
            if mcfg.verifies else np.zeros(top.shape[0], dtype=bool)
        candidates = [(row, 0) for row in top[strong].tolist()]
        if landmarks_alone is None:
            candidates += [(row, 1) for row in top[weak].tolist()]
            candidates += [(row, 2) for row in top[coherent].tolist()]
        earlier_rounds = {t: len(v) for t, v in attempts.items()}
        for (score0, h, track, off_bin, si), tier in candidates:
            if refined[tier] >= budget[tier]:
                continue
            if tier >= 1 and any(e.significance >= mcfg.min_significance for e in found):
                break   # the query matches: no sub-threshold search beside it (cost)
            s = float(hyp_s[h])
            b0 = (off_bin + 1.0) * W
            # Already tried: the same track on a nearby line (the same alignment shows up
            # in neighbouring hypotheses and bins), or enough alignments of this track in
            # this round (a later round searches other transforms: chance alignments of the
            # recording under the lines must not use up its quota for the ring's; 4 of 60
            # tempo -10 % key +5 excerpts were lost so).
            tried = attempts.setdefault(track, [])
            if len(tried) - earlier_rounds.get(track, 0) >= MAX_ALIGNMENTS_PER_TRACK or any(
                    abs(tb - b0) < 3 * W and abs(ts / s - 1) < 0.03 for tb, ts in tried):
                continue
            tried.append((b0, s))
            refined[tier] += 1
            # At identity the coherence test can take a candidate with fewer landmarks.
            least = coherence_min_score if (tier >= 1 and h == 0) else min_score
            e = refine_candidate(query, segments[si], si, track, h, n_tests, b0, least,
                                 grid_pairs, total_frames, track_frames, fcfg, mcfg)
            if e is not None and (landmarks_alone is None or e.significance >= landmarks_alone):
                tried.append((e.line_b, e.speed))
                found.append(e)

    # Reviewed evidence by id, the objects kept so that no later evidence takes a
    # refuted one's id once it is dropped from ``found``.
    reviewed: dict[int, _Evidence] = {}

    def review() -> None:
        """Drop the matches found so far that the audio refutes (each reviewed once),
        strongest first; evidence a stronger one that stands explains is not reviewed
        (:func:`_suppress_overlaps` drops it or keeps it as a rival: the same alignment
        found again under neighbouring transforms was 2-4 checks of every weak match)."""
        if audio_agrees is None:
            return
        standing: list[_Evidence] = []
        refuted: set[int] = set()
        for e in sorted(found, key=_strongest_first):
            if id(e) not in reviewed and needs_review(e, mcfg) and not any(
                    _explains(k, e, mcfg.shadow_ratio) for k in standing):
                reviewed[id(e)] = e
                if not audio_agrees(e):
                    refuted.add(id(e))
                    continue
            standing.append(e)
        found[:] = [e for e in found if id(e) not in refuted]

    refine_round(cands)
    review()
    # Second coarse round: where most of the query is still unexplained, a transformed
    # use may be one voice of a mix, whose peaks the other music pushed out of the
    # strongest few (module docstring).  The speed, tempo and pitch lines are voted again
    # with a denser coarse set, and transforms not already refined go to the fine stage.
    # Then, if nothing matches yet, the tempo-and-key ring beyond the first round's keys.
    def second_round(q: QueryLandmarks, hyps: np.ndarray, n_keep: int,
                     landmarks_alone: float | None = None) -> None:
        nonlocal cands, visits_total
        # Two jobs of every other hypothesis (one each for two voting threads).
        out = _vote_passes(coarse_passes(q, (hyps[0::2], hyps[1::2])), hyp_s, hyp_p,
                           segments, n_threads, mcfg)
        more = _coarse_contenders(out, n_h, n_tests, total_frames, W, mcfg, ranked, n_keep)
        if more.size:
            t_cands, t_visits = fine_vote(more)
            visits_total = visits_total + t_visits
            cands = np.concatenate([cands, t_cands])
            refine_round(t_cands, landmarks_alone)

    if coarse_to_fine and dense_coarse is not None and explained_fraction(
            found, query.duration / fcfg.frame_seconds,
            mcfg.min_significance) < mcfg.dense_coarse_max_explained:
        second_round(dense_coarse(), lines, mcfg.dense_refine_hypotheses)
        # The ring's chance cells, voted with every landmark, would join the background
        # a match's contrast is judged against (a pitch-shifted use under other music,
        # found by the lines, lost its contrast to one): only where nothing matched.
        # Its evidence must be significant on the landmarks alone, at a higher bar
        # (MatchConfig.wide_min_significance): with twice the tempo-and-key plane, songs
        # of one style find more transforms where they are near-copies.
        if ring.any() and not any(e.significance >= mcfg.min_significance for e in found):
            second_round(coarse, np.flatnonzero(ring), mcfg.wide_refine_hypotheses,
                         landmarks_alone=max(mcfg.wide_min_significance, mcfg.min_significance))
        review()
    if not found:
        return []
    # Contrast is against recordings that reach a match's floor, whatever else is kept.
    track_best: dict[int, int] = {}
    at_floor = cands[cands[:, 0] >= mcfg.min_score]
    if at_floor.shape[0]:
        order_t = np.lexsort((-at_floor[:, 0], at_floor[:, 2]))
        tracks_sorted = at_floor[order_t, 2]
        first = np.concatenate([[True], tracks_sorted[1:] != tracks_sorted[:-1]])
        track_best = {int(t): int(v)
                      for t, v in zip(tracks_sorted[first], at_floor[order_t, 0][first])}
    _set_contrasts(found, track_best, CONTRAST_FLOOR_FRACTION * mcfg.min_score,
                   mcfg.min_significance)
    return _suppress_overlaps(found, mcfg.shadow_ratio, fcfg.frame_seconds)


#: The mix look refines at most this many alignments (the strongest over two windows).
MIX_MAX_REFINE = 4
#: The mix look checks at most this many alignments on the audio, the most significant
#: first (a check is ~35 ms), and beyond them only those of a recording with a near miss
#: among them (:meth:`earmark.index.catalogue.Index._mix_look`).
MIX_MAX_CHECKS = 2
#: Fewest votes of an alignment in one window that the mix look's vote reports.
MIX_MIN_WINDOW_VOTES = 3


def _window_query(query: QueryLandmarks, first_frame: float, end_frame: float,
                  duration: float | None = None) -> QueryLandmarks:
    """The landmarks anchored in ``[first_frame, end_frame)`` (still in key order), as a
    query of ``duration`` seconds (the whole query's by default)."""
    keep = (query.time >= first_frame) & (query.time < end_frame)
    c = np.ascontiguousarray
    return QueryLandmarks(c(query.time[keep]), c(query.f1[keep]), c(query.df[keep]),
                          c(query.dt[keep]), query.duration if duration is None else duration)


def _window_queries(query: QueryLandmarks, window_frames: float,
                    n_windows: int) -> list[QueryLandmarks]:
    """``[_window_query(query, k * window_frames, (k + 1) * window_frames) for k in
    range(n_windows)]`` from one pass over the landmarks (one mask per window was
    O(windows x landmarks): a tenth of the mix look on 2-min files).

    >>> q = QueryLandmarks(np.array([5., 1., 11., 7., 3., 12.]), np.arange(6.), np.zeros(6),
    ...                    np.zeros(6), 1.0)
    >>> [w.time.tolist() for w in _window_queries(q, 4.0, 3)]      # 12 is past the last
    [[1.0, 3.0], [5.0, 7.0], [11.0]]
    """
    # Window k holds k * window_frames <= time < (k + 1) * window_frames, the edges
    # computed as _window_query's are (so the windows are the same to the last bit).
    edges = np.arange(n_windows + 2, dtype=np.float64) * window_frames
    window_of = np.clip(np.floor(query.time / window_frames), 0, n_windows).astype(np.int64)
    window_of -= query.time < edges[window_of]       # a quotient rounded across an edge
    window_of += query.time >= edges[window_of + 1]  # (-1 and n_windows on: in none)
    # Stable, so key order is kept inside a window (a radix sort on 16-bit labels).
    order = np.argsort(window_of.astype(np.int16 if n_windows < (1 << 14) else np.int64),
                       kind="stable")
    bounds = np.searchsorted(window_of[order], np.arange(n_windows + 1))
    time, f1, df, dt = (a[order] for a in (query.time, query.f1, query.df, query.dt))
    return [QueryLandmarks(time[a:b], f1[a:b], df[a:b], dt[a:b], query.duration)
            for a, b in zip(bounds[:-1].tolist(), bounds[1:].tolist())]


def mix_search(query: QueryLandmarks, segments: list[SegmentView], total_frames: float,
               track_frames: dict[int, float], fcfg: FingerprintConfig,
               mcfg: MatchConfig) -> list[_Evidence]:
    """Identity alignments of the *mix look*, strongest first (see
    :attr:`~earmark.fingerprint.config.MatchConfig.mix_peaks_per_second`).

    ``query`` holds the mix look's landmarks (small peak neighbourhoods, dense).  They are
    voted at identity in windows of ``mix_window_seconds`` (one pass each, on the voting
    threads); an alignment's strength is its votes in two neighbouring windows, so a
    short use stands out of the chance votes of its own few seconds.  The
    ``MIX_MAX_REFINE`` strongest alignments (one per track and place) are refined on the
    landmarks of those windows and a window either side (:func:`refine_candidate`;
    significance over that span), and those reaching ``mix_min_significance`` are
    returned, most significant first, for the coherence test: they are candidates, never
    matches by themselves.
    """
    W = mcfg.offset_bin_frames
    window = mcfg.mix_window_seconds / fcfg.frame_seconds
    n_windows = max(1, int(math.ceil(query.duration / mcfg.mix_window_seconds)))
    identity = np.zeros(1, np.int64)
    passes = [_VotePass(q, identity, MIX_MIN_WINDOW_VOTES, mcfg.probe_margin,
                        mcfg.stop_key_ratio)
              for q in _window_queries(query, window, n_windows)]
    outputs = _vote_passes(passes, np.ones(1), np.zeros(1), segments,
                           _voting_threads(mcfg, n_windows), mcfg)
    rows = [np.concatenate([c, np.full((c.shape[0], 1), k, np.int64)], axis=1)
            for k, (c, _) in enumerate(outputs) if c.shape[0]]
    if not rows:
        return []
    cells = np.concatenate(rows)             # score, hypothesis, track, bin, segment, window
    place, inverse = np.unique(cells[:, [4, 2, 3]], axis=0, return_inverse=True)
    votes = np.zeros((place.shape[0], n_windows + 1), np.int64)
    np.maximum.at(votes, (inverse.ravel(), cells[:, 5]), cells[:, 0])
    pair_votes = votes[:, :-1] + votes[:, 1:]        # windows k and k + 1 together
    best_window = pair_votes.argmax(axis=1)
    strength = pair_votes[np.arange(place.shape[0]), best_window]
    order = np.lexsort((place[:, 2], place[:, 1], place[:, 0], -strength))
    hyp_s, _ = hypothesis_grid(mcfg)
    chosen: list[tuple[int, int, int, int]] = []
    for i in order.tolist():
        si, track, off_bin = (int(v) for v in place[i])
        if any(t == track and abs(b - off_bin) <= 3 for _, t, b, _ in chosen):
            continue
        chosen.append((si, track, off_bin, int(best_window[i])))
        if len(chosen) == MIX_MAX_REFINE:
            break
    found = []
    for si, track, off_bin, k in chosen:
        span = _window_query(query, (k - 1) * window, (k + 3) * window,
                             min(query.duration, 4 * mcfg.mix_window_seconds))
        e = refine_candidate(span, segments[si], si, track, 0, hyp_s.shape[0],
                             (off_bin + 1.0) * W, mcfg.coherence_min_score, {},
                             total_frames, track_frames, fcfg, mcfg, final_look_up=False)
        if e is not None and e.significance >= mcfg.mix_min_significance:
            found.append(e)
    found.sort(key=lambda e: (-e.significance, e.track))
    return found


def _span(e: _Evidence) -> tuple[float, float]:
    """Query segment of the evidence, in frames."""
    return float(e.q_frames.min()), float(e.q_end_frames.max())


def _same_place(a: _Evidence, b: _Evidence) -> bool:
    """The two query segments mostly overlap (more than half of the shorter one)."""
    (lo_a, hi_a), (lo_b, hi_b) = _span(a), _span(b)
    return min(hi_a, hi_b) - max(lo_a, lo_b) > 0.5 * min(hi_a - lo_a, hi_b - lo_b)


def _set_contrasts(found: list[_Evidence], track_best: dict[int, int], floor: float,
                   min_significance: float) -> None:
    """Each evidence's contrast (:func:`track_contrast`) against the recordings that
    compete for the same audio.

    A recording with significant evidence of its own elsewhere in the query is another
    use, not background: a compilation or a DJ mix of six catalogue recordings would
    otherwise have each judged against the other five (the median of the five strongest
    others is then itself a real use) and report none of them, as it did.  A recording
    that aligns at the same place stays in the background: that is the coincidence of
    one style the contrast is for.  Contrast is the recording's, not the seed
    candidate's: a weak seed refined onto the same alignment as a strong one must not
    carry a weaker contrast into the overlap suppression that keeps only one of them.
    The recording's strength is its best cell or its refined evidence, whichever is
    larger: a transform between grid points (tempo 0.95 with key +4, found from the
    pitch line's 1.0 / +4) spreads its votes over many offset bins, and its best cell
    held 10 votes where the line fit aligned 50 landmarks (significance 80), a contrast
    of 1.4 against the floor alone.  Chance cells refine to fewer landmarks, not more.
    """
    significant = [e for e in found if e.significance >= min_significance]
    for e in found:
        here: set[int] = set()
        elsewhere: set[int] = set()
        for k in significant:
            if k.track != e.track:
                (here if _same_place(k, e) else elsewhere).add(k.track)
        background = {t: v for t, v in track_best.items() if t in here or t not in elsewhere}
        e.contrast = track_contrast(background, e.track,
                                    max(track_best.get(e.track, 0), e.score), floor=floor)


def _shared_anchors(a: _Evidence, b: _Evidence) -> float:
    """Intersection over union of the distinct query times of two alignments' matched
    landmarks.

    >>> e = lambda t: _Evidence(0, 0, 1, 1.0, 1.0, 0.0, 0.0, np.array(t, float), None, None)
    >>> _shared_anchors(e([1, 2, 2, 3]), e([2, 3, 4]))
    0.5
    """
    qa, qb = np.unique(a.q_frames), np.unique(b.q_frames)
    union = np.union1d(qa, qb).shape[0]
    return np.intersect1d(qa, qb, assume_unique=True).shape[0] / union if union else 1.0


def _strongest_first(e: _Evidence) -> tuple[int, float, int]:
    """Sort key: most landmarks first, then most significant, then track id (deterministic)."""
    return -e.score, -e.significance, e.track


def _explains(k: _Evidence, e: _Evidence, shadow_ratio: float) -> bool:
    """Whether stronger evidence ``k`` accounts for ``e`` (:func:`_suppress_overlaps`): the
    same track at the same place, or another track over mostly the same query segment
    with less than ``shadow_ratio`` of its score."""
    if k.track == e.track:
        return _same_place(e, k)
    lo, hi = _span(e)
    klo, khi = _span(k)
    return min(hi, khi) - max(lo, klo) > 0.5 * (hi - lo) and e.score < shadow_ratio * k.score


def _suppress_overlaps(found: list[_Evidence], shadow_ratio: float,
                       frame_seconds: float) -> list[_Evidence]:
    """Drop evidence that a stronger match already explains.

    * Same track, query segments mostly overlapping: a repeated section of the reference
      aligning with the same query segment is one use, not two.  When it has nearly as
      many landmarks (``RIVAL_MIN_SCORE_RATIO``) at another place of the reference, and
      not mostly the same ones (``RIVAL_MAX_SHARED``), it is kept as a rival of the
      stronger one (``rivals``): which copy was used is for the audio to say.
    * Another track over mostly the same query segment with less than ``shadow_ratio``
      of the stronger match's score: a chance alignment riding on audio that is already
      accounted for (a genuinely layered second recording scores comparably).
    """
    found.sort(key=_strongest_first)
    kept: list[_Evidence] = []
    min_shift = RIVAL_MIN_SHIFT_SECONDS / frame_seconds
    for e in found:
        clash = False
        for k in kept:
            clash = _explains(k, e, shadow_ratio)
            if (clash and k.track == e.track and len(k.rivals) < MAX_RIVALS
                    and e.score >= RIVAL_MIN_SCORE_RATIO * k.score
                    and abs(e.line_b - k.line_b) >= min_shift
                    and _shared_anchors(e, k) < RIVAL_MAX_SHARED):
                k.rivals.append(e)
            if clash:
                break
        if not clash:
            kept.append(e)
    return kept


def evidence_to_match(e: _Evidence, reference: Reference, query_duration: float,
                      frame_seconds: float) -> Match:
    """Convert internal evidence (frames) to the public :class:`Match` (seconds).

    The segment is an estimate of where the use begins and ends, not the span of the
    matched landmarks: those are a sample of the used audio (noise or another song over
    it hides most of them), so the first one comes on average one mean gap after the
    start.  With ``n`` distinct matched times spanning ``L``, the start is estimated as
    ``first - L / (n - 1)`` and the end as ``last + L / (n - 1)`` (the unbiased estimates
    of the ends of a uniform sample), clipped to the query.  On the bench's 5 s excerpts
    hidden in 30 s of other music this took the start error from a median of +0.20 s
    (always late) to -0.01 s.  The matched landmarks themselves are in ``alignment``.
    """
    anchors = np.unique(e.q_frames)
    ends = np.unique(e.q_end_frames)
    start_gap = (anchors[-1] - anchors[0]) / max(anchors.shape[0] - 1, 1)
    end_gap = (ends[-1] - ends[0]) / max(ends.shape[0] - 1, 1)
    q_start_frames = max(float(anchors[0] - start_gap), 0.0)
    q_start = q_start_frames * frame_seconds
    q_end = min(float(ends[-1] + end_gap) * frame_seconds, query_duration)
    r_start = (e.line_b + e.speed * q_start_frames) * frame_seconds
    r_end = (e.line_b + e.speed * q_end / frame_seconds) * frame_seconds
    order = np.argsort(e.q_frames)
    step = max(1, order.shape[0] // 400)
    shown = order[::step]
    # (The same float64 products as ``float(frame) * frame_seconds``, made in one numpy
    # call each instead of per point: ~0.3 ms of a 15-ms query went to that loop.)
    alignment = tuple((round(q, 3), round(r, 3))
                      for q, r in zip((e.q_frames[shown] * frame_seconds).tolist(),
                                      (e.ref_frames[shown] * frame_seconds).tolist()))
    return Match(reference=reference, score=e.score, significance=round(e.significance, 2),
                 query_start=q_start, query_end=q_end, reference_start=r_start,
                 reference_end=r_end,
                 coverage=(q_end - q_start) / query_duration if query_duration > 0 else 0.0,
                 speed=e.speed, pitch_semitones=e.pitch, alignment=alignment)
