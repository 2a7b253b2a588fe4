#!/bin/bash
# Set up everything the test suite needs on a fresh Debian 12+ machine, then run all of it:
# lint (ruff), types (mypy) and every test, the real dpkg/apt/systemd ones included.
# Usage (as root, from anywhere):  tests/run.sh [pytest arguments...]
set -euo pipefail
cd "$(dirname "$(readlink -f "$0")")/.."
export PATH=/usr/sbin:/usr/bin:/sbin:/bin
export DEBIAN_FRONTEND=noninteractive
[ "$(id -u)" = 0 ] || { echo "tests/run.sh: the suite needs root (it builds containers and installs .debs inside them)" >&2; exit 2; }

# Debian packages: the runtime dependencies plus the tools the real tests drive.
debs=(python3 python3-apt python3-xdg python3-venv gcc libc6-dev dpkg-dev apt-utils fakeroot
      systemd systemd-container dbus util-linux procps
      build-essential debhelper dh-python pybuild-plugin-pyproject python3-all python3-setuptools bash-completion
      lintian man-db nodejs ruby default-jdk-headless
      ansible-core)  # Debian's own ansible-playbook drives the fleet tests' hosts over ssh
missing=()
for p in "${debs[@]}"; do
    dpkg-query -W -f='${Status}\n' "$p" 2>/dev/null | grep -q '^install ok installed$' || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
    echo "tests/run.sh: installing ${missing[*]}"
    apt-get update -q; updated=1
    apt-get install -y -q --no-install-recommends "${missing[@]}"
fi

# Packages the tests install only inside throw-away containers (never on this host, where
# unattended-upgrades would start upgrading the machine): downloaded, not installed.
container_debs=(unattended-upgrades python3-distro-info python3-dbus
                libnotify-bin libnotify4 python3-gi gir1.2-glib-2.0 libgirepository-1.0-1
                openssh-server openssh-client openssh-sftp-server runit-helper libwrap0)
mkdir -p tests/.cache/debs
for p in "${container_debs[@]}"; do
    if ! ls tests/.cache/debs/"${p}"_*.deb >/dev/null 2>&1; then
        [ -n "${updated:-}" ] || { apt-get update -q; updated=1; }
        (cd tests/.cache/debs && apt-get download -q "$p")
    fi
done

# promtool, to validate the metrics and alert rules: taken from Debian's prometheus package,
# unpacked, never installed (installing it would start a Prometheus server on systemd hosts).
if [ ! -x tests/.cache/promtool/usr/bin/promtool ]; then
    if ! ls tests/.cache/debs/prometheus_*.deb >/dev/null 2>&1; then
        [ -n "${updated:-}" ] || { apt-get update -q; updated=1; }
        (cd tests/.cache/debs && apt-get download -q prometheus)
    fi
    dpkg-deb -x "$(ls tests/.cache/debs/prometheus_*.deb | tail -n 1)" tests/.cache/promtool
fi

# Test-only Python tools in a venv that still sees Debian's apt_pkg.
if ! cmp -s tests/requirements.txt .venv/requirements.installed; then
    /usr/bin/python3 -m venv --system-site-packages .venv
    .venv/bin/pip install -q --disable-pip-version-check -r tests/requirements.txt
    cp tests/requirements.txt .venv/requirements.installed
fi

.venv/bin/ruff check restart tests bench
.venv/bin/mypy
exec .venv/bin/python -m pytest "$@"
