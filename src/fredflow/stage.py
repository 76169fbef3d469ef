"""Staging: each batch's rows as Parquet files plus a manifest, under the run's folder.

Layout of one run (``<staging root>/<run_id>/``)::

    run.json                       what the run was asked to do (no secrets)
    plan.json                      the run's series groups, windows, batch size: `fredflow resume` regenerates its batches
    run.lock                       flock held by the process running the run (a live run is never resumed)
    catalog.series.parquet         series metadata from a listing (release, category, series/updates)
    batch-000007.obs-000.parquet   observations of batch 7 (several files if large)
    batch-000007.vin-000.parquet   vintages of batch 7 (a --vintages run)
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
import fcntl
import os
import shutil
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Iterator

import orjson
import pyarrow as pa
import pyarrow.parquet as pq

from .errors import FatalRunError, StoreBusy
from .parse import SERIES_SCHEMA, STAGED_OBSERVATION_SCHEMA, STAGED_VINTAGE_SCHEMA, with_series_id

FLUSH_ROWS = 1_000_000
_HELD: dict[str, int] = {}  # run folder -> fd of its held run.lock (this process)


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
    vintage_files: list[str] = field(default_factory=list)
    rows: int = 0
    succeeded: list[str] = field(default_factory=list)
    failures: list[SeriesFailure] = field(default_factory=list)
    requests: int = 0
    retries: int = 0
    throttled: int = 0
    seconds: float = 0.0
    first_request_at: float | None = None
    last_request_at: float | None = None
    batch_key: str = ""  # Batch.key of the batch it describes: a resume checks it against the plan

    @property
    def n_series(self) -> int:
        return len(self.succeeded) + len(self.failures)

    def check_files(self) -> str | None:
        """Why the staged files do not match this manifest (missing, unreadable, wrong row count), or None.

        Every file is read to the end (its data pages, not only its footer), a
        batch at a time, so a file damaged in the middle is caught here and not
        by the merge.
        """
        staged_rows = 0
        for path in self.observation_files + self.vintage_files + self.series_files:
            try:
                rows = sum(b.num_rows for b in pq.ParquetFile(path).iter_batches(batch_size=65536))
            except (OSError, pa.ArrowException) as exc:
                return f"{Path(path).name}: {exc}"
            if path not in self.series_files:
                staged_rows += rows
        if staged_rows != self.rows:
            return f"batch {self.batch_index}: {staged_rows} rows staged, manifest says {self.rows}"
        return None

    def to_json(self) -> bytes:
        return orjson.dumps(asdict(self))

    @classmethod
    def from_json(cls, raw: bytes) -> "BatchManifest":
        doc = orjson.loads(raw)
        doc["failures"] = [SeriesFailure(**f) for f in doc["failures"]]
        known = set(cls.__dataclass_fields__)
        return cls(**{k: v for k, v in doc.items() if k in known})


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

    def write_plan(self, plan: dict[str, Any]) -> None:
        _atomic_write_bytes(self.path / "plan.json", orjson.dumps(plan, default=str))

    def read_plan(self) -> dict[str, Any] | None:
        """The plan, None if there is none; ``ValueError`` if it is damaged."""
        try:
            doc = orjson.loads((self.path / "plan.json").read_bytes())
        except FileNotFoundError:
            return None
        except orjson.JSONDecodeError as exc:
            raise ValueError(f"not valid JSON: {exc}") from None
        if not isinstance(doc, dict):
            raise ValueError("not a plan")
        return doc

    def hold(self) -> None:
        """Take the run's lock for this process's lifetime (until :meth:`release`); :class:`StoreBusy`
        if another live process holds it. The kernel drops it when the process dies."""
        fd = os.open(self.path / "run.lock", os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 32, 0).decode(errors="replace").strip()
            os.close(fd)
            raise StoreBusy(f"run {self.run_id} is still running" + (f" (pid {holder})" if holder else "")
                            + "; wait for it to finish") from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        _HELD[str(self.path)] = fd

    def release(self) -> None:
        fd = _HELD.pop(str(self.path), None)
        if fd is not None:
            os.close(fd)

    def is_held(self) -> bool:
        """True while some live process runs this run (holds its lock)."""
        if str(self.path) in _HELD:
            return True
        try:
            fd = os.open(self.path / "run.lock", os.O_RDONLY)
        except FileNotFoundError:
            return False
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
            return False
        except BlockingIOError:
            return True
        finally:
            os.close(fd)

    def read_run_info(self) -> dict[str, Any]:
        return orjson.loads((self.path / "run.json").read_bytes())

    def discard_batch(self, batch_index: int) -> None:
        """Drop a batch's manifest and files: it will be fetched again."""
        for path in self.path.glob(f"batch-{batch_index:06d}.*"):
            path.unlink(missing_ok=True)

    @property
    def catalog_files(self) -> list[str]:
        path = self.path / "catalog.series.parquet"
        return [str(path)] if path.exists() else []

    def batch_writer(self, batch_index: int, flush_rows: int = FLUSH_ROWS) -> "BatchWriter":
        return BatchWriter(self.path, batch_index, flush_rows)

    def manifests(self) -> list[BatchManifest]:
        """Manifests of the batches completed so far, in batch order; a damaged one drops its batch."""
        out = []
        for path in sorted(self.path.glob("batch-*.manifest.json")):
            try:
                out.append(BatchManifest.from_json(path.read_bytes()))
            except (OSError, ValueError, TypeError, KeyError):
                self.discard_batch(int(path.name.split(".")[0].split("-")[1]))
        return out

    def remove(self) -> None:
        self.release()
        shutil.rmtree(self.path, ignore_errors=True)


