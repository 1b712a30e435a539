"""Track metadata in SQLite: the catalogue's source of truth for track ids.

Every catalogue recording gets a ``track_id`` here (``INTEGER PRIMARY KEY AUTOINCREMENT``,
so an id is never reused, even after its track is removed: fingerprint segments that
still mention an old id can never point at a different recording).  Fingerprint
segments refer to tracks only by this id.

Values are stored as plain columns plus one JSON ``extra`` column for any other user
metadata; nothing is ever pickled or evaluated.

Examples
--------
>>> store = MetadataStore("catalogue/metadata.sqlite")  # doctest: +SKIP
>>> with store.transaction():  # doctest: +SKIP
...     tid = store.add_track("/music/a.flac", "5f1c...", 201.3, {"title": "A"})
>>> store.get(tid).title  # doctest: +SKIP
'A'
"""

from __future__ import annotations

import contextlib
import csv
import json
import numbers
import os
import sqlite3
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

from earmark.errors import IndexError_, MetadataError
from earmark.evidence import Reference

__all__ = ["SCHEMA_VERSION", "MetadataStore", "read_tags"]

SCHEMA_VERSION = 1
"""Version of the on-disk schema written by this code.  Databases with a newer version
are refused (an older Earmark must not silently misread them)."""

_CORE_FIELDS = ("title", "artist", "isrc", "rights_holder")

_SCHEMA = """
CREATE TABLE IF NOT EXISTS schema_version (
    version INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS tracks (
    track_id      INTEGER PRIMARY KEY AUTOINCREMENT,
    path          TEXT NOT NULL UNIQUE,
    content_hash  TEXT NOT NULL,
    duration      REAL NOT NULL DEFAULT 0,
    title         TEXT,
    artist        TEXT,
    isrc          TEXT,
    rights_holder TEXT,
    extra         TEXT NOT NULL DEFAULT '{}',
    added_at      TEXT NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%SZ', 'now'))
);
CREATE INDEX IF NOT EXISTS tracks_content_hash ON tracks (content_hash);
"""

_SELECT = ("SELECT track_id, path, duration, title, artist, isrc, rights_holder, extra "
           "FROM tracks")

# SQLite's default limit on bound parameters is 999 in old builds; stay well below it.
_MAX_PARAMS = 500


def _one_line(text: object) -> str:
    return " ".join(str(text).split())


