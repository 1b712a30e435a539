"""``fp bench``: the benchmark commands (thin: parse, call :mod:`earmark.bench`, print)."""

from __future__ import annotations

import json
from pathlib import Path

import click

from earmark.threads import usable_cpus


class _BenchGroup(click.Group):
    """``fp bench CATALOGUE ...`` runs the main benchmark; ``fp bench scale|derivation``
    are subcommands.  A first argument that is not a subcommand is the catalogue."""

    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        if args and args[0] not in self.commands and not args[0].startswith("-"):
            args = ["run", *args]
        elif args and args[0].startswith("-") and args[0] not in ("-h", "--help"):
            args = ["run", *args]
        return super().parse_args(ctx, args)


@click.group("bench", cls=_BenchGroup, invoke_without_command=False,
             context_settings={"help_option_names": ["-h", "--help"]})
def bench_cmd() -> None:
    """Accuracy, speed and scale on any music folder, side by side with peers.

    \b
    fp bench CATALOGUE --negatives OTHER --out bench-out/
    fp bench CATALOGUE --negatives OTHER --quick
    fp bench CATALOGUE ... --peer audfprint=PATH/TO/audfprint
    fp bench CATALOGUE ... --compare old/results.json
    fp bench scale --tracks 100000
    fp bench derivation --out bench-deriv/
    fp bench scan --index IDX --catalogue CAT --negatives OTHER --out bench-scan/
    fp bench resume --index IDX --files 1000 --kills 5 --out bench-resume/
    """


@bench_cmd.command("run")
@click.argument("catalogue", type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.option("--negatives", type=click.Path(exists=True, file_okay=False, path_type=Path),
              default=None, help="Non-catalogue music (negatives and mixing material).")
@click.option("--out", "out_dir", type=click.Path(file_okay=False, path_type=Path),
              default=Path("bench-out"), show_default=True)
@click.option("--quick", is_flag=True, help="~2 min smoke run (subset of transforms and catalogue).")
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--transform", "transforms", multiple=True,
              help="Transform name or family (repeatable; default: every transform with a target). "
                   "'extended': the transforms no target names (EQ, dynamics, heavy room, "
                   "wobbling speed, chopped samples, stems, ...).")
@click.option("--queries", "n_queries", type=click.IntRange(1, 100000), default=None,
              help="Excerpts per transform (default 60, quick 12).")
@click.option("-j", "--jobs", type=click.IntRange(1, 256), default=usable_cpus(),
              show_default=True)
@click.option("--peer", "peers", multiple=True, metavar="NAME=PATH",
              help="Peer system measured on the same queries, e.g. audfprint=~/src/audfprint.")
@click.option("--compare", type=click.Path(exists=True, dir_okay=False, path_type=Path),
              default=None, help="Previous results.json: adds a before/after table.")
def run_cmd(catalogue, negatives, out_dir, quick, seed, transforms, n_queries, jobs, peers,
            compare):
    """Run the benchmark on CATALOGUE and write results.json, results.md and plots."""
    from earmark.bench.peers import make_peer
    from earmark.bench.runner import run_bench

    try:
        peer_objs = [make_peer(p) for p in peers]
        if transforms:
            from earmark.bench.transforms import get_transforms

            get_transforms(transforms)
    except ValueError as e:
        raise click.BadParameter(str(e).splitlines()[0])
    run_bench(catalogue, negatives, out_dir, quick=quick, seed=seed,
              transforms=list(transforms) or None, n_queries=n_queries, jobs=jobs,
              peers=peer_objs, compare=compare)
    click.echo(f"wrote {out_dir / 'results.json'}, {out_dir / 'results.md'} and plots")


@bench_cmd.command("scale")
@click.option("--tracks", type=click.IntRange(10, 10_000_000), default=100_000, show_default=True)
@click.option("--steps", default="1000,10000,100000", show_default=True,
              help="Catalogue sizes measured (comma-separated).")
@click.option("--out", "out_dir", type=click.Path(file_okay=False, path_type=Path),
              default=Path("bench-out"), show_default=True)
