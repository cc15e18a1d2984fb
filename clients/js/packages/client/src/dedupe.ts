/**
 * Event ids on `sse_history` locations are decimal global sequence numbers:
 * one id orders everything a stream received on all its channels, so an
 * event whose id is not above the last one seen is a duplicate.
 */

const DECIMAL = /^\d+$/;
const strip = (id: string): string => id.replace(/^0+(?=\d)/, '');

/**
 * Whether `id` comes after `last` (exact for any length: compared as decimal
 * strings). An id that is not decimal, or no last id, is never a duplicate.
 */
export function isNewer(id: string, last: string | undefined): boolean {
  if (last === undefined || !DECIMAL.test(id) || !DECIMAL.test(last)) return true;
  const a = strip(id);
  const b = strip(last);
  return a.length !== b.length ? a.length > b.length : a > b;
}

/** The later of two ids (either may be missing). */
export const laterId = (a: string | undefined, b: string | undefined): string | undefined =>
  a === undefined || (b !== undefined && isNewer(b, a)) ? b : a;
