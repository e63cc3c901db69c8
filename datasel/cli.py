"""The ``datasel`` command: start and run a run folder, export selections, inspect tables, rebuild the catalog,
list plug-ins."""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from datasel.errors import DataselError


def _export(args: argparse.Namespace) -> None:
    from datasel.export import export_selection

    out = export_selection(args.results, args.selection, args.format, args.out, overwrite=args.overwrite)
    print(f"wrote {args.selection} ({args.format}) to {out}")


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


def _init(args: argparse.Namespace) -> None:
    from datasel.runfolder import init_folder

    path = init_folder(args.dir, args.template, data=args.data, label=args.label, id_column=args.id)
    print(f"wrote {path} (template {args.template}); edit it, then: datasel run {args.dir}")


def _list(args: argparse.Namespace) -> None:
    from datasel.scoring import SCORERS
    from datasel.selection import POLICIES

    print("scoring methods:   ", ", ".join(SCORERS.names()))
    print("selection policies:", ", ".join(POLICIES.names()))


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="datasel", description=__doc__)
    sub = p.add_subparsers(dest="command", required=True)
    e = sub.add_parser("export", help="write the selected examples for a trainer")
    e.add_argument("selection", help="selection name, e.g. el2n_offset_keep50 (see results/selections/)")
    e.add_argument("--format", default="parquet", choices=["parquet", "jsonl", "hf"])
    e.add_argument("--out", required=True, help="output folder (must be new or empty unless --overwrite)")
    e.add_argument("--results", default="results", help="the workflow's results folder")
    e.add_argument("--overwrite", action="store_true", help="replace a non-empty output folder")
    e.set_defaults(fn=_export)
    i = sub.add_parser("inspect", help="print the head of a Parquet table")
    i.add_argument("table")
    i.add_argument("--rows", type=int, default=10)
    i.set_defaults(fn=_inspect)
    c = sub.add_parser("catalog", help="rebuild results/catalog.duckdb")
    c.add_argument("--results", default="results")
    c.set_defaults(fn=_catalog)
    n = sub.add_parser("init", help="start a run folder: write DIR/config.yaml from a template")
    n.add_argument("dir", help="the run folder (created if missing)")
    n.add_argument("--template", default="tabular",
                   help="tabular (your table), text (your texts), default (the embedded experiment) or an experiment "
                        "name from config/experiments/")
    n.add_argument("--data", help="your data file: fills in data.path (and the numeric feature columns)")
    n.add_argument("--label", help="the label column of --data")
    n.add_argument("--id", help="your own row-id column of --data")
    n.set_defaults(fn=_init)
    sub.add_parser("run", help="run the workflow in a run folder: datasel run [DIR] [snakemake args...]",
                   add_help=False)
    ls = sub.add_parser("list", help="list registered scoring methods and selection policies")
    ls.set_defaults(fn=_list)
    return p


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(message)s")
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
