"""Staging (fredflow.staging): run folders, atomic files with the manifest last, the run lock, the
filesystem seam, and the checks a resume relies on."""

from __future__ import annotations

import os
import subprocess
import sys
import time

import orjson
import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq
import pytest

from fredflow.errors import FatalRunError, StoreBusy
from fredflow.sources.fred.parse import OBSERVATION_SCHEMA
from fredflow.staging import BatchManifest, LockHeld, PidLock, RunStaging, run_folders


def _observations(n: int) -> pa.Table:
    days = pa.array(range(n), pa.int32()).cast(pa.date32())
    return pa.table({"date": days, "value": pa.array([float(i) for i in range(n)]), "realtime_start": days,
                     "realtime_end": days}, schema=OBSERVATION_SCHEMA)


def test_a_batch_writes_flushed_files_then_its_manifest_and_checks_out(tmp_path):
    staging = RunStaging(tmp_path, "run-1").create({"run_id": "run-1"})
    writer = staging.batch_writer(3, flush_rows=5)
    writer.add_observations("A", _observations(4))
    writer.add_observations("B", _observations(4))  # 8 pending ≥ 5: flushed
    writer.add_observations("C", _observations(2))
    manifest = writer.finish(BatchManifest(batch_index=3, succeeded=["A", "B", "C"]))
    assert [os.path.basename(f) for f in manifest.observation_files] == ["batch-000003.obs-000.parquet",
                                                                          "batch-000003.obs-001.parquet"]
    assert manifest.rows == 10 and manifest.check_files() is None
    assert staging.manifest_names() == ["batch-000003.manifest.json"]
    assert not list(tmp_path.glob("run-1/*.tmp"))  # written through temporary names, renamed
    (back,) = staging.manifests()
    assert back == manifest
    rows = pa.concat_tables(pq.read_table(f) for f in manifest.observation_files)
    assert rows.column("series_id").to_pylist() == ["A"] * 4 + ["B"] * 4 + ["C"] * 2


def test_check_files_finds_a_cut_file_and_a_wrong_count(tmp_path):
    staging = RunStaging(tmp_path, "run-1").create({})
    writer = staging.batch_writer(0)
    writer.add_observations("A", _observations(50))
    manifest = writer.finish(BatchManifest(batch_index=0, succeeded=["A"]))
    wrong = BatchManifest.from_json(manifest.to_json())
    wrong.rows = 49
    assert "49" in wrong.check_files()
    path = manifest.observation_files[0]
    with open(path, "r+b") as fh:
        fh.truncate(os.path.getsize(path) // 2)
    assert "batch-000000.obs-000.parquet" in manifest.check_files()


def test_a_damaged_manifest_drops_its_batch_and_discard_removes_every_file(tmp_path):
    staging = RunStaging(tmp_path, "run-1").create({})
    for index in (0, 1):
        writer = staging.batch_writer(index)
        writer.add_observations("A", _observations(3))
        writer.finish(BatchManifest(batch_index=index, succeeded=["A"]))
    (tmp_path / "run-1" / "batch-000001.manifest.json").write_bytes(b'{"batch_ind')
    assert [m.batch_index for m in staging.manifests()] == [0]
    assert not list(tmp_path.glob("run-1/batch-000001.*"))
    staging.discard_batch(0)
    assert staging.manifest_names() == [] and not list(tmp_path.glob("run-1/batch-*"))


def test_plan_round_trip_and_a_damaged_plan(tmp_path):
    staging = RunStaging(tmp_path, "run-1").create({"x": 1})
    assert staging.read_plan() is None
    staging.write_plan({"run_id": "run-1", "n_batches": 4})
    assert staging.read_plan() == {"run_id": "run-1", "n_batches": 4}
    (tmp_path / "run-1" / "plan.json").write_text("[1, 2")
    with pytest.raises(ValueError, match="not valid JSON"):
        staging.read_plan()
    assert staging.read_run_info() == {"x": 1}
    with pytest.raises(FileExistsError):
        RunStaging(tmp_path, "run-1").create({})


def test_the_run_lock_is_held_by_one_live_process_and_dropped_when_it_dies(tmp_path):
    staging = RunStaging(tmp_path, "run-1").create({})
    holder = subprocess.Popen([sys.executable, "-c", (
        "import sys, time; from fredflow.staging import RunStaging; "
        f"RunStaging({str(tmp_path)!r}, 'run-1').hold(); print('held', flush=True); time.sleep(60)")],
        stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        assert staging.is_held()
        with pytest.raises(StoreBusy, match=f"run run-1 is still running \\(pid {holder.pid}\\)"):
            staging.hold()
    finally:
        holder.kill()
        holder.wait()
    deadline = time.monotonic() + 5
    while staging.is_held() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not staging.is_held()
    staging.hold()
    assert staging.is_held()
    staging.remove()
    assert not (tmp_path / "run-1").exists()


def test_pid_lock_names_its_holder(tmp_path):
    first, second = PidLock(tmp_path / "x.lock"), PidLock(tmp_path / "x.lock")
    first.acquire()
    with pytest.raises(LockHeld) as held:
        second.acquire()
    assert held.value.holder == str(os.getpid())
    first.release()
    second.acquire()
    assert second.held and second.is_locked()
    second.release()


def test_staging_on_another_filesystem_writes_reads_and_lists_runs(tmp_path):
    """The filesystem seam: the same staging code on a pyarrow filesystem that is not the local one
    (a SubTreeFileSystem here; object storage has the same interface)."""
    fs = pafs.SubTreeFileSystem(str(tmp_path), pafs.LocalFileSystem())
    staging = RunStaging("staging", "run-9", fs).create({"run_id": "run-9"})
    writer = staging.batch_writer(0)
    writer.add_observations("A", _observations(7))
    manifest = writer.finish(BatchManifest(batch_index=0, succeeded=["A"]))
    assert manifest.observation_files == ["staging/run-9/batch-000000.obs-000.parquet"]
    assert manifest.check_files(fs) is None
    assert (tmp_path / "staging" / "run-9" / "batch-000000.manifest.json").exists()
    assert [m.batch_index for m in staging.manifests()] == [0]
    staging.hold()  # not a local folder: no flock, a lease object (fredflow.staging_lease)
    assert staging.is_held() and (tmp_path / "staging" / "run-9" / "run.lease").exists()
    staging.release()
    assert not staging.is_held() and not (tmp_path / "staging" / "run-9" / "run.lease").exists()
    staging.remove()
    assert not (tmp_path / "staging" / "run-9").exists()


def test_run_folders_lists_runs_of_a_root(tmp_path):
    for run_id in ("b", "a"):
        RunStaging(tmp_path, run_id).create({})
    assert [s.run_id for s in run_folders(tmp_path)] == ["a", "b"]
    assert run_folders(tmp_path / "missing") == []


def test_an_unwritable_staging_folder_is_one_fatal_line(tmp_path):
    if os.geteuid() == 0:
        # root ignores permission bits: make the target a file instead of a folder
        staging = RunStaging(tmp_path, "run-1").create({})
        (tmp_path / "run-1" / "plan.json.tmp").mkdir()
    else:
        staging = RunStaging(tmp_path, "run-1").create({})
        (tmp_path / "run-1").chmod(0o500)
    with pytest.raises(FatalRunError, match="cannot write staging file .*plan.json.*--staging-dir") as failure:
        staging.write_plan({"x": 1})
    assert "\n" not in str(failure.value)
    assert orjson.loads((tmp_path / "run-1" / "run.json").read_bytes()) == {}
