"""The on-disk store: segments, manifest, incremental indexing, removal, crash safety."""

from __future__ import annotations

import errno
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

import earmark.index.catalogue as catalogue_mod
from earmark.errors import EarmarkError, IndexError_
from earmark.fingerprint import hashes
from earmark.fingerprint.config import MATCH_PRESETS
from earmark.index import store
from earmark.index.catalogue import Index

from conftest import SR, alignment_offset, track_of, write_audio

FAST = MATCH_PRESETS["fast"]


# --------------------------------------------------------------------------- helpers


def copy_tracks(catalogue, names, folder: Path) -> dict[str, Path]:
    """Copy catalogue files into ``folder``; returns name -> new path."""
    folder.mkdir(parents=True, exist_ok=True)
    out = {}
    for name in names:
        out[name] = folder / name
        shutil.copyfile(catalogue.path(name), out[name])
    return out


def segment_triples(seg: store.Segment) -> np.ndarray:
    """Every posting of a segment as rows (key, track id, absolute anchor frame), sorted."""
    counts = np.diff(np.asarray(seg.bucket_start, dtype=np.int64))
    buckets = np.repeat(np.arange(counts.shape[0], dtype=np.int64), counts)
    keys = (buckets << hashes.LO_BITS) | np.asarray(seg.key_lo, dtype=np.int64)
    slot, frame = hashes.unpack_posting(np.asarray(seg.postings))
    track = np.asarray(seg.slot_track)[slot]
    abs_frame = np.asarray(seg.slot_frame0)[slot] + frame
    rows = np.stack([keys, track, abs_frame], axis=1)
    return rows[np.lexsort(rows.T[::-1])]


def assert_tracks_match_themselves(idx: Index, catalogue, start: float = 10.0) -> None:
    """Every live track's own excerpt matches it, at the right offset."""
    for ref in idx.tracks():
        name = Path(ref.path).name
        y, true_start = catalogue.excerpt(name, start, 5.0)
        res = idx.match_audio(y, SR, FAST)
        assert res.matches, f"{name}: its own excerpt does not match"
        top = res.matches[0]
        assert top.reference.path == ref.path, (name, top.reference.path)
        assert abs(alignment_offset(top) - true_start) <= 0.1


def segment_files(folder: Path) -> set[str]:
    """Hash-segment files (and leftovers of them); each has a derivation-tier twin."""
    return {p.name for p in folder.iterdir() if "seg-" in p.name and ".drv" not in p.name}


def derivation_files(folder: Path) -> set[str]:
    return {p.name for p in folder.iterdir() if p.name.endswith(".drv")}


# --------------------------------------------------------------------------- segments


def _random_segment_input(rng):
    track_ids = [5, 9, 12]
    lengths = [3000, 1, 70_000]          # the last track needs two 65 536-frame slots
    keys, frames = [], []
    for n_frames in lengths:
        n = 4000
        k = rng.integers(0, 1 << hashes.KEY_BITS, n).astype(np.int64)
        k[:50] = -1                       # out-of-layout landmarks are dropped
        keys.append(k)
        frames.append(rng.integers(0, n_frames, n).astype(np.int64))
    return track_ids, keys, frames


def test_segment_write_open_round_trip(tmp_path):
    rng = np.random.default_rng(0)
    track_ids, keys, frames = _random_segment_input(rng)
    arrays = store.build_segment_arrays(track_ids, keys, frames)
    path = tmp_path / "seg-000001.emk"
    store.write_segment(path, arrays)
    assert [p.name for p in tmp_path.iterdir()] == [path.name]  # no temporary left behind
    seg = store.open_segment(path)
    want = np.concatenate([np.stack([k[k >= 0], np.full((k >= 0).sum(), t), f[k >= 0]], axis=1)
                           for t, k, f in zip(track_ids, keys, frames)])
    want = want[np.lexsort(want.T[::-1])]
    np.testing.assert_array_equal(segment_triples(seg), want)
    assert seg.n_postings == want.shape[0]
    assert list(np.asarray(seg.slot_track)) == [5, 9, 12, 12]
    assert list(np.asarray(seg.slot_frame0)) == [0, 0, 0, hashes.MAX_SLOT_FRAMES]
    assert np.all(np.diff(np.asarray(seg.bucket_start, dtype=np.int64)) >= 0)
    assert seg.nbytes <= path.stat().st_size
    for name, _dtype in store._ARRAY_ORDER:  # identical to what was written
        np.testing.assert_array_equal(np.asarray(getattr(seg, name)), arrays[name])


def _write_small_segment(path: Path) -> bytes:
    arrays = store.build_segment_arrays([1], [np.array([5, 700, 90_000], np.int64)],
                                        [np.array([1, 2, 3], np.int64)])
    store.write_segment(path, arrays)
    return path.read_bytes()


def _patch_header(raw: bytes, **fields) -> bytes:
    magic, version, layout, key_bits, table_bits, n, n_slots = store._HEADER.unpack(
        raw[:store._HEADER.size])
    vals = dict(magic=magic, version=version, layout=layout, key_bits=key_bits,
                table_bits=table_bits, n=n, n_slots=n_slots)
    vals.update(fields)
    head = store._HEADER.pack(vals["magic"], vals["version"], vals["layout"], vals["key_bits"],
                              vals["table_bits"], vals["n"], vals["n_slots"])
    return head + raw[store._HEADER.size:]


