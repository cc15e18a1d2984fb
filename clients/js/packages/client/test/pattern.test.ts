// The server's rules (crates/sse-core/src/pattern.rs and channel.rs), case
// by case, plus the server's property tests written again: matches against
// an independent reference model, overlaps against brute force.
import { describe, expect, it } from 'vitest';
import { covers, invalidReason, isPattern, matches, overlaps } from '../src/pattern';

describe('matches', () => {
  const cases: [string, string, boolean][] = [
    ['dashboards:*', 'dashboards:7', true],
    ['dashboards:*', 'dashboards:7:x', false],
    ['dashboards:*', 'dashboards', false],
    ['dashboards:*', 'alerts:7', false],
    ['logs:**', 'logs:a', true],
    ['logs:**', 'logs:a:b', true],
    ['logs:**', 'logs', false],
    ['logs:w1:*', 'logs:w1:f1', true],
    ['logs:w1:*', 'logs:w1:x:y', false],
    ['logs:w1:*', 'logs:w10:x', false],
    ['logs:w1:*', 'logs:w1', false],
    ['logs:w1:*', 'logs:w1:', false],
    ['logs:w1:**', 'logs:w1:x:y', true],
    ['logs:w1:**', 'logs:w1:x', true],
    ['logs:w1:**', 'logs:w1', false],
    ['metrics:w1', 'metrics:w1', true],
    ['metrics:w1', 'metrics:w1:x', false],
    ['metrics:w1', 'Metrics:w1', false],
    ['Metrics:w1', 'metrics:w1', false],
    ['*', 'a', true],
    ['*', 'a:b', false],
    ['**', 'anything:at:all', true],
    ['*:b:**', 'a:b:c:d', true],
    ['*:b:**', 'a:c:c:d', false],
    // Escapes and look-alikes never match.
    ['dashboards:7', 'dashboards:7 ', false],
    ['dashboards:7', 'dashboards%3A7', false],
    ['dashboards:*', 'dashboards%3A7', false],
    ['dashboards:*', 'dashboards:\u0667', false],
    ['dashboards:*', 'dashboards::7', false],
    ['dashboards:*', 'dashboards:7\0', false],
    ['*', 'a'.repeat(129), false],
    ['*', 'a'.repeat(128), true],
    // Invalid patterns match nothing.
    ['dash*', 'dashboards', false],
    ['a:**:b', 'a:x:b', false],
  ];
  it.each(cases)('%s ~ %s → %s', (pattern, channel, expected) => {
    expect(matches(pattern, channel)).toBe(expected);
  });
});

describe('overlaps', () => {
  const cases: [string, string, boolean][] = [
    ['dashboards:*', 'dashboards:7', true],
    ['dashboards:*', 'alerts:7', false],
    ['dashboards:*', 'dashboards:7:x', false],
    ['a:*:c', 'a:b:*', true],
    ['a:**', '*:b:c', true],
    ['a:**', 'a', false],
    ['a:*', 'b:*', false],
    ['logs:**', 'logs:a', true],
    ['logs:**', 'logs:*:*', true],
    ['a', 'a', true],
    ['a', 'A', false],
    ['a:b', 'a:c', false],
    ['**', 'x', true],
  ];
  it.each(cases)('%s / %s → %s', (a, b, expected) => {
    expect(overlaps(a, b)).toBe(expected);
    expect(overlaps(b, a)).toBe(expected);
  });
});

