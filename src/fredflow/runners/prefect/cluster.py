"""``python -m fredflow.runners.prefect.cluster WORKERS THREADS``: the LocalCluster of ``--runner dask``, in its own process.

Started by the CLI (:func:`start_cluster`) next to the temporary Prefect server, before the run is even
planned: its scheduler and worker processes boot, and every worker imports Prefect and fredflow, while
this run plans and sends its first batches (:mod:`~fredflow.runners.prefect.headstart`). It prints the
scheduler's address once the workers are warm, then serves until it gets SIGTERM (the run is over), or
its parent is gone; either way it stops the cluster's processes (workers included) and exits. SIGINT (a Ctrl-C reaching the
whole process group) is left to the parent, which stops it. In its own process, the scheduler's event
loop does not share a GIL with the run's head start and TokenService.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import threading
from concurrent.futures import Future

from .ephemeral import SERVER_NICE, stop_process


def main() -> None:
    workers, threads = int(sys.argv[1]), int(sys.argv[2])
    parent = os.getppid()
    stop = threading.Event()
    ready = False

    def on_sigterm(*_: object) -> None:
        if not ready:  # still starting (Client.run has no timeout): the wait below would never see the event
            _stop_descendants()
            os._exit(0)
        stop.set()

    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, on_sigterm)
    os.nice(SERVER_NICE)  # like the Prefect server: its boot yields the CPU to the run's own start
    from distributed import Client, LocalCluster

    cluster = LocalCluster(n_workers=workers, threads_per_worker=threads, processes=True, dashboard_address=None)
    try:
        with Client(cluster, timeout=60) as client:
            client.run(_warm_worker)
        ready = True
        print(cluster.scheduler_address, flush=True)
        while not stop.wait(0.2) and os.getppid() == parent:
            pass
    finally:
        # the run is over (or gone): no need for Dask's graceful close (seconds of timeouts per worker)
        _stop_descendants()
        os._exit(0)


def _stop_descendants() -> None:
    import psutil

    children = psutil.Process().children(recursive=True)
    for child in children:
        with contextlib.suppress(psutil.Error):
            child.terminate()
    _, alive = psutil.wait_procs(children, timeout=1)
    for child in alive:
        with contextlib.suppress(psutil.Error):
            child.kill()


def _warm_worker() -> None:
    import fredflow.fetch  # noqa: F401
    import fredflow.runners.prefect.flows  # noqa: F401 - Prefect itself: what a worker's first task needs


def start_timeout() -> float:
    """How long a run waits for its LocalCluster process to print the scheduler's address (seconds)."""
    return float(os.environ.get("FREDFLOW_CLUSTER_START_TIMEOUT") or 180)


class ClusterProcess:
    """The cluster process of one run: :attr:`address` is a future of its scheduler's address."""

    def __init__(self, workers: int, threads_per_worker: int) -> None:
        self.process = subprocess.Popen([sys.executable, "-m", "fredflow.runners.prefect.cluster", str(workers),
                                         str(threads_per_worker)],
                                        stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, text=True)
        self.address: Future[str] = Future()
        threading.Thread(target=self._read, name="fredflow-cluster-address", daemon=True).start()

    def _read(self) -> None:
        line = self.process.stdout.readline().strip() if self.process.stdout else ""
        if line:
            self.address.set_result(line)
        else:
            self.address.set_exception(RuntimeError(
                f"the Dask LocalCluster process exited (code {self.process.wait()}) before it was ready"))

    def stop(self) -> None:
        stop_process(self.process, timeout=15)
        if self.process.stdout:
            self.process.stdout.close()


if __name__ == "__main__":
    main()