class MetadataStore:
    """Track metadata store backed by one SQLite file.

    Parameters
    ----------
    db_path : str or Path
        SQLite database file; created (with its folder) unless ``readonly``.
    readonly : bool
        Open read-only (e.g. for matching); the database must already exist.

    Raises
    ------
    IndexError_
        The database is missing (read-only), not an Earmark metadata database, corrupt,
        or written by a newer Earmark (schema version too new).

    Notes
    -----
    The database uses WAL journaling so that matchers can read while the indexer
    writes.  Each mutating method is atomic on its own; wrap several calls in
    :meth:`transaction` to commit them together (e.g. with a segment manifest).

    Examples
    --------
    >>> with MetadataStore("metadata.sqlite") as store:  # doctest: +SKIP
    ...     tid = store.add_track("a.wav", "00ff...", 12.5, {"artist": "X"})
    ...     store.count()
    1
    """

    def __init__(self, db_path: str | Path, readonly: bool = False) -> None:
        self.db_path = Path(db_path)
        self.readonly = readonly
        self._depth = 0  # nesting level of transaction()
        name = os.fspath(db_path)
        try:
            if readonly:
                if not self.db_path.is_file():
                    raise IndexError_(f"{name}: metadata database not found")
                uri = self.db_path.resolve().as_uri() + "?mode=ro"
                conn = sqlite3.connect(uri, uri=True, isolation_level=None)
            else:
                if self.db_path.is_dir():
                    raise IndexError_(f"{name}: is a directory, not a metadata database")
                self.db_path.parent.mkdir(parents=True, exist_ok=True)
                conn = sqlite3.connect(str(self.db_path), isolation_level=None)
        except sqlite3.Error as err:
            raise IndexError_(f"{name}: cannot open metadata database "
                              f"({_one_line(err)})") from None
        except OSError as err:
            raise IndexError_(f"{name}: cannot open metadata database "
                              f"({err.strerror or err})") from None
        # isolation_level=None: we issue BEGIN/COMMIT ourselves, so transaction() really
        # spans several statements (and several method calls).
        self._conn = conn
        try:
            with self._db_errors("open"):
                conn.execute("PRAGMA busy_timeout = 5000")
                if not readonly:
                    conn.execute("PRAGMA journal_mode = WAL")
                self._init_schema()
        except BaseException:
            conn.close()
            raise

    # ------------------------------------------------------------------ plumbing

    @contextlib.contextmanager
    def _db_errors(self, action: str) -> Iterator[None]:
        """Turn any sqlite3 error into a one-line :class:`IndexError_`."""
        try:
            yield
        except sqlite3.Error as err:
            raise IndexError_(f"{os.fspath(self.db_path)}: metadata database error while "
                              f"{action} ({_one_line(err)})") from None

    def _init_schema(self) -> None:
        name = os.fspath(self.db_path)
        tables = {r[0] for r in self._conn.execute(
            "SELECT name FROM sqlite_master WHERE type = 'table'")}
        if "schema_version" not in tables:
            if self.readonly or (tables - {"sqlite_sequence"}):
                raise IndexError_(f"{name}: not an Earmark metadata database "
                                  "(no schema version)")
            with self.transaction():
                # Statement by statement: executescript() would commit mid-transaction.
                for stmt in _SCHEMA.split(";"):
                    if stmt.strip():
                        self._conn.execute(stmt)
                self._conn.execute("INSERT INTO schema_version (version) VALUES (?)",
                                   (SCHEMA_VERSION,))
            return
        row = self._conn.execute("SELECT MAX(version) FROM schema_version").fetchone()
        version = row[0] if row else None
        if not isinstance(version, int):
            raise IndexError_(f"{name}: metadata database has no valid schema version")
        if version > SCHEMA_VERSION:
            raise IndexError_(f"{name}: metadata schema version {version} is newer than "
                              f"this Earmark supports ({SCHEMA_VERSION}); upgrade Earmark")
        # version < SCHEMA_VERSION: migrations go here when the schema changes.

    @contextlib.contextmanager
    def transaction(self) -> Iterator[MetadataStore]:
        """Group several changes into one atomic commit.

        Nested uses join the outermost transaction.  On an exception everything since
        the outermost ``with`` is rolled back.

        Examples
        --------
        >>> with store.transaction():  # doctest: +SKIP
        ...     store.remove([old_id])
        ...     new_id = store.add_track(path, digest, duration, tags)
        ...     write_segment_manifest(...)     # a failure here undoes both changes
        """
        if self._depth:
            self._depth += 1
            try:
                yield self
            finally:
                self._depth -= 1
            return
        with self._db_errors("starting a transaction"):
            # IMMEDIATE takes the write lock now, so two indexers cannot interleave.
            self._conn.execute("BEGIN" if self.readonly else "BEGIN IMMEDIATE")
        self._depth = 1
        try:
            yield self
        except BaseException:
            self._depth = 0
            with contextlib.suppress(sqlite3.Error):
                self._conn.execute("ROLLBACK")
            raise
        self._depth = 0
        try:
            with self._db_errors("committing"):
                self._conn.execute("COMMIT")
        except IndexError_:
            with contextlib.suppress(sqlite3.Error):
                self._conn.execute("ROLLBACK")
            raise

    def close(self) -> None:
        """Close the database connection (idempotent)."""
        conn, self._conn = getattr(self, "_conn", None), None
        if conn is not None:
            conn.close()

    def __enter__(self) -> MetadataStore:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def _writable(self) -> None:
        if self.readonly:
            raise IndexError_(f"{os.fspath(self.db_path)}: metadata database is open "
                              "read-only")

    @staticmethod
    def _reference(row: tuple) -> Reference:
        track_id, path, duration, title, artist, isrc, rights_holder, extra = row
        try:
            extra_dict = json.loads(extra) if extra else {}
        except ValueError:
            extra_dict = {}  # a hand-edited bad JSON cell must not break matching
        if not isinstance(extra_dict, dict):
            extra_dict = {}
        return Reference(
            track_id=int(track_id), path=path, duration=float(duration or 0.0),
            title=title, artist=artist, isrc=isrc, rights_holder=rights_holder,
            extra={str(k): str(v) for k, v in extra_dict.items()},
        )

    # ------------------------------------------------------------------ writing

    def add_track(self, path: str, content_hash: str, duration: float,
                  tags: dict[str, str]) -> int:
        """Add a recording and return its new ``track_id``.

        Parameters
        ----------
        path : str
            Path of the audio file, stored verbatim (must be unique in the store).
        content_hash : str
            Hash of the file bytes (see ``earmark.fingerprint.audio.content_hash``).
        duration : float
            Duration in seconds.
        tags : dict of str to str
            ``title``, ``artist``, ``isrc`` and ``rights_holder`` go to their columns;
            any other key is kept in ``Reference.extra``.  Empty values are ignored.

        Raises
        ------
        IndexError_
            ``path`` is already in the store, or the database cannot be written.

        Examples
        --------
        >>> store.add_track("a.flac", "00ff...", 201.3, {"title": "A", "label": "L"})  # doctest: +SKIP
        1
        """
        self._writable()
        core, extra = _split_tags(tags or {})
        with self.transaction():
            try:
                cur = self._conn.execute(
                    "INSERT INTO tracks (path, content_hash, duration, title, artist, isrc, "
                    "rights_holder, extra) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                    (str(path), str(content_hash), float(duration), core.get("title"),
                     core.get("artist"), core.get("isrc"), core.get("rights_holder"),
                     json.dumps(extra, ensure_ascii=False, sort_keys=True)),
                )
            except sqlite3.IntegrityError:
                raise IndexError_(f"{path}: already in the index (remove it first)") from None
            except sqlite3.Error as err:
                raise IndexError_(f"{os.fspath(self.db_path)}: cannot add {path} "
                                  f"({_one_line(err)})") from None
            return int(cur.lastrowid)

    def remove(self, track_ids: int | Iterable[int]) -> None:
        """Delete tracks by id (unknown ids are ignored).  Their ids are never reused."""
        self._writable()
        ids = ([int(track_ids)] if isinstance(track_ids, numbers.Integral)
               else [int(t) for t in track_ids])
        with self.transaction(), self._db_errors("removing tracks"):
            for i in range(0, len(ids), _MAX_PARAMS):
                chunk = ids[i:i + _MAX_PARAMS]
                self._conn.execute(
                    f"DELETE FROM tracks WHERE track_id IN ({','.join('?' * len(chunk))})",
                    chunk)

    def _update(self, track_id: int, core: dict[str, str], extra: dict[str, str]) -> None:
        """Overwrite the given core fields and merge ``extra`` into the stored extra."""
        row = self._conn.execute("SELECT extra FROM tracks WHERE track_id = ?",
                                 (track_id,)).fetchone()
        if row is None:
            return
        try:
            merged = json.loads(row[0] or "{}")
            merged = merged if isinstance(merged, dict) else {}
        except ValueError:
            merged = {}
        merged.update(extra)
        sets = [f"{k} = ?" for k in _CORE_FIELDS if k in core]
        values = [core[k] for k in _CORE_FIELDS if k in core]
        self._conn.execute(
            f"UPDATE tracks SET {', '.join(sets + ['extra = ?'])} WHERE track_id = ?",
            (*values, json.dumps(merged, ensure_ascii=False, sort_keys=True), track_id))

    # ------------------------------------------------------------------ reading

    def get(self, track_id: int) -> Reference | None:
        """The :class:`~earmark.evidence.Reference` for ``track_id``, or ``None``."""
        with self._db_errors("reading a track"):
            row = self._conn.execute(f"{_SELECT} WHERE track_id = ?",
                                     (int(track_id),)).fetchone()
        return None if row is None else self._reference(row)

    def get_many(self, track_ids: Iterable[int]) -> dict[int, Reference]:
        """References for many ids at once; unknown ids are absent from the result.

        Examples
        --------
        >>> refs = store.get_many([3, 7, 999])  # doctest: +SKIP
        >>> sorted(refs)  # doctest: +SKIP
        [3, 7]
        """
        ids = sorted({int(t) for t in track_ids})
        out: dict[int, Reference] = {}
        with self._db_errors("reading tracks"):
            for i in range(0, len(ids), _MAX_PARAMS):
                chunk = ids[i:i + _MAX_PARAMS]
                rows = self._conn.execute(
                    f"{_SELECT} WHERE track_id IN ({','.join('?' * len(chunk))})", chunk)
                for row in rows:
                    ref = self._reference(row)
                    out[ref.track_id] = ref
        return out

    def find_by_path(self, path: str | os.PathLike) -> tuple[int, str] | None:
        """``(track_id, content_hash)`` of the track stored under exactly ``path``."""
        with self._db_errors("looking up a path"):
            row = self._conn.execute(
                "SELECT track_id, content_hash FROM tracks WHERE path = ?",
                (os.fspath(path),)).fetchone()
        return None if row is None else (int(row[0]), row[1])

    def find_by_hash(self, content_hash: str) -> list[int]:
        """Ids of all tracks whose file bytes hash to ``content_hash`` (duplicates)."""
        with self._db_errors("looking up a hash"):
            rows = self._conn.execute(
                "SELECT track_id FROM tracks WHERE content_hash = ? ORDER BY track_id",
                (str(content_hash),)).fetchall()
        return [int(r[0]) for r in rows]

    def all_tracks(self) -> list[Reference]:
        """Every track, in ``track_id`` order."""
        with self._db_errors("listing tracks"):
            rows = self._conn.execute(f"{_SELECT} ORDER BY track_id").fetchall()
        return [self._reference(r) for r in rows]

    def count(self) -> int:
        """Number of tracks."""
        with self._db_errors("counting tracks"):
            return int(self._conn.execute("SELECT COUNT(*) FROM tracks").fetchone()[0])

    def total_duration(self) -> float:
        """Sum of track durations in seconds (0.0 for an empty store)."""
        with self._db_errors("summing durations"):
            value = self._conn.execute("SELECT TOTAL(duration) FROM tracks").fetchone()[0]
        return float(value or 0.0)

    # ------------------------------------------------------------------ user CSV

    def apply_csv(self, csv_path: str | Path) -> int:
        """Apply a user metadata CSV to the stored tracks.

        The CSV (UTF-8, optional BOM, header row) needs a ``path`` column; the columns
        ``title``, ``artist``, ``isrc`` and ``rights_holder`` fill those fields and every
        other column goes into ``Reference.extra``.  Header names are matched without
        regard to case or surrounding spaces.  A row's ``path`` is matched, in order,

        1. verbatim against a stored path;
        2. as a file path (absolute, or relative to the CSV's folder), compared with the
           stored paths after resolving both;
        3. by file name alone, if exactly one stored track has that file name.

        Empty cells leave the stored value unchanged; rows that match no track are
        skipped.  All rows are applied in one transaction.

        Parameters
        ----------
        csv_path : str or Path
            The CSV file.

        Returns
        -------
        int
            Number of rows applied to a track.

        Raises
        ------
        MetadataError
            The file is missing/unreadable, not UTF-8, malformed, or has no ``path`` column.

        Examples
        --------
        ``tracks.csv``::

            path,title,artist,isrc,label
            audio/a.flac,Alpha,Ann,USRC17607839,Big Label

        >>> store.apply_csv("tracks.csv")  # doctest: +SKIP
        1
        >>> store.get(1).extra  # doctest: +SKIP
        {'label': 'Big Label'}
        """
        self._writable()
        rows = _read_csv(Path(csv_path))
        base = Path(csv_path).resolve().parent

        applied = 0
        with self.transaction(), self._db_errors(f"applying {csv_path}"):
            tracks = self._conn.execute("SELECT track_id, path FROM tracks").fetchall()
            by_path = {p: tid for tid, p in tracks}
            by_real: dict[str, int] = {}
            by_name: dict[str, list[int]] = {}
            for tid, p in tracks:
                by_real.setdefault(_real(p), tid)
                by_name.setdefault(os.path.basename(p), []).append(tid)
            for raw_path, values in rows:
                tid = by_path.get(raw_path)
                if tid is None:
                    candidate = Path(raw_path).expanduser()
                    if not candidate.is_absolute():
                        candidate = base / candidate
                    tid = by_real.get(_real(candidate))
                if tid is None:
                    same_name = by_name.get(os.path.basename(raw_path.replace("\\", "/")), [])
                    tid = same_name[0] if len(same_name) == 1 else None
                if tid is None:
                    continue
                core, extra = _split_tags(values)
                self._update(tid, core, extra)
                applied += 1
        return applied


