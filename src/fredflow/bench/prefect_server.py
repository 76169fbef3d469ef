"""A Prefect API shared by every Prefect run of a bench: ``python -m fredflow.bench.prefect_server``.

Started once by the harness (like the server a deployment reports to), so a
run's wall time is the run's, not a temporary server's start-up (~6-12 s on
2 cores, which ``fredflow ingest --runner dask`` pays when ``PREFECT_API_URL``
is unset). Uses fredflow's own :func:`~fredflow.runners.prefect.api_server.prefect_api`.
Prints one JSON line ``{"url": ...}`` when the API answers, then serves until
its stdin is closed.
"""

from __future__ import annotations

import json
import sys


def main() -> int:
    from fredflow.runners.prefect.api_server import prefect_api

    with prefect_api() as url:
        sys.stdout.write(json.dumps({"url": url}) + "\n")
        sys.stdout.flush()
        sys.stdin.read()  # until the harness closes the pipe
    return 0


if __name__ == "__main__":
    sys.exit(main())
