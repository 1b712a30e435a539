"""``fp`` through its real entry point: exit codes like grep (0 match, 1 none, 2 error),
tables and JSON, and one line on stderr - never a traceback - for every bad input.

Most cases call ``earmark.cli.main`` in-process with file-descriptor capture (so output
that C libraries write straight to fd 2 is seen too); a sample of them, the demo and an
index-then-match round trip also run the installed ``fp`` console script.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from earmark.cli import main as fp_main

from conftest import SR, write_audio

DOCUMENTED_MATCH_KEYS = {"kind", "reference", "score", "significance", "query_start", "query_end",
                         "reference_start", "reference_end", "coverage", "speed",
                         "pitch_semitones", "verified"}


@pytest.fixture(autouse=True)
def _no_default_index(tmp_path, monkeypatch):
    """No test may fall back on the user's real index."""
    monkeypatch.setenv("FP_INDEX", str(tmp_path / "no-default-index"))
    monkeypatch.delenv("FP_DEBUG", raising=False)


@pytest.fixture
def fp(capfd):
    """Run ``fp ARGS...`` in-process; returns (exit code, stdout, stderr)."""

    def run(*args) -> tuple[int, str, str]:
        capfd.readouterr()
        try:
            fp_main([str(a) for a in args])
            code = 0
        except SystemExit as e:
            code = e.code if isinstance(e.code, int) else (0 if e.code is None else 2)
        out, err = capfd.readouterr()
        assert "Traceback" not in out + err, err
        return code, out, err

    return run


def fp_executable() -> str:
    sibling = Path(sys.executable).with_name("fp")  # the fp of the interpreter under test
    exe = str(sibling) if sibling.exists() else shutil.which("fp")
    assert Path(exe).exists(), "the `fp` console script is not installed (pip install -e .)"
    return exe


def fp_subprocess(*args, env: dict | None = None, timeout: float = 300):
    full_env = {**os.environ, **(env or {})}
    full_env.pop("FP_DEBUG", None)
    return subprocess.run([fp_executable(), *map(str, args)], capture_output=True, text=True,
                          env=full_env, timeout=timeout, stdin=subprocess.DEVNULL)


def one_error_line(err: str) -> str:
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert len(lines) == 1, f"expected one line on stderr, got {len(lines)}:\n{err}"
    return lines[0]


@pytest.fixture
def excerpt_file(catalogue, tmp_path):
    """track03 from 7 s, 6 s long, as a WAV file; returns (path, true offset)."""
    y, start = catalogue.excerpt("track03.wav", 7.0, 6.0)
    return write_audio(tmp_path / "suspect.wav", y), start


@pytest.fixture
def small_folder(catalogue, tmp_path):
    """Two catalogue pieces plus two files that cannot be indexed."""
    folder = tmp_path / "incoming"
    (folder / "sub").mkdir(parents=True)
    shutil.copyfile(catalogue.path("track01.wav"), folder / "track01.wav")
    shutil.copyfile(catalogue.path("track07.flac"), folder / "sub" / "track07.flac")
    (folder / "broken.wav").write_bytes(np.random.default_rng(1).bytes(40_000))
    (folder / "sub" / "empty.mp3").write_bytes(b"")
    (folder / "readme.txt").write_text("not audio, and not an audio extension: ignored\n")
    return folder


# --------------------------------------------------------------------------- index


