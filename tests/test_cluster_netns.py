"""A Dask worker on "another machine": its own network namespace (a veth pair; the flow's services are
reachable only at the host side's 10.200.x.1) and its own mount namespace (a private tmpfs over the
flow's data and staging folders). Every row lands exactly with local staging (bytes handed back) and
with s3:// staging (moto on the veth address); the worker killed mid-run: the run completes; the flow
killed mid-run: nothing is committed and ``fredflow resume`` with s3:// staging fetches only what had no
manifest. Needs root (skipped otherwise)."""

from __future__ import annotations

import contextlib
import os
import random
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import orjson
import pytest

from e2e import assert_db_matches, count
from fredflow import CatalogSpec
from fredflow.api import ingest, resumable_runs
from fredflow.sim.server import DEMO_API_KEY
from s3server import CREDENTIALS, MotoServer, aws_credentials, staged_batches
from test_cluster import BIN, _port

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="network and mount namespaces need root")


def _sh(*args: str) -> None:
    subprocess.run(args, check=True, capture_output=True, timeout=30)


@contextlib.contextmanager
def _netns():
    """A network namespace joined to this one by a veth pair: (name, host address, namespace address)."""
    k = random.randint(1, 250)
    ns, host_if, ns_if = f"ffc{os.getpid()}-{k}", f"ffh{k}x{os.getpid() % 1000}", f"ffw{k}x{os.getpid() % 1000}"
    host_ip, ns_ip = f"10.200.{k}.1", f"10.200.{k}.2"
    _sh("ip", "netns", "add", ns)
    try:
        _sh("ip", "link", "add", host_if, "type", "veth", "peer", "name", ns_if)
        try:
            _sh("ip", "link", "set", ns_if, "netns", ns)
            _sh("ip", "addr", "add", f"{host_ip}/24", "dev", host_if)
            _sh("ip", "link", "set", host_if, "up")
            for cmd in (("ip", "addr", "add", f"{ns_ip}/24", "dev", ns_if), ("ip", "link", "set", ns_if, "up"),
                        ("ip", "link", "set", "lo", "up")):
                _sh("ip", "netns", "exec", ns, *cmd)
            yield ns, host_ip, ns_ip
        finally:
            subprocess.run(["ip", "link", "del", host_if], capture_output=True, timeout=30)
    finally:
        subprocess.run(["ip", "netns", "del", ns], capture_output=True, timeout=30)


def _stop(proc: subprocess.Popen, sig: int = signal.SIGTERM) -> None:
    if proc.poll() is None:
        proc.send_signal(sig)
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)


