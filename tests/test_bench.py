"""Tests of the benchmark's own logic: the scorer on hand-made results with known answers,
the summaries, the report writers, a ``quick`` run on a tiny synthetic catalogue, and the
synthetic scale index."""

from __future__ import annotations

import dataclasses
import json
import math
import os

import numpy as np
import pytest
import soundfile as sf

from earmark.bench import report, runner, scale
from earmark.bench.runner import QuerySpec, score_peer_match, score_result, summarise
from earmark.evidence import Match, QueryResult, Reference
from earmark.synth import synth_song

CAT = "/cat/a.wav"
OTHER = "/cat/b.wav"


def _match(path: str, ref_start: float, q_start: float = 0.0, speed: float = 1.0,
           pitch: float = 0.0, score: int = 50, sig: float = 40.0) -> Match:
    return Match(reference=Reference(track_id=1, path=path), score=score, significance=sig,
                 query_start=q_start, query_end=q_start + 5.0, reference_start=ref_start,
                 reference_end=ref_start + 5.0 * speed, coverage=0.5, speed=speed,
                 pitch_semitones=pitch)


def _spec(qid: str, kind: str = "positive", transform: str = "clean_10s", offset: float = 30.0,
          speed: float = 1.0, pitch: float = 0.0, embed: float = 0.0, embeds: bool = False,
          family: str = "clean") -> QuerySpec:
    return QuerySpec(qid=qid, kind=kind, transform=transform, family=family,
                     source=CAT if kind != "negative" else "/neg/x.wav", offset=offset,
                     excerpt_seconds=10.0, seed=0, reference=CAT if kind != "negative" else None,
                     speed=speed, pitch=pitch, embed_offset=embed, embeds=embeds, duration=10.0)


def _res(qid: str, *matches: Match, elapsed: float = 0.01) -> QueryResult:
    return QueryResult(query=qid, duration=10.0, matches=tuple(matches), elapsed=elapsed)


def test_scorer_known_answers():
    cases = [
        # exact hit at the right offset (query starts 2 s in: ref 32 s at query 2 s)
        (_spec("a"), _res("a", _match(CAT, 32.0, q_start=2.0))),
        # hit, offset 0.5 s off
        (_spec("b"), _res("b", _match(CAT, 30.5))),
        # wrong track on top, right one second
        (_spec("c"), _res("c", _match(OTHER, 10.0), _match(CAT, 30.0))),
        # nothing found
        (_spec("d"), _res("d")),
    ]
    recs = [score_result(s, r) for s, r in cases]
    assert [r["hit"] for r in recs] == [True, True, False, False]
    assert [r["wrong"] for r in recs] == [False, False, True, False]
    assert recs[0]["offset_ok"] is True and abs(recs[0]["offset_err"]) < 1e-9
    assert recs[1]["offset_ok"] is False and recs[1]["offset_err"] == pytest.approx(0.5)
    row = summarise(recs)["accuracy"]["earmark"]["clean_10s"]
    assert row["n"] == 4 and row["hits"] == 2
    assert row["hit_at_1"] == pytest.approx(0.5)
    assert row["offset_ok"] == pytest.approx(0.5)
    assert row["wrong"] == 1


def test_scorer_speed_pitch_embed_and_negatives():
    # speed 1.25: the excerpt starts at 40 s of the reference; the aligned segment starts 1 s
    # into the query, i.e. 1.25 s later in the reference.
    s1 = _spec("s", transform="speed_1.25", family="speed", offset=40.0, speed=1.25,
               pitch=12 * math.log2(1.25))
    r1 = score_result(s1, _res("s", _match(CAT, 41.25, q_start=1.0, speed=1.26, pitch=3.7)))
    assert r1["hit"] and r1["offset_ok"]
    assert r1["speed_err"] == pytest.approx(0.008)
    assert r1["pitch_err"] == pytest.approx(abs(3.7 - 12 * math.log2(1.25)))
    # embed: excerpt at 12 s of a 30 s query, from 50 s of the reference
    s2 = _spec("e", transform="embed_5s_in_30s", family="embed", offset=50.0, embed=12.0,
               embeds=True)
    good = score_result(s2, _res("e", _match(CAT, 50.3, q_start=12.3)))
    late = score_result(s2, _res("e", _match(CAT, 51.0, q_start=13.0)))
    assert good["offset_ok"] and good["located_ok"]
    assert late["offset_ok"] and late["located_ok"] is False
    # negatives: any match is a false positive
    n1 = score_result(_spec("n1", kind="negative", family="music"), _res("n1"))
    n2 = score_result(_spec("n2", kind="negative", family="music"), _res("n2", _match(OTHER, 3.0, sig=12.0)))
    n3 = score_result(_spec("n3", kind="negative", family="silence"),
                      QueryResult(query="n3", duration=10.0, error="silent"))
    summ = summarise([r1, good, late, n1, n2, n3])
    neg = summ["negatives"]["earmark"]
    assert neg["n"] == 3 and neg["false_positives"] == 1
    assert neg["fp_rate"] == pytest.approx(1 / 3)
    assert neg["by_family"]["music"] == {"n": 2, "false_positives": 1}
    assert neg["max_fp_significance"] == pytest.approx(12.0)
    emb = summ["accuracy"]["earmark"]["embed_5s_in_30s"]
    assert emb["hit_at_1"] == 1.0 and emb["located_ok"] == pytest.approx(0.5)
    assert summ["accuracy"]["earmark"]["speed_1.25"]["speed_within_1pct"] == 1.0


