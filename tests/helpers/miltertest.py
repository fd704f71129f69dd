"""OpenDKIM's ``miltertest`` (a libmilter MTA) running one case of a Lua script of
tests/integration/milter/ against a milter on a real socket.

Every script there loads ``prelude.lua`` (the checks, a connection, a transaction, ``run_case``)
and prints ``CASE <name> OK`` once the case has passed."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

from mailsift.testing import ServiceThread

MILTERTEST = shutil.which("miltertest") or "/usr/bin/miltertest"
SCRIPTS = Path(__file__).parents[1] / "integration" / "milter"

needs_miltertest = pytest.mark.skipif(
    not Path(MILTERTEST).exists(), reason="miltertest (OpenDKIM) is installed by scripts/setup.sh --test"
)


def run_case(script: str, thread: ServiceThread, case: str) -> str:
    """Case ``case`` of ``SCRIPTS/script`` against ``thread``'s milter; asserts that it passed; its output."""
    done = subprocess.run(
        [MILTERTEST, "-s", str(SCRIPTS / script), "-D", f"MILTER=inet:{thread.port}@127.0.0.1", "-D", f"CASE={case}"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, f"rc={done.returncode}\n{done.stdout}{done.stderr}"
    assert f"CASE {case} OK" in done.stdout
    return done.stdout
