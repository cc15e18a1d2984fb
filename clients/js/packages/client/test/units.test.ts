// Pure parts: de-duplication by id, backoff delays, demand counting and
// debouncing, the request's overlap rule, routing.
import { afterEach, describe, expect, it, vi } from 'vitest';
import { backoffDelay } from '../src/backoff';
import { isNewer, laterId } from '../src/dedupe';
import { createDemand, selectRequest } from '../src/demand';
import { route, type Entry, type Router } from '../src/router';
import type { SSEEvent } from '../src/types';

describe('dedupe', () => {
  it('an id is new when above the last one, as decimal numbers of any length', () => {
    expect(isNewer('5', undefined)).toBe(true);
    expect(isNewer('6', '5')).toBe(true);
    expect(isNewer('5', '5')).toBe(false);
    expect(isNewer('4', '5')).toBe(false);
    expect(isNewer('10', '9')).toBe(true);
    expect(isNewer('9', '10')).toBe(false);
    expect(isNewer('007', '6')).toBe(true);
    expect(isNewer('12345678901234567891', '12345678901234567890')).toBe(true);
    expect(isNewer('12345678901234567890', '12345678901234567891')).toBe(false);
    // Not an id we issued: never taken for a duplicate.
    expect(isNewer('abc', '5')).toBe(true);
  });
  it('laterId keeps the higher id', () => {
    expect(laterId(undefined, '3')).toBe('3');
    expect(laterId('3', undefined)).toBe('3');
    expect(laterId('3', '12')).toBe('12');
    expect(laterId('12', '3')).toBe('12');
  });
});

describe('backoff', () => {
  it('is full jitter: random(0, min(cap, base * 2^attempt))', () => {
    expect(backoffDelay(0, 1000, 30000, () => 0)).toBe(0);
    expect(backoffDelay(0, 1000, 30000, () => 0.5)).toBe(500);
    expect(backoffDelay(0, 1000, 30000, () => 0.999999)).toBe(999);
    expect(backoffDelay(1, 1000, 30000, () => 0.5)).toBe(1000);
    expect(backoffDelay(3, 1000, 30000, () => 0.5)).toBe(4000);
    expect(backoffDelay(3, 3000, 30000, () => 0.5)).toBe(12000);
  });
  it('is capped, however many attempts', () => {
    expect(backoffDelay(5, 1000, 30000, () => 0.999999)).toBe(29999);
    expect(backoffDelay(1000, 1000, 30000, () => 0.5)).toBe(15000);
    expect(backoffDelay(4, 1000, 5000, () => 0.5)).toBe(2500);
  });
  it('stays within [0, bound) with the real random, and spreads', () => {
    const seen = new Set<number>();
    for (let i = 0; i < 2000; i++) {
      const d = backoffDelay(2, 1000, 30000);
      expect(d).toBeGreaterThanOrEqual(0);
      expect(d).toBeLessThan(4000);
      seen.add(Math.floor(d / 400));
    }
    expect(seen.size).toBe(10);
  });
});

describe('demand', () => {
  afterEach(() => void vi.useRealTimers());

  it('counts listeners per subscription', () => {
    const d = createDemand(50, () => {});
    expect(d.add('a')).toBe(true);
    expect(d.add('a')).toBe(false);
    expect(d.add('b')).toBe(true);
    expect(d.remove('a')).toBe(false);
    expect(d.has('a')).toBe(true);
    expect(d.remove('a')).toBe(true);
    expect(d.has('a')).toBe(false);
    expect(d.remove('a')).toBe(false);
    expect(d.valid()).toEqual(['b']);
  });

  it('lists valid names only, in first-demand order', () => {
    const d = createDemand(50, () => {});
    for (const s of ['z', 'bad name', 'a:*', 'sse:control', 'm']) d.add(s);
    expect(d.valid()).toEqual(['z', 'a:*', 'm']);
  });

  it('debounces: a burst of changes flushes once, debounceMs after the last', () => {
    vi.useFakeTimers();
    const flush = vi.fn();
    const d = createDemand(50, flush);
    d.touch();
    vi.advanceTimersByTime(30);
    d.touch();
    vi.advanceTimersByTime(49);
    expect(flush).not.toHaveBeenCalled();
    vi.advanceTimersByTime(1);
    expect(flush).toHaveBeenCalledTimes(1);
    d.touch();
    d.cancel();
    vi.advanceTimersByTime(100);
    expect(flush).toHaveBeenCalledTimes(1);
  });

  it('keeps overlapping subscriptions out of the request (the first demanded wins)', () => {
    expect(selectRequest(['dashboards:*', 'dashboards:7', 'alerts:1'], () => false)).toEqual({
      request: ['alerts:1', 'dashboards:*'],
      overlap: ['dashboards:7'],
    });
    expect(selectRequest(['dashboards:7', 'dashboards:*'], () => false)).toEqual({
      request: ['dashboards:7'],
      overlap: ['dashboards:*'],
    });
    expect(selectRequest(['a:*:c', 'a:b:*', 'a:*', 'b:*'], () => false)).toEqual({
      request: ['a:*', 'a:*:c', 'b:*'],
      overlap: ['a:b:*'],
    });
    // A denied one neither goes in nor shadows another.
    expect(selectRequest(['dashboards:*', 'dashboards:7'], (s) => s === 'dashboards:*')).toEqual({
      request: ['dashboards:7'],
      overlap: [],
    });
  });
});