def test_hits_through_audio_verification_are_counted_and_reported():
    """A top match that passed on the audio (its ``verified`` check) is recorded with the
    check, counted per row among the hits, and named in the report; a verified match of
    the wrong recording is not a hit and is not counted."""
    from earmark.evidence import AudioCheck

    check = AudioCheck(correlation=0.3, peaks=0.4, peaks_z=12.5)
    s = _spec("v", transform="mix_0db", family="mix")
    verified = score_result(s, _res("v", dataclasses.replace(_match(CAT, 30.0, score=8, sig=7.0),
                                                             verified=check)))
    plain = score_result(_spec("p", transform="mix_0db", family="mix"), _res("p", _match(CAT, 30.0)))
    wrong = score_result(_spec("w", transform="mix_0db", family="mix"),
                         _res("w", dataclasses.replace(_match(OTHER, 3.0), verified=check)))
    assert verified["hit"] and verified["verified"] == check.to_dict()
    assert plain["hit"] and plain["verified"] is None and not wrong["hit"]
    doc = summarise([verified, plain, wrong])
    assert doc["accuracy"]["earmark"]["mix_0db"]["verified"] == 1
    md = report.render_markdown(doc)
    assert "Hits through audio verification" in md and "mix_0db 1" in md
    doc["accuracy"]["earmark"]["mix_0db"]["verified"] = 0
    assert "Hits through audio verification" not in report.render_markdown(doc)


def test_repeat_aware_offset(tmp_path):
    """A looped reference: an answer at the other copy of the section is accepted, but only
    where the audio really repeats."""
    sr = 8000
    part = synth_song(5, seconds=12.0, sr=sr)
    other = synth_song(6, seconds=12.0, sr=sr)
    y = np.concatenate([part, other, part]).astype(np.float32)
    path = tmp_path / "loop.wav"
    sf.write(path, y, sr)
    assert runner.repeated_section(str(path), 1.0, 25.0, 8.0)        # 1 s into copy 1 == 25 s
    assert runner.repeated_section(str(path), 1.0, 25.06, 8.0)       # within 0.1 s
    assert not runner.repeated_section(str(path), 1.0, 13.0, 8.0)    # different music
    spec = QuerySpec(qid="l", kind="positive", transform="clean_10s", family="clean",
                     source=str(path), reference=str(path), offset=1.0, excerpt_seconds=8.0,
                     seed=0, duration=8.0)
    rec = score_result(spec, _res("l", Match(Reference(1, str(path)), 40, 30.0, 0.0, 8.0, 25.0,
                                             33.0, 1.0)), alias_check=runner.repeated_section)
    assert rec["hit"] and rec["offset_ok"] and rec["offset_repeat"] and not rec["offset_exact"]


