"""``fp``: the command line.  Thin: parse, call the library, print.

Exit codes follow grep: 0 a match was found (or the command succeeded), 1 no match,
2 an error (one line on stderr, never a traceback; set ``FP_DEBUG=1`` to see one).
"""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path
from typing import NoReturn

import click

from earmark.errors import EarmarkError
from earmark.evidence import QueryResult
from earmark.threads import single_threaded_blas, usable_cpus

EXIT_MATCH, EXIT_NO_MATCH, EXIT_ERROR = 0, 1, 2


def _fail(message: str, code: int = EXIT_ERROR) -> NoReturn:
    click.echo(f"fp: error: {message}", err=True)
    sys.exit(code)


index_option = click.option(
    "--index", "index_path", type=click.Path(file_okay=False, path_type=Path), default=None,
    help="Index folder (default: $FP_INDEX, else ~/.local/share/earmark/index).")


recordings_only_option = click.option(
    "--recordings-only", is_flag=True,
    help="Only catalogue recordings used (as they are or transformed): no derivation tier "
         "(compositions re-performed or regenerated), about a quarter less time.")


def match_config(fast: bool = False, min_significance: float | None = None,
                 max_matches: int | None = None, recordings_only: bool = False):
    """The :class:`~earmark.fingerprint.config.MatchConfig` that ``fp match`` / ``fp scan``
    flags ask for: the ``fast`` or ``default`` preset with the given overrides."""
    from earmark.fingerprint.config import MATCH_PRESETS

    mcfg = MATCH_PRESETS["fast" if fast else "default"]
    if min_significance is not None:
        mcfg = mcfg.with_(min_significance=min_significance)
    if max_matches is not None:
        mcfg = mcfg.with_(max_matches=max_matches)
    if recordings_only:
        mcfg = mcfg.with_(derivation=False)
    return mcfg


def _index_path(p: Path | None) -> Path:
    from earmark.index.catalogue import default_index_path

    return p if p is not None else default_index_path()


def _fmt_time(seconds: float) -> str:
    m, s = divmod(max(seconds, 0.0), 60)
    return f"{int(m)}:{s:05.2f}"


class _LazyGroup(click.Group):
    """Commands that live in heavier modules (``fp bench``, ``fp scan``) are imported only
    when invoked, so that ``fp match`` starts fast."""

    lazy = {"bench": ("earmark.bench.cli", "bench_cmd"), "scan": ("earmark.scan", "scan_cmd")}

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted(set(super().list_commands(ctx)) | set(self.lazy))

    def get_command(self, ctx: click.Context, name: str):
        if name in self.lazy and name not in self.commands:
            import importlib

            module, attr = self.lazy[name]
            try:
                return getattr(importlib.import_module(module), attr)
            except (ImportError, AttributeError):
                return None
        return super().get_command(ctx, name)


#: Commands that only read or edit index metadata: no numerical work, so no BLAS set-up
#: (importing scipy.linalg for it would cost them ~0.15 s of start-up).
_METADATA_COMMANDS = frozenset({"info", "list", "remove"})


@click.group(cls=_LazyGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="earmark", prog_name="fp")
@click.pass_context
def cli(ctx: click.Context) -> None:
    """Earmark: find a catalogue's recordings inside other audio, with evidence."""
    if ctx.invoked_subcommand in _METADATA_COMMANDS:
        return
    # Every other command parallelises itself (worker processes, voting threads); BLAS
    # threads would only spin beside them (earmark.threads).  The BLAS libraries are
    # loaded first (numpy's; scipy's, which those commands load anyway through numba)
    # so that the limit reaches them.
    import numpy  # noqa: F401
    import scipy.linalg  # noqa: F401

    single_threaded_blas().__enter__()


# --------------------------------------------------------------------------- index


@cli.command("index")
@click.argument("inputs", nargs=-1, required=True, type=click.Path(path_type=Path))
@index_option
@click.option("--metadata", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="CSV with a path column and title, artist, isrc, rights_holder, ...")
@click.option("-j", "--jobs", type=click.IntRange(1, 256), default=usable_cpus(),
              show_default=True, help="Worker processes.")
@click.option("--preset", type=click.Choice(["default", "dense"]), default="default",
              show_default=True, help="Fingerprint density preset (new indexes only).")