class _StagedRows:
    """One kind of staged rows of a batch (observations or vintages): tables collected, then written
    as ``<prefix>.<kind>-NNN.parquet`` whenever ``flush_rows`` rows are pending."""

    def __init__(self, run_dir: Path, prefix: str, kind: str, schema: pa.Schema, flush_rows: int) -> None:
        self._stem = run_dir / f"{prefix}.{kind}"
        self._schema = schema
        self._flush_rows = flush_rows
        self._pending: list[pa.Table] = []
        self._pending_rows = 0
        self.files: list[str] = []

    def add(self, series_id: str, rows: pa.Table) -> None:
        self._pending.append(with_series_id(series_id, rows))
        self._pending_rows += rows.num_rows
        if self._pending_rows >= self._flush_rows:
            self.flush()

    def flush(self) -> None:
        if not self._pending:
            return
        path = self._stem.with_name(f"{self._stem.name}-{len(self.files):03d}.parquet")
        _write_parquet(path, pa.concat_tables(self._pending).select(self._schema.names).cast(self._schema))
        self.files.append(str(path))
        self._pending, self._pending_rows = [], 0


class BatchWriter:
    """Collects one batch's tables and writes them as Parquet, flushing every ``flush_rows`` rows."""

    def __init__(self, run_dir: Path, batch_index: int, flush_rows: int) -> None:
        self._run_dir = run_dir
        self._prefix = f"batch-{batch_index:06d}"
        self._observations = _StagedRows(run_dir, self._prefix, "obs", STAGED_OBSERVATION_SCHEMA, flush_rows)
        self._vintages = _StagedRows(run_dir, self._prefix, "vin", STAGED_VINTAGE_SCHEMA, flush_rows)
        self._series: list[pa.Table] = []
        self.rows = 0

    def add_observations(self, series_id: str, observations: pa.Table) -> None:
        self._observations.add(series_id, observations)
        self.rows += observations.num_rows

    def add_vintages(self, series_id: str, vintages: pa.Table) -> None:
        self._vintages.add(series_id, vintages)
        self.rows += vintages.num_rows

    def add_series(self, series: pa.Table) -> None:
        self._series.append(series)

    def finish(self, manifest: BatchManifest) -> BatchManifest:
        """Write the remaining files, then the manifest (last), and return it."""
        self._observations.flush()
        self._vintages.flush()
        manifest.observation_files = list(self._observations.files)
        manifest.vintage_files = list(self._vintages.files)
        manifest.rows = self.rows
        if self._series:
            path = self._run_dir / f"{self._prefix}.series.parquet"
            _write_parquet(path, pa.concat_tables(self._series).cast(SERIES_SCHEMA))
            manifest.series_files = [str(path)]
        _atomic_write_bytes(self._run_dir / f"{self._prefix}.manifest.json", manifest.to_json())
        return manifest
