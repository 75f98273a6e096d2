#!/bin/bash
# rblock: qcow2 for the NBD world.  SPDX-License-Identifier: BSD-3-Clause
# Builds (once, cached) the VM used by the real-client tests: a Debian cloud kernel unpacked with
# dpkg -x, and an initramfs with busybox, the nbd and virtio modules, Debian's nbd-client and its
# libraries, and the guest scripts of tests/vm/.  Prints the cache folder.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
cache=${RB_VM_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/rblock-vm}
kpkg=$(apt-cache depends linux-image-cloud-amd64 2>/dev/null | awk '/Depends: linux-image-/ { print $2; exit }')
[ -n "$kpkg" ] || { echo "build.sh: cannot resolve linux-image-cloud-amd64 (apt-get update?)" >&2; exit 1; }
key="$kpkg-$(cat "$here"/init "$here"/guest-*.sh | md5sum | cut -c1-12)"
out="$cache/$key"
if [ -f "$out/initrd.img" ] && [ -f "$out/vmlinuz" ]; then
  echo "$out"; exit 0
fi
mkdir -p "$out"
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
(cd "$work" && apt-get download "$kpkg" >/dev/null)
dpkg -x "$work"/*.deb "$work/k"
kdir=$(ls -d "$work"/k/lib/modules/*)
cp "$work"/k/boot/vmlinuz-* "$out/vmlinuz"

r="$work/initrd"
mkdir -p "$r"/{bin,sbin,dev,proc,sys,mnt,newroot,lib/modules,tmp,etc}
cp /bin/busybox "$r/bin/busybox"
for m in virtio_ring virtio virtio_pci_modern_dev virtio_pci_legacy_dev virtio_pci failover \
         net_failover virtio_net virtio_blk nbd; do
  cp "$(find "$kdir" -name "$m.ko" | head -1)" "$r/lib/modules/"
done
# nbd-client and the libraries it needs.
cp /usr/sbin/nbd-client "$r/sbin/"
ldd /usr/sbin/nbd-client | awk '/=>/ { print $3 } /^\t\/lib/ { print $1 }' | while read -r lib; do
  [ -f "$lib" ] || continue
  mkdir -p "$r$(dirname "$lib")"
  cp -L "$lib" "$r$lib"
done
cp "$here/init" "$r/init"
cp "$here"/guest-*.sh "$r/"
chmod +x "$r/init" "$r"/guest-*.sh
(cd "$r" && find . | cpio -o -H newc --quiet | gzip -1 > "$out/initrd.img")
echo "$out"
