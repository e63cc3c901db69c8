"""The ``datasel`` command: start and run a run folder, export selections, inspect tables, rebuild the catalog,
list plug-ins."""

from __future__ import annotations

import argparse
import logging
import os
import sys
from pathlib import Path

from datasel.errors import DataselError


def _export(args: argparse.Namespace) -> None:
    from datasel.export import export_selection
    from datasel.export.folder import read_marker

    out = export_selection(args.results, args.selection, args.format, args.out, overwrite=args.overwrite,
                           order=args.order, internal=args.internal, splits=args.splits)
    info = read_marker(out) or {}
    counts = info.get("rows_per_split") or {}
    held = ", ".join(f"{s} {n} rows" + (f" (kept of {info.get('train_rows_total')})" if s == "train" else "")
                     for s, n in counts.items())
    print(f"wrote {args.selection} ({args.format}) to {out}: {held}")


def _show(args: argparse.Namespace) -> None:
    import shutil

    import polars as pl

    from datasel.export.show import show_rows

    shown = show_rows(args.results, args.selection, scores=args.scores)
    total = shown.kept.height + shown.dropped.height
    scores = f"scores {shown.scores} ({shown.scores_from})" if shown.scores else shown.scores_from
    print(f"{args.selection}: {shown.kept.height} of {total} training rows kept; {scores}")
    if shown.others:
        print(f"other columns ({len(shown.others)}, not shown; `datasel export` writes them all): "
              + ", ".join(shown.others))
    parts = [("kept", shown.kept)] + ([("dropped", shown.dropped)] if args.dropped else [])
    # as wide as the terminal, and unwrapped when printed into a pipe or file (no terminal: 250 columns)
    width = shutil.get_terminal_size((250, 24)).columns
    with pl.Config(tbl_rows=args.rows, tbl_cols=-1, fmt_str_lengths=40, tbl_hide_dataframe_shape=True,
                   tbl_width_chars=width):
        for title, df in parts:
            print(f"\n{title}: {df.height} rows, by {shown.sorted_by}" + (f" (first {args.rows})" if df.height > args.rows else ""))
            print(df.select([c for c in shown.columns if c in df.columns]).head(args.rows))


def _inspect(args: argparse.Namespace) -> None:
    import polars as pl

    from datasel.store import read_table

    df = read_table(args.table)
    with pl.Config(tbl_rows=args.rows, tbl_cols=-1, fmt_str_lengths=40):
        print(f"{args.table}: {df.height} rows")
        print(df.head(args.rows))


def _catalog(args: argparse.Namespace) -> None:
    from datasel.store.catalog import build_catalog

    results = Path(args.results)
    if not results.is_dir():
        raise DataselError("no results folder", file=results, fix="run the workflow first")
    for name, n in build_catalog(results, results / "catalog.duckdb").items():
        print(f"{name:20s} {n:>10d} rows")


def _sql(args: argparse.Namespace) -> None:
    import polars as pl

    from datasel.store.catalog import query_frame

    # the catalog's views hold absolute paths, so this works from any folder given --results
    df = query_frame(Path(args.results) / "catalog.duckdb", args.query)
    if df is None:
        return
    if args.csv:
        text = df.write_csv()
        sys.stdout.write(text if text.endswith("\n") else text + "\n")
        return
    with pl.Config(tbl_rows=args.rows, tbl_cols=-1, fmt_str_lengths=60, tbl_hide_column_data_types=True):
        print(df)


def _init(args: argparse.Namespace) -> None:
    from datasel.runfolder import init_folder

    path = init_folder(args.dir, args.template, data=args.data, label=args.label, id_column=args.id,
                       text_column=args.text)
    print(f"wrote {path} (template {args.template}); edit it, then: datasel run {args.dir}")


