import { defineConfig } from "vitest/config";

export default defineConfig({
  test: {
    // e2e tests boot real VMs under TCG: give them room (a loaded 2-core machine runs a three-node build in minutes).
    testTimeout: 300_000,
    hookTimeout: 300_000,
    projects: [
      { extends: true, test: { name: "unit", include: ["test/unit/**/*.test.ts"] } },
      // One VM-heavy file at a time on a 2-core machine: parallel files would starve each other's boot timeouts.
      { extends: true, test: { name: "e2e", include: ["test/e2e/**/*.test.ts"], fileParallelism: false } },
    ],
  },
});
