"""Matching against the session index: the right recording, at the right offset, with the
transform it went through; and nothing for audio that is not in the catalogue."""

from __future__ import annotations

import dataclasses
import json
import math

import numpy as np
import pedalboard
import pytest
import soxr

import earmark
from earmark.errors import AudioError
from earmark.fingerprint.config import MATCH_PRESETS
from earmark.index.catalogue import Index
from earmark.synth import synth_song

from conftest import (NON_CATALOGUE_SEEDS, SR, TRACKS, add_noise, alignment_offset, track_of,
                      write_audio)

DEFAULT_MIN_SIGNIFICANCE = MATCH_PRESETS["default"].min_significance


def random_start(catalogue, name: str, seconds: float, seed: int) -> float:
    rng = np.random.default_rng(seed)
    return float(rng.uniform(0.0, catalogue.duration(name) - seconds - 0.01))


def check_top(result, name: str, true_offset: float, *, speed: float = 1.0,
              pitch: float = 0.0, offset_tol: float = 0.1):
    """The best match is ``name`` at ``true_offset`` with the given transform."""
    assert result.error is None
    assert result.matches, f"{result.query}: no match (expected {name})"
    m = result.matches[0]
    assert track_of(m) == name, [(track_of(x), x.score, x.significance) for x in result.matches]
    assert abs(alignment_offset(m) - true_offset) <= offset_tol, (alignment_offset(m), true_offset)
    assert abs(m.speed / speed - 1.0) <= 0.01, (m.speed, speed)
    assert abs(m.pitch_semitones - pitch) <= 0.25, (m.pitch_semitones, pitch)
    # Evidence is self-consistent.
    assert m.score >= MATCH_PRESETS["default"].min_score
    assert m.significance >= DEFAULT_MIN_SIGNIFICANCE
    assert 0.0 <= m.query_start < m.query_end <= result.duration + 1e-6
    assert m.reference_start < m.reference_end
    assert 0.0 < m.coverage <= 1.0
    assert m.coverage == pytest.approx((m.query_end - m.query_start) / result.duration, abs=1e-6)
    return m


# --------------------------------------------------------------------------- known answers


@pytest.mark.parametrize("k, name", list(enumerate(n for n, _s, _d in TRACKS)))
def test_clean_5s_excerpt_at_random_offset(catalogue, index, k, name):
    y, start = catalogue.excerpt(name, random_start(catalogue, name, 5.0, seed=100 + k), 5.0)
    m = check_top(index.match_audio(y, SR, label=name), name, start)
    # The reference segment lies inside the recording and corresponds to the query's.
    assert -0.1 <= m.reference_start and m.reference_end <= catalogue.duration(name) + 0.1
    assert m.reference_start == pytest.approx(start + m.query_start * m.speed, abs=0.1)


def test_clean_excerpts_report_no_other_recording(catalogue, index):
    """A clean excerpt of one recording is evidence of that recording only: anything
    else reported at the default threshold is a false positive."""
    extra = []
    for k, name in enumerate(catalogue.names):
        y, _ = catalogue.excerpt(name, random_start(catalogue, name, 5.0, seed=100 + k), 5.0)
        res = index.match_audio(y, SR, label=name)
        extra += [(name, track_of(m), m.score, m.significance, round(m.speed, 3),
                   round(m.pitch_semitones, 2)) for m in res.matches if track_of(m) != name]
    assert not extra, f"false positives beside the true match: {extra}"


@pytest.mark.parametrize("k, name", [(0, "track02.wav"), (1, "track05.wav"),
                                     (2, "track07.flac"), (3, "track08.ogg")])
def test_white_noise_5db_snr(catalogue, index, k, name):
    y, start = catalogue.excerpt(name, random_start(catalogue, name, 10.0, seed=200 + k), 10.0)
    check_top(index.match_audio(add_noise(y, 5.0, seed=k), SR), name, start)


@pytest.mark.parametrize("name", ["track03.wav", "track06.wav"])
def test_mp3_64kbps_round_trip(catalogue, index, tmp_path, name):
    y, start = catalogue.excerpt(name, random_start(catalogue, name, 8.0, seed=300), 8.0)
    path = write_audio(tmp_path / "excerpt.mp3", y)
    kbps = path.stat().st_size * 8 / 8.0 / 1000
    assert 48 <= kbps <= 80, kbps  # really a low-bitrate lossy encode
    check_top(index.match_file(path), name, start)


@pytest.mark.parametrize("speed", [0.85, 1.2])
def test_speed_change(catalogue, index, speed):
    """Played ``speed`` times faster (resampling: tempo and pitch together)."""
    name = "track04.wav"
    y, start = catalogue.excerpt(name, 9.0, 9.0)
    q = soxr.resample(y, SR * speed, SR).astype(np.float32)
    assert len(q) == pytest.approx(len(y) / speed, abs=2)
    check_top(index.match_audio(q, SR), name, start, speed=speed, pitch=12 * math.log2(speed))


@pytest.mark.parametrize("speed, semitones", [(1.2, 0.0), (1.0, -3.0)])
def test_coarse_to_fine_search_finds_what_the_exhaustive_search_finds(catalogue, index, speed,
                                                                     semitones):
    """The default search votes the grid with the strongest landmarks first, then only the
    best hypotheses with all of them; the exhaustive search (``refine_hypotheses=0``)
    votes every hypothesis with every landmark.  Same recording, offset and transform."""
    name = "track02.wav"
    y, start = catalogue.excerpt(name, 6.0, 8.0)
    q = pedalboard.time_stretch(y[None, :], SR, stretch_factor=speed,
                                pitch_shift_in_semitones=semitones)[0].astype(np.float32)
    recording = MATCH_PRESETS["recording"]
    coarse = index.match_audio(q, SR, recording)
    exhaustive = index.match_audio(q, SR, recording.with_(refine_hypotheses=0))
    m = check_top(coarse, name, start, speed=speed, pitch=semitones)
    e = check_top(exhaustive, name, start, speed=speed, pitch=semitones)
    assert m.speed == pytest.approx(e.speed, rel=0.002)
    assert m.pitch_semitones == pytest.approx(e.pitch_semitones, abs=0.1)
    assert m.score >= 0.9 * e.score


def test_fine_stage_skips_transforms_that_only_echo_identity(catalogue, index, monkeypatch):
    """A recording used as it is also collects coarse votes under the neighbouring
    transforms; those echoes are not voted again with every landmark.  A real transform
    still is, and is found."""
    import earmark.match as match_mod

    real_vote_passes = match_mod._vote_passes
    fine_hypotheses: list[int] = []

    def recording_vote_passes(passes, *args, **kwargs):
        for vp in passes:
            if vp.hyp_index.shape[0] < 20:    # fine passes (the coarse one votes the grid)
                fine_hypotheses.extend(vp.hyp_index.tolist())
        return real_vote_passes(passes, *args, **kwargs)

    monkeypatch.setattr(match_mod, "_vote_passes", recording_vote_passes)
    recording = MATCH_PRESETS["recording"]
    name = "track04.wav"
    y, start = catalogue.excerpt(name, 9.0, 9.0)
    check_top(index.match_audio(y, SR, recording), name, start)
    assert fine_hypotheses == [0]         # identity alone
    fine_hypotheses.clear()
    q = soxr.resample(y, SR * 1.2, SR).astype(np.float32)
    check_top(index.match_audio(q, SR, recording), name, start, speed=1.2, pitch=12 * math.log2(1.2))
    assert fine_hypotheses[0] == 0 and len(fine_hypotheses) > 1


def test_coarse_vote_uses_its_own_probe_margin(catalogue, index, monkeypatch):
    import earmark.match as match_mod

    real_vote = match_mod.vote_hypotheses
    margins: dict[str, set] = {"coarse": set(), "fine": set()}

    def recording_vote(q_time, q_f1, q_df, q_dt, hyp_scale, hyp_pitch, *rest):
        stage = "coarse" if hyp_scale.shape[0] >= 20 else "fine"
        margins[stage].add(rest[-3])          # (..., offset_bin_frames, probe_margin, min_score, limit)
        return real_vote(q_time, q_f1, q_df, q_dt, hyp_scale, hyp_pitch, *rest)

    monkeypatch.setattr(match_mod, "vote_hypotheses", recording_vote)
    mcfg = MATCH_PRESETS["recording"].with_(threads=1, coarse_probe_margin=0.05, probe_margin=0.3)
    y, start = catalogue.excerpt("track04.wav", 9.0, 9.0)
    check_top(index.match_audio(y, SR, mcfg), "track04.wav", start)
    assert margins == {"coarse": {0.05}, "fine": {0.3}}


