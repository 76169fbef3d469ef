"""Preflight of an existing Dask cluster (``--dask-address``), before planning (so before any FRED request).

Checked, from the scheduler and from every worker (``Client.run``):

* the same fredflow (version and a fingerprint of its source), prefect and pyarrow as the flow
  (objects unpickled by another fredflow silently drop fields);
* each worker reaches the run's token service, the Prefect API, the FRED host, and can write
  to the staging URI (object storage or a shared folder; not with hand-back, where the flow writes).

Each failure is one line naming the scheduler or worker and the fix; they are raised together as
one :class:`~fredflow.errors.FatalRunError` (exit 1). A remote cluster with a loopback Prefect API
is refused first, without contacting the workers.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import ipaddress
import socket
import urllib.request
import uuid
from functools import lru_cache
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

from ...errors import FatalRunError

PROBE_TIMEOUT_S = 5.0


@lru_cache(maxsize=1)
def versions() -> dict[str, str]:
    """fredflow (version + source fingerprint), prefect and pyarrow of this process."""
    import fredflow

    digest = hashlib.sha256()
    root = Path(fredflow.__file__).parent
    for path in sorted(root.rglob("*.py")):
        digest.update(str(path.relative_to(root)).encode())
        digest.update(path.read_bytes())
    out = {"fredflow": f"{importlib.metadata.version('fredflow')}+{digest.hexdigest()[:12]}"}
    for name in ("prefect", "pyarrow"):
        try:
            out[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            out[name] = "missing"
    return out


def is_loopback(host: str | None) -> bool:
    if not host or host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def _http(url: str) -> str | None:
    try:
        with urllib.request.urlopen(url, timeout=PROBE_TIMEOUT_S) as response:  # noqa: S310 - our own services
            response.read(1)
        return None
    except urllib.error.HTTPError:
        return None  # it answered: reachable
    except Exception as exc:  # noqa: BLE001 - a reason to report
        return " ".join(str(getattr(exc, "reason", exc)).split())


def _tcp(url: str) -> str | None:
    parsed = urlparse(url)
    port = parsed.port or (443 if parsed.scheme == "https" else 80)
    try:
        with socket.create_connection((parsed.hostname, port), timeout=PROBE_TIMEOUT_S):
            return None
    except OSError as exc:
        return exc.strerror or str(exc)


def _write_probe(staging_root: str) -> str | None:
    from ...staging import filesystem_for

    try:
        fs, root = filesystem_for(staging_root)
        fs.create_dir(root, recursive=True)
        path = f"{root}/.fredflow-preflight-{uuid.uuid4().hex}"
        with fs.open_output_stream(path) as out:
            out.write(b"ok")
        fs.delete_file(path)
        return None
    except Exception as exc:  # noqa: BLE001
        return " ".join(str(exc).split())[:200]


def worker_report(probes: dict[str, Any]) -> dict[str, Any]:
    """Run on a worker: its versions and what it cannot reach (``None`` = fine)."""
    report: dict[str, Any] = {"versions": versions(), "host": socket.gethostname()}
    if probes.get("quota_url"):
        report["quota"] = _http(probes["quota_url"].rstrip("/") + "/stats")
    if probes.get("api_url"):
        report["prefect"] = _http(probes["api_url"].rstrip("/") + "/health")
    if probes.get("fred_url"):
        report["fred"] = _tcp(probes["fred_url"])
    if probes.get("staging_root"):
        report["staging"] = _write_probe(probes["staging_root"])
    return report


def scheduler_versions(dask_scheduler=None) -> dict[str, str]:  # noqa: ANN001 - dask passes the scheduler
    return versions()


def static_problems(dask_address: str, api_url: str | None) -> list[str]:
    """What can be refused without contacting the cluster: a remote cluster with a loopback Prefect API."""
    cluster_host = urlparse(dask_address if "://" in dask_address else f"tcp://{dask_address}").hostname
    if api_url and not is_loopback(cluster_host) and is_loopback(urlparse(api_url).hostname):
        return [f"the Prefect API {api_url} is loopback-only but the cluster {dask_address} is remote: set "
                "PREFECT_API_URL to a server every worker reaches (e.g. `prefect server start --host 0.0.0.0`)"]
    return []


def problems(reports: dict[str, Any], scheduler: Any, probes: dict[str, Any]) -> list[str]:
    """One line per failure, naming the scheduler or worker and the fix."""
    mine = versions()
    lines: list[str] = []

    def compare(who: str, theirs: dict[str, str]) -> None:
        for name, version in mine.items():
            if theirs.get(name) != version:
                lines.append(f"{who}: {name} {theirs.get(name, 'missing')} but the flow has {version}; install "
                             f"the same {name} there and restart it")

    if isinstance(scheduler, BaseException):
        lines.append(f"scheduler: cannot run fredflow's check ({type(scheduler).__name__}: {scheduler}); install "
                     "the flow's fredflow in the scheduler's environment")
    else:
        compare("scheduler", scheduler)
    if not reports:
        lines.append("the cluster has no workers: start `dask worker SCHEDULER_ADDRESS` on the worker machines")
    fixes = {
        "quota": ("the token service", probes.get("quota_url"),
                  "advertise an address it can reach with --quota-address HOST:PORT (and open that port)"),
        "prefect": ("the Prefect API", probes.get("api_url"),
                    "set PREFECT_API_URL to a server that worker can reach"),
        "fred": ("the FRED host", probes.get("fred_url"), "open outbound access to it from that worker"),
        "staging": ("the staging URI", probes.get("staging_root"),
                    "give that worker write access (credentials, bucket policy, endpoint) or choose another "
                    "--staging-dir"),
    }
    for worker, report in sorted(reports.items()):
        if isinstance(report, BaseException):
            lines.append(f"worker {worker}: cannot run fredflow's check ({type(report).__name__}: {report}); "
                         "install the flow's fredflow there")
            continue
        compare(f"worker {worker}", report["versions"])
        for key, (what, target, fix) in fixes.items():
            reason = report.get(key)
            if reason:
                lines.append(f"worker {worker}: cannot reach {what} at {target} ({reason}); {fix}")
    return lines


def preflight(dask_address: str, probes: dict[str, Any], *, timeout: float = 30.0) -> None:
    """Check the cluster at ``dask_address`` (see the module docstring); :class:`FatalRunError` with one
    line per failure. ``probes``: ``quota_url``, ``api_url``, ``fred_url``, ``staging_root`` (each optional)."""
    static = static_problems(dask_address, probes.get("api_url"))
    if static:
        raise FatalRunError("\n".join(static))
    from distributed import Client

    try:
        client = Client(dask_address, timeout=timeout)
    except (OSError, TimeoutError) as exc:
        raise FatalRunError(f"cannot reach the Dask scheduler at {dask_address} ({exc}); check --dask-address") from None
    try:
        try:
            scheduler: Any = client.run_on_scheduler(scheduler_versions)
        except Exception as exc:  # noqa: BLE001
            scheduler = exc
        reports = _bounded(lambda: client.run(worker_report, probes, on_error="return"), REPORT_TIMEOUT_S,
                           dask_address)
    finally:
        client.close()
    lines = problems(reports, scheduler, probes)
    if lines:
        raise FatalRunError("\n".join(lines))


#: How long the workers' reports may take: each probe is bounded (HTTP/TCP :data:`PROBE_TIMEOUT_S`,
#: the staging write by the S3 timeouts of :mod:`fredflow.staging`); a worker that never answers
#: (wedged, or its event loop blocked) fails the preflight instead of hanging it.
REPORT_TIMEOUT_S = 180.0


def _bounded(call, timeout: float, dask_address: str):  # noqa: ANN001, ANN202
    """``call()`` in a thread, waited for at most ``timeout`` seconds (``Client.run`` has no timeout)."""
    import concurrent.futures

    pool = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="fredflow-preflight")
    try:
        return pool.submit(call).result(timeout)
    except concurrent.futures.TimeoutError:
        raise FatalRunError(f"the workers of {dask_address} did not answer the preflight within {timeout:.0f} s; "
                            "check that they are alive and not blocked (dask worker logs)") from None
    finally:
        pool.shutdown(wait=False, cancel_futures=True)


def check_run(dask_address: str, *, api_url: str | None, settings, staging_root: str, handback: bool) -> None:  # noqa: ANN001
    """The preflight of a run: a probe token service where the run's will be, then :func:`preflight`."""
    from ...ratelimit.service import reachable_host
    from .reachability import token_service_for

    with token_service_for(settings.rate, settings.burst, reachable_host(dask_address),
                           settings.quota_address) as quota:
        preflight(dask_address, {"quota_url": quota.url, "api_url": api_url, "fred_url": settings.api_url,
                                 "staging_root": None if handback else staging_root})
