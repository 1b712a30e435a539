"""The catalogue index: hash store + track metadata + the indexing and matching entry points.

>>> from earmark.index.catalogue import Index               # doctest: +SKIP
>>> with Index.open_writer("cat.fpindex") as idx:          # doctest: +SKIP
...     report = idx.add(["catalogue/"], jobs=2)
>>> idx = Index.open("cat.fpindex")                        # doctest: +SKIP
>>> result = idx.match_file("suspect.wav")                 # doctest: +SKIP
>>> [(m.reference.path, m.query_start, m.speed) for m in result.matches]  # doctest: +SKIP

Consistency between the two stores: a track is *live* when a segment named by the
manifest holds it and the manifest does not list it as removed.  The manifest is the
commit point; SQLite rows are written first and rows of tracks that never became live
(a crash between the two) are swept by the next writer, so readers never see a track
without postings and matches never refer to a half-indexed file.
"""

from __future__ import annotations

import dataclasses
import fcntl
import functools
import multiprocessing
import os
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from earmark.errors import AudioError, EarmarkError, IndexError_
from earmark.evidence import Match, QueryResult, Reference
from earmark.fingerprint import audio as audio_io
from earmark.fingerprint.config import DEFAULT, FingerprintConfig, MatchConfig, PeakConfig
from earmark.fingerprint.landmarks import (MIN_SECONDS as MIN_QUERY_SECONDS, Landmarks,
                                           check_fingerprintable, fingerprint_audio,
                                           fingerprint_file, sparser)
from earmark.match import (MIX_MAX_CHECKS, QueryLandmarks, SegmentView, evidence_to_match,
                           mix_search, search)
from earmark import verify, windows
from earmark.threads import single_threaded_blas
from . import derivation, store
from .metadata import MetadataStore, read_tags

#: Environment variable naming the index folder (overridden by ``--index``).
INDEX_ENV = "FP_INDEX"
#: Merge all segments into one when a run leaves more than this many.
MAX_SEGMENTS = 8
#: A running ``fp index`` commits a segment at least this often (seconds), so an
#: interrupted run keeps most of its work.
FLUSH_SECONDS = 120.0
FLUSH_POSTINGS = 4_000_000
#: Below this many postings (~500 MB) an index is kept as a single segment.
MERGE_ALL_POSTINGS = 100_000_000


def default_index_path() -> Path:
    """``$FP_INDEX``, else ``$XDG_DATA_HOME/earmark/index`` (``~/.local/share/earmark/index``)."""
    env = os.environ.get(INDEX_ENV)
    if env:
        return Path(env)
    base = os.environ.get("XDG_DATA_HOME") or os.path.join(os.path.expanduser("~"), ".local", "share")
    return Path(base) / "earmark" / "index"


def config_to_dict(cfg: FingerprintConfig) -> dict[str, Any]:
    return dataclasses.asdict(cfg)


def config_from_dict(d: dict[str, Any]) -> FingerprintConfig:
    """Rebuild a config from manifest JSON, accepting only known fields of the right type."""
    try:
        peak_fields = {f.name for f in dataclasses.fields(PeakConfig)}
        kwargs: dict[str, Any] = {}
        for f in dataclasses.fields(FingerprintConfig):
            if f.name not in d:
                continue
            v = d[f.name]
            if f.name in ("index", "query"):
                if not isinstance(v, dict) or not set(v) <= peak_fields:
                    raise ValueError(f.name)
                v = PeakConfig(**{k: (int(x) if k in ("neighbourhood_frames", "fan_out",
                                                         "prominence_window_frames") else float(x))
                                  for k, x in v.items()})
            elif f.name in ("sr", "n_fft", "hop_length", "bins_per_semitone",
                            "min_pair_frames", "max_pair_frames"):
                v = int(v)
            else:
                v = float(v)
            kwargs[f.name] = v
        return FingerprintConfig(**kwargs)
    except (TypeError, ValueError):
        raise IndexError_("index manifest has an invalid fingerprint config") from None


def longest_first(paths: list[str]) -> list[str]:
    """``paths`` by file size, largest first (then by path): the longest files start
    first, so worker processes do not end a run waiting on one long file started last
    (longest-processing-time-first scheduling).  The order depends on the files only, so
    track ids are the same whatever the number of workers.  Unreadable sizes sort last
    (the file's error is reported when it is fingerprinted)."""
    def size(p: str) -> int:
        try:
            return os.stat(p).st_size
        except OSError:
            return -1
    return sorted(paths, key=lambda p: (-size(p), p))


def find_audio_files(inputs: Iterable[str | os.PathLike]) -> tuple[list[str], list[tuple[str, str]]]:
    """Expand files and folders (recursively) into audio file paths.

    Returns
    -------
    files : list of str
        Absolute paths, sorted, duplicates removed.
    problems : list of (path, reason)
        Inputs that do not exist.
    """
    files: set[str] = set()
    problems: list[tuple[str, str]] = []
    for item in inputs:
        p = Path(item)
        if p.is_dir():
            seen_dirs: set[tuple[int, int]] = set()
            for root, dirs, names in os.walk(p, followlinks=True):
                # Symlinked folders are followed, each real folder once: a link back up
                # the tree (a loop) or two links to one folder add nothing twice.
                st = os.stat(root)
                if (st.st_dev, st.st_ino) in seen_dirs:
                    dirs[:] = []
                    continue
                seen_dirs.add((st.st_dev, st.st_ino))
                dirs.sort()
                for n in names:
                    if Path(n).suffix.lower() in audio_io.SUPPORTED_EXTENSIONS and not n.startswith("."):
                        files.add(os.path.abspath(os.path.join(root, n)))
        elif p.exists():
            files.add(os.path.abspath(p))
        else:
            problems.append((os.fspath(item), "no such file or folder"))
    return sorted(files), problems


