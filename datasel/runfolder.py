"""Run folders: ``datasel init DIR`` writes a starter config, ``datasel run DIR`` runs the repository's workflow there.

A run folder holds one ``config.yaml`` (complete on its own) and, once run, ``results/`` and ``logs/``; the rules,
schemas and profiles stay in the repository, so nothing of it is copied into the folder.
"""

from __future__ import annotations

import difflib
import json
import math
import os
import re
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import yaml

from datasel.errors import ConfigError, DataselError

BUILTIN = ("tabular", "text", "default")
# the text template trains each subset for the steps this many epochs over all the training rows take
TEXT_EPOCHS = 3


def repo_root() -> Path:
    """The repository this package runs from (an editable install, as the README's set-up makes)."""
    root = Path(__file__).resolve().parents[1]
    if not (root / "Snakefile").is_file():
        raise DataselError("the datasel workflow (Snakefile, rules/, config/) is not next to this package",
                           file=root, fix="install datasel from its repository with `pip install -e .`")
    return root


def templates() -> list[str]:
    exps = sorted(p.stem for p in (repo_root() / "config" / "experiments").glob("*.yaml"))
    return [*BUILTIN, *exps]


def template_text(name: str) -> str:
    """A complete, commented config: a built-in template or an experiment (its ``extends`` chain merged in)."""
    from datasel.config import load_config

    root = repo_root()
    if name == "default":
        return (root / "config" / "config.yaml").read_text()
    if name in ("tabular", "text"):
        return (root / "config" / "templates" / f"{name}.yaml").read_text()
    path = root / "config" / "experiments" / f"{name}.yaml"
    if not path.is_file():
        raise ConfigError(f"no template '{name}'", field="--template", fix=f"use one of: {', '.join(templates())}")
    text = path.read_text()
    if "extends" not in (yaml.safe_load(text) or {}):
        return text
    # the run folder must not depend on the repository's files: write the merged config, complete
    merged = load_config([path]).config
    head = "".join(line for line in text.splitlines(keepends=True) if line.startswith("#"))
    note = f"# The experiment config/experiments/{name}.yaml with the config it extends merged in (complete).\n"
    return head + note + yaml.safe_dump(merged, sort_keys=False)


def _scan(path: Path) -> Any:
    import polars as pl

    scanners = {".csv": pl.scan_csv, ".parquet": pl.scan_parquet, ".jsonl": pl.scan_ndjson}
    scanner = scanners.get(path.suffix.lower())
    if scanner is None:
        raise ConfigError(f"unsupported file type '{path.suffix}'", file=path, field="--data",
                          fix="use .csv, .parquet or .jsonl")
    return scanner(path)


def _head(path: Path) -> tuple[dict[str, Any], int]:
    """The file's columns and their types (from its first 100 rows), and its number of rows."""
    import polars as pl

    from datasel.data.sources import check_csv_lines, read_data_file

    if path.suffix.lower() == ".csv":
        check_csv_lines(path)  # a ragged line is named now, not when the run's prepare job reads the file
    try:
        frame = _scan(path).head(100).collect()
        rows = int(_scan(path).select(pl.len()).collect().item())
    except ConfigError:
        raise
    except Exception:
        read_data_file(path)  # names the faulty line of a ragged CSV or a bad JSON line, as `datasel run` would
        raise
    return dict(frame.schema.items()), rows


def _check_column(columns: dict[str, Any], name: str, option: str, data: str, given: bool = True) -> None:
    """Refuse a column the file does not have (a misspelt label would silently become a feature); ``given`` False:
    the template's own default name, which the user did not type."""
    if name in columns:
        return
    close = difflib.get_close_matches(name, list(columns), n=1)
    how = f"use {option} with one of its columns" if not given else "use one of its columns"
    raise ConfigError(f"the file has no column '{name}'" + (f" (did you mean '{close[0]}'?)" if close else "")
                      + ("" if given else f"; '{name}' is the template's default for {option}"),
                      file=data, field=option, fix=f"{how}: {_listing(list(columns))}")


def _listing(names: list[str], most: int = 12) -> str:
    """Names for a message: all of a few, else the first ones and how many more (a 66-column table)."""
    if len(names) <= most:
        return ", ".join(names)
    return f"{', '.join(names[:most - 2])}, ... {names[-1]} ({len(names)} columns)"


