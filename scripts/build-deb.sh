#!/usr/bin/env bash
# Build the Debian package of this checkout: dist/mailsift_<version>_<arch>.deb,
# and the wheel it installs: dist/mailsift-<version>-py3-none-any.whl (which
# `pip install` takes on its own).  Debian's own tools only: dpkg-deb, Debian's
# /usr/bin/python3 (with python3-venv); no root needed (dpkg-deb --root-owner-group).
#
# The package holds a virtualenv under /opt/mailsift made from /usr/bin/python3
# with the wheel and its dependencies (from pip's configured index), /usr/bin/mailsift,
# /etc/mailsift/config.py (the bundled default config with STATE_DIR /var/lib/mailsift),
# /etc/default/mailsift, the systemd units and timers, and a fail2ban filter.
# Packaging sources: packaging/debian/; see docs/packaging.md.
#
#   scripts/build-deb.sh            build into dist/
#   PYTHON=/usr/bin/python3.11 scripts/build-deb.sh   another Debian Python
#   DEB_VERSION=0.1.0-2 scripts/build-deb.sh          the package's version (default: pyproject's)
#   DEB_COMPRESS=gzip scripts/build-deb.sh            faster to pack, larger (default xz; the tests)
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

say() { printf 'build-deb: %s\n' "$*" >&2; }

PYTHON=${PYTHON:-/usr/bin/python3}
PREFIX=/opt/mailsift
for tool in dpkg-deb dpkg "$PYTHON"; do
  command -v "$tool" >/dev/null || { say "missing $tool (Debian: apt-get install dpkg-dev python3-venv)"; exit 1; }
done
"$PYTHON" -c 'import venv, ensurepip' 2>/dev/null || { say "$PYTHON cannot make a virtualenv: apt-get install python3-venv"; exit 1; }

version=$("$PYTHON" -c 'import tomllib; print(tomllib.load(open("pyproject.toml", "rb"))["project"]["version"])')
deb_version=${DEB_VERSION:-$version}
case "$deb_version" in
  [0-9]*) ;;
  *) say "DEB_VERSION must start with a digit (Debian's rule): $deb_version"; exit 1 ;;
esac
case "${DEB_COMPRESS:-xz}" in
  xz) compress=(-Zxz) ;;
  gzip) compress=(-Zgzip -z1) ;;
  *) say "DEB_COMPRESS: xz or gzip, not $DEB_COMPRESS"; exit 1 ;;
