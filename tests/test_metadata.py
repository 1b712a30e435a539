"""Tests for earmark.index.metadata: the SQLite track store, user CSV, embedded tags."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from earmark.errors import IndexError_, MetadataError
from earmark.evidence import Reference
from earmark.index.metadata import SCHEMA_VERSION, MetadataStore, read_tags


@pytest.fixture
def store(tmp_path):
    s = MetadataStore(tmp_path / "idx" / "metadata.sqlite")
    yield s
    s.close()


def _add(store, path, h="00" * 16, duration=10.0, **tags):
    return store.add_track(str(path), h, duration, tags)


# --------------------------------------------------------------------------- store


def test_add_get_round_trip(store):
    tid = store.add_track("/music/a.flac", "ab" * 16, 201.25,
                          {"title": "Alpha", "artist": "Ann", "isrc": "USRC17607839",
                           "rights_holder": "Big Label", "label_code": "LC 1234"})
    ref = store.get(tid)
    assert ref == Reference(track_id=tid, path="/music/a.flac", duration=201.25,
                            title="Alpha", artist="Ann", isrc="USRC17607839",
                            rights_holder="Big Label", extra={"label_code": "LC 1234"})
    assert store.get(tid + 100) is None
    assert store.find_by_path("/music/a.flac") == (tid, "ab" * 16)
    assert store.find_by_path(Path("/music/a.flac")) == (tid, "ab" * 16)
    assert store.find_by_path("/music/b.flac") is None
    assert store.count() == 1
    assert store.total_duration() == pytest.approx(201.25)


def test_missing_tags_are_none(store):
    tid = store.add_track("x.wav", "cd" * 16, 3.0, {"title": "", "artist": "  "})
    ref = store.get(tid)
    assert ref.title is None and ref.artist is None and ref.extra == {}
    assert ref.label() == "x.wav"


def test_get_many_find_by_hash_all_tracks(store):
    ids = [_add(store, f"/m/{i}.wav", h=("dup" if i % 2 else f"{i:032x}"), duration=i)
           for i in range(1, 6)]
    refs = store.get_many(ids[:3] + [999])
    assert sorted(refs) == ids[:3]
    assert all(refs[i].track_id == i for i in refs)
    assert store.find_by_hash("dup") == [ids[0], ids[2], ids[4]]
    assert store.find_by_hash("nothing") == []
    assert [r.track_id for r in store.all_tracks()] == ids
    assert store.total_duration() == pytest.approx(15.0)
    assert store.get_many([]) == {}


def test_get_many_large(store):
    with store.transaction():
        ids = [_add(store, f"/m/{i}.wav") for i in range(1200)]
    assert len(store.get_many(ids)) == 1200  # more ids than SQLite bound parameters


def test_remove_and_ids_never_reused(tmp_path):
    db = tmp_path / "m.sqlite"
    with MetadataStore(db) as s:
        a = _add(s, "a.wav")
        b = _add(s, "b.wav")
        s.remove([b])
        assert s.get(b) is None and s.count() == 1
        c = _add(s, "b.wav")  # same path may be re-added after removal
        assert c > b
        s.remove(c)  # a single id is accepted too
        s.remove([12345])  # unknown ids are ignored
    with MetadataStore(db) as s:  # AUTOINCREMENT survives reopening
        d = _add(s, "d.wav")
        assert d > c > b > a
        assert [r.track_id for r in s.all_tracks()] == [a, d]


def test_duplicate_path_refused(store):
    _add(store, "a.wav")
    with pytest.raises(IndexError_, match="already in the index"):
        _add(store, "a.wav")
    assert store.count() == 1


def test_transaction_is_atomic(store):
    keep = _add(store, "keep.wav")
    with pytest.raises(RuntimeError):
        with store.transaction():
            store.remove([keep])
            _add(store, "new.wav")
            with store.transaction():  # nested joins the outer one
                _add(store, "nested.wav")
            raise RuntimeError("segment manifest failed")
    assert [r.path for r in store.all_tracks()] == ["keep.wav"]
    with store.transaction():
        _add(store, "new.wav")
        _add(store, "nested.wav")
    assert store.count() == 3


def test_wal_and_readonly(tmp_path):
    db = tmp_path / "m.sqlite"
    with MetadataStore(db) as s:
        tid = _add(s, "a.wav", title="A")
        mode = s._conn.execute("PRAGMA journal_mode").fetchone()[0]
        assert mode.lower() == "wal"
        with MetadataStore(db, readonly=True) as r:  # concurrent reader
            assert r.get(tid).title == "A"
    with MetadataStore(db, readonly=True) as r:
        assert r.count() == 1
        with pytest.raises(IndexError_, match="read-only"):
            _add(r, "b.wav")
    with pytest.raises(IndexError_, match="not found"):
        MetadataStore(tmp_path / "missing.sqlite", readonly=True)


def test_newer_schema_refused(tmp_path):
    db = tmp_path / "m.sqlite"
    MetadataStore(db).close()
    con = sqlite3.connect(db)
    con.execute("UPDATE schema_version SET version = ?", (SCHEMA_VERSION + 1,))
    con.commit()
    con.close()
    for readonly in (False, True):
        with pytest.raises(IndexError_) as info:
            MetadataStore(db, readonly=readonly)
        msg = str(info.value)
        assert "newer" in msg and str(SCHEMA_VERSION + 1) in msg and "\n" not in msg


def test_not_a_database(tmp_path):
    junk = tmp_path / "junk.sqlite"
    junk.write_bytes(b"this is not sqlite" * 100)
    with pytest.raises(IndexError_, match="junk.sqlite"):
        MetadataStore(junk)
    other = tmp_path / "other.sqlite"
    con = sqlite3.connect(other)
    con.execute("CREATE TABLE foo (x)")
    con.commit()
    con.close()
    with pytest.raises(IndexError_, match="not an Earmark metadata database"):
        MetadataStore(other)


# --------------------------------------------------------------------------- CSV


def _write_csv(path: Path, text: str) -> Path:
    path.write_text(text, encoding="utf-8")
    return path


def test_apply_csv(tmp_path, store):
    music = tmp_path / "music"
    music.mkdir()
    a = _add(store, music / "a.flac", title="from tags")
    b = _add(store, music / "sub" / "b.flac")
    c = _add(store, "/elsewhere/unique_name.mp3")
    d = _add(store, "/x/dup.wav")
    _add(store, "/y/dup.wav")
    hostile = "<script>alert('x')</script>; DROP TABLE tracks;--"
    csv_path = _write_csv(tmp_path / "tracks.csv", (
        "\ufeffPath , Title,artist,ISRC,rights_holder,label,notes\n"
        f"music/a.flac,Ålpha 東京,Ann,USRC17607839,Big Label,L1,\"multi, comma\"\n"
        f"{music / 'sub' / 'b.flac'},\"{hostile.replace(chr(34), chr(34) * 2)}\",,,,,\n"
        "some/other/dir/unique_name.mp3,,Cee,,,,emoji 🎵\n"
        "dup.wav,Ambiguous,,,,,\n"
        "\n"
        "not/in/store.wav,Ghost,,,,,\n"
    ))
    assert store.apply_csv(csv_path) == 3

    ra = store.get(a)
    assert (ra.title, ra.artist, ra.isrc, ra.rights_holder) == \
        ("Ålpha 東京", "Ann", "USRC17607839", "Big Label")
    assert ra.extra == {"label": "L1", "notes": "multi, comma"}
    rb = store.get(b)
    assert rb.title == hostile and rb.extra == {}  # stored verbatim, no escaping
    rc = store.get(c)
    assert rc.artist == "Cee" and rc.title is None and rc.extra == {"notes": "emoji 🎵"}
    assert store.get(d).title is None  # file name shared by two tracks: not applied
    assert store.count() == 5  # the hostile string did nothing to the schema


def test_apply_csv_keeps_values_for_empty_cells(tmp_path, store):
    tid = _add(store, tmp_path / "a.wav", title="Kept", label="old")
    csv_path = _write_csv(tmp_path / "m.csv", "path,title,artist,label\na.wav,,New,new\n")
    assert store.apply_csv(csv_path) == 1
    ref = store.get(tid)
    assert ref.title == "Kept" and ref.artist == "New" and ref.extra == {"label": "new"}


@pytest.mark.parametrize("text, match", [
    ("title,artist\nA,B\n", "no 'path' column"),
    ("", "empty"),
    ("path,title\na.wav,\"unterminated\n", "malformed"),
    ("path,title\na.wav,\"x\"y\n", "malformed"),
    ("path,title\na.wav,A,extra,fields\n", "line 2"),
    ("path,title,title\na.wav,A,B\n", "duplicate"),
    ("path,title\n,A\n", "empty 'path'"),
])
def test_malformed_csv(tmp_path, store, text, match):
    tid = _add(store, tmp_path / "a.wav")
    csv_path = _write_csv(tmp_path / "bad.csv", text)
    with pytest.raises(MetadataError, match=match) as info:
        store.apply_csv(csv_path)
    assert "bad.csv" in str(info.value) and "\n" not in str(info.value)
    assert store.get(tid).title is None  # nothing half-applied


def test_csv_not_utf8_or_missing(tmp_path, store):
    p = tmp_path / "latin1.csv"
    p.write_bytes("path,title\na.wav,caf\xe9\n".encode("latin-1"))
    with pytest.raises(MetadataError, match="UTF-8"):
        store.apply_csv(p)
    with pytest.raises(MetadataError, match="not found"):
        store.apply_csv(tmp_path / "nope.csv")


# --------------------------------------------------------------------------- read_tags


def test_read_tags_flac(tmp_path):
    from mutagen.flac import FLAC

    p = tmp_path / "tagged.flac"
    t = np.arange(8000) / 8000
    sf.write(p, (0.3 * np.sin(2 * np.pi * 440 * t)).astype(np.float32), 8000)
    f = FLAC(p)
    f["title"] = "Ålpha <b>"
    f["artist"] = "Ann"
    f["isrc"] = "USRC17607839"
    f["copyright"] = "(c) 2024 Someone"
    f["organization"] = "Big Label"
    f.save()
    assert read_tags(p) == {"title": "Ålpha <b>", "artist": "Ann", "isrc": "USRC17607839",
                            "rights_holder": "Big Label"}
    del f["organization"]
    f.save()
    assert read_tags(p)["rights_holder"] == "(c) 2024 Someone"


def test_read_tags_mp3_id3(tmp_path):
    from mutagen.easyid3 import EasyID3

    p = tmp_path / "tagged.mp3"
    sf.write(p, np.zeros(8000, np.float32), 8000)  # libsndfile writes MP3 (LAME) files
    tags = EasyID3()
    tags["title"] = "Beta"
    tags["isrc"] = "GBAYE0000351"
    tags.save(p)
    assert read_tags(p) == {"title": "Beta", "isrc": "GBAYE0000351"}


def test_read_tags_never_raises(tmp_path):
    corrupt = tmp_path / "corrupt.flac"
    corrupt.write_bytes(b"fLaC" + np.random.default_rng(0).bytes(4000))
    assert read_tags(corrupt) == {}
    untagged = tmp_path / "plain.wav"
    sf.write(untagged, np.zeros(800, np.float32), 8000)
    assert read_tags(untagged) == {}
    assert read_tags(tmp_path / "missing.mp3") == {}
    assert read_tags(tmp_path) == {}
    (tmp_path / "empty.ogg").touch()
    assert read_tags(tmp_path / "empty.ogg") == {}
