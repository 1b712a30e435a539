"""Tests for earmark.scan (``fp scan``) and earmark.report_html, on seeded synthetic audio.

One small index (four synthetic songs, one with a hostile metadata title) is built per
module; batches of excerpts, other music, noise, corrupt and empty files are scanned.
"""

from __future__ import annotations

import csv
import fcntl
import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import soxr
from click.testing import CliRunner

from earmark.cli import cli, main
from earmark.errors import EarmarkError
from earmark.fingerprint.config import MATCH_PRESETS
from earmark.index.catalogue import Index
from earmark.scan import (ERRORS, REPORT, RESULTS, SUMMARY, ScanResult, expand_inputs,
                          load_records, run_scan, scan)
from earmark.synth import synth_noise, synth_song

SR = 22050
SEEDS = (11, 22, 33, 44)
HOSTILE_TITLE = "<script>x</script>"
HOSTILE_NAME = "<script>alert(1)</script>.wav"   # a folder "<script>alert(1)<" + "script>.wav"
# Synthetic songs share instruments; a strict threshold keeps the expected answers exact.
MCFG = MATCH_PRESETS["default"].with_(min_significance=20.0)


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    root = tmp_path_factory.mktemp("scan")
    cat = root / "cat"
    cat.mkdir()
    songs = []
    for k, seed in enumerate(SEEDS):
        songs.append(synth_song(seed=seed, seconds=35.0, sr=SR))
        sf.write(cat / f"song{k}.wav", songs[-1], SR)
    meta = root / "meta.csv"
    with open(meta, "w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(["path", "title", "artist", "isrc", "rights_holder"])
        w.writerow(["song0.wav", HOSTILE_TITLE, 'Evil "Artist"', "XX-EMK-00-00001", "Label <A>"])
        w.writerow(["song1.wav", "Second", "Ann", "XX-EMK-00-00002", "Label B"])
        w.writerow(["song2.wav", "Third", "Bob", "XX-EMK-00-00003", "Label <A>"])
    with Index.open_writer(root / "idx") as idx:
        idx.add([cat], metadata_csv=meta)
    ids = {Path(r.path).name: r.track_id for r in Index.open(root / "idx").tracks()}
    return {"root": root, "index": root / "idx", "songs": songs, "ids": ids}


def _batch(env, folder: Path) -> dict[str, str | None]:
    """Write the standard batch; returns {absolute path: expected catalogue file or None
    (no match) or 'error'}."""
    s = env["songs"]
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "sub").mkdir(exist_ok=True)
    hostile_dir = folder / "<script>alert(1)<"
    hostile_dir.mkdir(exist_ok=True)
    files = {
        folder / "m0.wav": (s[0][5 * SR:17 * SR], "song0.wav"),
        folder / "sub" / "m1_fast.wav": (
            soxr.resample(s[1][8 * SR:22 * SR], SR * 1.1, SR).astype(np.float32), "song1.wav"),
        hostile_dir / "script>.wav": (s[2][10 * SR:20 * SR], "song2.wav"),
        folder / "other.wav": (synth_song(seed=999, seconds=12.0, sr=SR), None),
        folder / "noise.wav": (synth_noise(5, 8.0, SR), None),
    }
    for p, (y, _) in files.items():
        sf.write(p, y, SR)
    (folder / "corrupt.wav").write_bytes(b"RIFF\x00\x00\x00\x00WAVEjunk" * 20)
    (folder / "empty.wav").write_bytes(b"")
    expected = {str(p): exp for p, (_, exp) in files.items()}
    expected[str(folder / "corrupt.wav")] = "error"
    expected[str(folder / "empty.wav")] = "error"
    return expected


def _lines(path: Path) -> list[dict]:
    if not path.exists():
        return []
    return [json.loads(x) for x in path.read_text(encoding="utf-8").splitlines()]


@pytest.fixture(scope="module")
def scanned(env, tmp_path_factory):
    """The standard batch scanned once with two workers."""
    base = tmp_path_factory.mktemp("batch")
    expected = _batch(env, base / "in")
    out = base / "out"
    seen = []
    gen = scan([base / "in"], out, index=env["index"], jobs=2, mcfg=MCFG,
               progress=seen.append)
    results = []
    while True:
        try:
            results.append(next(gen))
        except StopIteration as stop:
            summary = stop.value
            break
    return {"expected": expected, "out": out, "results": results, "summary": summary,
            "progress": seen, "in": base / "in"}


# --------------------------------------------------------------------------- batch