def test_another_master_of_the_recording_counts_as_a_hit(tmp_path):
    """Two masters of one recording (a remaster: filtered, quieter, shifted by 0.05 s): a top
    match on the other master is right for Earmark and peers alike; on different music it
    is wrong, and so is the other master at a different place."""
    from scipy.signal import lfilter

    from earmark.bench.peers import PeerMatch

    sr = 8000
    y = np.concatenate([synth_song(5, seconds=12.0, sr=sr), synth_song(7, seconds=12.0, sr=sr)])
    remaster = 0.5 * lfilter([0.6, 0.3, 0.1], [1.0, -0.2], np.concatenate([np.zeros(400), y]))
    paths = {n: str(tmp_path / f"{n}.wav") for n in ("orig", "remaster", "other")}
    sf.write(paths["orig"], y, sr)
    sf.write(paths["remaster"], remaster.astype(np.float32), sr)
    sf.write(paths["other"], synth_song(6, seconds=24.0, sr=sr), sr)
    spec = QuerySpec(qid="m", kind="positive", transform="mp3_64k", family="codec",
                     source=paths["orig"], reference=paths["orig"], offset=2.0,
                     excerpt_seconds=8.0, seed=0, duration=8.0)

    def top(path: str, ref_start: float) -> QueryResult:
        return _res("m", Match(Reference(2, path), 40, 30.0, 0.0, 8.0, ref_start,
                               ref_start + 8.0, 1.0))

    rec = score_result(spec, top(paths["remaster"], 2.05), master_check=runner.same_recording)
    assert rec["hit"] and rec["other_master"] and rec["offset_ok"] and not rec["wrong"]
    for path, at in ((paths["other"], 2.0), (paths["remaster"], 14.05)):
        rec = score_result(spec, top(path, at), master_check=runner.same_recording)
        assert rec["wrong"] and not rec["hit"] and rec["other_master"] is False
    assert score_result(spec, top(paths["remaster"], 2.05))["wrong"]   # no check: strict
    peer = score_peer_match(spec, PeerMatch("m", paths["remaster"], 2.05, 30.0), "peer",
                            master_check=runner.same_recording)
    assert peer["hit"] and peer["other_master"]


def test_peer_scoring():
    from earmark.bench.peers import PeerMatch

    s = _spec("p", offset=20.0)
    assert score_peer_match(s, PeerMatch("p", CAT, 20.05, 30.0), "peer")["offset_ok"]
    assert not score_peer_match(s, PeerMatch("p", CAT, 25.0, 30.0), "peer")["offset_ok"]
    assert score_peer_match(s, PeerMatch("p", OTHER, 20.0, 30.0), "peer")["wrong"]
    n = _spec("n", kind="negative")
    assert score_peer_match(n, PeerMatch("n", None, None, 0.0), "peer")["false_positive"] is False
    assert score_peer_match(n, PeerMatch("n", OTHER, 1.0, 9.0), "peer")["false_positive"] is True


def test_targets_judge_default_rows_only():
    """Extended transforms (here a speed that glides, whose mean is not its local speed,
    and a room where the peer does better) appear in the tables but never in a target."""
    row = {"n": 60, "hits": 60, "hit_at_1": 1.0, "offset_ok": 1.0, "speed_within_1pct": 1.0,
           "pitch_within_025": 1.0}
    doc = {"accuracy": {"earmark": {"speed_1.1": row,
                                    "speed_drift_+6": dict(row, speed_within_1pct=0.5),
                                    "reverb_heavy": dict(row, hit_at_1=0.05)},
                        "audfprint": {"speed_1.1": {"hit_at_1": 0.2},
                                      "reverb_heavy": {"hit_at_1": 0.4}}},
           "peers": {"audfprint": {}}}
    t = {x["target"]: x for x in report.evaluate_targets(doc)}
    assert t["speed estimate within 1 % (hits of speed/tempo/pitch rows)"]["value"] == 1.0
    assert t["higher hit@1 on every row"]["value"] == "1/1"
    assert t["higher hit@1 on every row"]["pass"] is True
    doc["accuracy"]["earmark"]["speed_1.1"] = dict(row, speed_within_1pct=0.5)
    t = {x["target"]: x for x in report.evaluate_targets(doc)}
    assert t["speed estimate within 1 % (hits of speed/tempo/pitch rows)"]["pass"] is False


def test_matching_speed_against_a_peer_is_cpu_against_cpu():
    """The peer's CPU per query is set against Earmark's CPU (its voting threads count),
    not its wall time; a document from before CPU was recorded falls back to wall time."""
    doc = {"latency": {"earmark": {"mean_ms": 10.0, "mean_cpu_ms": 16.0}},
           "peers": {"audfprint": {"match": {"per_query_cpu_ms": 64.0}}}}
    t = {x["target"]: x for x in report.evaluate_targets(doc)}
    row = t["matching speed per query (CPU time, default search)"]
    assert row["value"] == pytest.approx(4.0) and row["pass"] is False
    del doc["latency"]["earmark"]["mean_cpu_ms"]
    t = {x["target"]: x for x in report.evaluate_targets(doc)}
    assert t["matching speed per query (CPU time, default search)"]["value"] == pytest.approx(6.4)


