#!/usr/bin/env bash
# Install what mailsift needs on Debian 12, idempotently: Debian packages that
# are missing, the system user `mailsift` the workers run as (when run as root),
# then a virtualenv in .venv with mailsift installed (editable).
#
# The virtualenv is built from a Python the service user can run: Debian's
# /usr/bin/python3 unless PYTHON= names another.  A .venv whose base Python the
# service user cannot read (e.g. a pyenv copy under /root, mode 0700: a worker
# that dropped to `mailsift` could not even import) is said so and made again.
#
#   scripts/setup.sh          runtime only
#   scripts/setup.sh --test   runtime + test dependencies (Postfix, swaks, ClamAV test files,
#                             rspamd, bogofilter, pytest, ruff, mypy; Exim extracted, not installed)
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

want_test=0
[ "${1:-}" = "--test" ] && want_test=1

say() { printf 'setup: %s\n' "$*" >&2; }

as_root() {
  if [ "$(id -u)" = 0 ]; then "$@"
  elif command -v sudo >/dev/null; then sudo "$@"
  else say "need root for: $*"; exit 1
  fi
}

missing_packages() {
  local pkg
  for pkg in "$@"; do
    dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q 'ok installed' || printf '%s ' "$pkg"
  done
}

apt_install() {
  local missing
  missing=$(missing_packages "$@")
  [ -z "$missing" ] && return 0
  say "installing Debian packages: $missing"
  export DEBIAN_FRONTEND=noninteractive
  # Postfix: no configuration dialog and no system instance started; tests run private instances.
  echo "postfix postfix/main_mailer_type select No configuration" | as_root debconf-set-selections
  # PostgreSQL: the tests run private servers; no system cluster is created or started.
  if [ ! -e /etc/postgresql-common/createcluster.conf ]; then
    as_root mkdir -p /etc/postgresql-common
    echo "create_main_cluster = false" | as_root tee /etc/postgresql-common/createcluster.conf >/dev/null
  fi
  as_root apt-get update -q >/dev/null
  # No system daemon is started by the install (squid on 3128, c-icap on 1344...): a policy-rc.d
  # that forbids starting services (exit 101) while apt runs, unless one is there already.
  local made_policy=0
  if [ ! -e /usr/sbin/policy-rc.d ]; then
    printf '#!/bin/sh\nexit 101\n' | as_root tee /usr/sbin/policy-rc.d >/dev/null
    as_root chmod 755 /usr/sbin/policy-rc.d
    made_policy=1
  fi
  # shellcheck disable=SC2086
  as_root apt-get install -y -q --no-install-recommends -o Dpkg::Options::=--force-confdef \
    -o Dpkg::Options::=--force-confold $missing >/dev/null
  [ $made_policy = 1 ] && as_root rm -f /usr/sbin/policy-rc.d
  return 0
}

# The interpreter .venv is built from: PYTHON=, else Debian's, else the python3 on PATH.
python_given=1
if [ -z "${PYTHON:-}" ]; then
  python_given=0
  if [ -x /usr/bin/python3 ]; then PYTHON=/usr/bin/python3; else PYTHON=python3; fi
fi
# The unprivileged user `mailsift serve` runs its workers as when started as root (USER).
SERVICE_USER=${MAILSIFT_USER:-mailsift}
# libarchive13 and libmagic1: the C libraries under libarchive-c and python-magic;
# clamav-daemon and spamd: the engines the default config starts (scripts/run.sh).
packages=(ca-certificates libarchive13 libmagic1 clamav-daemon clamav spamassassin spamd spamc)
# Debian's python3-venv only when the python3 on PATH cannot make a venv itself.
if ! { command -v "$PYTHON" >/dev/null && "$PYTHON" -c 'import venv, ensurepip' 2>/dev/null; }; then
  packages+=(python3 python3-venv)
fi
# tests: Postfix and swaks (end to end), ClamAV's test files, rspamd, bogofilter, miltertest,
# PostgreSQL (the policy tests run a private server; no system cluster is created),
# chromium (the web quarantine's browser tests, through Playwright); fail2ban (fail2ban-regex
# checks the shipped filter against the web login log); the Debian package's test
# (scripts/build-deb.sh: python3-venv; systemd-analyze from systemd); Perl's MIME::Tools, the
# evasive-MIME benchmark's independent reader (bench/evasive/readers.pl); 7zip (7zz: encrypted zip
# and 7z fixtures from an implementation independent of the readers mailsift uses)
[ $want_test = 1 ] && packages+=(postfix swaks clamav-testfiles rspamd bogofilter miltertest postgresql chromium fail2ban)
[ $want_test = 1 ] && packages+=(libmime-tools-perl)
[ $want_test = 1 ] && packages+=(python3-venv systemd 7zip)
# fusefs(): FUSE 3 (fusermount3) and what pyfuse3 builds against (tests/integration/test_fusefs.py)
[ $want_test = 1 ] && packages+=(fuse3 libfuse3-dev pkg-config gcc libc6-dev)
# squid and c-icap (c-icap-client): the ICAP service's tests run private instances on free ports
[ $want_test = 1 ] && packages+=(squid c-icap)
# chroot_execvp(chroot=...): a static busybox to run inside a test chroot (tests/integration/test_daemons_procs.py)
[ $want_test = 1 ] && packages+=(busybox-static)
# Exim (tests/integration/test_exim.py): the libraries exim4-daemon-light links (its Depends; the
# package itself conflicts with Postfix as mail-transport-agent, so it is extracted below, not installed)
[ $want_test = 1 ] && packages+=(libdb5.3 libgnutls-dane0 libgnutls30 libidn12 libidn2-0 libnsl2 libpcre2-8-0 libcrypt1)
if command -v dpkg-query >/dev/null; then
  apt_install "${packages[@]}"
