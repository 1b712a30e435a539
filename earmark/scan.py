"""``fp scan``: batch-scan folders, lists or a manifest of audio into a durable, resumable report.

A content-protection team or a platform receives thousands of generated tracks a day and
needs to know which use catalogue recordings, with evidence it can forward::

    fp scan outputs/ --out report/ -j 2          # folders (recursive), files, @list.txt, -
    fp scan --manifest jobs.csv --out report/    # CSV: a path column + columns carried through
    fp scan outputs/ --out report/               # again after a crash or Ctrl-C: resumes

Python API (a generator, so a pipeline sees each result as it lands)::

    from earmark.scan import scan
    for r in scan(["outputs/"], "report/", index="cat.fpindex", jobs=2):
        if r.flagged:
            print(r.path, [m.reference.label() for m in r.result.matches])

The report folder
-----------------
``results.jsonl``
    One line per analysed file, appended durably (``write`` + ``fsync``) by the parent
    process as each file finishes.  A line is exactly ``QueryResult.to_dict(
    with_alignment=True)`` - the schema of ``fp match --json`` (see
    :mod:`earmark.evidence`) - plus two keys: ``content_hash`` (BLAKE2b-128 of the file's
    bytes) and ``manifest`` (the manifest columns of that file, ``{}`` without a manifest;
    nested so that a column called ``query`` or ``error`` cannot overwrite evidence).
``errors.jsonl``
    One line per file that could not be analysed (missing, empty, corrupt, silent, too
    short, ...), same schema with ``error`` set to a one-line reason and no matches.
``summary.csv``
    One row per flagged file and matched recording (best segment of that recording, number
    of segments, matched seconds).  Text cells that a spreadsheet would run as a formula
    (starting with ``= + - @``) are prefixed with ``'``.
``report.html``
    One self-contained static page (see :mod:`earmark.report_html`).
``scan.json``
    The index and match settings the folder was scanned with; resuming with different ones
    warns (:class:`SettingsChangedWarning`): files already done keep their results.

``summary.csv`` and ``report.html`` are regenerated from the two journals at the end of every
run (also an interrupted one), so a resumed run reports everything.

Resume and crash safety
-----------------------
A file is identified by its path *and* the hash of its content.  On start the journals are
read (a torn last line, left by a kill in the middle of a write, is truncated away); a file
whose (content hash, path) already has a line is not analysed again, and a file whose
content was already analysed under another path gets a copy of that evidence without being
decoded again.  The parent is the only writer, so a ``kill -9`` loses at most the files in
flight and never writes a line twice.  A changed file (same path, new content) is analysed
again; the report shows the newest result of each path.  A report folder is locked while a
scan runs.

Errors are final: a file that could not be analysed is not tried again while its content is
unchanged, unless ``--retry-errors`` (``retry_errors=True``) is given, which drops the error
lines of this run's inputs and analyses them again (for transient failures: a network
mount, memory, a timeout).  A missing input is an error too; once it appears it is a new
file and is analysed.

Workers are forked processes, each with one file in flight and supervised by the parent: a
worker that crashes (a decoder on a hostile file, the OOM killer) or exceeds ``--timeout``
costs only that file, which becomes an error line, and is replaced.  Each worker maps the
index segments read-only; their pages live once in the page cache, shared by all workers.

Relative paths in a manifest or a list file are resolved against the folder of that file;
paths read from standard input against the current folder.

Streams
-------
``-`` reads paths from standard input (or the ``stdin`` given to :func:`scan`) *as they
arrive*: a platform can keep one ``fp scan - --out report/`` running and write each upload's
path to it (``inotifywait -m -e close_write --format '%w%f' uploads/ | fp scan - ...``);
each file is scanned as soon as a worker is free, its line lands in ``results.jsonl`` when it
finishes, and the start-up (~1 s: Python, the engine's imports, the kernels) is paid once.
``summary.csv`` / ``report.html`` are rebuilt when the stream is quiet (at most every
``REPORT_REFRESH_SECONDS``; under a stream that never pauses, every ten times that or
``REPORT_COST_FACTOR`` times the last rebuild's duration, whichever is longer:
:func:`report_due`) and when it ends (or on Ctrl-C), which ends the scan.  Files given as arguments are scanned first.
With ``--retry-errors``, or a stream without a file descriptor (``io.StringIO``), the whole
stream is read first.
"""

from __future__ import annotations

import contextlib
import csv
import ctypes
import fcntl
import gc
import io
import json
import math
import multiprocessing
import os
import signal
import sys
import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO, TextIO

import click

from earmark.cli import index_option, match_config, recordings_only_option
from earmark.errors import EarmarkError, MetadataError
from earmark.evidence import AudioCheck
from earmark.index.store import fsync_dir
from earmark.threads import single_threaded_blas, usable_cpus

RESULTS = "results.jsonl"
ERRORS = "errors.jsonl"
SUMMARY = "summary.csv"
REPORT = "report.html"
LOCK = ".scan.lock"
SETTINGS = "scan.json"

#: Inputs with these suffixes (besides ``@file``) are read as lists of paths, one per line.
LIST_SUFFIXES = frozenset({".txt", ".lst"})

EXIT_MATCH, EXIT_NO_MATCH, EXIT_ERROR = 0, 1, 2

__all__ = ["scan", "run_scan", "ScanResult", "ScanSummary", "ScanProgress", "ScanItem",
           "SettingsChangedWarning",
           "expand_inputs", "read_manifest", "load_records", "summarize", "write_reports",
           "scan_cmd"]


# --------------------------------------------------------------------------- inputs


@dataclass(frozen=True)
class ScanItem:
    """One file to scan: its absolute path and the manifest columns that travel with it."""

    path: str
    columns: dict[str, str] = field(default_factory=dict)


def _read_text(path: Path, what: str) -> str:
    try:
        with open(path, encoding="utf-8-sig", newline="") as f:
            return f.read()
    except FileNotFoundError:
        raise EarmarkError(f"{path}: {what} not found") from None
    except UnicodeDecodeError:
        raise EarmarkError(f"{path}: {what} is not UTF-8 text") from None
    except OSError as e:
        raise EarmarkError(f"{path}: cannot read {what} ({e.strerror or e})") from None


def _resolve(entry: str, base: Path | None) -> str:
    p = Path(entry)
    if not p.is_absolute() and base is not None:
        p = base / p
    return os.path.abspath(p)


def read_path_list(text: str, base: Path | None) -> list[str]:
    """Paths from a list (one per line; blank lines ignored), made absolute against ``base``
    (or the current folder)."""
    return [_resolve(line.strip(), base) for line in text.splitlines() if line.strip()]


