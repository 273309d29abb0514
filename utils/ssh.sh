#!/bin/bash
# Demobuilder-compatible entry point: `dbuild ssh` does the work.
set -euo pipefail
here=$(cd "$(dirname "$(readlink -f "${BASH_SOURCE[0]}")")" && pwd)
if [ -f "$here/../bin/dbuild.js" ] && [ -f "$here/../dist/cli/main.js" ]; then
  exec node "$here/../bin/dbuild.js" ssh "$@"
elif command -v dbuild >/dev/null 2>&1; then
  exec dbuild ssh "$@"
else
  echo "$(basename "$0"): dbuild not found (run npm run build in the repo, or put dbuild on PATH)" >&2
  exit 127
fi
