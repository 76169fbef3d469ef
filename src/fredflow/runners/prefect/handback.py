"""Local staging with a remote Dask cluster: batches hand their staged Parquet bytes back through Dask.

A worker on another machine cannot write into the flow machine's staging folder. With
``handback`` (the default for ``--dask-address`` with a local ``--staging-dir``), each batch
stages into a temporary folder of its worker, reads its files back as bytes and returns them with
its manifest (:class:`HandedBack`: one batch of Parquet, a few MB, never the run); the flow writes
them into its own run folder, manifest last (:func:`land`), so ``fredflow resume`` and the
one-transaction merge see exactly what a local run leaves.
"""

from __future__ import annotations

import dataclasses
import posixpath
import tempfile

from ...fetch import FetchContext, RunJob, fetch_batch
from ...run.batches import Batch
from ...staging import BatchManifest, RunStaging, _atomic_write_bytes, _read_bytes


@dataclasses.dataclass(slots=True)
class HandedBack:
    """A batch's manifest and its staged files' bytes (by file name), to be landed by the flow."""

    manifest: BatchManifest
    files: dict[str, bytes]

    @property
    def nbytes(self) -> int:
        return sum(len(b) for b in self.files.values())


async def fetch_handed_back(batch: Batch, job: RunJob, ctx: FetchContext) -> HandedBack:
    """:func:`fredflow.fetch.fetch_batch` into a temporary folder of this worker; its files as bytes."""
    with tempfile.TemporaryDirectory(prefix="fredflow-handback-") as tmp:
        staging = RunStaging(tmp, job.run_id)
        staging.fs.create_dir(staging.path, recursive=True)
        manifest = await fetch_batch(batch, staging, ctx)
        paths = manifest.observation_files + manifest.vintage_files + manifest.series_files
        files = {posixpath.basename(p): _read_bytes(staging.fs, p) for p in paths}
    return HandedBack(manifest, files)


def land(staging: RunStaging, result: BatchManifest | HandedBack) -> BatchManifest:
    """Write a handed-back batch into the run's staging folder, each file atomically, the manifest last;
    a plain manifest (the worker staged it itself) passes through."""
    if not isinstance(result, HandedBack):
        return result
    for name, payload in result.files.items():
        _atomic_write_bytes(staging.fs, staging.file(name), payload)
    manifest = result.manifest

    def here(paths: list[str]) -> list[str]:
        return [staging.file(posixpath.basename(p)) for p in paths]

    manifest.observation_files = here(manifest.observation_files)
    manifest.vintage_files = here(manifest.vintage_files)
    manifest.series_files = here(manifest.series_files)
    _atomic_write_bytes(staging.fs, staging.file(f"batch-{manifest.batch_index:06d}.manifest.json"),
                        manifest.to_json())
    return manifest


def uses_handback(handback: bool | None, dask_address: str | None, staging_root: str) -> bool:
    """``handback`` if given; else on for an existing cluster (``dask_address``) with a local staging path
    (object storage, or a folder shared by every machine with ``--no-handback``, is written by workers)."""
    if handback is not None:
        return handback
    return bool(dask_address) and "://" not in staging_root