def test_targets_and_compare():
    doc = {"accuracy": {"earmark": {"clean_5s": {"n": 60, "hits": 60, "hit_at_1": 1.0, "offset_ok": 1.0},
                                    "mix_0db": {"n": 60, "hits": 50, "hit_at_1": 50 / 60, "offset_ok": 0.9}}},
           "negatives": {"earmark": {"n": 220, "false_positives": 0}},
           "index": {"bytes_per_audio_second": 140.0}}
    t = {x["target"]: x for x in report.evaluate_targets(doc)}
    assert t["hit@1 clean_5s"]["pass"] is True
    assert t["hit@1 mix_0db"]["pass"] is False
    assert t["false positives on 220 negatives"]["pass"] is True
    assert t["index bytes per audio second"]["pass"] is True
    v = t["reference offset within 0.1 s (hits of engine rows)"]["value"]
    assert v == pytest.approx((60 * 1.0 + 50 * 0.9) / 110)
    after = json.loads(json.dumps(doc))
    after["accuracy"]["earmark"]["mix_0db"]["hit_at_1"] = 0.95
    c = report.compare_results(doc, after)
    row = [r for r in c["transforms"] if r["transform"] == "mix_0db" and r["system"] == "earmark"][0]
    assert row["delta"] == pytest.approx(0.95 - 50 / 60)
    assert "mix_0db" in report.render_markdown(dict(after, compare=c))


def test_presets_are_matched_in_alternating_blocks(tmp_path):
    """The latency ratio of two presets is measured under the same load: blocks of
    queries are matched with one preset and then the other, the preset that starts a
    block alternating; each result is filed under its own preset, and a query the
    matcher rejects is an error of that preset only."""
    from earmark.errors import AudioError

    specs = []
    for i in range(5):
        path = tmp_path / f"q{i}.wav"
        sf.write(path, np.zeros(800, np.float32), 8000)
        specs.append(dataclasses.replace(_spec(f"q{i}"), path=str(path)))
    calls = []

    class FakeIndex:
        def match_audio(self, y, sr, mcfg, label):
            calls.append((label, mcfg))
            if label == "q3" and mcfg == "fast":
                raise AudioError("q3: too short")
            return QueryResult(query=f"{label}/{mcfg}", duration=len(y) / sr)

    ticks = []
    default, fast = runner._match_interleaved(FakeIndex(), specs, ["default", "fast"], "match",
                                              lambda stage, done, total: ticks.append(done),
                                              block=2)
    assert calls == [("q0", "default"), ("q1", "default"), ("q0", "fast"), ("q1", "fast"),
                     ("q2", "fast"), ("q3", "fast"), ("q2", "default"), ("q3", "default"),
                     ("q4", "default"), ("q4", "fast")]
    assert [default[f"q{i}"].query for i in range(5)] == [f"q{i}/default" for i in range(5)]
    assert [fast[f"q{i}"].query for i in (0, 1, 2, 4)] == [f"q{i}/fast" for i in (0, 1, 2, 4)]
    assert fast["q3"].error == "q3: too short" and default["q3"].error is None
    assert ticks == [2, 4, 5]