esac
arch=$(dpkg --print-architecture)
pyver=$("$PYTHON" -c 'import sys; print("%d.%d" % sys.version_info[:2])')
pynext=$("$PYTHON" -c 'import sys; print("%d.%d" % (sys.version_info[0], sys.version_info[1] + 1))')
deb=dist/mailsift_${deb_version//:/%3a}_${arch}.deb

mkdir -p dist
work=$(mktemp -d "${TMPDIR:-/tmp}/mailsift-deb.XXXXXX")
trap 'rm -rf "$work"' EXIT
root=$work/root
venv=$root$PREFIX

say "building the wheel of mailsift $version"
rm -f dist/mailsift-"$version"-*.whl
"$PYTHON" -m pip wheel -q --disable-pip-version-check --no-deps -w dist . >/dev/null
wheel=$(ls dist/mailsift-"$version"-*.whl)

say "making the virtualenv $PREFIX from $PYTHON ($pyver)"
"$PYTHON" -m venv "$venv"
"$venv/bin/python" -m pip install -q --disable-pip-version-check --no-compile "$wheel" 2>&1 \
  | grep -v "^WARNING: Location 'file:" >&2 || true
"$venv/bin/python" -c 'import mailsift' || { say "the wheel did not install"; exit 1; }
# The virtualenv is built in $venv and runs from $PREFIX: its scripts' #! lines,
# activate scripts and pyvenv.cfg name the build path; rewrite them.
grep -rlI --null -F "$venv" "$venv" | xargs -0 -r sed -i "s|$venv|$PREFIX|g"
if grep -rqI -F "$work" "$venv"; then
  say "build path left in: $(grep -rlI -F "$work" "$venv" | head -3)"; exit 1
fi
# Byte code compiled now, for the installed paths (the root supervisor never writes into /opt).
find "$venv" -name __pycache__ -type d -prune -exec rm -rf {} +
# (pip does the same and ignores files that are not Python 3, like olefile's olefile2.py.)
"$PYTHON" -m compileall -q -j 0 -s "$root" -p / "$venv/lib" >/dev/null 2>&1 || true

install -d "$root/usr/bin" "$root/etc/mailsift" "$root/etc/default" "$root/etc/fail2ban/filter.d" \
  "$root/lib/systemd/system" "$root/usr/share/doc/mailsift"
ln -s "$PREFIX/bin/mailsift" "$root/usr/bin/mailsift"

# /etc/mailsift/config.py: the bundled default config, its state in /var/lib/mailsift.
default_config=src/mailsift/data/default_config.py
sed -E 's|^STATE_DIR = .*$|STATE_DIR = "/var/lib/mailsift"  # the Debian package'"'"'s state directory|' \
  "$default_config" >"$root/etc/mailsift/config.py"
grep -q '^STATE_DIR = "/var/lib/mailsift"' "$root/etc/mailsift/config.py" \
  || { say "no STATE_DIR line in $default_config to point at /var/lib/mailsift"; exit 1; }
sed -i '1,/^$/s|^# mailsift default configuration (bundled; used when no -c is given)\.|# mailsift configuration (/etc/mailsift/config.py, from the Debian package; the bundled default).|' \
  "$root/etc/mailsift/config.py"
chmod 0640 "$root/etc/mailsift/config.py"
install -m 0644 packaging/debian/default "$root/etc/default/mailsift"
install -m 0644 packaging/fail2ban/mailsift-webq.conf "$root/etc/fail2ban/filter.d/mailsift-webq.conf"
install -m 0644 packaging/debian/systemd/*.service packaging/debian/systemd/*.timer "$root/lib/systemd/system/"
install -m 0644 README.md docs/packaging.md "$root/usr/share/doc/mailsift/"
[ -f LICENSE ] && install -m 0644 LICENSE "$root/usr/share/doc/mailsift/copyright"

install -d "$root/DEBIAN"
install -m 0755 packaging/debian/DEBIAN/postinst packaging/debian/DEBIAN/prerm packaging/debian/DEBIAN/postrm "$root/DEBIAN/"
install -m 0644 packaging/debian/DEBIAN/triggers "$root/DEBIAN/"
(cd "$root" && find etc -type f -printf '/%p\n' | sort) >"$root/DEBIAN/conffiles"
size=$(du -sk --exclude=DEBIAN "$root" | cut -f1)
cat >"$root/DEBIAN/control" <<CONTROL
Package: mailsift
Version: $deb_version
Architecture: $arch
Maintainer: mailsift developers <postmaster@localhost>
Installed-Size: $size
Depends: python3 (>= $pyver~), python3 (<< $pynext), libarchive13, libmagic1, adduser, ca-certificates
Recommends: clamav-daemon, spamd
Suggests: postfix | mail-transport-agent, fail2ban
Section: mail
Priority: optional
Description: mail content-filtering gateway (antivirus, antispam, policy)
 mailsift sits in front of or behind an MTA (SMTP/LMTP content filter,
 milter, Postfix policy service, procmail/qmail filter) and scans mail
 with ClamAV, SpamAssassin, rspamd and its own policy checks; it
 quarantines, delivers, rejects or drops, and offers a web quarantine.
 .
 This package runs it as the systemd service mailsift.service, its
 workers as the system user mailsift, with its state in /var/lib/mailsift.
CONTROL

say "packing $deb"
dpkg-deb --root-owner-group "${compress[@]}" --build "$root" "$deb" >/dev/null
say "built $deb ($(du -h "$deb" | cut -f1)) and $wheel"
printf '%s\n' "$deb"
