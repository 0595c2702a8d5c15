# btb — top-level build. The two commands of the README:
#   make demo    build the library, header and Python module; run the C and Python examples
#   make test    run every test suite: Rust (core, C ABI incl. ASan/valgrind), Python, install
# Also: make install PREFIX=/usr/local [DESTDIR=…], make bench, make lint, make stress, make tsan,
# make dist / dist-check / man / docs (the block at the end), make soak.

PREFIX ?= /usr/local
BINDIR ?= $(PREFIX)/bin
LIBDIR ?= $(PREFIX)/lib
INCLUDEDIR ?= $(PREFIX)/include
MANDIR ?= $(PREFIX)/share/man
VERSION := $(shell sed -n 's/^version = "\(.*\)"/\1/p' Cargo.toml | head -n 1)
MAJOR := $(firstword $(subst ., ,$(VERSION)))
CARGO ?= cargo
VENV ?= .venv
PY := $(abspath $(VENV))/bin/python
# What a static link of libbtb.a needs besides libc (rustc --print native-static-libs on Linux).
NATIVE_STATIC_LIBS := -lgcc_s -lutil -lrt -lpthread -lm -ldl -lc
# Where cargo builds: $CARGO_TARGET_DIR when the user set one, as cargo itself honours it.
TARGET_DIR := $(abspath $(or $(CARGO_TARGET_DIR),target))
RELEASE := $(TARGET_DIR)/release

# What `make test` needs beyond a Rust toolchain, a C compiler and Python 3 is found on PATH, else
# bootstrapped — cmake from PyPI into the repo venv; valgrind with apt-get when root — else that
# part is skipped with a message saying what was skipped and how to get it.
SYSTEM_CMAKE := $(shell command -v cmake 2>/dev/null)
CMAKE := $(or $(SYSTEM_CMAKE),$(abspath $(VENV))/bin/cmake)
APT := $(if $(filter 0,$(shell id -u)),$(shell command -v apt-get 2>/dev/null))
# Installs Debian packages (root only; a fresh machine may have no package lists yet).
APT_INSTALL := DEBIAN_FRONTEND=noninteractive apt-get update -qq >/dev/null && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq

# The D-Bus platform tests run btb against python-dbusmock's NetworkManager, UPower and logind on a
# private dbus-daemon. python-dbusmock needs dbus-python, which pip cannot build without the libdbus
# headers: its venv is made on the system python3 with Debian's python3-dbus (apt-get when root),
# else those tests are skipped with a message.
SYSTEM_PYTHON3 := /usr/bin/python3
DBUSMOCK_VENV := .venv-dbusmock
DBUSMOCK := $(abspath $(DBUSMOCK_VENV))/bin/python

.PHONY: all lib tools header python demo test test-rust test-python test-install install lint bench stress tsan soak clean fuzz

all: lib tools header python

lib:
	$(CARGO) build --release -p btb-ffi

# btbctl and btbd.
tools:
	$(CARGO) build --release -p btb-tools

header:
	$(CARGO) test -q -p btb-ffi --test header

$(PY):
	python3 -m venv $(VENV) || { [ -n "$(APT)" ] && $(APT_INSTALL) python3-venv >/dev/null && \
	  python3 -m venv $(VENV); } || { echo "make: cannot create a Python venv: install python3-venv" >&2; exit 1; }
	$(VENV)/bin/pip install -q --upgrade pip
	$(VENV)/bin/pip install -q -r bindings-python/requirements-dev.txt

# A real wheel (abi3), installed into the venv: the tests import the installed package.
python: $(PY)
	rm -rf build/wheels
	cd bindings-python && $(abspath $(VENV))/bin/maturin build --release -q -o $(abspath build/wheels)
	$(VENV)/bin/pip install -q --force-reinstall --no-deps build/wheels/btb-*.whl