def _text_budget(text: str, rows: int, data: str) -> str:
    """Set the text template's training budget to TEXT_EPOCHS epochs over the training rows, in steps, and say so."""
    cfg = yaml.safe_load(text)
    splits, batch = cfg["data"]["splits"], int(cfg["training"]["batch_size"])
    train_rows = max(1, round(rows * (1 - float(splits["val"]) - float(splits["test"]))))
    steps = max(1, math.ceil(TEXT_EPOCHS * train_rows / batch))
    share = round(100 * train_rows / rows)
    line = (f"  budget: {{unit: steps, value: {steps}}}   # the same for every subset: {TEXT_EPOCHS} epochs x "
            f"{train_rows} training rows ({share}% of {rows} in {Path(data).name}) / batch {batch}")
    return re.sub(r"^  budget: .*# BUDGET:.*$", lambda m: line, text, count=1, flags=re.M)


def _set(text: str, key: str, value: object) -> str:
    """Replace the value of the first ``key:`` line (keeping its comment); the value written as YAML (JSON)."""
    pattern = re.compile(rf"^(\s*{re.escape(key)}:\s*)([^#\n]*?)(\s*#.*)?$", re.M)
    if not pattern.search(text):
        raise ConfigError(f"the template has no '{key}' line to fill in", field=f"data.{key}")
    return pattern.sub(lambda m: f"{m.group(1)}{json.dumps(value)}{m.group(3) or ''}", text, count=1)


def init_folder(folder: str | os.PathLike, template: str = "tabular", data: str | None = None,
                label: str | None = None, id_column: str | None = None, text_column: str | None = None) -> Path:
    """Write ``folder/config.yaml`` from a template; never replaces an existing file."""
    folder = Path(folder)
    target = folder / "config.yaml"
    if target.exists():
        raise DataselError("the run folder already has a config", file=target,
                           fix="edit it, remove it yourself, or pick a new folder")
    text = template_text(template)
    if data is not None:
        if template not in ("tabular", "text"):
            raise ConfigError("--data fills in the tabular or text template", field="--data",
                              fix="add --template tabular (or text)")
        src = Path(data).expanduser().resolve()
        if not src.is_file():
            raise ConfigError("data file not found", file=data, field="--data", fix="give the path of your file")
        rel = os.path.relpath(src, folder.resolve())
        text = _set(text, "path", rel if not rel.startswith("..") else str(src))
        if text_column and template != "text":
            raise ConfigError("--text names the text column of the text template", field="--text",
                              fix="add --template text, or leave --text out for a table of numbers")
        if label:
            text = _set(text, "label_column", label)
        if text_column:
            text = _set(text, "text_column", text_column)
        if id_column:
            text = re.sub(r"^  # id_column: id .*$", f"  id_column: {json.dumps(id_column)}", text, count=1, flags=re.M)
        columns, rows = _head(src)
        # every column the config names is checked, the template's defaults too (label, text)
        checks = [(label or "label", "--label", label is not None), (id_column, "--id", True)]
        if template == "text":
            checks.append((text_column or "text", "--text", text_column is not None))
        for name, option, given in checks:
            if name:
                _check_column(columns, name, option, data, given)
        if template == "text":
            import polars as pl

            name = text_column or "text"
            if columns[name] != pl.String:
                raise ConfigError(f"column '{name}' holds {columns[name]}, not text", file=data, field="--text",
                                  fix="name the column of strings with --text")
            text = _text_budget(text, rows, data)
        if template == "tabular":
            exclude = {label or "label", *([id_column] if id_column else []), "split", "id"}
            cols = [c for c, t in columns.items() if t.is_numeric() and c not in exclude]
            if not cols:
                raise ConfigError("the file has no numeric input columns besides the label", file=data,
                                  field="data.feature_columns", fix="check --label, or use --template text")
            text = _set(text, "feature_columns", cols)
    elif label or id_column or text_column:
        raise ConfigError("--label, --id and --text go with --data", field="--label" if label else "--id" if id_column
                          else "--text", fix="add --data your_file.csv")
    folder.mkdir(parents=True, exist_ok=True)
    from datasel.store.atomic import write_text  # here: the store imports polars, which `datasel run` never needs

    try:  # linked into place (exclusive): never a half-written config, never a config someone else wrote replaced
        write_text(target, text, exclusive=True)
    except FileExistsError:
        raise DataselError("the run folder already has a config", file=target,
                           fix="edit it, remove it yourself, or pick a new folder") from None
    return target


