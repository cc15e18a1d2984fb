/**
 * Reconnection delays: exponential with full jitter,
 * delay = random(0, min(cap, base * 2^attempt)).
 * base is the client's `retry.initialMs`, else the server's `retry:` field,
 * else 1000 ms; cap 30 s. The attempt count goes back to 0 once a stream
 * delivers its first byte.
 */

export const DEFAULT_BASE_MS = 1000;
export const DEFAULT_CAP_MS = 30000;

export function backoffDelay(
  attempt: number,
  baseMs: number,
  capMs: number = DEFAULT_CAP_MS,
  random: () => number = Math.random,
): number {
  return Math.floor(random() * Math.min(capMs, baseMs * 2 ** Math.min(attempt, 30)));
}