def test_quick_run_on_synthetic_catalogue(tmp_path):
    cat = tmp_path / "cat"
    neg = tmp_path / "neg"
    cat.mkdir()
    neg.mkdir()
    for i in range(6):
        sf.write(cat / f"song{i}.wav", synth_song(100 + i, seconds=20.0 + 2 * i, sr=22050), 22050)
    for i in range(3):
        sf.write(neg / f"other{i}.wav", synth_song(900 + i, seconds=24.0, sr=22050), 22050)
    out = tmp_path / "out"
    doc = runner.run_bench(cat, neg, out, quick=True, seed=3,
                           transforms=["clean_10s", "speed_1.1", "embed_5s_in_30s", "wow_flutter"],
                           n_queries=3,
                           jobs=2, progress=False, n_negatives=8, cli_queries=1)
    for name in ("results.json", "results.md", "queries.jsonl", "hit_at_1.png", "scores.png",
                 "latency.png"):
        assert (out / name).is_file() and (out / name).stat().st_size > 0, name
    loaded = json.loads((out / "results.json").read_text())
    for key in ("schema_version", "machine", "corpus", "indexing", "index", "queries", "accuracy",
                "negatives", "latency", "scores", "self_query", "compilations", "cli", "memory",
                "targets", "timings", "systems"):
        assert key in loaded, key
    assert loaded["schema_version"] == report.SCHEMA_VERSION == runner.SCHEMA_VERSION
    assert loaded["queries"]["n_positive"] == 12 and loaded["queries"]["n_negative"] == 8
    acc = loaded["accuracy"]["earmark"]
    assert set(acc) == {"clean_10s", "speed_1.1", "embed_5s_in_30s", "wow_flutter"}
    assert acc["wow_flutter"]["hit_at_1"] >= 2 / 3     # an extended transform, by name
    assert acc["clean_10s"]["hit_at_1"] == 1.0 and acc["clean_10s"]["offset_ok"] == 1.0
    assert acc["speed_1.1"]["hit_at_1"] >= 2 / 3
    assert loaded["self_query"]["windows"]["earmark"]["hit_at_1"] == 1.0
    # Compilations: five recordings back to back (and negative music); each use found.
    comp = loaded["compilations"]
    assert comp["n_queries"] == 2 and comp["uses"] == 10, comp
    assert comp["found"] == 10 and comp["wrong"] == 0, comp["per_query"]
    assert "## Compilations" in (out / "results.md").read_text()
    assert loaded["indexing"]["runs"][0]["jobs"] == 1 and loaded["indexing"]["runs"][1]["jobs"] == 2
    assert loaded["indexing"]["runs"][0]["landmarks"] == loaded["indexing"]["runs"][1]["landmarks"]
    assert loaded["indexing"]["decode_only"]["x_realtime"] > 0
    # CPU per query: the whole process's, at least what one thread spends in the wall time.
    lat = loaded["latency"]["earmark"]
    assert lat["mean_cpu_ms"] > 0 and lat["mean_cpu_ms"] >= 0.5 * lat["mean_ms"]
    # The warm-up read every catalogue file whole before the timed runs.
    assert loaded["indexing"]["warmup"]["read_bytes"] == sum(f.stat().st_size for f in cat.iterdir())
    assert "The timed runs follow a warm-up" in (out / "results.md").read_text()
    assert set(loaded["indexing"]["stages"]["seconds"]) == {"decode", "resample", "spectrogram",
                                                              "peaks", "hashing", "store"}
    assert loaded["index"]["bytes_per_audio_second"] > 0
    assert "Accuracy per transform" in (out / "results.md").read_text()
    n_lines = sum(1 for _ in open(out / "queries.jsonl"))
    assert n_lines == 2 * (12 + 8 + 6)   # two systems x (positives + negatives + self windows)
    # The same seed plans the same queries (offsets recorded in queries.jsonl).
    from earmark.bench.transforms import get_transforms
    from earmark.index.catalogue import find_audio_files

    recs = {r["qid"]: r for r in map(json.loads, open(out / "queries.jsonl"))
            if r["system"] == "earmark"}
    files, _ = find_audio_files([cat])
    again = runner.plan_queries(runner._durations(files), [], get_transforms(["clean_10s"]), 3, 0, 0,
                                seed=3)
    for s in again:
        assert recs[s.qid]["true_offset"] == pytest.approx(s.offset)
        assert recs[s.qid]["reference"] == s.reference
    first = sf.read(out / "queries" / "clean_10s-000.wav")[0]
    assert first.shape[0] == 22050 * 10


def test_scale_synthetic_index(tmp_path):
    """The synthetic scale index opens, matches real queries of its seed tracks and reports
    the expected sizes."""
    doc = scale.run_scale(tmp_path / "scale", tracks=400, steps=(100, 400), seed=1,
                          track_seconds=30.0, n_real_tracks=4, n_queries=4, n_negatives=4,
                          progress=False)
    assert [s["tracks"] for s in doc["steps"]] == [100, 400]
    assert doc["steps"][1]["postings"] > doc["steps"][0]["postings"]
    assert doc["steps"][-1]["hit_at_1_default"] == 1.0
    assert (tmp_path / "scale" / "scale.json").is_file()
    assert (tmp_path / "scale" / "scale.png").is_file()