def test_coarse_vote_uses_its_own_stop_key_ratio(catalogue, index, monkeypatch):
    """The coarse stage skips keys above ``coarse_stop_key_ratio`` x the mean postings per
    key; identity and the refined transforms keep ``stop_key_ratio``."""
    import earmark.match as match_mod

    real_vote = match_mod.vote_hypotheses
    limits: dict[str, set] = {"coarse": set(), "fine": set()}

    def recording_vote(q_time, q_f1, q_df, q_dt, hyp_scale, hyp_pitch, *rest):
        stage = "coarse" if hyp_scale.shape[0] >= 20 else "fine"
        limits[stage].add(rest[-1])           # (..., min_score, max_key_postings)
        return real_vote(q_time, q_f1, q_df, q_dt, hyp_scale, hyp_pitch, *rest)

    monkeypatch.setattr(match_mod, "vote_hypotheses", recording_vote)
    mcfg = MATCH_PRESETS["recording"].with_(threads=1, stop_key_min_postings=0,
                                            stop_key_ratio=1000.0, coarse_stop_key_ratio=50.0)
    y, start = catalogue.excerpt("track04.wav", 9.0, 9.0)
    check_top(index.match_audio(y, SR, mcfg), "track04.wav", start)
    sizes = [v.postings.shape[0] for v in index._views]
    assert limits == {"coarse": {match_mod.stop_key_limit(n, 50.0, 0) for n in sizes},
                      "fine": {match_mod.stop_key_limit(n, 1000.0, 0) for n in sizes}}


def _under_other_music(catalogue, q: np.ndarray, at_seconds: float, snr_db: float,
                       seed: int, seconds: float = 40.0) -> np.ndarray:
    """``q`` inside ``seconds`` of non-catalogue music, ``snr_db`` louder than it there."""
    bed = catalogue.other_song(seed, seconds).astype(np.float64)
    a = int(at_seconds * SR)
    part = bed[a:a + q.shape[0]]
    bed *= math.sqrt(np.mean(q.astype(np.float64) ** 2) / np.mean(part ** 2) / 10 ** (snr_db / 10))
    bed[a:a + q.shape[0]] += q
    return bed.astype(np.float32)


@pytest.mark.parametrize("name, kind, snr_db, seed", [("track05.wav", "tempo", 0.0, 9002),
                                                      ("track08.ogg", "speed", 3.0, 9002)])
def test_second_coarse_round_finds_a_transformed_use_under_other_music(
        catalogue, index, monkeypatch, name, kind, snr_db, seed):
    """An 8-s excerpt at tempo 0.92 (or speed 1.08) under other music as loud, 15 s into a
    40-s song: the recording's peaks are no longer most of the query's strongest, and the
    first coarse round leaves the true transform without a cell.  The second round (a
    denser coarse set, run because nothing explains the query) finds it."""
    import earmark.match as match_mod

    y, start = catalogue.excerpt(name, 6.0, 8.0)
    if kind == "tempo":
        speed, pitch = 0.92, 0.0
        q = pedalboard.time_stretch(y[None, :], SR, stretch_factor=speed)[0].astype(np.float32)
    else:
        speed, pitch = 1.08, 12 * math.log2(1.08)
        q = soxr.resample(y, SR * speed, SR).astype(np.float32)
    song = _under_other_music(catalogue, q, 15.0, snr_db, seed)
    recording = MATCH_PRESETS["recording"]
    one_round = index.match_audio(song, SR, recording.with_(dense_coarse_peaks_per_second=0.0))
    assert name not in [track_of(m) for m in one_round.matches]

    real_vote_passes = match_mod._vote_passes
    coarse_densities: list[int] = []

    def counting_vote_passes(passes, *args, **kwargs):
        if passes[-1].hyp_index.shape[0] >= 20:      # a coarse round votes the grid
            coarse_densities.append(passes[-1].query.time.shape[0])
        return real_vote_passes(passes, *args, **kwargs)

    monkeypatch.setattr(match_mod, "_vote_passes", counting_vote_passes)
    m = check_top(index.match_audio(song, SR, recording), name, start - 15.0 * speed,
                  speed=speed, pitch=pitch)
    assert 15.0 - 0.5 <= m.query_start and m.query_end <= 15.0 + q.shape[0] / SR + 0.5
    # Two coarse rounds, the second with more landmarks.
    assert len(coarse_densities) == 2 and coarse_densities[1] > coarse_densities[0]


def test_second_coarse_round_only_where_the_query_is_unexplained(catalogue, index,
                                                                 monkeypatch):
    """A query whose matches cover most of it votes the grid once; one that matches
    nothing votes it three times: the first round, the lines again with more landmarks,
    then the tempo-and-key ring."""
    import earmark.match as match_mod

    real_vote_passes = match_mod._vote_passes
    coarse_rounds: list[int] = []

    def counting_vote_passes(passes, *args, **kwargs):
        if passes[-1].hyp_index.shape[0] >= 20:
            coarse_rounds.append(1)
        return real_vote_passes(passes, *args, **kwargs)

    monkeypatch.setattr(match_mod, "_vote_passes", counting_vote_passes)
    recording = MATCH_PRESETS["recording"]
    name = "track03.wav"
    y, start = catalogue.excerpt(name, 5.0, 10.0)
    q = soxr.resample(y, SR * 1.1, SR).astype(np.float32)
    check_top(index.match_audio(q, SR, recording), name, start, speed=1.1, pitch=12 * math.log2(1.1))
    assert len(coarse_rounds) == 1
    coarse_rounds.clear()
    assert index.match_audio(catalogue.other_song(NON_CATALOGUE_SEEDS[0], 10.0), SR,
                             recording).matches == ()
    assert len(coarse_rounds) == 3


@pytest.mark.parametrize("semitones", [2.0, -2.0])
def test_pitch_shift(catalogue, index, semitones):
    name = "track05.wav"
    y, start = catalogue.excerpt(name, 12.0, 8.0)
    q = pedalboard.time_stretch(y[None, :], SR, stretch_factor=1.0,
                                pitch_shift_in_semitones=semitones)[0].astype(np.float32)
    check_top(index.match_audio(q, SR), name, start, speed=1.0, pitch=semitones)


@pytest.mark.parametrize("factor", [0.9, 1.1])
def test_tempo_change(catalogue, index, factor):
    """Tempo only (pitch kept): ``factor`` 1.1 plays 10 % faster."""
    name = "track06.wav"
    y, start = catalogue.excerpt(name, 15.0, 8.0)
    q = pedalboard.time_stretch(y[None, :], SR, stretch_factor=factor)[0].astype(np.float32)
    assert len(q) == pytest.approx(len(y) / factor, rel=0.02)
    check_top(index.match_audio(q, SR), name, start, speed=factor, pitch=0.0)


@pytest.mark.parametrize("factor, semitones", [(1.07, -2.0), (0.93, 2.5)])
def test_tempo_and_key_changed_together(catalogue, index, factor, semitones):
    """A sample fitted to a new song's beat and key: tempo and pitch changed independently,
    on none of the speed/tempo/pitch lines.  Found with both estimates; without the
    tempo-and-key region of the grid it is not found at its place (so the region is what
    finds it)."""
    name = "track07.flac"
    y, start = catalogue.excerpt(name, 10.0, 8.0)
    q = pedalboard.time_stretch(y[None, :], SR, stretch_factor=factor,
                                pitch_shift_in_semitones=semitones)[0].astype(np.float32)
    check_top(index.match_audio(q, SR), name, start, speed=factor, pitch=semitones)
    lines_only = index.match_audio(q, SR, MATCH_PRESETS["default"].with_(search_tempo_key=False))
    assert not [m for m in lines_only.matches
                if track_of(m) == name and abs(alignment_offset(m) - start) < 0.5]


@pytest.mark.parametrize("factor, semitones", [(0.92, 5.0), (1.08, -4.5)])
def test_tempo_and_key_beyond_the_first_round_region(catalogue, index, monkeypatch,
                                                     factor, semitones):
    """A key change beyond the first round's +-3 semitones, with the tempo changed too:
    the query is unexplained after the first round, whose grid does not reach it, and the
    second round's ring of the tempo-and-key plane (key out to +-6) finds it, with both
    estimates.  Without the ring (``wide_tempo_key_max_semitones`` = the first round's) it
    is not found at its place; nor when the ring's bar of significance
    (``wide_min_significance``) is above the evidence's."""
    import earmark.match as match_mod

    name = "track07.flac"
    y, start = catalogue.excerpt(name, 10.0, 10.0)
    q = pedalboard.time_stretch(y[None, :], SR, stretch_factor=factor,
                                pitch_shift_in_semitones=semitones)[0].astype(np.float32)
    recording = MATCH_PRESETS["recording"]
    no_ring = index.match_audio(q, SR, recording.with_(
        wide_tempo_key_max_semitones=recording.tempo_key_max_semitones))
    assert not [m for m in no_ring.matches
                if track_of(m) == name and abs(alignment_offset(m) - start) < 0.5]

    real_vote_passes = match_mod._vote_passes
    ring_votes: list[bool] = []     # per call: does a pass vote a hypothesis of the ring?

    def recording_passes(passes, hyp_s, hyp_p, *args, **kwargs):
        ring = match_mod.tempo_key_region(hyp_s, hyp_p) & ~match_mod.tempo_key_region(
            hyp_s, hyp_p, recording.tempo_key_max_semitones)
        ring_votes.append(any(ring[vp.hyp_index].any() for vp in passes))
        return real_vote_passes(passes, hyp_s, hyp_p, *args, **kwargs)

    monkeypatch.setattr(match_mod, "_vote_passes", recording_passes)
    m = check_top(index.match_audio(q, SR, recording), name, start, speed=factor,
                  pitch=semitones)
    assert not ring_votes[0] and any(ring_votes[1:])    # the second round's, not the first's
    assert m.significance >= recording.wide_min_significance
    strict = index.match_audio(q, SR, recording.with_(wide_min_significance=m.significance + 1.0))
    assert not [x for x in strict.matches
                if track_of(x) == name and abs(alignment_offset(x) - start) < 0.5]


