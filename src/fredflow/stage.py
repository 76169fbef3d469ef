"""Staging: each batch's rows as Parquet files plus a manifest, under the run's folder.

Layout of one run (``<staging root>/<run_id>/``)::

    run.json                       what the run was asked to do (no secrets)
    catalog.series.parquet         series metadata from a release/category listing
    batch-000007.obs-000.parquet   observations of batch 7 (several files if large)
    batch-000007.series.parquet    metadata fetched for batch 7
    batch-000007.manifest.json     written last: the batch is complete

Files are written under a temporary name and renamed, and the manifest comes
last, so a manifest on disk always describes complete files. Rows are flushed
every ``flush_rows`` observations: a batch never holds more than that in memory.
A write that fails (disk full, read-only) raises a one-line
:class:`~fredflow.errors.FatalRunError`: the run stops and commits nothing.
"""

from __future__ import annotations

import contextlib
import os
import shutil
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Iterator

import orjson
import pyarrow as pa
import pyarrow.parquet as pq

from .errors import FatalRunError
from .parse import SERIES_SCHEMA, STAGED_OBSERVATION_SCHEMA, with_series_id

FLUSH_ROWS = 1_000_000


@dataclass(frozen=True, slots=True)
class SeriesFailure:
    """A series that failed permanently in a batch (after retries, when retriable)."""

    series_id: str
    http_status: int | None
    message: str
    attempts: int


@dataclass(slots=True)
class BatchManifest:
    """What one batch did: small, JSON-serialisable, what runners pass back to the merge."""

    batch_index: int
    observation_files: list[str] = field(default_factory=list)
    series_files: list[str] = field(default_factory=list)
    rows: int = 0
    succeeded: list[str] = field(default_factory=list)
    failures: list[SeriesFailure] = field(default_factory=list)
    requests: int = 0
    retries: int = 0
    throttled: int = 0
    seconds: float = 0.0
    first_request_at: float | None = None
    last_request_at: float | None = None

    @property
    def n_series(self) -> int:
        return len(self.succeeded) + len(self.failures)

    def to_json(self) -> bytes:
        return orjson.dumps(asdict(self))

    @classmethod
    def from_json(cls, raw: bytes) -> "BatchManifest":
        doc = orjson.loads(raw)
        doc["failures"] = [SeriesFailure(**f) for f in doc["failures"]]
        return cls(**doc)


@contextlib.contextmanager
def _staging_write(path: Path) -> Iterator[Path]:
    """Write ``path`` through ``<path>.tmp``. A disk error (full, read-only, gone) becomes a
    one-line :class:`FatalRunError`: the run cannot stage, so it stops and commits nothing."""
    tmp = path.with_name(path.name + ".tmp")
    try:
        yield tmp
        os.replace(tmp, path)
    except OSError as exc:
        with contextlib.suppress(OSError):
            tmp.unlink(missing_ok=True)
        reason = exc.strerror or " ".join(str(exc).split())
        raise FatalRunError(f"cannot write staging file {path}: {reason}; free space there "
                            "or choose another --staging-dir") from None


def _atomic_write_bytes(path: Path, payload: bytes) -> None:
    with _staging_write(path) as tmp, open(tmp, "wb") as fh:
        fh.write(payload)
        fh.flush()
        os.fsync(fh.fileno())


def _write_parquet(path: Path, table: pa.Table) -> None:
    with _staging_write(path) as tmp:
        pq.write_table(table, tmp)


class RunStaging:
    """The staging folder of one run."""

    def __init__(self, root: Path, run_id: str) -> None:
        self.run_id = run_id
        self.path = Path(root) / run_id

    def create(self, run_info: dict[str, Any]) -> "RunStaging":
        self.path.mkdir(parents=True, exist_ok=False)
        try:
            _atomic_write_bytes(self.path / "run.json", orjson.dumps(run_info, default=str))
        except BaseException:
            self.remove()
            raise
        return self

    def write_catalog(self, series: pa.Table) -> str:
        path = self.path / "catalog.series.parquet"
        _write_parquet(path, series.cast(SERIES_SCHEMA))
        return str(path)

    @property
    def catalog_files(self) -> list[str]:
        path = self.path / "catalog.series.parquet"
        return [str(path)] if path.exists() else []

    def batch_writer(self, batch_index: int, flush_rows: int = FLUSH_ROWS) -> "BatchWriter":
        return BatchWriter(self.path, batch_index, flush_rows)

    def manifests(self) -> list[BatchManifest]:
        """Manifests of the batches completed so far, in batch order."""
        return [BatchManifest.from_json(p.read_bytes()) for p in sorted(self.path.glob("batch-*.manifest.json"))]

    def remove(self) -> None:
        shutil.rmtree(self.path, ignore_errors=True)


class BatchWriter:
    """Collects one batch's tables and writes them as Parquet, flushing every ``flush_rows`` rows."""

    def __init__(self, run_dir: Path, batch_index: int, flush_rows: int) -> None:
        self._run_dir = run_dir
        self._prefix = f"batch-{batch_index:06d}"
        self._flush_rows = flush_rows
        self._pending: list[pa.Table] = []
        self._pending_rows = 0
        self._series: list[pa.Table] = []
        self.observation_files: list[str] = []
        self.rows = 0

    def add_observations(self, series_id: str, observations: pa.Table) -> None:
        self._pending.append(with_series_id(series_id, observations))
        self._pending_rows += observations.num_rows
        self.rows += observations.num_rows
        if self._pending_rows >= self._flush_rows:
            self._flush()

    def add_series(self, series: pa.Table) -> None:
        self._series.append(series)

    def _flush(self) -> None:
        if not self._pending:
            return
        path = self._run_dir / f"{self._prefix}.obs-{len(self.observation_files):03d}.parquet"
        _write_parquet(path, pa.concat_tables(self._pending).cast(STAGED_OBSERVATION_SCHEMA))
        self.observation_files.append(str(path))
        self._pending, self._pending_rows = [], 0

    def finish(self, manifest: BatchManifest) -> BatchManifest:
        """Write the remaining files, then the manifest (last), and return it."""
        self._flush()
        manifest.observation_files = list(self.observation_files)
        manifest.rows = self.rows
        if self._series:
            path = self._run_dir / f"{self._prefix}.series.parquet"
            _write_parquet(path, pa.concat_tables(self._series).cast(SERIES_SCHEMA))
            manifest.series_files = [str(path)]
        _atomic_write_bytes(self._run_dir / f"{self._prefix}.manifest.json", manifest.to_json())
        return manifest