def test_batch_flags_right_files_with_right_recordings(env, scanned):
    expected, results = scanned["expected"], scanned["results"]
    assert sorted(r.path for r in results) == sorted(expected)
    assert all(isinstance(r, ScanResult) and r.status == "scanned" for r in results)
    for r in results:
        exp = expected[r.path]
        if exp == "error":
            assert r.error and not r.flagged
        elif exp is None:
            assert r.ok and not r.flagged, r.record["matches"]
        else:
            assert r.ok and r.flagged
            assert {Path(m.reference.path).name for m in r.result.matches} == {exp}
    fast = next(r for r in results if r.path.endswith("m1_fast.wav"))
    assert fast.result.matches[0].speed == pytest.approx(1.1, abs=0.01)
    # Progress: one call per file, ending at total.
    prog = scanned["progress"]
    assert [p.done for p in prog] == list(range(1, len(expected) + 1))
    assert prog[-1].total == len(expected) and prog[-1].flagged == 3 and prog[-1].errors == 2
    assert prog[-1].files_per_second > 0 and prog[-1].audio_hours_per_second > 0


def test_journals_schema_and_errors(env, scanned):
    out, expected = scanned["out"], scanned["expected"]
    res, errs = _lines(out / RESULTS), _lines(out / ERRORS)
    assert sorted(r["query"] for r in res) == sorted(p for p, e in expected.items() if e != "error")
    assert sorted(r["query"] for r in errs) == sorted(p for p, e in expected.items() if e == "error")
    for e in errs:
        assert e["error"] and "\n" not in e["error"] and e["matches"] == []
    assert any("empty" in e["error"] for e in errs)
    assert any("corrupt" in e["error"] for e in errs)
    # Same schema as `fp match --json` (QueryResult.to_dict) plus content_hash and manifest.
    idx = Index.open(env["index"])
    for line in res:
        direct = idx.match_file(line["query"], MCFG).to_dict(with_alignment=True)
        assert set(line) == set(direct) | {"content_hash", "manifest"}
        assert {k: line[k] for k in direct} == direct
        assert re.fullmatch(r"[0-9a-f]{32}", line["content_hash"]) and line["manifest"] == {}