def _with_mix_look(matches: list[Match], mix: list[Match], max_matches: int) -> list[Match]:
    """``matches`` (each verified on the audio) with the mix look's: where the mix look
    aligns a matched recording elsewhere (a repeat of its section matched weakly, the use
    itself at another place of the recording) and its waveform holds better there (a
    higher ``coherence``), that alignment takes the match's place; other recordings are
    added.  At the match's own alignment the match stays (a shorter segment reads a higher
    coherence, not a better alignment)."""
    out = list(matches)
    for found in mix:
        i = next((i for i, m in enumerate(out)
                  if m.reference.track_id == found.reference.track_id), None)
        if i is None:
            out.append(found)
            continue
        held = out[i].verified.coherence if out[i].verified is not None else None
        elsewhere = (abs(windows.line_offset(found) - windows.line_offset(out[i]))
                     >= verify.NULL_MIN_LAG_SECONDS)
        if held is not None and elsewhere and found.verified.coherence > held:
            out[i] = found
    return out[:max_matches]


@dataclass
class IndexReport:
    """What one ``add`` run did."""

    added: list[str] = field(default_factory=list)
    replaced: list[str] = field(default_factory=list)
    unchanged: list[str] = field(default_factory=list)
    failed: list[tuple[str, str]] = field(default_factory=list)
    audio_seconds: float = 0.0
    elapsed: float = 0.0
    stage_seconds: dict[str, float] = field(default_factory=dict)


@dataclass
class _Fingerprinted:
    path: str
    content_hash: str
    duration: float
    tags: dict[str, str]
    keys: np.ndarray | None
    anchor_frames: np.ndarray | None
    error: str | None = None
    seconds: float = 0.0
    embeddings: Any = None  # chroma.SegmentEmbeddings of the derivation tier


def _fingerprint_job(args: tuple[str, FingerprintConfig]) -> _Fingerprinted:
    """Worker: decode once; landmarks for the recording tier, chroma segment embeddings
    for the derivation tier (never raises)."""
    from earmark.fingerprint import chroma

    path, cfg = args
    t0 = time.perf_counter()
    try:
        digest = audio_io.content_hash(path)
        lm = fingerprint_file(path, cfg, side="index", keep_audio=True)
        keys = lm.keys()
        frames = np.floor(lm.anchor_time + 0.5).astype(np.int64)
        ok = keys >= 0
        embeddings = chroma.embed_audio(lm.audio, cfg.sr)
        return _Fingerprinted(path, digest, lm.duration, read_tags(path),
                              keys[ok].astype(np.int32), frames[ok].astype(np.int32),
                              seconds=time.perf_counter() - t0, embeddings=embeddings)
    except EarmarkError as e:
        return _Fingerprinted(path, "", 0.0, {}, None, None, error=str(e))
    except MemoryError:
        return _Fingerprinted(path, "", 0.0, {}, None, None, error=f"{path}: out of memory")
    except Exception as e:  # a decoder bug must not stop a batch
        return _Fingerprinted(path, "", 0.0, {}, None, None,
                              error=f"{path}: {type(e).__name__}: {e}".splitlines()[0])


#: Segments with up to this many postings get a per-key offset table for matching
#: (:func:`earmark.index.store.key_offsets`, 4 MB each), built on an index's first query
#: in one pass over the segment's low key bits (~20 ms for the dev index's 0.8 M
#: postings, 0.34 s for 123 M); a look-up then reads it instead of searching a bucket
#: (the same postings).  Larger segments keep the bucket search, so that a query on a
#: very large index still reads only the pages it touches.
KEY_TABLE_MAX_POSTINGS = 1 << 26


def _segment_view(seg: store.Segment, removed: set[int]) -> SegmentView:
    slot_live = np.array([int(t) not in removed for t in seg.slot_track], dtype=np.bool_)
    return SegmentView(seg.bucket_start, seg.key_lo, seg.postings,
                       np.asarray(seg.slot_track), np.asarray(seg.slot_frame0), slot_live)


def _with_key_table(view: SegmentView) -> SegmentView:
    """``view`` with its per-key offsets when the segment is under ``KEY_TABLE_MAX_POSTINGS``."""
    if view.postings.shape[0] > KEY_TABLE_MAX_POSTINGS:
        return view
    return dataclasses.replace(view, key_start=store.key_offsets(view.bucket_start, view.key_lo))