def run_folder(argv: list[str]) -> int:
    """``datasel run [DIR] [snakemake args...]``: the repository's Snakefile on DIR/config.yaml, in DIR."""
    folder = "."
    if argv and not argv[0].startswith("-") and Path(argv[0]).is_dir():
        folder, argv = argv[0], argv[1:]
    cfg = Path(folder) / "config.yaml"
    if not cfg.is_file():
        if folder == "." and argv and not argv[0].startswith("-") and not Path(argv[0]).exists():
            # `datasel run myrn`: a misspelt or not yet made folder, not a target of a run in this folder
            raise DataselError(f"no run folder '{argv[0]}' (and no config.yaml here)", file=argv[0],
                               fix=f"datasel init {argv[0]}, or name an existing run folder")
        raise DataselError("no config.yaml in the run folder", file=cfg, fix=f"datasel init {folder}")
    root = repo_root()
    if not any(a.startswith("--configfile") for a in argv):
        # checked here first (no torch, no Snakemake start-up): a mistake in the config is one `datasel: error`
        # naming the file and key, not Snakemake's WorkflowError block with a Snakefile traceback line
        from datasel.config import check_config, data_inputs, load_config

        loaded = load_config([cfg])
        checked = check_config(loaded, root / "workflow" / "schemas")
        if "data" in checked:
            # a data path that is not there, too: paths are relative to the run folder, as in the workflow
            here = os.getcwd()
            os.chdir(folder)
            try:
                data_inputs(checked["data"], loaded.file_of(("data", "path")))
            finally:
                os.chdir(here)
    # `--configfile=X` is one word: the targets the user lists after it stay targets
    cmd = [sys.executable, "-m", "snakemake", "-s", str(root / "Snakefile"), "--directory", folder,
           f"--configfile={cfg.resolve()}", *repo_profiles(argv, root)]
    started = time.time()
    rc = subprocess.call(cmd)
    if rc == 0 and not DRY_RUN.intersection(argv):
        for line in answer_lines(Path(folder), started):
            print(line)
    return rc


# Snakemake options after which nothing ran, so there is no new answer to print
DRY_RUN = frozenset({"-n", "--dry-run", "--dryrun", "--list-rules", "--list", "-l", "--summary", "-S", "--dag",
                     "--rulegraph", "--filegraph", "--unlock", "--cleanup-metadata", "--delete-all-output"})


def answer_lines(folder: Path, started: float) -> list[str]:
    """The exit summary of a successful run: the recommendation and the warnings that change it, read from
    results/report/summary.csv (nothing when the run has no summary, e.g. a features-only run)."""
    import polars as pl

    path = folder / "results" / "report" / "summary.csv"
    if not path.is_file():
        return []
    try:
        row = pl.read_csv(path, columns=["recommendation", "warnings"], n_rows=1, infer_schema=False)
    except (pl.exceptions.PolarsError, OSError):  # a summary from before the columns existed: rerun the report
        return []
    if row.height == 0:
        return []
    when = "written by this run" if path.stat().st_mtime >= started else "up to date, not rebuilt by this run"
    lines = [f"datasel: {row.item(0, 'recommendation')}  ({path.relative_to(folder)}, {when})"]
    warnings = row.item(0, "warnings") or ""
    lines += [f"datasel: warning: {w}" for w in warnings.split(" | ") if w]
    return lines


def repo_profiles(argv: list[str], root: Path) -> list[str]:
    """``--profile NAME`` names the repository's profiles/NAME (slurm, gpu) unless NAME is a folder here.

    Snakemake looks a profile name up in the current folder and the user's config folders, never beside the
    Snakefile, so from a run folder `--profile slurm` would not find the repository's.
    """
    out = list(argv)
    for i, arg in enumerate(out):
        if arg == "--profile" and i + 1 < len(out):
            at, name, prefix = i + 1, out[i + 1], ""
        elif arg.startswith("--profile="):
            at, name, prefix = i, arg.split("=", 1)[1], "--profile="
        else:
            continue
        ours = root / "profiles" / name
        if not Path(name).exists() and ours.is_dir():
            out[at] = prefix + str(ours)
    return out
