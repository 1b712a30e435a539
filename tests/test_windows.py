"""Long queries are matched in overlapping windows (bounded memory) and give the answers of
one whole query: every use once, at its place, a long use joined across windows."""

from __future__ import annotations

import numpy as np
import pytest

import earmark.index.catalogue as catalogue_module
from earmark.errors import AudioError
from earmark.fingerprint.config import MATCH_PRESETS
from earmark.windows import audio_windows

from conftest import NON_CATALOGUE_SEEDS, SR, alignment_offset, track_of, write_audio

#: Small windows, so the synthetic catalogue's pieces run across several of them.
WINDOW, OVERLAP = 20.0, 8.0


@pytest.mark.parametrize("block", [1, 7, 50, 1000])
def test_windows_cover_the_stream_with_the_overlap(block):
    sr = 10
    stream = np.arange(437, dtype=np.float32)
    got = list(audio_windows((stream[i:i + block] for i in range(0, stream.size, block)),
                             sr, window_seconds=5.0, overlap_seconds=1.5))
    assert [last for _, _, last in got] == [False] * (len(got) - 1) + [True]
    for k, (start, y, _) in enumerate(got):
        a = int(round(start * sr))
        assert a == 35 * k                                   # step = window - overlap
        np.testing.assert_array_equal(y, stream[a:a + 50])   # window length 5 s
    assert int(round(got[-1][0] * sr)) + got[-1][1].size == stream.size


def _long_query(catalogue):
    """track01 for 25 s, other music 10 s, track03 for 6 s, track05 for 30 s (71 s)."""
    a, a0 = catalogue.excerpt("track01.wav", 2.0, 25.0)
    b = catalogue.other_song(NON_CATALOGUE_SEEDS[1], 10.0)
    c, c0 = catalogue.excerpt("track03.wav", 11.0, 6.0)
    d, d0 = catalogue.excerpt("track05.wav", 4.0, 30.0)
    uses = {"track01.wav": (0.0, 25.0, a0), "track03.wav": (35.0, 41.0, c0),
            "track05.wav": (41.0, 71.0, d0)}
    return np.concatenate([a, b, c, d]), uses


def test_long_query_in_windows_reports_each_use_once_at_its_place(catalogue, index, tmp_path,
                                                                   monkeypatch):
    y, uses = _long_query(catalogue)
    path = write_audio(tmp_path / "mix.wav", y)
    longest = []
    real = catalogue_module.fingerprint_audio

    def spy(samples, *a, **k):
        longest.append(samples.shape[0])
        return real(samples, *a, **k)

    monkeypatch.setattr(catalogue_module, "fingerprint_audio", spy)
    mcfg = MATCH_PRESETS["recording"]
    res = index.match_file(path, mcfg, window_seconds=WINDOW, overlap_seconds=OVERLAP)
    assert len(longest) >= 4 and max(longest) <= WINDOW * 8000 + 1   # never the whole file
    assert res.duration == pytest.approx(y.shape[0] / SR, abs=0.01)
    names = [track_of(m) for m in res.matches]
    assert sorted(names) == sorted(uses), [(track_of(m), m.query_start, m.query_end, m.score)
                                           for m in res.matches]
    for m in res.matches:
        q0, q1, ref0 = uses[track_of(m)]
        assert abs(m.query_start - q0) <= 1.0 and abs(m.query_end - q1) <= 1.0, (
            track_of(m), m.query_start, m.query_end)
        assert abs(alignment_offset(m) - (ref0 - q0)) <= 0.1
        assert m.coverage == pytest.approx((m.query_end - m.query_start) / res.duration)
    # The same recordings as one whole query.
    whole = index.match_file(path, mcfg, window_seconds=1e6)
    assert sorted(track_of(m) for m in whole.matches) == sorted(names)


def test_silent_long_file_is_one_clear_error(index, tmp_path):
    path = write_audio(tmp_path / "silence.wav", np.zeros(int(50 * SR), np.float32))
    with pytest.raises(AudioError, match="silent"):
        index.match_file(path, window_seconds=WINDOW, overlap_seconds=OVERLAP)
