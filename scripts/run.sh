#!/usr/bin/env bash
# Quick start, command 1: install what is missing and run the gateway with the
# bundled default config (SMTP filter on 127.0.0.1:10024, local Maildir
# delivery and quarantine under ./var). Extra arguments go to `mailsift serve`.
#
# Run as root, the supervisor stays root (sockets, clamd and spamd as their own
# users) and the workers run as the unprivileged user `mailsift` (USER in the
# config; scripts/setup.sh creates it).  They import mailsift from this checkout
# and keep their state in ./var: when `mailsift` cannot read the checkout (a
# clone under /root, mode 0700), this says so and keeps the workers as root
# for this run (MAILSIFT_USER=); clone into /opt or /srv to have the drop.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
scripts/setup.sh
if [ "$(id -u)" = 0 ] && [ -z "${MAILSIFT_USER+set}" ] && getent passwd mailsift >/dev/null \
  && ! runuser -u mailsift -- .venv/bin/python -c 'import mailsift.cli.main' >/dev/null 2>&1; then
  echo "run: WARNING: user mailsift cannot read $PWD or its .venv (a directory above is closed to it);" >&2
  echo "run: WARNING: the workers run as ROOT this time. Clone into /opt or /srv to run them as mailsift." >&2
  export MAILSIFT_USER=
fi
exec .venv/bin/mailsift serve "$@"