def test_index_goes_past_bad_files_and_lists_them(fp, small_folder, tmp_path, catalogue):
    ipath = tmp_path / "idx"
    code, out, err = fp("index", small_folder, "--index", ipath, "-j", "1", "-q")
    assert code == 0, err
    assert "indexed 2 new, 0 changed, 0 unchanged" in out
    assert "2 recordings" in out
    # The list of files that failed comes last (decoder chatter before it, if any, is
    # the subject of test_bad_input_one_line_exit_2[corrupt file, MPEG-like bytes]).
    bad = [ln for ln in err.splitlines() if ln.strip()][-3:]
    assert bad[0] == "2 file(s) could not be indexed:", err
    assert any(str(small_folder / "broken.wav") in ln for ln in bad[1:])
    assert any(str(small_folder / "sub" / "empty.mp3") in ln and "empty" in ln for ln in bad[1:])
    assert "readme.txt" not in err
    # Again: nothing new, the bad files are reported again, still a success.
    code, out, err = fp("index", small_folder, "--index", ipath, "-j", "1", "-q")
    assert code == 0 and "indexed 0 new, 0 changed, 2 unchanged" in out
    assert "2 file(s) could not be indexed" in err
    # What was indexed is matchable.
    y, start = catalogue.excerpt("track07.flac", 11.0, 5.0)
    q = write_audio(tmp_path / "q.wav", y)
    code, out, _ = fp("match", "--json", q, "--index", ipath)
    doc = json.loads(out)
    assert code == 0 and doc["matches"][0]["reference"]["path"] == str(small_folder / "sub" / "track07.flac")


def test_index_and_match_through_the_console_script(small_folder, tmp_path, catalogue):
    ipath = tmp_path / "idx"
    r = fp_subprocess("index", small_folder, "--index", ipath)   # default -j: worker processes
    assert r.returncode == 0, r.stderr
    assert "indexed 2 new" in r.stdout and "Traceback" not in r.stderr
    y, start = catalogue.excerpt("track01.wav", 14.0, 5.0)
    q = write_audio(tmp_path / "q.wav", y)
    r = fp_subprocess("match", "--json", q, "--index", ipath)
    assert r.returncode == 0 and r.stderr == "", r.stderr
    m = json.loads(r.stdout)["matches"][0]
    assert Path(m["reference"]["path"]).name == "track01.wav"
    assert abs(m["reference_start"] - m["speed"] * m["query_start"] - start) <= 0.1


# --------------------------------------------------------------------------- match


def test_match_prints_a_table(fp, built_index, excerpt_file):
    path, start = excerpt_file
    code, out, err = fp("match", path, "--index", built_index.path)
    assert code == 0 and err == ""
    assert str(path) in out
    for header in ("recording", "query", "reference", "speed", "pitch", "score", "signif."):
        assert header in out
    first_row = next(ln for ln in out.splitlines() if "track03.wav" in ln)
    assert re.search(r"\b(0\.99\d|1\.00\d)x", first_row), first_row  # speed column


def test_match_json_lines_have_the_documented_schema(fp, built_index, excerpt_file, catalogue,
                                                     tmp_path):
    path, start = excerpt_file
    noise = write_audio(tmp_path / "noise.wav", catalogue.noise(seed=5, seconds=8.0))
    code, out, err = fp("match", "--json", path, noise, "--index", built_index.path)
    assert code == 0 and err == ""
    lines = out.splitlines()
    assert len(lines) == 2
    hit, miss = (json.loads(ln) for ln in lines)
    assert set(hit) >= {"query", "duration", "error", "matches"}
    assert hit["query"] == str(path) and hit["error"] is None
    assert hit["duration"] == pytest.approx(6.0, abs=0.01)
    m = hit["matches"][0]
    assert set(m) >= DOCUMENTED_MATCH_KEYS
    assert "alignment" not in m
    assert m["reference"]["path"] == str(catalogue.path("track03.wav"))
    assert m["reference"]["duration"] == pytest.approx(34.0, abs=0.01)
    assert isinstance(m["reference"]["track_id"], int)
    assert isinstance(m["score"], int) and m["score"] >= 8
    assert m["significance"] >= 10
    assert abs(m["reference_start"] - m["speed"] * m["query_start"] - start) <= 0.1
    assert 0 <= m["query_start"] < m["query_end"] <= 6.0
    assert m["speed"] == pytest.approx(1.0, abs=0.01)
    assert m["pitch_semitones"] == pytest.approx(0.0, abs=0.25)
    assert miss["query"] == str(noise) and miss["matches"] == [] and miss["error"] is None
    # --alignment adds the matched landmark times.
    code, out, _ = fp("match", "--json", "--alignment", path, "--index", built_index.path)
    al = json.loads(out)["matches"][0]["alignment"]
    assert len(al) >= 8 and all(len(p) == 2 for p in al)
    assert all(abs(r - q - start) < 0.2 for q, r in al)


