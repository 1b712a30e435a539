"""``fp bench resume``: ``fp scan`` killed with SIGKILL at random moments, then run again.

The promise checked (issue 5): a batch scan killed anywhere - while it starts, while its
workers match, while it appends a result, while it writes the reports - and run again with
the same command ends with exactly one journal line per input file, and loses at most the
files that were in flight.  Each round starts the same ``fp scan`` as a fresh process and
sends SIGKILL to it (the parent: its workers die with it).  Kill points alternate between a
seeded number of journal lines (spread over the batch) and a seeded delay (the start-up
and the first files); the last one comes as soon as every file is journaled, while the
reports are written.  After each kill the bench checks that

* the parent's workers are gone and nothing is appended after the kill;
* every complete line already written is still there, byte for byte, after the next run
  (the journals are append-only; a torn last line is the only thing a resume may drop);

and a last round runs to the end and checks that results plus errors hold each input
exactly once, the bad inputs among the errors, and the report counts every file.

Inputs are built here (:func:`build_resume_inputs`): short seeded files, so that a
thousand of them take seconds to scan - synthetic songs in FLAC and WAV, every tenth an
excerpt of a catalogue file when a catalogue folder is given (flagged files write longer
lines), and a few bad ones (empty, not audio, too short, silent).

Writes ``resume.json`` and ``resume.md`` into the output folder.
"""

from __future__ import annotations

import datetime as _dt
import json
import os
import shutil
import signal
import subprocess
import time
from pathlib import Path
from typing import Any

import numpy as np

from earmark.errors import EarmarkError

SCHEMA_VERSION = 1
#: Sample rate of the built inputs (Hz).
BUILD_SR = 16000
#: Seconds of each built file (drawn uniformly).
FILE_SECONDS = (3.0, 6.0)
#: Bad inputs added to every batch (name -> what makes them bad); each must be an error.
BAD_FILES = ("empty.wav", "not_audio.mp3", "too_short.wav", "silent.flac")
#: A round killed after a delay draws it from here (seconds): the scan's start-up (imports,
#: warming the kernels, forking the workers) and its first files.
START_UP_KILL_SECONDS = (0.05, 1.5)


def kill_mode(round_index: int, kills: int) -> str:
    """How round ``round_index`` (0-based) of ``kills`` is killed: ``"lines"`` (once the
    journals hold a seeded number of lines, spread over the batch), ``"time"`` (after a
    seeded delay: start-up or the first files) alternating, and the last one ``"reports"``
    (as soon as every file is journaled: while the reports are written)."""
    if kills >= 2 and round_index == kills - 1:
        return "reports"
    return "time" if round_index % 2 else "lines"


#: How often the journals are polled while waiting for a kill point (seconds).
POLL_SECONDS = 0.002
#: How long a killed scan's files are watched for late writes (seconds).
SETTLE_SECONDS = 0.5


def build_resume_inputs(folder: str | os.PathLike, n_files: int, seed: int = 0,
                        catalogue: str | os.PathLike | None = None) -> list[str]:
    """Write ``n_files`` short seeded files (plus :data:`BAD_FILES`) into ``folder``; return
    every path, sorted.  A folder already holding the same set is reused as it is."""
    import soundfile as sf

    from earmark.fingerprint.audio import audio_duration, load_audio
    from earmark.index.catalogue import find_audio_files
    from earmark.synth import synth_song

    out = Path(folder)
    settings = {"n_files": n_files, "seed": seed, "sr": BUILD_SR,
                "catalogue": os.path.abspath(catalogue) if catalogue else None, "version": 1}
    stamp = out / "inputs.json"
    try:
        old = json.loads(stamp.read_text())
        if old.get("settings") == settings and all(Path(p).is_file() for p in old["files"]):
            return old["files"]
    except (OSError, ValueError, KeyError, TypeError):
        pass
    out.mkdir(parents=True, exist_ok=True)
    for f in out.iterdir():
        if f.is_file():
            f.unlink()
    rng = np.random.default_rng(seed)
    cat_files = find_audio_files([catalogue])[0] if catalogue else []
    paths = []
    for k in range(n_files):
        seconds = float(rng.uniform(*FILE_SECONDS))
        y = None
        if cat_files and k % 10 == 0:
            ref = cat_files[int(rng.integers(len(cat_files)))]
            start = float(rng.uniform(0.0, max(0.0, audio_duration(ref) - seconds)))
            y = load_audio(ref, BUILD_SR, max_seconds=seconds, offset_seconds=start)
        if y is None or y.shape[0] < BUILD_SR:
            y = synth_song(seed=seed * 1_000_003 + k, seconds=seconds, sr=BUILD_SR)
        path = out / f"r{k:05d}.{'flac' if k % 2 else 'wav'}"
        sf.write(path, y, BUILD_SR)
        paths.append(str(path.resolve()))
    (out / BAD_FILES[0]).write_bytes(b"")
    (out / BAD_FILES[1]).write_bytes(b"this is not audio " * 64)
    sf.write(out / BAD_FILES[2], synth_song(seed=1, seconds=0.2, sr=BUILD_SR), BUILD_SR)
    sf.write(out / BAD_FILES[3], np.zeros(3 * BUILD_SR, np.float32), BUILD_SR)
    paths += [str((out / name).resolve()) for name in BAD_FILES]
    paths.sort()
    stamp.write_text(json.dumps({"settings": settings, "files": paths}, indent=1) + "\n")
    return paths