@pytest.mark.parametrize("damage, words", [
    ("bad magic", "not an earmark index segment"),
    ("short header", "truncated"),
    ("truncated arrays", "truncated"),
    ("newer version", "newer"),
    ("newer layout", "newer"),
    ("more postings than stored", "truncated"),
    ("missing", "unreadable"),
])
def test_open_segment_rejects_damaged_files(tmp_path, damage, words):
    path = tmp_path / "seg-000001.emk"
    raw = _write_small_segment(path)
    assert store.open_segment(path).n_postings == 3  # intact, it opens
    if damage == "bad magic":
        raw = b"NOTASEG\x00" + raw[8:]
    elif damage == "short header":
        raw = raw[:40]
    elif damage == "truncated arrays":
        raw = raw[: len(raw) // 2]
    elif damage == "newer version":
        raw = _patch_header(raw, version=store.SEGMENT_VERSION + 1)
    elif damage == "newer layout":
        raw = _patch_header(raw, layout=hashes.LAYOUT_VERSION + 1)
    elif damage == "more postings than stored":
        raw = _patch_header(raw, n=10**9)
    if damage == "missing":
        path.unlink()
    else:
        path.write_bytes(raw)
    with pytest.raises(IndexError_) as err:
        store.open_segment(path)
    msg = str(err.value)
    assert words in msg.lower() and "\n" not in msg and path.name in msg


def test_open_segment_rejects_inconsistent_bucket_table(tmp_path):
    path = tmp_path / "seg-000001.emk"
    raw = bytearray(_write_small_segment(path))
    # Last bucket_start entry (uint32 at 64 + 4 * 2**TABLE_BITS) no longer equals n.
    pos = 64 + 4 * (1 << hashes.TABLE_BITS)
    raw[pos:pos + 4] = (2).to_bytes(4, "little")
    path.write_bytes(bytes(raw))
    with pytest.raises(IndexError_, match="corrupt"):
        store.open_segment(path)


def test_open_segment_rejects_decreasing_bucket_table(tmp_path):
    """Look-ups trust bucket ranges to stay inside the postings: a table that goes
    back (or past the end) in the middle is refused when the segment is opened."""
    path = tmp_path / "seg-000001.emk"
    raw = bytearray(_write_small_segment(path))
    pos = 64 + 4 * 1000                    # bucket 1000: an empty bucket between entries
    raw[pos:pos + 4] = (7).to_bytes(4, "little")
    path.write_bytes(bytes(raw))
    with pytest.raises(IndexError_, match="corrupt"):
        store.open_segment(path)


def test_lookups_skip_postings_whose_slot_is_outside_the_segment():
    """A damaged posting naming a slot the segment does not have is ignored by both
    matcher kernels (never read past the slot table), while intact postings still vote."""
    from earmark.match import QueryLandmarks, SegmentView, collect_pairs, vote_hypotheses

    key = int(hashes.pack_key(np.array([20]), np.array([hashes.DF_ZERO + 6]), np.array([10]))[0])
    frames = np.arange(100, 400, 20, dtype=np.int64)              # 15 landmarks, one key each
    keys = key + np.arange(frames.shape[0], dtype=np.int64)        # distinct dt bins
    arrays = store.build_segment_arrays([3], [keys], [frames])
    f1, df, dt = hashes.unpack_key(keys)
    query = QueryLandmarks(time=(frames - 50).astype(np.float64),
                           f1=(f1 + 0.5) * hashes.F1_STEP_SEMITONES,
                           df=(df - hashes.DF_ZERO + 0.5) * hashes.DF_STEP_SEMITONES,
                           dt=dt + hashes.DT_MIN_FRAMES + 0.5, duration=10.0)
    damaged = arrays["postings"].copy()
    damaged[:5] |= np.uint32(0xFFFF << hashes.FRAME_BITS)          # slot 65535: not in the segment

    def run(postings):
        view = SegmentView(arrays["bucket_start"], arrays["key_lo"], postings,
                           arrays["slot_track"], arrays["slot_frame0"], np.ones(1, np.bool_))
        votes = vote_hypotheses(query.time, query.f1, query.df, query.dt, np.array([1.0]),
                                np.array([0.0]), *view.arrays(), 4.0, 0.0, 3, 1 << 62)
        pairs = collect_pairs(query.time, query.f1, query.df, query.dt, 1.0, 0.0, 3, 50.0, 1.0,
                              2.0, *view.arrays(), 0.0)
        return int(votes[4][0]), int(votes[3].max()), pairs[0].shape[0]

    assert run(arrays["postings"]) == (15, 15, 15)
    assert run(damaged) == (10, 10, 10)


def test_votes_equal_a_plain_count_across_chunks_and_table_growth():
    """The vote kernel gathers cells in chunks and grows its table as it goes: its
    candidates and visits must equal a plain count of every (track, offset bin) cell,
    on a query whose look-ups give several chunks of cells and far more distinct cells
    than the table's first size."""
    from earmark.match import CELL_CHUNK, QueryLandmarks, SegmentView, vote_hypotheses

    rng = np.random.default_rng(11)
    common = rng.choice(1 << hashes.KEY_BITS, 120, replace=False).astype(np.int64)
    tracks = list(range(1, 41))
    keys = [common[rng.integers(0, common.shape[0], 6000)] for _ in tracks]
    frames = [rng.integers(0, 60_000, 6000) for _ in tracks]
    # A planted use: 30 query landmarks of track 9, 700 frames later in the reference.
    q_keys = common[rng.integers(0, common.shape[0], 420)]
    q_time = np.sort(rng.uniform(0.0, 3000.0, q_keys.shape[0]))
    keys[8] = np.concatenate([keys[8], q_keys[:30]])
    frames[8] = np.concatenate([frames[8], np.floor(q_time[:30] + 700).astype(np.int64)])
    arrays = store.build_segment_arrays(tracks, keys, frames)
    view = SegmentView(arrays["bucket_start"], arrays["key_lo"], arrays["postings"],
                       arrays["slot_track"], arrays["slot_frame0"], np.ones(len(tracks), np.bool_))
    f1, df, dt = hashes.unpack_key(q_keys)
    query = QueryLandmarks(time=q_time, f1=(f1 + 0.5) * hashes.F1_STEP_SEMITONES,
                           df=(df - hashes.DF_ZERO + 0.5) * hashes.DF_STEP_SEMITONES,
                           dt=dt + hashes.DT_MIN_FRAMES + 0.5, duration=30.0)
    width, min_score = 4.0, 6
    ch, ct, cb, cs, visits = vote_hypotheses(query.time, query.f1, query.df, query.dt,
                                             np.array([1.0]), np.array([0.0]), *view.arrays(),
                                             width, 0.0, min_score, 1 << 62)
    # Plain count: every posting of each query key votes for its (track, offset bin).
    all_keys = np.concatenate(keys)
    all_tracks = np.concatenate([np.full(k.shape[0], t) for t, k in zip(tracks, keys)])
    all_frames = np.concatenate(frames)
    cells = []
    for key, t in zip(q_keys, q_time):
        hit = all_keys == key
        cells += list(zip(all_tracks[hit].tolist(),
                          np.floor((all_frames[hit] - t) / width).astype(np.int64).tolist()))
    assert int(visits[0]) == len(cells) > 3 * CELL_CHUNK
    count: dict = {}
    for c in cells:
        count[c] = count.get(c, 0) + 1
    assert len(count) > 1 << 15
    expected = set()
    for (track, b), c in count.items():
        nb = max(count.get((track, b - 1), 0), count.get((track, b + 1), 0))
        if 2 * c >= min_score and c + nb >= min_score and nb <= c:
            expected.add((track, b, c + nb))
    assert set(zip(ct.tolist(), cb.tolist(), cs.tolist())) == expected
    assert (ch == 0).all()
    assert any(t == 9 and s >= 30 for t, _, s in expected)


def test_refined_pairs_equal_a_fresh_look_up_at_the_refined_hypothesis():
    """``refine_pairs`` reuses the pairs found at a grid hypothesis for the keys a landmark
    probes at both: its output must equal ``collect_pairs`` run afresh at the refined
    hypothesis, element for element, whether few or many landmarks' keys changed."""
    from earmark.match import QueryLandmarks, SegmentView, collect_pairs, refine_pairs

    rng = np.random.default_rng(5)
    common = rng.choice(1 << hashes.KEY_BITS, 400, replace=False).astype(np.int64)
    tracks = [1, 2, 3]
    keys = [common[rng.integers(0, common.shape[0], 8000)] for _ in tracks]
    frames = [rng.integers(0, 90_000, 8000) for _ in tracks]      # two slots per track
    arrays = store.build_segment_arrays(tracks, keys, frames)
    live = np.ones(arrays["slot_track"].shape[0], np.bool_)
    live[arrays["slot_track"] == 3] = False                       # a removed track
    view = SegmentView(arrays["bucket_start"], arrays["key_lo"], arrays["postings"],
                       arrays["slot_track"], arrays["slot_frame0"], live)
    q_keys = common[rng.integers(0, common.shape[0], 3000)]
    f1, df, dt = hashes.unpack_key(q_keys)
    # Continuous coordinates anywhere in their bins (some near the edges: multi-probing).
    query = QueryLandmarks(time=np.sort(rng.uniform(0.0, 600.0, q_keys.shape[0])),
                           f1=(f1 + rng.random(f1.shape[0])) * hashes.F1_STEP_SEMITONES,
                           df=(df - hashes.DF_ZERO + rng.random(df.shape[0]))
                           * hashes.DF_STEP_SEMITONES,
                           dt=dt + hashes.DT_MIN_FRAMES + rng.random(dt.shape[0]), duration=10.0)
    q = (query.time, query.f1, query.df, query.dt)
    for track in (1, 2, 3):
        for s, p in ((1.0, 0.0), (0.94, -1.0)):
            grid = collect_pairs(*q, s, p, track, 0.0, s, np.inf, *view.arrays(), 0.2)
            assert (np.diff(grid[0]) >= 0).all()
            for ds, dp, tol in ((0.0, 0.0, np.inf), (0.002, 0.03, np.inf),
                                (-0.006, -0.2, 20000.0)):
                slope, pitch = s * (1 + ds), p + dp
                fresh = collect_pairs(*q, slope, pitch, track, 30.0, slope, tol, *view.arrays(),
                                      0.2)
                reused = refine_pairs(*q, slope, pitch, grid, s, p, track, 30.0, slope, tol,
                                      *view.arrays(), 0.2)
                for a, b in zip(fresh, reused):
                    np.testing.assert_array_equal(a, b)
                if (s, tol) == (1.0, np.inf):   # the query's own keys, every frame
                    assert (fresh[0].shape[0] > 0) == (track != 3)
    # The far refinement probes keys the grid point did not: both branches ran.
    moved = collect_pairs(*q, 0.994, -0.2, 1, 0.0, 0.994, np.inf, *view.arrays(), 0.2)
    grid = collect_pairs(*q, 1.0, 0.0, 1, 0.0, 1.0, np.inf, *view.arrays(), 0.2)
    assert set(zip(moved[0].tolist(), moved[2].tolist())) - set(zip(grid[0].tolist(),
                                                                     grid[2].tolist()))


@pytest.mark.parametrize("per_key", [1, 3, 40])   # small buckets are scanned, large bisected
def test_key_range_finds_exactly_the_postings_of_a_key(per_key):
    from earmark.match import _key_range

    rng = np.random.default_rng(per_key)
    keys = rng.integers(0, 1 << 10, 600 * per_key).astype(np.int64) * 997 % (1 << hashes.KEY_BITS)
    arrays = store.build_segment_arrays([1], [keys], [np.arange(keys.shape[0]) % 60000])
    sorted_keys = np.sort(keys)
    key_start = store.key_offsets(arrays["bucket_start"], arrays["key_lo"], chunk_buckets=1000)
    for key in np.concatenate([keys[:50], rng.integers(0, 1 << hashes.KEY_BITS, 50)]):
        expected = (np.searchsorted(sorted_keys, key, "left"),
                    np.searchsorted(sorted_keys, key, "right"))
        assert _key_range(arrays["bucket_start"], arrays["key_lo"], int(key)) == expected
        # The per-key table (read directly) gives the same postings.
        assert _key_range(key_start, arrays["key_lo"], int(key)) == expected


def test_per_key_offsets_count_every_key_and_stay_inside_damaged_buckets():
    """The per-key table holds, for every key, where its postings start (all 2**20 keys
    against a plain count); in a damaged bucket (unsorted low bits, values past the
    layout's) its offsets still never leave the bucket."""
    rng = np.random.default_rng(5)
    keys = rng.integers(0, 1 << hashes.KEY_BITS, 20_000).astype(np.int64)
    arrays = store.build_segment_arrays([1], [keys], [np.arange(keys.shape[0]) % 60000])
    key_start = store.key_offsets(arrays["bucket_start"], arrays["key_lo"], chunk_buckets=777)
    counts = np.bincount(keys, minlength=1 << hashes.KEY_BITS)
    assert key_start.shape[0] == (1 << hashes.KEY_BITS) + 1
    assert np.array_equal(key_start[1:], np.cumsum(counts)) and key_start[0] == 0

    damaged = arrays["key_lo"].copy()
    damaged[::7] = 255 - damaged[::7]
    bad = store.key_offsets(arrays["bucket_start"], damaged)
    bucket_of_key = np.arange(1 << hashes.KEY_BITS) >> hashes.LO_BITS
    bs = arrays["bucket_start"].astype(np.int64)
    assert np.all(bad[:-1] >= bs[bucket_of_key]) and np.all(bad[1:] <= bs[bucket_of_key + 1])
    assert np.all(np.diff(bad.astype(np.int64)) >= 0)


def test_index_looks_up_through_per_key_tables_with_the_same_results(catalogue, index,
                                                                   monkeypatch):
    """A query reads the segments' per-key tables, built on the index's first query (not on
    opening); above the size limit it searches the buckets instead.  Either way a query gets
    the same matches."""
    queries = [catalogue.excerpt(n, 7.0, 6.0)[0] for n in catalogue.names[:3]]
    with_table = [index.match_audio(y, catalogue.sr).matches for y in queries]
    assert all(v.key_start is not None for v in index.match_views())
    monkeypatch.setattr(catalogue_mod, "KEY_TABLE_MAX_POSTINGS", 0)
    with Index.open(index.path) as searched:
        assert searched._match_views is None
        without = [searched.match_audio(y, catalogue.sr).matches for y in queries]
        assert all(v.key_start is None for v in searched.match_views())
    assert all(ms for ms in with_table)
    assert [[(m.reference.track_id, m.score, m.query_start, m.speed) for m in ms]
            for ms in with_table] == \
        [[(m.reference.track_id, m.score, m.query_start, m.speed) for m in ms] for ms in without]


def test_stop_keys_cast_no_votes():
    """A key holding more postings than the limit is skipped by the vote; the others vote."""
    from earmark.match import QueryLandmarks, SegmentView, stop_key_limit, vote_hypotheses

    common = int(hashes.pack_key(np.array([30]), np.array([hashes.DF_ZERO]), np.array([4]))[0])
    rare = common + 1
    keys = np.array([common] * 50 + [rare] * 5, dtype=np.int64)
    arrays = store.build_segment_arrays([7], [keys], [np.arange(55, dtype=np.int64) * 10])
    view = SegmentView(arrays["bucket_start"], arrays["key_lo"], arrays["postings"],
                       arrays["slot_track"], arrays["slot_frame0"], np.ones(1, np.bool_))
    f1, df, dt = hashes.unpack_key(np.array([common, rare]))
    query = QueryLandmarks(time=np.array([0.0, 0.0]), f1=(f1 + 0.5) * hashes.F1_STEP_SEMITONES,
                           df=(df - hashes.DF_ZERO + 0.5) * hashes.DF_STEP_SEMITONES,
                           dt=dt + hashes.DT_MIN_FRAMES + 0.5, duration=1.0)

    def visits(limit):
        out = vote_hypotheses(query.time, query.f1, query.df, query.dt, np.array([1.0]),
                              np.array([0.0]), *view.arrays(), 4.0, 0.0, 100, limit)
        return int(out[4][0])

    assert visits(1 << 62) == 55
    assert visits(10) == 5            # the 50-posting key is a stop key
    assert visits(4) == 0
    # The limit scales with the segment (mean postings per key), never below the floor.
    assert stop_key_limit(1 << 20, 32.0, 64) == 64
    assert stop_key_limit(1000 << 20, 32.0, 64) == 32000
    assert stop_key_limit(1000 << 20, float("inf"), 64) > 10**15


# --------------------------------------------------------------------------- manifest


def _manifest(gen: int) -> store.Manifest:
    return store.Manifest(generation=gen, segments=[{"file": f"seg-{gen:06d}.emk", "tracks": [gen],
                                                     "frames": [100.0 * gen], "postings": 7}],
                          removed=[], config={}, next_segment=gen + 1)


def test_manifest_round_trip_and_atomic_replace(tmp_path):
    assert store.read_manifest(tmp_path) is None
    store.write_manifest(tmp_path, _manifest(1))
    inode_1 = (tmp_path / "manifest.json").stat().st_ino
    # A reader that opened generation 1 keeps reading generation 1 ...
    reader = open(tmp_path / "manifest.json", "rb")
    store.write_manifest(tmp_path, _manifest(2))
    old = json.loads(reader.read())
    reader.close()
    assert old["generation"] == 1
    # ... because the file was replaced, not rewritten in place.
    assert (tmp_path / "manifest.json").stat().st_ino != inode_1
    m = store.read_manifest(tmp_path)
    assert (m.generation, m.segments[0]["file"], m.next_segment) == (2, "seg-000002.emk", 3)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["manifest.json"]


@pytest.mark.parametrize("failing", ["fsync", "replace"])
def test_manifest_write_failure_keeps_previous_generation(tmp_path, monkeypatch, failing):
    store.write_manifest(tmp_path, _manifest(1))

    def full_disk(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, failing, full_disk)
    with pytest.raises(OSError):
        store.write_manifest(tmp_path, _manifest(2))
    monkeypatch.undo()
    assert store.read_manifest(tmp_path).generation == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == ["manifest.json"]


def test_segment_write_failure_leaves_nothing(tmp_path, monkeypatch):
    arrays = store.build_segment_arrays([1], [np.array([1, 2], np.int64)], [np.array([0, 1])])

    def full_disk(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "fsync", full_disk)
    with pytest.raises(OSError):
        store.write_segment(tmp_path / "seg-000001.emk", arrays)
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("field, value", [("version", 999), ("layout_version", 999)])
def test_index_from_newer_version_is_refused(index_copy, field, value):
    manifest = index_copy / "manifest.json"
    doc = json.loads(manifest.read_text())
    doc[field] = value
    manifest.write_text(json.dumps(doc))
    for opener in (Index.open, Index.open_writer):
        with pytest.raises(IndexError_) as err:
            opener(index_copy)
        msg = str(err.value)
        assert "newer" in msg and "\n" not in msg and str(index_copy) in msg
    # Refusing did not touch it.
    assert json.loads(manifest.read_text())[field] == value


@pytest.mark.parametrize("content, words", [
    ("garbage{", "not JSON"),
    ('{"format": "something-else", "version": 1}', "not an Earmark index"),
    ('{"format": "earmark-index", "version": 1, "generation": 1, "segments": [{"file": "../x"}]}',
     "corrupt"),
])
def test_corrupt_manifest_is_refused(index_copy, content, words):
    (index_copy / "manifest.json").write_text(content)
    with pytest.raises(IndexError_, match=words) as err:
        Index.open(index_copy)
    assert "\n" not in str(err.value)


# --------------------------------------------------------------------------- add / remove


def test_add_remove_re_add(catalogue, tmp_path):
    names = ["track01.wav", "track02.wav", "track07.flac"]
    paths = copy_tracks(catalogue, names, tmp_path / "cat")
    ipath = tmp_path / "idx"
    with Index.open_writer(ipath) as idx:
        report = idx.add([tmp_path / "cat"], jobs=1)
    assert sorted(Path(p).name for p in report.added) == sorted(names)
    idx = Index.open(ipath)
    assert sorted(track_of(r) for r in idx.tracks()) == sorted(names)
    assert_tracks_match_themselves(idx, catalogue)
    old_id = {track_of(r): r.track_id for r in idx.tracks()}["track02.wav"]

    with Index.open_writer(ipath) as w:
        removed, missing = w.remove([paths["track02.wav"], tmp_path / "cat" / "nope.wav"])
    assert removed == [str(paths["track02.wav"])]
    assert missing == [str(tmp_path / "cat" / "nope.wav")]
    idx = Index.open(ipath)
    assert sorted(track_of(r) for r in idx.tracks()) == ["track01.wav", "track07.flac"]
    y, _ = catalogue.excerpt("track02.wav", 10.0, 5.0)
    assert not [m for m in idx.match_audio(y, SR).matches if track_of(m) == "track02.wav"]
    assert_tracks_match_themselves(idx, catalogue)
    assert idx.info()["tracks"] == 2

    with Index.open_writer(ipath) as w:
        report = w.add([tmp_path / "cat"], jobs=1)
    assert [Path(p).name for p in report.added] == ["track02.wav"]
    assert sorted(Path(p).name for p in report.unchanged) == ["track01.wav", "track07.flac"]
    idx = Index.open(ipath)
    ids = {track_of(r): r.track_id for r in idx.tracks()}
    assert sorted(ids) == sorted(names)
    assert ids["track02.wav"] > old_id  # ids are never reused
    assert_tracks_match_themselves(idx, catalogue)
    assert len({r.path for r in idx.tracks()}) == 3


def test_reader_keeps_working_while_writer_merges(catalogue, tmp_path, monkeypatch):
    """A reader's memory-mapped generation stays valid when a writer merges and deletes
    the segments it maps."""
    monkeypatch.setattr(catalogue_mod, "MERGE_ALL_POSTINGS", 0)  # no merge after each add
    paths = copy_tracks(catalogue, ["track03.wav", "track04.wav"], tmp_path / "cat")
    ipath = tmp_path / "idx"
    with Index.open_writer(ipath) as w:
        w.add([paths["track03.wav"]], jobs=1)
    with Index.open_writer(ipath) as w:
        w.add([paths["track04.wav"]], jobs=1)
    reader = Index.open(ipath)
    assert len(reader.segments) == 2
    with Index.open_writer(ipath) as w:
        w.merge()
    assert len(segment_files(ipath)) == 1
    assert len(derivation_files(ipath)) == 1  # the derivation tier is merged alongside
    assert_tracks_match_themselves(reader, catalogue)      # old generation, deleted files
    assert_tracks_match_themselves(Index.open(ipath), catalogue)


def test_incremental_rerun_skips_unchanged_and_replaces_changed(catalogue, tmp_path):
    names = ["track01.wav", "track03.wav", "track05.wav"]
    paths = copy_tracks(catalogue, names, tmp_path / "cat")
    ipath = tmp_path / "idx"
    with Index.open_writer(ipath) as w:
        w.add([tmp_path / "cat"], jobs=1)
    gen = store.read_manifest(ipath).generation

    # Same bytes again (even rewritten, with a new mtime): nothing to do.
    shutil.copyfile(catalogue.path("track03.wav"), paths["track03.wav"])
    with Index.open_writer(ipath) as w:
        report = w.add([tmp_path / "cat"], jobs=1)
    assert sorted(Path(p).name for p in report.unchanged) == sorted(names)
    assert not report.added and not report.replaced and not report.failed
    assert store.read_manifest(ipath).generation == gen

    # Other content under the same name: replaced.
    new_song = catalogue.other_song(9101, 20.0)
    write_audio(paths["track03.wav"], new_song)
    with Index.open_writer(ipath) as w:
        report = w.add([tmp_path / "cat"], jobs=1)
    assert [Path(p).name for p in report.replaced] == ["track03.wav"]
    assert sorted(Path(p).name for p in report.unchanged) == ["track01.wav", "track05.wav"]
    idx = Index.open(ipath)
    refs = {track_of(r): r for r in idx.tracks()}
    assert sorted(refs) == sorted(names)
    assert refs["track03.wav"].duration == pytest.approx(20.0, abs=0.01)
    # The new content matches under that path; the old content no longer does.
    res = idx.match_audio(new_song[int(6 * SR):int(11 * SR)], SR, FAST)
    assert res.matches and track_of(res.matches[0]) == "track03.wav"
    assert abs(alignment_offset(res.matches[0]) - 6.0) <= 0.1
    # (Checked at the old content's alignment: a chance match elsewhere is the matcher's
    # false-positive rate, tested in test_match.py, not a left-over posting.)
    y_old, t_old = catalogue.excerpt("track03.wav", 10.0, 5.0)
    assert not [m for m in idx.match_audio(y_old, SR, FAST).matches
                if track_of(m) == "track03.wav" and abs(alignment_offset(m) - t_old) < 0.5]
    # The other two are untouched.
    for name in ("track01.wav", "track05.wav"):
        y, t0 = catalogue.excerpt(name, 10.0, 5.0)
        top = idx.match_audio(y, SR, FAST).matches[0]
        assert track_of(top) == name and abs(alignment_offset(top) - t0) <= 0.1


def test_a_file_name_that_is_not_utf8_is_listed_and_the_rest_indexed(catalogue, tmp_path):
    """Linux file names are bytes; the index keeps names as text, so such a file is one
    line among the failures, not an internal error that stops the run."""
    folder = tmp_path / "cat"
    copy_tracks(catalogue, ["track02.wav"], folder)
    bad = os.fsdecode(os.fsencode(str(folder)) + b"/caf\xe9.wav")
    shutil.copyfile(catalogue.path("track04.wav"), bad)
    with Index.open_writer(tmp_path / "idx") as w:
        report = w.add([folder], jobs=1)
    assert [Path(f).name for f in report.added] == ["track02.wav"]
    assert report.failed == [(bad, "file name is not valid UTF-8 (the index keeps names as "
                                   "text): rename the file")]


def test_jobs_1_and_jobs_2_build_identical_indexes(catalogue, tmp_path):
    names = ["track02.wav", "track04.wav", "track07.flac", "track08.ogg"]
    copy_tracks(catalogue, names, tmp_path / "cat")
    built = {}
    for jobs in (1, 2):
        ipath = tmp_path / f"idx-j{jobs}"
        with Index.open_writer(ipath) as w:
            report = w.add([tmp_path / "cat"], jobs=jobs)
        assert len(report.added) == 4 and not report.failed
        built[jobs] = Index.open(ipath)
    a, b = built[1], built[2]
    assert [(s["tracks"], s["frames"], s["postings"]) for s in a.manifest.segments] == \
           [(s["tracks"], s["frames"], s["postings"]) for s in b.manifest.segments]
    assert [(r.track_id, r.path, r.duration) for r in a.tracks()] == \
           [(r.track_id, r.path, r.duration) for r in b.tracks()]
    assert len(a.segments) == len(b.segments) >= 1
    for sa, sb in zip(a.segments, b.segments):
        for name, _dtype in store._ARRAY_ORDER:
            np.testing.assert_array_equal(np.asarray(getattr(sa, name)),
                                          np.asarray(getattr(sb, name)), err_msg=name)


def test_files_are_fingerprinted_longest_first(tmp_path):
    sizes = {"b.wav": 300, "a.wav": 300, "c.wav": 5000, "d.wav": 10}
    for name, n in sizes.items():
        (tmp_path / name).write_bytes(b"x" * n)
    paths = [str(tmp_path / n) for n in sorted(sizes)] + [str(tmp_path / "gone.wav")]
    order = [Path(p).name for p in catalogue_mod.longest_first(paths)]
    # Largest first, ties by path, a file that cannot be stat'ed last.
    assert order == ["c.wav", "a.wav", "b.wav", "d.wav", "gone.wav"]


def _blas_threads() -> list[int]:
    from threadpoolctl import threadpool_info

    return [lib["num_threads"] for lib in threadpool_info() if lib["user_api"] == "blas"]


_REAL_FINGERPRINT_JOB = catalogue_mod._fingerprint_job


def _job_noting_blas_threads(args):
    """``_fingerprint_job`` that appends the BLAS thread counts it ran with to a file
    (module level, so that a forked pool can pickle it by name)."""
    with open(os.environ["EARMARK_TEST_BLAS_LOG"], "a") as f:
        f.write(",".join(map(str, _blas_threads())) + "\n")
    return _REAL_FINGERPRINT_JOB(args)


@pytest.mark.parametrize("jobs", [1, 2])
def test_indexing_runs_blas_single_threaded_and_restores_it(catalogue, tmp_path, monkeypatch, jobs):
    # One process per core does the work; BLAS threads inside it only spin (earmark.threads).
    from threadpoolctl import threadpool_limits

    copy_tracks(catalogue, ["track01.wav", "track02.wav", "track03.wav"], tmp_path / "cat")
    log = tmp_path / "blas.log"
    monkeypatch.setenv("EARMARK_TEST_BLAS_LOG", str(log))
    monkeypatch.setattr(catalogue_mod, "_fingerprint_job", _job_noting_blas_threads)
    with threadpool_limits(limits=2, user_api="blas"):
        with Index.open_writer(tmp_path / "idx") as w:
            report = w.add([tmp_path / "cat"], jobs=jobs)
        assert set(_blas_threads()) == {2}            # the caller's setting is back
    assert len(report.added) == 3
    per_file = log.read_text().split()               # one line per file, one count per library
    assert len(per_file) == 3 and all(set(line.split(",")) == {"1"} for line in per_file), per_file


@pytest.mark.parametrize("failure", ["full disk", "ctrl-c"])
def test_interrupted_add_keeps_previous_content(catalogue, tmp_path, monkeypatch, failure):
    names = ["track01.wav", "track02.wav", "track03.wav"]
    copy_tracks(catalogue, names, tmp_path / "cat")
    ipath = tmp_path / "idx"
    monkeypatch.setattr(catalogue_mod, "FLUSH_SECONDS", 0.0)  # one commit per file
    real_write = store.write_segment
    calls = []

    def failing_write(path, arrays):
        calls.append(path)
        if len(calls) == 2:
            if failure == "full disk":
                raise OSError(errno.ENOSPC, "No space left on device")
            raise KeyboardInterrupt
        return real_write(path, arrays)

    monkeypatch.setattr(store, "write_segment", failing_write)
    with pytest.raises((OSError, EarmarkError, KeyboardInterrupt)):
        with Index.open_writer(ipath) as w:
            w.add([tmp_path / "cat"], jobs=1)
    monkeypatch.setattr(store, "write_segment", real_write)
    idx = Index.open(ipath)
    first = catalogue_mod.longest_first([str(tmp_path / "cat" / n) for n in names])[0]
    assert [r.path for r in idx.tracks()] == [first]   # the first commit, and only it
    assert_tracks_match_themselves(idx, catalogue)
    with Index.open_writer(ipath) as w:  # the lock was released; a re-run completes it
        report = w.add([tmp_path / "cat"], jobs=1)
    assert sorted(report.added) == sorted(str(tmp_path / "cat" / n) for n in names
                                          if str(tmp_path / "cat" / n) != first)
    idx = Index.open(ipath)
    assert sorted(track_of(r) for r in idx.tracks()) == names
    assert_tracks_match_themselves(idx, catalogue)


def test_second_writer_is_refused(index_copy):
    with Index.open_writer(index_copy):
        with pytest.raises(IndexError_, match="another process"):
            Index.open_writer(index_copy)
        Index.open(index_copy)  # readers never wait for the writer


# --------------------------------------------------------------------------- kill -9


KILL_SCRIPT = r"""
import os, signal, sys, time
import earmark.index.catalogue as cat
from earmark.index import store

folder, index_path, mode = sys.argv[1:4]
cat.FLUSH_SECONDS = 0.0            # commit a segment after every file


def die():
    os.kill(os.getpid(), signal.SIGKILL)


calls = {"n": 0}
if mode == "slow":                 # killed from outside at a random moment
    job = cat._fingerprint_job

    def slow_job(args):
        time.sleep(0.3)
        return job(args)

    cat._fingerprint_job = slow_job
elif mode == "segment-written":    # 2nd segment renamed into place, manifest not replaced
    write_manifest = store.write_manifest

    def wm(folder_, manifest):
        calls["n"] += 1
        if calls["n"] == 2:
            die()
        return write_manifest(folder_, manifest)

    store.write_manifest = wm
elif mode == "manifest-temp-written":   # 2nd manifest fsynced under its temporary name
    replace = os.replace

    def rep(src, dst):
        if os.path.basename(dst) == "manifest.json":
            calls["n"] += 1
            if calls["n"] == 2:
                die()
        return replace(src, dst)

    os.replace = rep
elif mode == "merge":              # merged segment written, its manifest never
    cat.MAX_SEGMENTS = 1
    merge = cat.Index.merge

    def merging(self):
        store.write_manifest = lambda *a: die()
        return merge(self)

    cat.Index.merge = merging

with cat.Index.open_writer(index_path) as idx:
    idx.add([folder], jobs=1)
print("DONE", flush=True)
"""


def _start_indexer(folder: Path, ipath: Path, mode: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-c", KILL_SCRIPT, str(folder), str(ipath), mode],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _check_after_crash(ipath: Path, files: list[Path], catalogue) -> list[str]:
    """The index opens, holds a prefix of the files in the order they are fingerprinted
    (longest first) and each live track matches."""
    idx = Index.open(ipath)
    live = [r.path for r in idx.tracks()]
    ordered = catalogue_mod.longest_first([str(f) for f in files])
    assert live == ordered[: len(live)], (live, ordered)
    assert idx.info()["tracks"] == len(live)
    assert_tracks_match_themselves(idx, catalogue)
    return live


def _complete_and_check(ipath: Path, folder: Path, files: list[Path], catalogue, live):
    with Index.open_writer(ipath) as w:
        report = w.add([folder], jobs=1)
    assert sorted(report.unchanged) == sorted(live)
    assert sorted(report.added) == sorted(set(str(f) for f in files) - set(live))
    assert not report.failed and not report.replaced
    idx = Index.open(ipath)
    paths = [r.path for r in idx.tracks()]
    assert sorted(paths) == sorted(str(f) for f in files)       # all there, no duplicates
    assert idx.meta.count() == len(files)                        # no stray metadata rows
    assert segment_files(ipath) == {s["file"] for s in idx.manifest.segments}  # swept
    assert not [p for p in ipath.iterdir() if p.name.endswith(".tmp")]
    assert_tracks_match_themselves(idx, catalogue)


@pytest.mark.parametrize("mode, n_live", [("segment-written", 1), ("manifest-temp-written", 1),
                                          ("merge", 3)])
def test_kill_9_at_commit_points(catalogue, tmp_path, mode, n_live):
    folder = tmp_path / "cat"
    files = list(copy_tracks(catalogue, ["track01.wav", "track02.wav", "track03.wav"],
                             folder).values())
    ipath = tmp_path / "idx"
    proc = _start_indexer(folder, ipath, mode)
    out, err = proc.communicate(timeout=300)
    assert proc.returncode == -signal.SIGKILL, (proc.returncode, out, err[-2000:])
    assert "DONE" not in out
    # The crash left debris behind (an unreferenced segment or manifest temporary) ...
    manifest = store.read_manifest(ipath)
    debris = (segment_files(ipath) - {s["file"] for s in manifest.segments}
              | {p.name for p in ipath.iterdir() if p.name.startswith(".manifest.json.")})
    assert debris, sorted(p.name for p in ipath.iterdir())
    # ... which readers ignore, and the next writer sweeps.
    live = _check_after_crash(ipath, files, catalogue)
    assert len(live) == n_live
    _complete_and_check(ipath, folder, files, catalogue, live)


def test_kill_9_at_random_moments_then_rerun_completes(catalogue, tmp_path):
    folder = tmp_path / "cat"
    files = list(copy_tracks(catalogue, catalogue.names, folder).values())
    ipath = tmp_path / "idx"
    rng = np.random.default_rng(2024)
    live: list[str] = []
    for round_ in range(3):
        before = len(live)
        proc = _start_indexer(folder, ipath, "slow")
        try:
            # Wait until this run has committed its first batch, then kill it at a
            # random moment during the following ones.
            deadline = time.monotonic() + 120
            while time.monotonic() < deadline and proc.poll() is None:
                m = store.read_manifest(ipath) if (ipath / "manifest.json").exists() else None
                if m is not None and len(m.live_track_ids()) > before:
                    break
                time.sleep(0.02)
            time.sleep(float(rng.uniform(0.0, 0.4)))
            proc.send_signal(signal.SIGKILL)
        finally:
            out, err = proc.communicate(timeout=60)
        assert proc.returncode == -signal.SIGKILL, (round_, proc.returncode, err[-2000:])
        live = _check_after_crash(ipath, files, catalogue)
        assert before < len(live) < len(files), (round_, before, len(live))
    _complete_and_check(ipath, folder, files, catalogue, live)


def test_find_audio_files_follows_symlinked_folders_once(tmp_path):
    """Symlinked folders are followed, but a link back up the tree (a loop) or a second
    link to the same folder lists nothing twice and terminates."""
    from earmark.index.catalogue import find_audio_files

    root = tmp_path / "catalogue"
    (root / "sub").mkdir(parents=True)
    (root / "a.wav").write_bytes(b"x")
    (root / "sub" / "b.flac").write_bytes(b"x")
    (root / "sub" / "notes.txt").write_text("not audio")
    (root / "sub" / "loop").symlink_to(root, target_is_directory=True)
    (root / "again").symlink_to(root / "sub", target_is_directory=True)
    outside = tmp_path / "elsewhere"
    outside.mkdir()
    (outside / "c.mp3").write_bytes(b"x")
    (root / "linked").symlink_to(outside, target_is_directory=True)
    files, problems = find_audio_files([root])
    names = sorted(os.path.basename(f) for f in files)
    assert names == ["a.wav", "b.flac", "c.mp3"] and problems == []