describe('invalidReason (the server\'s 400 reasons)', () => {
  it('accepts documented names and patterns', () => {
    for (const ok of ['logs:w1:f1', 'metrics:w1', 'alerts:u42', 'dashboards:7', 'a', 'A-b_c.d@e', 'x'.repeat(128), 'dashboards:*', 'logs:w1:**', '**', '*:a']) {
      expect(invalidReason(ok), ok).toBeUndefined();
    }
  });
  it('refuses bad names with the server\'s words', () => {
    expect(invalidReason('')).toBe('empty channel name');
    expect(invalidReason('x'.repeat(129))).toBe('channel name of 129 bytes is longer than 128');
    expect(invalidReason('logs:w 1')).toBe('channel name "logs:w 1" contains 0x20; allowed are A-Z a-z 0-9 _ - . @ and \':\' between segments');
    expect(invalidReason('a/b')).toContain("contains '/'");
    for (const bad of ['a b', 'a/b', 'a\nb', 'a%b', 'é', 'a\0', 'a,b', 'а']) expect(invalidReason(bad), bad).toMatch(/contains/);
    for (const bad of [':a', 'a:', 'a::b', ':']) expect(invalidReason(bad), bad).toMatch(/empty ':' segment/);
    for (const bad of ['dash*', 'a:**:b', 'a:***', 'a:*x']) expect(invalidReason(bad), bad).toMatch(/'\*' must be a whole segment/);
    expect(invalidReason('sse:control')).toMatch(/reserved/);
    expect(invalidReason('sse:*')).toMatch(/reserved/);
    expect(invalidReason('ssex:control')).toBeUndefined();
  });
  it('tells patterns from channels', () => {
    expect(isPattern('a:*')).toBe(true);
    expect(isPattern('**')).toBe(true);
    expect(isPattern('a:b')).toBe(false);
  });
});

// The server's property tests, exhaustively over a small alphabet.
const SEGS = ['a', 'b', 'c', '*'];
function allPatterns(): string[] {
  let level: string[][] = [[]];
  const out: string[] = [];
  for (let n = 1; n <= 3; n++) {
    level = level.flatMap((p) => SEGS.map((s) => [...p, s]));
    for (const p of level) out.push(p.join(':'), [...p, '**'].join(':'));
  }
  return out;
}
function allChannels(): string[] {
  let level = [''];
  const out: string[] = [];
  for (let n = 1; n <= 5; n++) {
    level = level.flatMap((p) => ['a', 'b', 'c'].map((s) => (p ? `${p}:${s}` : s)));
    out.push(...level);
  }
  return out;
}
/** Written independently: `*` eats one segment, `**` one or more. */
function reference(pattern: string, channel: string): boolean {
  const go = (p: string[], c: string[]): boolean => {
    if (!p.length) return !c.length;
    if (p[0] === '**') return c.length > 0;
    if (!c.length) return false;
    return (p[0] === '*' || p[0] === c[0]) && go(p.slice(1), c.slice(1));
  };
  return go(pattern.split(':'), channel.split(':'));
}

it('matches agrees with a reference model on every pattern and channel of a small alphabet', () => {
  const channels = [...allChannels(), 'a:', ':a', 'a::b', 'A', 'a b', 'ab'];
  const wrong: string[] = [];
  for (const p of allPatterns()) {
    for (const c of channels) {
      const valid = /^[a-zA-Z]+(:[a-zA-Z]+)*$/.test(c);
      if (matches(p, c) !== (valid && reference(p, c))) wrong.push(`${p} ~ ${c}`);
    }
  }
  expect(wrong).toEqual([]);
});

it('overlaps agrees with brute force (some channel matched by both)', () => {
  const patterns = allPatterns();
  const channels = allChannels();
  const matched = new Map(patterns.map((p) => [p, channels.map((c) => matches(p, c))]));
  const wrong: string[] = [];
  for (const a of patterns) {
    for (const b of patterns) {
      const ma = matched.get(a)!;
      const mb = matched.get(b)!;
      const witnessed = ma.some((m, i) => m && mb[i]);
      if (overlaps(a, b) !== witnessed) wrong.push(`${a} / ${b}: ${witnessed}`);
    }
  }
  expect(wrong).toEqual([]);
});

it('covers agrees with brute force (every channel of the inner one is matched by the outer one)', () => {
  const patterns = allPatterns();
  const channels = allChannels();
  const matched = new Map(patterns.map((p) => [p, channels.map((c) => matches(p, c))]));
  const wrong: string[] = [];
  for (const outer of patterns) {
    for (const inner of patterns) {
      const mo = matched.get(outer)!;
      const mi = matched.get(inner)!;
      const witnessed = mi.every((m, i) => !m || mo[i]);
      if (covers(outer, inner) !== witnessed) wrong.push(`${outer} ⊇ ${inner}: ${witnessed}`);
    }
  }
  expect(wrong).toEqual([]);
  expect(covers('dashboards:*', 'dashboards:7')).toBe(true);
  expect(covers('dashboards:7', 'dashboards:*')).toBe(false);
  expect(covers('a:*:c', 'a:b:*')).toBe(false);
});
