"""Peer fingerprinting systems that ``fp bench`` runs next to Earmark.

A *peer* is another fingerprinting engine run on the same catalogue and the same query files in
the same benchmark run, so that accuracy and speed are compared like for like.  Peers are never
vendored: the user points at their own checkout/installation, e.g.::

    fp bench ... --peer audfprint=/path/to/audfprint

and :func:`make_peer` turns that spec into an object following the :class:`Peer` protocol.

Adding a peer (Olaf, Panako, Dejavu, ...)
-----------------------------------------
1. Write a class with a ``name`` attribute and the three methods of :class:`Peer`.  Its
   constructor must accept the value of the ``--peer name=VALUE`` spec (usually a path) as its
   first positional argument and validate it, raising :class:`ValueError` with a one-line message.
2. Register it in :data:`PEERS` under ``name``.
3. Run the peer as subprocesses in *batch* mode (one indexing call for the whole catalogue, one
   matching call for all queries) so that start-up costs are paid once, as a real user would;
   report wall-clock seconds measured around those calls.
4. Convert the peer's answer to :class:`PeerMatch`: the catalogue path exactly as it was passed to
   :meth:`Peer.index`, and the offset as *seconds into the reference at which the query starts*.

Contract (all peers)
--------------------
* :meth:`Peer.index` builds a fresh database under ``workdir`` (which it may create) from
  ``catalogue_paths`` using up to ``jobs`` processes, and returns :class:`PeerIndexStats`.
* :meth:`Peer.match` runs after :meth:`Peer.index` and returns exactly one :class:`PeerMatch`
  per query, in the order of ``query_paths`` (``reference=None`` when the peer reports no match),
  plus the elapsed wall-clock seconds of the whole matching call (database load included).
* Failures of the peer program raise :class:`PeerError` (an :class:`EarmarkError`: one line).

audfprint
---------
:class:`AudfprintPeer` drives Dan Ellis's landmark fingerprinter
(https://github.com/dpwe/audfprint) through its command line, via a small compatibility shim
(:data:`AUDFPRINT_SHIM`, run with ``python -c``) that imports the checkout's ``audfprint.py`` and
calls its ``main``; no audfprint code lives in this repository.  Its Python needs ``numpy``,
``scipy``, ``docopt``, ``joblib`` and ``psutil``; audio is decoded by ``ffmpeg`` when that is on
``PATH`` (audfprint's own reader), else by ``soundfile`` + ``scipy`` via the shim.
"""

from __future__ import annotations

import math
import os
import re
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from collections.abc import Iterable, Sequence
from typing import Any, Protocol, runtime_checkable

from earmark.errors import EarmarkError

__all__ = [
    "AUDFPRINT_SHIM",
    "AudfprintPeer",
    "Peer",
    "PeerError",
    "PeerIndexStats",
    "PeerMatch",
    "PEERS",
    "make_peer",
    "parse_audfprint_matches",
]


class PeerError(EarmarkError):
    """A peer program failed (bad checkout, missing dependency, crash); one-line message."""


@dataclass
class PeerMatch:
    """A peer's top answer for one query.

    ``reference`` is the catalogue path (as given to :meth:`Peer.index`) of the top match, or
    ``None`` when the peer found nothing.  ``reference_offset`` is the time in seconds, in the
    reference, at which the query's first sample falls (negative if the query starts before the
    reference does); ``None`` when unknown.  ``score`` is the peer's own confidence number
    (for audfprint: the count of time-aligned common hashes; 0 for no match).  ``detail`` holds
    peer-specific extras (e.g. raw hash counts) for reports; nothing should depend on its keys,
    except ``detail["error"]`` (a one-line reason) when the peer could not read the query.
    """

    query: str
    reference: str | None
    reference_offset: float | None
    score: float
    detail: dict[str, Any] = field(default_factory=dict)


@dataclass
class PeerIndexStats:
    """Cost of building a peer's database: wall-clock ``seconds`` and ``bytes_on_disk``."""

    seconds: float
    bytes_on_disk: int
    detail: dict[str, Any] = field(default_factory=dict)