def test_scan_bench_known_answers_judge_the_transform():
    """A found excerpt counts as read right only with its speed within 1 % and its pitch
    within 0.3 semitones; a file found by the derivation tier alone has no estimate."""
    from earmark.bench import scan as scan_bench

    def truth(path, transform=None, speed=1.0, pitch=0.0, catalogue="/cat/a.wav"):
        return {"path": path, "catalogue": catalogue, "query_start": 10.0,
                "excerpt_seconds": 20.0, "transform": transform, "speed": speed,
                "pitch_semitones": pitch}

    def flag(top="/cat/a.wav", speed=1.0, pitch=0.0, start=12.0):
        return {"flagged": True, "top": top, "query_start": start, "speed": speed,
                "pitch_semitones": pitch}

    t = [truth("q1", "speed", 1.08, 1.33), truth("q2", "pitch", 1.0, -2.0),
         truth("q3", "tempo", 0.95, 0.0), truth("q4"), truth("q5", catalogue=None)]
    flags = {"q1": flag(speed=1.0865, pitch=1.20),      # within 1 % and 0.3 st
             "q2": flag(speed=1.0, pitch=-1.5),         # pitch 0.5 st off
             "q3": flag(speed=None, pitch=None),        # derivation tier only
             "q4": flag(top="/cat/b.wav"),              # wrong recording
             "q5": {"flagged": False, "top": None}}
    ka = scan_bench._known_answers(t, flags)
    assert (ka["with_catalogue"], ka["right_recording"], ka["transformed"],
            ka["transformed_right"], ka["transform_ok"], ka["false_positives"]) == \
        (4, 3, 3, 3, 1, 0)
    flags["q2"] = flag(pitch=-2.2)
    flags["q4"] = flag()
    ka = scan_bench._known_answers(t, flags)
    assert (ka["right_recording"], ka["transform_ok"]) == (4, 3)


def test_scan_bench_on_built_inputs(catalogue, built_index, tmp_path):
    """``fp bench scan`` builds a seeded batch (catalogue excerpts hidden in other music, in
    MP3/Opus/M4A, one of them transformed), measures every phase on it and reports the known
    answers, the transform estimates included."""
    from earmark.bench import scan as scan_bench

    neg = tmp_path / "neg"
    neg.mkdir()
    for i, seed in enumerate((9001, 9002)):
        sf.write(neg / f"other{i}.wav", catalogue.other_song(seed, 24.0), catalogue.sr)
    out = tmp_path / "bench"
    doc = scan_bench.run_scan_bench(out, built_index.path, catalogue=catalogue.folder,
                                    negatives=neg, n_files=4, seed=5, min_seconds=9.0,
                                    max_seconds=12.0, jobs=2, min_significance=20.0,
                                    sample_seconds=0.05, progress=False)
    truth = json.loads((out / "inputs" / "truth.json").read_text())["files"]
    assert len(truth) == 4 and sum(1 for t in truth if t["catalogue"]) == 2
    assert sorted(t["format"] for t in truth) == ["m4a", "mp3", "mp3", "opus"]
    assert all(9.0 <= t["seconds"] <= 12.0 for t in truth)
    # Half the excerpts are changed (speed, tempo or key), with the truth of the change.
    changed = [t for t in truth if t["transform"]]
    assert len(changed) == 1 and changed[0]["catalogue"]
    t = changed[0]
    assert t["transform"] in scan_bench.EXCERPT_TRANSFORMS
    assert (t["speed"], t["pitch_semitones"]) != (1.0, 0.0)
    if t["transform"] == "pitch":
        assert t["speed"] == 1.0 and 1.0 <= abs(t["pitch_semitones"]) <= 3.0
    else:
        assert 0.04 <= abs(t["speed"] - 1.0) <= 0.12
    plain = [t for t in truth if t["catalogue"] and not t["transform"]]
    assert len(plain) == 1 and (plain[0]["speed"], plain[0]["pitch_semitones"]) == (1.0, 0.0)
    assert doc["inputs"]["transformed"][t["transform"]] == 1
    assert doc["inputs"]["files"] == 4 and doc["inputs"]["with_catalogue"] == 2
    assert doc["inputs"]["formats"] == {"mp3": 2, "opus": 1, "m4a": 1}
    # Decoded lengths are the written ones (encoder padding is a few ms).
    assert doc["inputs"]["audio_seconds"] == pytest.approx(sum(t["seconds"] for t in truth),
                                                           abs=0.4)
    audio = doc["inputs"]["audio_seconds"]
    for name, ph in doc["phases"].items():
        assert ph["files"] == 4, name
        assert ph["seconds"] > 0 and ph["x_realtime"] == pytest.approx(audio / ph["seconds"],
                                                                       rel=0.01, abs=0.1), name
        assert ph["files_per_second"] == pytest.approx(4 / ph["seconds"], rel=0.01), name
    # Every run finds the two hidden excerpts, the right recording, and nothing else.
    for run in ("in_process", "scan_j1", "scan_jN"):
        ka = doc["known_answers"][run]
        assert (ka["files"], ka["with_catalogue"], ka["flagged"], ka["right_recording"],
                ka["false_positives"]) == (4, 2, 2, 2, 0), (run, ka)
        # ... the transformed one among them, with its speed and pitch read right.
        assert (ka["transformed"], ka["transformed_right"], ka["transform_ok"]) == (1, 1, 2), \
            (run, ka)
    j1, jn = doc["phases"]["scan_j1"], doc["phases"]["scan_jN"]
    assert (j1["jobs"], jn["jobs"]) == (1, 2)
    assert (j1["flagged"], jn["flagged"], j1["errors"], jn["errors"]) == (2, 2, 0, 0)
    assert j1["workers_seen"] == 1 and jn["workers_seen"] == 2
    assert jn["idle_estimate_seconds"] >= jn["busiest_worker_cpu_seconds"] > 0
    assert all(p["peak_uss_mb"] > 0 and p["peak_pss_mb"] >= p["peak_uss_mb"] - 1
               for p in jn["processes"])
    assert doc["memory"]["worker_peak_uss_mb"] == max(
        p["peak_uss_mb"] for p in jn["processes"] if p["role"] == "worker")
    assert doc["ratios"]["scan_j1_over_decode"] == pytest.approx(
        doc["phases"]["decode"]["seconds"] / j1["seconds"], abs=0.002)
    assert doc["ratios"]["scan_jN_over_j1"] == pytest.approx(j1["seconds"] / jn["seconds"],
                                                              abs=0.002)
    assert sum(doc["stages"]["share"].values()) == pytest.approx(1.0, abs=0.01)
    assert doc["stages"]["cpu_seconds"]["derivation"] > 0
    assert json.loads((out / "scan-bench.json").read_text()) == doc
    md = (out / "scan-bench.md").read_text()
    assert "`fp scan -j 2`" in md and "| -j 2 | 4 | 2 | 2 | 2 |" in md
    assert "| 1 of 1 | 2 | 0 |" in md
    # Same settings: the inputs are reused as they are, not written again.
    first = {t["path"]: os.stat(t["path"]).st_mtime_ns for t in truth}
    again = scan_bench.build_inputs(catalogue.folder, neg, out / "inputs", n_files=4, seed=5,
                                    min_seconds=9.0, max_seconds=12.0)
    assert {t["path"]: os.stat(t["path"]).st_mtime_ns for t in again["files"]} == first


