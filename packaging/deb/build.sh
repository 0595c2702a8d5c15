#!/bin/sh
# Makes the .deb of `make dist` from a `make install DESTDIR=ROOT PREFIX=/usr` tree:
#   packaging/deb/build.sh ROOT VERSION OUT_DIR
# One binary package, `btb`: libbtb.so.0 (+ the libbtb.so link, header, btb.pc, CMake package for
# building against it), btbctl, btbd, the systemd user unit and the man pages. Dependencies come
# from dpkg-shlibdeps over the ELF files; files are root-owned (dpkg-deb --root-owner-group).
set -eu
root=$(cd "$1" && pwd) version=$2 out=$3
here=$(cd "$(dirname "$0")" && pwd)
arch=$(dpkg --print-architecture)

# Debian policy: compressed man pages, a copyright file, no static library in a runtime package
# (libbtb.a stays with `make install`).
rm -f "$root/usr/lib/libbtb.a"
find "$root/usr/share/man" -type f -name '*.[18]' -exec gzip -9n {} +
install -d "$root/usr/share/doc/btb"
install -m 0644 "$here/copyright" "$root/usr/share/doc/btb/copyright"

# What the ELF files need, as dpkg-shlibdeps reads it: in a debhelper-like tree (debian/control,
# the package's files under debian/btb/).
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
mkdir "$work/debian"
printf 'Source: btb\n\nPackage: btb\nArchitecture: any\n' > "$work/debian/control"
ln -s "$root" "$work/debian/btb"
elves="debian/btb/usr/lib/libbtb.so.$version debian/btb/usr/bin/btbctl debian/btb/usr/bin/btbd"
depends=$(cd "$work" && dpkg-shlibdeps -O $elves | sed -n 's/^shlibs:Depends=//p')
[ -n "$depends" ] || { echo "packaging/deb/build.sh: dpkg-shlibdeps found no dependencies" >&2; exit 1; }

install -d "$root/DEBIAN"
sed -e "s|@VERSION@|$version|; s|@ARCH@|$arch|; s|@DEPENDS@|$depends|" \
    -e "s|@SIZE@|$(du -sk --exclude=DEBIAN "$root" | cut -f1)|" "$here/control.in" > "$root/DEBIAN/control"
# The library: its shlibs entry (for packages built against it) and ldconfig when it comes and goes.
echo "libbtb ${version%%.*} btb (>= $version)" > "$root/DEBIAN/shlibs"
echo "activate-noawait ldconfig" > "$root/DEBIAN/triggers"
(cd "$root" && find usr -type f -print0 | sort -z | xargs -0 md5sum) > "$root/DEBIAN/md5sums"
chmod 0644 "$root/DEBIAN/"*

mkdir -p "$out"
rm -f "$out"/btb_*.deb
dpkg-deb --root-owner-group -Zxz --build "$root" "$out/btb_${version}-1_${arch}.deb"