def test_match_exit_1_when_nothing_matches(fp, built_index, catalogue, tmp_path):
    noise = write_audio(tmp_path / "pink.wav", catalogue.noise(seed=6, seconds=8.0, colour="pink"))
    code, out, err = fp("match", noise, "--index", built_index.path)
    assert code == 1 and err == ""
    assert "no match" in out
    code, out, err = fp("match", "--json", noise, "--index", built_index.path)
    assert code == 1 and json.loads(out)["matches"] == []


def test_match_max_matches_flag(fp, built_index, catalogue, tmp_path):
    a, _ = catalogue.excerpt("track01.wav", 3.0, 8.0)
    b, _ = catalogue.excerpt("track08.ogg", 15.0, 8.0)
    q = write_audio(tmp_path / "two.wav", np.concatenate([a, b]))
    code, out, _ = fp("match", "--json", q, "--index", built_index.path)
    assert code == 0 and len(json.loads(out)["matches"]) >= 2
    code, out, _ = fp("match", "--json", "--max-matches", "1", q, "--index", built_index.path)
    assert code == 0 and len(json.loads(out)["matches"]) == 1


def test_match_fast_flag(fp, built_index, excerpt_file):
    path, start = excerpt_file
    code, out, _ = fp("match", "--json", "--fast", path, "--index", built_index.path)
    m = json.loads(out)["matches"][0]
    assert code == 0 and Path(m["reference"]["path"]).name == "track03.wav"
    assert abs(m["reference_start"] - m["speed"] * m["query_start"] - start) <= 0.1


def test_one_bad_query_among_good_ones(fp, built_index, excerpt_file, tmp_path):
    path, _ = excerpt_file
    missing = tmp_path / "missing.wav"
    code, out, err = fp("match", "--json", path, missing, "--index", built_index.path)
    assert code == 0  # a match was found; the bad file is reported, not fatal
    assert str(missing) in one_error_line(err)
    docs = [json.loads(ln) for ln in out.splitlines()]
    assert docs[0]["matches"] and docs[1]["error"] and str(missing) in docs[1]["error"]


# --------------------------------------------------------------------------- bad input


def _sine_wav(path: Path, seconds: float) -> Path:
    t = np.arange(int(seconds * SR)) / SR
    return write_audio(path, (0.3 * np.sin(2 * np.pi * 440 * t)).astype(np.float32))


