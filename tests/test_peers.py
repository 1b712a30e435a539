"""Tests for earmark.bench.peers: audfprint output parsing, peer specs, command lines.

The audfprint lines below were copied from real runs of dpwe/audfprint (commit cb03ba9) and
then edited by hand (spaces in names, negative offsets) where noted; the expected values are
read off the lines themselves.  Running audfprint itself is checked by hand, not here.
"""

from __future__ import annotations

import dataclasses
import sys
from pathlib import Path

import pytest

from earmark.bench.peers import (
    AUDFPRINT_SHIM,
    PEERS,
    AudfprintPeer,
    Peer,
    PeerError,
    PeerIndexStats,
    PeerMatch,
    make_peer,
    parse_audfprint_matches,
)
from earmark.errors import EarmarkError

REF = "/work/corpus/catalogue/planetblupi/music000.ogg"

# Default (verbose) `audfprint match` output, single core: progress lines interleaved.
DEFAULT_RUN = """\
Mon Nov 30 07:14:47 2026 Reading hash table t.pklz
Read fprints for 1 files ( 40557 hashes) from t.pklz (1.06% dropped)
Mon Nov 30 07:14:51 2026 Analyzed #0 q1.wav of 9.776 s to 975 hashes
Matched q1.wav 9.8 sec 975 raw hashes as /work/corpus/catalogue/planetblupi/music000.ogg at  119.6 s with   217 of  6597 common hashes at rank  0
Mon Nov 30 07:14:51 2026 Analyzed #1 q2.wav of 9.752 s to 948 hashes
Matched q2.wav 9.8 sec 948 raw hashes as /work/corpus/catalogue/planetblupi/music000.ogg at   30.0 s with   219 of  6167 common hashes at rank  0
Mon Nov 30 07:14:52 2026 Analyzed #2 other.wav of 9.752 s to 458 hashes
NOMATCH other.wav 9.8 sec 458 raw hashes
Processed 3 files (30.0 s total dur) in 3.4 s sec = 0.169 x RT
"""

# `--find-time-range` output.
RANGE_LINE = (
    "Matched    7.5 s starting at    1.3 s in q1.wav to time  120.8 s in "
    "/work/corpus/catalogue/planetblupi/music000.ogg with   217 of  6597 common hashes at rank  0"
)


def test_parse_default_report_lines():
    got = parse_audfprint_matches(DEFAULT_RUN)
    assert [m.query for m in got] == ["q1.wav", "q2.wav", "other.wav"]
    q1, q2, other = got
    assert q1.reference == REF
    assert q1.reference_offset == pytest.approx(119.6)
    assert q1.score == 217.0
    assert q1.detail == {"common_hashes": 6597, "rank": 0, "query_hashes": 975}
    assert (q2.reference, q2.reference_offset, q2.score) == (REF, pytest.approx(30.0), 219.0)
    assert other.reference is None and other.reference_offset is None and other.score == 0.0
    assert other.detail == {"query_hashes": 458}


def test_parse_orders_by_queries_and_fills_missing():
    queries = ["other.wav", "lost.wav", "q2.wav", "q1.wav"]
    got = parse_audfprint_matches(DEFAULT_RUN, queries)
    assert [m.query for m in got] == queries
    assert [m.reference for m in got] == [None, None, REF, REF]
    assert got[1].detail == {"missing": True} and got[1].score == 0.0
    assert got[0].detail == {"query_hashes": 458}


def test_parse_accepts_line_iterables_and_crlf():
    lines = [ln + "\r\n" for ln in DEFAULT_RUN.splitlines()]
    got = parse_audfprint_matches(lines, ["q2.wav"])
    assert got[0].reference == REF and got[0].reference_offset == pytest.approx(30.0)


def test_parse_find_time_range_offset_is_reference_time_minus_query_time():
    (m,) = parse_audfprint_matches([RANGE_LINE])
    assert m.query == "q1.wav" and m.reference == REF
    # query second 1.3 sits at reference second 120.8 -> query starts at 119.5 s
    assert m.reference_offset == pytest.approx(119.5)
    assert m.score == 217.0
    assert m.detail["query_start"] == pytest.approx(1.3)
    assert m.detail["reference_start"] == pytest.approx(120.8)
    assert m.detail["duration"] == pytest.approx(7.5)


