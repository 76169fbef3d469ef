"""Destinations: where a run's rows land. Today one, DuckDB (:class:`~fredflow.destinations.duckdb.DuckDBDestination`).

A destination owns its file and knobs: the run lock, the schema, per-series state, the one-transaction
merge of a run's staged files, and the run records.
"""
