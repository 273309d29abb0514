/**
 * The watch loop's state machine: pure (no timers, no I/O). The session feeds it inputs and carries
 * out the effects it returns, so every transition can be tested without a file system or a VM.
 */

/** What happens to the machine. `paths` are project-relative paths that changed. */
export type WatchInput =
  | { type: "start" }
  | { type: "change"; path: string }
  | { type: "timerFired" }
  | { type: "buildFinished" }
  | { type: "stop" };

/** What the session must do, in order. */
export type WatchEffect =
  /** (Re)start the debounce timer: a pending timer is cancelled first. */
  | { type: "startTimer" }
  | { type: "cancelTimer" }
  /** Replan for these changes; build the stale nodes unless every fingerprint is unchanged. */
  | { type: "startBuild"; paths: string[] }
  /**
   * Replan for changes seen during a build; abort the running build only if a node it is building
   * has a new fingerprint (a touch or a save without change must not throw away a build).
   */
  | { type: "checkBuild"; paths: string[] }
  | { type: "abortBuild" }
  | { type: "exit" };

export type WatchState =
  | { name: "watching" }
  | { name: "debouncing"; paths: string[] }
  | { name: "building"; paths: string[] }
  /** A build is running and changes arrived; `timerPending` until they have been quiet for a debounce. */
  | { name: "queued"; paths: string[]; timerPending: boolean }
  /** Stop requested while a build runs: waiting for the aborted build to end. */
  | { name: "stopping" }
  | { name: "stopped" };

export type WatchStateName = WatchState["name"];

function add(paths: readonly string[], p: string): string[] {
  return paths.includes(p) ? [...paths] : [...paths, p];
}

/*
 *                                   change / startTimer (restart)
 *                                        +-----+
 *                                        v     |
 *   +----------+  change / startTimer  +------------+  timerFired / startBuild  +----------+
 *   | watching |---------------------->| debouncing |------------------------->| building |
 *   +----------+                       +------------+                          +----------+
 *     |  ^  ^                                ^                                   |  |  ^
 *     |  |  +------------------------------- | ------- buildFinished ------------+  |  |
 *     |  |                                   |                                      |  |
 *     |  |                      buildFinished, timer still pending    change /      |  | buildFinished, timer
 *     |  |                                   |                       startTimer    |  | done / startBuild
 *     |  |                                   |                                      v  |
 *     |  |                                   |                               +--------+
 *     |  |                                   +-------------------------------| queued |<-+ change / startTimer
 *     |  |                                                                   +--------+--+ timerFired / checkBuild
 *     +--+-- start / startBuild (the initial build) goes straight to building
 *
 *   stop:  watching, debouncing -> stopped   [cancelTimer, exit]
 *          building, queued     -> stopping  [cancelTimer, abortBuild]
 *          stopping: buildFinished or a second stop -> stopped [exit] (a second Ctrl-C does not wait)
 *   Inputs a state does not expect (a stale timer, a change while stopping) are ignored.
 */
export class WatchMachine {
  private s: WatchState = { name: "watching" };

  get state(): Readonly<WatchState> {
    return this.s;
  }

  /** Apply one input; returns the effects to carry out, in order. */
  send(input: WatchInput): WatchEffect[] {
    const s = this.s;
    switch (s.name) {
      case "watching":
        return this.watching(input);
      case "debouncing":
        return this.debouncing(s, input);
      case "building":
        return this.building(input);
      case "queued":
        return this.queued(s, input);
      case "stopping":
        return this.stopping(input);
      case "stopped":
        return [];
    }
  }

  private watching(input: WatchInput): WatchEffect[] {
    switch (input.type) {
      case "start":
        this.s = { name: "building", paths: [] };
        return [{ type: "startBuild", paths: [] }];
      case "change":
        this.s = { name: "debouncing", paths: [input.path] };
        return [{ type: "startTimer" }];
      case "stop":
        this.s = { name: "stopped" };
        return [{ type: "exit" }];
      case "timerFired": // a timer cancelled too late
      case "buildFinished":
        return [];
    }
  }

  private debouncing(s: Extract<WatchState, { name: "debouncing" }>, input: WatchInput): WatchEffect[] {
    switch (input.type) {
      case "change":
        this.s = { name: "debouncing", paths: add(s.paths, input.path) };
        return [{ type: "startTimer" }];
      case "timerFired":
        this.s = { name: "building", paths: s.paths };
        return [{ type: "startBuild", paths: s.paths }];
      case "stop":
        this.s = { name: "stopped" };
        return [{ type: "cancelTimer" }, { type: "exit" }];
      case "start":
      case "buildFinished":
        return [];
    }
  }

  private building(input: WatchInput): WatchEffect[] {
    switch (input.type) {
      case "change":
        this.s = { name: "queued", paths: [input.path], timerPending: true };
        return [{ type: "startTimer" }];
      case "buildFinished":
        this.s = { name: "watching" };
        return [];
      case "stop":
        this.s = { name: "stopping" };
        return [{ type: "abortBuild" }];
      case "start":
      case "timerFired":
        return [];
    }
  }

  private queued(s: Extract<WatchState, { name: "queued" }>, input: WatchInput): WatchEffect[] {
    switch (input.type) {
      case "change":
        this.s = { name: "queued", paths: add(s.paths, input.path), timerPending: true };
        return [{ type: "startTimer" }];
      case "timerFired":
        if (!s.timerPending) return [];
        this.s = { name: "queued", paths: s.paths, timerPending: false };
        return [{ type: "checkBuild", paths: s.paths }];
      case "buildFinished":
        if (s.timerPending) {
          // The changes are not quiet yet: let the running timer decide when to build.
          this.s = { name: "debouncing", paths: s.paths };
          return [];
        }
        this.s = { name: "building", paths: s.paths };
        return [{ type: "startBuild", paths: s.paths }];
      case "stop":
        this.s = { name: "stopping" };
        return s.timerPending ? [{ type: "cancelTimer" }, { type: "abortBuild" }] : [{ type: "abortBuild" }];
      case "start":
        return [];
    }
  }

  private stopping(input: WatchInput): WatchEffect[] {
    switch (input.type) {
      case "buildFinished":
      case "stop":
        this.s = { name: "stopped" };
        return [{ type: "exit" }];
      case "start":
      case "change":
      case "timerFired":
        return [];
    }
  }
}