demo: all
	$(MAKE) -C examples-c run
	$(PY) bindings-python/examples/register.py
	$(PY) bindings-python/examples/tasks.py
	$(PY) bindings-python/examples/out_of_process.py
	$(PY) bindings-python/examples/clients.py
	$(PY) bindings-python/examples/machine.py --seconds 2

test: test-rust test-python test-install

# The suites' brokers listen in a runtime directory of this checkout's own: two `make test` at once
# (two clones, two worktrees) never reach each other's brokers, nor a btbd the user runs.
TEST_RUNTIME := $(abspath build/test-runtime)
test-rust test-python: export XDG_RUNTIME_DIR := $(TEST_RUNTIME)
$(TEST_RUNTIME):
	mkdir -p -m 0700 $@

# Not made (no python3-dbus, no root to install it): the recipe says so, the D-Bus platform tests
# skip themselves, and it is tried again next time.
$(DBUSMOCK):
	@command -v dbus-daemon >/dev/null || { [ -n "$(APT)" ] && echo "make: installing dbus-daemon" && \
	  $(APT_INSTALL) dbus-daemon >/dev/null; } || true
	@$(SYSTEM_PYTHON3) -c 'import dbus' 2>/dev/null || { [ -n "$(APT)" ] && echo "make: installing python3-dbus" && \
	  $(APT_INSTALL) python3-dbus python3-venv >/dev/null; } || true
	@if command -v dbus-daemon >/dev/null && $(SYSTEM_PYTHON3) -c 'import dbus' 2>/dev/null && \
	  $(SYSTEM_PYTHON3) -m venv --system-site-packages $(DBUSMOCK_VENV) && \
	  $(DBUSMOCK_VENV)/bin/pip install -q python-dbusmock; then :; else rm -rf $(DBUSMOCK_VENV); \
	  echo "*** SKIPPED: the D-Bus platform tests (python-dbusmock needs python3-dbus: apt-get install python3-dbus python3-venv)" >&2; fi

# valgrind: the C ABI suites also run under it; without it (and no way to install it) they are
# skipped by name, loudly, and everything else still runs.
test-rust: export BTB_DBUSMOCK_PYTHON := $(DBUSMOCK)
test-rust: $(DBUSMOCK) | $(TEST_RUNTIME)
	@command -v valgrind >/dev/null || { [ -n "$(APT)" ] && echo "make: installing valgrind" && \
	  $(APT_INSTALL) valgrind >/dev/null; } || true
	@if command -v valgrind >/dev/null; then $(CARGO) test; else \
	  echo "*** SKIPPED: the C ABI tests under valgrind (valgrind is not installed; apt-get install valgrind)" >&2; \
	  $(CARGO) test -- --skip under_valgrind; \
	  echo "*** SKIPPED: the C ABI tests under valgrind (see above)" >&2; fi
	@# Where exec hosts got cgroups of their own (root, cgroup2), their tests again without: in a
	@# mount namespace with no cgroup2 mounted, the fallback of SPEC §5.
	@if [ "$$(id -u)" = 0 ] && findmnt -t cgroup2 >/dev/null 2>&1; then \
	  unshare --mount --propagation private sh -c \
	    'for m in $$(findmnt -n -t cgroup2 -o TARGET); do umount -l "$$m"; done; exec "$$@"' sh \
	    $(CARGO) test -q -p btb-core --test exec_host; fi
	@if [ "$$(id -u)" = 0 ]; then \
	  $(CARGO) test -q -p btb-core --test control -- --ignored peer_uid_is_checked; else \
	  echo "*** SKIPPED: peer_uid_is_checked (root only: it starts a process as nobody; run make test as root)" >&2; fi

# cmake from PyPI when the machine has none (no root needed).
$(abspath $(VENV))/bin/cmake: | $(PY)
	$(VENV)/bin/pip install -q cmake

test-python: python | $(TEST_RUNTIME)
	cd bindings-python && $(PY) -m pytest -q