def test_transformed_match_is_dropped_where_its_audio_refutes_it(catalogue, index, monkeypatch,
                                                                 tmp_path):
    """A match with a speed or pitch change that rests on its landmarks alone, under
    ``review_max_significance``, is compared with its catalogue file: kept where the audio
    agrees; dropped where it is not that recording (the check made to read noise instead),
    and then the search goes on as if it had not been found (the second round votes).
    Over the bar, or at identity, a match is not reviewed."""
    import earmark.match as match_mod
    from earmark import verify

    name = "track07.flac"
    y, start = catalogue.excerpt(name, 10.0, 8.0)
    q = pedalboard.time_stretch(y[None, :], SR, stretch_factor=1.07,
                                pitch_shift_in_semitones=-2.0)[0].astype(np.float32)
    review_all = MATCH_PRESETS["default"].with_(review_max_significance=1e9)
    noise = write_audio(tmp_path / "noise.wav",
                        0.1 * np.random.default_rng(5).standard_normal(60 * SR).astype(np.float32))
    real_segment, real_refutes, real_passes = (verify.verify_segment, verify.refutes,
                                               match_mod._vote_passes)
    reviews: list[tuple[object, bool]] = []
    votes = [0]

    def spy_refutes(check, mcfg):
        reviews.append((check, real_refutes(check, mcfg)))
        return reviews[-1][1]

    def counted_passes(*args, **kwargs):
        votes[0] += 1
        return real_passes(*args, **kwargs)

    monkeypatch.setattr(verify, "refutes", spy_refutes)
    monkeypatch.setattr(match_mod, "_vote_passes", counted_passes)

    def here(res) -> list:
        return [m for m in res.matches
                if track_of(m) == name and abs(alignment_offset(m) - start) < 0.5]

    # The audio agrees: reviewed once, kept.
    m = check_top(index.match_audio(q, SR, review_all), name, start, speed=1.07, pitch=-2.0)
    assert len(reviews) == 1 and reviews[0][1] is False
    assert reviews[0][0].correlation >= review_all.refute_max_correlation
    votes_kept = votes[0]
    # Over the bar: not reviewed (the reported significance is rounded to 0.01).
    reviews.clear()
    over = review_all.with_(review_max_significance=m.significance - 0.01)
    assert here(index.match_audio(q, SR, over))
    assert not reviews
    # The check reads noise instead of the catalogue file: refuted, dropped, and the
    # search votes on (the query is unexplained again).
    monkeypatch.setattr(verify, "verify_segment",
                        lambda y_, qs, qe, _path, *a, **k: real_segment(y_, qs, qe, noise, *a, **k))
    votes[0] = 0
    refuted = index.match_audio(q, SR, review_all)
    assert reviews and reviews[0][1] is True
    assert reviews[0][0].correlation < review_all.refute_max_correlation
    assert not here(refuted)
    assert votes[0] > votes_kept
    # At identity the same noise is never asked.
    reviews.clear()
    y_clean, start_clean = catalogue.excerpt(name, 10.0, 8.0)
    check_top(index.match_audio(y_clean, SR, review_all), name, start_clean)
    assert not reviews


@pytest.mark.parametrize("name", ["track02.wav", "track05.wav", "track08.ogg"])
def test_drums_removed_still_matches(catalogue, index, name):
    """The same piece without its drums (what a stem separator hands an AI pipeline to
    sing over): enough of its catalogue peaks are not drum hits."""
    seed, seconds = next((s, d) for n, s, d in TRACKS if n == name)
    start = random_start(catalogue, name, 10.0, seed=700)
    no_drums = synth_song(seed=seed, seconds=seconds, sr=SR, drums=False)
    y = no_drums[int(round(start * SR)):int(round((start + 10.0) * SR))]
    check_top(index.match_audio(y, SR, label=name), name, start)


def test_excerpt_embedded_in_other_music_is_found_and_located(catalogue, index):
    name = "track03.wav"
    y, ref_start = catalogue.excerpt(name, 20.0, 5.0)
    background = catalogue.other_song(NON_CATALOGUE_SEEDS[0], 30.0).copy()
    at = 12.0
    a = int(at * SR)
    background[a:a + y.shape[0]] = y          # spliced in: 12-17 s of the query
    res = index.match_audio(background, SR)
    hits = [m for m in res.matches if track_of(m) == name]
    assert hits, [(track_of(m), m.score) for m in res.matches]
    m = hits[0]
    assert m is res.matches[0]
    assert abs(alignment_offset(m) - (ref_start - at)) <= 0.1
    assert abs(m.query_start - at) <= 0.5 and abs(m.query_end - (at + 5.0)) <= 0.5, (
        m.query_start, m.query_end)
    assert abs(m.reference_start - (ref_start + m.query_start - at)) <= 0.1


def test_query_using_two_recordings_reports_both_with_segments(catalogue, index):
    a, a_start = catalogue.excerpt("track01.wav", 3.0, 8.0)
    b, b_start = catalogue.excerpt("track08.ogg", 15.0, 8.0)
    res = index.match_audio(np.concatenate([a, b]), SR)
    by_track = {}
    for m in res.matches:
        by_track.setdefault(track_of(m), m)   # strongest of each
    assert {"track01.wav", "track08.ogg"} <= set(by_track), [track_of(m) for m in res.matches]
    ma, mb = by_track["track01.wav"], by_track["track08.ogg"]
    # Segments: the first 8 s use track01, the last 8 s use track08.
    assert -0.01 <= ma.query_start and ma.query_end <= 8.5 and ma.query_end - ma.query_start >= 5
    assert 7.5 <= mb.query_start and mb.query_end <= 16.01 and mb.query_end - mb.query_start >= 5
    assert abs(alignment_offset(ma) - a_start) <= 0.1
    assert abs(alignment_offset(mb) - (b_start - 8.0)) <= 0.1
    # Both are the two best matches.
    assert {track_of(m) for m in res.matches[:2]} == {"track01.wav", "track08.ogg"}


def test_compilation_of_many_recordings_reports_every_one(catalogue, index):
    """A compilation or DJ mix: six catalogue recordings one after another.  Each is
    reported at its own segment (each recording's contrast is judged against recordings
    competing for the same audio, not against the other five uses)."""
    names = ["track01.wav", "track03.wav", "track04.wav", "track05.wav", "track07.flac",
             "track08.ogg"]
    parts, starts = [], []
    for k, name in enumerate(names):
        y, start = catalogue.excerpt(name, 4.0 + 2 * k, 8.0)
        parts.append(y)
        starts.append(start)
    res = index.match_audio(np.concatenate(parts), SR)
    by_track = {}
    for m in res.matches:
        by_track.setdefault(track_of(m), m)
    assert set(by_track) == set(names), [(track_of(m), m.score) for m in res.matches]
    for k, name in enumerate(names):
        m = by_track[name]
        assert abs(alignment_offset(m) - (starts[k] - 8.0 * k)) <= 0.1, name
        assert 8.0 * k - 0.5 <= m.query_start and m.query_end <= 8.0 * (k + 1) + 0.5, (
            name, m.query_start, m.query_end)


# --------------------------------------------------------------------------- negatives


@pytest.mark.parametrize("colour", ["white", "pink"])
def test_noise_matches_nothing(catalogue, index, colour):
    res = index.match_audio(catalogue.noise(seed=77, seconds=10.0, colour=colour), SR)
    assert res.matches == (), [(track_of(m), m.score, m.significance) for m in res.matches]


@pytest.mark.parametrize("seed", NON_CATALOGUE_SEEDS)
def test_non_catalogue_music_matches_nothing(catalogue, index, seed):
    res = index.match_audio(catalogue.other_song(seed, 20.0), SR)
    assert res.matches == (), [(track_of(m), m.score, m.significance, round(m.speed, 3),
                                round(m.pitch_semitones, 2)) for m in res.matches]


def test_silence_is_an_audio_error(catalogue, index, tmp_path):
    with pytest.raises(AudioError, match="silent"):
        index.match_audio(np.zeros(5 * SR, np.float32), SR)
    path = write_audio(tmp_path / "silence.wav", np.zeros(5 * SR, np.float32))
    with pytest.raises(AudioError, match="silent") as err:
        index.match_file(path)
    assert str(path) in str(err.value)
    [result] = list(index.match_files([path]))
    assert result.error and "silent" in result.error and result.matches == ()


