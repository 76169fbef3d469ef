"""fredflow: async, concurrent ingest of FRED time series into DuckDB.

Public API::

    from fredflow import ingest, CatalogSpec, Settings
    summary = ingest("data/fred.duckdb", CatalogSpec(series=("GDP", "CPIAUCSL")),
                     settings=Settings.from_env(rate=2))
"""

from .catalog import CatalogSpec
from .errors import (
    BadApiKey, BadRequest, CatalogNotFound, FatalRunError, FredError, FredflowError, RateLimited,
    SeriesNotFound, StoreBusy, TransientError, UsageError,
)
from .pipeline import RunSummary, ingest
from .settings import Settings
from .warehouse import Warehouse

__version__ = "0.1.0"

__all__ = [
    "ingest", "RunSummary", "CatalogSpec", "Settings",
    "FredflowError", "UsageError", "FatalRunError", "FredError", "BadApiKey", "BadRequest",
    "CatalogNotFound", "RateLimited", "SeriesNotFound", "StoreBusy", "TransientError",
    "Warehouse",
]
