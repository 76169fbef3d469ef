"""One typed settings object, built from arguments and environment, passed down.

Environment variables: ``FRED_API_KEY``, ``FRED_API_URL``. The api key is a
:class:`pydantic.SecretStr`: its ``repr``/``str`` print ``**********``, and
:meth:`Settings.public_dict` (what gets stored in ``ingest_runs``) leaves it out.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, SecretStr

DEFAULT_API_URL = "https://api.stlouisfed.org/fred"


class Settings(BaseModel):
    """Everything a run needs to talk to FRED and pace itself.

    ``rate`` is requests per second for the *whole run* (FRED allows ~2/s,
    120/min); ``concurrency`` is the number of requests in flight for the whole
    run; ``max_attempts`` bounds retries of transient failures (5xx, timeouts,
    bad JSON) per request, ``max_throttled_attempts`` bounds retries on 429.
    """

    model_config = ConfigDict(frozen=True)

    api_url: str = DEFAULT_API_URL
    api_key: SecretStr = SecretStr("")
    rate: float = Field(2.0, gt=0)
    burst: int = Field(1, ge=1)
    concurrency: int = Field(8, ge=1)
    timeout: float = Field(30.0, gt=0)
    max_attempts: int = Field(5, ge=1)
    max_throttled_attempts: int = Field(30, ge=1)
    backoff_base: float = Field(0.5, ge=0)
    backoff_max: float = Field(30.0, ge=0)
    page_limit: int = Field(100_000, ge=1, le=100_000)
    # bounds against a hostile or broken upstream (or a proxy in front of it)
    max_retry_after: float = Field(60.0, ge=0)  # longest wait a 429's Retry-After may ask; beyond it, an attempt
    max_body_bytes: int = Field(64 * 1024 * 1024, ge=1024)  # larger answer: a format error (FRED's pages: a few MB)
    max_count: int = Field(20_000_000, ge=1)  # an announced ``count`` above this is refused, not paged through
    page_concurrency: int = Field(4, ge=1)  # pages of one series or listing in flight at once
    # how long the merge waits for DuckDB's write lock (a notebook, a dashboard holding the file) before giving up
    lock_timeout: float = Field(300.0, ge=0)
    # DuckDB's memory cap during the merge: above it, the upsert's hash join spills to <db>.tmp
    # instead of growing (re-merging 20M rows: 0.57 GiB peak at 512MB, 1.57 GiB uncapped; merge_strategies.py).
    merge_memory_limit: str = Field("512MB", pattern=r"^\d+(\.\d+)?\s*(KB|MB|GB|KiB|MiB|GiB)$")
    # HOST:PORT Dask workers reach the run's token service at (NAT, tunnels; [v6]:PORT), env FREDFLOW_QUOTA_ADDRESS
    quota_address: str | None = None
    # one budget per api key (fredflow.ratelimit.budget): "machine" shares the key's schedule with every
    # run on this machine (a file per key hash in budget_dir); "run" paces this run alone
    key_budget: Literal["machine", "run"] = "machine"
    budget_dir: str | None = None  # default $FREDFLOW_BUDGET_DIR, else $XDG_RUNTIME_DIR/fredflow, else ~/.cache
    prefect_limit: str | None = None  # a Prefect global concurrency limit (with slot decay) every run draws from

    @classmethod
    def from_env(cls, **overrides: Any) -> "Settings":
        """Settings from ``FRED_API_URL``/``FRED_API_KEY``, then explicit overrides (None = not given)."""
        values: dict[str, Any] = {}
        if os.environ.get("FRED_API_URL"):
            values["api_url"] = os.environ["FRED_API_URL"]
        if os.environ.get("FRED_API_KEY"):
            values["api_key"] = os.environ["FRED_API_KEY"]
        if os.environ.get("FREDFLOW_QUOTA_ADDRESS"):
            values["quota_address"] = os.environ["FREDFLOW_QUOTA_ADDRESS"]
        values.update({k: v for k, v in overrides.items() if v is not None})
        return cls(**values)

    @property
    def base_url(self) -> str:
        return self.api_url.rstrip("/")

    def public_dict(self) -> dict[str, Any]:
        """The settings without the api key: safe for logs, run records and flow parameters."""
        return self.model_dump(exclude={"api_key"})


def default_staging_root(db_path: Path) -> Path:
    """Staged files of runs into ``db`` live beside it, e.g. ``data/demo.duckdb`` → ``data/demo.staging/``."""
    return db_path.with_name(db_path.stem + ".staging")


def staging_root_for(db_path: str | Path, staging_dir: str | Path | None = None) -> str:
    """Where runs into ``db_path`` stage: ``staging_dir`` if given (a path or a URI such as ``s3://bucket/prefix``),
    else beside the db. A local path is made absolute, because worker processes and a later
    ``fredflow resume`` may run from another directory."""
    text = str(staging_dir) if staging_dir else str(default_staging_root(Path(db_path)))
    return text if "://" in text else str(Path(text).absolute())