@runtime_checkable
class Peer(Protocol):
    """What ``fp bench`` needs from a peer system (see the module docstring for the contract)."""

    name: str

    def index(self, catalogue_paths: list[str], workdir: str, jobs: int) -> PeerIndexStats:
        """Build a fresh database of ``catalogue_paths`` under ``workdir``, ``jobs`` processes."""
        ...

    def match(self, query_paths: list[str], jobs: int) -> tuple[list[PeerMatch], float]:
        """Identify each query; one :class:`PeerMatch` per query in order, plus elapsed seconds."""
        ...

    def describe(self) -> dict[str, Any]:
        """Version and settings, recorded in the benchmark report."""
        ...


# --------------------------------------------------------------------------------------------
# audfprint
# --------------------------------------------------------------------------------------------

#: Run with ``python -c AUDFPRINT_SHIM CHECKOUT DECODER BACKEND audfprint-args...``.
#: It imports audfprint from CHECKOUT and calls ``audfprint.main``, after
#: (1) restoring numpy aliases removed in numpy 2 (``np.asfarray``, used by audfprint's wav
#: fallback; ``np.int``/``np.float`` for older checkouts), (2) with DECODER ``soundfile``,
#: replacing ``audio_read.audio_read`` (which needs the ``ffmpeg`` binary) by a soundfile +
#: ``scipy.signal.resample_poly`` reader, and (3) with BACKEND other than ``native``, making
#: multiprocessing fork and joblib (parallel ``match``) use that backend, so that the patches
#: reach worker processes (loky workers would re-import audfprint unpatched).
AUDFPRINT_SHIM = r'''
import sys
checkout, decoder, backend = sys.argv[1], sys.argv[2], sys.argv[3]
args = sys.argv[4:]
sys.path.insert(0, checkout)
import numpy as np
for _name, _type in (("int", int), ("float", float), ("bool", bool), ("object", object),
                     ("complex", complex)):
    if _name not in np.__dict__:
        setattr(np, _name, _type)
if "asfarray" not in np.__dict__:
    np.asfarray = lambda a, dtype=np.float64: np.asarray(a, dtype=dtype)
if decoder == "soundfile":
    from math import gcd
    import soundfile
    from scipy.signal import resample_poly
    import audio_read

    def _soundfile_audio_read(filename, sr=None, channels=None):
        data, file_sr = soundfile.read(filename, dtype="float32", always_2d=True)
        data = data.T
        if channels == 1:
            data = data.mean(axis=0)
        if sr and sr != file_sr and data.shape[-1]:
            g = gcd(int(sr), int(file_sr))
            data = resample_poly(data, int(sr) // g, int(file_sr) // g, axis=-1)
        return np.ascontiguousarray(data, dtype=np.float32), int(sr or file_sr)

    audio_read.audio_read = _soundfile_audio_read
import audfprint
if backend == "native":
    audfprint.main(["audfprint"] + args)
else:
    import multiprocessing
    import joblib
    multiprocessing.set_start_method("fork", force=True)
    config = getattr(joblib, "parallel_config", None) or joblib.parallel_backend
    with config(backend=backend):
        audfprint.main(["audfprint"] + args)
'''

_NUM = r"-?\d+(?:\.\d+)?"
_TAIL = (
    r" with +(?P<aligned>\d+) of +(?P<common>\d+) common hashes at rank +(?P<rank>\d+)\s*$"
)
# verbose (default) output, e.g.
# "Matched q.wav 9.8 sec 975 raw hashes as ref.ogg at  119.6 s with   217 of  6597 common ..."
_MATCHED = re.compile(
    r"^Matched (?P<query>.+?) (?P<qdur>" + _NUM + r") sec (?P<nhash>\d+) raw hashes as "
    r"(?P<ref>.+) at +(?P<offset>" + _NUM + r") s" + _TAIL
)
# --find-time-range output, e.g.
# "Matched    7.5 s starting at    1.3 s in q.wav to time  120.8 s in ref.ogg with  217 of ..."
_MATCHED_RANGE = re.compile(
    r"^Matched +(?P<span>" + _NUM + r") s starting at +(?P<qstart>" + _NUM + r") s in "
    r"(?P<query>.+?) to time +(?P<rtime>" + _NUM + r") s in (?P<ref>.+)" + _TAIL
)
_NOMATCH = re.compile(
    r"^NOMATCH (?P<query>.+?) (?P<qdur>" + _NUM + r") sec (?P<nhash>\d+) raw hashes\s*$"
)
_UNREADABLE = re.compile(r"^wavfile2peaks: Error reading (?P<path>.+) skipping\s*$")
_SAVED = re.compile(
    r"^Saved fprints for (?P<files>\d+) files \( *(?P<hashes>\d+) hashes\) to .*?"
    r"(?:\((?P<dropped>[\d.]+)% dropped\))?\s*$"
)


