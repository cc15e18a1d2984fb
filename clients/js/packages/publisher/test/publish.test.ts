import { describe, expect, it } from 'vitest';
import {
  PublishArgumentError, encodeData, plainPayload, publish, sseLua, type PublishOptions, type RedisCommandClient,
} from '../src/index';

/** Records sendCommand calls; answers from a list (an Error is a rejection). */
class FakeClient implements RedisCommandClient {
  calls: Array<Array<string | Buffer>> = [];
  constructor(private replies: unknown[] = []) {}
  async sendCommand(args: Array<string | Buffer>): Promise<unknown> {
    this.calls.push(args);
    const r = this.replies.length ? this.replies.shift() : 1;
    if (r instanceof Error) throw r;
    return r;
  }
  /** The calls with Buffers as latin1 strings (bytes visible). */
  get shown(): string[][] {
    return this.calls.map((c) => c.map((a) => (Buffer.isBuffer(a) ? a.toString('latin1') : a)));
  }
}

/** What node-redis rejects with for an error reply (ErrorReply: message has the prefix). */
const redisError = (message: string) => Object.assign(new Error(message), { name: 'SimpleError' });

describe('payloads', () => {
  it('encodes data: Buffer/Uint8Array and strings as they are, the rest as JSON', () => {
    expect(encodeData(Buffer.from([0, 255]))).toEqual(Buffer.from([0, 255]));
    expect(encodeData(new Uint8Array([1, 2, 3]).subarray(1))).toEqual(Buffer.from([2, 3]));
    expect(encodeData('héllo').toString('utf8')).toBe('héllo');
    expect(encodeData({ level: 'INFO', n: 1 }).toString()).toBe('{"level":"INFO","n":1}');
    expect(encodeData([1, 'é', null, true]).toString('utf8')).toBe('[1,"é",null,true]');
    expect(encodeData(null).toString()).toBe('null');
    expect(encodeData(17).toString()).toBe('17');
  });

  it('refuses data JSON cannot encode', () => {
    for (const bad of [undefined, () => 1, 10n, (() => { const o: Record<string, unknown> = {}; o.self = o; return o; })()]) {
      expect(() => encodeData(bad)).toThrow(PublishArgumentError);
      expect(() => encodeData(bad)).toThrow(/cannot be JSON-encoded/);
    }
  });

  it('builds the envelope bytes of a plain PUBLISH', () => {
    const b = (s: string) => Buffer.from(s, 'latin1');
    expect(plainPayload(b('hello'))).toEqual(b('hello'));
    expect(plainPayload(b(''))).toEqual(b(''));
    expect(plainPayload(b('hello'), 'u1,u2')).toEqual(b('\x1esse1 to=u1,u2\nhello'));
    expect(plainPayload(b('\x1esse1 to=u9\nx'))).toEqual(b('\x1esse1\n\x1esse1 to=u9\nx'));
    expect(plainPayload(b('\x1e'), 'u1')).toEqual(b('\x1esse1 to=u1\n\x1e'));
    expect(plainPayload(b('a\x1e'))).toEqual(b('a\x1e'));
  });
});