# --------------------------------------------------------------------------- presets, API


@pytest.mark.parametrize("name", ["track02.wav", "track07.flac", "track08.ogg"])
def test_fast_preset_finds_clean_excerpts(catalogue, index, name):
    y, start = catalogue.excerpt(name, random_start(catalogue, name, 5.0, seed=400), 5.0)
    m = check_top(index.match_audio(y, SR, MATCH_PRESETS["fast"]), name, start)
    assert m.pitch_semitones == pytest.approx(0.0, abs=0.25)


def test_fast_preset_does_not_search_transforms(catalogue, index):
    """``--fast`` is plain matching: a 20 % speed change is out of its reach, while the
    default search finds it (so the preset really changes what is searched)."""
    y, start = catalogue.excerpt("track04.wav", 9.0, 9.0)
    q = soxr.resample(y, SR * 1.2, SR).astype(np.float32)
    fast = index.match_audio(q, SR, MATCH_PRESETS["fast"])
    assert not [m for m in fast.matches
                if track_of(m) == "track04.wav" and abs(alignment_offset(m) - start) < 0.5]
    check_top(index.match_audio(q, SR), "track04.wav", start, speed=1.2,
              pitch=12 * math.log2(1.2))


def test_max_matches_and_min_significance_are_honoured(catalogue, index):
    a, _ = catalogue.excerpt("track01.wav", 3.0, 8.0)
    b, _ = catalogue.excerpt("track08.ogg", 15.0, 8.0)
    q = np.concatenate([a, b])
    one = index.match_audio(q, SR, MATCH_PRESETS["default"].with_(max_matches=1))
    assert len(one.matches) == 1
    full = index.match_audio(q, SR)
    assert one.matches[0].reference.path == full.matches[0].reference.path
    strict = index.match_audio(q, SR, MATCH_PRESETS["default"].with_(min_significance=1e9))
    assert strict.matches == ()


def test_python_api_without_cli(catalogue, built_index, tmp_path, monkeypatch):
    name = "track06.wav"
    y, start = catalogue.excerpt(name, 21.0, 6.0)
    path = write_audio(tmp_path / "suspect.wav", y)
    idx = earmark.open_index(built_index.path)
    assert isinstance(idx, Index)
    res = idx.match_file(path)
    assert isinstance(res, earmark.QueryResult) and res.query == str(path)
    m = check_top(res, name, start)
    assert isinstance(m, earmark.Match) and isinstance(m.reference, earmark.Reference)
    # JSON view of the same evidence.
    doc = json.loads(res.to_json())
    assert doc["query"] == str(path) and doc["error"] is None
    assert doc["matches"][0]["reference"]["path"] == m.reference.path
    assert doc["matches"][0]["score"] == m.score
    # $FP_INDEX names the default index.
    monkeypatch.setenv("FP_INDEX", str(built_index.path))
    assert earmark.default_index_path() == built_index.path
    check_top(earmark.open_index().match_file(path), name, start)
    # Arrays at any rate and channel count: stereo at 44.1 kHz.
    y44 = soxr.resample(y, SR, 44100)
    stereo44 = np.stack([y44, y44], axis=1).astype(np.float32)
    check_top(idx.match_audio(stereo44, 44100), name, start)
    # Missing index: a clear error.
    with pytest.raises(earmark.IndexError_, match="no index"):
        earmark.open_index(tmp_path / "nothing-here")


def test_tied_duplicates_rank_by_significance_whatever_the_indexing_order(catalogue, tmp_path):
    """The same audio in two catalogue recordings (a remaster, a re-release) scores the same;
    the more significant one (their chance rates differ with their lengths and content)
    ranks first, and the ranking does not depend on which file was indexed first (track
    ids)."""
    name = catalogue.names[0]
    song = catalogue.songs[name]
    longer = np.concatenate([song, catalogue.other_song(seed=9101, seconds=60.0)])
    (tmp_path / "a").mkdir()
    write_audio(tmp_path / "a" / "original.wav", song)
    write_audio(tmp_path / "a" / "rerelease.wav", longer)
    query, _t0 = catalogue.excerpt(name, 4.0, 8.0)
    rankings = []
    for order in (["original.wav", "rerelease.wav"], ["rerelease.wav", "original.wav"]):
        ipath = tmp_path / ("idx-" + order[0])
        with Index.open_writer(ipath) as w:
            for f in order:                      # two runs: track ids follow this order
                w.add([tmp_path / "a" / f])
        result = Index.open(ipath).match_audio(query, SR, MATCH_PRESETS["recording"])
        top2 = result.matches[:2]
        assert len(top2) == 2, [(track_of(m), m.score) for m in result.matches]
        assert top2[0].score == top2[1].score          # the same evidence ...
        assert top2[0].significance > top2[1].significance   # ... ranked by significance
        rankings.append([track_of(m) for m in top2])
    assert rankings[0] == rankings[1]


# --------------------------------------------------------------------------- audio verification

def test_verification_reports_a_weak_match_whose_audio_correlates(catalogue, index):
    """A match just under the landmark threshold is reported when its audio correlates with
    the catalogue file at the matched place (and carries that correlation), and is not
    reported with verification off.  Matches that pass on their landmarks are not
    verified."""
    name = "track04.wav"
    y, start = catalogue.excerpt(name, 9.0, 4.0)
    plain = index.match_audio(y, SR)
    assert plain.matches and plain.matches[0].verified is None
    threshold = plain.matches[0].significance + 1.0      # just out of the landmarks' reach
    mcfg = MATCH_PRESETS["default"].with_(min_significance=threshold, verify_min_significance=0.0)
    res = index.match_audio(y, SR, mcfg)
    assert res.matches, "no verified match"
    m = res.matches[0]
    assert track_of(m) == name and abs(alignment_offset(m) - start) <= 0.1
    assert m.significance < threshold
    assert m.verified is not None and m.verified.correlation >= mcfg.verify_min_correlation
    assert m.verified.peaks_z >= mcfg.verify_min_peaks_z and m.verified.peaks > 0.8
    assert m.verified.coherence_z >= mcfg.verify_min_coherence_z    # the waveform itself
    assert m.to_dict()["verified"] == pytest.approx(
        {"correlation": m.verified.correlation, "peaks": m.verified.peaks,
         "peaks_z": m.verified.peaks_z, "coherence": m.verified.coherence,
         "coherence_z": m.verified.coherence_z}, abs=1e-2)
    assert not [x for x in index.match_audio(y, SR, mcfg.with_(verify_audio=False)).matches
                if track_of(x) == name]


def test_verification_finds_a_recording_under_a_loud_mix(catalogue, index):
    """Under white noise at 0 dB a weak candidate's spectrogram no longer correlates, but
    the recording's spectral peaks are still in the query at the alignment: the match is
    let through on the peaks alone, and not when that route is closed."""
    name = "track03.wav"
    clean, start = catalogue.excerpt(name, 12.0, 8.0)
    noise = np.random.default_rng(11).normal(0.0, float(np.std(clean)), clean.shape)
    y = (clean + noise).astype(np.float32)
    loose = MATCH_PRESETS["default"].with_(min_significance=0.0, min_contrast=0.0,
                                           verify_audio=False)
    candidate = [m for m in index.match_audio(y, SR, loose).matches if track_of(m) == name][0]
    threshold = candidate.significance + 1.0
    peaks_only = MATCH_PRESETS["default"].with_(min_significance=threshold,
                                                verify_min_significance=0.0,
                                                verify_min_correlation=1.01,
                                                verify_min_coherence_z=math.inf)
    res = index.match_audio(y, SR, peaks_only)
    m = [x for x in res.matches if track_of(x) == name][0]
    assert abs(alignment_offset(m) - start) <= 0.1 and m.significance < threshold
    assert m.verified.peaks_z >= peaks_only.verify_min_peaks_z
    assert m.verified.correlation < 0.8
    closed = peaks_only.with_(verify_min_peaks_z=math.inf)
    assert not [x for x in index.match_audio(y, SR, closed).matches if track_of(x) == name]


def test_a_use_under_the_landmark_floor_is_found_by_its_peaks(catalogue, index):
    """3 s of a recording under other music twice as loud leave it 8 aligned landmarks,
    under the 10 a match needs: with nothing significant in the query, such a candidate
    is still checked on the audio, and reported where its peaks stand out; without that
    tier (candidates need 10 landmarks, as before) it is not."""
    name = "track01.wav"
    y, ref_start = catalogue.excerpt(name, 20.0, 3.0)
    query = catalogue.other_song(NON_CATALOGUE_SEEDS[1], 20.0).copy()
    at = 8.0
    a = int(at * SR)
    query *= 2.0 * np.std(y) / np.std(query[a:a + y.shape[0]])     # the other music: +6 dB
    query[a:a + y.shape[0]] += y
    query = query.astype(np.float32)
    mcfg = MATCH_PRESETS["default"]
    res = index.match_audio(query, SR, mcfg)
    m = [x for x in res.matches if track_of(x) == name][0]
    assert m.score < mcfg.min_score and m.significance < mcfg.min_significance
    assert abs(alignment_offset(m) - (ref_start - at)) <= 0.1
    assert m.verified is not None and m.verified.peaks_z >= mcfg.verify_min_peaks_z
    assert abs(m.query_start - at) <= 0.5, m.query_start
    floor = mcfg.with_(verify_min_score=mcfg.min_score, mix_peaks_per_second=0.0)
    assert not [x for x in index.match_audio(query, SR, floor).matches if track_of(x) == name]


