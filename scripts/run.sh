#!/usr/bin/env bash
# Quick start, command 1: install what is missing and run the gateway with the
# bundled default config (SMTP filter on 127.0.0.1:10024, local Maildir
# delivery and quarantine under ./var). Extra arguments go to `mailsift serve`.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
scripts/setup.sh
exec .venv/bin/mailsift serve "$@"
