#!/usr/bin/env bash
# make dist-check: each artifact of `make dist` installed and used as a user would, on a machine
# state with no Rust toolchain: every command here runs with `env -i PATH=/usr/bin:/bin` (dpkg also
# gets /usr/sbin:/sbin, where it finds ldconfig), a scratch HOME and nothing else inherited.
#   tests/dist/check.sh [DIST_DIR]      (default build/dist)
# The wheel goes into a fresh venv of /usr/bin/python3, runs two examples and the tools; the .deb is
# installed into a scratch dpkg root, the C examples are built with pkg-config against it and run,
# then it is purged and nothing of it may be left.
set -euo pipefail
cd "$(dirname "$0")/../.."
repo=$PWD
dist=$(realpath "${1:-build/dist}")
version=$(sed -n 's/^version = "\(.*\)"/\1/p' Cargo.toml | head -n 1)
scratch=$(mktemp -d /tmp/btb-dist-check.XXXXXX)
trap 'rm -rf "$scratch"' EXIT
mkdir -p "$scratch/home" "$scratch/run"
chmod 0700 "$scratch/run"

clean() {
  env -i PATH=/usr/bin:/bin HOME="$scratch/home" XDG_RUNTIME_DIR="$scratch/run" LANG=C.UTF-8 "$@"
}
fail() { echo "dist-check: FAILED: $*" >&2; exit 1; }
step() { echo "== dist-check: $*"; }
# The newest glibc symbol version an ELF file needs (e.g. 2.17).
glibc_needed() {
  objdump -T "$1" | sed -n 's/.*GLIBC_\([0-9][0-9.]*\).*/\1/p' | sort -uV | tail -n 1
}

clean sh -c 'command -v cargo || command -v rustc' && fail "a Rust toolchain is on the clean PATH"

# ---- the wheel ---------------------------------------------------------------------------------
start=$SECONDS
wheels=("$dist"/btb-"$version"-*.whl)
[ ${#wheels[@]} = 1 ] && [ -f "${wheels[0]}" ] || fail "not one wheel in $dist: ${wheels[*]}"
wheel=${wheels[0]}
step "wheel $(basename "$wheel") ($(du -k "$wheel" | cut -f1) KiB)"
case $(basename "$wheel") in
  *-cp39-abi3-manylinux2014_*|*-cp39-abi3-*manylinux_2_17_*) policy_glibc=2.17 ;;
  *-cp39-abi3-manylinux_2_*)
    policy_glibc=$(basename "$wheel" | sed -n 's/.*-manylinux_2_\([0-9]*\)_.*/2.\1/p') ;;
  *) fail "the wheel is not tagged cp39-abi3 manylinux: $(basename "$wheel")" ;;
esac
clean /usr/bin/python3 -m venv "$scratch/venv"
clean "$scratch/venv/bin/pip" install -q --no-index "$wheel"
for tool in btbctl btbd; do
  [ -x "$scratch/venv/bin/$tool" ] || fail "the wheel did not install $tool into the venv's bin/"
  [ "$(clean "$scratch/venv/bin/$tool" --version)" = "$tool $version" ] || fail "$tool --version"
done
ext=$(echo "$scratch"/venv/lib/python3*/site-packages/btb/_btb.abi3.so)
for elf in "$ext" "$scratch/venv/bin/btbctl" "$scratch/venv/bin/btbd"; do
  needed=$(glibc_needed "$elf")
  [ "$(printf '%s\n%s\n' "$needed" "$policy_glibc" | sort -V | tail -n 1)" = "$policy_glibc" ] ||
    fail "$(basename "$elf") needs glibc $needed, newer than the wheel's tag promises ($policy_glibc)"
  echo "   $(basename "$elf"): needs glibc $needed (tag: $policy_glibc)"
done
(cd "$scratch" && clean "$scratch/venv/bin/python" -c \
  'import btb, sys; assert btb.__file__.startswith(sys.prefix), btb.__file__') ||
  fail "btb is not imported from the venv"
clean "$scratch/venv/bin/python" bindings-python/examples/register.py > "$scratch/register.out" 2>&1
grep -q 'registration failed as expected' "$scratch/register.out" || fail "register.py: $(cat "$scratch/register.out")"
clean "$scratch/venv/bin/python" bindings-python/examples/tasks.py > "$scratch/tasks.out" 2>&1
grep -q SUCCEEDED "$scratch/tasks.out" || fail "tasks.py: $(cat "$scratch/tasks.out")"
echo "   installed into a fresh venv: register.py and tasks.py ran, btbctl and btbd --version ok" \
     "($((SECONDS - start)) s)"

