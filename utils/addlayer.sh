#!/bin/bash
# Demobuilder compatibility: every intermediate layer's `install` is a symlink to this file.
# In Demobuilder this script applied the layer itself (COW child, boot, rsync target/, run
# target/install, clean up, power off). In dbuild the engine does those seven steps; this shim
# keeps the old habit working: `layers/NAME/install STACK` builds STACK (parents first, only what is
# stale) with dbuild.
set -euo pipefail
here=$(cd "$(dirname "$(readlink -f "$0")")" && pwd)
if [ $# -lt 1 ]; then
  echo "usage: $0 STACK   (e.g. micro:web) - builds STACK with dbuild" >&2
  exit 2
fi
if command -v dbuild >/dev/null 2>&1; then
  exec dbuild -C "$here/.." build "$@"
fi
exec node "$here/../bin/dbuild.js" -C "$here/.." build "$@"