def test_the_mix_look_finds_a_use_the_landmarks_leave_under_their_floor(catalogue, index):
    """The same 3 s under music twice as loud, without the peak test's tier: the mix look
    (small peak neighbourhoods, identity voted window by window) proposes its alignment,
    and the coherence test alone accepts it, at its place; with the mix look off it is
    not found (the test above), and the unrelated music alone gives no match."""
    name = "track01.wav"
    query, ref_start = _under_louder_music(catalogue, name, 20.0, 3.0, 1, 6.0, 8.0)
    mcfg = MATCH_PRESETS["default"].with_(verify_min_score=MATCH_PRESETS["default"].min_score)
    assert mcfg.mix_look
    m = [x for x in index.match_audio(query, SR, mcfg).matches if track_of(x) == name][0]
    assert abs(alignment_offset(m) - (ref_start - 8.0)) <= 0.1
    assert abs(m.speed - 1.0) <= 0.01 and abs(m.pitch_semitones) <= 0.25
    assert m.verified is not None and m.verified.coherence_z >= mcfg.verify_min_coherence_z
    assert abs(m.query_start - 8.0) <= 0.5, m.query_start
    other = catalogue.other_song(NON_CATALOGUE_SEEDS[1], 20.0)
    assert index.match_audio(other, SR, mcfg).matches == ()


def _mix_candidate(track_id: int, q_start: float, q_end: float, ref_offset: float,
                   significance: float, fs: float):
    """Mix-look evidence of ``track_id`` on the query segment ``[q_start, q_end]`` s,
    aligned so that reference time = query time + ``ref_offset`` (speed 1, pitch 0);
    ``fs``: seconds per frame."""
    from earmark.match import _Evidence
    q = np.linspace(q_start / fs, q_end / fs, 40)
    return _Evidence(track=track_id, segment=0, score=9, significance=significance, speed=1.0,
                     pitch=0.0, line_b=ref_offset / fs, q_frames=q, ref_frames=q + ref_offset / fs,
                     q_end_frames=q + 10.0)


def test_a_near_miss_of_the_mix_look_has_its_recordings_other_alignments_checked(
        catalogue, index, monkeypatch):
    """The mix look checks its two most significant alignments.  When one of them is a
    near miss - the recording's waveform stands out of chance there but holds over too
    little of the proposed segment (a repeat of the section, a segment longer than the
    use) - the recording's other alignments are checked too, and the one that holds is
    the match, at its place.  Without that third alignment nothing is reported (the
    near miss itself is not a match)."""
    import earmark.index.catalogue as catalogue_module
    from earmark import verify
    from earmark.fingerprint.audio import resample
    name, at = "track01.wav", 8.0
    query, ref_start = _under_louder_music(catalogue, name, 12.0, 3.0, 1, 6.0, at)
    ids = {track_of(r): r.track_id for r in index.tracks()}
    offset = ref_start - at
    mcfg = MATCH_PRESETS["default"].with_(verify_min_score=MATCH_PRESETS["default"].min_score)
    fs = index.config.frame_seconds
    # The right alignment over a segment holding 1.5 s of the 3-s use in 9 s.
    diluted = _mix_candidate(ids[name], 9.5, 18.5, offset, 12.0, fs)
    m = index._to_match([diluted], 20.0)(diluted)
    check = verify.verify_segment(resample(query, SR, index.config.sr), m.query_start,
                                  m.query_end, m.reference.path, m.reference_start, 1.0, 0.0,
                                  index.config)
    assert check.coherence_z >= mcfg.verify_min_coherence_z            # stands out...
    assert check.coherence < mcfg.verify_min_coherence                  # ...holds too little
    elsewhere = _mix_candidate(ids["track02.wav"], 2.0, 6.0, 30.0, 8.0, fs)  # another one
    right = _mix_candidate(ids[name], at, at + 3.0, offset, 5.0, fs)  # third by significance
    for proposed, found in (([diluted, elsewhere, right], True), ([diluted, elsewhere], False)):
        monkeypatch.setattr(catalogue_module, "mix_search", lambda *a, **k: list(proposed))
        matches = index.match_audio(query, SR, mcfg.with_(verify_min_peaks_z=math.inf)).matches
        assert [track_of(x) for x in matches] == ([name] if found else [])
        if found:
            assert abs(alignment_offset(matches[0]) - offset) <= 0.1
            assert abs(matches[0].query_start - at) <= 0.5, matches[0].query_start


def _verified_match(track_id: int, query_start: float, offset: float, coherence: float | None,
                    speed: float = 1.0):
    """A match of recording ``track_id`` verified on the audio, its reference time
    ``offset`` + ``speed`` x query time, over 4 s from ``query_start``."""
    from earmark.evidence import AudioCheck, Match, Reference
    return Match(reference=Reference(track_id=track_id, path=f"track{track_id}.wav"), score=8,
                 significance=8.0, query_start=query_start, query_end=query_start + 4.0,
                 reference_start=offset + speed * query_start,
                 reference_end=offset + speed * (query_start + 4.0), coverage=0.4, speed=speed,
                 pitch_semitones=0.0,
                 verified=AudioCheck(correlation=0.3, peaks=None, peaks_z=None,
                                     coherence=coherence,
                                     coherence_z=None if coherence is None else 30.0))


def test_the_mix_look_moves_a_weak_match_only_to_a_better_alignment_elsewhere():
    """Beside matches that rest on an audio check, the mix look's alignment of the same
    recording takes a match's place only where it aligns the recording elsewhere and its
    waveform holds better there; a recording not matched is added."""
    from earmark.index.catalogue import _with_mix_look
    repeat = _verified_match(1, 5.4, 394.5, 0.19)                 # a repeat of the section
    use = _verified_match(1, 3.2, 388.5, 0.51)                    # the use itself
    assert _with_mix_look([repeat], [use], 10) == [use]
    assert _with_mix_look([use], [repeat], 10) == [use]           # holds less there
    tighter = _verified_match(1, 3.4, 388.5 + 0.1, 0.6)           # same alignment, shorter
    assert _with_mix_look([use], [tighter], 10) == [use]
    transformed = _verified_match(1, 3.2, 300.0, None, speed=1.05)  # no waveform to compare
    assert _with_mix_look([transformed], [use], 10) == [transformed]
    other = _verified_match(2, 12.0, 40.0, 0.3)
    assert _with_mix_look([repeat], [other], 10) == [repeat, other]
    assert _with_mix_look([repeat], [other], 1) == [repeat]


def test_the_mix_look_runs_when_every_match_rests_on_an_audio_check(catalogue, index,
                                                                      monkeypatch):
    """A query whose only match is under the landmarks' threshold (verified on the audio)
    also gets the mix look; one with a match over it does not."""
    calls = []
    real = Index._mix_look

    def counted(self, *args, **kwargs):
        calls.append(True)
        return real(self, *args, **kwargs)

    monkeypatch.setattr(Index, "_mix_look", counted)
    mcfg = MATCH_PRESETS["default"]
    weak, _ = _under_louder_music(catalogue, "track02.wav", 20.0, 2.0, seed=1, louder_db=9,
                                  at=8.0)
    matches = index.match_audio(weak, SR, mcfg).matches
    assert [track_of(m) for m in matches] == ["track02.wav"]
    assert matches[0].significance < mcfg.min_significance and calls
    calls.clear()
    clean, _ = catalogue.excerpt("track02.wav", 20.0, 8.0)
    matches = index.match_audio(clean, SR, mcfg).matches
    assert matches[0].significance >= mcfg.min_significance and not calls


def _under_louder_music(catalogue, name: str, start: float, seconds: float, seed: int,
                        louder_db: float, at: float) -> tuple[np.ndarray, float]:
    """``seconds`` of catalogue song ``name`` from ``start``, placed at ``at`` in 20 s of
    non-catalogue music ``louder_db`` louder there.  Returns the query and the excerpt's
    start in the reference."""
    y, ref_start = catalogue.excerpt(name, start, seconds)
    query = catalogue.other_song(NON_CATALOGUE_SEEDS[seed], 20.0).copy()
    a = int(at * SR)
    query *= 10 ** (louder_db / 20) * np.std(y) / np.std(query[a:a + y.shape[0]])
    query[a:a + y.shape[0]] += y
    return query.astype(np.float32), ref_start