def _parse_match_line(line: str) -> PeerMatch | None:
    """One audfprint match-report line -> PeerMatch, or None for any other line."""
    line = line.rstrip("\r\n")
    m = _MATCHED.match(line)
    if m:
        return PeerMatch(
            query=m["query"],
            reference=m["ref"],
            reference_offset=float(m["offset"]),
            score=float(m["aligned"]),
            detail={
                "common_hashes": int(m["common"]),
                "rank": int(m["rank"]),
                "query_hashes": int(m["nhash"]),
            },
        )
    m = _MATCHED_RANGE.match(line)
    if m:
        qstart, rtime = float(m["qstart"]), float(m["rtime"])
        return PeerMatch(
            query=m["query"],
            reference=m["ref"],
            reference_offset=round(rtime - qstart, 3),
            score=float(m["aligned"]),
            detail={
                "common_hashes": int(m["common"]),
                "rank": int(m["rank"]),
                "query_start": qstart,
                "reference_start": rtime,
                "duration": float(m["span"]),
            },
        )
    m = _NOMATCH.match(line)
    if m:
        return PeerMatch(m["query"], None, None, 0.0, {"query_hashes": int(m["nhash"])})
    # --verbose 0 style: "query\tref" (match, no offset) or "query\t" (no match)
    if "\t" in line and not line.startswith(("Matched ", "NOMATCH ")):
        query, _, ref = line.partition("\t")
        if query:
            return PeerMatch(query, ref or None, None, 1.0 if ref else 0.0)
    return None


def parse_audfprint_matches(
    text: str | Iterable[str], queries: Sequence[str] | None = None
) -> list[PeerMatch]:
    """Parse the output of ``audfprint match`` into :class:`PeerMatch` objects.

    Understands the default report (``Matched Q D sec N raw hashes as R at T s with A of C common
    hashes at rank K``; ``T`` is already the reference time where the query starts), the
    ``--find-time-range`` report (offset = reference time - query time of the matched span) and
    ``NOMATCH Q ...`` lines; all other lines (progress, ``Analyzed``, ``Processed``) are ignored.
    Only the first (best) line per query counts.  File names may contain spaces.

    With ``queries`` the result has exactly one entry per query, in that order: a query without
    any report line gets ``reference=None`` and ``detail={"missing": True}``.  Without ``queries``
    the result follows the order of the lines.
    """
    lines = text.splitlines() if isinstance(text, str) else text
    first: dict[str, PeerMatch] = {}
    for line in lines:
        pm = _parse_match_line(line)
        if pm is not None and pm.query not in first:
            first[pm.query] = pm
    if queries is None:
        return list(first.values())
    out = []
    for q in queries:
        pm = first.get(q)
        if pm is None:
            pm = PeerMatch(q, None, None, 0.0, {"missing": True})
        out.append(PeerMatch(q, pm.reference, pm.reference_offset, pm.score, dict(pm.detail)))
    return out


def _audio_duration(path: str) -> float | None:
    try:
        import soundfile

        return float(soundfile.info(path).duration)
    except Exception:  # noqa: BLE001 - any unreadable header just means "unknown"
        return None


def _tail(path: Path, n: int = 3) -> str:
    try:
        lines = [ln.strip() for ln in path.read_text(errors="replace").splitlines() if ln.strip()]
    except OSError:
        return ""
    return " | ".join(lines[-n:])