@click.option("--real-index", type=click.Path(exists=True, file_okay=False, path_type=Path),
              default=None, help="Index whose tracks and hash statistics seed the growth.")
@click.option("--negatives", type=click.Path(exists=True, file_okay=False, path_type=Path),
              default=None)
@click.option("--seed", type=int, default=0, show_default=True)
def scale_cmd(tracks, steps, out_dir, real_index, negatives, seed):
    """Grow the index far past the corpus and measure latency, size, memory, false positives."""
    from earmark.bench.scale import run_scale

    try:
        step_list = tuple(int(s) for s in steps.split(",") if s.strip())
    except ValueError:
        raise click.BadParameter(f"--steps must be comma-separated integers, got {steps!r}")
    doc = run_scale(out_dir, tracks=tracks, steps=step_list, seed=seed, real_index=real_index,
                    negatives_dir=negatives)
    click.echo(json.dumps({k: doc[k] for k in ("steps",) if k in doc}, default=str)[:2000])
    click.echo(f"wrote {out_dir / 'scale.json'} and {out_dir / 'scale.png'}")


@bench_cmd.command("derivation")
@click.option("--out", "out_dir", type=click.Path(file_okay=False, path_type=Path),
              default=Path("bench-derivation"), show_default=True)
@click.option("--pieces", type=click.IntRange(4, 100000), default=60, show_default=True,
              help="Synthetic catalogue compositions (and as many negatives).")
@click.option("--quick", is_flag=True, help="12 pieces, no real catalogue.")
@click.option("--other", "other_dir", type=click.Path(exists=True, file_okay=False, path_type=Path),
              default=None, help="Real non-catalogue music: must never be flagged.")
@click.option("--real-catalogue", type=click.Path(exists=True, file_okay=False, path_type=Path),
              default=None, help="Real catalogue indexed beside the synthetic pieces.")
@click.option("-j", "--jobs", type=click.IntRange(1, 256), default=usable_cpus(),
              show_default=True)
@click.option("--seed", type=int, default=0, show_default=True)
def derivation_cmd(out_dir, pieces, quick, other_dir, real_catalogue, jobs, seed):
    """Composition-level benchmark of the derivation tier (re-rendered, transposed,
    tempo-changed pieces; melody over a new backing; non-catalogue pieces)."""
    from earmark.bench.derivation import results_markdown, run_derivation_bench

    res = run_derivation_bench(out_dir, seed=seed, n_pieces=pieces, quick=quick,
                               other_dir=other_dir, real_catalogue_dir=real_catalogue,
                               jobs=jobs)
    click.echo(results_markdown(res))


@bench_cmd.command("scan")
@click.option("--index", "index_path", required=True,
              type=click.Path(exists=True, file_okay=False, path_type=Path),
              help="Index the files are scanned against.")
@click.option("--inputs", type=click.Path(exists=True, file_okay=False, path_type=Path),
              default=None, help="Folder of audio to scan as it is (else built from "
                                 "--catalogue and --negatives).")
@click.option("--catalogue", type=click.Path(exists=True, file_okay=False, path_type=Path),
              default=None, help="Catalogue folder: excerpts are hidden in built inputs.")
@click.option("--negatives", type=click.Path(exists=True, file_okay=False, path_type=Path),
              default=None, help="Non-catalogue music the built inputs are made of.")
@click.option("--files", "n_files", type=click.IntRange(1, 100000), default=40,
              show_default=True, help="Built inputs (30-180 s each).")
@click.option("--min-seconds", type=click.FloatRange(2, None), default=30.0, show_default=True)
@click.option("--max-seconds", type=click.FloatRange(2, None), default=180.0, show_default=True)
@click.option("--out", "out_dir", type=click.Path(file_okay=False, path_type=Path),
              default=Path("bench-scan"), show_default=True)
@click.option("-j", "--jobs", type=click.IntRange(1, 256), default=usable_cpus(),
              show_default=True, help="Workers of the parallel scan run (compared with -j 1).")
@click.option("--fast", is_flag=True, help="Scan with plain matching (fp scan --fast).")
@click.option("--recordings-only", is_flag=True,
              help="Scan without the derivation tier (fp scan --recordings-only).")
