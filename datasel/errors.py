"""User-facing errors.

Every refusal the pipeline makes on bad input is a :class:`DataselError`: it names what was wrong (file, field)
and how to fix it. The CLI and Snakemake scripts print it as one short paragraph instead of a traceback.
"""

from __future__ import annotations

import os
from dataclasses import dataclass


@dataclass
class DataselError(Exception):
    """A refusal with a location and a fix, printed without a traceback."""

    problem: str
    file: str | os.PathLike | None = None
    field: str | None = None
    fix: str | None = None

    def __str__(self) -> str:
        where = []
        if self.file is not None:
            where.append(f"file {os.fspath(self.file)}")
        if self.field is not None:
            where.append(f"field '{self.field}'")
        head = f"{' / '.join(where)}: " if where else ""
        tail = f"\n  fix: {self.fix}" if self.fix else ""
        return f"{head}{self.problem}{tail}"


class ConfigError(DataselError):
    """A config value that cannot work (beyond what the JSON schema can express)."""


class DataError(DataselError):
    """Input data that is malformed, inconsistent or unusable."""
