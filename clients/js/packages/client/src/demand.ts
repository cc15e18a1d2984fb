/**
 * Demand: how many listeners want each subscription, and which of them go
 * into the request.
 */

import { invalidReason, overlaps } from './pattern';

export interface Demand {
  /** Counts one more listener; true when it is the first. */
  add(sub: string): boolean;
  /** Counts one listener less; true when it was the last. */
  remove(sub: string): boolean;
  has(sub: string): boolean;
  /** Demanded subscriptions with a valid name, in the order they were first demanded. */
  valid(): string[];
  /** Runs `flush` once, `debounceMs` after the last call (a burst of changes gives one flush). */
  touch(): void;
  /** Cancels a pending flush. */
  cancel(): void;
}

export function createDemand(debounceMs: number, flush: () => void): Demand {
  const counts = new Map<string, number>();
  let timer: ReturnType<typeof setTimeout> | undefined;
  const cancel = (): void => clearTimeout(timer);
  return {
    add(sub) {
      const n = counts.get(sub) ?? 0;
      counts.set(sub, n + 1);
      return !n;
    },
    remove(sub) {
      const n = counts.get(sub) ?? 0;
      if (n > 1) counts.set(sub, n - 1);
      else counts.delete(sub);
      return n === 1;
    },
    has: (sub) => counts.has(sub),
    valid: () => [...counts.keys()].filter((s) => !invalidReason(s)),
    touch() {
      cancel();
      timer = setTimeout(flush, debounceMs);
    },
    cancel,
  };
}

/**
 * What to request for the demanded subscriptions (in demand order): those not
 * `denied`, minus any that overlaps one kept before it (the server answers 400
 * to two subscriptions that could match the same channel). Returns the
 * request, sorted, and the overlapping ones left out.
 */
export function selectRequest(
  demanded: readonly string[],
  denied: (sub: string) => boolean,
): { request: string[]; overlap: string[] } {
  const request: string[] = [];
  const overlap: string[] = [];
  for (const s of demanded) {
    if (!denied(s)) (request.some((r) => overlaps(r, s)) ? overlap : request).push(s);
  }
  return { request: request.sort(), overlap };
}