test-install: lib $(CMAKE)
	rm -rf build/install-test && mkdir -p build/install-test
	$(MAKE) install PREFIX=$(abspath build/install-test/prefix)
	build/install-test/prefix/bin/btbctl --version
	build/install-test/prefix/bin/btbd --version
	grep -q '^ExecStart=$(abspath build/install-test/prefix)/bin/btbd ' build/install-test/prefix/lib/systemd/user/btbd@.service
	@command -v pkg-config >/dev/null || { [ -n "$(APT)" ] && $(APT_INSTALL) pkg-config >/dev/null; } || true
	if command -v pkg-config >/dev/null; then \
	  PKG_CONFIG_PATH=$(abspath build/install-test/prefix)/lib/pkgconfig \
	    $(MAKE) -C examples-c PKG=1 BUILD=$(abspath build/install-test/pkg) run; \
	else echo "*** SKIPPED: the examples built with pkg-config (not installed; apt-get install pkg-config)" >&2; fi
	$(CMAKE) -S examples-c -B build/install-test/cmake -DCMAKE_PREFIX_PATH=$(abspath build/install-test/prefix) >/dev/null
	$(CMAKE) --build build/install-test/cmake >/dev/null
	for e in register tasks pull_queue host; do build/install-test/cmake/$$e >/dev/null || exit 1; done
	@echo "cmake package: the four examples built and ran"
	readelf -d build/install-test/cmake/register | grep -q 'NEEDED.*libbtb.so.$(MAJOR)' && echo "example links libbtb.so.$(MAJOR)"

