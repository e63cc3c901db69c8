"""Tables: declared schemas, verified atomic writes (Parquet, JSON, text, checkpoints, folders) and the DuckDB
catalog."""

from datasel.store.atomic import atomic_path, publish_folder, save_checkpoint_file, write_json, write_text
from datasel.store.tables import SCHEMAS, TableSchema, read_table, write_table

__all__ = ["SCHEMAS", "TableSchema", "atomic_path", "publish_folder", "read_table", "save_checkpoint_file",
           "write_json", "write_table", "write_text"]
