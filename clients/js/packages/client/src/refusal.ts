/**
 * What the server's error answers say about subscriptions, for the stream
 * request and for a live change alike.
 */

export const NOT_ALLOWED = 'sse: not allowed: ';

/** A comma-separated list of names (`sse-refused`, `sse-channels`, a change's 200). */
export const splitList = (s: string): string[] =>
  s
    .split(',')
    .map((x) => x.trim())
    .filter(Boolean);

/**
 * The subscriptions of `subs` that an answer refuses: those a 403
 * `sse: not allowed: a, b` lists, or the one a 400 reason quotes (an overlap
 * names two, the second is the one refused). Empty when it names none.
 */
export function refusedIn(code: number, reason: string, subs: readonly string[]): string[] {
  let named: string[] = [];
  if (code === 403 && reason.startsWith(NOT_ALLOWED)) {
    named = splitList(reason.slice(NOT_ALLOWED.length));
  } else if (code === 400) {
    named = subs
      .filter((s) => reason.includes(`"${s}"`))
      .sort((a, b) => reason.indexOf(`"${b}"`) - reason.indexOf(`"${a}"`))
      .slice(0, /overlap/.test(reason) ? 1 : undefined);
  }
  return named.filter((s) => subs.includes(s));
}
