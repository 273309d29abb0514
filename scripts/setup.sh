#!/usr/bin/env bash
# One-stop set-up on a fresh Debian/Ubuntu machine with Node >= 20 (run as root, or with sudo available).
#   bash scripts/setup.sh all    install what dbuild needs, then build the example stacks (dbuild all)
#   bash scripts/setup.sh test   install what the tests need, then run the whole test suite
#   bash scripts/setup.sh debian install what dbuild needs, then build the Debian example (examples/debian)
set -euo pipefail
cd "$(dirname "$0")/.."

what=${1:-all}
sudo=""
[ "$(id -u)" -eq 0 ] || sudo="sudo"

# Host tools: QEMU and qemu-img (VMs), OpenSSH + rsync (layer transfer), and what the micro base layer
# and the finalizing layers use on the host: apt-get download (needs fresh package lists), e2fsprogs
# (mkfs.ext4 -d), fdisk (sfdisk), syslinux + mtools + dosfstools (the boot partition), cpio (initramfs),
# xz/zstd (kernel modules), mmdebstrap + debian-archive-keyring (the debian base layer). Tests also start a real OCI registry (docker-registry), use skopeo, and
# check OVF descriptors with xmllint (libxml2-utils).
packages=(qemu-system-x86 qemu-utils rsync openssh-client e2fsprogs fdisk syslinux syslinux-common mtools fakeroot
  dosfstools cpio xz-utils zstd tar gzip ca-certificates mmdebstrap debian-archive-keyring)
# busybox-static: the finalizer clean-up test parses and runs the guest scripts under busybox sh; procps: pgrep.
# fakeroot: the micro base layer builds its rootfs under it when dbuild does not run as root.
# packer: the layer benchmark's side-by-side row (bench/layer.bench.js; skipped without it).
# chromium: the tests open build/report.html in headless Chromium (driven by puppeteer-core).
# test/unit/host-tools.test.ts fails when code, layers, utils or tests run a command not installed here.
# packer: also the reference of bench/debian.bench.js.
[ "$what" = test ] && packages+=(docker-registry skopeo git libxml2-utils busybox-static procps packer chromium)

export DEBIAN_FRONTEND=noninteractive
$sudo apt-get update -qq
$sudo apt-get install -y -qq --no-install-recommends "${packages[@]}" >/dev/null
npm ci --no-audit --no-fund

case "$what" in
  all) exec node bin/dbuild.js all ;;
  test) exec npm test ;;
  debian) exec node bin/dbuild.js -C examples/debian all ;;
  *) echo "usage: $0 all|test|debian" >&2; exit 2 ;;
esac
