import { describe, expect, it } from 'vitest';
import { PublishArgumentError, validateChannel, validatePrefix, validateUserId } from '../src/index';

const GOOD = ['a', 'logs:w1:nightly-sales', 'u42', 'org:u42', 'A.b_c-d@e', 'x'.repeat(128), '0:1:2'];
const BAD: Array<[string, string]> = [
  ['', 'empty'],
  ['x'.repeat(129), '129 bytes, longer than 128'],
  ['a b', 'contains byte 0x20'],
  ['a,b', "contains ','"],
  ['dash*', "contains '*'"],
  ['é', 'contains byte 0xc3'],
  ['a\nb', 'contains byte 0x0a'],
  [':a', "empty ':' segment"],
  ['a:', "empty ':' segment"],
  ['a::b', "empty ':' segment"],
  [':', "empty ':' segment"],
];

function thrown(f: () => unknown): PublishArgumentError {
  try {
    f();
  } catch (e) {
    expect(e).toBeInstanceOf(PublishArgumentError);
    return e as PublishArgumentError;
  }
  throw new Error('did not throw');
}

describe('names', () => {
  it.each(GOOD)('accepts %s', (name) => {
    expect(validateChannel(name)).toBe(name);
    expect(validateUserId(name)).toBe(name);
    expect(validatePrefix(name)).toBe(name);
  });

  it.each(BAD)('refuses channel %j (%s), naming the value and the rule', (name, why) => {
    const e = thrown(() => validateChannel(name));
    expect(e.message).toContain(why);
    expect(e.message).toContain(JSON.stringify(name));
    expect(e.message).toContain('1 to 128 bytes of A-Z a-z 0-9 _ - . @');
    expect(e).toBeInstanceOf(Error);
    expect([e.name, e.code, e.field, e.value]).toEqual(['PublishArgumentError', 'ERR_NGINX_SSE_ARGUMENT', 'channel', name]);
  });

  it.each(BAD)('refuses user id and prefix %j (%s)', (name, why) => {
    const u = thrown(() => validateUserId(name));
    expect(u.message).toContain('invalid user id');
    expect(u.message).toContain(why);
    expect(u.field).toBe('to');
    const p = thrown(() => validatePrefix(name));
    expect(p.message).toContain('sse_redis_prefix');
    expect(p.message).toContain(why);
    expect(p.field).toBe('prefix');
  });

  it('refuses reserved channels only', () => {
    for (const name of ['sse:control', 'sse:x:y']) {
      expect(thrown(() => validateChannel(name)).message).toContain('starting with "sse:" are reserved');
    }
    expect(validateChannel('sse')).toBe('sse');
    expect(validateChannel('app:sse:x')).toBe('app:sse:x');
  });

  it('wants strings', () => {
    expect(thrown(() => validateChannel(42)).message).toContain('must be a string, not number');
    expect(thrown(() => validateUserId(null)).message).toContain('must be a string, not null');
  });
});