def test_parse_names_with_spaces_and_keywords():
    # hand-edited: names containing spaces, " as ", " at " and " sec "
    line = (
        "Matched /tmp/my q as 3 sec.wav 9.7 sec 1071 raw hashes as /m/Best of at 10 s.opus "
        "at  266.4 s with   191 of   832 common hashes at rank  3"
    )
    (m,) = parse_audfprint_matches(line)
    assert m.query == "/tmp/my q as 3 sec.wav"
    assert m.reference == "/m/Best of at 10 s.opus"
    assert m.reference_offset == pytest.approx(266.4)
    assert m.detail["rank"] == 3
    (n,) = parse_audfprint_matches("NOMATCH /tmp/a b.wav 9.8 sec 458 raw hashes")
    assert n.query == "/tmp/a b.wav" and n.reference is None


def test_parse_negative_offset_and_wide_counts():
    # hand-edited: query starting 2.5 s before the reference; counts wider than the field
    line = (
        "Matched q.wav 30.0 sec 2911 raw hashes as r.wav at   -2.5 s with 123456 of 1234567 "
        "common hashes at rank 12"
    )
    (m,) = parse_audfprint_matches(line)
    assert m.reference_offset == pytest.approx(-2.5)
    assert m.score == 123456.0
    assert m.detail == {"common_hashes": 1234567, "rank": 12, "query_hashes": 2911}
    (r,) = parse_audfprint_matches(
        "Matched    7.5 s starting at    3.0 s in q.wav to time    0.5 s in r.wav "
        "with    17 of    39 common hashes at rank  0"
    )
    assert r.reference_offset == pytest.approx(-2.5)


def test_parse_keeps_only_the_best_line_per_query():
    # --max-matches 2: the first line per query is audfprint's best
    text = (
        "Matched q.wav 9.8 sec 975 raw hashes as a.ogg at   12.0 s "
        "with    50 of    90 common hashes at rank  0\n"
        "Matched q.wav 9.8 sec 975 raw hashes as b.ogg at   80.0 s "
        "with     9 of    40 common hashes at rank  1\n"
    )
    got = parse_audfprint_matches(text, ["q.wav"])
    assert len(got) == 1 and got[0].reference == "a.ogg" and got[0].score == 50.0


def test_parse_terse_verbose0_lines():
    got = parse_audfprint_matches("q1.wav\t/r/a.ogg\nq2.wav\t\n", ["q1.wav", "q2.wav"])
    assert (got[0].reference, got[0].reference_offset) == ("/r/a.ogg", None)
    assert got[1].reference is None


def test_parse_ignores_noise():
    noise = """\
Mon Nov 30 07:14:47 2026 Reading hash table t.pklz
wavfile2peaks: Error reading /tmp/bad.wav skipping
find_peaks: Warning: input signal is identically zero.
Matched something that is not a report
Saved fprints for 81 files ( 677902 hashes) to x.pklz (0.23% dropped)
"""
    assert parse_audfprint_matches(noise) == []
    assert parse_audfprint_matches("", ["q.wav"])[0].detail == {"missing": True}


def test_unreadable_query_log_line():
    from earmark.bench.peers import _UNREADABLE

    m = _UNREADABLE.match("wavfile2peaks: Error reading /tmp/a b.wav skipping")
    assert m and m["path"] == "/tmp/a b.wav"
    assert _UNREADABLE.match("Analyzed #1 /tmp/a.wav of 0.000 s to 0 hashes") is None


def _fake_checkout(tmp_path: Path) -> Path:
    root = tmp_path / "audfprint"
    root.mkdir()
    (root / "audfprint.py").write_text("# placeholder for the checkout's entry point\n")
    return root


def test_make_peer_builds_audfprint(tmp_path):
    root = _fake_checkout(tmp_path)
    peer = make_peer(f"audfprint={root}")
    assert isinstance(peer, AudfprintPeer) and isinstance(peer, Peer)
    assert peer.name == "audfprint" and peer.checkout == str(root.resolve())
    assert PEERS["audfprint"] is AudfprintPeer