def read_manifest(path: str | os.PathLike) -> list[ScanItem]:
    """Read a manifest CSV: a ``path`` column (header matched without regard to case or
    surrounding spaces) and any other columns, carried through to the report as text.

    Raises
    ------
    MetadataError
        Missing/unreadable file, not UTF-8, malformed CSV, or no ``path`` column.
    """
    p = Path(path)
    try:
        text = _read_text(p, "manifest")
    except EarmarkError as e:
        raise MetadataError(str(e)) from None
    try:
        rows = list(csv.reader(io.StringIO(text)))
    except csv.Error as e:
        raise MetadataError(f"{p}: malformed CSV ({e})") from None
    if not rows:
        raise MetadataError(f"{p}: manifest is empty (need a header row with a path column)")
    header = [h.strip() for h in rows[0]]
    lowered = [h.lower() for h in header]
    if "path" not in lowered:
        raise MetadataError(f"{p}: manifest has no 'path' column (columns: "
                            f"{', '.join(header) or 'none'})")
    ip = lowered.index("path")
    base = p.resolve().parent
    items = []
    for row in rows[1:]:
        if not row or not any(c.strip() for c in row):
            continue
        entry = row[ip].strip() if ip < len(row) else ""
        if not entry:
            continue
        cols = {h: (row[i] if i < len(row) else "") for i, h in enumerate(header)
                if i != ip and h}
        items.append(ScanItem(_resolve(entry, base), cols))
    return items


def _expand_entry(path: str, columns: dict[str, str], out: list[ScanItem]) -> None:
    """A folder becomes its audio files (recursively); anything else is itself."""
    from earmark.index.catalogue import find_audio_files

    if os.path.isdir(path):
        files, _ = find_audio_files([path])
        out.extend(ScanItem(f, dict(columns)) for f in files)
    else:
        out.append(ScanItem(os.path.abspath(path), dict(columns)))


def expand_inputs(inputs: Iterable[str | os.PathLike] = (),
                  manifest: str | os.PathLike | None = None,
                  stdin: TextIO | None = None) -> list[ScanItem]:
    """Turn command-line inputs into the files to scan, in order, duplicates (same absolute
    path) removed - the first occurrence keeps its manifest columns.

    An input is a folder (its audio files, recursively), a file, ``@list`` or a ``.txt`` /
    ``.lst`` file (a list of paths, one per line), or ``-`` (paths on ``stdin``).  Paths that
    do not exist are kept: they become ``errors.jsonl`` lines, not a stopped batch.

    Raises
    ------
    EarmarkError
        An unreadable list file or manifest.
    """
    raw: list[ScanItem] = []
    for item in inputs:
        s = os.fspath(item)
        if s == "-":
            if stdin is None:
                stdin = sys.stdin
            for p in read_path_list(stdin.read(), None):
                _expand_entry(p, {}, raw)
        elif s.startswith("@") and len(s) > 1 and not os.path.exists(s):
            lst = Path(s[1:])
            for p in read_path_list(_read_text(lst, "list file"), lst.resolve().parent):
                _expand_entry(p, {}, raw)
        elif Path(s).suffix.lower() in LIST_SUFFIXES and os.path.isfile(s):
            lst = Path(s)
            for p in read_path_list(_read_text(lst, "list file"), lst.resolve().parent):
                _expand_entry(p, {}, raw)
        else:
            _expand_entry(s, {}, raw)
    if manifest is not None:
        for it in read_manifest(manifest):
            _expand_entry(it.path, it.columns, raw)
    seen: set[str] = set()
    items = []
    for it in raw:
        if it.path not in seen:
            seen.add(it.path)
            items.append(it)
    return items


#: While a stream is scanned, seconds between rebuilds of the reports (see :func:`scan`).
REPORT_REFRESH_SECONDS = 30.0
#: Under a stream that never pauses, a rebuild (in the parent: the workers wait for their
#: next file meanwhile) comes at most once per this many times its own last duration, so it
#: costs at most ~2 % of the scan however large the report grows (3 s at 20 000 files).
REPORT_COST_FACTOR = 50.0


def report_due(since: float, quiet: bool, report_every: float, last_cost: float) -> bool:
    """Whether a streamed scan rebuilds its reports now: ``since`` seconds after the last
    rebuild, which took ``last_cost`` seconds; ``quiet``: no file waiting or in flight.

    >>> report_due(31.0, True, 30.0, 3.0)         # a quiet stream: every 30 s
    True
    >>> report_due(31.0, False, 30.0, 3.0)        # busy: every 10 x 30 s ...
    False
    >>> report_due(301.0, False, 30.0, 10.0)      # ... or 50 x the last rebuild's time
    False
    >>> report_due(501.0, False, 30.0, 10.0)
    True
    """
    if quiet:
        return since >= report_every
    return since >= max(10.0 * report_every, REPORT_COST_FACTOR * last_cost)


def _stream_fd(stream: Any) -> int | None:
    """The file descriptor of ``stream`` (standard input, a pipe, a file), or ``None`` when it
    has none (an ``io.StringIO``, a test runner's input): such a stream is read whole."""
    try:
        fd = stream.fileno()
    except (AttributeError, OSError, ValueError, io.UnsupportedOperation):
        return None
    return fd if isinstance(fd, int) and fd >= 0 else None


class _WorkQueue:
    """The files of one scan, in the order they are handed out: those known at the start
    largest first (the last to finish are short ones, so workers end together), then the
    paths read from a stream (``-``) as they arrive.

    A stream is read a line at a time as it comes (``fp scan -`` fed by an upload queue
    or ``inotifywait`` scans each file as soon as its path is written; results land in the
    journals as each finishes), until end of file.  ``items`` / ``sizes`` are indexed by the
    task number ``i`` of each ``(i, path)`` task; a path seen before is not queued again.
    """

    def __init__(self, items: Iterable[ScanItem], stream_fd: int | None = None):
        self.items: list[ScanItem] = []
        self.sizes: list[int] = []
        self.bytes_total = 0
        self._seen: set[str] = set()
        self._pending: deque[tuple[int, str]] = deque()
        self._fd = stream_fd
        self._partial = b""
        for it in items:
            self._add(it)
        self._pending = deque(sorted(self._pending, key=lambda t: -self.sizes[t[0]]))

    def _add(self, item: ScanItem) -> None:
        if item.path in self._seen:
            return
        self._seen.add(item.path)
        try:
            size = os.stat(item.path).st_size
        except OSError:
            size = 0
        self._pending.append((len(self.items), item.path))
        self.items.append(item)
        self.sizes.append(size)
        self.bytes_total += size

    def pop(self) -> tuple[int, str] | None:
        """The next task, or ``None`` if none is queued now."""
        return self._pending.popleft() if self._pending else None

    def fileno(self) -> int | None:
        """The stream still to be read (for ``select``), ``None`` once it has ended."""
        return self._fd

    @property
    def has_pending(self) -> bool:
        return bool(self._pending)

    def read_stream(self) -> None:
        """One read of the stream (blocks until it has data or ends): each complete line is
        a path (a folder: its audio files), relative paths against the current folder."""
        if self._fd is None:
            return
        try:
            data = os.read(self._fd, 1 << 16)
        except OSError:
            data = b""
        if data:
            *lines, self._partial = (self._partial + data).split(b"\n")
        else:  # end of the stream: a last line without its newline counts too
            lines, self._partial, self._fd = [self._partial], b"", None
        found: list[ScanItem] = []
        for path in read_path_list(os.fsdecode(b"\n".join(lines)), None):
            _expand_entry(path, {}, found)
        for it in found:
            self._add(it)


# --------------------------------------------------------------------------- journals


#: Compact journal lines (a flagged file's line is mostly its alignment's numbers).
_JSON_SEPARATORS = (",", ":")


