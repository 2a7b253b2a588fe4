# Developer shortcuts.  The Debian package is built in place with dpkg-buildpackage;
# its results (restartctl_VERSION_all.deb, .buildinfo, .changes) land in the parent
# directory, as usual for Debian packages, and the tree is cleaned afterwards.

VERSION := $(shell dpkg-parsechangelog -S Version 2>/dev/null)
CHANGES = ../restartctl_$(VERSION)_$(shell dpkg --print-architecture).changes

# Debian's own python3 and tools only: a python3 from pyenv or a virtualenv earlier on
# PATH would build against the wrong interpreter.
DEBPATH = /usr/sbin:/usr/bin:/sbin:/bin

.PHONY: all deb lintian check completion clean

all: deb

deb:
	env PATH=$(DEBPATH) dpkg-buildpackage -us -uc -b --post-clean

# Debian 12's lintian; warnings fail like errors.  Overrides, each with its reason:
# debian/restartctl.lintian-overrides.
lintian:
	env PATH=$(DEBPATH) lintian --pedantic --fail-on error,warning $(CHANGES)

check:
	tests/run.sh

# The bash completion is generated from the argument parser (restart/cli.py).
completion:
	/usr/bin/python3 completion/generate.py > completion/restartctl.new
	mv completion/restartctl.new completion/restartctl

clean:
	env PATH=$(DEBPATH) debian/rules clean
	rm -f completion/restartctl.new
