"""Tables: declared schemas, verified atomic writes (Parquet, JSON, text, checkpoints, folders) and the DuckDB
catalog."""

import os

from datasel.store.atomic import atomic_path, publish_folder, save_checkpoint_file, write_json, write_text
from datasel.store.tables import SCHEMAS, TableSchema, read_table, write_table

# a file a step reads or writes: a str (as Snakemake hands a script its paths) or a pathlib.Path (as tests do)
PathLike = str | os.PathLike[str]

__all__ = ["SCHEMAS", "PathLike", "TableSchema", "atomic_path", "publish_folder", "read_table",
           "save_checkpoint_file", "write_json", "write_table", "write_text"]
