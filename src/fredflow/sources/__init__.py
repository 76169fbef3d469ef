"""Sources: where series come from. Today one, FRED (and ALFRED), in :mod:`fredflow.sources.fred`.

A source knows its API: which ids a catalog holds, what changed since a date, how to page, how to
parse into Arrow. Nothing outside ``sources/`` knows FRED's endpoints or limits.
"""
