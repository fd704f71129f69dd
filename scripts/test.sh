#!/usr/bin/env bash
# Quick start, command 2: install the test dependencies (Postfix, swaks, pytest,
# ruff, mypy) and run the whole suite: lint, types, unit, protocol, corpus,
# end-to-end tests with a real Postfix, and the tiers (faults, cluster, ...). Extra arguments go to pytest.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
scripts/setup.sh --test
echo "== ruff"
.venv/bin/ruff check src tests bench
.venv/bin/ruff format --check src tests bench
echo "== import contracts (pyproject.toml [tool.importlinter])"
.venv/bin/lint-imports --no-cache
echo "== mypy (strict, src/)"
.venv/bin/mypy
echo "== pytest"
exec .venv/bin/pytest -p no:cacheprovider "$@"
