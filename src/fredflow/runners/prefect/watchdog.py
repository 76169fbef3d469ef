"""``python -m fredflow.runners.prefect.watchdog PARENT_PID``: outlive nothing the parent started.

Started beside the temporary Prefect server (:func:`~fredflow.runners.prefect.api_server.watch_parent`).
Every half second it notes the parent's descendants (the server, Dask's nannies and workers); when the
parent is gone, even by ``kill -9`` where no ``finally`` runs, it terminates them (SIGTERM, then
SIGKILL after 3 s) and exits. When the run ends normally the parent kills the watchdog itself.
Like ``PR_SET_PDEATHSIG``, but it also reaches grandchildren, and works where that is unavailable.
"""

from __future__ import annotations

import os
import signal
import sys
import time

import psutil

INTERVAL_S = 0.5
GRACE_S = 3.0


def watch(parent_pid: int) -> None:
    me = os.getpid()
    known: dict[int, psutil.Process] = {}
    while os.getppid() == parent_pid:
        try:
            for child in psutil.Process(parent_pid).children(recursive=True):
                if child.pid != me:
                    known.setdefault(child.pid, child)
        except psutil.Error:
            break
        time.sleep(INTERVAL_S)
    alive = []
    for process in known.values():
        try:
            if process.is_running():  # the same process (psutil checks its start time), not a reused pid
                process.terminate()
                alive.append(process)
        except psutil.Error:
            pass
    _, still = psutil.wait_procs(alive, timeout=GRACE_S)
    for process in still:
        try:
            process.kill()
        except psutil.Error:
            pass


def main() -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C reaches the whole process group: the parent handles it
    watch(int(sys.argv[1]))


if __name__ == "__main__":
    main()
