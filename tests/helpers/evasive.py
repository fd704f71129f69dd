"""The evasive-MIME set of ``bench/evasive/`` (its generator and its independent readers), loaded
from their files for the tests (bench/ is no package)."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType

BENCH = Path(__file__).resolve().parents[2] / "bench" / "evasive"


def _load(name: str) -> ModuleType:
    module_name = f"mailsift_bench_evasive_{name}"
    if module_name in sys.modules:
        return sys.modules[module_name]
    spec = importlib.util.spec_from_file_location(module_name, BENCH / f"{name}.py")
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[module_name] = module
    spec.loader.exec_module(module)
    return module


generate = _load("generate")
readers = _load("readers")

CASES: list[tuple[str, str, str, str, str, bytes]] = generate.cases()
"""(id, family, kind, description, who reads it that way, message bytes)."""