class Index:
    """An Earmark index folder (see :mod:`earmark.index.store` for the layout).

    Use :meth:`open` to match (read-only, lock-free, memory-mapped) and
    :meth:`open_writer` to add or remove recordings.
    """

    def __init__(self, path: Path, manifest: store.Manifest, meta: MetadataStore,
                 writable: bool, lock_fd: int | None = None):
        self.path = path
        self.manifest = manifest
        self.meta = meta
        self.writable = writable
        self._lock_fd = lock_fd
        self.config = config_from_dict(manifest.config) if manifest.config else DEFAULT
        self._load_segments()

    # ------------------------------------------------------------------ opening

    @classmethod
    def open(cls, path: str | os.PathLike | None = None) -> "Index":
        """Open an existing index read-only.

        Raises
        ------
        IndexError_
            Missing, unreadable, corrupt, or written by a newer Earmark.
        """
        folder = Path(path) if path is not None else default_index_path()
        if not folder.is_dir():
            raise IndexError_(f"no index at {folder} (create one with: fp index FOLDER)")
        manifest = store.read_manifest(folder)
        if manifest is None:
            raise IndexError_(f"no index at {folder} (create one with: fp index FOLDER)")
        meta = MetadataStore(folder / "tracks.sqlite", readonly=True)
        return cls(folder, manifest, meta, writable=False)

    @classmethod
    def open_writer(cls, path: str | os.PathLike | None = None,
                    config: FingerprintConfig | None = None) -> "Index":
        """Open (creating if needed) an index for writing; takes the writer lock."""
        folder = Path(path) if path is not None else default_index_path()
        try:
            folder.mkdir(parents=True, exist_ok=True)
            lock_fd = os.open(folder / "lock", os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as e:
            raise IndexError_(f"cannot create index at {folder}: {e.strerror or e}") from None
        try:
            fcntl.flock(lock_fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            os.close(lock_fd)
            raise IndexError_(f"index at {folder} is being written by another process") from None
        try:
            manifest = store.read_manifest(folder)
            if manifest is None:
                manifest = store.Manifest(generation=0, segments=[], removed=[],
                                          config=config_to_dict(config or DEFAULT))
            meta = MetadataStore(folder / "tracks.sqlite")
            idx = cls(folder, manifest, meta, writable=True, lock_fd=lock_fd)
            idx._sweep()
            return idx
        except BaseException:
            os.close(lock_fd)
            raise

    def close(self) -> None:
        self.meta.close()
        if self._lock_fd is not None:
            os.close(self._lock_fd)
            self._lock_fd = None

    def __enter__(self) -> "Index":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def _load_segments(self) -> None:
        removed = set(self.manifest.removed)
        self.segments = [store.open_segment(self.path / s["file"]) for s in self.manifest.segments]
        self._views = [_segment_view(s, removed) for s in self.segments]
        self._match_views: list[SegmentView] | None = None
        self.total_frames = self.manifest.live_frames()
        self._derivation: derivation.DerivationStore | None = None
        self._track_frames = {int(t): float(f) for s in self.manifest.segments
                              for t, f in zip(s["tracks"], s["frames"])}

    def _sweep(self) -> None:
        """Writer start-up: delete files and rows a crashed run left behind."""
        referenced = ({s["file"] for s in self.manifest.segments}
                      | {s["derivation"] for s in self.manifest.segments if "derivation" in s}
                      | {"manifest.json"})
        for p in self.path.iterdir():
            if (p.name.startswith("seg-") or p.name.startswith(".seg-")
                    or p.name.startswith(".manifest.json.")) and p.name not in referenced:
                try:
                    p.unlink()
                except OSError:
                    pass
        live = self.manifest.live_track_ids()
        stale = [r.track_id for r in self.meta.all_tracks() if r.track_id not in live]
        if stale:
            self.meta.remove(stale)

    # ------------------------------------------------------------------ queries

    @property
    def derivation_store(self) -> "derivation.DerivationStore":
        """The derivation tier (FAISS), opened on first use."""
        if self._derivation is None:
            names = [s["derivation"] for s in self.manifest.segments if "derivation" in s]
            self._derivation = derivation.DerivationStore.open(self.path, names,
                                                               self.manifest.removed)
        return self._derivation

    def info(self) -> dict[str, Any]:
        """Summary: tracks, hours, landmarks, bytes on disk, config."""
        live = self.manifest.live_track_ids()
        disk = sum((self.path / s["file"]).stat().st_size for s in self.manifest.segments)
        drv = sum((self.path / s["derivation"]).stat().st_size
                  for s in self.manifest.segments if "derivation" in s)
        try:
            disk += (self.path / "tracks.sqlite").stat().st_size
        except OSError:
            pass
        seconds = self.total_frames * self.config.frame_seconds
        return {
            "path": str(self.path), "tracks": len(live), "audio_hours": seconds / 3600.0,
            "landmarks": int(sum(s.n_postings for s in self.segments)),
            "segments": len(self.segments), "removed_pending_merge": len(self.manifest.removed),
            "bytes": int(disk), "bytes_per_audio_second": disk / seconds if seconds else 0.0,
            "derivation_bytes": int(drv),
            "derivation_mb_per_hour": drv / 1e6 / (seconds / 3600) if seconds else 0.0,
            "generation": self.manifest.generation, "format_version": store.INDEX_VERSION,
        }

    def tracks(self) -> list[Reference]:
        """Live recordings, by track id."""
        live = self.manifest.live_track_ids()
        return sorted((r for r in self.meta.all_tracks() if r.track_id in live),
                      key=lambda r: r.track_id)

    def reference(self, track_id: int) -> Reference:
        ref = self.meta.get(track_id)
        return ref if ref is not None else Reference(track_id=track_id, path=f"<track {track_id}>")

    # ------------------------------------------------------------------ matching

    def match_views(self) -> list[SegmentView]:
        """The segment views queries search: ``_views`` with their per-key tables
        (:func:`_with_key_table`), built on first use (a writer that never matches, or
        an index only opened, does not build them)."""
        if self._match_views is None:
            self._match_views = [_with_key_table(v) for v in self._views]
        return self._match_views

    def _query_max_dt(self, mcfg: MatchConfig) -> float:
        searching = mcfg.search_speed or mcfg.search_tempo or mcfg.search_tempo_key
        return self.config.max_pair_frames / (mcfg.min_speed if searching else 1.0)

    def match_landmarks(self, lm: Landmarks, mcfg: MatchConfig | None = None,
                        label: str = "<audio>") -> QueryResult:
        """Match landmarks computed with this index's config (``side="query"``)."""
        mcfg = mcfg or MatchConfig()
        t0 = time.perf_counter()
        coarse = dense_coarse = None
        if lm.peak_time is not None and mcfg.refine_hypotheses > 0:
            def coarse_set(peaks_per_second: float) -> QueryLandmarks:
                peaks = dataclasses.replace(self.config.query, peaks_per_second=peaks_per_second,
                                            fan_out=mcfg.coarse_fan_out)
                return QueryLandmarks.from_landmarks(
                    sparser(lm, self.config, peaks, self._query_max_dt(mcfg)))

            coarse = coarse_set(mcfg.coarse_peaks_per_second)
            if mcfg.dense_coarse_peaks_per_second > mcfg.coarse_peaks_per_second:
                dense_coarse = functools.partial(coarse_set, mcfg.dense_coarse_peaks_per_second)
        audio_agrees = None
        if mcfg.verifies and lm.audio is not None and mcfg.review_max_significance > 0:
            def audio_agrees(e) -> bool:
                """Whether the catalogue file's audio does not refute evidence ``e``."""
                m = self._to_match([e], lm.duration)(e)
                check = verify.verify_segment(lm.audio, m.query_start, m.query_end,
                                              m.reference.path, m.reference_start, m.speed,
                                              m.pitch_semitones, self.config)
                return not verify.refutes(check, mcfg)
        found = search(QueryLandmarks.from_landmarks(lm), self.match_views(), self.total_frames,
                       self._track_frames, self.config, mcfg, coarse, dense_coarse,
                       audio_agrees)
        if lm.audio is not None:
            found = self._placed_by_audio(lm.audio, found, lm.duration, mcfg)
        # Candidates under the threshold may still be verified on the audio, whatever
        # their contrast: the peak test compares the alignment with other alignments of
        # the same two signals, which is what contrast approximates with other recordings
        # (the correlation test still asks for the contrast, see verify.passes).
        # (The search keeps nothing under ``mcfg.candidate_min_score`` landmarks, but
        # at identity down to ``mcfg.coherence_min_score``.)  At identity the coherence
        # test also checks weaker candidates.
        weak = [e for e in found if (not self._coherence_only(e, mcfg)
                                     or (mcfg.coherence_min_significance <= e.significance
                                         and verify.coherence_applies(e.speed, e.pitch)))
                and e.significance < mcfg.min_significance] \
            if mcfg.verifies and lm.audio is not None else []
        # Ties in score (the same audio in two catalogue recordings, e.g. a remaster)
        # go to the more significant one, whatever order the files were indexed in.
        def rank(e) -> tuple:
            return (-e.score, -e.significance, e.track)

        found = sorted((e for e in found if self._is_match(e, mcfg)), key=rank)[: mcfg.max_matches]
        weak = sorted(weak, key=lambda e: (-e.significance, e.track))[: mcfg.max_matches]
        to_match = self._to_match(found + weak, lm.duration)

        pairs = [(e, to_match(e)) for e in found]
        pairs += self._verified(lm.audio, weak, to_match, mcfg) if weak else []
        pairs.sort(key=lambda p: rank(p[0]))
        matches = [m for _, m in pairs[: mcfg.max_matches]]
        # Under the landmarks' threshold every match rests on an audio check, and the
        # mix look may know a better alignment of the same recording (a repeat of its
        # section verified weakly, the use itself elsewhere) or another recording.
        if mcfg.mix_look and lm.audio is not None \
                and all(e.significance < mcfg.min_significance for e, _ in pairs):
            matches = _with_mix_look(matches, self._mix_look(lm.audio, lm.duration, mcfg,
                                                             lm.spectrogram),
                                     mcfg.max_matches)
        if mcfg.audio_edges and lm.audio is not None:
            matches = [self._with_audio_edges(lm.audio, m) for m in matches]
        if mcfg.derivation and lm.audio is not None and lm.audio.shape[0]:
            matches += self._derivations(lm.audio, {m.reference.track_id for m in matches})
        return QueryResult(query=label, duration=lm.duration, matches=tuple(matches),
                           elapsed=time.perf_counter() - t0)

    def _placed_by_audio(self, y: np.ndarray, found: list, duration: float,
                         mcfg: MatchConfig) -> list:
        """``found`` with each match that has rivals - the same query segment aligned
        nearly as well with another copy of a repeated section of the recording
        (``_Evidence.rivals``) - moved to the copy whose catalogue audio agrees best with
        the query (:func:`earmark.verify.placement_gain`), for at most
        ``verify.PLACE_MAX_CHECKS`` matches, strongest first.  A rival replaces a match
        only if it is a match too: placing a use never loses it.  Only where audio
        checks are on (``MatchConfig.verifies``; the ``fast`` preset keeps the landmarks'
        choice)."""
        if not mcfg.verifies:
            return found
        # Only what the landmarks already make a match: placing chance candidates (most
        # of ``found``) would read the catalogue for nothing.
        with_rivals = [e for e in found if e.rivals and self._is_match(e, mcfg)]
        with_rivals = with_rivals[: verify.PLACE_MAX_CHECKS]
        if not with_rivals:
            return found
        to_match = self._to_match(with_rivals + [r for e in with_rivals for r in e.rivals],
                                  duration)
        placed = {}
        for e in with_rivals:
            options = [e] + [r for r in e.rivals if self._is_match(r, mcfg)]
            if len(options) == 1:
                continue
            matches = [to_match(o) for o in options]
            kept = matches[0]
            # Each option's reference time at the kept segment's start, on its own line.
            places = [(m.reference.path, m.reference_start + (kept.query_start - m.query_start)
                       * m.speed, m.speed, m.pitch_semitones) for m in matches]
            corr = [-np.inf if c is None else c for c in verify.placement_correlations(
                y, kept.query_start, kept.query_end, places, self.config)]
            best = 1 + int(np.argmax(corr[1:]))
            if np.isfinite(corr[0]) and verify.placement_gain(corr[0], corr[best]):
                placed[id(e)] = options[best]
        return [placed.get(id(e), e) for e in found]

    def _to_match(self, evidence: list, duration: float) -> Callable[[Any], Match]:
        """Evidence -> :class:`Match` for a query of ``duration`` seconds (the references of
        ``evidence`` read in one metadata query)."""
        refs = self.meta.get_many([e.track for e in evidence]) if evidence else {}

        def to_match(e) -> Match:
            return evidence_to_match(e, refs.get(e.track) or self.reference(e.track),
                                     duration, self.config.frame_seconds)

        return to_match

    def _mix_look(self, y: np.ndarray, duration: float, mcfg: MatchConfig,
                  spectrogram: np.ndarray | None = None) -> list[Match]:
        """Matches of the mix look (``MatchConfig.mix_peaks_per_second``): a query with no
        match over the landmarks' threshold analysed again with small peak neighbourhoods,
        its identity alignments (:func:`earmark.match.mix_search`) checked by the coherence
        test alone; one match per recording.

        The ``MIX_MAX_CHECKS`` most significant alignments are checked.  A *near miss*
        among them - the waveform stands out of chance (``coherence_z`` at its gate) but
        holds under ``verify_min_coherence`` over the proposed segment - says the
        recording is there and this alignment is off (a repeat of its section, a segment
        longer than the use), so that recording's other alignments are checked too.
        Unrelated audio does not stand out (``coherence_z`` 4.4 at most on the bench's
        chance pairs), so this costs nothing where nothing is used.

        ``spectrogram``: the query's (``Landmarks.spectrogram``), so that only the peaks
        are picked again.
        """
        mix_cfg = self.config.with_(query=mcfg.mix_peak_config(self.config.query))
        lm = fingerprint_audio(y, mix_cfg, side="query", max_dt_frames=self.config.max_pair_frames,
                               spectrogram=spectrogram)
        found = mix_search(QueryLandmarks.from_landmarks(lm), self.match_views(),
                           self.total_frames, self._track_frames, self.config, mcfg)
        if not found:
            return []
        to_match = self._to_match(found, duration)
        matches: dict[int, Match] = {}
        near_miss: set[int] = set()
        for rank, e in enumerate(found):
            if e.track in matches or (rank >= MIX_MAX_CHECKS and e.track not in near_miss):
                continue
            m = to_match(e)
            # Gated on coherence_z only, so that a near miss comes back to be seen.
            check = verify.verify_segment(y, m.query_start, m.query_end, m.reference.path,
                                          m.reference_start, m.speed, m.pitch_semitones,
                                          self.config, min_coherence_z=mcfg.verify_min_coherence_z)
            if check is None:
                continue
            if check.coherence >= mcfg.verify_min_coherence:
                matches[e.track] = dataclasses.replace(m, verified=check)
            else:
                near_miss.add(e.track)
        return list(matches.values())

    def _verified(self, y: np.ndarray, weak: list, to_match, mcfg: MatchConfig) -> list:
        """``(evidence, match)`` of the weak candidates (landmark evidence under the
        threshold) whose audio passes the check against their catalogue file
        (:mod:`earmark.verify`); each match carries the check as ``verified``."""
        out = []
        coherence_checks = 0
        for e in weak:
            m = to_match(e)
            # Under the floors of the other tests only the coherence test can pass it
            # (checked first, the rest only if it holds; at most COHERENCE_MAX_CHECKS).
            gate = None
            if self._coherence_only(e, mcfg):
                if coherence_checks >= verify.COHERENCE_MAX_CHECKS:
                    continue
                coherence_checks += 1
                gate = mcfg.verify_min_coherence_z
            check = verify.verify_segment(y, m.query_start, m.query_end,
                                          m.reference.path, m.reference_start, m.speed,
                                          m.pitch_semitones, self.config,
                                          min_coherence_z=gate,
                                          min_coherence=mcfg.verify_min_coherence)
            if verify.passes(check, mcfg, contrast=e.contrast, significance=e.significance,
                             score=e.score):
                out.append((e, dataclasses.replace(m, verified=check)))
        return out

    @staticmethod
    def _is_match(e, mcfg: MatchConfig) -> bool:
        """Whether evidence ``e`` is a match on its landmarks alone (significance, contrast
        and landmark count at a match's floors)."""
        return (e.significance >= mcfg.min_significance and e.contrast >= mcfg.min_contrast
                and e.score >= mcfg.min_score)

    @staticmethod
    def _coherence_only(e, mcfg: MatchConfig) -> bool:
        """Whether candidate evidence ``e`` is under the floors of the peak and
        correlation tests (significance ``weakest_checked``, ``verify_min_score``
        landmarks), so that only the coherence test may check it."""
        return e.significance < mcfg.weakest_checked or e.score < mcfg.verify_min_score

    def _with_audio_edges(self, y: np.ndarray, m: Match) -> Match:
        """``m`` with its segment's inner edges (those not at the query's own start or end)
        read off the audio (:func:`earmark.verify.use_edges`); unchanged when the
        catalogue file cannot be read or the audio cannot tell."""
        duration = y.shape[0] / self.config.sr
        margin = verify.EDGE_MIN_INTERIOR_SECONDS
        refine_start, refine_end = m.query_start > margin, m.query_end < duration - margin
        if not (refine_start or refine_end):
            return m
        anchors = np.array([q for q, _ in m.alignment]) if m.alignment else None
        edges = verify.use_edges(y, m.query_start, m.query_end, m.reference.path,
                                 m.reference_start, m.speed, m.pitch_semitones, self.config,
                                 refine_start, refine_end, anchors)
        if edges is None:
            return m
        start, end = edges

        def ref_time(t: float) -> float:
            return m.reference_start + (t - m.query_start) * m.speed

        return dataclasses.replace(m, query_start=start, query_end=end,
                                   reference_start=ref_time(start), reference_end=ref_time(end),
                                   coverage=(end - start) / duration if duration > 0 else 0.0)

    def _derivations(self, y: np.ndarray, recording_tracks: set[int]) -> list[Match]:
        """Derivation-tier matches (``kind="derivation"``) of tracks not already matched
        as recordings: using the recording says more than being derived from it."""
        drv = self.derivation_store
        if drv.n_vectors == 0:
            return []
        found = derivation.match_derivations(drv, y, self.config.sr, self.reference)
        return [m for m in found if m.reference.track_id not in recording_tracks]

    def match_audio(self, y: np.ndarray, sr: int, mcfg: MatchConfig | None = None,
                    label: str = "<audio>") -> QueryResult:
        """Match mono samples at any sample rate.

        Raises
        ------
        AudioError
            Audio too short or silent.
        """
        mcfg = mcfg or MatchConfig()
        t0 = time.perf_counter()
        y = np.asarray(y, dtype=np.float32)
        if y.ndim != 1:
            y = y.mean(axis=-1 if y.shape[-1] <= 8 else 0).astype(np.float32)
        if sr != self.config.sr:
            y = audio_io.resample(y, sr, self.config.sr)
        lm = fingerprint_audio(y, self.config, side="query", max_dt_frames=self._query_max_dt(mcfg),
                               keep_spectrogram=mcfg.mix_look)
        check_fingerprintable(label, lm.duration, lm.n_peaks)
        if mcfg.needs_audio:
            lm = dataclasses.replace(lm, audio=y)
        res = self.match_landmarks(lm, mcfg, label)
        return dataclasses.replace(res, elapsed=time.perf_counter() - t0)

    def match_file(self, path: str | os.PathLike, mcfg: MatchConfig | None = None,
                   window_seconds: float = windows.WINDOW_SECONDS,
                   overlap_seconds: float = windows.OVERLAP_SECONDS) -> QueryResult:
        """Decode and match a file.  Errors are raised as :class:`AudioError`.

        A file longer than ``window_seconds`` is matched in overlapping windows, so its
        memory stays bounded, and the windows' matches are put back together
        (:mod:`earmark.windows`).
        """
        mcfg = mcfg or MatchConfig()
        t0 = time.perf_counter()
        label = os.fspath(path)
        blocks = audio_io.iter_audio_blocks(path, self.config.sr, block_seconds=60.0)
        parts: list[Match] = []
        duration = 0.0
        any_peaks = False
        first = True
        for start, y, last in windows.audio_windows(blocks, self.config.sr, window_seconds,
                                                    overlap_seconds):
            duration = start + y.shape[0] / self.config.sr
            lm = None   # the last window's (its spectrogram) goes before this one's comes
            lm = fingerprint_audio(y, self.config, side="query",
                                   max_dt_frames=self._query_max_dt(mcfg),
                                   keep_spectrogram=mcfg.mix_look)
            if mcfg.needs_audio:
                lm = dataclasses.replace(lm, audio=y)
            if first and last:      # the whole file in one window: a plain query
                check_fingerprintable(label, lm.duration, lm.n_peaks)
                res = self.match_landmarks(lm, mcfg, label)
                return dataclasses.replace(res, elapsed=time.perf_counter() - t0)
            lo, hi = windows.owned_span(start, duration, first, last, overlap_seconds)
            first = False
            if lm.duration < MIN_QUERY_SECONDS or lm.n_peaks == 0:
                continue
            any_peaks = True
            res = self.match_landmarks(lm, mcfg.with_(max_matches=4 * mcfg.max_matches + 8),
                                       label)
            parts += [windows.shift(m, start) for m in res.matches
                      if lo <= start + 0.5 * (m.query_start + m.query_end) < hi]
        if not any_peaks:
            check_fingerprintable(label, duration, 0)
        joined = windows.join_parts(parts, duration, mcfg.max_gap_seconds + overlap_seconds)
        recs = sorted((m for m in joined if m.kind == "recording"),
                      key=lambda m: (-m.score, -m.significance, m.reference.track_id))
        recs = recs[: mcfg.max_matches]
        recording_tracks = {m.reference.track_id for m in recs}
        drvs = sorted((m for m in joined if m.kind != "recording"
                       and m.reference.track_id not in recording_tracks),
                      key=lambda m: (-m.significance, -m.score, m.reference.track_id))
        matches = tuple(recs + drvs[: mcfg.max_matches])
        return QueryResult(query=label, duration=duration,
                           matches=tuple(dataclasses.replace(
                               m, coverage=(m.query_end - m.query_start) / duration)
                               for m in matches),
                           elapsed=time.perf_counter() - t0)

    def match_files(self, paths: Iterable[str | os.PathLike],
                    mcfg: MatchConfig | None = None) -> Iterator[QueryResult]:
        """Match many files; a bad file yields a result with ``error`` set."""
        for p in paths:
            try:
                yield self.match_file(p, mcfg)
            except EarmarkError as e:
                yield QueryResult(query=os.fspath(p), duration=0.0, error=str(e))

    # ------------------------------------------------------------------ writing

    def _require_writer(self) -> None:
        if not self.writable:
            raise IndexError_("index opened read-only")

    def add(self, inputs: Iterable[str | os.PathLike], jobs: int = 1,
            progress: Callable[[int, int, float, str], None] | None = None,
            metadata_csv: str | os.PathLike | None = None) -> IndexReport:
        """Fingerprint audio files (folders are walked) into the index.

        Incremental: a file whose path and content hash are already live is skipped; a
        changed file replaces its old version.  Work is committed in segments every
        ``FLUSH_SECONDS``; an interruption keeps every committed segment.

        Parameters
        ----------
        inputs : iterable of paths
            Files and folders.
        jobs : int
            Worker processes (results are identical whatever the number).
        progress : callable, optional
            ``progress(done, total, audio_seconds_done, path)`` after each file.
        metadata_csv : path, optional
            CSV with a ``path`` column and title/artist/isrc/rights_holder/... columns.
        """
        self._require_writer()
        # One process per core does the work; BLAS threads would only spin (earmark.threads).
        with single_threaded_blas():
            return self._add(inputs, jobs, progress, metadata_csv)

    def _add(self, inputs: Iterable[str | os.PathLike], jobs: int,
             progress: Callable[[int, int, float, str], None] | None,
             metadata_csv: str | os.PathLike | None) -> IndexReport:
        t_start = time.perf_counter()
        report = IndexReport()
        files, problems = find_audio_files(inputs)
        report.failed.extend(problems)
        live = self.manifest.live_track_ids()
        todo: list[str] = []
        replace_ids: dict[str, int] = {}
        for f in files:
            try:
                f.encode("utf-8")
            except UnicodeEncodeError:  # bytes that are not UTF-8: Linux allows any name
                report.failed.append((f, "file name is not valid UTF-8 (the index keeps "
                                         "names as text): rename the file"))
                continue
            known = self.meta.find_by_path(f)
            if known is not None and known[0] in live:
                try:
                    digest = audio_io.content_hash(f)
                except AudioError as e:
                    report.failed.append((f, str(e)))
                    continue
                if digest == known[1]:
                    report.unchanged.append(f)
                    continue
                replace_ids[f] = known[0]
            todo.append(f)
        todo = longest_first(todo)
        pending: list[_Fingerprinted] = []
        pending_postings = 0
        last_flush = time.perf_counter()
        done = 0
        fp_seconds = 0.0
        pool = None
        try:
            if jobs > 1 and len(todo) > 1:
                ctx = multiprocessing.get_context("fork")
                pool = ctx.Pool(processes=jobs)
                results = pool.imap(_fingerprint_job, [(f, self.config) for f in todo], chunksize=1)
            else:
                results = (_fingerprint_job((f, self.config)) for f in todo)
            for r in results:
                done += 1
                if r.error is not None:
                    report.failed.append((r.path, r.error))
                else:
                    pending.append(r)
                    pending_postings += int(r.keys.shape[0])
                    report.audio_seconds += r.duration
                    fp_seconds += r.seconds
                if progress is not None:
                    progress(done, len(todo), report.audio_seconds, r.path)
                if pending and (pending_postings >= FLUSH_POSTINGS
                                or time.perf_counter() - last_flush >= FLUSH_SECONDS):
                    self._commit(pending, replace_ids, report)
                    pending, pending_postings, last_flush = [], 0, time.perf_counter()
            if pending:
                self._commit(pending, replace_ids, report)
                pending = []
        finally:
            if pool is not None:
                pool.terminate()
                pool.join()
        if self._should_merge():
            self.merge()
        if metadata_csv is not None:
            self.meta.apply_csv(metadata_csv)
        report.elapsed = time.perf_counter() - t_start
        report.stage_seconds["fingerprint_cpu"] = fp_seconds
        return report

    def _should_merge(self) -> bool:
        """Merge policy: one segment while the index is small (every query pays a look-up
        per segment); past ``MERGE_ALL_POSTINGS`` only when segments pile up or many
        removed tracks still occupy space."""
        segs = self.manifest.segments
        postings = sum(s["postings"] for s in segs)
        if len(segs) > MAX_SEGMENTS:
            return True
        if len(segs) > 1 and postings <= MERGE_ALL_POSTINGS:
            return True
        live = len(self.manifest.live_track_ids())
        return bool(self.manifest.removed) and len(self.manifest.removed) * 4 > live

    def _commit(self, batch: list[_Fingerprinted], replace_ids: dict[str, int],
                report: IndexReport) -> None:
        """Make a batch live: rows first, then the segment, then the manifest (commit)."""
        track_ids: list[int] = []
        old_ids: list[int] = []
        with self.meta.transaction():
            for r in batch:
                old = replace_ids.get(r.path)
                if old is not None:
                    self.meta.remove([old])
                    old_ids.append(old)
                track_ids.append(self.meta.add_track(r.path, r.content_hash, r.duration, r.tags))
        arrays = store.build_segment_arrays(track_ids, [r.keys.astype(np.int64) for r in batch],
                                            [r.anchor_frames for r in batch])
        seg_name = f"seg-{self.manifest.next_segment:06d}.emk"
        store.write_segment(self.path / seg_name, arrays)
        drv_name = derivation.segment_file_name(seg_name)
        derivation.write_segment(self.path, drv_name, derivation.build_segment(
            track_ids, [r.embeddings for r in batch]))
        frames = [r.duration / self.config.frame_seconds for r in batch]
        new_manifest = dataclasses.replace(
            self.manifest, generation=self.manifest.generation + 1,
            next_segment=self.manifest.next_segment + 1,
            segments=self.manifest.segments + [{"file": seg_name, "tracks": track_ids,
                                                "frames": frames,
                                                "postings": int(arrays["postings"].shape[0]),
                                                "derivation": drv_name}],
            removed=sorted(set(self.manifest.removed) | set(old_ids)))
        store.write_manifest(self.path, new_manifest)
        self.manifest = new_manifest
        self._load_segments()
        for r in batch:
            (report.replaced if r.path in replace_ids else report.added).append(r.path)

    def remove(self, paths: Iterable[str | os.PathLike]) -> tuple[list[str], list[str]]:
        """Take recordings out of the index by path.  Returns ``(removed, not_found)``."""
        self._require_writer()
        live = self.manifest.live_track_ids()
        ids, removed, missing = [], [], []
        for p in paths:
            known = self.meta.find_by_path(os.path.abspath(p))
            if known is None or known[0] not in live:
                missing.append(os.fspath(p))
            else:
                ids.append(known[0])
                removed.append(os.fspath(p))
        if ids:
            new_manifest = dataclasses.replace(
                self.manifest, generation=self.manifest.generation + 1,
                removed=sorted(set(self.manifest.removed) | set(ids)))
            store.write_manifest(self.path, new_manifest)
            self.manifest = new_manifest
            self.meta.remove(ids)
            self._load_segments()
        return removed, missing

    def merge(self) -> None:
        """Rewrite all segments as one, dropping removed tracks (atomic like any commit)."""
        self._require_writer()
        removed = set(self.manifest.removed)
        keys_by_track: dict[int, list[np.ndarray]] = {}
        frames_by_track: dict[int, list[np.ndarray]] = {}
        for seg in self.segments:
            counts = np.diff(seg.bucket_start.astype(np.int64))
            buckets = np.repeat(np.arange(counts.shape[0], dtype=np.int64), counts)
            keys = (buckets << store.hashes.LO_BITS) | seg.key_lo.astype(np.int64)
            slot, frame = store.hashes.unpack_posting(np.asarray(seg.postings))
            track = np.asarray(seg.slot_track)[slot]
            abs_frame = np.asarray(seg.slot_frame0)[slot] + frame
            order = np.argsort(track, kind="stable")
            track, keys, abs_frame = track[order], keys[order], abs_frame[order]
            bounds = np.flatnonzero(np.diff(track)) + 1
            for t_arr, k_arr, f_arr in zip(np.split(track, bounds), np.split(keys, bounds),
                                           np.split(abs_frame, bounds)):
                if t_arr.size and int(t_arr[0]) not in removed:
                    keys_by_track.setdefault(int(t_arr[0]), []).append(k_arr)
                    frames_by_track.setdefault(int(t_arr[0]), []).append(f_arr)
        frames_of = {t: f for s in self.manifest.segments for t, f in zip(s["tracks"], s["frames"])}
        live_ids = sorted(t for t in self.manifest.live_track_ids())
        new_segments = []
        next_seg = self.manifest.next_segment
        # Segments hold at most MAX_SLOTS slots; split the catalogue accordingly.
        chunk: list[int] = []
        chunks: list[list[int]] = []
        for t in live_ids:
            chunk.append(t)
            if len(chunk) >= store.hashes.MAX_SLOTS // 4:
                chunks.append(chunk)
                chunk = []
        if chunk:
            chunks.append(chunk)
        for ids in chunks:
            arrays = store.build_segment_arrays(
                ids, [np.concatenate(keys_by_track.get(t, [np.zeros(0, np.int64)])) for t in ids],
                [np.concatenate(frames_by_track.get(t, [np.zeros(0, np.int64)])) for t in ids])
            name = f"seg-{next_seg:06d}.emk"
            next_seg += 1
            store.write_segment(self.path / name, arrays)
            new_segments.append({"file": name, "tracks": ids, "frames": [frames_of[t] for t in ids],
                                 "postings": int(arrays["postings"].shape[0])})
        # The derivation tier follows: its vectors of the live tracks, in the first new
        # segment (it is small: ~0.7 MB per catalogue hour).
        drv_old = [s["derivation"] for s in self.manifest.segments if "derivation" in s]
        if new_segments and drv_old:
            drv_name = derivation.segment_file_name(new_segments[0]["file"])
            derivation.merge_segments(self.path, drv_old, removed, drv_name)
            new_segments[0]["derivation"] = drv_name
        old_files = [s["file"] for s in self.manifest.segments] + drv_old
        new_manifest = dataclasses.replace(self.manifest, generation=self.manifest.generation + 1,
                                           next_segment=next_seg, segments=new_segments,
                                           removed=[])
        store.write_manifest(self.path, new_manifest)
        self.manifest = new_manifest
        self._load_segments()
        for f in old_files:
            try:
                (self.path / f).unlink()
            except OSError:
                pass
