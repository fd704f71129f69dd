"""Where the test data is: the repository, the shared corpora beside it, tests/unit/data."""

from __future__ import annotations

from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
CORPORA = REPO.parent / "shared" / "corpora"
"""``<repo>/../shared/corpora``: CI clones shared/ beside the repository."""
UNIT_DATA = REPO / "tests" / "unit" / "data"