else
  say "not a Debian system: install Python >= 3.11$([ $want_test = 1 ] && echo ', Postfix and swaks') yourself"
fi

# The service user: a system user and group, no login shell, no home.
if [ "$(id -u)" = 0 ] && ! getent passwd "$SERVICE_USER" >/dev/null; then
  say "creating the system user $SERVICE_USER (the workers of mailsift serve run as it)"
  getent group "$SERVICE_USER" >/dev/null || groupadd --system "$SERVICE_USER"
  useradd --system --gid "$SERVICE_USER" --no-create-home --home-dir /nonexistent \
    --shell /usr/sbin/nologin "$SERVICE_USER"
fi

# Exim for the tests, beside Postfix: Debian's packages extracted (dpkg-deb -x), not installed, into
# EXIM_ROOT (exim4-config: Debian's split configuration and update-exim4.conf); run as root with its own
# config (exim4 -C, tests/helpers/exim.py). Debian-exim is the user
# compiled into the binary (as exim4-base's postinst makes it).
EXIM_ROOT=${MAILSIFT_EXIM_ROOT:-/opt/mailsift-test/exim}
if [ $want_test = 1 ] && command -v dpkg-deb >/dev/null && [ ! -x "$EXIM_ROOT/usr/sbin/update-exim4.conf" ]; then
  say "extracting Exim (exim4-daemon-light, exim4-base, exim4-config) into $EXIM_ROOT"
  debs=$(mktemp -d)
  chmod 0755 "$debs"
  getent passwd _apt >/dev/null && as_root chown _apt "$debs"
  exim_debs="exim4-daemon-light exim4-base exim4-config"
  # shellcheck disable=SC2086
  (cd "$debs" && { as_root apt-get download -q $exim_debs >/dev/null \
    || { as_root apt-get update -q >/dev/null && as_root apt-get download -q $exim_debs >/dev/null; }; })
  as_root mkdir -p "$EXIM_ROOT"
  for deb in "$debs"/*.deb; do as_root dpkg-deb -x "$deb" "$EXIM_ROOT"; done
  as_root rm -rf "$debs"
  if ldd "$EXIM_ROOT/usr/sbin/exim4" | grep -q 'not found'; then
    say "warning: the extracted Exim misses libraries: $(ldd "$EXIM_ROOT/usr/sbin/exim4" | grep 'not found' | tr -s ' \t' ' ')"
  fi
fi
if [ $want_test = 1 ] && [ "$(id -u)" = 0 ] && ! getent passwd Debian-exim >/dev/null; then
  getent group Debian-exim >/dev/null || groupadd --system Debian-exim
  useradd --system --gid Debian-exim --no-create-home --home-dir /nonexistent --shell /usr/sbin/nologin Debian-exim
fi

# Whether the service user can run the given file (a Python) and read what is next to it.
service_user_can_run() {
  local file=$1
  [ "$(id -u)" = 0 ] && getent passwd "$SERVICE_USER" >/dev/null || return 0  # cannot tell: assume so
  command -v runuser >/dev/null || return 0
  runuser -u "$SERVICE_USER" -- "$file" -c 'import os, sys; sys.exit(0 if os.access(os.__file__, os.R_OK) else 1)' \
    >/dev/null 2>&1
}

if [ -x .venv/bin/python ] && [ -f .venv/pyvenv.cfg ]; then
  base=$(sed -n 's/^executable *= *//p' .venv/pyvenv.cfg)
  [ -n "$base" ] || base=$(sed -n 's/^home *= *//p' .venv/pyvenv.cfg)/python3
  if [ $python_given = 0 ] && ! service_user_can_run "$base"; then
    say ".venv is built from $base, which the service user $SERVICE_USER cannot run (a dropped worker could not import): making .venv again from $PYTHON"
    rm -rf .venv
  fi
fi
if ! service_user_can_run "$(command -v "$PYTHON" || echo "$PYTHON")"; then
  say "warning: $PYTHON cannot be run by $SERVICE_USER; the workers of a root-started serve need USER = None"
fi
if [ "$(id -u)" = 0 ] && getent passwd "$SERVICE_USER" >/dev/null && command -v runuser >/dev/null \
  && ! runuser -u "$SERVICE_USER" -- test -r "$PWD/pyproject.toml"; then
  say "warning: $SERVICE_USER cannot read $PWD (a parent directory is closed to it, e.g. /root 0700):"
  say "  workers dropped to $SERVICE_USER cannot import mailsift from here; clone into /opt or /srv, or set USER = None"
fi

if [ ! -x .venv/bin/python ]; then
  say "creating .venv"
  "$PYTHON" -m venv .venv
fi
.venv/bin/python -c 'import sys; assert sys.version_info >= (3, 11), sys.version' || {
  say ".venv has Python < 3.11; remove .venv and run again with PYTHON=python3.11"; exit 1; }

extra=""
[ $want_test = 1 ] && extra="[test]"
stamp=.venv/.mailsift-installed$extra
if [ ! -f "$stamp" ] || [ pyproject.toml -nt "$stamp" ]; then
  say "installing mailsift$extra into .venv"
  .venv/bin/python -m pip install -q --disable-pip-version-check --upgrade pip >/dev/null
  .venv/bin/python -m pip install -q --disable-pip-version-check -e ".$extra"
  touch "$stamp"
fi
say "ready: $(.venv/bin/mailsift --version)"