def make_bad_input(case: str, tmp: Path, built_index, catalogue) -> tuple[list, str]:
    """Build one bad input; returns (fp arguments, a word the error must mention)."""
    idx = ["--index", built_index.path]
    if case == "missing file":
        return ["match", tmp / "nope.wav", *idx], "nope.wav"
    if case == "empty file":
        (tmp / "empty.wav").write_bytes(b"")
        return ["match", tmp / "empty.wav", *idx], "empty"
    if case == "corrupt file":
        (tmp / "random.wav").write_bytes(np.random.default_rng(3).bytes(60_000))
        return ["match", tmp / "random.wav", *idx], "random.wav"
    if case == "corrupt file, MPEG-like bytes":
        # These random bytes hold MPEG frame-sync patterns: libsndfile hands them to its
        # MP3 decoder, which has its own opinion about them.
        (tmp / "random.wav").write_bytes(np.random.default_rng(1).bytes(40_000))
        return ["match", tmp / "random.wav", *idx], "random.wav"
    if case == "truncated header":
        raw = _sine_wav(tmp / "full.wav", 3.0).read_bytes()
        (tmp / "cut.wav").write_bytes(raw[:30])
        return ["match", tmp / "cut.wav", *idx], "cut.wav"
    if case == "truncated to 0.1 s":
        raw = _sine_wav(tmp / "full.wav", 3.0).read_bytes()
        (tmp / "cut.wav").write_bytes(raw[:44 + int(0.1 * SR) * 2])
        return ["match", tmp / "cut.wav", *idx], "short"
    if case == "unsupported file":
        (tmp / "notes.txt").write_text("these are not the sounds you are looking for\n" * 50)
        return ["match", tmp / "notes.txt", *idx], "notes.txt"
    if case == "silent audio":
        write_audio(tmp / "silence.wav", np.zeros(5 * SR, np.float32))
        return ["match", tmp / "silence.wav", *idx], "silent"
    if case == "0.2 s clip":
        y, _ = catalogue.excerpt("track02.wav", 5.0, 0.2)
        write_audio(tmp / "clip.wav", y)
        return ["match", tmp / "clip.wav", *idx], "short"
    if case == "directory as query":
        (tmp / "adir").mkdir()
        return ["match", tmp / "adir", *idx], "directory"
    if case == "index: folder without audio":
        (tmp / "nothing").mkdir()
        (tmp / "nothing" / "notes.txt").write_text("hello\n")
        return ["index", tmp / "nothing", "--index", tmp / "new-idx", "-j", "1"], "no audio"
    if case == "index: missing metadata csv":
        return ["index", catalogue.path("track01.wav"), "--metadata", tmp / "meta.csv",
                "--index", tmp / "new-idx"], "meta.csv"
    if case == "no index":
        return ["info", "--index", tmp / "nowhere"], "no index"
    if case == "garbage manifest":
        shutil.copytree(built_index.path, tmp / "idx")
        (tmp / "idx" / "manifest.json").write_text("{{{ not json")
        return ["match", catalogue.path("track01.wav"), "--index", tmp / "idx"], "corrupt"
    if case == "garbage segment":
        shutil.copytree(built_index.path, tmp / "idx")
        for seg in (tmp / "idx").glob("seg-*.emk"):
            seg.write_bytes(np.random.default_rng(4).bytes(5000))
        return ["list", "--index", tmp / "idx"], "segment"
    if case == "garbage metadata db":
        shutil.copytree(built_index.path, tmp / "idx")
        (tmp / "idx" / "tracks.sqlite").write_bytes(b"not a database" * 100)
        for extra in (tmp / "idx").glob("tracks.sqlite-*"):
            extra.unlink()
        return ["list", "--index", tmp / "idx"], "tracks.sqlite"
    if case.startswith("newer index"):
        shutil.copytree(built_index.path, tmp / "idx")
        doc = json.loads((tmp / "idx" / "manifest.json").read_text())
        doc["version"] = 999
        (tmp / "idx" / "manifest.json").write_text(json.dumps(doc))
        cmd = case.split(": ")[1]
        args = {"match": ["match", catalogue.path("track01.wav")], "info": ["info"],
                "index": ["index", catalogue.path("track01.wav"), "-j", "1"],
                "remove": ["remove", catalogue.path("track01.wav")]}[cmd]
        return [*args, "--index", tmp / "idx"], "newer"
    if case == "flag: --max-matches 0":
        return ["match", "--max-matches", "0", catalogue.path("track01.wav"), *idx], "max-matches"
    if case == "flag: unknown option":
        return ["match", "--bogus", catalogue.path("track01.wav"), *idx], "--bogus"
    if case == "flag: -j 0":
        return ["index", catalogue.folder, "-j", "0", "--index", tmp / "new-idx"], "jobs"
    if case == "flag: negative --min-significance":
        return ["match", "--min-significance", "-3", catalogue.path("track01.wav"), *idx], \
            "min-significance"
    if case == "flag: unknown preset":
        return ["index", catalogue.folder, "--preset", "loud", "--index", tmp / "new-idx"], "preset"
    if case == "flag: missing argument":
        return ["match", *idx], "QUERIES"
    if case == "unknown command":
        return ["frobnicate"], "frobnicate"
    raise AssertionError(case)