def _json_line(record: dict[str, Any]) -> bytes:
    """One journal line, UTF-8.  A file name that is not valid UTF-8 (Linux allows any bytes)
    reaches Python with its undecodable bytes as lone surrogates, which UTF-8 cannot encode:
    such a line is written with JSON's ASCII escapes, which read back to the same path."""
    try:
        return (json.dumps(record, ensure_ascii=False, separators=_JSON_SEPARATORS)
                + "\n").encode("utf-8")
    except UnicodeEncodeError:
        return (json.dumps(record, separators=_JSON_SEPARATORS) + "\n").encode("ascii")


def _text_bytes(text: str) -> bytes:
    """UTF-8 of a report's text; an undecodable byte of a file name shows as ``?``."""
    return text.encode("utf-8", "replace")


class _Journal:
    """An append-only JSON-lines file with one writer: each line is written with a single
    ``write`` on an ``O_APPEND`` descriptor and ``fsync``-ed before the call returns."""

    def __init__(self, path: Path):
        self.path = path
        existed = path.exists()
        self.fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        if not existed:
            fsync_dir(path.parent)

    def append(self, record: dict[str, Any]) -> int:
        """Write one line durably; returns its byte offset."""
        data = _json_line(record)
        offset = os.lseek(self.fd, 0, os.SEEK_END)
        try:
            view = memoryview(data)
            while view:
                n = os.write(self.fd, view)
                view = view[n:]
            os.fsync(self.fd)
        except OSError as e:
            try:  # never leave half a line (disk full): the next line must start clean
                os.ftruncate(self.fd, offset)
            except OSError:
                pass
            raise EarmarkError(f"{self.path}: cannot write ({e.strerror or e})") from None
        return offset

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1


def _iter_journal(path: Path, repair: bool = False) -> Iterator[tuple[int, dict[str, Any]]]:
    """``(offset, record)`` for each complete line.

    A last line without its newline is the torn write of a killed run: with ``repair`` the
    file is truncated to the end of the last complete line (else it is ignored).  A complete
    line that is not a JSON object (damaged by hand) is skipped.
    """
    try:
        f = open(path, "rb")
    except FileNotFoundError:
        return
    except OSError as e:
        raise EarmarkError(f"{path}: cannot read ({e.strerror or e})") from None
    torn_at = None
    with f:
        offset = 0
        for line in f:
            if not line.endswith(b"\n"):
                torn_at = offset
                break
            try:
                rec = json.loads(line)
            except ValueError:
                rec = None
            if isinstance(rec, dict) and isinstance(rec.get("query"), str):
                yield offset, rec
            offset += len(line)
    if torn_at is not None and repair:
        with open(path, "r+b") as f:
            f.truncate(torn_at)
            f.flush()
            os.fsync(f.fileno())


@contextlib.contextmanager
def _atomic_file(path: Path) -> Iterator[BinaryIO]:
    """A binary file whose content replaces ``path`` atomically when the block ends
    (temporary file, fsync, rename).  On an error or Ctrl-C inside the block ``path`` is
    left as it was and the temporary file is removed."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    f = open(tmp, "wb")
    try:
        yield f
        f.flush()
        os.fsync(f.fileno())
    except BaseException:
        f.close()
        tmp.unlink(missing_ok=True)
        raise
    f.close()
    os.replace(tmp, path)
    fsync_dir(path.parent)


def _atomic_write(path: Path, data: bytes) -> None:
    """Replace ``path`` with ``data`` atomically (see :func:`_atomic_file`)."""
    with _atomic_file(path) as f:
        f.write(data)


def _read_line_at(path: Path, offset: int) -> dict[str, Any]:
    with open(path, "rb") as f:
        f.seek(offset)
        return json.loads(f.readline())


# --------------------------------------------------------------------------- results


@dataclass(frozen=True)
class ScanResult:
    """One scanned file.

    Attributes
    ----------
    path : str
        Absolute path of the file.
    record : dict
        Exactly the line in ``results.jsonl`` (or ``errors.jsonl`` when ``error`` is set).
    status : str
        ``"scanned"`` (analysed by this run), ``"duplicate"`` (same content as a file
        already analysed: evidence copied, not decoded again) or ``"resumed"`` (its line
        was written by an earlier run).
    """

    path: str
    record: dict[str, Any]
    status: str

    @property
    def error(self) -> str | None:
        return self.record.get("error")

    @property
    def ok(self) -> bool:
        return self.error is None

    @property
    def flagged(self) -> bool:
        """True when at least one catalogue recording was found."""
        return bool(self.record.get("matches"))

    @property
    def content_hash(self) -> str | None:
        return self.record.get("content_hash")

    @property
    def columns(self) -> dict[str, str]:
        return self.record.get("manifest") or {}

    @property
    def duration(self) -> float:
        return float(self.record.get("duration") or 0.0)

    @property
    def result(self):
        """The evidence as a :class:`earmark.evidence.QueryResult`."""
        return record_to_query_result(self.record)


def record_to_query_result(record: dict[str, Any]):
    """Rebuild a :class:`~earmark.evidence.QueryResult` (with its matches) from a line."""
    from earmark.evidence import Match, QueryResult, Reference

    known = {"track_id", "path", "duration", "title", "artist", "isrc", "rights_holder"}
    matches = []
    for m in record.get("matches") or []:
        ref = dict(m.get("reference") or {})
        reference = Reference(
            track_id=int(ref.get("track_id", -1)), path=str(ref.get("path", "")),
            duration=float(ref.get("duration") or 0.0), title=ref.get("title"),
            artist=ref.get("artist"), isrc=ref.get("isrc"),
            rights_holder=ref.get("rights_holder"),
            extra={k: v for k, v in ref.items() if k not in known})

        def num(k: str, default: float = 0.0) -> float:
            v = m.get(k)
            return float(v) if v is not None else default

        matches.append(Match(
            reference=reference, score=int(m.get("score") or 0),
            significance=num("significance", math.inf), query_start=num("query_start"),
            query_end=num("query_end"), reference_start=num("reference_start"),
            reference_end=num("reference_end"), coverage=num("coverage"),
            speed=num("speed", 1.0), pitch_semitones=num("pitch_semitones"),
            kind=m.get("kind", "recording"),
            alignment=tuple((float(q), float(r)) for q, r in (m.get("alignment") or [])),
            verified=AudioCheck.from_json(m.get("verified"))))
    return QueryResult(query=record["query"], duration=float(record.get("duration") or 0.0),
                       matches=tuple(matches), error=record.get("error"))


@dataclass
class ScanProgress:
    """Passed to the ``progress`` callback after each file."""

    done: int
    total: int
    scanned: int
    resumed: int
    errors: int
    flagged: int
    audio_seconds: float
    elapsed: float
    path: str
    bytes_done: int = 0
    bytes_scanned: int = 0
    bytes_total: int = 0

    @property
    def files_per_second(self) -> float:
        return self.scanned / self.elapsed if self.elapsed > 0 else 0.0

    @property
    def audio_hours_per_second(self) -> float:
        return self.audio_seconds / 3600.0 / self.elapsed if self.elapsed > 0 else 0.0

    @property
    def eta_seconds(self) -> float | None:
        """Remaining time at this run's rate, by file size (files of all lengths are mixed;
        None until a file has been analysed)."""
        if self.bytes_scanned > 0 and self.bytes_total > 0 and self.elapsed > 0:
            return (self.bytes_total - self.bytes_done) / (self.bytes_scanned / self.elapsed)
        rate = self.files_per_second
        return (self.total - self.done) / rate if rate > 0 else None


@dataclass
class ScanSummary:
    """What a report folder holds (newest line per path) and what the last run did.

    ``per_rights_holder`` maps a rights holder (``"(unknown)"`` when the metadata has
    none) to ``{"files": flagged files using its recordings, "recordings": how many of its
    recordings were found, "seconds": matched query seconds}``; ``per_recording`` lists one
    dict per matched catalogue recording (``track_id, label, title, artist, isrc,
    rights_holder, path, files, seconds, best_significance``), most files first.
    """

    out_dir: Path
    files: int = 0
    audio_seconds: float = 0.0
    flagged: int = 0
    errors: int = 0
    per_rights_holder: dict[str, dict[str, float]] = field(default_factory=dict)
    per_recording: list[dict[str, Any]] = field(default_factory=list)
    # this run
    run_files: int = 0
    run_scanned: int = 0
    run_duplicates: int = 0
    run_resumed: int = 0
    run_errors: int = 0
    run_flagged: int = 0
    run_audio_seconds: float = 0.0
    run_elapsed: float = 0.0

    @property
    def audio_hours(self) -> float:
        return self.audio_seconds / 3600.0

    @property
    def clean(self) -> int:
        return self.files - self.flagged - self.errors


# --------------------------------------------------------------------------- workers

_W: dict[str, Any] = {}


def _die_with_parent() -> None:
    """Linux: a worker gets SIGKILL when the scan process dies (kill -9 included)."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except Exception:
        pass


