#!/bin/sh
# Builds the Python wheel of `make dist`: the abi3 extension module plus btbctl and btbd as scripts
# (`btb-VERSION.data/scripts/`, which pip installs into the environment's bin/).
#   packaging/wheel.sh VENV_PYTHON STAGE_DIR OUT_DIR
# With zig (the `ziglang` and `cargo-zigbuild` packages from PyPI, installed into the venv here),
# the extension and the tools link against glibc 2.17 symbols: the wheel is manylinux2014. Without
# zig (no PyPI), it is built for this machine's glibc and tagged with the oldest manylinux policy
# maturin's audit grants, loudly.
set -eu
py=$1 stage=$2 out=$3
venv_bin=$(dirname "$py")
host=$(rustc -vV | sed -n 's/^host: //p')
version=$(sed -n 's/^version = "\(.*\)"/\1/p' Cargo.toml | head -n 1)
export PATH="$venv_bin:$PATH" # maturin and cargo-zigbuild run zig as `python -m ziglang`

rm -rf "$stage" && mkdir -p "$stage/maturin" "$out"
if "$py" -m ziglang version >/dev/null 2>&1 && [ -x "$venv_bin/cargo-zigbuild" ] ||
   "$py" -m pip install -q ziglang cargo-zigbuild; then
  echo "wheel: zig $("$py" -m ziglang version): manylinux2014 (glibc 2.17)"
  # A target directory of its own: maturin's zig wrappers differ from cargo-zigbuild's, and in one
  # directory each build would throw the other's away.
  tools_target=${CARGO_TARGET_DIR:-target}/zig-tools
  CARGO_TARGET_DIR=$tools_target cargo zigbuild --release -q -p btb-tools --target "$host.2.17"
  tools=$tools_target/$host/release
  (cd bindings-python && maturin build --release -q --zig --target "$host" \
    --compatibility manylinux2014 -o "$stage/maturin")
else
  echo "*** wheel: zig is not available (pip install ziglang cargo-zigbuild): the wheel is built for" \
       "this machine's glibc and tagged with the oldest policy maturin's audit grants" >&2
  cargo build --release -q -p btb-tools
  tools="${CARGO_TARGET_DIR:-target}/release"
  (cd bindings-python && maturin build --release -q -o "$stage/maturin")
fi

# btbctl and btbd into the wheel's scripts; `wheel pack` writes the RECORD again.
"$py" -m wheel unpack -d "$stage/unpacked" "$stage"/maturin/btb-"$version"-*.whl
scripts=$stage/unpacked/btb-$version/btb-$version.data/scripts
mkdir -p "$scripts"
install -m 0755 "$tools/btbctl" "$tools/btbd" "$scripts/"
rm -f "$out"/btb-*.whl
"$py" -m wheel pack -d "$out" "$stage/unpacked/btb-$version"