install: lib tools man
	install -d $(DESTDIR)$(BINDIR) $(DESTDIR)$(LIBDIR) $(DESTDIR)$(INCLUDEDIR) $(DESTDIR)$(LIBDIR)/pkgconfig $(DESTDIR)$(LIBDIR)/cmake/btb
	install -m 0755 $(RELEASE)/btbctl $(RELEASE)/btbd $(DESTDIR)$(BINDIR)/
	install -d $(DESTDIR)$(PREFIX)/lib/systemd/user
	sed -e 's|/usr/local/bin/btbd|$(BINDIR)/btbd|' contrib/systemd/btbd@.service > $(DESTDIR)$(PREFIX)/lib/systemd/user/btbd@.service
	install -m 0755 $(RELEASE)/libbtb.so $(DESTDIR)$(LIBDIR)/libbtb.so.$(VERSION)
	ln -sf libbtb.so.$(VERSION) $(DESTDIR)$(LIBDIR)/libbtb.so.$(MAJOR)
	ln -sf libbtb.so.$(MAJOR) $(DESTDIR)$(LIBDIR)/libbtb.so
	install -m 0644 $(RELEASE)/libbtb.a $(DESTDIR)$(LIBDIR)/libbtb.a
	install -m 0644 include/btb.h $(DESTDIR)$(INCLUDEDIR)/btb.h
	sed -e 's|@PREFIX@|$(PREFIX)|; s|@LIBDIR@|$(LIBDIR)|; s|@INCLUDEDIR@|$(INCLUDEDIR)|; s|@VERSION@|$(VERSION)|; s|@LIBS_PRIVATE@|$(NATIVE_STATIC_LIBS)|' \
	  packaging/btb.pc.in > $(DESTDIR)$(LIBDIR)/pkgconfig/btb.pc
	sed -e 's|@VERSION@|$(VERSION)|; s|@MAJOR@|$(MAJOR)|' packaging/btbConfig.cmake.in > $(DESTDIR)$(LIBDIR)/cmake/btb/btbConfig.cmake
	sed -e 's|@VERSION@|$(VERSION)|; s|@MAJOR@|$(MAJOR)|' packaging/btbConfigVersion.cmake.in > $(DESTDIR)$(LIBDIR)/cmake/btb/btbConfigVersion.cmake
	install -d $(DESTDIR)$(MANDIR)/man1 $(DESTDIR)$(MANDIR)/man8
	install -m 0644 $(MAN_PAGES)/*.1 $(DESTDIR)$(MANDIR)/man1/
	install -m 0644 $(MAN_PAGES)/*.8 $(DESTDIR)$(MANDIR)/man8/

lint:
	@{ $(CARGO) fmt --version && $(CARGO) clippy --version; } >/dev/null 2>&1 || rustup component add rustfmt clippy
	$(CARGO) fmt --all -- --check
	$(CARGO) clippy --workspace --all-targets -- -D warnings

bench: export BTB_DBUSMOCK_PYTHON := $(DBUSMOCK)
bench: python $(DBUSMOCK)
	$(CARGO) bench -p btb-ffi --bench register
	$(CARGO) bench -p btb-core --bench runtime
	$(CARGO) bench -p btb-core --bench contention
	$(CARGO) bench -p btb-core --bench memory
	$(CARGO) bench -p btb-core --bench netlink_event
	$(CARGO) bench -p btb-core --bench dbus_event
	$(CARGO) bench -p btb-core --bench exec_spawn
	$(CARGO) bench -p btb-core --bench client
	$(CARGO) bench -p btb-tools --bench list
	$(CARGO) bench -p btb-tools --bench btbd_rss
	$(CARGO) bench -p btb-tools --bench activation
	$(PY) bench/compare_apscheduler.py
	bash bench/idle_strace.sh 60 10000

# Nightly-style: the 8-thread stress test for 60 s in release mode (the test suite runs it for 10 s).
stress:
	BTB_STRESS_SECS=60 $(CARGO) test --release -p btb-core --test runtime_stress -- --nocapture

# The soak (docs/soak.md), minutes long and not part of `make test` or CI: $(SOAK_CLIENTS) client
# processes registering, requesting and disconnecting, exec hosts and handed runs, the broker
# SIGKILLed every $(SOAK_KILL_SECS) s and taken over, for $(SOAK_SECS) s; then it checks that no
# acknowledged registration or fire was lost, nothing ran twice or twice at once, and that the
# broker's RSS, fds and threads stayed flat. Release mode; prints its figures.
SOAK_SECS ?= 180
SOAK_CLIENTS ?= 50
SOAK_KILL_SECS ?= 30
soak:
	SOAK_SECS=$(SOAK_SECS) SOAK_CLIENTS=$(SOAK_CLIENTS) SOAK_KILL_SECS=$(SOAK_KILL_SECS) \
	  $(CARGO) test --release -p btb-core --test soak -- --ignored --exact soak --nocapture

# ThreadSanitizer over the stress and concurrency tests. Needs a nightly toolchain with rust-src
# (the standard library is rebuilt instrumented; without that TSan reports false races).
TSAN_TARGET := $(shell rustc -vV | sed -n 's/^host: //p')
tsan:
	@rustup toolchain list | grep -q '^nightly' || { echo "make tsan: no nightly toolchain installed"; exit 2; }
	rustup component add rust-src --toolchain nightly
	RUSTFLAGS=-Zsanitizer=thread CARGO_TARGET_DIR=target/tsan BTB_STRESS_SECS=10 \
	  $(CARGO) +nightly test -Zbuild-std --target $(TSAN_TARGET) -p btb-core \
	  --test runtime_stress --test runtime_cancel --test runtime_pool --test runtime_handlers \
	  --test runtime_latch --test runtime_timers --test runtime_restart

clean:
	$(CARGO) clean
	rm -rf build examples-c/build

# Fuzzing (docs/fuzzing.md): each cargo-fuzz target of fuzz/ for $(FUZZ_SECS) s, one after
# another, in one process each. cargo-fuzz needs nightly flags: RUSTC_BOOTSTRAP=1 lets the stable
# toolchain take them. Builds in fuzz/target only; crashes land in fuzz/artifacts/<target>/.
FUZZ_SECS ?= 600
FUZZ_TARGETS ?= manifest calendar trigger_json frames
fuzz:
	@$(CARGO) fuzz --version >/dev/null 2>&1 || $(CARGO) install cargo-fuzz --locked
	cd fuzz && for t in $(FUZZ_TARGETS); do \
	  case $$t in calendar) len=256;; *) len=4096;; esac; \
	  RUSTC_BOOTSTRAP=1 $(CARGO) fuzz run $$t -- -max_total_time=$(FUZZ_SECS) -max_len=$$len -timeout=10 || exit 1; \
	done

# ---- Distribution (docs/packaging.md) --------------------------------------------------------------
#   make man         btbctl.1 (+ btbctl-COMMAND.1) and btbd.8 from the clap definitions, in build/man
#   make dist        build/dist/: the wheel (abi3, manylinux, with btbctl and btbd) and the .deb
#   make dist-check  installs each as a user would, with no Rust toolchain on PATH (slow: not in test)
#   make docs        docs/ checked, and the HTML API references in build/docs/
MAN_PAGES := build/man
DIST := build/dist
DIST_STAGE := build/dist-stage

.PHONY: man dist dist-wheel dist-deb dist-check docs

man: tools
	rm -rf $(MAN_PAGES)
	$(RELEASE)/btbctl generate-man $(MAN_PAGES)
	$(RELEASE)/btbd --generate-man $(MAN_PAGES)

dist: dist-wheel dist-deb
	@ls -l $(DIST)

dist-wheel: $(PY)
	$(PY) -m pip install -q wheel
	sh packaging/wheel.sh $(PY) $(abspath $(DIST_STAGE)/wheel) $(abspath $(DIST))

# Debian's layout: PREFIX=/usr, the library in /usr/lib (the CMake package finds its prefix from
# there), the unit in /usr/lib/systemd/user.
dist-deb: lib tools man
	@command -v dpkg-shlibdeps >/dev/null || { [ -n "$(APT)" ] && $(APT_INSTALL) dpkg-dev >/dev/null; } || \
	  { echo "make dist-deb: needs dpkg-dev (apt-get install dpkg-dev)" >&2; exit 1; }
	rm -rf $(DIST_STAGE)/deb
	$(MAKE) --no-print-directory install DESTDIR=$(abspath $(DIST_STAGE)/deb) PREFIX=/usr
	sh packaging/deb/build.sh $(DIST_STAGE)/deb $(VERSION) $(DIST)

dist-check: dist $(CMAKE)
	CMAKE=$(CMAKE) tests/dist/check.sh $(DIST)

# The Python reference is pdoc over the installed package: the docstrings of the compiled module
# (pdoc 16 cannot load btb/_btb.pyi — a NameError in its stub reader — so signatures carry no
# types). The C reference is Doxygen over include/btb.h, failing on any warning. A tool that cannot
# be had is skipped by name; the docs checks (tests/docs/check.py) always run.
docs: lib python
	rm -rf build/docs && mkdir -p build/docs
	@$(PY) -m pip install -q pdoc || echo "*** SKIPPED: the Python API reference (cannot install pdoc from PyPI: pip install pdoc)" >&2
	if $(PY) -m pdoc --version >/dev/null 2>&1; then $(PY) -m pdoc -o build/docs/python btb btb.host; fi
	@command -v doxygen >/dev/null || { [ -n "$(APT)" ] && echo "make: installing doxygen" && \
	  $(APT_INSTALL) doxygen >/dev/null; } || true
	@if command -v doxygen >/dev/null; then { cat docs/Doxyfile; echo "PROJECT_NUMBER = $(VERSION)"; } | doxygen - && \
	  echo "C API reference: build/docs/c/index.html"; else \
	  echo "*** SKIPPED: the C API reference (doxygen is not installed; apt-get install doxygen)" >&2; fi
	$(PY) tests/docs/check.py
