"""An existing Dask cluster (``--dask-address``): a real ``dask scheduler`` and ``dask worker`` processes.

Local staging with a cluster hands the staged bytes back through Dask; the preflight refuses a
cluster whose workers differ or cannot reach the run's services, one line per failure, exit 1;
``--quota-address`` is advertised (IPv6 too)."""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from e2e import assert_db_matches
from fredflow import CatalogSpec
from fredflow.api import ingest
from fredflow.errors import FatalRunError
from fredflow.runners.prefect import preflight as pf
from fredflow.sim.server import DEMO_API_KEY

BIN = Path(sys.executable).parent


def _port(host: str = "127.0.0.1") -> int:
    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as s:
        s.bind((host, 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def dask_cluster(host: str = "127.0.0.1", n_workers: int = 1, worker_env: dict | None = None,
                 worker_prefix: list[str] | None = None):
    """``dask scheduler`` on host:port and ``n_workers`` ``dask worker`` processes; yields (address, procs)."""
    port = _port(host)
    address = f"tcp://{host}:{port}"
    procs = [subprocess.Popen([str(BIN / "dask"), "scheduler", "--host", host, "--port", str(port),
                               "--dashboard-address", ":0", "--no-show"],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)]
    try:
        for _ in range(n_workers):
            procs.append(subprocess.Popen([*(worker_prefix or []), str(BIN / "dask"), "worker", address,
                                           "--nthreads", "2", "--no-dashboard", "--memory-limit", "0"],
                                          stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                          env={**os.environ, **(worker_env or {})}))
        from distributed import Client

        with Client(address, timeout=60) as client:
            client.wait_for_workers(n_workers, timeout=90)
        yield address, procs
    finally:
        for proc in reversed(procs):
            if proc.poll() is None:
                proc.terminate()
        for proc in reversed(procs):
            try:
                proc.wait(20)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(5)


def test_local_staging_with_a_cluster_hands_bytes_back(tmp_path, sim, settings_for):
    db = tmp_path / "f.duckdb"
    ids = sim.catalog.series_ids[:30]
    with dask_cluster() as (address, _):
        summary = ingest(db, CatalogSpec(series=tuple(ids)), settings=settings_for(sim), runner="dask",
                         dask_address=address, batch_size=6)
    assert summary.exit_code == 0 and summary.n_series == len(ids)
    assert summary.n_rows == assert_db_matches(db, sim.catalog, ids)


def test_preflight_problems_one_line_each():
    mine = pf.versions()
    other = {**mine, "fredflow": "0.0.9+deadbeef0000"}
    probes = {"quota_url": "http://10.0.0.1:1", "api_url": "http://h:4200/api", "fred_url": "http://f",
              "staging_root": "s3://b/p"}
    lines = pf.problems({"tcp://w1:1": {"versions": other, "quota": "Connection refused"},
                         "tcp://w2:1": {"versions": mine, "staging": "Access Denied"}}, mine, probes)
    assert lines == [
        f"worker tcp://w1:1: fredflow 0.0.9+deadbeef0000 but the flow has {mine['fredflow']}; install the same "
        "fredflow there and restart it",
        "worker tcp://w1:1: cannot reach the token service at http://10.0.0.1:1 (Connection refused); advertise "
        "an address it can reach with --quota-address HOST:PORT (and open that port)",
        "worker tcp://w2:1: cannot reach the staging URI at s3://b/p (Access Denied); give that worker write "
        "access (credentials, bucket policy, endpoint) or choose another --staging-dir",
    ]
    assert pf.static_problems("tcp://10.1.2.3:8786", "http://127.0.0.1:4200/api")[0].startswith(
        "the Prefect API http://127.0.0.1:4200/api is loopback-only but the cluster tcp://10.1.2.3:8786 is remote")
    assert pf.static_problems("tcp://127.0.0.1:8786", "http://127.0.0.1:4200/api") == []


def test_preflight_that_gets_no_answer_fails_instead_of_hanging():
    import threading

    release = threading.Event()
    with pytest.raises(FatalRunError, match="did not answer the preflight within 0 s"):
        pf._bounded(release.wait, 0.2, "tcp://10.0.0.1:8786")
    release.set()
    assert pf._bounded(lambda: "reports", 5, "tcp://10.0.0.1:8786") == "reports"


def _other_fredflow(tmp_path: Path) -> dict[str, str]:
    """The environment of a worker running another build of fredflow (one more line in its __init__)."""
    copy = tmp_path / "other" / "fredflow"
    shutil.copytree(Path(pf.__file__).parents[2], copy, ignore=shutil.ignore_patterns("__pycache__"))
    (copy / "__init__.py").write_text((copy / "__init__.py").read_text() + "\n# another build\n")
    return {"PYTHONPATH": str(copy.parent)}


def test_preflight_against_real_workers(tmp_path):
    """A worker running another fredflow, an unreachable token service, an unwritable staging URI."""
    closed = f"http://127.0.0.1:{_port()}"
    with dask_cluster(worker_env=_other_fredflow(tmp_path)) as (address, _):
        with pytest.raises(FatalRunError) as failure:
            pf.preflight(address, {"quota_url": closed, "staging_root": "/dev/null/not-a-folder"})
    lines = str(failure.value).splitlines()
    assert len(lines) == 3, lines
    assert "fredflow" in lines[0] and "but the flow has" in lines[0] and lines[0].startswith("worker tcp://")
    assert f"cannot reach the token service at {closed}" in lines[1]
    assert "cannot reach the staging URI at /dev/null/not-a-folder" in lines[2]


@pytest.mark.parametrize("problem", ["versions", "token-service", "staging"])
def test_cli_preflight_failure_is_one_line_exit_1_before_any_request(tmp_path, sim, problem):
    """Each preflight failure on its own, through the CLI: exactly one line on stderr, exit 1, no FRED
    request sent and no run left behind."""
    worker_env = _other_fredflow(tmp_path) if problem == "versions" else None
    extra = {"versions": (),
             "token-service": ("--quota-address", f"fredflow-unreachable.invalid:{_port()}"),
             "staging": ("--no-handback", "--staging-dir", "/dev/null/staging")}[problem]
    db = tmp_path / "f.duckdb"
    with dask_cluster(worker_env=worker_env) as (address, _):
        before = sim.stats()["requests"]
        done = subprocess.run([sys.executable, "-m", "fredflow.cli", "ingest", "--db", str(db),
                               "--series", "SIM000001", "--api-url", sim.url, "--api-key", DEMO_API_KEY,
                               "--runner", "dask", "--dask-address", address, *extra, "--quiet"],
                              capture_output=True, text=True, timeout=180,
                              env={k: v for k, v in os.environ.items() if not k.startswith(("FRED_", "FREDFLOW_"))})
    assert done.returncode == 1, done.stderr
    (line,) = done.stderr.strip().splitlines()
    assert line.startswith("fredflow: fatal: worker tcp://127.0.0.1:"), line
    expected = {"versions": "but the flow has", "token-service": "cannot reach the token service at "
                "http://fredflow-unreachable.invalid:", "staging": "cannot reach the staging URI at /dev/null/staging"}
    assert expected[problem] in line
    assert sim.stats()["requests"] == before  # refused before planning
    assert not db.exists() and not (tmp_path / "f.staging").exists()


def test_quota_address_advertised_and_ipv6():
    from fredflow.runners.prefect.reachability import split_host_port, token_service_for

    assert split_host_port("[::1]:8123") == ("::1", 8123)
    assert split_host_port("example.org:80") == ("example.org", 80)
    assert split_host_port("::1") == ("::1", 0)
    import urllib.request

    with token_service_for(5, 1, "127.0.0.1", "[::1]:0") as quota:
        assert quota.url.startswith("http://[::1]:")
        with urllib.request.urlopen(quota.url + "/stats", timeout=5) as response:
            assert response.status == 200
    port = _port()
    # not an address of this machine (a NAT's or a tunnel's): bound on every interface, that host advertised
    with token_service_for(5, 1, "127.0.0.1", f"fredflow-tunnel.invalid:{port}") as quota:
        assert quota.url == f"http://fredflow-tunnel.invalid:{port}" and quota.host == "0.0.0.0"
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/stats", timeout=5) as response:
            assert response.status == 200
    from fredflow.ratelimit.service import reachable_host

    assert reachable_host("tcp://[::1]:8786") == "::1"