@click.option("-q", "--quiet", is_flag=True, help="No progress bar.")
def index_cmd(inputs, index_path, metadata, jobs, preset, quiet):
    """Fingerprint audio files and folders (recursively) into the index.

    Incremental: unchanged files are skipped, changed files replaced.  Interrupting is
    safe: the index keeps what was committed and a re-run completes it.
    """
    from rich.progress import (BarColumn, MofNCompleteColumn, Progress, TextColumn,
                               TimeElapsedColumn, TimeRemainingColumn)

    from earmark.fingerprint.config import PRESETS
    from earmark.index.catalogue import Index

    if metadata is not None and not metadata.is_file():
        _fail(f"{metadata}: metadata file not found")
    path = _index_path(index_path)
    with Index.open_writer(path, PRESETS[preset]) as idx:
        progress = Progress(TextColumn("indexing"), BarColumn(), MofNCompleteColumn(),
                            TextColumn("{task.fields[rate]}"), TimeElapsedColumn(),
                            TextColumn("ETA"), TimeRemainingColumn(), transient=True,
                            disable=quiet or not sys.stderr.isatty(),
                            console=None)
        t0 = time.perf_counter()
        with progress:
            task = progress.add_task("index", total=None, rate="")

            def on_file(done: int, total: int, audio_s: float, _path: str) -> None:
                rate = audio_s / max(time.perf_counter() - t0, 1e-9)
                progress.update(task, completed=done, total=total, rate=f"{rate:.0f}x real-time")

            report = idx.add(inputs, jobs=jobs, progress=on_file, metadata_csv=metadata)
        info = idx.info()
    hours = report.audio_seconds / 3600
    click.echo(f"indexed {len(report.added)} new, {len(report.replaced)} changed, "
               f"{len(report.unchanged)} unchanged; {hours:.2f} h of audio in "
               f"{report.elapsed:.1f} s ({report.audio_seconds / max(report.elapsed, 1e-9):.0f}x "
               f"real-time)")
    click.echo(f"index {info['path']}: {info['tracks']} recordings, {info['audio_hours']:.2f} h, "
               f"{info['bytes'] / 1e6:.1f} MB ({info['bytes_per_audio_second']:.0f} B per audio s)")
    if report.failed:
        click.echo(f"{len(report.failed)} file(s) could not be indexed:", err=True)
        for p, reason in report.failed:
            click.echo(f"  {reason if reason.startswith(str(p)) else f'{p}: {reason}'}", err=True)
    if not report.added and not report.replaced and not report.unchanged:
        _fail("no audio indexed" + (" (no audio files found)" if not report.failed else ""))
    sys.exit(0)


# --------------------------------------------------------------------------- match


def _print_table(result: QueryResult) -> None:
    from rich.console import Console
    from rich.markup import escape
    from rich.table import Table

    console = Console(highlight=False, width=None if sys.stdout.isatty() else 140)
    if result.error:
        return
    if not result.matches:
        console.print(escape(f"{result.query}: no match ({result.duration:.1f} s analysed)"))
        return
    # Names come from files and metadata: escape rich markup.
    table = Table(title=escape(f"{result.query} ({result.duration:.1f} s)"), title_justify="left")
    for col in ("#", "kind", "recording", "query", "reference", "speed", "pitch", "score",
                "signif."):
        table.add_column(col, justify="left" if col in ("kind", "recording") else "right")
    for i, m in enumerate(result.matches, 1):
        ref = m.reference
        name = ref.label()
        if ref.rights_holder:
            name += f" [{ref.rights_holder}]"
        kind = "uses recording" if m.kind == "recording" else "derived from"
        table.add_row(str(i), kind, escape(name), f"{_fmt_time(m.query_start)}–{_fmt_time(m.query_end)}",
                      f"{_fmt_time(m.reference_start)}–{_fmt_time(m.reference_end)}",
                      f"{m.speed:.3f}x", f"{m.pitch_semitones:+.2f} st", str(m.score),
                      f"{m.significance:.1f}" + ("" if m.verified is None
                                                 else f" (audio: {m.verified.summary()})"))
    console.print(table)


@cli.command("match")
@click.argument("queries", nargs=-1, required=True, type=click.Path(path_type=Path))
@index_option
@click.option("--json", "as_json", is_flag=True, help="One JSON object per query per line.")
@click.option("--fast", is_flag=True, help="Plain matching: no speed/tempo/pitch search.")
@click.option("--min-significance", type=click.FloatRange(0, None), default=None,
              help="Report matches at least this significant (-log10 chance probability).")
@click.option("--max-matches", type=click.IntRange(1, 1000), default=None,
              help="Most matches per query.")