BAD_INPUTS = [
    "missing file", "empty file", "corrupt file", "corrupt file, MPEG-like bytes",
    "truncated header", "truncated to 0.1 s",
    "unsupported file", "silent audio", "0.2 s clip", "directory as query",
    "index: folder without audio", "index: missing metadata csv",
    "no index", "garbage manifest", "garbage segment", "garbage metadata db",
    "newer index: match", "newer index: info", "newer index: index", "newer index: remove",
    "flag: --max-matches 0", "flag: unknown option", "flag: -j 0",
    "flag: negative --min-significance", "flag: unknown preset", "flag: missing argument",
    "unknown command",
]


@pytest.mark.parametrize("case", BAD_INPUTS)
def test_bad_input_one_line_exit_2(fp, case, tmp_path, built_index, catalogue):
    args, word = make_bad_input(case, tmp_path, built_index, catalogue)
    code, out, err = fp(*args)
    assert code == 2, (code, out, err)
    line = one_error_line(err)
    assert word.lower() in line.lower(), line


@pytest.mark.parametrize("case", ["missing file", "corrupt file", "corrupt file, MPEG-like bytes",
                                  "silent audio", "0.2 s clip",
                                  "garbage manifest", "newer index: match",
                                  "index: folder without audio", "flag: --max-matches 0"])
def test_bad_input_through_the_console_script(case, tmp_path, built_index, catalogue):
    args, word = make_bad_input(case, tmp_path, built_index, catalogue)
    r = fp_subprocess(*args)
    assert r.returncode == 2, (r.returncode, r.stdout, r.stderr)
    assert "Traceback" not in r.stdout + r.stderr
    assert word.lower() in one_error_line(r.stderr).lower()


def test_index_of_a_missing_folder_lists_it_and_fails(fp, tmp_path):
    code, out, err = fp("index", tmp_path / "nowhere", "--index", tmp_path / "idx", "-j", "1")
    assert code == 2
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert any(str(tmp_path / "nowhere") in ln and "no such file" in ln for ln in lines)
    assert lines[-1].startswith("fp: error:") and "no audio indexed" in lines[-1]


