/**
 * The server's channel and pattern rules (crates/sse-core/src/channel.rs and
 * pattern.rs), so that the client never sends what the server would refuse.
 *
 * A channel name is 1 to 128 bytes of `A-Z a-z 0-9 _ - . @` in non-empty
 * segments separated by `:`. In a pattern, `*` is a whole segment matching
 * exactly one segment, and `**` (last segment only) one or more. Matching is
 * exact: case-sensitive, no decoding.
 */

const SEGMENT = /^[A-Za-z0-9_.@-]+$/;
const MAX_LEN = 128;

/** Whether `s` is a channel name (no wildcard). */
const isName = (s: string): boolean =>
  s.length <= MAX_LEN && s.split(':').every((seg) => SEGMENT.test(seg));

/** Whether a valid subscription holds a wildcard. */
export const isPattern = (s: string): boolean => /(^|:)\*/.test(s);

/**
 * Why the server would refuse `subscription` (its 400 reason, without the
 * `sse: ` prefix), or undefined when it is a valid channel or pattern.
 */
export function invalidReason(subscription: string): string | undefined {
  const s = subscription;
  if (!s) return 'empty channel name';
  if (s.length > MAX_LEN) return `channel name of ${s.length} bytes is longer than ${MAX_LEN}`;
  const segs = s.split(':');
  for (let i = 0; i < segs.length; i++) {
    const seg = segs[i]!;
    if (seg === '*' || (seg === '**' && i === segs.length - 1)) continue;
    if (seg.includes('*')) return `pattern "${s}": '*' must be a whole segment and '**' the last one`;
    if (!seg) return `channel name "${s}" has an empty ':' segment`;
    if (!SEGMENT.test(seg)) {
      const c = seg.match(/[^A-Za-z0-9_.@-]/)![0];
      const shown = c > ' ' && c < '\x7f' ? `'${c}'` : '0x' + c.charCodeAt(0).toString(16).padStart(2, '0');
      return `channel name "${s}" contains ${shown}; allowed are A-Z a-z 0-9 _ - . @ and ':' between segments`;
    }
  }
  if (s.startsWith('sse:')) return `"${s}" is reserved (names starting with "sse:" are the module's own)`;
  return undefined;
}

/** The server's pattern rules: whether `pattern` (or a channel name) matches `channel`. */
export function matches(pattern: string, channel: string): boolean {
  if (!isName(channel) || invalidReason(pattern.replace(/^sse:/, 'x:'))) return false;
  const p = pattern.split(':');
  const c = channel.split(':');
  for (let i = 0; i < p.length; i++) {
    if (p[i] === '**') return c.length > i;
    if (i >= c.length || (p[i] !== '*' && p[i] !== c[i])) return false;
  }
  return c.length === p.length;
}

/** Whether some channel is matched by both subscriptions (the server refuses such a pair with 400). */
export function overlaps(a: string, b: string): boolean {
  const x = a.split(':');
  const y = b.split(':');
  for (let i = 0; ; i++) {
    const p = x[i];
    const q = y[i];
    // `**` takes one or more segments: any non-empty rest of the other side.
    if (p === '**') return q !== undefined;
    if (q === '**') return p !== undefined;
    if (p === undefined || q === undefined) return p === q;
    if (p !== q && p !== '*' && q !== '*') return false;
  }
}

/** Whether every channel `inner` matches is matched by `outer` too. */
export function covers(outer: string, inner: string): boolean {
  const x = outer.split(':');
  const y = inner.split(':');
  for (let i = 0; ; i++) {
    const p = x[i];
    const q = y[i];
    // `**` takes one or more segments: whatever the inner side has there.
    if (p === '**') return q !== undefined;
    if (p === undefined || q === undefined) return p === q;
    // An inner `**` matches any length, which no other segment does.
    if (q === '**') return false;
    if (p !== '*' && p !== q) return false;
  }
}