@click.option("--alignment", is_flag=True, help="Include matched landmark times in --json.")
@recordings_only_option
def match_cmd(queries, index_path, as_json, fast, min_significance, max_matches, alignment,
              recordings_only):
    """Find which catalogue recordings each query uses, where and how strongly.

    Exit status: 0 if any query matched, 1 if none did, 2 on error.
    """
    from earmark.index.catalogue import Index

    idx = Index.open(_index_path(index_path))
    mcfg = match_config(fast, min_significance, max_matches, recordings_only)
    any_match = False
    errors = 0
    for result in idx.match_files(queries, mcfg):
        if result.error:
            errors += 1
            click.echo(f"fp: error: {result.error}", err=True)
            if as_json:
                click.echo(result.to_json())
            continue
        any_match |= bool(result.matches)
        if as_json:
            click.echo(result.to_json(with_alignment=alignment))
        else:
            _print_table(result)
    if errors == len(queries):
        sys.exit(EXIT_ERROR)
    sys.exit(EXIT_MATCH if any_match else EXIT_NO_MATCH)


# --------------------------------------------------------------------------- info / list / remove


@cli.command("info")
@index_option
@click.option("--json", "as_json", is_flag=True)
def info_cmd(index_path, as_json):
    """What the index holds."""
    from earmark.index.catalogue import Index

    info = Index.open(_index_path(index_path)).info()
    if as_json:
        click.echo(json.dumps(info))
        return
    click.echo(f"index:      {info['path']}\nrecordings: {info['tracks']}\n"
               f"audio:      {info['audio_hours']:.2f} h\nlandmarks:  {info['landmarks']}\n"
               f"size:       {info['bytes'] / 1e6:.1f} MB "
               f"({info['bytes_per_audio_second']:.0f} B per audio second)\n"
               f"segments:   {info['segments']}\nformat:     {info['format_version']}")


@cli.command("list")
@index_option
@click.option("--json", "as_json", is_flag=True)
def list_cmd(index_path, as_json):
    """List the indexed recordings."""
    from earmark.index.catalogue import Index

    for ref in Index.open(_index_path(index_path)).tracks():
        if as_json:
            click.echo(json.dumps({"track_id": ref.track_id, "path": ref.path,
                                   "duration": ref.duration, "title": ref.title,
                                   "artist": ref.artist, "isrc": ref.isrc,
                                   "rights_holder": ref.rights_holder, **ref.extra},
                                  ensure_ascii=False))
        else:
            click.echo(f"{ref.track_id}\t{_fmt_time(ref.duration)}\t{ref.path}")


@cli.command("remove")
@click.argument("paths", nargs=-1, required=True, type=click.Path(path_type=Path))
@index_option
def remove_cmd(paths, index_path):
    """Take recordings out of the index (by the path they were indexed from)."""
    from earmark.index.catalogue import Index

    path = _index_path(index_path)
    if not (path / "manifest.json").exists():
        _fail(f"no index at {path}")
    with Index.open_writer(path) as idx:
        removed, missing = idx.remove(paths)
    for p in removed:
        click.echo(f"removed {p}")
    for p in missing:
        click.echo(f"fp: not in the index: {p}", err=True)
    sys.exit(0 if removed else EXIT_NO_MATCH)


# --------------------------------------------------------------------------- demo


@cli.command("demo")
@click.option("--dir", "workdir", type=click.Path(file_okay=False, path_type=Path),
              default=None, help="Where to write the demo catalogue (default: a temp folder).")
def demo_cmd(workdir):
    """Synthesise a small catalogue, index it, and match transformed excerpts."""
    from earmark.demo import run_demo

    code = run_demo(workdir, echo=click.echo, show=_print_table)
    sys.exit(code)


def main(argv: list[str] | None = None) -> None:
    """Console entry point: errors become one line and exit status 2."""
    try:
        cli.main(args=argv, prog_name="fp", standalone_mode=False)
    except click.exceptions.Exit as e:
        sys.exit(e.exit_code)
    except click.UsageError as e:
        hint = f" (see: {e.ctx.command_path} --help)" if e.ctx is not None else ""
        click.echo(f"fp: error: {e.format_message()}{hint}", err=True)
        sys.exit(EXIT_ERROR)
    except click.ClickException as e:
        click.echo(f"fp: error: {e.format_message()}", err=True)
        sys.exit(EXIT_ERROR)
    except click.exceptions.Abort:
        click.echo("fp: interrupted", err=True)
        sys.exit(130)
    except KeyboardInterrupt:
        click.echo("fp: interrupted (the index keeps everything committed; re-run to continue)",
                   err=True)
        sys.exit(130)
    except EarmarkError as e:
        _fail(str(e).splitlines()[0] if str(e) else type(e).__name__)
    except BrokenPipeError:
        sys.exit(EXIT_ERROR)
    except Exception as e:  # a bug: still one line unless debugging
        if os.environ.get("FP_DEBUG"):
            raise
        _fail(f"internal error: {type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''} "
              f"(set FP_DEBUG=1 for a traceback)")
    sys.exit(0)


if __name__ == "__main__":
    main()
