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

Guarantee: a manifest on disk always describes complete files. Files are written under a
temporary name and renamed, and the manifest comes last. Rows are flushed every
``flush_rows`` observations: a batch never holds more than that in memory. A write that
fails (disk full, read-only) raises a one-line :class:`~fredflow.errors.FatalRunError`: the
run stops and commits nothing.

Every file operation goes through a :mod:`pyarrow.fs` filesystem (``RunStaging(..., filesystem=)``):
the local disk today; a staging root given as a URI (``s3://bucket/prefix``) picks pyarrow's
filesystem for it. The run lock is a :class:`PidLock` (flock) on a local folder and a lease object
(:mod:`fredflow.staging_lease`) on object storage, where files are written by one PUT each, no rename.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import posixpath
from dataclasses import asdict, dataclass, field
from typing import Any, Iterator

import orjson
import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from .errors import FatalRunError, StoreBusy
from .sources.fred.parse import SERIES_SCHEMA, STAGED_OBSERVATION_SCHEMA, STAGED_VINTAGE_SCHEMA, with_series_id

FLUSH_ROWS = 1_000_000


class PidLock:
    """An exclusive ``flock`` on ``path``, which holds the holder's pid while held (the file stays).

    The kernel drops the lock when the holding process dies, so a killed run never leaves it
    held. :meth:`acquire` raises :class:`LockHeld` with the holder's pid when another live
    process holds it. Used for a database's run lock and for each run's staging folder.
    """

    __slots__ = ("path", "_fd")

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = os.fspath(path)
        self._fd: int | None = None

    def acquire(self) -> None:
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 32, 0).decode(errors="replace").strip()
            os.close(fd)
            raise LockHeld(holder) from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        self._fd = fd

    def release(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None

    @property
    def held(self) -> bool:
        """Held by this process."""
        return self._fd is not None

    def is_locked(self) -> bool:
        """Held by some live process (this one included)."""
        if self._fd is not None:
            return True
        try:
            fd = os.open(self.path, os.O_RDONLY)
        except FileNotFoundError:
            return False
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
            return False
        except BlockingIOError:
            return True
        finally:
            os.close(fd)


class LockHeld(Exception):
    """Another live process holds a :class:`PidLock`; ``holder`` is its pid (as text, may be empty)."""

    def __init__(self, holder: str) -> None:
        super().__init__(holder)
        self.holder = holder


_HELD: dict[str, PidLock] = {}  # run folder -> its held run.lock (this process)


def filesystem_for(root: str | os.PathLike[str]) -> tuple[pafs.FileSystem, str]:
    """The filesystem and path of a staging root: a URI (``s3://…``, ``file://…``) or a local path (made absolute,
    because worker processes and a later ``fredflow resume`` may run from another directory)."""
    text = os.fspath(root)
    if "://" in text:
        try:
            fs, path = pafs.FileSystem.from_uri(text)
        except (pa.ArrowException, ValueError) as exc:
            raise FatalRunError(f"cannot use staging {text}: {exc}") from None
        return _patient(fs), path
    return pafs.LocalFileSystem(), os.path.abspath(text)


#: S3 timeouts and attempts, explicit: a request that receives under 1 byte/s for ``request`` seconds
#: fails and is retried, at most ``attempts`` times in all, so a stalled server becomes a one-line
#: :class:`FatalRunError` within about ``attempts x request`` seconds, never a hang. The SDK's default
#: (3 s) fails a merge on a slow link; a URI cannot set these (pyarrow rejects the parameters).
#: ``FREDFLOW_S3_REQUEST_TIMEOUT`` (seconds) overrides ``request`` in every process that reads it.
S3_REQUEST_TIMEOUT_S, S3_CONNECT_TIMEOUT_S, S3_ATTEMPTS = 30.0, 10.0, 3


def _patient(fs: pafs.FileSystem) -> pafs.FileSystem:
    """An S3 filesystem with explicit timeouts and retries (see :data:`S3_REQUEST_TIMEOUT_S`); others as given."""
    if not isinstance(fs, getattr(pafs, "S3FileSystem", ())):
        return fs
    rebuild, (options,) = fs.__reduce__()
    request = float(os.environ.get("FREDFLOW_S3_REQUEST_TIMEOUT") or S3_REQUEST_TIMEOUT_S)
    return rebuild({**options, "request_timeout": request, "connect_timeout": min(S3_CONNECT_TIMEOUT_S, request),
                    "retry_strategy": pafs.AwsStandardS3RetryStrategy(max_attempts=S3_ATTEMPTS)})


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

    def check_files(self, filesystem: pafs.FileSystem | None = None) -> str | None:
        """Why the staged files do not match this manifest (missing, unreadable, wrong row count), or None.

        Every file is read to the end (its data pages, not only its footer), a
        batch at a time, so a file damaged in the middle is caught here and not
        by the merge.
        """
        filesystem = filesystem or pafs.LocalFileSystem()
        staged_rows = 0
        for path in self.observation_files + self.vintage_files + self.series_files:
            try:
                with filesystem.open_input_file(path) as handle:
                    rows = sum(b.num_rows for b in pq.ParquetFile(handle).iter_batches(batch_size=65536))
            except (OSError, pa.ArrowException) as exc:
                return f"{posixpath.basename(path)}: {exc}"
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
def _staging_write(fs: pafs.FileSystem, path: str) -> Iterator[str]:
    """Write ``path`` through ``<path>.tmp``. A storage error (full, read-only, gone) becomes a
    one-line :class:`FatalRunError`: the run cannot stage, so it stops and commits nothing."""
    # object storage: one PUT is already all-or-nothing (and a rename there is a copy)
    tmp = path + ".tmp" if isinstance(fs, pafs.LocalFileSystem) else path
    try:
        yield tmp
        if tmp != path:
            fs.move(tmp, path)
    except OSError as exc:
        with contextlib.suppress(OSError):
            fs.delete_file(tmp)
        reason = exc.strerror or " ".join(str(exc).split())
        hint = ("free space there or choose another --staging-dir" if isinstance(fs, pafs.LocalFileSystem)
                else "check the bucket, its credentials and endpoint, or choose another --staging-dir")
        raise FatalRunError(f"cannot write staging file {path}: {reason}; {hint}") from None


def _atomic_write_bytes(fs: pafs.FileSystem, path: str, payload: bytes) -> None:
    with _staging_write(fs, path) as tmp:
        if isinstance(fs, pafs.LocalFileSystem):  # fsync: a manifest must survive a power cut with its files
            with open(tmp, "wb") as fh:
                fh.write(payload)
                fh.flush()
                os.fsync(fh.fileno())
        else:
            with fs.open_output_stream(tmp) as out:
                out.write(payload)


def _write_parquet(fs: pafs.FileSystem, path: str, table: pa.Table) -> None:
    with _staging_write(fs, path) as tmp:
        pq.write_table(table, tmp, filesystem=fs)


def _read_bytes(fs: pafs.FileSystem, path: str) -> bytes:
    with fs.open_input_stream(path) as stream:
        return stream.read()


def _exists(fs: pafs.FileSystem, path: str) -> bool:
    return fs.get_file_info(path).type != pafs.FileType.NotFound


class RunStaging:
    """The staging folder of one run: ``<root>/<run_id>`` on ``filesystem`` (from ``root`` when not given)."""

    def __init__(self, root: str | os.PathLike[str], run_id: str, filesystem: pafs.FileSystem | None = None) -> None:
        self.run_id = run_id
        if filesystem is None:
            filesystem, root = filesystem_for(root)
        self.fs = filesystem
        self.root = os.fspath(root)
        self.path = posixpath.join(self.root, run_id)
        self._local = isinstance(self.fs, pafs.LocalFileSystem)

    def file(self, name: str) -> str:
        return posixpath.join(self.path, name)

    def create(self, run_info: dict[str, Any]) -> "RunStaging":
        if _exists(self.fs, self.path):
            raise FileExistsError(self.path)
        self.fs.create_dir(self.path, recursive=True)
        try:
            _atomic_write_bytes(self.fs, self.file("run.json"), orjson.dumps(run_info, default=str))
        except BaseException:
            self.remove()
            raise
        return self

    def write_catalog(self, series: pa.Table) -> str:
        path = self.file("catalog.series.parquet")
        _write_parquet(self.fs, path, series.cast(SERIES_SCHEMA))
        return path

    def write_plan(self, plan: dict[str, Any]) -> None:
        _atomic_write_bytes(self.fs, self.file("plan.json"), orjson.dumps(plan, default=str))

    def read_plan(self) -> dict[str, Any] | None:
        """The plan, None if there is none; ``ValueError`` if it is damaged."""
        try:
            doc = orjson.loads(_read_bytes(self.fs, self.file("plan.json")))
        except FileNotFoundError:
            return None
        except orjson.JSONDecodeError as exc:
            raise ValueError(f"not valid JSON: {exc}") from None
        if not isinstance(doc, dict):
            raise ValueError("not a plan")
        return doc

    def _lock(self) -> PidLock:
        if self._local:
            return _HELD.get(self.path) or PidLock(self.file("run.lock"))
        from .staging_lease import StagingLease  # object storage: a lease object, no flock

        return _HELD.get(self.path) or StagingLease(self.fs, self.file("run.lease"))  # type: ignore[return-value]

    def hold(self) -> None:
        """Take the run's lock for this process's lifetime (until :meth:`release`); :class:`StoreBusy`
        if another live process holds it. The kernel drops it when the process dies."""
        if self._local:
            lock = PidLock(self.file("run.lock"))
        else:
            from .staging_lease import StagingLease

            lock = StagingLease(self.fs, self.file("run.lease"))  # type: ignore[assignment]
        try:
            lock.acquire()
        except LockHeld as held:
            raise StoreBusy(f"run {self.run_id} is still running" + (f" (pid {held.holder})" if held.holder else "")
                            + "; wait for it to finish") from None
        _HELD[self.path] = lock

    def release(self) -> None:
        lock = _HELD.pop(self.path, None)
        if lock is not None:
            lock.release()

    def is_held(self) -> bool:
        """True while some live process runs this run (holds its lock)."""
        return self._lock().is_locked()

    def read_run_info(self) -> dict[str, Any]:
        return orjson.loads(_read_bytes(self.fs, self.file("run.json")))

    def _names(self) -> list[str]:
        try:
            infos = self.fs.get_file_info(pafs.FileSelector(self.path))
        except FileNotFoundError:
            return []
        return sorted(posixpath.basename(info.path) for info in infos if info.type == pafs.FileType.File)

    def discard_batch(self, batch_index: int) -> None:
        """Drop a batch's manifest and files: it will be fetched again."""
        prefix = f"batch-{batch_index:06d}."
        for name in self._names():
            if name.startswith(prefix):
                with contextlib.suppress(FileNotFoundError):
                    self.fs.delete_file(self.file(name))

    @property
    def catalog_files(self) -> list[str]:
        path = self.file("catalog.series.parquet")
        return [path] if _exists(self.fs, path) else []

    def batch_writer(self, batch_index: int, flush_rows: int = FLUSH_ROWS) -> "BatchWriter":
        return BatchWriter(self, batch_index, flush_rows)

    def manifest_names(self) -> list[str]:
        return [n for n in self._names() if n.startswith("batch-") and n.endswith(".manifest.json")]

    def manifests(self) -> list[BatchManifest]:
        """Manifests of the batches completed so far, in batch order; a damaged one drops its batch."""
        out = []
        for name in self.manifest_names():
            try:
                out.append(BatchManifest.from_json(_read_bytes(self.fs, self.file(name))))
            except (OSError, ValueError, TypeError, KeyError):
                self.discard_batch(int(name.split(".")[0].split("-")[1]))
        return out

    def exists(self) -> bool:
        return _exists(self.fs, self.path)

    def has(self, name: str) -> bool:
        return _exists(self.fs, self.file(name))

    def remove(self) -> None:
        self.release()
        with contextlib.suppress(OSError):
            self.fs.delete_dir(self.path)


def run_folders(root: str | os.PathLike[str]) -> list[RunStaging]:
    """Every run folder under a staging root (none if the root does not exist)."""
    fs, base = filesystem_for(root)
    try:
        infos = fs.get_file_info(pafs.FileSelector(base))
    except FileNotFoundError:
        return []
    except OSError as exc:  # object storage: a bucket not created yet holds no run
        if "NO_SUCH_BUCKET" in str(exc):
            return []
        raise
    return [RunStaging(base, posixpath.basename(i.path), fs) for i in sorted(infos, key=lambda i: i.path)
            if i.type == pafs.FileType.Directory]


class _StagedRows:
    """One kind of staged rows of a batch (observations or vintages): tables collected, then written
    as ``<prefix>.<kind>-NNN.parquet`` whenever ``flush_rows`` rows are pending."""

    def __init__(self, staging: RunStaging, prefix: str, kind: str, schema: pa.Schema, flush_rows: int) -> None:
        self._staging = staging
        self._stem = f"{prefix}.{kind}"
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
        path = self._staging.file(f"{self._stem}-{len(self.files):03d}.parquet")
        _write_parquet(self._staging.fs, path, pa.concat_tables(self._pending).select(self._schema.names).cast(self._schema))
        self.files.append(str(path))
        self._pending, self._pending_rows = [], 0


class BatchWriter:
    """Collects one batch's tables and writes them as Parquet, flushing every ``flush_rows`` rows."""

    def __init__(self, staging: RunStaging, batch_index: int, flush_rows: int) -> None:
        self._staging = staging
        self._prefix = f"batch-{batch_index:06d}"
        self._observations = _StagedRows(staging, self._prefix, "obs", STAGED_OBSERVATION_SCHEMA, flush_rows)
        self._vintages = _StagedRows(staging, self._prefix, "vin", STAGED_VINTAGE_SCHEMA, flush_rows)
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
            path = self._staging.file(f"{self._prefix}.series.parquet")
            _write_parquet(self._staging.fs, path, pa.concat_tables(self._series).cast(SERIES_SCHEMA))
            manifest.series_files = [path]
        _atomic_write_bytes(self._staging.fs, self._staging.file(f"{self._prefix}.manifest.json"), manifest.to_json())
        return manifest
