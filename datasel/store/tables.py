"""Declared table schemas and atomic Parquet reads/writes.

A table that fails its schema is refused at the boundary (read or write), so a bad column is reported against the
file that holds it rather than surfacing later as a polars or torch traceback. A schema also declares where its
files live under a run folder (``files``): the catalog builds one view per schema from exactly those files.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field, replace
from pathlib import Path

import polars as pl

from datasel.errors import DataError
from datasel.store.atomic import atomic_path, incomplete


@dataclass(frozen=True)
class TableSchema:
    """Required columns and their dtypes; extra columns are kept unless ``closed``.

    ``files``: glob patterns, relative to a run folder (``results/`` or ``results/quality/noise20/``), of the Parquet
    files that hold this table; ``**`` spans folders. A schema without patterns gets no catalog view.
    """

    name: str
    columns: dict[str, pl.DataType]
    optional: dict[str, pl.DataType] = field(default_factory=dict)
    closed: bool = False
    unique: tuple[str, ...] = ()
    files: tuple[str, ...] = ()

    def validate(self, df: pl.DataFrame, source: str | os.PathLike) -> pl.DataFrame:
        """Check columns and dtypes, cast lossless widenings, and return the conformed frame."""
        missing = [c for c in self.columns if c not in df.columns]
        if missing:
            raise DataError(
                f"table '{self.name}' lacks column(s) {missing}; it has {df.columns}",
                file=source,
                field=missing[0],
                fix=f"add the column(s) {missing} (schema: {self.describe()})",
            )
        casts = []
        for name, dtype in {**self.columns, **self.optional}.items():
            if name not in df.columns or df.schema[name] == dtype:
                continue
            if not _castable(df.schema[name], dtype):
                raise DataError(
                    f"column '{name}' of table '{self.name}' has dtype {df.schema[name]}, expected {dtype}",
                    file=source,
                    field=name,
                    fix=f"write '{name}' as {dtype}",
                )
            casts.append(pl.col(name).cast(dtype, strict=True))
        if casts:
            df = df.with_columns(casts)
        if self.closed:
            df = df.select([c for c in df.columns if c in self.columns or c in self.optional])
        for key in self.unique:
            # an optional column the frame lacks drops out of the key ("draw+example_id" of a one-draw table)
            parts = [p for p in key.split("+") if p in df.columns or p not in self.optional]
            dup = df.filter(pl.struct(parts).is_duplicated()) if len(parts) > 1 else df.filter(
                pl.col(parts[0]).is_duplicated()
            )
            if dup.height:
                shown = dup.get_column(next((p for p in parts if p not in self.optional), parts[0])).head(3).to_list()
                raise DataError(
                    f"table '{self.name}' has {dup.height} rows with a duplicated '{key}' (e.g. {shown})",
                    file=source,
                    field=key,
                    fix=f"make '{key}' unique (drop or merge the duplicate rows)",
                )
        return df

    def describe(self) -> str:
        return ", ".join(f"{k}: {v}" for k, v in self.columns.items())


def _castable(have: pl.DataType, want: pl.DataType) -> bool:
    """Only widenings that cannot change a value are cast silently."""
    if have == pl.Null:
        return True
    if want.is_integer() and have.is_integer():
        return True
    if want.is_float() and (have.is_float() or have.is_integer()):
        return True
    if isinstance(want, pl.List) and isinstance(have, (pl.List, pl.Array)):
        inner = have.inner if hasattr(have, "inner") else None
        return inner is not None and _castable(inner, want.inner)
    if want == pl.String and have in (pl.Categorical, pl.Enum):
        return True
    return False


SCHEMAS: dict[str, TableSchema] = {
    s.name: s
    for s in [
        TableSchema(
            "examples",
            {
                "example_id": pl.String,
                "source": pl.String,
                "split": pl.String,
                "label": pl.Int64,
                "label_orig": pl.Int64,
                "is_noisy": pl.Boolean,
            },
            optional={"x": pl.List(pl.Float32), "text": pl.String, "domain": pl.String, "source_row": pl.Int64},
            unique=("example_id",),
            # by name, not by folder: other stages keep their own example tables here (dga_domains below)
            files=("examples/examples.parquet",),
        ),
        TableSchema(
            "scores",
            {"example_id": pl.String, "method": pl.String, "score": pl.Float64, "rank": pl.Int64},
            unique=("example_id",),
            files=("scores/*.parquet",),
        ),
        TableSchema(
            "selections",
            {
                "selection": pl.String,
                "example_id": pl.String,
                "selected": pl.Boolean,
                "weight": pl.Float64,
                "position": pl.Int64,
            },
            # a stochastic policy's table holds one subset per training seed (datasel.selection.draws)
            optional={"draw": pl.Int64},
            unique=("draw+example_id",),
            files=("selections/*.parquet",),
        ),
        TableSchema(
            "metrics",
            {
                "selection": pl.String,
                "method": pl.String,
                "fraction": pl.Float64,
                "seed": pl.Int64,
                "split": pl.String,
                "metric": pl.String,
                "value": pl.Float64,
            },
            files=("metrics/**/*.parquet",),
        ),
        TableSchema(
            # a target run's validation accuracy and loss at training.curve_points evenly spaced steps
            # (datasel.training.curves); beside metrics/, not under it, so the catalog's metrics view stays final
            "curves",
            {
                "selection": pl.String,
                "method": pl.String,
                "fraction": pl.Float64,
                "seed": pl.Int64,
                "step": pl.Int64,
                "steps": pl.Int64,
                "split": pl.String,
                "metric": pl.String,
                "value": pl.Float64,
            },
            files=("curves/*/*.parquet",),
        ),
        TableSchema(
            # per example and epoch of a proxy run: correct at presentation, and the margin (datasel.training.dynamics)
            "proxy_epochs",
            {"example_id": pl.String, "seed": pl.Int64, "epoch": pl.Int64, "correct": pl.Boolean,
             "margin": pl.Float32},
            unique=("example_id+epoch",),
            files=("proxy/*/epochs.parquet",),
        ),
        TableSchema(
            "domain_weights",
            {"run": pl.String, "step": pl.Int64, "domain": pl.String, "weight": pl.Float64},
            files=("domain_weights/*.parquet",),
        ),
        TableSchema(
            "prompt_stats",
            {
                "run": pl.String,
                "iteration": pl.Int64,
                "prompt_id": pl.String,
                "alpha": pl.Float64,
                "beta": pl.Float64,
                "p_hat": pl.Float64,
                "sigma": pl.Float64,
                "rho": pl.Float64,
                "rollouts": pl.Int64,
            },
            files=("prompt_stats/*.parquet",),
        ),
        TableSchema(
            "param_scores",
            {
                "method": pl.String,
                "tensor": pl.String,
                "numel": pl.Int64,
                "sparsity": pl.Float64,
            },
            files=("param_scores/*.parquet",),
        ),
        TableSchema(
            "rl_prompts",
            {
                "prompt_id": pl.String,
                "split": pl.String,
                "source": pl.String,
                "question": pl.String,
                "answer": pl.String,
            },
            optional={"level": pl.String, "digits": pl.Int64, "n_ops": pl.Int64, "carries": pl.Int64},
            unique=("prompt_id",),
            files=("rl_prompts/prompts.parquet",),
        ),
    ]
}
# The DGA stage's own example table (domains as labels) has the examples schema but is another dataset: its own view.
SCHEMAS["dga_domains"] = replace(SCHEMAS["examples"], name="dga_domains", files=("examples/dga_domains.parquet",))


def write_table(df: pl.DataFrame, path: str | os.PathLike, schema: str | TableSchema) -> Path:
    """Validate ``df`` against ``schema`` and write it to ``path`` atomically."""
    schema = SCHEMAS[schema] if isinstance(schema, str) else schema
    df = schema.validate(df, path)
    with atomic_path(path, verify=lambda tmp: verify_parquet(tmp, df.height)) as tmp:
        df.write_parquet(tmp, statistics=True)
    return Path(path)


def verify_parquet(path: str | os.PathLike, rows: int) -> None:
    """Re-open a just-written Parquet file: its footer must parse and declare ``rows`` rows."""
    try:
        got = pl.scan_parquet(path, glob=False).select(pl.len()).collect().item()  # a name with [ or * is a name
    except Exception as exc:  # a truncated file has no footer: polars raises ComputeError/OSError
        raise incomplete(path, f"the Parquet footer cannot be read ({str(exc).splitlines()[0][:160]})") from exc
    if got != rows:
        raise incomplete(path, f"the file holds {got} rows, {rows} were written")


def read_table(path: str | os.PathLike, schema: str | TableSchema | None = None) -> pl.DataFrame:
    """Read a Parquet table, refusing missing, truncated or schema-breaking files with a clear error."""
    path = Path(path)
    if not path.exists():
        raise DataError("the table file does not exist", file=path, fix="run the step that produces it first")
    try:
        df = pl.read_parquet(path, glob=False)  # a folder named "a[1]" is a name, not a pattern
    except Exception as exc:  # polars raises several types for corrupt input
        raise DataError(
            f"cannot read as Parquet ({type(exc).__name__}: {str(exc).splitlines()[0][:160]})",
            file=path,
            fix="the file is truncated or not Parquet; delete it and rerun the step that writes it",
        ) from None
    if schema is not None:
        schema = SCHEMAS[schema] if isinstance(schema, str) else schema
        df = schema.validate(df, path)
    return df
