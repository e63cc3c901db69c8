"""Tables: declared schemas, atomic Parquet I/O and the DuckDB catalog."""

from datasel.store.tables import SCHEMAS, TableSchema, atomic_path, read_table, write_table

__all__ = ["SCHEMAS", "TableSchema", "atomic_path", "read_table", "write_table"]