def _list(args: argparse.Namespace) -> None:
    from datasel.instruct.target_only import TARGET_POLICY
    from datasel.scoring import SCORERS
    from datasel.selection import POLICIES

    print("scoring methods:   ", ", ".join(SCORERS.names()))
    print("selection policies:", ", ".join(POLICIES.names()))
    print(f"instruction data:   {TARGET_POLICY} (the target rows alone, a baseline)")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="datasel", description=__doc__)
    sub = p.add_subparsers(dest="command", required=True)
    e = sub.add_parser("export", help="write the selected examples for a trainer")
    e.add_argument("selection", help="selection name, e.g. el2n_offset_keep50 (see results/selections/)")
    e.add_argument("--format", default="parquet", choices=["parquet", "jsonl", "csv", "hf"])
    e.add_argument("--out", required=True, help="output folder (must be new or empty unless --overwrite)")
    e.add_argument("--results", default="results",
                   help="the workflow's results folder")
    e.add_argument("--overwrite", action="store_true",
                   help="replace an earlier export in --out (only a folder datasel export wrote, nothing else)")
    e.add_argument("--order", choices=["curriculum", "source"], default=None,
                   help="row order: curriculum position (default when the selection has one) or the source's order")
    e.add_argument("--splits", default=None, metavar="train,val,test",
                   help="the splits to write (default: train, the selection's kept rows; val and test are written "
                        "whole, with a split column)")
    e.add_argument("--internal", action="store_true",
                   help="also write the pipeline's own columns (example_id, split, label index, x, ...)")
    e.set_defaults(fn=_export)
    sh = sub.add_parser("show", help="list a selection's kept (and dropped) rows with their scores")
    sh.add_argument("selection", help="selection name (see results/selections/)")
    sh.add_argument("--dropped", action="store_true", help="also list the rows the selection dropped")
    sh.add_argument("--rows", type=int, default=10, help="rows to print per part")
    sh.add_argument("--scores", default=None, help="score table name to show (default: the one the selection used)")
    sh.add_argument("--results", default="results", help="the workflow's results folder")
    sh.set_defaults(fn=_show)
    i = sub.add_parser("inspect", help="print the head of a Parquet table")
    i.add_argument("table")
    i.add_argument("--rows", type=int, default=10)
    i.set_defaults(fn=_inspect)
    c = sub.add_parser("catalog", help="rebuild results/catalog.duckdb")
    c.add_argument("--results", default="results")
    c.set_defaults(fn=_catalog)
    q = sub.add_parser("sql", help="run a SQL query on results/catalog.duckdb and print the result")
    q.add_argument("query", help='e.g. "select method, count(*) from scores group by 1"')
    q.add_argument("--results", default="results", help="the workflow's results folder (from any current folder)")
    q.add_argument("--rows", type=int, default=50, help="rows to print (the table form)")
    q.add_argument("--csv", action="store_true", help="print all rows as CSV instead of a table")
    q.set_defaults(fn=_sql)
    n = sub.add_parser("init", help="start a run folder: write DIR/config.yaml from a template")
    n.add_argument("dir", help="the run folder (created if missing)")
    n.add_argument("--template", default="tabular",
                   help="tabular (your table), text (your texts), default (the embedded experiment) or an experiment "
                        "name from config/experiments/")
    n.add_argument("--data", help="your data file: fills in data.path (and the numeric feature columns)")
    n.add_argument("--label", help="the label column of --data (default: label)")
    n.add_argument("--id", help="your own row-id column of --data")
    n.add_argument("--text", help="the text column of --data (--template text; default: text)")
    n.set_defaults(fn=_init)
    sub.add_parser("run", help="run the workflow in a run folder: datasel run [DIR] [snakemake args...]",
                   add_help=False)
    ls = sub.add_parser("list", help="list registered scoring methods and selection policies")
    ls.set_defaults(fn=_list)
    return p


def _stdout_closed() -> int:
    """The reader of stdout went away (`datasel show ... | head`): stop quietly with the status of a Unix tool that
    SIGPIPE ended (128 + 13). Python flushes stdout again at exit, which would fail once more and print a traceback,
    so stdout is pointed at /dev/null first (the idiom of the Python `signal` docs, "Note on SIGPIPE")."""
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, sys.stdout.fileno())
    os.close(devnull)
    return 141


def main(argv: list[str] | None = None) -> int:
    try:
        try:
            return _main(argv)
        finally:  # also after argparse's --help (SystemExit): a reader that closed the pipe shows here
            sys.stdout.flush()
    except BrokenPipeError:
        return _stdout_closed()


def _main(argv: list[str] | None) -> int:
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(message)s", force=True)  # the CLI owns logging
    argv = sys.argv[1:] if argv is None else list(argv)
    try:
        if argv[:1] == ["run"]:  # everything after DIR goes to Snakemake unparsed (-n, targets, --cores ...)
            from datasel.runfolder import run_folder

            return run_folder(argv[1:])
        args = build_parser().parse_args(argv)
        args.fn(args)
    except DataselError as exc:
        print(f"datasel: error: {exc}", file=sys.stderr)
        return 1
    return 0

if __name__ == "__main__":
    sys.exit(main())
