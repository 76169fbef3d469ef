"""FRED and ALFRED as a source.

- :mod:`~fredflow.sources.fred.client`: :class:`FredClient` (endpoints, paging, retries, error classes)
  over a :mod:`~fredflow.sources.fred.transport` (aiohttp by default; in-process for tests);
- :mod:`~fredflow.sources.fred.parse`: FRED JSON → Arrow, pure functions;
- :mod:`~fredflow.sources.fred.catalog`: what the user asked for → series ids (and listing metadata);
- :mod:`~fredflow.sources.fred.changes`: which series changed since the database last fetched them;
- :mod:`~fredflow.sources.fred.limits`: FRED's documented limits (page sizes, vintage dates, ALFRED bounds).
"""