def _journal_bytes(report: Path) -> tuple[bytes, bytes]:
    """The complete lines (up to the last newline) of results.jsonl and errors.jsonl."""
    from earmark.scan import ERRORS, RESULTS

    out = []
    for name in (RESULTS, ERRORS):
        try:
            data = (report / name).read_bytes()
        except FileNotFoundError:
            data = b""
        out.append(data[: data.rfind(b"\n") + 1])
    return out[0], out[1]


class _LineCounter:
    """Complete lines in a report folder's journals, reading only what was appended since
    the last call (polled every few ms while a scan runs: re-reading megabytes of journal
    each time would take the scan's CPU)."""

    def __init__(self, report: Path):
        self.report = report
        self.read_to: dict[str, int] = {}
        self.lines: dict[str, int] = {}

    def __call__(self) -> int:
        from earmark.scan import ERRORS, RESULTS

        for name in (RESULTS, ERRORS):
            try:
                size = (self.report / name).stat().st_size
            except FileNotFoundError:
                continue
            # A resume truncates a torn last line, which holds no newline.
            at = min(self.read_to.get(name, 0), size)
            if size > at:
                with open(self.report / name, "rb") as f:
                    f.seek(at)
                    data = f.read(size - at)
                self.lines[name] = self.lines.get(name, 0) + data.count(b"\n")
                at += len(data)
            self.read_to[name] = at
        return sum(self.lines.values())


def _last_byte(path: Path) -> bytes:
    """The last byte of ``path`` (``b""`` if it is empty or missing)."""
    try:
        with open(path, "rb") as f:
            f.seek(0, os.SEEK_END)
            if f.tell() == 0:
                return b""
            f.seek(-1, os.SEEK_END)
            return f.read(1)
    except OSError:
        return b""


def _sizes(report: Path) -> tuple[int, ...]:
    from earmark.scan import ERRORS, RESULTS

    return tuple((report / n).stat().st_size if (report / n).exists() else -1
                 for n in (RESULTS, ERRORS))


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


#: ``--stream``: paths are written to ``fp scan -`` this many at a time, this often (s).
STREAM_PATHS_PER_WRITE = 8
STREAM_WRITE_SECONDS = 0.02


def _feed(stdin: Any, paths: list[str]) -> None:
    """Write ``paths`` to a streamed scan a few at a time, then end the stream; stops
    quietly when the scan is killed (broken pipe)."""
    try:
        for a in range(0, len(paths), STREAM_PATHS_PER_WRITE):
            stdin.write("".join(p + "\n" for p in paths[a:a + STREAM_PATHS_PER_WRITE]).encode())
            stdin.flush()
            time.sleep(STREAM_WRITE_SECONDS)
    except (BrokenPipeError, ValueError, OSError):
        pass
    finally:
        try:
            stdin.close()
        except OSError:
            pass


