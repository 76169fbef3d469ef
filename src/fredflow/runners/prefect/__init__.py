"""Prefect orchestration, the only package that imports Prefect or Dask.

- :mod:`~fredflow.runners.prefect.flows`: the ``fredflow-ingest`` and ``fredflow-backfill`` flows and
  their tasks (``plan-run`` → ``fetch-batch.map`` → ``merge-run``), taking :class:`~fredflow.options.RunOptions`;
- :mod:`~fredflow.runners.prefect.runner`: ``--runner thread|dask`` (the flow run in this process) and the
  task runners (Prefect's thread pool, prefect-dask's ``DaskTaskRunner``);
- :mod:`~fredflow.runners.prefect.api_server`: the Prefect API every worker process can reach.

Importing this package sets Prefect's and Dask's process-wide knobs (the user's environment wins):
they are read when prefect is imported and inherited by LocalCluster worker processes.
"""

import os

os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "90")
if "PREFECT__FLOW_RUN_ID" not in os.environ:
    # the CLI's console stays quiet; a flow-run process started by a worker or `fredflow serve` keeps
    # Prefect's INFO, and so do its Dask worker processes: their task logs (worker name, retries) reach the UI
    os.environ.setdefault("PREFECT_LOGGING_LEVEL", "WARNING")
os.environ.setdefault("DASK_LOGGING__DISTRIBUTED", "error")