# ---------------------------------------------------------------------- module helpers


def _split_tags(tags: dict[str, Any]) -> tuple[dict[str, str], dict[str, str]]:
    """Split into core columns and ``extra``; drop empty keys/values."""
    core: dict[str, str] = {}
    extra: dict[str, str] = {}
    for key, value in tags.items():
        if key is None or value is None:
            continue
        k = str(key).strip()
        v = str(value).strip()
        if not k or not v:
            continue
        (core if k in _CORE_FIELDS else extra)[k] = v
    return core, extra


def _real(path: str | os.PathLike) -> str:
    try:
        return os.path.realpath(os.path.expanduser(os.fspath(path)))
    except (OSError, ValueError):
        return os.fspath(path)


def _read_csv(csv_path: Path) -> list[tuple[str, dict[str, str]]]:
    """Parse a metadata CSV into ``(path, {column: value})`` rows, or raise MetadataError."""
    name = os.fspath(csv_path)
    try:
        with open(csv_path, newline="", encoding="utf-8-sig") as fh:
            reader = csv.reader(fh, strict=True)
            try:
                header = next(reader)
            except StopIteration:
                raise MetadataError(f"{name}: metadata CSV is empty (need a header row "
                                    "with a 'path' column)") from None
            columns = [h.strip().lower() for h in header]
            if "path" not in columns:
                raise MetadataError(f"{name}: metadata CSV has no 'path' column "
                                    f"(found: {', '.join(columns) or 'nothing'})")
            if any(not c for c in columns):
                raise MetadataError(f"{name}: metadata CSV header has an empty column name")
            dupes = sorted({c for c in columns if columns.count(c) > 1})
            if dupes:
                raise MetadataError(f"{name}: metadata CSV has duplicate columns: "
                                    f"{', '.join(dupes)}")
            path_col = columns.index("path")
            rows: list[tuple[str, dict[str, str]]] = []
            for record in reader:
                if not record or all(not cell.strip() for cell in record):
                    continue  # blank lines are harmless
                if len(record) > len(columns):
                    raise MetadataError(
                        f"{name}: line {reader.line_num}: {len(record)} fields but the "
                        f"header has {len(columns)} (unquoted comma?)")
                record = record + [""] * (len(columns) - len(record))
                path = record[path_col].strip()
                if not path:
                    raise MetadataError(f"{name}: line {reader.line_num}: empty 'path'")
                values = {c: v for c, v in zip(columns, record) if c != "path"}
                rows.append((path, values))
    except MetadataError:
        raise
    except FileNotFoundError:
        raise MetadataError(f"{name}: metadata CSV not found") from None
    except IsADirectoryError:
        raise MetadataError(f"{name}: is a directory, not a metadata CSV") from None
    except UnicodeDecodeError:
        raise MetadataError(f"{name}: metadata CSV is not UTF-8 text") from None
    except csv.Error as err:
        raise MetadataError(f"{name}: malformed metadata CSV ({_one_line(err)})") from None
    except OSError as err:
        raise MetadataError(f"{name}: cannot read metadata CSV "
                            f"({err.strerror or err})") from None
    return rows


