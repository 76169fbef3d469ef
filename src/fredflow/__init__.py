"""fredflow: async, concurrent ingest of FRED time series into DuckDB.

Public API (everything here is in ``__all__``; ``tests/test_api.py`` checks it)::

    from fredflow import ingest, CatalogSpec, Settings
    summary = ingest("data/fred.duckdb", CatalogSpec(series=("GDP", "CPIAUCSL")),
                     settings=Settings.from_env(rate=2))
"""

from .api import ResumableRun, backfill, ingest, resumable_runs, resume
from .errors import (
    BadApiKey, BadRequest, CatalogNotFound, FatalRunError, FredError, FredflowError, RateLimited,
    SeriesNotFound, StoreBusy, TransientError, UsageError,
)
from .options import Mode, RunnerName, RunOptions, Span
from .run.execute import RunSummary
from .settings import Settings
from .sources.fred.catalog import CatalogSpec
from .warehouse import Warehouse

__version__ = "0.1.0"

__all__ = [
    "ingest", "backfill", "resume", "resumable_runs", "ResumableRun", "RunSummary",
    "CatalogSpec", "Settings", "RunOptions", "Mode", "RunnerName", "Span",
    "FredflowError", "UsageError", "FatalRunError", "FredError", "BadApiKey", "BadRequest",
    "CatalogNotFound", "RateLimited", "SeriesNotFound", "StoreBusy", "TransientError",
    "Warehouse",
]