def _worker_threads(mcfg):
    """The match settings a worker runs with: one voting thread (``threads=0``, one per
    core, becomes 1).  A scan's parallelism is its worker processes, so ``-j N`` uses N
    cores: files in parallel scale better than the hypotheses of one file (only the
    voting is threaded; decoding, front end and derivation tier are not), and a scan given
    one core (``-j 1`` on a shared machine) keeps to one.  Measured on the scan bench's 40
    files (1.36 h, 2 cores), ``-j 1`` with two voting threads kept 1.13 cores busy for
    0.89-0.95x the wall time of one thread: the second core it took is the one ``-j 2``
    puts a whole worker on (10.4-10.6 s, 1.9-2.0x one thread).  Only the thread count
    changes, never the results; ``scan.json`` records the settings as given."""
    if getattr(mcfg, "threads", 1) == 0:
        return mcfg.with_(threads=1)
    return mcfg


def _prewarm(idx: Any, mcfg: Any) -> None:
    """Load, in the parent and before any worker is forked, what every worker would
    otherwise load by itself on its first file: FFmpeg (PyAV), the matcher's and the front
    end's compiled kernels (numba cache), FAISS and the derivation tier.  Forked workers
    inherit it: their start-up shrinks from ~1-2 s of CPU each to a fork, and the loaded
    code is shared copy-on-write instead of private to each worker.  Best effort: any
    failure here is ignored (a worker then loads what it needs itself)."""
    try:
        import av  # noqa: F401  (FFmpeg libraries: ~0.1 s and ~30 MB per process)

        from earmark.synth import synth_song

        sr = idx.config.sr
        # One thread: no voting thread pool is started in the parent (threads and fork).
        idx.match_audio(synth_song(seed=7, seconds=4.0, sr=sr), sr, mcfg.with_(threads=1),
                        label="<warm-up>")
    except Exception:
        pass


def _worker_init(index_path: str, mcfg, done: set, hashes: set, parent_pid: int) -> None:
    from earmark.index.catalogue import Index

    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent handles Ctrl-C
    _die_with_parent()
    if os.getppid() != parent_pid:
        os._exit(1)
    # One worker per core: BLAS threads would only spin and take the other workers' cores
    # (earmark.threads).  Kept for the worker's lifetime.
    single_threaded_blas().__enter__()
    # Each worker maps the same segment files: the pages are shared through the page cache.
    _W.update(index=Index.open(index_path), mcfg=_worker_threads(mcfg), done=done,
              hashes=hashes)


def _one_line(e: BaseException, path: str) -> str:
    text = " ".join(str(e).split())
    if isinstance(e, EarmarkError):
        return text or f"{path}: {type(e).__name__}"
    return f"{path}: {type(e).__name__}: {text}" if text else f"{path}: {type(e).__name__}"


def _scan_one(task: tuple[int, str]) -> tuple[int, str, str | None, Any, float]:
    """Worker: ``(i, status, content_hash, payload, seconds)``; never raises.

    status ``resumed`` / ``duplicate`` carry no payload, ``scanned`` the record dict,
    ``error`` the one-line reason.
    """
    from earmark.fingerprint.audio import content_hash

    i, path = task
    t0 = time.perf_counter()
    digest = None
    try:
        digest = content_hash(path)
        if (digest, path) in _W["done"]:
            return i, "resumed", digest, None, 0.0
        if digest in _W["hashes"]:
            return i, "duplicate", digest, None, 0.0
        res = _W["index"].match_file(path, _W["mcfg"])
        return i, "scanned", digest, res.to_dict(with_alignment=True), time.perf_counter() - t0
    except MemoryError:
        return i, "error", digest, f"{path}: out of memory", time.perf_counter() - t0
    except Exception as e:  # EarmarkError, or a decoder bug: never stop the batch
        return i, "error", digest, _one_line(e, path), time.perf_counter() - t0


def _worker_main(conn, index_path: str, mcfg, done: set, hashes: set,
                 parent_pid: int) -> None:
    """A worker process: receive ``(i, path)`` tasks, send back :func:`_scan_one` outcomes."""
    _worker_init(index_path, mcfg, done, hashes, parent_pid)
    while True:
        try:
            task = conn.recv()
        except (EOFError, OSError):
            break
        if task is None:
            break
        conn.send(_scan_one(task))


