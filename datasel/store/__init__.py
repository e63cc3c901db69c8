"""Tables: declared schemas, verified atomic writes (Parquet, checkpoints) and the DuckDB catalog."""

from datasel.store.atomic import atomic_path, save_checkpoint_file
from datasel.store.tables import SCHEMAS, TableSchema, read_table, write_table

__all__ = ["SCHEMAS", "TableSchema", "atomic_path", "read_table", "save_checkpoint_file", "write_table"]