# ---- the .deb ----------------------------------------------------------------------------------
start=$SECONDS
debs=("$dist"/btb_"$version"-*.deb)
[ ${#debs[@]} = 1 ] && [ -f "${debs[0]}" ] || fail "not one .deb in $dist: ${debs[*]}"
deb=${debs[0]}
step "deb $(basename "$deb") ($(du -k "$deb" | cut -f1) KiB)"
clean dpkg-deb -c "$deb" > "$scratch/deb.list"
for path in ./usr/lib/libbtb.so."$version" "./usr/lib/libbtb.so.0 -> libbtb.so.$version" \
    "./usr/lib/libbtb.so -> libbtb.so.0" ./usr/include/btb.h ./usr/lib/pkgconfig/btb.pc \
    ./usr/lib/cmake/btb/btbConfig.cmake ./usr/lib/cmake/btb/btbConfigVersion.cmake \
    ./usr/bin/btbctl ./usr/bin/btbd ./usr/lib/systemd/user/btbd@.service \
    ./usr/share/man/man1/btbctl.1.gz ./usr/share/man/man1/btbctl-enable.1.gz \
    ./usr/share/man/man8/btbd.8.gz ./usr/share/doc/btb/copyright; do
  grep -qF " $path" "$scratch/deb.list" || fail "the .deb has no $path"
done
awk '$2 != "root/root" { print; bad = 1 } END { exit bad }' "$scratch/deb.list" ||
  fail "files of the .deb not owned by root/root (above)"

root=$scratch/root
mkdir -p "$root"/var/lib/dpkg/{info,updates}
touch "$root/var/lib/dpkg/status"
dpkg_root() { clean env PATH=/usr/sbin:/usr/bin:/sbin:/bin dpkg --root="$root" --log=/dev/null "$@"; }
dpkg_root_query() { clean dpkg-query --admindir="$root/var/lib/dpkg" "$@"; }
# The scratch root has the package's files and nothing else: its Depends (libc6, libgcc-s1) are
# this machine's, outside that database, hence --force-depends.
dpkg_root --force-depends -i "$deb" > "$scratch/dpkg.out" 2>&1 || fail "dpkg -i: $(cat "$scratch/dpkg.out")"
[ "$(dpkg_root_query -W -f='${db:Status-Abbrev}' btb)" = "ii " ] || fail "btb is not installed in the scratch root"
clean readelf -d "$root/usr/lib/libbtb.so.0" | grep -q 'SONAME.*\[libbtb\.so\.0\]' ||
  fail "libbtb.so.0 has no SONAME libbtb.so.0"
[ "$(clean "$root/usr/bin/btbctl" --version)" = "btbctl $version" ] || fail "btbctl --version"
[ "$(clean "$root/usr/bin/btbd" --version)" = "btbd $version" ] || fail "btbd --version"
unit=$root/usr/lib/systemd/user/btbd@.service
grep -q '^ExecStart=/usr/bin/btbd --manifest ' "$unit" || fail "the unit does not run /usr/bin/btbd"
grep -q '^Documentation=man:btbd(8)' "$unit" || fail "the unit's Documentation= is not man:btbd(8)"
for page in man1/btbctl.1.gz man8/btbd.8.gz; do
  warnings=$(zcat "$root/usr/share/man/$page" | clean groff -man -Tutf8 -ww -z 2>&1)
  [ -z "$warnings" ] || fail "groff warns about $page: $warnings"
done
zcat "$root/usr/share/man/man8/btbd.8.gz" | clean groff -man -Tutf8 | sed 's/.\x08//g' | grep -q 'EXIT STATUS' ||
  fail "btbd.8 does not render"

# A user's program, built with pkg-config against the installed package and run.
pc() {
  clean env PKG_CONFIG_SYSROOT_DIR="$root" PKG_CONFIG_LIBDIR="$root/usr/lib/pkgconfig" \
    PKG_CONFIG_ALLOW_SYSTEM_CFLAGS=1 PKG_CONFIG_ALLOW_SYSTEM_LIBS=1 "$@"
}
[ "$(pc pkg-config --modversion btb)" = "$version" ] || fail "pkg-config --modversion btb"
pc make -s -C examples-c PKG=1 BUILD="$scratch/c" all >/dev/null
for example in register tasks pull_queue host; do
  clean env LD_LIBRARY_PATH="$root/usr/lib" "$scratch/c/$example" > "$scratch/$example.out" ||
    fail "examples-c/$example exited $?: $(cat "$scratch/$example.out")"
done
clean env LD_LIBRARY_PATH="$root/usr/lib" ldd "$scratch/c/register" |
  grep -q "libbtb.so.0 => $root/usr/lib/libbtb.so.0" || fail "register did not load the package's libbtb.so.0"
echo "   installed under a scratch dpkg root: SONAME, tools, unit, man pages ok;" \
     "examples-c built with pkg-config and ran"

# The same with the CMake package (find_package(btb) -> btb::btb), when cmake is there (not Rust:
# `make dist-check` passes the system's, or the one it installs into the repo venv from PyPI).
cmake=${CMAKE:-$(command -v cmake || true)}
if [ -n "$cmake" ] && [ -x "$cmake" ]; then
  clean "$cmake" -S examples-c -B "$scratch/cmake" -DCMAKE_PREFIX_PATH="$root/usr" >/dev/null
  clean "$cmake" --build "$scratch/cmake" >/dev/null
  for example in register tasks; do
    clean "$scratch/cmake/$example" > "$scratch/$example.out" 2>&1 ||
      fail "examples-c/$example (CMake) exited $?: $(cat "$scratch/$example.out")"
  done
  clean readelf -d "$scratch/cmake/register" | grep -q "RUNPATH.*$root/usr/lib" ||
    fail "the CMake build of register does not link the package's library"
  echo "   examples-c built with find_package(btb) against it and ran"
else
  echo "*** SKIPPED: the .deb's CMake package (no cmake: apt-get install cmake, or make dist-check)" >&2
fi

# Purged: nothing of the package is left (the scratch root held nothing else but dpkg's database).
dpkg_root --purge btb >/dev/null
[ -z "$(dpkg_root_query -W btb 2>/dev/null)" ] || fail "btb is still known to the scratch dpkg database"
left=$(cd "$root" && find . -path ./var/lib/dpkg -prune -o ! -type d -print)
[ -z "$left" ] || fail "dpkg --purge btb left files behind: $left"
echo "   purged: no file left ($((SECONDS - start)) s)"
echo "dist-check: ok"