class _WorkerPool:
    """Forked worker processes, one task in flight each, supervised by the parent.

    Unlike :class:`multiprocessing.pool.Pool`, a worker that dies (a decoder crashing on a
    hostile file, the OOM killer) or runs past ``timeout`` is attributed to the exact file
    it was analysing, which becomes an error line, and is replaced; the batch goes on.
    """

    def __init__(self, n: int, init_args: tuple, timeout: float | None = None):
        self.ctx = multiprocessing.get_context("fork")
        self.init_args = init_args
        self.timeout = timeout
        self.workers: list[dict[str, Any]] = []
        for _ in range(n):
            self._spawn()

    def _spawn(self) -> dict[str, Any]:
        parent_conn, child_conn = self.ctx.Pipe()
        proc = self.ctx.Process(target=_worker_main, args=(child_conn, *self.init_args),
                                daemon=True, name="earmark-scan-worker")
        proc.start()
        child_conn.close()
        w = {"proc": proc, "conn": parent_conn, "task": None, "t0": 0.0}
        self.workers.append(w)
        return w

    def _retire(self, w: dict[str, Any]) -> None:
        self.workers.remove(w)
        try:
            w["proc"].kill()
        except Exception:
            pass
        w["proc"].join(5)
        w["conn"].close()

    def run(self, queue: _WorkQueue) -> Iterator[tuple]:
        """Outcomes of the queue's tasks as they finish; a stream in the queue is read while
        the workers analyse (an idle worker gets a path as soon as one arrives)."""
        from multiprocessing.connection import wait

        def feed(w: dict[str, Any]) -> None:
            task = queue.pop()
            w["task"], w["t0"] = task, time.monotonic()
            if task is not None:
                w["conn"].send(task)

        for w in list(self.workers):
            feed(w)
        while True:
            busy = [w for w in self.workers if w["task"] is not None]
            stream = queue.fileno()
            if not busy and stream is None:
                return
            timeout = None
            if self.timeout and busy:
                timeout = max(0.0, min(w["t0"] + self.timeout for w in busy) - time.monotonic())
            waitables: list[Any] = [w["conn"] for w in busy] + [w["proc"].sentinel for w in busy]
            if stream is not None:
                waitables.append(stream)
            ready = set(wait(waitables, timeout))
            if stream is not None and stream in ready:
                queue.read_stream()
                for w in self.workers:
                    if w["task"] is None:
                        feed(w)
            now = time.monotonic()
            for w in busy:
                outcome = None
                if w["conn"] in ready or w["proc"].sentinel in ready:
                    try:
                        if w["conn"].poll():
                            outcome = w["conn"].recv()
                    except (EOFError, OSError):
                        outcome = None
                    if outcome is None:  # died without an answer
                        w["proc"].join(1)
                        code = w["proc"].exitcode
                        why = (f"signal {-code}" if code is not None and code < 0
                               else f"exit status {code}")
                        outcome = self._failure(w, f"the analysis crashed ({why})")
                elif self.timeout and now - w["t0"] >= self.timeout:
                    outcome = self._failure(w, f"timed out after {self.timeout:g} s")
                if outcome is None:
                    continue
                if outcome[1] == "crash":
                    task = w["task"]
                    self._retire(w)
                    w = self._spawn()
                    outcome = (task[0], "error", outcome[2], outcome[3], outcome[4])
                w["task"] = None
                # The worker gets its next file before the outcome is handed on: it does not
                # wait while the caller journals (fsync), reports progress and so on.
                feed(w)
                yield outcome

    @property
    def in_flight(self) -> int:
        """Files being analysed now."""
        return sum(1 for w in self.workers if w["task"] is not None)

    def _failure(self, w: dict[str, Any], why: str) -> tuple:
        from earmark.fingerprint.audio import content_hash

        i, path = w["task"]
        try:
            digest = content_hash(path)
        except Exception:
            digest = None
        return (i, "crash", digest, f"{path}: {why}; file skipped",
                time.monotonic() - w["t0"])

    def close(self) -> None:
        for w in list(self.workers):
            try:
                if w["task"] is None:
                    w["conn"].send(None)
            except OSError:
                pass
        deadline = time.monotonic() + 2.0
        for w in list(self.workers):
            if w["task"] is not None:
                w["proc"].kill()
            w["proc"].join(max(0.0, deadline - time.monotonic()))
            if w["proc"].is_alive():
                w["proc"].kill()
                w["proc"].join()
            w["conn"].close()
        self.workers = []


# --------------------------------------------------------------------------- scanning