def run_resume_bench(out_dir: str | os.PathLike, index: str | os.PathLike, n_files: int = 1000,
                     kills: int = 5, jobs: int = 2, seed: int = 0,
                     catalogue: str | os.PathLike | None = None, fast: bool = False,
                     stream: bool = False, progress: bool = True) -> dict[str, Any]:
    """Kill ``fp scan`` ``kills`` times at seeded random moments, resume it, check the
    journals (see the module docstring); write ``resume.json`` / ``resume.md``.  With
    ``stream`` the scan is ``fp scan -`` and its paths arrive on standard input a few at a
    time (:data:`STREAM_PATHS_PER_WRITE`), as from an upload queue.  Returns the document;
    its ``"passed"`` says whether every check held."""
    import threading

    from earmark.bench.runner import machine_info
    from earmark.bench.scan import _children, _fp_cmd
    from earmark.scan import ERRORS, RESULTS

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)

    def say(msg: str) -> None:
        if progress:
            print(msg, flush=True)

    say(f"building {n_files} inputs in {out / 'inputs'} ...")
    files = build_resume_inputs(out / "inputs", n_files, seed, catalogue)
    n = len(files)
    report = out / "report"
    shutil.rmtree(report, ignore_errors=True)
    n_lines = _LineCounter(report)
    cmd = [*_fp_cmd(), "scan", "-" if stream else str(out / "inputs"), "--out", str(report),
           "--index", str(index), "-j", str(jobs), "-q", *(["--fast"] if fast else [])]
    rng = np.random.default_rng(seed)
    rounds: list[dict[str, Any]] = []
    kept: tuple[bytes, bytes] = (b"", b"")
    checks_ok = True
    for r in range(kills + 1):
        last = r == kills
        done = n_lines()
        mode = None if last else kill_mode(r, kills)
        target_lines = None
        if mode == "lines" and done + 1 < n:
            # Spread over what is left: on average the next (kills left + 1)-th of it.
            span = max(1, 2 * (n - done) // (kills - r + 1))
            target_lines = min(n - 1, done + 1 + int(rng.integers(0, span)))
        elif mode == "reports":
            target_lines = n
        delay = float(rng.uniform(*START_UP_KILL_SECONDS)) if mode == "time" else None
        t0 = time.perf_counter()
        proc = subprocess.Popen(cmd, stdin=subprocess.PIPE if stream else subprocess.DEVNULL,
                                stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                                start_new_session=True)
        feeder = None
        if stream:
            feeder = threading.Thread(target=_feed, args=(proc.stdin, files), daemon=True)
            feeder.start()
        killed_at = None
        workers: list[int] = []
        while proc.poll() is None and not last:
            now = time.perf_counter() - t0
            if (mode in ("lines", "reports") and target_lines is not None
                    and n_lines() >= target_lines) \
                    or (mode == "time" and now >= delay):
                workers = _children(proc.pid)
                proc.send_signal(signal.SIGKILL)   # the parent only: workers die with it
                killed_at = now
                break
            time.sleep(POLL_SECONDS)
        if feeder is not None:
            feeder.join()
            proc.stdin = None   # closed by the feeder; communicate() must not flush it
        _, stderr = proc.communicate()
        seconds = time.perf_counter() - t0
        row: dict[str, Any] = {"round": r + 1, "mode": mode or "to the end",
                               "lines_before": done, "target_lines": target_lines,
                               "delay_seconds": round(delay, 3) if delay is not None else None,
                               "killed_at_seconds": (round(killed_at, 3) if killed_at is not None
                                                     else None),
                               "exit_code": proc.returncode, "seconds": round(seconds, 2)}
        if killed_at is not None:
            sizes = _sizes(report)
            time.sleep(SETTLE_SECONDS)
            row["workers_at_kill"] = len(workers)
            row["workers_left"] = sum(1 for w in workers if _alive(w))
            row["late_writes"] = _sizes(report) != sizes
            row["lines_at_kill"] = n_lines()
            row["torn_tail"] = any(_last_byte(report / name) not in (b"", b"\n")
                                   for name in (RESULTS, ERRORS))
            ok = row["workers_left"] == 0 and not row["late_writes"]
        else:
            row["finished"] = True
            ok = proc.returncode in (0, 1)
            if not ok:  # not a resume failure: the scan cannot run at all (index, flags)
                lines = stderr.decode(errors="replace").strip().splitlines()
                raise EarmarkError(f"fp scan exited {proc.returncode}: "
                                   f"{lines[-1] if lines else 'no message'}")
        # Append-only: what was complete before this round is still there, byte for byte.
        now_bytes = _journal_bytes(report)
        row["prefix_kept"] = all(b.startswith(a) for a, b in zip(kept, now_bytes))
        ok = ok and row["prefix_kept"]
        kept = now_bytes
        row["ok"] = ok
        checks_ok = checks_ok and ok
        rounds.append(row)
        say(f"round {r + 1}: {row['mode']}"
            + (f", killed at {killed_at:.2f} s with {row['lines_at_kill']} of {n} lines"
               if killed_at is not None else f", exit {proc.returncode}, {n_lines()} lines")
            + ("" if ok else "  <- FAILED"))
        if proc.returncode == -signal.SIGKILL and killed_at is None:
            checks_ok = False
    bad = {str((out / "inputs" / name).resolve()) for name in BAD_FILES}
    final = check_report(report, files, bad)
    final["kills_landed"] = sum(1 for x in rounds if x.get("killed_at_seconds") is not None)
    passed = bool(checks_ok and final["ok"])
    doc = {"schema_version": SCHEMA_VERSION, "tool": "fp bench resume",
           "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
           "machine": machine_info(), "index": os.path.abspath(index), "jobs": jobs,
           "fast": fast, "stream": stream, "seed": seed, "kills": kills, "command": cmd,
           "rounds": rounds, "final": final, "passed": passed}
    (out / "resume.json").write_text(json.dumps(doc, indent=1) + "\n")
    (out / "resume.md").write_text(resume_markdown(doc))
    return doc


def check_report(report: str | os.PathLike, files: list[str], bad: set[str]) -> dict[str, Any]:
    """The final check of a finished scan's folder: each of ``files`` exactly once among
    results and errors, every one of ``bad`` among the errors, and report.html counting
    every file.  ``"ok"`` says whether all of it holds."""
    from earmark.scan import ERRORS, REPORT, RESULTS, _iter_journal

    report = Path(report)
    # Every complete line as written (load_records would keep the newest line of a path
    # and hide a duplicate).
    results = [rec for _, rec in _iter_journal(report / RESULTS)]
    errors = [rec for _, rec in _iter_journal(report / ERRORS)]
    queries = [x.get("query") for x in results + errors]
    expected = set(files)
    page = report / REPORT
    final: dict[str, Any] = {
        "files": len(files), "results": len(results), "errors": len(errors),
        "duplicates": len(queries) - len(set(queries)),
        "missing": len(expected - set(queries)), "unexpected": len(set(queries) - expected),
        "bad_files_listed": len(bad & {e.get("query") for e in errors}),
        "report_counts_all": page.exists() and f"<b>{len(files)}</b><span>files scanned"
                             in page.read_text(encoding="utf-8")}
    final["exactly_once"] = (final["duplicates"] == 0 and final["missing"] == 0
                             and final["unexpected"] == 0 and len(queries) == len(files))
    final["ok"] = bool(final["exactly_once"] and final["bad_files_listed"] == len(bad)
                       and final["report_counts_all"])
    return final


def resume_markdown(doc: dict[str, Any]) -> str:
    """``resume.md``: one row per round, then the final check."""
    f = doc["final"]
    lines = ["# fp scan kill -9 / resume benchmark", "",
             f"{f['files']} files ({len(BAD_FILES)} of them bad), `fp scan "
             f"{'- ' if doc.get('stream') else ''}-j {doc['jobs']}"
             f"{' --fast' if doc['fast'] else ''}` killed with SIGKILL {f['kills_landed']} "
             f"times (of {doc['kills']} rounds; seed {doc['seed']}), then run to the end.", "",
             "| round | kill point | lines before | killed at | lines at kill | workers killed "
             "with it | late writes | torn last line | earlier lines kept | ok |",
             "|--:|---|--:|--:|--:|--:|---|---|---|---|"]
    for r in doc["rounds"]:
        point = (f"{r['target_lines']} lines" if r["mode"] == "lines" and r["target_lines"]
                 else f"{r['delay_seconds']} s" if r["mode"] == "time"
                 else "all lines in (reports)" if r["mode"] == "reports" else r["mode"])
        killed = r.get("killed_at_seconds") is not None
        lines.append(
            f"| {r['round']} | {point} | {r['lines_before']} | "
            + (f"{r['killed_at_seconds']:.2f} s | {r['lines_at_kill']} | "
               f"{r['workers_at_kill'] - r['workers_left']} of {r['workers_at_kill']} | "
               f"{'yes' if r['late_writes'] else 'no'} | {'yes' if r['torn_tail'] else 'no'} | "
               if killed else f"(finished, exit {r['exit_code']}) | – | – | – | – | ")
            + f"{'yes' if r['prefix_kept'] else 'no'} | {'✓' if r['ok'] else '✗'} |")
    lines += ["", "| final check | value |", "|---|--:|",
              f"| result lines | {f['results']} |", f"| error lines | {f['errors']} |",
              f"| duplicates | {f['duplicates']} |", f"| missing | {f['missing']} |",
              f"| bad files listed as errors | {f['bad_files_listed']} of {len(BAD_FILES)} |",
              f"| report counts every file | {'yes' if f['report_counts_all'] else 'no'} |",
              f"| exactly one line per file | {'yes' if f['exactly_once'] else 'NO'} |",
              "", f"**{'passed' if doc['passed'] else 'FAILED'}**"]
    return "\n".join(lines) + "\n"
