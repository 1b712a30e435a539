"""The recording tier (hash segments) and the derivation tier (FAISS files) stay one index:
written, removed, merged and crash-recovered together."""

from __future__ import annotations

import json

import numpy as np
import pytest

from earmark.index import store
from earmark.index.catalogue import Index
from earmark.index.derivation import DerivationStore

from conftest import track_of


def _tiers(path):
    manifest = json.loads((path / "manifest.json").read_text())
    return manifest, [s.get("derivation") for s in manifest["segments"]]


def test_every_segment_has_a_derivation_twin_with_the_same_tracks(built_index):
    manifest, names = _tiers(built_index.path)
    assert names and all(names)
    for seg, name in zip(manifest["segments"], names):
        assert (built_index.path / name).is_file()
        drv = DerivationStore.open(built_index.path, [name])
        assert drv.track_ids == set(seg["tracks"])
        assert drv.n_vectors > 0
        # both views are stored: the whole-mix chroma and the melody (top line)
        assert all(np.any(np.asarray(s.melody) != 0) for s in drv.segments)


def test_remove_takes_a_recording_out_of_both_tiers(index_copy, catalogue):
    excerpt, _ = catalogue.excerpt("track03.wav", 6.0, 8.0)
    before = Index.open(index_copy).match_audio(excerpt, catalogue.sr)
    assert [track_of(m) for m in before.matches][:1] == ["track03.wav"]
    with Index.open_writer(index_copy) as w:
        removed, _missing = w.remove([catalogue.folder / "track03.wav"])
    assert removed
    idx = Index.open(index_copy)
    tid = before.matches[0].reference.track_id
    assert tid not in idx.derivation_store.track_ids
    after = idx.match_audio(excerpt, catalogue.sr)
    assert all(m.reference.track_id != tid for m in after.matches), after.matches
    # After a merge the removed track is gone physically from both tiers too.
    with Index.open_writer(index_copy) as w:
        w.merge()
    manifest, names = _tiers(index_copy)
    assert len(names) == 1
    drv = DerivationStore.open(index_copy, names)
    assert tid not in drv.track_ids
    assert drv.track_ids == set(manifest["segments"][0]["tracks"])


def test_crash_before_the_manifest_leaves_both_tiers_as_they_were(index_copy, catalogue,
                                                                  tmp_path, monkeypatch):
    from earmark.synth import synth_song
    import soundfile as sf

    manifest_before, names_before = _tiers(index_copy)
    new = tmp_path / "new.wav"
    sf.write(new, synth_song(seed=4242, seconds=20.0, sr=catalogue.sr), catalogue.sr)

    def crash(*_a, **_k):
        raise OSError("simulated crash before the commit point")

    monkeypatch.setattr(store, "write_manifest", crash)
    with pytest.raises(OSError):
        with Index.open_writer(index_copy) as w:
            w.add([new], jobs=1)
    monkeypatch.undo()
    # Readers see the previous generation, both tiers.
    assert _tiers(index_copy) == (manifest_before, names_before)
    idx = Index.open(index_copy)
    assert idx.derivation_store.track_ids == set(manifest_before["segments"][0]["tracks"]) | {
        t for s in manifest_before["segments"][1:] for t in s["tracks"]}
    # The next writer sweeps the orphans of both tiers and completes the work.
    with Index.open_writer(index_copy) as w:
        report = w.add([new], jobs=1)
    assert report.added == [str(new)]
    manifest, names = _tiers(index_copy)
    on_disk = {p.name for p in index_copy.iterdir() if p.name.startswith(("seg-", ".seg-"))}
    assert on_disk == {s["file"] for s in manifest["segments"]} | set(names)
    idx = Index.open(index_copy)
    assert idx.derivation_store.track_ids == {t for s in manifest["segments"] for t in s["tracks"]}
    y = synth_song(seed=4242, seconds=20.0, sr=catalogue.sr)[5 * catalogue.sr: 12 * catalogue.sr]
    assert [track_of(m) for m in idx.match_audio(np.asarray(y), catalogue.sr).matches][:1] == ["new.wav"]