def test_truncated_wav_matches_what_is_there(fp, built_index, catalogue, tmp_path):
    """A WAV cut off mid-data is not an error: what is there is matched."""
    y, start = catalogue.excerpt("track05.wav", 4.0, 10.0)
    raw = write_audio(tmp_path / "full.wav", y).read_bytes()
    (tmp_path / "cut.wav").write_bytes(raw[: len(raw) // 2])  # header still says 10 s
    code, out, err = fp("match", "--json", tmp_path / "cut.wav", "--index", built_index.path)
    assert code == 0, err
    doc = json.loads(out)
    assert doc["duration"] == pytest.approx(5.0, abs=0.05)
    m = doc["matches"][0]
    assert Path(m["reference"]["path"]).name == "track05.wav"
    assert abs(m["reference_start"] - m["speed"] * m["query_start"] - start) <= 0.1


# --------------------------------------------------------------------------- info, list, remove


def test_info(fp, built_index):
    code, out, err = fp("info", "--index", built_index.path)
    assert code == 0 and err == ""
    assert f"index:      {built_index.path}" in out
    assert "recordings: 8" in out
    code, out, _ = fp("info", "--json", "--index", built_index.path)
    info = json.loads(out)
    assert info["tracks"] == 8 and info["landmarks"] > 1000 and info["bytes"] > 0
    assert info["audio_hours"] == pytest.approx((30 + 32 + 34 + 36 + 38 + 40 + 31 + 35) / 3600,
                                                rel=1e-3)


def test_list(fp, built_index, catalogue):
    code, out, err = fp("list", "--index", built_index.path)
    assert code == 0 and err == ""
    rows = [ln.split("\t") for ln in out.splitlines()]
    assert sorted(r[2] for r in rows) == sorted(str(catalogue.path(n)) for n in catalogue.names)
    assert all(r[0].isdigit() for r in rows)
    code, out, _ = fp("list", "--json", "--index", built_index.path)
    docs = [json.loads(ln) for ln in out.splitlines()]
    by_name = {Path(d["path"]).name: d for d in docs}
    assert set(by_name) == set(catalogue.names)
    for name in catalogue.names:
        assert by_name[name]["duration"] == pytest.approx(catalogue.duration(name), abs=0.01)


def test_remove(fp, index_copy, catalogue, tmp_path):
    target = catalogue.path("track04.wav")
    y, _ = catalogue.excerpt("track04.wav", 12.0, 6.0)
    q = write_audio(tmp_path / "q4.wav", y)
    code, out, _ = fp("match", "--json", q, "--index", index_copy)
    assert code == 0 and json.loads(out)["matches"][0]["reference"]["path"] == str(target)

    code, out, err = fp("remove", target, "--index", index_copy)
    assert code == 0 and f"removed {target}" in out and err == ""
    code, out, _ = fp("list", "--index", index_copy)
    assert len(out.splitlines()) == 7 and str(target) not in out
    code, out, _ = fp("match", "--json", q, "--index", index_copy)
    assert str(target) not in [m["reference"]["path"] for m in json.loads(out)["matches"]]
    # Removing it again: nothing to remove (exit 1, like a search that found nothing).
    code, out, err = fp("remove", target, "--index", index_copy)
    assert code == 1 and "not in the index" in one_error_line(err)
    # No index there at all: an error.
    code, _, err = fp("remove", target, "--index", tmp_path / "none")
    assert code == 2 and "no index" in one_error_line(err)


# --------------------------------------------------------------------------- env, demo


def test_fp_index_environment_variable(fp, small_folder, tmp_path, catalogue, built_index,
                                       monkeypatch):
    env_index = tmp_path / "from-env"
    monkeypatch.setenv("FP_INDEX", str(env_index))
    code, out, _ = fp("index", small_folder, "-j", "1", "-q")
    assert code == 0 and (env_index / "manifest.json").exists()
    code, out, _ = fp("info")
    assert code == 0 and f"index:      {env_index}" in out and "recordings: 2" in out
    y, _ = catalogue.excerpt("track01.wav", 9.0, 5.0)
    code, out, _ = fp("match", "--json", write_audio(tmp_path / "q.wav", y))
    assert code == 0
    assert json.loads(out)["matches"][0]["reference"]["path"] == str(small_folder / "track01.wav")
    # --index wins over the variable.
    code, out, _ = fp("info", "--index", built_index.path)
    assert "recordings: 8" in out
    # Without either, the documented default under $XDG_DATA_HOME.
    monkeypatch.delenv("FP_INDEX")
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "xdg"))
    code, _, err = fp("info")
    assert code == 2 and str(tmp_path / "xdg" / "earmark" / "index") in one_error_line(err)


def test_fp_index_environment_variable_in_a_fresh_process(built_index):
    r = fp_subprocess("info", "--json", env={"FP_INDEX": str(built_index.path)})
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["path"] == str(built_index.path)


def test_demo(tmp_path):
    r = fp_subprocess("demo", "--dir", tmp_path / "demo", timeout=600)
    assert r.returncode == 0, (r.stdout[-3000:], r.stderr[-3000:])
    assert "all results as expected" in r.stdout
    assert "Traceback" not in r.stderr