def read_tags(path: str | os.PathLike) -> dict[str, str]:
    """Read title, artist, ISRC and rights holder from a file's embedded tags.

    Uses mutagen's "easy" interface (ID3, Vorbis comments, MP4 atoms, ...).  The rights
    holder is the ``organization`` (label) tag, else ``copyright``.

    Parameters
    ----------
    path : str or os.PathLike
        Audio file.

    Returns
    -------
    dict of str to str
        Any of ``title``, ``artist``, ``isrc``, ``rights_holder`` that are present and
        non-empty; ``{}`` if the file has no tags or cannot be read (never raises).

    Examples
    --------
    >>> read_tags("song.flac")  # doctest: +SKIP
    {'title': 'Alpha', 'artist': 'Ann', 'isrc': 'USRC17607839', 'rights_holder': 'Big Label'}
    """
    try:
        import mutagen

        audio = mutagen.File(os.fspath(path), easy=True)
        if audio is None or audio.tags is None:
            return {}
        tags = audio.tags

        def first(key: str) -> str | None:
            try:
                values = tags.get(key)
            except Exception:  # some tag types raise on keys they do not know
                return None
            if values is None:
                return None
            if isinstance(values, (str, bytes)):
                values = [values]
            for v in values:
                text = v.decode("utf-8", "replace") if isinstance(v, bytes) else str(v)
                text = text.replace("\x00", "").strip()
                if text:
                    return text
            return None

        out: dict[str, str] = {}
        for field, keys in (("title", ("title",)), ("artist", ("artist",)),
                            ("isrc", ("isrc",)),
                            ("rights_holder", ("organization", "copyright"))):
            for key in keys:
                value = first(key)
                if value:
                    out[field] = value
                    break
        return out
    except Exception:
        return {}