def test_resume_bench_kills_scans_and_ends_with_one_line_per_file(catalogue, built_index,
                                                                  tmp_path):
    """``fp bench resume`` kills ``fp scan`` (by journal lines, by delay, during the reports),
    resumes it, and finds each input exactly once, the bad ones among the errors."""
    from earmark.bench import resume

    out = tmp_path / "resume"
    doc = resume.run_resume_bench(out, built_index.path, n_files=24, kills=3, jobs=2, seed=4,
                                  catalogue=catalogue.folder, fast=True, progress=False)
    f = doc["final"]
    assert doc["passed"], doc
    assert (f["files"], f["duplicates"], f["missing"], f["unexpected"],
            f["bad_files_listed"]) == (24 + len(resume.BAD_FILES), 0, 0, 0, 4)
    assert f["results"] + f["errors"] == f["files"] and f["errors"] >= 4
    assert [r["mode"] for r in doc["rounds"]] == ["lines", "time", "reports", "to the end"]
    assert f["kills_landed"] >= 1
    for r in doc["rounds"]:
        assert r["prefix_kept"] and r["ok"], r
        if r.get("killed_at_seconds") is not None:
            assert r["workers_left"] == 0 and not r["late_writes"], r
    # Every tenth input is a catalogue excerpt: found (flagged lines are in the journal).
    results = [json.loads(x) for x in (out / "report" / "results.jsonl").read_text().splitlines()]
    assert sum(1 for x in results if x["matches"]) >= 2
    assert "**passed**" in (out / "resume.md").read_text()
    # The same inputs are reused by a second call with the same settings.
    again = resume.build_resume_inputs(out / "inputs", 24, seed=4, catalogue=catalogue.folder)
    assert [os.stat(p).st_mtime_ns for p in again] == \
        [os.stat(p).st_mtime_ns for p in sorted(str(p) for p in (out / "inputs").iterdir()
                                                if p.name != "inputs.json")]


