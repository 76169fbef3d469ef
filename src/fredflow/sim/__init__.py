"""Embedded FRED-compatible simulator: deterministic data, FRED-exact responses.

- :class:`SimCatalog` -- the data (source of truth), :mod:`fredflow.sim.catalog`;
- :class:`SimConfig`, :func:`build_app`, :func:`run` -- the aiohttp server (JSON and
  FRED's default XML, :mod:`fredflow.sim.render`; rate limits, :mod:`fredflow.sim.ratelimit`;
  releases, categories, tags and search, :mod:`fredflow.sim.reference`);
- :class:`SimProcess` -- the server as a subprocess, for tests and benchmarks;
- :func:`main` -- ``python -m fredflow.sim`` / ``fredflow sim`` command line.
"""

from fredflow.sim.catalog import DEFAULT_TODAY, SimCatalog
from fredflow.sim.cli import main
from fredflow.sim.process import SimProcess
from fredflow.sim.server import (
    ALL_FAULT_KINDS,
    DEMO_API_KEY,
    FAULT_KINDS,
    UNREGISTERED_KEY,
    SimConfig,
    build_app,
    run,
)

__all__ = [
    "ALL_FAULT_KINDS",
    "DEFAULT_TODAY",
    "DEMO_API_KEY",
    "FAULT_KINDS",
    "UNREGISTERED_KEY",
    "SimCatalog",
    "SimConfig",
    "SimProcess",
    "build_app",
    "main",
    "run",
]
