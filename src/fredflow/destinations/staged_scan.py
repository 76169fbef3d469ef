"""How the merge reads staged Parquet: DuckDB's ``read_parquet`` on a local disk, Arrow elsewhere.

This DuckDB has no httpfs (S3) extension, so files on object storage are read through the run's
:mod:`pyarrow.fs` filesystem: a :class:`pyarrow.dataset.Dataset` over them is registered on the
merge's connection and scanned by DuckDB like a table, record batch by record batch (projection
pushed down), so the merge stays inside its one transaction and flat in memory whatever the run's size.
"""

from __future__ import annotations

import duckdb
import pyarrow.dataset as ds
import pyarrow.fs as pafs


def is_local(filesystem: pafs.FileSystem | None) -> bool:
    return filesystem is None or isinstance(filesystem, pafs.LocalFileSystem)


def staged(con: duckdb.DuckDBPyConnection, name: str, files: list[str],
           filesystem: pafs.FileSystem | None) -> str | None:
    """Make ``name`` a table of the staged ``files`` on ``con`` for the merge's SQL and return it (None: no files).

    On a local disk a temporary view over ``read_parquet`` of the files; elsewhere an Arrow dataset
    through ``filesystem``. Either is scanned afresh by every statement that names it."""
    if not files:
        return None
    if is_local(filesystem):
        # TEMP: a relation's create_view() is stored in the database file, and would outlive the staged files
        paths = ", ".join("'" + f.replace("'", "''") + "'" for f in files)
        con.execute(f'CREATE OR REPLACE TEMP VIEW "{name}" AS SELECT * FROM read_parquet([{paths}])')
    else:
        con.register(name, ds.dataset(files, filesystem=filesystem, format="parquet"))
    return name