def test_a_sample_under_louder_music_is_found_by_its_waveform(catalogue, index):
    """2 s of a recording at identity under other music 9 dB louder: 8 aligned landmarks
    and too few of the recording's peaks for the peak test, but the query keeps the
    recording's waveform, whose phase coherence stands far out of chance.  It is reported
    there, with the place, and not when that route is closed."""
    name, at = "track02.wav", 8.0
    query, ref_start = _under_louder_music(catalogue, name, 20.0, 2.0, seed=1, louder_db=9,
                                           at=at)
    mcfg = MATCH_PRESETS["default"]
    m = [x for x in index.match_audio(query, SR, mcfg).matches if track_of(x) == name][0]
    assert m.score < mcfg.min_score and m.significance < mcfg.min_significance
    assert abs(alignment_offset(m) - (ref_start - at)) <= 0.1
    assert m.verified.coherence_z >= mcfg.verify_min_coherence_z
    assert m.verified.peaks_z is None or m.verified.peaks_z < mcfg.verify_min_peaks_z
    closed = mcfg.with_(verify_min_coherence_z=math.inf)
    assert not [x for x in index.match_audio(query, SR, closed).matches if track_of(x) == name]


def test_a_use_with_few_landmarks_left_is_checked_by_its_waveform(catalogue, index):
    """4 s of a recording under other music 3 dB louder keeps 6 landmarks on its line,
    under the floor of the peak and correlation tests (``verify_min_score``).  At
    identity the coherence test still checks it (``coherence_min_score``), and its
    waveform stands out: reported at the right place.  With the floor at
    ``verify_min_score``, or the coherence route closed, it is not reported."""
    name, at = "track03.wav", 8.0
    query, ref_start = _under_louder_music(catalogue, name, 10.0, 4.0, seed=2, louder_db=3,
                                           at=at)
    mcfg = MATCH_PRESETS["default"]
    m = [x for x in index.match_audio(query, SR, mcfg).matches if track_of(x) == name][0]
    assert mcfg.coherence_min_score <= m.score < mcfg.verify_min_score
    assert abs(alignment_offset(m) - (ref_start - at)) <= 0.1
    assert abs(m.query_start - at) <= 0.5 and abs(m.query_end - (at + 4.0)) <= 0.5
    assert m.verified.coherence_z >= mcfg.verify_min_coherence_z
    # (The mix look, another route to the coherence test, is closed too in the first.)
    for closed in (mcfg.with_(coherence_min_score=mcfg.verify_min_score,
                              mix_peaks_per_second=0.0),
                   mcfg.with_(verify_min_coherence_z=math.inf)):
        assert not [x for x in index.match_audio(query, SR, closed).matches
                    if track_of(x) == name]


def test_coherence_needs_the_waveform_itself(catalogue):
    """The coherence of a recording under other music as loud as it stands out at its own
    alignment only: not a second off, not against another recording, and not for the same
    spectrogram with other phases (Griffin-Lim resynthesis), which the peak test still
    accepts.  A match with a pitch shift is not compared sample for sample."""
    import librosa

    from earmark.fingerprint.audio import resample
    from earmark.fingerprint.config import DEFAULT
    from earmark.verify import NULL_MAX_LAG_SECONDS, check_alignment

    sr = DEFAULT.sr
    song = resample(catalogue.songs["track02.wav"], SR, sr)
    other = resample(catalogue.songs["track06.wav"], SR, sr)
    start = 8.0
    excerpt = song[int(start * sr):int((start + 6.0) * sr)]
    bed = resample(catalogue.other_song(NON_CATALOGUE_SEEDS[0], 20.0), SR, sr)
    bed = bed[:excerpt.shape[0]] * float(np.std(excerpt) / np.std(bed[:excerpt.shape[0]]))
    mixed = (excerpt + bed).astype(np.float32)                                # 0 dB

    def check(reference, at, query=mixed, pitch=0.0):
        return check_alignment(query, reference[int((at - NULL_MAX_LAG_SECONDS) * sr):],
                               1.0, pitch, DEFAULT)

    found = check(song, start)
    assert found.coherence_z >= 10
    assert check(song, start + 1.0).coherence_z < 5
    assert check(other, start).coherence_z < 5
    magnitude = np.abs(librosa.stft(excerpt, n_fft=512, hop_length=128))
    regenerated = librosa.griffinlim(magnitude, n_iter=32, hop_length=128, n_fft=512,
                                     random_state=0, length=excerpt.shape[0])
    phase_lost = check(song, start, regenerated.astype(np.float32))
    # (Griffin-Lim keeps some of a held tone's phase: under the gate, a fraction of the
    # mixed waveform's coherence.)
    assert phase_lost.peaks_z >= 10 and phase_lost.coherence_z < 10
    assert phase_lost.coherence_z < found.coherence_z / 3, (phase_lost, found)
    assert check(song, start, pitch=2.0).coherence is None


def test_coherence_test_asks_for_a_share_of_the_waveform_not_a_few_hits():
    """A long segment makes even a faint coherence stand out of chance (faint audio
    shared by two tracks of one game: coherence 0.07 at z 12.7).  The test asks for both:
    the standing and a share of the segment's time-frequency cells (0.15; a recording
    under other music at 0 dB holds 0.17 or more)."""
    from earmark.evidence import AudioCheck
    from earmark.verify import passes

    mcfg = MATCH_PRESETS["default"]
    assert passes(AudioCheck(correlation=0.2, peaks=0.1, peaks_z=3.0, coherence=0.19,
                             coherence_z=30.0), mcfg)
    assert not passes(AudioCheck(correlation=0.2, peaks=0.1, peaks_z=3.0, coherence=0.07,
                                 coherence_z=30.0), mcfg)
    assert not passes(AudioCheck(correlation=0.2, peaks=0.1, peaks_z=3.0, coherence=0.5,
                                 coherence_z=9.0), mcfg)
    assert not passes(AudioCheck(correlation=0.2, peaks=0.1, peaks_z=3.0), mcfg)


def test_peak_test_abstains_on_a_recording_with_too_few_peaks():
    """Four short notes over digital silence: a query holding one of them, at its place,
    has most of the window's few peaks and none at any other alignment, so their spread
    is zero and the note would stand out without bound (z 714 before the guard).  The
    peak test abstains there, and the candidate cannot pass on it."""
    from earmark.fingerprint.config import DEFAULT
    from earmark.synth import synth_song
    from earmark.verify import NULL_MAX_LAG_SECONDS, check_alignment, passes

    sr = DEFAULT.sr

    def note(y: np.ndarray, at: float, hz: float) -> None:
        n = int(0.15 * sr)
        a = int(at * sr)
        y[a:a + n] += 0.5 * np.sin(2 * np.pi * hz * np.arange(n) / sr) * np.hanning(n)

    reference = np.zeros(12 * sr, np.float32)
    for at, hz in ((3.0, 440.0), (5.0, 660.0), (7.0, 1234.0), (9.0, 300.0)):
        note(reference, at, hz)
    query = np.zeros(6 * sr, np.float32)
    note(query, 3.0 - NULL_MAX_LAG_SECONDS, 440.0)          # the first note, at its place
    check = check_alignment(query, reference, 1.0, 0.0, DEFAULT)
    assert check is not None and check.peaks > 0.5 and check.peaks_z is None
    assert not passes(check, MATCH_PRESETS["default"])
    # The same window with every note: still too few peaks to tell by peaks, while the
    # audio is plainly the same (correlation 1.0).
    whole = reference[int(NULL_MAX_LAG_SECONDS * sr):][:6 * sr]
    full = check_alignment(whole, reference, 1.0, 0.0, DEFAULT)
    assert full.peaks_z is None and full.peaks == 1.0 and full.correlation > 0.99
    # Music has far more: 5 s of a synthetic song are tested.
    song = synth_song(seed=5, seconds=12.0, sr=sr)
    music = check_alignment(song[2 * sr:7 * sr], song, 1.0, 0.0, DEFAULT)
    assert music.peaks_z is not None and music.peaks_z > 10


def test_peak_check_needs_the_right_alignment_and_recording(catalogue):
    """The peak statistic of an excerpt under noise stands out at its own alignment only:
    not a second off, not against another recording, not through the wrong pitch."""
    from earmark.fingerprint.config import DEFAULT
    from earmark.fingerprint.audio import resample
    from earmark.verify import NULL_MAX_LAG_SECONDS, check_alignment

    sr = DEFAULT.sr
    song = resample(catalogue.songs["track02.wav"], SR, sr)
    other = resample(catalogue.songs["track06.wav"], SR, sr)
    start = 8.0
    excerpt = song[int(start * sr):int((start + 8.0) * sr)]
    noise = np.random.default_rng(3).normal(0.0, float(np.std(excerpt)), excerpt.shape)
    mixed = (excerpt + noise * 10 ** (-3 / 20)).astype(np.float32)          # SNR 3 dB

    def check(reference, at, pitch=0.0, query=mixed):
        return check_alignment(query, reference[int((at - NULL_MAX_LAG_SECONDS) * sr):],
                               1.0, pitch, DEFAULT)

    assert check(song, start).peaks_z >= 10
    assert check(song, start + 1.0).peaks_z < 5
    assert check(other, start).peaks_z < 5
    shifted = pedalboard.time_stretch(mixed[None, :], sr, stretch_factor=1.0,
                                      pitch_shift_in_semitones=2.0)[0].astype(np.float32)
    assert check(song, start, 2.0, shifted).peaks_z >= 10
    assert check(song, start, 0.0, shifted).peaks_z < 5