def test_summary_counts_and_csv(env, scanned):
    s = scanned["summary"]
    assert (s.files, s.flagged, s.errors, s.clean) == (7, 3, 2, 2)
    assert (s.run_scanned, s.run_resumed, s.run_errors, s.run_flagged) == (7, 0, 2, 3)
    assert s.audio_seconds == pytest.approx(12 + 14 / 1.1 + 10 + 12 + 8, abs=0.1)
    assert {h: c["files"] for h, c in s.per_rights_holder.items()} == {"Label <A>": 2, "Label B": 1}
    assert {e["path"].rsplit("/", 1)[-1]: e["files"] for e in s.per_recording} == {
        "song0.wav": 1, "song1.wav": 1, "song2.wav": 1}
    with open(scanned["out"] / SUMMARY, newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 3
    got = {r["query"].rsplit("/", 1)[-1]: r["reference_path"].rsplit("/", 1)[-1] for r in rows}
    assert got == {"m0.wav": "song0.wav", "m1_fast.wav": "song1.wav", "script>.wav": "song2.wav"}
    row0 = next(r for r in rows if r["query"].endswith("m0.wav"))
    assert row0["title"] == HOSTILE_TITLE and float(row0["significance"]) >= 20
    assert int(row0["segments"]) == 1 and float(row0["score"]) > 0


# --------------------------------------------------------------------------- report


def test_report_html_escapes_hostile_text_and_is_self_contained(env, scanned):
    page = (scanned["out"] / REPORT).read_text(encoding="utf-8")
    hostile_path = next(p for p in scanned["expected"] if p.endswith("script>.wav"))
    assert HOSTILE_NAME in hostile_path                    # the name really is hostile
    assert "<script>alert(1)" not in page and HOSTILE_TITLE not in page
    assert "&lt;script&gt;alert(1)&lt;/script&gt;.wav" in page
    assert "&lt;script&gt;x&lt;/script&gt;" in page
    assert "Label &lt;A&gt;" in page and "Evil &quot;Artist&quot;" in page
    assert page.count("<script") == 1                      # only the page's own sorter
    assert "Content-Security-Policy" in page
    # Offline: nothing fetched (the SVG namespace is an identifier, not a request).
    assert not re.search(r"""(src|href)\s*=\s*["']?(https?:)?//""", page)
    assert "@import" not in page and "url(" not in page
    # Evidence: one alignment plot per match, with the fitted line; totals.
    n_matches = sum(len(r.record["matches"]) for r in scanned["results"])
    assert page.count('<svg class="plot"') == n_matches == 3
    assert page.count('stroke="#cf222e"') == 3
    assert "slope 1.100 = speed" in page or "slope 1.099 = speed" in page or \
        "slope 1.101 = speed" in page
    # The flagged table says how the file uses it: x1.1 played faster, so ~1.65 semitones up.
    assert re.search(r'<td class="n">1\.(099|100|101)</td><td class="n">\+1\.[67]</td>', page)
    assert 'id="f1"' in page and 'href="#f1"' in page
    assert "file is empty" in page and "Errors (2)" in page and "Flagged files (3)" in page


def test_report_escapes_hostile_manifest_fields(env, tmp_path):
    src = tmp_path / "in"
    src.mkdir()
    sf.write(src / "a.wav", env["songs"][3][0:8 * SR], SR)
    man = tmp_path / "jobs.csv"
    with open(man, "w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(["path", '"><img src=x onerror=alert(3)>', "user"])
        w.writerow(["in/a.wav", "<b>bold</b>", "=HYPERLINK(\"http://x\")"])
    summary = run_scan([], tmp_path / "out", index=env["index"], manifest=man, mcfg=MCFG)
    assert summary.flagged == 1
    page = (tmp_path / "out" / REPORT).read_text(encoding="utf-8")
    assert "<img" not in page and "<b>bold" not in page
    assert "&lt;b&gt;bold&lt;/b&gt;" in page and "&quot;&gt;&lt;img src=x onerror=alert(3)&gt;" in page
    rows = list(csv.reader(open(tmp_path / "out" / SUMMARY, newline="", encoding="utf-8")))
    user_col = rows[0].index("user")
    assert rows[1][user_col] == "'=HYPERLINK(\"http://x\")"   # spreadsheet-safe


def test_manifest_columns_carried_through(env, tmp_path):
    s = env["songs"]
    (tmp_path / "gen").mkdir()
    sf.write(tmp_path / "gen" / "x.wav", s[1][3 * SR:13 * SR], SR)
    sf.write(tmp_path / "gen" / "y.wav", synth_song(seed=77, seconds=8.0, sr=SR), SR)
    man = tmp_path / "jobs.csv"
    man.write_text("Path,service,prompt_id,user\n"
                   "gen/x.wav,suno-like,p-1,alice\n"
                   f"{tmp_path / 'gen' / 'y.wav'},udio-like,p-2,bob\n"
                   "gen/missing.wav,other,p-3,carol\n", encoding="utf-8")
    out = tmp_path / "out"
    results = {Path(r.path).name: r for r in scan(None, out, index=env["index"], manifest=man,
                                                   mcfg=MCFG)}
    assert results["x.wav"].columns == {"service": "suno-like", "prompt_id": "p-1", "user": "alice"}
    assert results["x.wav"].flagged and not results["y.wav"].flagged
    assert results["y.wav"].columns["user"] == "bob"
    assert "not found" in results["missing.wav"].error
    assert results["missing.wav"].columns["prompt_id"] == "p-3"
    res = {Path(r["query"]).name: r for r in _lines(out / RESULTS)}
    assert res["x.wav"]["manifest"]["service"] == "suno-like"
    assert _lines(out / ERRORS)[0]["manifest"]["user"] == "carol"
    rows = list(csv.DictReader(open(out / SUMMARY, newline="", encoding="utf-8")))
    assert [(r["service"], r["prompt_id"], r["user"]) for r in rows] == [("suno-like", "p-1", "alice")]
    assert "suno-like" in (out / REPORT).read_text(encoding="utf-8")


def test_manifest_without_path_column_is_an_error(env, tmp_path):
    man = tmp_path / "bad.csv"
    man.write_text("file,user\na.wav,x\n", encoding="utf-8")
    with pytest.raises(EarmarkError, match="no 'path' column"):
        run_scan(None, tmp_path / "out", index=env["index"], manifest=man)


# --------------------------------------------------------------------------- resume


@pytest.mark.parametrize("jobs", [0, 1])
def test_one_or_two_workers_give_identical_results(env, scanned, tmp_path, jobs):
    """The same batch in process (voting threads on every core), with one worker and with
    two workers (one voting thread each): every match is the same, to the last field."""
    results = {r.path: r for r in scan([scanned["in"]], tmp_path / "out", index=env["index"],
                                       jobs=jobs, mcfg=MCFG)}
    assert results.keys() == {r.path for r in scanned["results"]}
    flagged = 0
    for two in scanned["results"]:
        one = results[two.path]
        assert (one.ok, one.flagged, one.error) == (two.ok, two.flagged, two.error)
        if two.ok:
            assert one.record["matches"] == two.record["matches"], two.path
            flagged += bool(two.flagged)
    assert flagged == 3


def test_workers_vote_on_one_thread_each_and_cpus_follow_the_affinity_mask():
    """-j N uses N cores: a worker's 'every core' voting becomes one thread, a set count
    is kept; the CPU count a process sees is its affinity mask, not the host's."""
    from earmark.scan import _worker_threads

    assert MCFG.threads == 0
    assert _worker_threads(MCFG).threads == 1
    assert _worker_threads(MCFG.with_(threads=3)).threads == 3
    assert _worker_threads(MCFG).with_(threads=0) == MCFG  # nothing else changes
    code = ("import os; from earmark.threads import usable_cpus; "
            "os.sched_setaffinity(0, {min(os.sched_getaffinity(0))}); print(usable_cpus())")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True).stdout
    assert out.strip() == "1"


def test_rerun_resumes_copies_duplicates_and_keeps_errors_final(env, scanned, tmp_path):
    import shutil

    out = tmp_path / "out"
    shutil.copytree(scanned["out"], out)
    before = (out / RESULTS).read_bytes(), (out / ERRORS).read_bytes()
    src = scanned["in"]
    results = list(scan([src], out, index=env["index"], mcfg=MCFG, jobs=1))
    assert {r.status for r in results} == {"resumed"}
    from earmark.scan import SettingsChangedWarning

    with pytest.warns(SettingsChangedWarning, match="match config"):
        assert {r.status for r in scan([src], out, index=env["index"], jobs=1,
                                       mcfg=MATCH_PRESETS["fast"])} == {"resumed"}
    assert ((out / RESULTS).read_bytes(), (out / ERRORS).read_bytes()) == before
    assert [r.flagged for r in sorted(results, key=lambda r: r.path)] == \
        [r.flagged for r in sorted(scanned["results"], key=lambda r: r.path)]

    # Same content under a new name: evidence copied, not analysed again.
    dup = tmp_path / "dup_of_m0.wav"
    shutil.copy(src / "m0.wav", dup)
    with pytest.warns(SettingsChangedWarning):  # back to MCFG after the fast run
        [r] = list(scan([dup], out, index=env["index"], mcfg=MCFG))
    assert r.status == "duplicate" and r.flagged
    orig = next(x for x in _lines(out / RESULTS) if x["query"].endswith("/m0.wav"))
    assert r.record["matches"] == orig["matches"] and r.record["query"] == str(dup)



def test_errors_are_final_unless_retried_and_changed_files_rescanned(env, scanned, tmp_path,
                                                                     monkeypatch):
    import shutil

    src = tmp_path / "in"
    shutil.copytree(scanned["in"], src)
    out = tmp_path / "out"
    real_match = Index.match_file

    def flaky(self, path, mcfg=None):
        if str(path).endswith("m0.wav"):
            raise EarmarkError(f"{path}: transient failure")
        return real_match(self, path, mcfg)

    monkeypatch.setattr(Index, "match_file", flaky)
    s1 = run_scan([src], out, index=env["index"], mcfg=MCFG, jobs=0)
    assert (s1.errors, s1.flagged) == (3, 2)
    monkeypatch.setattr(Index, "match_file", real_match)
    # Unchanged errored files are final: not analysed again, no line written twice.
    s2 = run_scan([src], out, index=env["index"], mcfg=MCFG, jobs=1)
    assert (s2.run_resumed, s2.errors, s2.flagged) == (7, 3, 2)
    assert len(_lines(out / ERRORS)) == 3
    # A changed file (same path, new content) is a new file: analysed.
    sf.write(src / "empty.wav", env["songs"][3][1 * SR:9 * SR], SR)
    s3 = run_scan([src], out, index=env["index"], mcfg=MCFG, jobs=1)
    assert (s3.run_scanned, s3.run_resumed, s3.errors, s3.flagged) == (1, 6, 2, 3)
    # --retry-errors: the errored inputs are analysed again, their old lines dropped.
    s4 = run_scan([src], out, index=env["index"], mcfg=MCFG, jobs=1, retry_errors=True)
    assert (s4.run_scanned, s4.errors, s4.flagged, s4.files) == (2, 1, 4, 7)
    errs = _lines(out / ERRORS)
    assert [Path(e["query"]).name for e in errs] == ["corrupt.wav"]
    page = (out / REPORT).read_text(encoding="utf-8")
    assert "transient failure" not in page and "Errors (1)" in page


def _crash_or_hang(real):
    def match_file(self, path, mcfg=None):
        if Path(path).name == "crash.wav":
            import faulthandler

            faulthandler.disable()  # (pytest's) no traceback dump: the parent reports it
            os.kill(os.getpid(), signal.SIGSEGV)
        if Path(path).name == "hang.wav":
            time.sleep(60)
        return real(self, path, mcfg)
    return match_file


def test_crashing_or_hanging_worker_costs_only_its_file(env, tmp_path, monkeypatch):
    src = tmp_path / "in"
    src.mkdir()
    for name, k in (("a.wav", 0), ("crash.wav", 1), ("b.wav", 2), ("hang.wav", 3)):
        sf.write(src / name, env["songs"][k][3 * SR:10 * SR], SR)
    monkeypatch.setattr(Index, "match_file", _crash_or_hang(Index.match_file))
    out = tmp_path / "out"
    t0 = time.monotonic()
    results = {Path(r.path).name: r for r in scan([src], out, index=env["index"], jobs=2,
                                                   mcfg=MCFG, timeout=2.0)}
    assert time.monotonic() - t0 < 30
    assert results["a.wav"].flagged and results["b.wav"].flagged
    assert "crashed (signal 11)" in results["crash.wav"].error
    assert "timed out after 2 s" in results["hang.wav"].error
    assert results["crash.wav"].content_hash  # errors are final for this content
    errs = _lines(out / ERRORS)
    assert sorted(Path(e["query"]).name for e in errs) == ["crash.wav", "hang.wav"]
    again = list(scan([src], out, index=env["index"], jobs=2, mcfg=MCFG, timeout=2.0))
    assert {r.status for r in again} == {"resumed"} and len(_lines(out / ERRORS)) == 2


def test_torn_last_line_is_truncated_and_locked_folder_refused(env, tmp_path):
    src = tmp_path / "in"
    src.mkdir()
    for k in range(3):
        sf.write(src / f"q{k}.wav", env["songs"][k][2 * SR:9 * SR], SR)
    out = tmp_path / "out"
    run_scan([src / "q0.wav"], out, index=env["index"], mcfg=MCFG)
    with open(out / RESULTS, "ab") as f:  # what a kill in the middle of a write leaves
        f.write(b'{"query": "' + str(src / "q1.wav").encode() + b'", "durat')
    s = run_scan([src], out, index=env["index"], mcfg=MCFG)
    lines = _lines(out / RESULTS)   # every line parses
    assert sorted(Path(x["query"]).name for x in lines) == ["q0.wav", "q1.wav", "q2.wav"]
    assert s.run_resumed == 1 and s.run_scanned == 2 and s.flagged == 3
    fd = os.open(out / ".scan.lock", os.O_RDWR)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        with pytest.raises(EarmarkError, match="another scan"):
            run_scan([src], out, index=env["index"], mcfg=MCFG)
    finally:
        os.close(fd)


def test_kill_9_mid_run_then_resume_no_duplicate_no_missing(env, tmp_path):
    rng = np.random.default_rng(20240601)
    src = tmp_path / "batch"
    src.mkdir()
    s = env["songs"]
    n = 48
    for k in range(n):
        y = s[k % 4][(k // 4) * SR:(k // 4 + 5) * SR] if k % 3 else synth_song(1000 + k, 5.0, SR)
        sf.write(src / f"f{k:03d}.wav", y, SR)
    (src / "f900_bad.wav").write_bytes(b"not audio at all" * 10)
    n += 1
    out = tmp_path / "out"
    kill_after = int(rng.integers(2, 20))
    proc = subprocess.Popen([sys.executable, "-m", "earmark.cli", "scan", str(src), "--out",
                             str(out), "--index", str(env["index"]), "-j", "2", "-q", "--fast"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 80
    killed = False
    while time.monotonic() < deadline and proc.poll() is None:
        n_lines = (out / RESULTS).read_bytes().count(b"\n") if (out / RESULTS).exists() else 0
        if n_lines >= kill_after:
            proc.send_signal(signal.SIGKILL)   # wherever the parent is: writing, waiting...
            killed = True
            break
        time.sleep(0.002)
    proc.wait(timeout=30)
    assert killed, proc.stderr.read().decode()
    assert proc.returncode == -signal.SIGKILL
    size = (out / RESULTS).stat().st_size
    time.sleep(0.3)  # orphaned workers must not write anything
    assert (out / RESULTS).stat().st_size == size
    done_before = (out / RESULTS).read_bytes().count(b"\n")
    assert kill_after <= done_before < n
    summary = run_scan([src], out, index=env["index"], jobs=2, mcfg=MATCH_PRESETS["fast"])
    res, errs = _lines(out / RESULTS), _lines(out / ERRORS)
    queries = [x["query"] for x in res + errs]
    assert len(queries) == len(set(queries)) == n
    assert set(queries) == {str(p) for p in src.iterdir()}
    assert summary.files == n and summary.errors == 1
    assert summary.run_resumed + summary.run_scanned == n and summary.run_resumed >= done_before
    page = (out / REPORT).read_text(encoding="utf-8")
    assert f"<b>{n}</b><span>files scanned" in page


# --------------------------------------------------------------------------- inputs / CLI


def test_list_file_stdin_and_folder_inputs(env, scanned, tmp_path):
    src = scanned["in"]
    lst = tmp_path / "list.txt"
    lst.write_text(f"{src / 'm0.wav'}\n\n{os.path.relpath(src / 'other.wav', tmp_path)}\n",
                   encoding="utf-8")
    import io

    items = expand_inputs([f"@{lst}", str(lst), "-", str(src / "sub")],
                          stdin=io.StringIO(f"{src / 'noise.wav'}\n{src / 'm0.wav'}\n"))
    assert [Path(i.path).name for i in items] == ["m0.wav", "other.wav", "noise.wav",
                                                  "m1_fast.wav"]
    runner = CliRunner()
    out = tmp_path / "out"
    r = runner.invoke(cli, ["scan", "-", "--out", str(out), "--index", str(env["index"]),
                            "-j", "1", "--min-significance", "20"],
                      input=f"{src / 'm0.wav'}\n{src / 'noise.wav'}\n")
    assert r.exit_code == 0, r.output
    assert "2 file(s)" in r.output and "1 flagged" in r.output
    assert sorted(Path(x["query"]).name for x in _lines(out / RESULTS)) == ["m0.wav", "noise.wav"]
    r = runner.invoke(cli, ["scan", f"@{lst}", "--out", str(out), "--index", str(env["index"])])
    assert r.exit_code == 0 and "(1 already done)" in r.output


def _wait_for_lines(path: Path, n: int, proc: subprocess.Popen, seconds: float = 120) -> int:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline and proc.poll() is None:
        got = path.read_bytes().count(b"\n") if path.exists() else 0
        if got >= n:
            return got
        time.sleep(0.05)
    return path.read_bytes().count(b"\n") if path.exists() else 0


@pytest.mark.parametrize("jobs", ["2", "1"])
def test_paths_on_stdin_are_scanned_as_they_arrive(env, scanned, tmp_path, jobs):
    """fp scan - fed by a pipe that stays open (an upload queue): each path is scanned and
    journaled before the next one is even written, a folder line expands to its files, a
    repeated path is scanned once, and the end of the stream ends the scan with reports."""
    src = scanned["in"]
    out = tmp_path / "out"
    proc = subprocess.Popen([sys.executable, "-m", "earmark.cli", "scan", "-", "--out", str(out),
                             "--index", str(env["index"]), "-j", jobs, "-q",
                             "--min-significance", "20"],
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, cwd=src)
    try:
        proc.stdin.write(f"{src / 'm0.wav'}\n".encode())
        proc.stdin.flush()
        assert _wait_for_lines(out / RESULTS, 1, proc) == 1   # the pipe is still open
        assert proc.poll() is None
        # A relative path (against the scan's folder), a repeat, a folder, then an unfinished
        # last line: the stream's end completes it.
        proc.stdin.write(f"{src / 'm0.wav'}\n{src / 'sub'}\nnoise.wav".encode())
        proc.stdin.flush()
        assert _wait_for_lines(out / RESULTS, 2, proc) >= 2
        proc.stdin.close()
        proc.wait(timeout=120)
        stdout, stderr = proc.stdout.read(), proc.stderr.read()
    finally:
        proc.kill()
    assert proc.returncode == 0, stderr.decode()
    names = sorted(Path(x["query"]).name for x in _lines(out / RESULTS))
    assert names == ["m0.wav", "m1_fast.wav", "noise.wav"]
    assert b"scanned 3 file(s)" in stdout
    report = (out / REPORT).read_text(encoding="utf-8")
    assert "m1_fast.wav" in report and "m0.wav" in report


def test_stream_from_python_api_refreshes_the_report_while_the_stream_is_quiet(
        env, scanned, tmp_path):
    """scan(["-"], stdin=<a pipe>) streams from Python too: a result comes back while the
    pipe is still open, and with nothing else to do the report already shows it.  (In
    process: forked workers would inherit this process's end of the pipe, see scan().)"""
    jobs = 0
    src = scanned["in"]
    out = tmp_path / "out"
    r_fd, w_fd = os.pipe()
    os.write(w_fd, f"{src / 'm0.wav'}\n".encode())
    with os.fdopen(r_fd, "r") as pipe:
        gen = scan(["-"], out, index=env["index"], jobs=jobs, mcfg=MCFG, stdin=pipe,
                   report_every=0.0)
        first = next(gen)
        assert Path(first.path).name == "m0.wav" and first.flagged
        page = (out / REPORT).read_text(encoding="utf-8")
        assert "m0.wav" in page and "<b>1</b><span>files scanned" in page
        assert "m0.wav" in (out / SUMMARY).read_text(encoding="utf-8")
        os.write(w_fd, f"{src / 'noise.wav'}\n".encode())
        os.close(w_fd)
        rest = list(gen)
    assert [Path(r.path).name for r in rest] == ["noise.wav"] and not rest[0].flagged
    assert "<b>2</b><span>files scanned" in (out / REPORT).read_text(encoding="utf-8")


def test_file_names_that_are_not_utf8_are_scanned_reported_and_resumed(env, scanned, tmp_path):
    """Linux file names are bytes: one that is not UTF-8 must not stop the batch.  Its line
    reads back to the same path (so a re-run resumes it), and the reports stay UTF-8."""
    import shutil

    src = tmp_path / "in"
    src.mkdir()
    good = os.fsdecode(os.fsencode(str(src)) + b"/use\xff.wav")
    bad = os.fsdecode(os.fsencode(str(src)) + b"/corrupt\xfe.wav")
    shutil.copy(scanned["in"] / "m0.wav", good)
    Path(bad).write_bytes(b"RIFF\x00\x00\x00\x00WAVEjunk" * 20)
    out = tmp_path / "out"
    summary = run_scan([src], out, index=env["index"], jobs=2, mcfg=MCFG)
    assert (summary.files, summary.flagged, summary.errors) == (2, 1, 1)
    (res,), (err,) = _lines(out / RESULTS), _lines(out / ERRORS)
    assert res["query"] == good and res["matches"] and err["query"] == bad
    report = (out / REPORT).read_bytes().decode("utf-8")        # valid UTF-8
    assert "use?.wav" in report
    assert "use?.wav" in (out / SUMMARY).read_bytes().decode("utf-8")
    again = run_scan([src], out, index=env["index"], jobs=1, mcfg=MCFG)
    assert (again.run_resumed, again.run_scanned) == (2, 0)


def test_cli_exit_codes(env, scanned, tmp_path):
    src = scanned["in"]
    runner = CliRunner()
    args = ["--index", str(env["index"]), "-j", "1", "--fast", "-q"]
    r = runner.invoke(cli, ["scan", str(src / "other.wav"), str(src / "noise.wav"),
                            "--out", str(tmp_path / "o1"), *args])
    assert r.exit_code == 1, r.output            # nothing flagged
    r = runner.invoke(cli, ["scan", str(src / "corrupt.wav"), "--out", str(tmp_path / "o2"), *args])
    assert r.exit_code == 2, r.output            # no file could be read
    assert "corrupt" in r.output
    r = runner.invoke(cli, ["scan", str(src / "m0.wav"), str(src / "corrupt.wav"),
                            "--out", str(tmp_path / "o3"), *args])
    assert r.exit_code == 0, r.output            # flagged (a bad file does not stop it)
    for argv in (["scan", str(src), "--out", str(tmp_path / "o4"), "--index", str(tmp_path / "none")],
                 ["scan", "--out", str(tmp_path / "o5"), "--index", str(env["index"])],
                 ["scan", f"@{tmp_path / 'nolist.txt'}", "--out", str(tmp_path / "o6"),
                  "--index", str(env["index"])]):
        with pytest.raises(SystemExit) as e:
            main(argv)
        assert e.value.code == 2


def test_mix_of_several_recordings_is_flagged_with_each_and_max_matches_caps_it(env, tmp_path):
    """A DJ-mix-like file of three catalogue songs back to back is flagged with all three
    (each at its own segment); ``--max-matches 2`` keeps the two strongest."""
    s = env["songs"]
    src = tmp_path / "in"
    src.mkdir()
    sf.write(src / "mix.wav", np.concatenate([s[0][2 * SR:12 * SR], s[1][5 * SR:15 * SR],
                                              s[3][10 * SR:20 * SR]]), SR)
    runner = CliRunner()
    args = ["--index", str(env["index"]), "-j", "1", "-q", "--min-significance", "20"]
    r = runner.invoke(cli, ["scan", str(src), "--out", str(tmp_path / "all"), *args])
    assert r.exit_code == 0, r.output
    (rec,) = _lines(tmp_path / "all" / RESULTS)
    found = {Path(m["reference"]["path"]).name: m for m in rec["matches"]}
    assert set(found) == {"song0.wav", "song1.wav", "song3.wav"}, list(found)
    for k, name in enumerate(["song0.wav", "song1.wav", "song3.wav"]):
        assert 10.0 * k - 0.5 <= found[name]["query_start"] < found[name]["query_end"] <= 10.0 * (k + 1) + 0.5
    r = runner.invoke(cli, ["scan", str(src), "--out", str(tmp_path / "two"), *args,
                            "--max-matches", "2"])
    assert r.exit_code == 0, r.output
    (rec,) = _lines(tmp_path / "two" / RESULTS)
    assert len(rec["matches"]) == 2


def test_load_records_newest_per_path(env, scanned):
    res, errs = load_records(scanned["out"])
    assert len(res) == 5 and len(errs) == 2


def test_verified_matches_are_shown_in_the_csv_and_the_report(tmp_path):
    """A match let through by audio verification carries its check (peaks, their z-score,
    correlation) into ``summary.csv`` and the report's evidence; other matches show none."""
    from earmark.report_html import _facts
    from earmark.scan import group_by_recording, write_summary_csv

    def match(track, verified, score):
        return {"kind": "recording", "score": score, "significance": 14.2 if verified else 40.0,
                "reference": {"track_id": track, "path": f"/cat/{track}.wav"},
                "query_start": 1.0, "query_end": 9.0, "reference_start": 20.0,
                "reference_end": 28.0, "coverage": 0.8, "speed": 1.0,
                "pitch_semitones": -3.0 if verified else 0.0, "verified": verified}

    check = {"correlation": 0.512, "peaks": 0.58, "peaks_z": 20.6, "coherence": 0.437,
             "coherence_z": 48.3}
    record = {"query": "q.wav", "duration": 10.0, "error": None,
              "matches": [match(1, check, 30), match(2, None, 20), match(3, 0.873, 25),
                          match(4, {"correlation": "<script>", "peaks": 1}, 22)]}
    assert write_summary_csv(tmp_path / "s.csv", [record]) == 4
    rows = {r["track_id"]: r for r in csv.DictReader(open(tmp_path / "s.csv", encoding="utf-8"))}
    assert (rows["1"]["verified_peaks"], rows["1"]["verified_peaks_z"],
            rows["1"]["verified_correlation"], rows["1"]["verified_coherence"],
            rows["1"]["verified_coherence_z"]) == ("0.58", "20.6", "0.512", "0.437", "48.3")
    assert rows["2"]["verified_peaks"] == rows["2"]["verified_correlation"] == ""
    # An older release's bare correlation still reads; a malformed check is no check.
    assert rows["3"]["verified_correlation"] == "0.873" and rows["3"]["verified_peaks"] == ""
    assert rows["3"]["verified_coherence_z"] == ""
    assert rows["4"]["verified_correlation"] == ""
    groups = {g["reference"]["track_id"]: _facts(g["best"], g) for g in group_by_recording(record)}
    assert "checked on the audio" in groups[1] and "58%" in groups[1] and "20.6" in groups[1]
    assert "0.51" in groups[1] and "waveform" in groups[1] and "48.3" in groups[1]
    assert "waveform" not in groups[3]
    assert "checked on the audio" in groups[3] and "0.87" in groups[3]
    assert "checked on the audio" not in groups[2] and "checked on the audio" not in groups[4]


def test_alignment_points_are_distinct_and_plots_stay_small_and_safe():
    """A journal line keeps each (query, reference) point once (the landmarks of one anchor
    share its times); a plot draws at most MAX_PLOT_DOTS dots, one per place, and survives
    points that are not numbers (a hand-edited journal)."""
    from earmark.evidence import Match, Reference
    from earmark.report_html import MAX_PLOT_DOTS, alignment_svg

    line = [(10.0 + 0.016 * k, 30.0 + 0.016 * k) for k in range(900)]
    m = Match(reference=Reference(track_id=1, path="/cat/a.wav", duration=60.0), score=900,
              significance=99.0, query_start=10.0, query_end=24.4, reference_start=30.0,
              reference_end=44.4, coverage=0.5, alignment=tuple(p for p in line for _ in range(3)))
    d = m.to_dict(with_alignment=True)
    assert d["alignment"] == [[round(q, 3), round(r, 3)] for q, r in line]
    svg = alignment_svg(d)
    dots = re.findall(r"M([0-9.]+) ([0-9.]+)h0", svg)
    assert 0 < len(dots) <= MAX_PLOT_DOTS and len(set(dots)) == len(dots)
    xs = [float(x) for x, _ in dots]
    assert xs == sorted(xs)                                  # in query order along the line
    assert "900 matched landmarks" in svg and "slope 1.000" in svg
    # Each legend line fits over the plot (at ~0.62 em a character, DejaVu Sans' mean
    # width): on one line the legend ran past the plot's right edge and was cut off.
    width = float(re.search(r'width="([0-9.]+)"', svg).group(1))
    for x, size, text in re.findall(r'<text x="([0-9.]+)" y="[0-9.]+" font-size="([0-9.]+)"'
                                    r'[^>]*>(.*?)</text>', svg):
        if "fit:" in text or "matched landmarks" in text:
            chars = len(re.sub(r"<[^>]+>", "", text))
            assert float(x) + 0.62 * float(size) * chars <= width, text
    for bad in ([["a", "b"]], [[1.0]], [[float("nan"), 2.0], [3.0, float("inf")]], None):
        out = alignment_svg(dict(d, alignment=bad))
        assert out.startswith("<svg") and "nan" not in out and "inf" not in out


def test_report_files_are_replaced_atomically_or_not_at_all(tmp_path):
    """A report written piece by piece replaces the old one only when complete: an error (or
    Ctrl-C) half-way leaves the old file as it was and no temporary file behind."""
    from earmark.scan import _atomic_file

    page = tmp_path / "report.html"
    page.write_bytes(b"old report")
    for stop in (RuntimeError("disk full"), KeyboardInterrupt()):
        with pytest.raises(type(stop)):
            with _atomic_file(page) as f:
                f.write(b"<html>half of a new")
                raise stop
        assert page.read_bytes() == b"old report"
        assert sorted(p.name for p in tmp_path.iterdir()) == ["report.html"]
    with _atomic_file(page) as f:
        f.write(b"new ")
        f.write(b"report")
    assert page.read_bytes() == b"new report"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["report.html"]
