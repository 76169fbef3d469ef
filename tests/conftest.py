"""Shared fixtures: real simulator processes on 127.0.0.1, temporary DuckDB files."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
#: Real FRED responses; CI clones the repo with shared/ beside it.
SAMPLES = Path(os.environ.get("FRED_SAMPLES", REPO.parent / "shared" / "fred-samples"))
