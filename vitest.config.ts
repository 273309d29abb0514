import { defineConfig } from "vitest/config";

/**
 * The long VM files that run in the second lane (scripts/test-lanes.sh): the Debian guest boots in
 * 85-95 s under TCG, so debian.test.ts alone takes about as long as half the rest of the suite.
 */
export const LANE2 = ["test/e2e/debian.test.ts", "test/e2e/warm.test.ts", "test/e2e/finalize-formats.test.ts"];

export default defineConfig({
  test: {
    // e2e tests boot real VMs under TCG: give them room (a loaded 2-core machine runs a three-node build in minutes).
    testTimeout: 300_000,
    hookTimeout: 300_000,
    projects: [
      { extends: true, test: { name: "unit", include: ["test/unit/**/*.test.ts"] } },
      // One VM-heavy file at a time within a project: parallel files would starve each other's boot
      // timeouts. `npm test` runs the two e2e projects at once, as two processes (one TCG guest each).
      { extends: true, test: { name: "e2e", include: ["test/e2e/**/*.test.ts"], exclude: LANE2, fileParallelism: false } },
      { extends: true, test: { name: "e2e-long", include: LANE2, fileParallelism: false } },
    ],
  },
});