@click.option("--min-significance", type=click.FloatRange(0, None), default=None,
              help="Passed to fp scan (default: the preset's threshold).")
@click.option("--repeats", type=click.IntRange(1, 20), default=1, show_default=True,
              help="Alternating -j 1 / -j N scan runs; the fastest of each is kept.")
@click.option("--transformed-share", type=click.FloatRange(0, 1), default=0.5,
              show_default=True, help="Share of the built excerpts changed in speed, tempo "
                                      "or key (0: every excerpt verbatim).")
@click.option("--seed", type=int, default=0, show_default=True)
def scan_bench_cmd(index_path, inputs, catalogue, negatives, n_files, min_seconds, max_seconds,
                   out_dir, jobs, fast, recordings_only, min_significance, repeats,
                   transformed_share, seed):
    """Throughput and memory of fp scan (-j 1 and -j N) against decode-only, in one run.

    \b
    fp bench scan --index IDX --inputs FOLDER --out bench-scan/
    fp bench scan --index IDX --catalogue CAT --negatives OTHER --files 40 --out bench-scan/
    """
    from earmark.bench.scan import run_scan_bench

    if inputs is None and (catalogue is None or negatives is None):
        raise click.UsageError("give --inputs FOLDER, or --catalogue and --negatives to build "
                               "the inputs")
    if min_seconds > max_seconds:
        raise click.BadParameter("--min-seconds is larger than --max-seconds")
    run_scan_bench(out_dir, index_path, inputs=inputs, catalogue=catalogue,
                   negatives=negatives, n_files=n_files, seed=seed, min_seconds=min_seconds,
                   max_seconds=max_seconds, jobs=jobs, fast=fast,
                   min_significance=min_significance, repeats=repeats,
                   transformed_share=transformed_share, recordings_only=recordings_only)
    click.echo((out_dir / "scan-bench.md").read_text())
    click.echo(f"wrote {out_dir / 'scan-bench.json'} and {out_dir / 'scan-bench.md'}")


@bench_cmd.command("resume")
@click.option("--index", "index_path", required=True,
              type=click.Path(exists=True, file_okay=False, path_type=Path),
              help="Index the files are scanned against.")
@click.option("--files", "n_files", type=click.IntRange(1, 1_000_000), default=1000,
              show_default=True, help="Built inputs (3-6 s each, plus 4 bad files).")
@click.option("--kills", type=click.IntRange(0, 1000), default=5, show_default=True,
              help="Rounds killed with SIGKILL before the last one runs to the end.")
@click.option("--catalogue", type=click.Path(exists=True, file_okay=False, path_type=Path),
              default=None, help="Every tenth input is an excerpt of a file from here.")
@click.option("--out", "out_dir", type=click.Path(file_okay=False, path_type=Path),
              default=Path("bench-resume"), show_default=True)
@click.option("-j", "--jobs", type=click.IntRange(1, 256), default=usable_cpus(),
              show_default=True, help="fp scan workers.")
@click.option("--fast", is_flag=True, help="Scan with plain matching (fp scan --fast).")
@click.option("--stream", is_flag=True,
              help="Scan with fp scan -, the paths arriving on standard input a few at a time.")
@click.option("--seed", type=int, default=0, show_default=True)
def resume_bench_cmd(index_path, n_files, kills, catalogue, out_dir, jobs, fast, stream, seed):
    """fp scan killed with SIGKILL at random moments and resumed: exactly one line per file?

    Exit status 0 when every check holds, 1 when one does not.

    \b
    fp bench resume --index IDX --files 1000 --kills 5 --out bench-resume/
    """
    from earmark.bench.resume import run_resume_bench

    doc = run_resume_bench(out_dir, index_path, n_files=n_files, kills=kills, jobs=jobs,
                           seed=seed, catalogue=catalogue, fast=fast, stream=stream)
    click.echo((out_dir / "resume.md").read_text())
    click.echo(f"wrote {out_dir / 'resume.json'} and {out_dir / 'resume.md'}")
    if not doc["passed"]:
        raise SystemExit(1)
