"""How the merge reads staged Parquet: DuckDB's ``read_parquet`` on a local disk, Arrow elsewhere.

This DuckDB has no httpfs (S3) extension, so files on object storage are read through the run's
:mod:`pyarrow.fs` filesystem: a :class:`pyarrow.dataset.Dataset` over them is registered on the
merge's connection and scanned by DuckDB like a table, record batch by record batch (projection
pushed down), so the merge stays inside its one transaction and flat in memory whatever the run's size.
"""

from __future__ import annotations

import itertools

import duckdb
import pyarrow.dataset as ds
import pyarrow.fs as pafs

_names = itertools.count()


def is_local(filesystem: pafs.FileSystem | None) -> bool:
    return filesystem is None or isinstance(filesystem, pafs.LocalFileSystem)


def staged(con: duckdb.DuckDBPyConnection, files: list[str], filesystem: pafs.FileSystem | None,
           params: dict, param: str = "files") -> str:
    """A table expression over ``files`` for the merge's SQL: ``read_parquet($param)`` (with ``params[param]``
    set) on a local disk, else the name of an Arrow dataset registered on ``con``."""
    if is_local(filesystem):
        params[param] = files
        return f"read_parquet(${param})"
    name = f"fredflow_staged_{next(_names)}"
    con.register(name, ds.dataset(files, filesystem=filesystem, format="parquet"))
    return name
