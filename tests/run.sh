#!/bin/bash
# Set up everything the test suite needs on a fresh Debian 12+ machine, then run all of it:
# lint (ruff), types (mypy) and every test, the real dpkg/apt/systemd ones included.
# Usage (as root, from anywhere):  tests/run.sh [pytest arguments...]
set -euo pipefail
cd "$(dirname "$(readlink -f "$0")")/.."
export PATH=/usr/sbin:/usr/bin:/sbin:/bin
export DEBIAN_FRONTEND=noninteractive
# Wait (up to 10 min) for another apt or unattended-upgrades holding the dpkg lock, rather than fail at once.
apt_get=(apt-get -o DPkg::Lock::Timeout=600)
[ "$(id -u)" = 0 ] || { echo "tests/run.sh: the suite needs root (it builds containers and installs .debs inside them)" >&2; exit 2; }

# Debian packages: the runtime dependencies plus the tools the real tests drive.
debs=(python3 python3-apt python3-xdg python3-venv gcc libc6-dev dpkg-dev apt-utils fakeroot
      systemd systemd-container dbus util-linux procps
      build-essential debhelper dh-python pybuild-plugin-pyproject python3-all python3-setuptools bash-completion
      lintian man-db nodejs ruby default-jdk-headless git debootstrap
      ansible-core openssh-client iproute2  # the fleet tests: ansible-playbook over ssh, from a network namespace
      locales)  # localedef and its charmaps, for a legacy-encoding locale (Debian 13 minimal hosts lack them)
missing=()
for p in "${debs[@]}"; do
    dpkg-query -W -f='${Status}\n' "$p" 2>/dev/null | grep -q '^install ok installed$' || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
    echo "tests/run.sh: installing ${missing[*]}"
    "${apt_get[@]}" update -q; updated=1
    "${apt_get[@]}" install -y -q --no-install-recommends "${missing[@]}"
fi

# Packages the tests install only inside throw-away containers (never on this host, where
# unattended-upgrades would start upgrading the machine): downloaded, not installed.
container_debs=(unattended-upgrades python3-distro-info python3-dbus
                libnotify-bin libnotify4 python3-gi gir1.2-glib-2.0 libgirepository-1.0-1
                cron cron-daemon-common
                openssh-server openssh-client openssh-sftp-server runit-helper libwrap0)
mkdir -p tests/.cache/debs
# The .debs are this host's release's (.complete names it): a host upgraded since fetches them anew.
release=$(. /etc/os-release && echo "${VERSION_CODENAME:-$VERSION_ID}")
if [ -e tests/.cache/debs/.complete ] && [ "$(cat tests/.cache/debs/.complete)" != "$release" ]; then
    rm -f tests/.cache/debs/*.deb tests/.cache/debs/.complete
fi
if [ ! -e tests/.cache/debs/.complete ] || [ tests/run.sh -nt tests/.cache/debs/.complete ]; then
    [ -n "${updated:-}" ] || { "${apt_get[@]}" update -q; updated=1; }
    # ... and the dependencies this host's release adds that the host lacks (Debian 13's
    # unattended-upgrades wants lsb-release, its libnotify4 libgdk-pixbuf-2.0-0), as apt would install them.
    mapfile -t closure < <(apt-get -s -q install --no-install-recommends "${container_debs[@]}" |
                           sed -n 's/^Inst \([^ ]*\) .*/\1/p')
    # sysvinit's runlevel, for the tests that emulate a host without systemd (Debian 13's systemctl
    # no longer reads utmp); only unpacked, never installed, so its dependencies are not fetched.
    for p in "${container_debs[@]}" "${closure[@]}" sysvinit-core; do
        ls tests/.cache/debs/"${p}"_*.deb >/dev/null 2>&1 || (cd tests/.cache/debs && apt-get download -q "$p")
    done
    echo "$release" >tests/.cache/debs/.complete
fi

# promtool, to validate the metrics and alert rules: taken from Debian's promtool package (Debian 13)
# or its prometheus package (Debian 12), unpacked, never installed (installing prometheus would start
# a Prometheus server on systemd hosts).
if [ ! -x tests/.cache/promtool/usr/bin/promtool ]; then
    if ! compgen -G 'tests/.cache/debs/promtool_*.deb' >/dev/null && ! compgen -G 'tests/.cache/debs/prometheus_*.deb' >/dev/null; then
        [ -n "${updated:-}" ] || { "${apt_get[@]}" update -q; updated=1; }
        if apt-cache show promtool >/dev/null 2>&1; then promtool_deb=promtool; else promtool_deb=prometheus; fi
        (cd tests/.cache/debs && apt-get download -q "$promtool_deb")
    fi
    dpkg-deb -x "$(ls tests/.cache/debs/promtool_*.deb tests/.cache/debs/prometheus_*.deb 2>/dev/null | tail -n 1)" \
        tests/.cache/promtool
fi

# Test-only Python tools in a venv that still sees Debian's apt_pkg.
if ! cmp -s tests/requirements.txt .venv/requirements.installed; then
    /usr/bin/python3 -m venv --system-site-packages .venv
    .venv/bin/pip install -q --disable-pip-version-check -r tests/requirements.txt
    cp tests/requirements.txt .venv/requirements.installed
fi

.venv/bin/ruff check restart tests bench
.venv/bin/mypy
# Three workers on two cores: most real tests wait on containers, apt and systemd, not the CPU
# (measured: 15 min serial, 9 min with three). A test file runs whole in one worker, so module-scoped
# containers are shared as before. RCTL_TEST_WORKERS=0 runs everything in this one process.
exec .venv/bin/python -m pytest -n "${RCTL_TEST_WORKERS:-3}" --dist loadfile "$@"