def _lock(out: Path) -> int:
    fd = os.open(out / LOCK, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        os.close(fd)
        raise EarmarkError(f"{out} is being written by another scan") from None
    return fd


class SettingsChangedWarning(UserWarning):
    """A report folder is resumed with another index or other match settings: files already
    done keep their earlier results."""


def _check_settings(out: Path, idx: Any, mcfg: Any) -> None:
    """Record the index and match settings of a report folder (``scan.json``); warn when a
    resumed run uses different ones."""
    import dataclasses
    import warnings

    now = {"index": os.path.abspath(idx.path), "match_config": dataclasses.asdict(mcfg)}
    path = out / SETTINGS
    try:
        before = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        before = None
    if isinstance(before, dict) and before != now:
        changed = [k for k in ("index", "match_config") if before.get(k) != now[k]]
        warnings.warn(f"{out} was started with a different {' and '.join(changed).replace('_', ' ')}"
                      f"; files already done keep their earlier results (use a new --out "
                      f"to scan everything with the new settings)", SettingsChangedWarning,
                      stacklevel=3)
    if before != now:
        _atomic_write(path, (json.dumps(now, indent=1) + "\n").encode("utf-8"))


def _scan_in_process(queue: _WorkQueue) -> Iterator[tuple]:
    """:func:`_scan_one` of each task in the calling process (``jobs=0``), waiting on the
    queue's stream when nothing is queued."""
    while True:
        task = queue.pop()
        if task is not None:
            yield _scan_one(task)
        elif queue.fileno() is not None:
            queue.read_stream()
        else:
            return


def scan(inputs: Iterable[str | os.PathLike] | None, out_dir: str | os.PathLike, *,
         index: Any = None, jobs: int = 1, manifest: str | os.PathLike | None = None,
         mcfg: Any = None, progress: Callable[[ScanProgress], None] | None = None,
         retry_errors: bool = False, timeout: float | None = None,
         items: list[ScanItem] | None = None,
         stdin: TextIO | None = None,
         report_every: float = REPORT_REFRESH_SECONDS) -> Iterator[ScanResult]:
    """Scan audio files against an index; yield one :class:`ScanResult` per input file.

    Results are appended durably to ``out_dir/results.jsonl`` / ``errors.jsonl`` as each
    file finishes; ``summary.csv`` and ``report.html`` are regenerated when the generator
    finishes (or is closed or interrupted).  The generator's return value
    (``StopIteration.value``; see :func:`run_scan`) is the :class:`ScanSummary`.

    Parameters
    ----------
    inputs : iterable of paths
        Folders, files, ``@list`` / ``.txt`` / ``.lst`` list files, ``-`` for paths on
        ``stdin``, scanned as they arrive (see *Streams* above).
    out_dir : path
        Report folder (created).  Re-using it resumes.
    index : path or Index, optional
        Index folder (default :func:`~earmark.index.catalogue.default_index_path`) or an
        open :class:`~earmark.index.catalogue.Index`.
    jobs : int
        Worker processes, one core each (forked; each maps the index read-only, so the
        index pages are shared through the page cache).  A worker that crashes or times
        out costs only the file it was analysing (an error line).  ``0`` analyses in the
        calling process (no isolation; for debugging).
    manifest : path, optional
        CSV with a ``path`` column; other columns go into each line's ``manifest``.
    mcfg : MatchConfig, optional
        Matching settings (default ``MATCH_PRESETS["default"]``).
    progress : callable, optional
        Called with a :class:`ScanProgress` after each file.
    retry_errors : bool
        Analyse again the inputs that have an ``errors.jsonl`` line.
    timeout : float, optional
        Seconds one file may take before its worker is killed and the file is an error
        (``jobs >= 1`` only; default: no limit).
    items : list of ScanItem, optional
        Already-expanded inputs (instead of / in addition to ``inputs``).
    report_every : float
        While paths are read from a stream, ``summary.csv`` and ``report.html`` are also
        rebuilt after a file when at least this many seconds have passed since they last
        were and nothing is queued or in flight (the stream is quiet), or when ten times
        as many have passed (a stream that never pauses).
    stdin : text stream, optional
        Where ``-`` reads paths (default ``sys.stdin``).  One with a file descriptor is
        read as paths arrive.  With ``jobs >= 1`` its writing end must not be open in this
        process when the scan starts: the forked workers would inherit it, and the stream
        would never end.

    Raises
    ------
    EarmarkError
        Unusable index, report folder, list file or manifest (before any file is scanned).
    """
    from earmark.fingerprint.config import MATCH_PRESETS
    from earmark.index.catalogue import Index, default_index_path

    t_start = time.perf_counter()
    inputs = list(inputs or ())
    stream_fd = None
    if "-" in [os.fspath(x) for x in inputs] and not retry_errors:
        # Paths on a stream are scanned as they arrive (--retry-errors needs them all first).
        stream_fd = _stream_fd(stdin if stdin is not None else sys.stdin)
        if stream_fd is not None:
            inputs = [x for x in inputs if os.fspath(x) != "-"]
    queue = _WorkQueue(list(items or []) + expand_inputs(inputs, manifest, stdin=stdin),
                       stream_fd)
    mcfg = mcfg or MATCH_PRESETS["default"]
    own_index = not isinstance(index, Index)
    idx = Index.open(index if index is not None else default_index_path()) if own_index else index
    out = Path(out_dir)
    try:
        out.mkdir(parents=True, exist_ok=True)
        lock_fd = _lock(out)
    except OSError as e:
        if own_index:
            idx.close()
        raise EarmarkError(f"cannot create report folder {out}: {e.strerror or e}") from None
    except BaseException:
        if own_index:
            idx.close()
        raise
    results_path, errors_path = out / RESULTS, out / ERRORS
    report_context = {"index": os.path.abspath(idx.path), "mcfg": mcfg}
    last_report = time.monotonic()
    report_cost = 0.0
    summary = None
    journals: list[_Journal] = []
    pool = None
    try:
        _check_settings(out, idx, mcfg)
        input_paths = {it.path for it in queue.items}
        if retry_errors and errors_path.exists():
            kept = [rec for _, rec in _iter_journal(errors_path, repair=True)
                    if rec["query"] not in input_paths]
            _atomic_write(errors_path, b"".join(_json_line(r) for r in kept))
        # What earlier runs did: (hash, path) -> (journal, offset); hash -> results offset.
        done: dict[tuple[str | None, str], tuple[Path, int]] = {}
        hashes: dict[str, int] = {}
        for jpath in (results_path, errors_path):
            for off, rec in _iter_journal(jpath, repair=True):
                done[(rec.get("content_hash"), rec["query"])] = (jpath, off)
                if jpath is results_path and rec.get("content_hash"):
                    hashes.setdefault(rec["content_hash"], off)
        results_j, errors_j = _Journal(results_path), _Journal(errors_path)
        journals = [results_j, errors_j]

        counts = {"scanned": 0, "duplicate": 0, "resumed": 0, "errors": 0, "flagged": 0}
        audio_s = 0.0
        t_scan = time.perf_counter()
        done_n = 0

        bytes_done, bytes_scanned = 0, 0
        if jobs >= 1 and (queue.has_pending or queue.fileno() is not None):
            n_workers = jobs if queue.fileno() is not None else min(jobs, len(queue.items))
            _prewarm(idx, mcfg)
            # The objects of the parent are left out of the workers' garbage collections
            # (which would otherwise touch, and so copy, their pages in every worker).
            gc.collect()
            gc.freeze()
            try:
                pool = _WorkerPool(n_workers,
                                   (str(idx.path), mcfg, set(done), set(hashes), os.getpid()),
                                   timeout=timeout)
            finally:
                gc.unfreeze()
            outcomes: Iterable = pool.run(queue)
        else:
            _W.update(index=idx, mcfg=mcfg, done=set(done), hashes=set(hashes))
            outcomes = _scan_in_process(queue)

        for i, status, digest, payload, _secs in outcomes:
            item = queue.items[i]
            if status == "error" and digest is None and (None, item.path) in done:
                status = "resumed"  # still unreadable (missing, empty): already reported
            if status == "resumed":
                jpath, off = done[(digest, item.path)]
                record = _read_line_at(jpath, off)
            elif status == "duplicate":
                base = _read_line_at(results_path, hashes[digest])
                record = {**base, "query": item.path, "content_hash": digest,
                          "manifest": dict(item.columns)}
                off = results_j.append(record)
            elif status == "scanned":
                record = {**payload, "content_hash": digest, "manifest": dict(item.columns)}
                off = results_j.append(record)
                hashes.setdefault(digest, off)
            else:
                record = {"query": item.path, "duration": 0.0, "error": payload, "matches": [],
                          "content_hash": digest, "manifest": dict(item.columns)}
                errors_j.append(record)
                status = "scanned"
            result = ScanResult(item.path, record, status)
            done_n += 1
            counts[status] += 1
            if result.error:
                counts["errors"] += 1
            elif result.flagged:
                counts["flagged"] += 1
            bytes_done += queue.sizes[i]
            if status != "resumed":
                audio_s += result.duration
                bytes_scanned += queue.sizes[i]
            if progress is not None:
                progress(ScanProgress(done=done_n, total=len(queue.items),
                                      scanned=counts["scanned"] + counts["duplicate"],
                                      resumed=counts["resumed"], errors=counts["errors"],
                                      flagged=counts["flagged"], audio_seconds=audio_s,
                                      elapsed=time.perf_counter() - t_scan, path=item.path,
                                      bytes_done=bytes_done, bytes_scanned=bytes_scanned,
                                      bytes_total=queue.bytes_total))
            if queue.fileno() is not None:
                since = time.monotonic() - last_report
                quiet = not queue.has_pending and (pool is None or pool.in_flight == 0)
                if report_due(since, quiet, report_every, report_cost):
                    t_report = time.monotonic()
                    write_reports(out, context=report_context)
                    last_report = time.monotonic()
                    report_cost = last_report - t_report
            yield result
        summary = ScanSummary(out_dir=out)
        summary.run_files = done_n
        summary.run_scanned = counts["scanned"]
        summary.run_duplicates = counts["duplicate"]
        summary.run_resumed = counts["resumed"]
        summary.run_errors = counts["errors"]
        summary.run_flagged = counts["flagged"]
        summary.run_audio_seconds = audio_s
    finally:
        if pool is not None:
            pool.close()
        _W.clear()
        for j in journals:
            j.close()
        try:
            full = write_reports(out, context=report_context)
        except Exception:
            if summary is not None:  # only a successful run must report a failure here
                raise
            full = None
        finally:
            os.close(lock_fd)
            if own_index:
                idx.close()
    if summary is not None and full is not None:
        for k in ("files", "audio_seconds", "flagged", "errors", "per_rights_holder",
                  "per_recording"):
            setattr(summary, k, getattr(full, k))
        summary.run_elapsed = time.perf_counter() - t_start
    return summary


def run_scan(*args: Any, **kwargs: Any) -> ScanSummary:
    """Run :func:`scan` to the end and return its :class:`ScanSummary`."""
    gen = scan(*args, **kwargs)
    while True:
        try:
            next(gen)
        except StopIteration as stop:
            return stop.value


# --------------------------------------------------------------------------- reports


def _compact_alignments(record: dict[str, Any]) -> dict[str, Any]:
    """``record`` with each match's ``alignment`` as a float32 ``(n, 2)`` array: a few kB
    where the parsed lists of pairs take ~25 kB (a report over 20 000 files held 577 MB);
    ``(0, 2)`` when the line's points are not numbers."""
    import numpy as np

    for m in record.get("matches") or []:
        if isinstance(m, dict) and "alignment" in m:
            try:
                m["alignment"] = np.asarray(m["alignment"] if m["alignment"] is not None else [],
                                            dtype=np.float32).reshape(-1, 2)
            except (TypeError, ValueError):
                m["alignment"] = np.zeros((0, 2), dtype=np.float32)
    return record


def load_records(out_dir: str | os.PathLike, alignment_arrays: bool = False
                 ) -> tuple[list[dict], list[dict]]:
    """``(results, errors)`` of a report folder: the newest line of each path; a path with a
    result is not listed among the errors (a retried file that now works).  With
    ``alignment_arrays`` each match's ``alignment`` is a float32 ``(n, 2)`` array (what the
    reports read; far less memory than lists of pairs)."""
    out = Path(out_dir)
    results: dict[str, dict] = {}
    for _, rec in _iter_journal(out / RESULTS):
        results.pop(rec["query"], None)
        results[rec["query"]] = _compact_alignments(rec) if alignment_arrays else rec
    errors: dict[str, dict] = {}
    for _, rec in _iter_journal(out / ERRORS):
        if rec["query"] not in results:
            errors.pop(rec["query"], None)
            errors[rec["query"]] = rec
    return list(results.values()), list(errors.values())


def _ref_label(ref: dict[str, Any]) -> str:
    title, artist = ref.get("title"), ref.get("artist")
    if title:
        return f"{artist} – {title}" if artist else str(title)
    return str(ref.get("path", "")).rsplit("/", 1)[-1] or f"track {ref.get('track_id')}"


def _matched_seconds(m: dict[str, Any]) -> float:
    return max(0.0, float(m.get("query_end") or 0.0) - float(m.get("query_start") or 0.0))


def group_by_recording(record: dict[str, Any]) -> list[dict[str, Any]]:
    """The matches of one line grouped per catalogue recording (strongest first):
    ``{"reference", "label", "best" (the strongest match), "segments", "seconds"}``."""
    groups: dict[Any, dict[str, Any]] = {}
    for m in record.get("matches") or []:
        ref = m.get("reference") or {}
        key = ref.get("track_id", ref.get("path"))
        g = groups.get(key)
        if g is None:
            groups[key] = {"reference": ref, "label": _ref_label(ref), "best": m,
                           "segments": 1, "seconds": _matched_seconds(m)}
        else:
            g["segments"] += 1
            g["seconds"] += _matched_seconds(m)
            if (m.get("score") or 0) > (g["best"].get("score") or 0):
                g["best"] = m
    return sorted(groups.values(), key=lambda g: -(g["best"].get("score") or 0))


def summarize(out_dir: str | os.PathLike,
              records: tuple[list[dict], list[dict]] | None = None) -> ScanSummary:
    """Totals and per-rights-holder / per-recording counts of a report folder."""
    results, errors = records if records is not None else load_records(out_dir)
    s = ScanSummary(out_dir=Path(out_dir))
    s.files = len(results) + len(errors)
    s.errors = len(errors)
    s.audio_seconds = sum(float(r.get("duration") or 0.0) for r in results)
    per_rec: dict[Any, dict[str, Any]] = {}
    holder_files: dict[str, set] = {}
    holder_recs: dict[str, set] = {}
    holder_secs: dict[str, float] = {}
    for r in results:
        groups = group_by_recording(r)
        if not groups:
            continue
        s.flagged += 1
        for g in groups:
            ref = g["reference"]
            key = ref.get("track_id", ref.get("path"))
            holder = ref.get("rights_holder") or "(unknown)"
            sig = g["best"].get("significance")
            e = per_rec.setdefault(key, {
                "track_id": ref.get("track_id"), "label": g["label"], "title": ref.get("title"),
                "artist": ref.get("artist"), "isrc": ref.get("isrc"), "rights_holder": holder,
                "path": ref.get("path"), "files": 0, "seconds": 0.0, "best_significance": 0.0})
            e["files"] += 1
            e["seconds"] += g["seconds"]
            e["best_significance"] = max(e["best_significance"],
                                         float(sig) if sig is not None else math.inf)
            holder_files.setdefault(holder, set()).add(r["query"])
            holder_recs.setdefault(holder, set()).add(key)
            holder_secs[holder] = holder_secs.get(holder, 0.0) + g["seconds"]
    s.per_recording = sorted(per_rec.values(), key=lambda e: (-e["files"], -e["seconds"],
                                                               str(e["label"])))
    s.per_rights_holder = {h: {"files": len(holder_files[h]), "recordings": len(holder_recs[h]),
                               "seconds": holder_secs[h]}
                           for h in sorted(holder_files, key=lambda h: (-len(holder_files[h]), h))}
    return s


_FORMULA_START = ("=", "+", "-", "@", "\t", "\r")


def _cell(v: Any) -> Any:
    """A CSV cell; untrusted text that a spreadsheet would evaluate is prefixed with '."""
    if v is None:
        return ""
    if isinstance(v, str) and v.startswith(_FORMULA_START):
        return "'" + v
    return v


SUMMARY_COLUMNS = ["query", "content_hash", "duration", "track_id", "recording", "title",
                   "artist", "isrc", "rights_holder", "reference_path", "segments",
                   "matched_seconds", "score", "significance", "query_start", "query_end",
                   "reference_start", "reference_end", "coverage", "speed", "pitch_semitones",
                   "verified_peaks", "verified_peaks_z", "verified_correlation",
                   "verified_coherence", "verified_coherence_z"]


def write_summary_csv(path: Path, results: list[dict]) -> int:
    """``summary.csv``: one row per flagged file and matched recording (written atomically).
    Manifest columns follow ``duration``.  Returns the number of rows."""
    manifest_cols: list[str] = []
    for r in results:
        for k in (r.get("manifest") or {}):
            if k not in manifest_cols and k not in SUMMARY_COLUMNS:
                manifest_cols.append(k)
    header = SUMMARY_COLUMNS[:3] + manifest_cols + SUMMARY_COLUMNS[3:]
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow([_cell(h) for h in header])
    n = 0
    for r in results:
        for g in group_by_recording(r):
            ref, best = g["reference"], g["best"]
            row = {"query": r["query"], "content_hash": r.get("content_hash"),
                   "duration": r.get("duration"), **(r.get("manifest") or {}),
                   "track_id": ref.get("track_id"), "recording": g["label"],
                   "title": ref.get("title"), "artist": ref.get("artist"),
                   "isrc": ref.get("isrc"), "rights_holder": ref.get("rights_holder"),
                   "reference_path": ref.get("path"), "segments": g["segments"],
                   "matched_seconds": round(g["seconds"], 3)}
            for k in ("score", "significance", "query_start", "query_end", "reference_start",
                      "reference_end", "coverage", "speed", "pitch_semitones"):
                row[k] = best.get(k)
            check = AudioCheck.from_json(best.get("verified"))
            if check is not None:
                row.update(verified_peaks=check.peaks, verified_peaks_z=check.peaks_z,
                           verified_correlation=check.correlation,
                           verified_coherence=check.coherence,
                           verified_coherence_z=check.coherence_z)
            w.writerow([_cell(row.get(h)) for h in header])
            n += 1
    _atomic_write(path, _text_bytes(buf.getvalue()))
    return n


def write_reports(out_dir: str | os.PathLike, context: dict[str, Any] | None = None) -> ScanSummary:
    """Regenerate ``summary.csv`` and ``report.html`` from the journals of ``out_dir``."""
    from earmark.report_html import render_report

    out = Path(out_dir)
    records = load_records(out, alignment_arrays=True)
    summary = summarize(out, records)
    write_summary_csv(out / SUMMARY, records[0])
    with _atomic_file(out / REPORT) as f:
        render_report(records[0], records[1], summary, context or {},
                      sink=lambda text: f.write(_text_bytes(text)))
    return summary


# --------------------------------------------------------------------------- CLI


def _fmt_duration(seconds: float | None) -> str:
    if seconds is None or not math.isfinite(seconds):
        return "-:--:--"
    seconds = int(round(max(seconds, 0.0)))
    return f"{seconds // 3600}:{seconds // 60 % 60:02d}:{seconds % 60:02d}"


@click.command("scan")
@click.argument("inputs", nargs=-1, type=str)
@click.option("--out", "out_dir", required=True,
              type=click.Path(file_okay=False, path_type=Path),
              help="Report folder (results.jsonl, errors.jsonl, summary.csv, report.html). "
                   "Re-using it resumes.")
@click.option("-j", "--jobs", type=click.IntRange(1, 256), default=usable_cpus(),
              show_default=True, help="Worker processes (one core each).")
@click.option("--manifest", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="CSV with a path column; the other columns are carried to the report.")
@index_option
@click.option("--fast", is_flag=True, help="Plain matching: no speed/tempo/pitch search.")
@recordings_only_option
@click.option("--min-significance", type=click.FloatRange(0, None), default=None,
              help="Flag matches at least this significant (-log10 chance probability).")
@click.option("--max-matches", type=click.IntRange(1, 1000), default=None,
              help="Most matches per file (default 10; a long DJ mix may use more).")
@click.option("--retry-errors", is_flag=True,
              help="Analyse again the files listed in errors.jsonl (errors are final otherwise).")
@click.option("--timeout", type=click.FloatRange(0, None), default=0, show_default=True,
              help="Seconds one file may take before it is given up as an error (0: no limit).")
@click.option("-q", "--quiet", is_flag=True, help="No progress bar.")
def scan_cmd(inputs, out_dir, jobs, manifest, index_path, fast, recordings_only,
             min_significance, max_matches, retry_errors, timeout, quiet):
    """Scan audio against the index into a resumable report folder.

    INPUTS are folders (recursive), files, list files (@list, or a .txt/.lst file of paths,
    one per line) or - (paths on standard input, scanned as they arrive until the stream
    ends).  Results are appended to OUT/results.jsonl as each file finishes; bad files go to OUT/errors.jsonl; OUT/summary.csv and
    OUT/report.html are rebuilt at the end.  Running the same command again resumes.

    Exit status: 0 if any file was flagged, 1 if none was, 2 on error (or if no file could
    be read).
    """
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    if not inputs and manifest is None:
        raise EarmarkError("nothing to scan: give folders, files, @list files, - (paths on "
                           "stdin) or --manifest FILE")
    if manifest is not None and not manifest.is_file():
        raise EarmarkError(f"{manifest}: manifest not found")
    mcfg = match_config(fast, min_significance, max_matches, recordings_only)
    stderr = Console(stderr=True, highlight=False)
    bar = Progress(TextColumn("scanning"), BarColumn(), MofNCompleteColumn(),
                   TextColumn("{task.fields[stats]}"), TimeElapsedColumn(),
                   console=stderr, transient=True, auto_refresh=False,
                   disable=quiet or not sys.stderr.isatty())
    # auto_refresh=False: no refresh thread, so forking a (replacement) worker while the bar
    # is shown cannot inherit a lock held by another thread.
    task = bar.add_task("scan", total=None, stats="")

    def on_progress(p: ScanProgress) -> None:
        bar.update(task, completed=p.done, total=p.total,
                   stats=f"{p.files_per_second:.2f} files/s  "
                         f"{p.audio_hours_per_second * 3600:.0f}x real time "
                         f"({p.audio_hours_per_second:.3f} audio-h/s)  "
                         f"{p.flagged} flagged  {p.errors} errors  "
                         f"ETA {_fmt_duration(p.eta_seconds)}")
        bar.refresh()

    index = index_path
    if index is None:
        from earmark.index.catalogue import default_index_path

        index = default_index_path()
    gen = scan(inputs, out_dir, index=index, jobs=jobs, manifest=manifest, mcfg=mcfg,
               progress=on_progress, retry_errors=retry_errors, timeout=timeout or None,
               stdin=sys.stdin if "-" in inputs else None)
    summary = None
    any_flagged = False
    n_ok = n = 0
    import warnings

    def show_warning(message, category, *_args, **_kwargs):
        bar.console.print(f"fp: warning: {message}", markup=False, highlight=False,
                          soft_wrap=True)

    warnings.showwarning = show_warning
    try:
        with bar:
            while True:
                try:
                    r = next(gen)
                except StopIteration as stop:
                    summary = stop.value
                    break
                n += 1
                n_ok += r.ok
                any_flagged |= r.flagged
                if r.error and r.status != "resumed":
                    bar.console.print(f"fp: {r.error}", markup=False, highlight=False,
                                      soft_wrap=True)
    except KeyboardInterrupt:
        gen.close()
        click.echo(f"fp: scan interrupted; results so far are in {out_dir} (report "
                   f"regenerated); run the same command again to resume", err=True)
        sys.exit(130)
    s = summary
    rate = s.run_scanned + s.run_duplicates
    took = max(s.run_elapsed, 1e-9)
    click.echo(f"scanned {rate} file(s) ({s.run_resumed} already done), "
               f"{s.run_audio_seconds / 3600:.2f} h of audio in {s.run_elapsed:.1f} s "
               f"({rate / took:.2f} files/s, {s.run_audio_seconds / took:.0f}x real time)")
    click.echo(f"report {out_dir}: {s.files} file(s), {s.audio_hours:.2f} h, {s.flagged} "
               f"flagged, {s.errors} error(s) -> {Path(out_dir) / REPORT}")
    if n == 0:
        raise EarmarkError("no files to scan (no audio files found)")
    if n_ok == 0:
        sys.exit(EXIT_ERROR)
    sys.exit(EXIT_MATCH if any_flagged else EXIT_NO_MATCH)