def test_aligned_correlation_maps_pitch_and_speed(catalogue):
    """A pitch-shifted, then a sped-up excerpt correlates with its recording only through
    the right transform; another recording does not correlate."""
    from earmark.fingerprint.config import DEFAULT
    from earmark.fingerprint.audio import resample
    from earmark.verify import MAX_LAG_SECONDS, aligned_correlation

    sr = DEFAULT.sr
    song = resample(catalogue.songs["track02.wav"], SR, sr)
    start = 6.0
    reference = song[int((start - MAX_LAG_SECONDS) * sr):]
    clean = song[int(start * sr):int((start + 6.0) * sr)]
    shifted = pedalboard.time_stretch(clean[None, :], sr, stretch_factor=1.0,
                                      pitch_shift_in_semitones=2.0)[0].astype(np.float32)
    assert aligned_correlation(shifted, reference, 1.0, 2.0, DEFAULT) >= 0.8
    assert aligned_correlation(shifted, reference, 1.0, 0.0, DEFAULT) < 0.6
    faster = soxr.resample(clean, sr * 1.1, sr).astype(np.float32)   # speed 1.1: +1.65 st
    pitch = 12 * math.log2(1.1)
    assert aligned_correlation(faster, reference, 1.1, pitch, DEFAULT) >= 0.8
    assert aligned_correlation(faster, reference, 1.0, 0.0, DEFAULT) < 0.6
    other = resample(catalogue.songs["track05.wav"], SR, sr)[int(5.5 * sr):]
    assert aligned_correlation(clean, other, 1.0, 0.0, DEFAULT) < 0.6


def test_verification_without_the_catalogue_file_is_skipped(catalogue, tmp_path):
    from earmark.fingerprint.config import DEFAULT
    from earmark.verify import verify_segment

    y = np.asarray(catalogue.songs["track01.wav"][: 5 * SR], np.float32)
    assert verify_segment(y, 0.0, 4.0, tmp_path / "moved.wav", 1.0, 1.0, 0.0,
                          DEFAULT) is None
    (tmp_path / "broken.wav").write_bytes(b"RIFF....WAVEfmt garbage")
    assert verify_segment(y, 0.0, 4.0, tmp_path / "broken.wav", 1.0, 1.0, 0.0,
                          DEFAULT) is None


# --------------------------------------------------------------------------- segment edges

def _embedded(catalogue, name: str, ref_start: float, seconds: float, at: float,
              total: float, seed: int) -> np.ndarray:
    """``seconds`` of a catalogue piece from ``ref_start``, added at query time ``at`` to
    ``total`` seconds of pink noise as loud as it (0 dB)."""
    excerpt, _ = catalogue.excerpt(name, ref_start, seconds)
    noise = catalogue.noise(seed, total, "pink")
    noise = noise * float(np.std(excerpt) / np.std(noise))
    a = int(round(at * SR))
    noise[a:a + excerpt.shape[0]] += excerpt
    return noise.astype(np.float32)


def test_use_edges_reads_where_an_excerpt_begins_and_ends(catalogue):
    """Given a segment a second short at both ends, or a second too long, the edges read
    off the audio are the excerpt's own (within 0.3 s: a note may start or fade
    a little inside it)."""
    from earmark.fingerprint.config import DEFAULT
    from earmark.fingerprint.audio import resample
    from earmark.verify import use_edges

    name = "track05.wav"
    y = resample(_embedded(catalogue, name, 10.0, 6.0, 7.0, 20.0, seed=4), SR, DEFAULT.sr)
    path = catalogue.folder / name
    for start, end in ((8.0, 12.0), (6.0, 14.0)):
        got = use_edges(y, start, end, path, 10.0 + (start - 7.0), 1.0, 0.0, DEFAULT)
        assert got is not None
        assert abs(got[0] - 7.0) <= 0.3 and abs(got[1] - 13.0) <= 0.3, got
    # Only the edges asked for move; matched landmarks bound how far a start can move in.
    got = use_edges(y, 8.0, 12.0, path, 11.0, 1.0, 0.0, DEFAULT, refine_end=False)
    assert abs(got[0] - 7.0) <= 0.3 and got[1] == 12.0
    got = use_edges(y, 6.0, 14.0, path, 9.0, 1.0, 0.0, DEFAULT,
                    anchor_times=np.array([6.2, 6.5, 9.0, 11.0]))
    assert got[0] == pytest.approx(6.5) and abs(got[1] - 13.0) <= 0.3
    # A use longer than one window (here 22 s) has each edge read in a window of its own:
    # the same edges as a short segment at either end gives, within 0.5 s of the truth
    # (this piece has few peaks at both ends of the excerpt).
    long_query = resample(_embedded(catalogue, name, 8.0, 22.0, 5.0, 40.0, seed=6), SR,
                          DEFAULT.sr)
    got = use_edges(long_query, 6.0, 26.0, path, 9.0, 1.0, 0.0, DEFAULT)
    assert abs(got[0] - 5.0) <= 0.5 and abs(got[1] - 27.0) <= 0.5, got
    frame = DEFAULT.frame_seconds         # the windows' frame grids differ by a fraction
    assert got[0] == pytest.approx(
        use_edges(long_query, 6.0, 12.0, path, 9.0, 1.0, 0.0, DEFAULT)[0], abs=frame)
    assert got[1] == pytest.approx(
        use_edges(long_query, 20.0, 26.0, path, 23.0, 1.0, 0.0, DEFAULT)[1], abs=frame)
    # Another recording at that place: the audio cannot tell, the segment stays.
    assert use_edges(y, 8.0, 12.0, catalogue.folder / "track02.wav", 11.0, 1.0, 0.0,
                     DEFAULT) is None
    # Through a pitch shift the waveform is not compared sample for sample: the edges come
    # from the recording's peaks, which the shift smears a little (within 0.5 s).
    excerpt, _ = catalogue.excerpt(name, 10.0, 6.0)
    shifted = pedalboard.time_stretch(excerpt[None, :], SR, stretch_factor=1.0,
                                      pitch_shift_in_semitones=2.0)[0]
    noise = catalogue.noise(4, 20.0, "pink")
    noise = noise * float(np.std(shifted) / np.std(noise))                   # 0 dB
    noise[int(7.0 * SR):int(7.0 * SR) + shifted.shape[0]] += shifted
    got = use_edges(resample(noise.astype(np.float32), SR, DEFAULT.sr), 8.0, 12.0, path, 11.0,
                    1.0, 2.0, DEFAULT)
    assert abs(got[0] - 7.0) <= 0.5 and abs(got[1] - 13.0) <= 0.5, got


def test_match_segment_of_an_excerpt_under_noise_is_its_own(catalogue, index):
    """A 6-s excerpt under pink noise at 0 dB in 24 s: the match's segment is the
    excerpt's, in the query and in the recording, where the landmarks alone put its start
    0.7 s late."""
    name = "track06.wav"
    y = _embedded(catalogue, name, 14.0, 6.0, 9.5, 24.0, seed=8)
    plain = MATCH_PRESETS["default"].with_(audio_edges=False)
    landmarks_only = [x for x in index.match_audio(y, SR, plain).matches if track_of(x) == name][0]
    assert landmarks_only.query_start - 9.5 > 0.5
    m = [x for x in index.match_audio(y, SR).matches if track_of(x) == name][0]
    assert abs(m.query_start - 9.5) <= 0.2 and abs(m.query_end - 15.5) <= 0.2
    assert abs(m.reference_start - 14.0) <= 0.2 and abs(alignment_offset(m) - 4.5) <= 0.1
    assert m.coverage == pytest.approx((m.query_end - m.query_start) / 24.0, abs=1e-6)


