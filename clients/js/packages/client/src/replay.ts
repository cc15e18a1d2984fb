/**
 * De-duplication across live channel changes (live.ts). A stream's events
 * come in id order, so an id not above the last one seen is a duplicate
 * (dedupe.ts). A channel added to a running stream with `last_event_id=F`
 * breaks that order once: the server replays its history after F, and some
 * of it lies below ids the stream already delivered on its other channels.
 *
 * A window per such change lets exactly those through, once each: an event
 * at or below the last id is a replay if its channel is one the change added,
 * its id is above F and not above the stream's position when the change took
 * effect (`top`: the last id at its `sse-channels` event), and it was not
 * delivered since F (every id delivered above the lowest open F is kept while
 * a window is open). The server merges the replay with the live events in id
 * order, so the first event above `top` ends the window. A new stream resumes
 * from the lowest F of the windows still open, so that a reconnection during a
 * replay loses nothing either (what was seen already is dropped).
 */

import { isNewer } from './dedupe';
import { receives } from './router';

export interface Window {
  /** The subscriptions the change adds. */
  subs: string[];
  /** Its `last_event_id`. */
  floor: string;
  /** The last id when the change took effect. */
  top?: string | undefined;
  /** When it was opened (Date.now()). */
  at: number;
}

export type Verdict = 'new' | 'replay' | 'old';

export interface ReplayFilter {
  /** A change adding `subs` is sent with `last_event_id=floor`. */
  open(subs: string[], floor: string): Window;
  /** The change was not applied. */
  close(w: Window): void;
  /** `sse-channels`: the stream serves `channels` now, its last id is `last`. */
  effective(channels: readonly string[], last: string | undefined): void;
  /** A new stream: the id to resume from (`Last-Event-ID`). */
  resume(last: string | undefined): string | undefined;
  /** What an event is, given the last id seen. */
  verdict(channel: string, id: string | undefined, last: string | undefined): Verdict;
  reset(): void;
}

/**
 * Windows are given up beyond this many ids kept, or this age (a replay that
 * never ends): a reconnection then resumes from the last id, as without
 * sessions.
 */
const MAX_SEEN = 20000;
const MAX_AGE_MS = 60000;

export function createReplayFilter(): ReplayFilter {
  let windows: Window[] = [];
  const seen = new Set<string>();
  const close = (w: Window): void => {
    windows = windows.filter((x) => x !== w);
    if (!windows.length) seen.clear();
  };
  const reset = (): void => {
    windows = [];
    seen.clear();
  };
  return {
    open(subs, floor) {
      const w: Window = { subs, floor, at: Date.now() };
      windows.push(w);
      return w;
    },
    close,
    effective(channels, last) {
      for (const w of windows) if (w.top === undefined && w.subs.every((s) => channels.includes(s))) w.top = last;
    },
    resume(last) {
      let from = last;
      for (const w of windows) if (Date.now() - w.at > MAX_AGE_MS) close(w);
      for (const w of windows) {
        // A change whose outcome is unknown: the new stream asks for it anyway.
        w.top ??= last;
        if (from === undefined || isNewer(from, w.floor)) from = w.floor;
      }
      return from;
    },
    verdict(channel, id, last) {
      if (id === undefined || !windows.length) return id === undefined || isNewer(id, last) ? 'new' : 'old';
      if (isNewer(id, last)) {
        for (const w of windows) if ((w.top !== undefined && isNewer(id, w.top)) || Date.now() - w.at > MAX_AGE_MS) close(w);
        if (windows.length) seen.add(id);
        return 'new';
      }
      const due = windows.some(
        (w) =>
          isNewer(id, w.floor) &&
          (w.top === undefined || !isNewer(id, w.top)) &&
          w.subs.some((s) => receives(s, channel)),
      );
      if (!due || seen.has(id)) return 'old';
      seen.add(id);
      if (seen.size > MAX_SEEN) reset();
      return 'replay';
    },
    reset,
  };
}
