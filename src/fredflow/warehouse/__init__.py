"""The read side: a local FRED/ALFRED over a fredflow DuckDB database.

    from fredflow import Warehouse
    wh = Warehouse("data/fred.duckdb")
    wh.panel(["GDP", "UNRATE"], freq="q", units="pch", asof="2019-01-01").to_pandas()

See ``docs/README-reading.md``.
"""

from fredflow.warehouse.reader import Warehouse
from fredflow.warehouse.sql import install_macros, macro_sql

__all__ = ["Warehouse", "install_macros", "macro_sql"]