def test_commands_run_blas_single_threaded(built_index, excerpt_file):
    path, _ = excerpt_file
    # Every command parallelises itself; BLAS threads would only spin beside it
    # (earmark.threads).  In a child process, so that the limit cannot leak into this one.
    script = (
        "import sys\n"
        "from threadpoolctl import threadpool_info, threadpool_limits\n"
        "import numpy\n"
        "threadpool_limits(limits=2, user_api='blas')\n"
        "from earmark.cli import main\n"
        "try:\n"
        "    main(['match', '--index', sys.argv[1], sys.argv[2]])\n"
        "except SystemExit as e:\n"
        "    print('exit', e.code)\n"
        "print('blas', sorted({i['num_threads'] for i in threadpool_info() if i['user_api'] == 'blas'}))\n")
    out = subprocess.run([sys.executable, "-c", script, str(built_index.path), str(path)],
                         capture_output=True, text=True, timeout=120).stdout
    assert "exit 0" in out and "blas [1]" in out, out


def test_recordings_only_leaves_out_the_derivation_tier(fp, tmp_path):
    """A re-performance of a catalogue composition (other instruments, +2 semitones, 10 %
    slower) is reported by the derivation tier; with --recordings-only, by fp match and by
    fp scan (whose scan.json records it), nothing is, and a recording's own excerpt still is."""
    import soundfile as sf

    from earmark.bench import derivation as dbench

    cat = tmp_path / "cat"
    cat.mkdir()
    comps = [dbench.compose(300 + i, 45.0) for i in range(4)]
    insts = [dbench.instrument_set(300 + i) for i in range(4)]
    pieces = [dbench.render(c, ins) for c, ins in zip(comps, insts)]
    for i, y in enumerate(pieces):
        sf.write(cat / f"piece{i}.wav", y, dbench.SR)
    idx = tmp_path / "idx"
    assert fp("index", cat, "--index", idx, "-j", "1")[0] == 0
    other = dbench.instrument_set(300 + 1 + 17, avoid=(insts[1]["melody"], insts[1]["chords"],
                                                      insts[1]["bass"]))
    cover = tmp_path / "cover.wav"
    sf.write(cover, dbench.render(comps[1], other, transpose=2, tempo=0.9, start=8.0,
                                  seconds=20.0), dbench.SR)
    excerpt = tmp_path / "excerpt.wav"
    sf.write(excerpt, pieces[2][10 * dbench.SR:22 * dbench.SR], dbench.SR)

    code, out, _ = fp("match", "--json", cover, "--index", idx)
    kinds = [(m["kind"], Path(m["reference"]["path"]).name) for m in json.loads(out)["matches"]]
    assert code == 0 and ("derivation", "piece1.wav") in kinds
    code, out, _ = fp("match", "--json", "--recordings-only", cover, "--index", idx)
    assert code == 1 and json.loads(out)["matches"] == []
    code, out, _ = fp("match", "--json", "--recordings-only", excerpt, "--index", idx)
    assert code == 0 and Path(json.loads(out)["matches"][0]["reference"]["path"]).name == "piece2.wav"

    for flag, derivation in (("--recordings-only", False), (None, True)):
        out_dir = tmp_path / f"scan-{derivation}"
        args = ["scan", cover, excerpt, "--out", out_dir, "--index", idx, "-j", "1", "-q"]
        code, _, _ = fp(*args, *([flag] if flag else []))
        assert code == 0
        assert json.loads((out_dir / "scan.json").read_text())["match_config"]["derivation"] \
            is derivation
        lines = [json.loads(x) for x in (out_dir / "results.jsonl").read_text().splitlines()]
        by_file = {Path(r["query"]).name: [m["kind"] for m in r["matches"]] for r in lines}
        assert by_file["excerpt.wav"][:1] == ["recording"]
        assert ("derivation" in by_file["cover.wav"]) is derivation