def test_resume_check_catches_a_duplicate_a_missing_file_and_an_unlisted_bad_file(tmp_path):
    """The final check counts journal lines as written: a path twice, a path missing, a bad
    file not among the errors or a report that does not count every file all fail it."""
    from earmark.bench.resume import check_report

    report = tmp_path / "report"
    report.mkdir()
    files = [f"/in/{k}.wav" for k in range(4)]
    bad = {"/in/3.wav"}

    def write(results, errors, n_page):
        (report / "results.jsonl").write_text(
            "".join(json.dumps({"query": q, "matches": []}) + "\n" for q in results))
        (report / "errors.jsonl").write_text(
            "".join(json.dumps({"query": q, "error": "bad"}) + "\n" for q in errors))
        (report / "report.html").write_text(f"<b>{n_page}</b><span>files scanned</span>")

    write(files[:3], files[3:], 4)
    assert check_report(report, files, bad)["ok"]
    write(files[:3] + files[:1], files[3:], 4)          # a line written twice
    c = check_report(report, files, bad)
    assert not c["ok"] and c["duplicates"] == 1
    write(files[:2], files[3:], 4)                      # a file never journaled
    c = check_report(report, files, bad)
    assert not c["ok"] and c["missing"] == 1
    write(files, [], 4)                                 # the bad file "matched"
    c = check_report(report, files, bad)
    assert not c["ok"] and c["bad_files_listed"] == 0
    write(files[:3], files[3:], 3)                      # a stale report
    assert not check_report(report, files, bad)["ok"]
    write(files[:3], files[3:], 4)
    with open(report / "results.jsonl", "ab") as fh:    # a torn last line is not a result
        fh.write(b'{"query": "/in/0.wa')
    assert check_report(report, files, bad)["ok"]


def test_resume_bench_says_in_one_line_when_the_scan_cannot_run(tmp_path):
    """A folder that is not an index is the scan's error, not a failed resume: one line,
    exit 2, no traceback."""
    import subprocess
    import sys

    not_index = tmp_path / "not-an-index"
    not_index.mkdir()
    p = subprocess.run([sys.executable, "-m", "earmark.cli", "bench", "resume", "--index",
                        str(not_index), "--files", "3", "--kills", "1", "--out",
                        str(tmp_path / "out")], capture_output=True, text=True, timeout=120)
    assert p.returncode == 2
    err = p.stderr.strip().splitlines()
    assert len(err) == 1 and "fp scan exited 2" in err[0] and "no index" in err[0]
    assert "Traceback" not in p.stderr


def test_scan_bench_inputs_transformed_share(catalogue, tmp_path):
    """``transformed_share`` decides how many hidden excerpts are changed: none, or all."""
    from earmark.bench import scan as scan_bench

    neg = tmp_path / "neg"
    neg.mkdir()
    sf.write(neg / "other.wav", catalogue.other_song(9003, 20.0), catalogue.sr)
    for share, expected in ((0.0, 0), (1.0, 2)):
        doc = scan_bench.build_inputs(catalogue.folder, neg, tmp_path / f"in{share}", n_files=4,
                                      seed=8, min_seconds=9.0, max_seconds=10.0,
                                      transformed_share=share)
        excerpts = [t for t in doc["files"] if t["catalogue"]]
        assert len(excerpts) == 2
        assert sum(1 for t in excerpts if t["transform"]) == expected
        assert all((t["speed"], t["pitch_semitones"]) == (1.0, 0.0)
                   for t in excerpts if not t["transform"])


def test_resume_bench_on_a_stream(built_index, tmp_path):
    """The same promise for ``fp scan -`` fed path by path: killed mid-stream, fed again,
    each input ends up exactly once."""
    from earmark.bench import resume

    doc = resume.run_resume_bench(tmp_path / "r", built_index.path, n_files=16, kills=2,
                                  jobs=2, seed=6, fast=True, stream=True, progress=False)
    assert doc["passed"], doc
    assert doc["command"][doc["command"].index("scan") + 1] == "-"
    f = doc["final"]
    assert (f["files"], f["duplicates"], f["missing"]) == (20, 0, 0)
    assert [r["mode"] for r in doc["rounds"]] == ["lines", "reports", "to the end"]
