import { describe, expect, it } from "vitest";
import { WatchMachine, type WatchInput, type WatchStateName } from "../../src/watch/state.js";

const change = (path: string): WatchInput => ({ type: "change", path });
const timer: WatchInput = { type: "timerFired" };
const finished: WatchInput = { type: "buildFinished" };
const stop: WatchInput = { type: "stop" };
const start: WatchInput = { type: "start" };

/** A machine driven through `inputs` from its initial state. */
function after(...inputs: WatchInput[]): WatchMachine {
  const m = new WatchMachine();
  for (const i of inputs) m.send(i);
  return m;
}

describe("watch state machine", () => {
  it("starts watching", () => {
    expect(new WatchMachine().state.name).toBe("watching");
  });

  describe("watching", () => {
    it("start -> building, runs the initial build for no particular path", () => {
      const m = after();
      expect(m.send(start)).toEqual([{ type: "startBuild", paths: [] }]);
      expect(m.state).toEqual({ name: "building", paths: [] });
    });
    it("change -> debouncing, starts the timer", () => {
      const m = after();
      expect(m.send(change("layers/a/target/install"))).toEqual([{ type: "startTimer" }]);
      expect(m.state).toEqual({ name: "debouncing", paths: ["layers/a/target/install"] });
    });
    it("stop -> stopped, exits", () => {
      const m = after();
      expect(m.send(stop)).toEqual([{ type: "exit" }]);
      expect(m.state.name).toBe("stopped");
    });
    it("ignores a stale timer and a stray buildFinished", () => {
      const m = after();
      expect(m.send(timer)).toEqual([]);
      expect(m.send(finished)).toEqual([]);
      expect(m.state.name).toBe("watching");
    });
  });

  describe("debouncing", () => {
    it("change -> debouncing, restarts the timer and collects paths once each", () => {
      const m = after(change("a"));
      expect(m.send(change("b"))).toEqual([{ type: "startTimer" }]);
      expect(m.send(change("a"))).toEqual([{ type: "startTimer" }]);
      expect(m.state).toEqual({ name: "debouncing", paths: ["a", "b"] });
    });
    it("timerFired -> building, builds for the collected paths", () => {
      const m = after(change("a"), change("b"));
      expect(m.send(timer)).toEqual([{ type: "startBuild", paths: ["a", "b"] }]);
      expect(m.state).toEqual({ name: "building", paths: ["a", "b"] });
    });
    it("stop -> stopped, cancels the timer then exits", () => {
      const m = after(change("a"));
      expect(m.send(stop)).toEqual([{ type: "cancelTimer" }, { type: "exit" }]);
      expect(m.state.name).toBe("stopped");
    });
    it("ignores buildFinished and start", () => {
      const m = after(change("a"));
      expect(m.send(finished)).toEqual([]);
      expect(m.send(start)).toEqual([]);
      expect(m.state).toEqual({ name: "debouncing", paths: ["a"] });
    });
  });

  describe("building", () => {
    it("buildFinished -> watching, nothing to do", () => {
      const m = after(change("a"), timer);
      expect(m.send(finished)).toEqual([]);
      expect(m.state.name).toBe("watching");
    });
    it("change -> queued, starts the timer and does NOT abort yet (a touch must not kill a build)", () => {
      const m = after(change("a"), timer);
      expect(m.send(change("b"))).toEqual([{ type: "startTimer" }]);
      expect(m.state).toEqual({ name: "queued", paths: ["b"], timerPending: true });
    });
    it("stop -> stopping, aborts the build", () => {
      const m = after(change("a"), timer);
      expect(m.send(stop)).toEqual([{ type: "abortBuild" }]);
      expect(m.state.name).toBe("stopping");
    });
    it("ignores a stale timer", () => {
      const m = after(change("a"), timer);
      expect(m.send(timer)).toEqual([]);
      expect(m.state.name).toBe("building");
    });
  });

  describe("queued", () => {
    const queued = (): WatchMachine => after(change("a"), timer, change("b"));
    it("change -> queued, restarts the timer and collects paths", () => {
      const m = queued();
      expect(m.send(change("c"))).toEqual([{ type: "startTimer" }]);
      expect(m.state).toEqual({ name: "queued", paths: ["b", "c"], timerPending: true });
    });
    it("timerFired -> queued (timer done), checks whether the running build must be aborted", () => {
      const m = queued();
      expect(m.send(timer)).toEqual([{ type: "checkBuild", paths: ["b"] }]);
      expect(m.state).toEqual({ name: "queued", paths: ["b"], timerPending: false });
    });
    it("a second timerFired without a change does not check again", () => {
      const m = queued();
      m.send(timer);
      expect(m.send(timer)).toEqual([]);
    });
    it("buildFinished after the timer -> building, starts the queued build at once", () => {
      const m = queued();
      m.send(timer);
      expect(m.send(finished)).toEqual([{ type: "startBuild", paths: ["b"] }]);
      expect(m.state).toEqual({ name: "building", paths: ["b"] });
    });
    it("buildFinished before the timer -> debouncing, the running timer decides", () => {
      const m = queued();
      expect(m.send(finished)).toEqual([]);
      expect(m.state).toEqual({ name: "debouncing", paths: ["b"] });
      expect(m.send(timer)).toEqual([{ type: "startBuild", paths: ["b"] }]);
    });
    it("a change after the check re-arms the timer and a later check", () => {
      const m = queued();
      m.send(timer);
      expect(m.send(change("c"))).toEqual([{ type: "startTimer" }]);
      expect(m.send(timer)).toEqual([{ type: "checkBuild", paths: ["b", "c"] }]);
    });
    it("stop with the timer pending -> stopping, cancels the timer and aborts", () => {
      const m = queued();
      expect(m.send(stop)).toEqual([{ type: "cancelTimer" }, { type: "abortBuild" }]);
      expect(m.state.name).toBe("stopping");
    });
    it("stop after the timer -> stopping, aborts", () => {
      const m = queued();
      m.send(timer);
      expect(m.send(stop)).toEqual([{ type: "abortBuild" }]);
      expect(m.state.name).toBe("stopping");
    });
  });

  describe("stopping", () => {
    const stopping = (): WatchMachine => after(change("a"), timer, stop);
    it("buildFinished -> stopped, exits", () => {
      const m = stopping();
      expect(m.send(finished)).toEqual([{ type: "exit" }]);
      expect(m.state.name).toBe("stopped");
    });
    it("a second stop -> stopped, exits without waiting for the build", () => {
      const m = stopping();
      expect(m.send(stop)).toEqual([{ type: "exit" }]);
      expect(m.state.name).toBe("stopped");
    });
    it("ignores changes and timers", () => {
      const m = stopping();
      expect(m.send(change("b"))).toEqual([]);
      expect(m.send(timer)).toEqual([]);
      expect(m.state.name).toBe("stopping");
    });
  });

  describe("stopped", () => {
    it("ignores every input", () => {
      const m = after(stop);
      for (const i of [start, change("a"), timer, finished, stop]) expect(m.send(i)).toEqual([]);
      expect(m.state.name satisfies WatchStateName).toBe("stopped");
    });
  });
});