def _wait_http(url: str, proc: subprocess.Popen, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert proc.poll() is None, f"{what} exited ({proc.returncode})"
        try:
            with urllib.request.urlopen(url, timeout=2):
                return
        except OSError:
            time.sleep(0.3)
    raise AssertionError(f"{what} not up within {timeout} s")


class Lab:
    def __init__(self, ns: str, host_ip: str, ns_ip: str, private: Path) -> None:
        self.ns, self.host_ip, self.ns_ip, self.private = ns, host_ip, ns_ip, private
        self.workers: list[subprocess.Popen] = []

    def start_worker(self) -> subprocess.Popen:
        """``dask worker`` (no nanny: one pid to kill) in the namespace, a private tmpfs over ``private``."""
        script = 'mount -t tmpfs fredflow-private "$0" && exec "$@"'
        proc = subprocess.Popen(["ip", "netns", "exec", self.ns, "unshare", "-m", "--propagation", "private",
                                 "sh", "-c", script, str(self.private), str(BIN / "dask"), "worker", self.scheduler,
                                 "--nthreads", "2", "--no-nanny", "--no-dashboard", "--memory-limit", "0",
                                 "--death-timeout", "60"],
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                env={**os.environ, **CREDENTIALS})
        self.workers.append(proc)
        from distributed import Client

        with Client(self.scheduler, timeout=60) as client:
            deadline = time.monotonic() + 90
            alive = sum(1 for w in self.workers if w.poll() is None)
            while sum(1 for w in client.scheduler_info()["workers"] if w.startswith(f"tcp://{self.ns_ip}:")) < alive:
                assert proc.poll() is None, "the namespace worker exited"
                assert time.monotonic() < deadline, "the namespace worker did not join"
                time.sleep(0.3)
        return proc


@pytest.fixture(scope="module")
def lab(tmp_path_factory):
    private = tmp_path_factory.mktemp("flow-data")
    with contextlib.ExitStack() as stack:
        stack.enter_context(aws_credentials())
        ns, host_ip, ns_ip = stack.enter_context(_netns())
        lab = Lab(ns, host_ip, ns_ip, private)
        # the simulator, moto and the scheduler, reachable from the namespace only at host_ip
        import fredflow.sim.process as sim_process

        mp = stack.enter_context(pytest.MonkeyPatch.context())
        mp.setattr(sim_process, "_HOST", host_ip)
        lab.sim = stack.enter_context(sim_process.SimProcess(n_series=60, seed=11, obs_per_series=300,
                                                             long_series=0, latency=0.03))
        lab.moto = stack.enter_context(MotoServer(host_ip))
        from fredflow.staging import filesystem_for

        filesystem_for(lab.moto.uri())[0].create_dir("fredflow")  # the bucket
        port = _port(host_ip)
        lab.scheduler = f"tcp://{host_ip}:{port}"
        scheduler = subprocess.Popen([str(BIN / "dask"), "scheduler", "--host", host_ip, "--port", str(port),
                                      "--dashboard-address", ":0", "--no-show"],
                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        stack.callback(_stop, scheduler)
        # a Prefect server the namespace reaches (the temporary one binds loopback: refused for a remote cluster)
        api_port = _port(host_ip)
        home = tmp_path_factory.mktemp("prefect-server-home")
        server = subprocess.Popen([str(BIN / "prefect"), "server", "start", "--host", host_ip, "--port",
                                   str(api_port)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                  env={**os.environ, "PREFECT_HOME": str(home), "PREFECT_UI_ENABLED": "false",
                                       "PREFECT_SERVER_ANALYTICS_ENABLED": "false"})
        stack.callback(_stop, server)
        lab.api_url = f"http://{host_ip}:{api_port}/api"
        _wait_http(lab.api_url + "/health", server, 180, "prefect server")
        stack.callback(lambda: [_stop(w, signal.SIGKILL) for w in lab.workers])
        lab.start_worker()
        from prefect.settings import PREFECT_API_URL, temporary_settings

        stack.enter_context(temporary_settings({PREFECT_API_URL: lab.api_url}))
        yield lab


def _settings(lab, **overrides):
    from fredflow.settings import Settings

    values = dict(api_url=lab.sim.url, api_key=DEMO_API_KEY, rate=500, burst=20, concurrency=8,
                  backoff_base=0.01, backoff_max=0.05, timeout=10)
    values.update(overrides)
    return Settings(**values)


def test_the_worker_cannot_see_the_flows_folders(lab):
    (lab.private / "flow-only").write_text("x")
    seen = subprocess.run(["ip", "netns", "exec", lab.ns, "unshare", "-m", "--propagation", "private", "sh", "-c",
                           'mount -t tmpfs fredflow-private "$0" && ls -A "$0"', str(lab.private)],
                          capture_output=True, text=True, timeout=30)
    assert seen.returncode == 0 and seen.stdout.strip() == ""
    loopback = subprocess.run(["ip", "netns", "exec", lab.ns, sys.executable, "-c",
                               f"import urllib.request; urllib.request.urlopen('{lab.sim.root}/_sim/health', timeout=3)"],
                              capture_output=True, timeout=30)
    assert loopback.returncode == 0  # the simulator is reachable at the veth address
    (lab.private / "flow-only").unlink()


@pytest.mark.parametrize("staging", ["local", "s3"])
def test_every_row_lands(lab, staging):
    db = lab.private / f"every-{staging}.duckdb"
    ids = lab.sim.catalog.series_ids[:24]
    uri = lab.moto.uri(prefix=f"every-{staging}") if staging == "s3" else None
    summary = ingest(db, CatalogSpec(series=tuple(ids)), settings=_settings(lab), runner="dask",
                     dask_address=lab.scheduler, staging_dir=uri, batch_size=4)
    assert summary.exit_code == 0 and summary.n_series == len(ids)
    assert summary.n_rows == assert_db_matches(db, lab.sim.catalog, ids)
    assert count(db, "SELECT count(*) FROM series")[0][0] == len(ids)


def _cli(lab, *args: str) -> subprocess.Popen:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("FRED_", "FREDFLOW_"))}
    env["PREFECT_API_URL"] = lab.api_url
    return subprocess.Popen([sys.executable, "-m", "fredflow.cli", *args, "--api-url", lab.sim.url,
                             "--api-key", DEMO_API_KEY, "--quiet", "--json"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)


def _manifests(uri: str) -> int:
    from fredflow.staging import run_folders

    return sum(len(run.manifest_names()) for run in run_folders(uri))


def _wait(predicate, proc, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert proc.poll() is None, f"exited before {what}: {proc.stderr.read()[-2000:]}"
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.2)


def _kill_workers(lab) -> None:
    """SIGKILL every namespace worker and wait for it: no task of a dead flow runs on after this."""
    for worker in lab.workers:
        _stop(worker, signal.SIGKILL)
    lab.workers.clear()


def _three_batches_staged(lab, name: str, ids) -> tuple[subprocess.Popen, Path, str]:
    """`fredflow ingest` of ``ids`` on the cluster with s3:// staging, once three batches are staged on S3:
    (the running CLI, its db, its staging URI). 20 batches of 2 series at 20 requests/s: ~4 s of fetching."""
    db, uri = lab.private / f"{name}.duckdb", lab.moto.uri(prefix=name)
    run = _cli(lab, "ingest", "--db", str(db), "--series", ",".join(ids), "--dask-address", lab.scheduler,
               "--staging-dir", uri, "--runner", "dask", "--batch-size", "2", "--rate", "20", "--concurrency", "2")
    try:
        _wait(lambda: len(staged_batches(uri)) >= 3, run, 240, "three batches staged on S3")
    except BaseException:
        _stop(run, signal.SIGKILL)
        raise
    return run, db, uri


@pytest.mark.timeout(600)
def test_worker_killed_mid_run_the_run_completes(lab):
    """The namespace worker is killed (-9) mid-run with s3:// staging and a new one joins: Dask runs the
    lost batches again there and the run completes with every row exactly once."""
    ids = lab.sim.catalog.series_ids[:40]
    run, db, uri = _three_batches_staged(lab, "worker-killed", ids)
    try:
        assert len(staged_batches(uri)) < 20, "the run ended before the worker could be killed"
        _kill_workers(lab)
        lab.start_worker()
        out, err = run.communicate(timeout=300)
    finally:
        _stop(run, signal.SIGKILL)
    assert run.returncode == 0, err[-3000:]
    summary = orjson.loads(out)
    assert summary["n_series"] == len(ids) and summary["n_failed"] == 0
    assert summary["n_rows"] == assert_db_matches(db, lab.sim.catalog, ids)
    assert count(db, "SELECT count(*) - count(DISTINCT (series_id, date)) FROM observations") == [(0,)]
    assert resumable_runs(db, uri) == [] and staged_batches(uri) == set()


@pytest.mark.timeout(600)
def test_flow_killed_mid_run_resume_with_s3_fetches_only_unstaged_batches(lab):
    """The flow is killed (-9) mid-run with s3:// staging; its worker too (so no orphaned task fetches on).
    Nothing is committed; `fredflow resume` on the cluster fetches exactly the batches with no manifest
    on S3 (2 requests per series: metadata, observations) and lands every row."""
    ids = lab.sim.catalog.series_ids[:40]
    run, _, uri = _three_batches_staged(lab, "flow-killed", ids)
    db = lab.private / "flow-killed.duckdb"
    _stop(run, signal.SIGKILL)
    _kill_workers(lab)
    lab.start_worker()
    staged = staged_batches(uri)
    assert 3 <= len(staged) < 20
    staged_series = {sid for b in staged for sid in ids[2 * b:2 * b + 2]}
    assert not db.exists() or count(
        db, "SELECT count(*) FROM information_schema.tables WHERE table_name = 'observations'") == [(0,)]
    (pending,) = resumable_runs(db, uri)
    assert (pending.staged_batches, pending.n_batches) == (len(staged), 20)

    lab.sim.reset_stats()
    done = _cli(lab, "resume", pending.run_id, "--db", str(db), "--staging-dir", uri, "--runner", "dask",
                "--dask-address", lab.scheduler)
    try:
        out, err = done.communicate(timeout=300)
    finally:
        _stop(done, signal.SIGKILL)
    assert done.returncode == 0, err[-3000:]
    summary = orjson.loads(out)
    assert summary["resumed_batches"] == len(staged)
    assert lab.sim.stats()["requests"] == 2 * (len(ids) - len(staged_series))
    assert summary["n_rows"] == assert_db_matches(db, lab.sim.catalog, ids)
    assert resumable_runs(db, uri) == [] and staged_batches(uri) == set()