@pytest.mark.parametrize(
    "spec, words",
    [
        ("olaf=/opt/olaf", "unknown peer 'olaf'"),
        ("audfprint", "NAME=PATH"),
        ("=/opt/x", "NAME=PATH"),
        ("audfprint=", "needs a path"),
        ("audfprint=/nonexistent/dir", "no audfprint.py"),
    ],
)
def test_make_peer_errors_are_one_line_value_errors(spec, words):
    with pytest.raises(ValueError) as info:
        make_peer(spec)
    msg = str(info.value)
    assert words in msg and "\n" not in msg
    if "unknown" in words or "NAME" in words:
        assert "audfprint" in msg  # lists the known peers


def test_audfprint_option_validation(tmp_path):
    root = _fake_checkout(tmp_path)
    with pytest.raises(ValueError, match="decoder"):
        AudfprintPeer(str(root), decoder="sox")
    with pytest.raises(ValueError, match="parallel"):
        AudfprintPeer(str(root), decoder="soundfile", parallel="native")
    peer = AudfprintPeer(str(root), decoder="soundfile")
    assert peer.parallel == "fork"


def test_audfprint_command_runs_shim_with_checkout(tmp_path):
    root = _fake_checkout(tmp_path)
    peer = AudfprintPeer(str(root), python="/usr/bin/python3.11", decoder="ffmpeg")
    cmd = peer.command(["match", "--dbase", "x.pklz"])
    assert cmd[:3] == ["/usr/bin/python3.11", "-c", AUDFPRINT_SHIM]
    assert cmd[3:] == [str(root.resolve()), "ffmpeg", "native", "match", "--dbase", "x.pklz"]
    compile(AUDFPRINT_SHIM, "<shim>", "exec")  # the shim is valid Python


def test_audfprint_maxtimebits_covers_longest_track(tmp_path, monkeypatch):
    root = _fake_checkout(tmp_path)
    peer = AudfprintPeer(str(root), decoder="ffmpeg")
    durations = {"short.ogg": 100.0, "long.ogg": 1755.0}
    monkeypatch.setattr("earmark.bench.peers._audio_duration", durations.get)
    # 1755 s at 11025 Hz / 256 = 75,582 frames -> 17 bits; short tracks keep the default 14
    assert peer._pick_maxtimebits(["short.ogg", "long.ogg"]) == (17, 1855.0)
    assert peer._pick_maxtimebits(["short.ogg"]) == (14, 100.0)
    # unknown durations -> room for ~25 min, total unknown
    assert peer._pick_maxtimebits(["short.ogg", "odd.xyz"]) == (16, None)
    assert AudfprintPeer(str(root), decoder="ffmpeg", maxtimebits=15)._pick_maxtimebits(
        ["long.ogg"]
    ) == (15, 1755.0)


def test_audfprint_match_before_index_is_a_peer_error(tmp_path):
    peer = AudfprintPeer(str(_fake_checkout(tmp_path)), decoder="ffmpeg")
    with pytest.raises(PeerError, match="before index"):
        peer.match(["q.wav"], 1)
    assert issubclass(PeerError, EarmarkError)


def test_audfprint_failure_surfaces_log_tail(tmp_path):
    # the placeholder checkout has no main(): the run fails and the error names the cause
    root = _fake_checkout(tmp_path)
    (tmp_path / "a.wav").write_bytes(b"")
    peer = AudfprintPeer(str(root), python=sys.executable, decoder="ffmpeg", maxtimebits=14)
    with pytest.raises(PeerError) as info:
        peer.index([str(tmp_path / "a.wav")], str(tmp_path / "work"), 1)
    msg = str(info.value)
    assert "audfprint new failed" in msg and "main" in msg and "\n" not in msg


def test_result_types_are_plain_dataclasses():
    m = PeerMatch("q.wav", None, None, 0.0)
    assert m.detail == {} and dataclasses.asdict(m)["reference"] is None
    s = PeerIndexStats(1.5, 10)
    assert (s.seconds, s.bytes_on_disk, s.detail) == (1.5, 10, {})