describe('router', () => {
  function setup() {
    const router: Router = new Map();
    const got: string[] = [];
    const add = (sub: string, extra: Partial<Entry['options']> = {}) => {
      const entry: Entry = {
        listener: (e: SSEEvent<any>) => got.push(`${sub} <- ${e.channel} ${JSON.stringify(e.data)} ${e.id ?? '-'}`),
        options: extra,
      };
      router.set(sub, (router.get(sub) ?? new Set()).add(entry));
      return entry;
    };
    return { router, got, add };
  }

  it('delivers to the exact channel and to the matching patterns, once each', () => {
    const { router, got, add } = setup();
    add('dashboards:7');
    add('dashboards:*');
    add('dashboards:**');
    add('dashboards:8');
    add('logs:**');
    route(router, 'dashboards:7', '{"v":1}', '12');
    route(router, 'dashboards:7:x', '"deep"', undefined);
    expect(got).toEqual([
      'dashboards:7 <- dashboards:7 {"v":1} 12',
      'dashboards:* <- dashboards:7 {"v":1} 12',
      'dashboards:** <- dashboards:7 {"v":1} 12',
      'dashboards:** <- dashboards:7:x "deep" -',
    ]);
  });

  it('parses JSON by default, else gives the raw string; a custom parse is used once per event', () => {
    const { router, add } = setup();
    const seen: SSEEvent<any>[] = [];
    const parse = vi.fn((raw: string) => raw.length);
    for (const options of [{}, { parse }, { parse }]) {
      router.set('c', (router.get('c') ?? new Set()).add({ listener: (e) => seen.push(e), options }));
    }
    add('x');
    route(router, 'c', 'not json', undefined);
    route(router, 'c', '[1,2]', '3');
    expect(seen.map((e) => e.data)).toEqual(['not json', 8, 8, [1, 2], 5, 5]);
    expect(seen[3]).toEqual({ channel: 'c', data: [1, 2], raw: '[1,2]', id: '3' });
    expect(seen[0]).not.toHaveProperty('id');
    expect(parse).toHaveBeenCalledTimes(2);
  });

  it('sends sse-gap to onGap of the subscriptions that receive the named channels, not to listeners', () => {
    const { router, got, add } = setup();
    const gaps: string[] = [];
    add('logs:a', { onGap: (c) => gaps.push(`logs:a ${c}`) });
    add('logs:b', { onGap: (c) => gaps.push(`logs:b ${c}`) });
    add('logs:*', { onGap: (c) => gaps.push(`logs:* ${c}`) });
    add('other', { onGap: (c) => gaps.push(`other ${c}`) });
    route(router, 'sse-gap', 'logs:a,metrics:x', undefined);
    expect(gaps).toEqual(['logs:a logs:a', 'logs:* logs:a']);
    expect(got).toEqual([]);
  });

  it('a throwing listener stops no other (its error is rethrown asynchronously)', () => {
    vi.useFakeTimers();
    const { router, got, add } = setup();
    router.set('c', new Set([{ listener: () => { throw new Error('boom'); }, options: {} }]));
    add('c');
    route(router, 'c', '1', undefined);
    expect(got).toEqual(['c <- c 1 -']);
    expect(() => vi.runAllTimers()).toThrow('boom');
    vi.useRealTimers();
  });
});