class AudfprintPeer:
    """audfprint (https://github.com/dpwe/audfprint) run from a user's checkout.

    ``checkout`` is the directory holding ``audfprint.py``; ``python`` the interpreter that runs
    it.  ``density`` (target hashes per second), ``hashbits``, ``bucketsize``, ``samplerate`` and
    ``shifts`` are audfprint's fingerprint settings (``shifts=0``: audfprint's default, 1 for
    indexing and 4 for matching); ``min_count``, ``match_win``, ``search_depth`` and
    ``exact_count`` its matcher settings; ``find_time_range`` switches to its time-range report.

    ``maxtimebits=None`` picks the smallest time field (>= audfprint's default of 14 bits,
    ~380 s at 11025 Hz) that holds the longest catalogue track, because audfprint stores times
    modulo ``2**maxtimebits`` frames: with the default, offsets in longer tracks come back
    aliased (e.g. 500 s reported as 119.6 s).  Unreadable durations count as ~25 min (16 bits).

    ``decoder``: ``"ffmpeg"`` (audfprint's own reader; needs the ``ffmpeg`` binary),
    ``"soundfile"`` (shim reader) or ``"auto"`` (ffmpeg if on PATH).  ``parallel``: how
    ``match --ncores N`` runs queries in parallel: ``"native"`` (audfprint's joblib default, loky
    worker processes, which receive a pickled copy of the whole hash table), ``"fork"`` (joblib's
    multiprocessing backend with forked workers; required by the soundfile decoder, whose patch
    must reach the workers) or ``"auto"`` (native with ffmpeg, else fork).  Indexing always
    uses audfprint's own ``multiprocessing`` workers.  ``extra_args`` are appended to every
    audfprint command line.
    """

    name = "audfprint"

    def __init__(
        self,
        checkout: str,
        python: str = sys.executable,
        density: float = 20.0,
        *,
        hashbits: int = 20,
        bucketsize: int = 100,
        maxtimebits: int | None = None,
        samplerate: int = 11025,
        shifts: int = 0,
        min_count: int = 5,
        match_win: int = 2,
        search_depth: int = 100,
        exact_count: bool = False,
        find_time_range: bool = False,
        decoder: str = "auto",
        extra_args: Sequence[str] = (),
        parallel: str = "auto",
        timeout: float | None = None,
    ) -> None:
        if not checkout:
            raise ValueError("audfprint: give the path of an audfprint checkout (audfprint=/path)")
        root = Path(checkout).expanduser()
        if not (root / "audfprint.py").is_file():
            raise ValueError(
                f"audfprint: no audfprint.py in {checkout} (expected a checkout of dpwe/audfprint)"
            )
        if decoder not in ("auto", "ffmpeg", "soundfile"):
            raise ValueError(
                f"audfprint: decoder must be auto, ffmpeg or soundfile, not {decoder!r}"
            )
        if decoder == "auto":
            decoder = "ffmpeg" if shutil.which("ffmpeg") else "soundfile"
        if parallel not in ("auto", "native", "fork"):
            raise ValueError(f"audfprint: parallel must be auto, native or fork, not {parallel!r}")
        if parallel == "auto":
            parallel = "native" if decoder == "ffmpeg" else "fork"
        if decoder == "soundfile" and parallel == "native":
            raise ValueError("audfprint: the soundfile decoder needs parallel='fork'")
        self.checkout = str(root.resolve())
        self.python = python
        self.density = float(density)
        self.hashbits = int(hashbits)
        self.bucketsize = int(bucketsize)
        self.maxtimebits = maxtimebits
        self.samplerate = int(samplerate)
        self.shifts = int(shifts)
        self.min_count = int(min_count)
        self.match_win = int(match_win)
        self.search_depth = int(search_depth)
        self.exact_count = bool(exact_count)
        self.find_time_range = bool(find_time_range)
        self.decoder = decoder
        self.extra_args = list(extra_args)
        self.parallel = parallel
        self.timeout = timeout
        self.workdir: Path | None = None
        self.dbase: Path | None = None
        self._catalogue: list[str] = []
        self._used_maxtimebits: int | None = None

    # -- plumbing ------------------------------------------------------------------------------

    def command(self, args: Sequence[str]) -> list[str]:
        """The full argv that runs ``audfprint <args>`` through :data:`AUDFPRINT_SHIM`."""
        backend = "native" if self.parallel == "native" else "multiprocessing"
        return [self.python, "-c", AUDFPRINT_SHIM, self.checkout, self.decoder, backend, *args]

    def _run(self, args: Sequence[str], log_stem: str) -> tuple[float, Path]:
        assert self.workdir is not None
        log = self.workdir / f"{log_stem}.log"
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(
            [self.checkout] + ([env["PYTHONPATH"]] if env.get("PYTHONPATH") else [])
        )
        env.setdefault("PYTHONWARNINGS", "ignore")
        t0 = time.perf_counter()
        try:
            with open(log, "w") as fh:
                proc = subprocess.run(
                    self.command(args), stdout=fh, stderr=subprocess.STDOUT, env=env,
                    timeout=self.timeout, check=False,
                )
        except FileNotFoundError as exc:
            raise PeerError(f"audfprint: cannot run {self.python}: {exc.strerror}") from None
        except subprocess.TimeoutExpired:
            raise PeerError(
                f"audfprint {args[0]} timed out after {self.timeout} s (log: {log})"
            ) from None
        elapsed = time.perf_counter() - t0
        if proc.returncode != 0:
            raise PeerError(
                f"audfprint {args[0]} failed (exit {proc.returncode}): {_tail(log)} (log: {log})"
            )
        return elapsed, log

    def _common_args(self) -> list[str]:
        return [
            "--density", repr(self.density),
            "--samplerate", str(self.samplerate),
            "--shifts", str(self.shifts),
        ]

    @staticmethod
    def _write_list(path: Path, files: Sequence[str]) -> None:
        bad = [f for f in files if "\n" in f or "\r" in f]
        if bad:
            raise ValueError(
                f"audfprint: file names with line breaks are not supported: {bad[0]!r}"
            )
        path.write_text("".join(f + "\n" for f in files))

    def _pick_maxtimebits(self, catalogue: Sequence[str]) -> tuple[int, float | None]:
        durations = [_audio_duration(p) for p in catalogue]
        known = [d for d in durations if d is not None]
        total = sum(known) if len(known) == len(durations) else None
        if self.maxtimebits is not None:
            return int(self.maxtimebits), total
        longest = max(known, default=0.0)
        if len(known) < len(durations):
            longest = max(longest, 1400.0)
        frames = longest * self.samplerate / 256.0 + 64  # 256-sample hop, small margin
        return max(14, math.ceil(math.log2(max(frames, 2.0)))), total

    # -- Peer API ------------------------------------------------------------------------------

    def index(self, catalogue_paths: list[str], workdir: str, jobs: int) -> PeerIndexStats:
        """``audfprint new --list`` over the whole catalogue with ``--ncores jobs``."""
        if not catalogue_paths:
            raise ValueError("audfprint: empty catalogue")
        self.workdir = Path(workdir)
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.dbase = self.workdir / "audfprint.pklz"
        if self.dbase.exists():
            self.dbase.unlink()
        maxtimebits, audio_seconds = self._pick_maxtimebits(catalogue_paths)
        self._used_maxtimebits = maxtimebits
        lst = self.workdir / "catalogue.lst"
        self._write_list(lst, catalogue_paths)
        args = [
            "new", "--dbase", str(self.dbase), "--list", str(lst),
            "--ncores", str(max(1, int(jobs))),
            "--hashbits", str(self.hashbits), "--bucketsize", str(self.bucketsize),
            "--maxtimebits", str(maxtimebits),
            *self._common_args(), *self.extra_args,
        ]
        elapsed, log = self._run(args, "index")
        if not self.dbase.is_file():
            raise PeerError(f"audfprint new wrote no database (log: {log})")
        self._catalogue = list(catalogue_paths)
        detail: dict[str, Any] = {"maxtimebits": maxtimebits, "files": len(catalogue_paths),
                                  "dbase": str(self.dbase), "jobs": int(jobs)}
        if audio_seconds:
            detail["audio_seconds"] = audio_seconds
            detail["x_realtime"] = audio_seconds / elapsed if elapsed > 0 else None
        for line in log.read_text(errors="replace").splitlines():
            m = _SAVED.match(line)
            if m:
                detail["files_stored"] = int(m["files"])
                detail["hashes"] = int(m["hashes"])
                if m["dropped"] is not None:
                    detail["dropped_percent"] = float(m["dropped"])
        if detail.get("files_stored", len(catalogue_paths)) != len(catalogue_paths):
            raise PeerError(
                f"audfprint stored {detail['files_stored']} of {len(catalogue_paths)} files "
                f"(log: {log})"
            )
        return PeerIndexStats(elapsed, self.dbase.stat().st_size, detail)

    def match(self, query_paths: list[str], jobs: int) -> tuple[list[PeerMatch], float]:
        """One ``audfprint match --list`` call over all queries with ``--ncores jobs``."""
        if self.dbase is None or self.workdir is None or not self.dbase.is_file():
            raise PeerError("audfprint: match called before index")
        if not query_paths:
            return [], 0.0
        lst = self.workdir / "queries.lst"
        self._write_list(lst, query_paths)
        report = self.workdir / "matches.txt"
        args = [
            "match", "--dbase", str(self.dbase), "--list", str(lst),
            "--ncores", str(max(1, int(jobs))),
            "--max-matches", "1", "--min-count", str(self.min_count),
            "--match-win", str(self.match_win), "--search-depth", str(self.search_depth),
            "--opfile", str(report), "--continue-on-error", "--verbose", "1",
            *(["--exact-count"] if self.exact_count else []),
            *(["--find-time-range"] if self.find_time_range else []),
            *self._common_args(), *self.extra_args,
        ]
        elapsed, log = self._run(args, "match")
        text = report.read_text(errors="replace") if report.is_file() else ""
        matches = parse_audfprint_matches(text, query_paths)
        # --continue-on-error turns an unreadable query into "NOMATCH ... 0 raw hashes"; say so
        unreadable = {
            m["path"] for m in map(_UNREADABLE.match, log.read_text(errors="replace").splitlines())
            if m
        }
        for pm in matches:
            if pm.query in unreadable:
                pm.detail["error"] = "audfprint could not read the query"
        return matches, elapsed

    def describe(self) -> dict[str, Any]:
        commit = None
        try:
            commit = subprocess.run(
                ["git", "-C", self.checkout, "rev-parse", "--short", "HEAD"],
                capture_output=True, text=True, timeout=10, check=False,
            ).stdout.strip() or None
        except (OSError, subprocess.SubprocessError):
            pass
        return {
            "name": self.name, "checkout": self.checkout, "commit": commit,
            "python": self.python, "decoder": self.decoder, "density": self.density,
            "hashbits": self.hashbits, "bucketsize": self.bucketsize,
            "maxtimebits": self._used_maxtimebits if self._used_maxtimebits else self.maxtimebits,
            "samplerate": self.samplerate, "shifts": self.shifts, "min_count": self.min_count,
            "match_win": self.match_win, "search_depth": self.search_depth,
            "exact_count": self.exact_count, "find_time_range": self.find_time_range,
            "parallel": self.parallel,
        }


# --------------------------------------------------------------------------------------------
# registry
# --------------------------------------------------------------------------------------------

#: ``--peer NAME=VALUE`` -> class; the class is called with VALUE as its only argument.
PEERS: dict[str, type] = {
    "audfprint": AudfprintPeer,
}


def make_peer(spec: str) -> Peer:
    """Build a peer from a ``NAME=PATH`` spec (e.g. ``audfprint=/opt/audfprint``).

    Raises :class:`ValueError` with a one-line message for a malformed spec, an unknown name, or
    a value the peer rejects (e.g. a directory that is not a checkout).
    """
    name, sep, value = spec.partition("=")
    name, value = name.strip(), value.strip()
    known = ", ".join(sorted(PEERS))
    if not sep or not name:
        raise ValueError(f"peer spec {spec!r} must look like NAME=PATH (known peers: {known})")
    cls = PEERS.get(name.lower())
    if cls is None:
        raise ValueError(f"unknown peer {name!r} (known peers: {known})")
    if not value:
        raise ValueError(f"peer {name!r} needs a path: {name}=/path/to/{name}")
    return cls(value)
