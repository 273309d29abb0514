#!/usr/bin/env bash
# The whole suite in two lanes at once, one per core: lane 1 runs the unit tests and most end-to-end
# files, lane 2 (prefixed "[lane 2]") the long VM files (vitest.config.ts LANE2). Each lane runs its
# files one at a time, so at most two TCG guests run at once. Exits non-zero if either lane fails.
# Extra arguments go to both vitest runs (e.g. --reporter=verbose).
set -uo pipefail
cd "$(dirname "$0")/.."
vitest=node_modules/.bin/vitest
"$vitest" run --project e2e-long "$@" 2>&1 | sed -u 's/^/[lane 2] /' &
lane2=$!
"$vitest" run --project unit --project e2e "$@"
status1=$?
wait "$lane2"
status2=$?
# pipefail: lane 2's status is vitest's, not sed's.
exit $(( status1 != 0 || status2 != 0 ))