def test_key_order_is_lexsorts_permutation():
    """The fast landmark ordering gives exactly np.lexsort's permutation: distinct pitch
    differences (the rule), ties (the fallback), NaN, and anchor bins out of int16 range."""
    from earmark.match import key_order

    rng = np.random.default_rng(5)
    for n in (0, 1, 2, 17, 6000):
        f1 = np.floor(rng.uniform(0, 130, n))
        df = rng.normal(0.0, 8.0, n)
        dt = rng.uniform(1.0, 66.0, n)
        cases = [(f1, df, dt),
                 (f1, np.round(df), dt),                      # many tied df, dt decides
                 (f1, np.round(df), np.round(dt)),            # ties on both: input order
                 (f1 + 40000.0, df, dt)]                      # bins past int16
        if n > 2:
            with_nan = df.copy()
            with_nan[[0, n // 2]] = np.nan
            cases.append((f1, with_nan, dt))
        for a, b, c in cases:
            assert key_order(a, b, c).tolist() == np.lexsort((c, b, a)).tolist()


def test_the_mix_looks_windows_hold_the_landmarks_one_window_each_would():
    """The mix look's windows from one pass over the landmarks are, landmark for
    landmark and in key order, the windows one mask each gives, also for anchors that
    lie on an edge whose quotient rounds across it (0.7 is inexact in binary)."""
    from earmark.match import QueryLandmarks, _window_queries, _window_query

    rng = np.random.default_rng(3)
    window_frames, n_windows = 0.7, 300
    on_edges = np.arange(n_windows + 3) * window_frames         # past the last, too
    times = np.concatenate([on_edges, np.nextafter(on_edges, -1.0),
                            rng.uniform(0.0, (n_windows + 2) * window_frames, 2000)])
    rng.shuffle(times)
    q = QueryLandmarks(times, rng.normal(size=times.size), rng.normal(size=times.size),
                       rng.normal(size=times.size), 4.0)
    windows = _window_queries(q, window_frames, n_windows)
    assert len(windows) == n_windows
    kept = 0
    for k, w in enumerate(windows):
        one = _window_query(q, k * window_frames, (k + 1) * window_frames)
        for field in ("time", "f1", "df", "dt"):
            np.testing.assert_array_equal(getattr(w, field), getattr(one, field))
        assert w.duration == q.duration
        kept += w.time.size
    assert kept == np.count_nonzero((times >= 0) & (times < n_windows * window_frames))


# --------------------------------------------------------------------------- repeated sections


def test_a_use_of_a_repeated_section_is_placed_at_the_copy_its_audio_matches(tmp_path,
                                                                                monkeypatch):
    """A recording that plays section S twice, the second time with a quiet part over it
    (a loop with a layer added, -26 dB: not a sample-for-sample copy).  An excerpt of the
    first copy aligns with both copies by its landmarks (the second with ~0.87 of them);
    the search keeps the weaker as a *rival* of the stronger, and the audio places the
    use at the first copy whichever of the two the landmarks preferred (its spectrogram
    correlates 0.91 there and 0.82 at the second).  Without audio checks (the fast
    preset) the landmarks' choice stands."""
    section = synth_song(seed=71, seconds=8.0, sr=SR)
    layer = synth_song(seed=72, seconds=8.0, sr=SR)
    parts = [synth_song(seed=73, seconds=6.0, sr=SR), section,
             synth_song(seed=74, seconds=6.0, sr=SR), section + 0.05 * layer,
             synth_song(seed=75, seconds=4.0, sr=SR)]
    first, second = 6.0, 20.0                       # where the two copies start (s)
    reference = np.concatenate(parts).astype(np.float32) * 0.6
    folder = tmp_path / "cat"
    folder.mkdir()
    write_audio(folder / "looped.wav", reference)
    with Index.open_writer(tmp_path / "idx") as w:
        w.add([folder], jobs=1)
    idx = Index.open(tmp_path / "idx")
    mcfg = MATCH_PRESETS["default"]
    y = add_noise(reference[int((first + 1.0) * SR):int((first + 7.0) * SR)], 40.0, seed=3)

    seen = []
    placed = Index._placed_by_audio

    def spy(self, audio, found, duration, cfg):
        seen.append((audio, [e for e in found if e.rivals], duration))
        return placed(self, audio, found, duration, cfg)

    monkeypatch.setattr(Index, "_placed_by_audio", spy)
    # The faint layer leaves the two copies ~0.9 of the same matched landmarks, which the
    # search otherwise takes for an exact loop (either copy right; tested below): here
    # the audio's decision itself is under test.
    monkeypatch.setattr(earmark.match, "RIVAL_MAX_SHARED", 1.01)
    result = idx.match_audio(y, SR, mcfg)
    check_top(result, "looped.wav", first + 1.0)
    audio, with_rivals, duration = seen[0]
    assert len(with_rivals) == 1 and len(with_rivals[0].rivals) == 1
    fs = idx.config.frame_seconds
    a, b = with_rivals[0], with_rivals[0].rivals[0]
    at_first, at_second = (a, b) if a.line_b < b.line_b else (b, a)
    assert at_first.line_b * fs == pytest.approx(first + 1.0, abs=0.1)
    assert at_second.line_b * fs == pytest.approx(second + 1.0, abs=0.1)
    # Whichever copy the landmarks preferred, the audio puts the use at the first.
    wrong_kept = dataclasses.replace(at_second, rivals=[at_first])
    right_kept = dataclasses.replace(at_first, rivals=[at_second])
    assert placed(idx, audio, [wrong_kept], duration, mcfg) == [at_first]
    assert placed(idx, audio, [right_kept], duration, mcfg) == [right_kept]
    # No audio checks (the fast preset's way): the landmarks' choice stands.
    assert placed(idx, audio, [wrong_kept], duration, mcfg.with_(verify_audio=False)) \
        == [wrong_kept]
    # A catalogue file moved away since indexing: nothing to compare, the choice stands.
    (folder / "looped.wav").rename(tmp_path / "moved.wav")
    assert placed(idx, audio, [wrong_kept], duration, mcfg) == [wrong_kept]


def test_rivals_are_other_places_with_nearly_as_many_landmarks_not_the_same_ones():
    """A same-place alignment of the same recording is kept as a rival only at another
    place of the reference (>= 1 s away), with >= 0.8 of the landmarks, and resting on
    other query landmarks than the kept one (an exact loop's copies share them)."""
    from earmark.match import _Evidence, _suppress_overlaps

    fs = 0.016

    def alignment(score: int, ref_seconds: float, anchors) -> _Evidence:
        q = np.asarray(anchors, dtype=float)
        return _Evidence(track=1, segment=0, score=score, significance=float(score),
                         speed=1.0, pitch=0.0, line_b=ref_seconds / fs, q_frames=q,
                         ref_frames=q + ref_seconds / fs, q_end_frames=q + 10.0)

    kept = alignment(100, 10.0, range(0, 100))
    other_copy = alignment(90, 40.0, range(50, 150))        # half of its anchors shared
    exact_loop = alignment(95, 70.0, range(3, 103))         # 97 of 103 shared
    too_weak = alignment(70, 100.0, range(30, 100))
    too_close = alignment(90, 10.5, range(40, 130))         # 0.5 s away: the same place
    kept_out = _suppress_overlaps([too_weak, exact_loop, kept, too_close, other_copy], 0.25, fs)
    assert kept_out == [kept]
    assert kept.rivals == [other_copy]


def test_coherence_stands_out_of_a_null_that_holds_copies_of_a_loop():
    """A reference that repeats a 1-s loop: the null alignments 1 s and 2 s away are
    copies of the use and hold its coherence.  In plain standard deviations of the null
    they widen it so much that the use does not stand 10 out; in robust ones (median
    absolute deviation) it stands far out, and ``coherence_z`` is the larger reading."""
    from earmark.fingerprint.config import DEFAULT as cfg
    from earmark.verify import (NULL_MAX_LAG_SECONDS, NULL_MIN_LAG_SECONDS,
                                _coherence_test, _unit_stft, phase_coherence_per_lag)

    rng = np.random.default_rng(7)
    sr = cfg.sr
    loop = rng.standard_normal(sr).astype(np.float32)
    reference = np.tile(loop, 12)
    start = 4.0
    segment = reference[int(start * sr):int((start + 4.0) * sr)]
    query = segment + 1.5 * rng.standard_normal(segment.shape[0]).astype(np.float32)
    window = reference[int((start - NULL_MAX_LAG_SECONDS) * sr):
                       int((start + 4.0 + NULL_MAX_LAG_SECONDS + 0.5) * sr)]
    centre = int(round(NULL_MAX_LAG_SECONDS / cfg.frame_seconds))
    coherence, coherence_z = _coherence_test(query, window, centre, cfg)

    per_lag = phase_coherence_per_lag(_unit_stft(query, cfg), _unit_stft(window, cfg))
    lags = np.abs(np.arange(per_lag.shape[0]) - centre)
    null = per_lag[lags >= int(round(NULL_MIN_LAG_SECONDS / cfg.frame_seconds))]
    plain = (coherence - null.mean()) / null.std()
    assert plain < 10 <= coherence_z
    # Without the copies (the same noise, not looped) both readings stand out.
    unlooped = rng.standard_normal(reference.shape[0]).astype(np.float32)
    unlooped[int(start * sr):int((start + 4.0) * sr)] = segment
    window = unlooped[int((start - NULL_MAX_LAG_SECONDS) * sr):
                      int((start + 4.0 + NULL_MAX_LAG_SECONDS + 0.5) * sr)]
    assert _coherence_test(query, window, centre, cfg)[1] >= 10