describe('publish', () => {
  it('plain PUBLISH returns the receiver count', async () => {
    const c = new FakeClient([3]);
    expect(await publish(c, 'logs:w1:f', { a: 1 })).toBe(3);
    expect(c.shown).toEqual([['PUBLISH', 'logs:w1:f', '{"a":1}']]);
  });

  it('plain PUBLISH with an audience', async () => {
    const c = new FakeClient();
    await publish(c, 'dashboards:7', 'x', { to: ['u42', 'org:u43'] });
    await publish(c, 'dashboards:7', 'y', { to: 'u42' });
    await publish(c, 'dashboards:7', 'z', { to: new Set(['a', 'b']) as unknown as string[] });
    expect(c.shown).toEqual([
      ['PUBLISH', 'dashboards:7', '\x1esse1 to=u42,org:u43\nx'],
      ['PUBLISH', 'dashboards:7', '\x1esse1 to=u42\ny'],
      ['PUBLISH', 'dashboards:7', '\x1esse1 to=a,b\nz'],
    ]);
  });

  it('wraps a plain payload that starts with 0x1E in an empty envelope', async () => {
    const c = new FakeClient();
    await publish(c, 'raw', '\x1e not an envelope');
    await publish(c, 'raw', Buffer.from([0x1e, 0x41]));
    expect(c.shown).toEqual([
      ['PUBLISH', 'raw', '\x1esse1\n\x1e not an envelope'],
      ['PUBLISH', 'raw', '\x1esse1\n\x1eA'],
    ]);
  });

  it('history: FCALL sse_publish with its options, returns the id', async () => {
    const c = new FakeClient([41, 42]);
    expect(await publish(c, 'logs:w1:f', { a: 1 }, { history: true })).toBe(41);
    expect(await publish(c, 'dashboards:7', Buffer.from('\x1eraw', 'latin1'), {
      history: true, maxlen: 100, ttl: 0, to: ['u42', 'u43'], prefix: 'app2',
    })).toBe(42);
    expect(c.shown).toEqual([
      ['FCALL', 'sse_publish', '0', 'logs:w1:f', '{"a":1}'],
      // the function writes the envelope itself: a payload starting with 0x1E is not wrapped
      ['FCALL', 'sse_publish', '0', 'dashboards:7', '\x1eraw', 'maxlen=100', 'ttl=0', 'to=u42,u43', 'prefix=app2'],
    ]);
  });

  it.each(['maxlen', 'ttl', 'prefix'] as const)('%s without history is an error', async (option) => {
    const c = new FakeClient();
    const opts = { [option]: option === 'prefix' ? 'app' : 5 } as PublishOptions;
    await expect(publish(c, 'ch', 'x', opts)).rejects.toThrow(/only applies with history: true/);
    await expect(publish(c, 'ch', 'x', opts)).rejects.toMatchObject({ field: option });
    expect(c.calls).toEqual([]);
  });

  it.each([
    ['maxlen', 0], ['maxlen', 1.5], ['maxlen', '10'], ['maxlen', true], ['ttl', -1], ['ttl', Number.NaN],
  ] as const)('refuses %s=%s', async (field, value) => {
    const opts = { history: true, [field]: value } as unknown as PublishOptions;
    await expect(publish(new FakeClient(), 'ch', 'x', opts)).rejects.toMatchObject({
      name: 'PublishArgumentError', field, message: expect.stringMatching(/integer/),
    });
  });

  it('sends nothing when an argument is invalid', async () => {
    const c = new FakeClient();
    const cases: Array<[string, unknown, PublishOptions | undefined]> = [
      ['a b', 'x', undefined],
      ['sse:control', 'x', undefined],
      ['ok', 'x', { to: ['u1', 'u2:'] }],
      ['ok', 'x', { to: [] }],
      ['ok', 'x', { to: 'u1,u2' }],
      ['ok', 'x', { history: true, prefix: 'a::b' }],
      ['ok', 'x', { history: 'yes' as unknown as boolean }],
      ['ok', 'x', { histroy: true } as unknown as PublishOptions],
      ['ok', undefined, undefined],
    ];
    for (const [channel, data, options] of cases) {
      await expect(publish(c, channel, data, options), `${channel} ${JSON.stringify(options)}`).rejects.toBeInstanceOf(PublishArgumentError);
    }
    expect(c.calls).toEqual([]);
  });

  it('names an unknown option', async () => {
    await expect(publish(new FakeClient(), 'ok', 'x', { histroy: true } as unknown as PublishOptions))
      .rejects.toThrow('options "histroy": unknown option; known: to, history, maxlen, ttl, prefix');
  });

  it('loads the function once when Redis lacks it, then retries', async () => {
    const c = new FakeClient([redisError('ERR Function not found'), 'nginx_sse', 7]);
    expect(await publish(c, 'ch', 'x', { history: true })).toBe(7);
    expect(c.shown.map((a) => a.slice(0, 3))).toEqual([
      ['FCALL', 'sse_publish', '0'],
      ['FUNCTION', 'LOAD', 'REPLACE'],
      ['FCALL', 'sse_publish', '0'],
    ]);
    expect(c.shown[1]![3]).toBe(sseLua());
    expect(sseLua()).toMatch(/^#!lua name=nginx_sse\n/);
  });

  it('gives up when the function is still missing after loading', async () => {
    const c = new FakeClient([redisError('ERR Function not found'), 'nginx_sse', redisError('ERR Function not found')]);
    await expect(publish(c, 'ch', 'x', { history: true })).rejects.toThrow('ERR Function not found');
    expect(c.calls.length).toBe(3);
  });

  it('does not retry other Redis errors', async () => {
    const c = new FakeClient([redisError('ERR bad option "to=x"')]);
    await expect(publish(c, 'ch', 'x', { history: true })).rejects.toThrow('bad option');
    expect(c.calls.length).toBe(1);
  });
});
