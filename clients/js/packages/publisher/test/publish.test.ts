import { createClient, createCluster } from 'redis';
import { describe, expect, it } from 'vitest';
import {
  PublishArgumentError, encodeData, fcallArgs, isClusterClient, loadFunction, plainPayload, publish, sseLua,
  type PublishOptions, type RedisClusterCommandClient, type RedisCommandClient, type RedisPublishClient,
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

/** Shows Buffers as latin1 strings (bytes visible). */
const show = (args: Array<string | Buffer>) => args.map((a) => (Buffer.isBuffer(a) ? a.toString('latin1') : a));

/**
 * A cluster client as node-redis' createCluster has it: sendCommand(firstKey,
 * isReadonly, args) recorded with its key, and two masters whose node
 * clients record what is sent to each.
 */
class FakeCluster implements RedisClusterCommandClient {
  calls: Array<{ key: string | Buffer | undefined; readonly: boolean | undefined; args: string[] }> = [];
  readonly nodes = new Map<string, FakeClient>([['m1', new FakeClient()], ['m2', new FakeClient()]]);
  readonly masters: string[];
  constructor(private replies: unknown[] = [], masters = ['m1', 'm2']) { this.masters = masters; }
  async nodeClient(node: unknown): Promise<FakeClient> { return this.nodes.get(node as string)!; }
  async sendCommand(key: string | Buffer | undefined, readonly: boolean | undefined, args: Array<string | Buffer>): Promise<unknown> {
    this.calls.push({ key, readonly, args: show(args) });
    const r = this.replies.length ? this.replies.shift() : 1;
    if (r instanceof Error) throw r;
    return r;
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
      .rejects.toThrow('options "histroy": unknown option; known: to, history, maxlen, ttl, prefix, cluster, sharded');
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

describe('Redis Cluster', () => {
  it('fcallArgs declares the channel\'s state as the one key in cluster mode', () => {
    const x = Buffer.from('x');
    expect(show(fcallArgs('ch', x))).toEqual(['FCALL', 'sse_publish', '0', 'ch', 'x']);
    expect(show(fcallArgs('ch', x, { cluster: true }))).toEqual(['FCALL', 'sse_publish', '1', 'sse:{ch}:s', 'x']);
    expect(show(fcallArgs('ch', x, { cluster: true, maxlen: 5, ttl: 7, audience: 'u1', prefix: 'p' })))
      .toEqual(['FCALL', 'sse_publish', '1', 'p:{ch}:s', 'x', 'maxlen=5', 'ttl=7', 'to=u1']);
  });

  it('detects node-redis cluster clients', () => {
    // Real node-redis objects, not connected (nothing is sent); both types are accepted as they are.
    const url = 'redis://127.0.0.1:1';
    const clients: RedisPublishClient[] = [createClient({ url }), createCluster({ rootNodes: [{ url }] })];
    expect(clients.map(isClusterClient)).toEqual([false, true]);
    expect(isClusterClient(new FakeCluster())).toBe(true);
    expect(isClusterClient(new FakeClient())).toBe(false);
    expect(isClusterClient(null)).toBe(false);
  });

  it('a plain publish is SPUBLISH to the master of the channel, PUBLISH with sharded: false', async () => {
    const c = new FakeCluster([2, 1, 5]);
    expect(await publish(c, 'logs:w1:f', { a: 1 })).toBe(2);
    expect(await publish(c, 'dashboards:7', 'x', { to: ['u42'] })).toBe(1);
    expect(await publish(c, 'logs:w1:f', 'y', { sharded: false })).toBe(5);
    expect(c.calls).toEqual([
      { key: 'logs:w1:f', readonly: false, args: ['SPUBLISH', 'logs:w1:f', '{"a":1}'] },
      { key: 'dashboards:7', readonly: false, args: ['SPUBLISH', 'dashboards:7', '\x1esse1 to=u42\nx'] },
      { key: 'logs:w1:f', readonly: false, args: ['PUBLISH', 'logs:w1:f', 'y'] },
    ]);
  });

  it('history is FCALL sse_publish 1 <prefix>:{<channel>}:s, sent to the master of the channel', async () => {
    const c = new FakeCluster([1, 2]);
    expect(await publish(c, 'logs:w1:f', { a: 1 }, { history: true })).toBe(1);
    expect(await publish(c, 'dashboards:7', 'x', { history: true, maxlen: 10, ttl: 60, to: 'u42', prefix: 'app2' })).toBe(2);
    expect(c.calls).toEqual([
      { key: 'logs:w1:f', readonly: false, args: ['FCALL', 'sse_publish', '1', 'sse:{logs:w1:f}:s', '{"a":1}'] },
      { key: 'dashboards:7', readonly: false, args: ['FCALL', 'sse_publish', '1', 'app2:{dashboards:7}:s', 'x', 'maxlen=10', 'ttl=60', 'to=u42'] },
    ]);
  });

  it('cluster: true sends the cluster commands through a single-node client', async () => {
    const c = new FakeClient([1, 1, 3]);
    await publish(c, 'ch', 'a', { cluster: true });
    await publish(c, 'ch', 'b', { cluster: true, sharded: false });
    expect(await publish(c, 'ch', 'c', { cluster: true, history: true })).toBe(3);
    expect(c.shown).toEqual([['SPUBLISH', 'ch', 'a'], ['PUBLISH', 'ch', 'b'], ['FCALL', 'sse_publish', '1', 'sse:{ch}:s', 'c']]);
  });

  it.each([
    ['cluster client, cluster: false', () => new FakeCluster(), { cluster: false }, 'cluster', /always in cluster mode/],
    ['cluster: "yes"', () => new FakeClient(), { cluster: 'yes' }, 'cluster', /must be true or false/],
    ['sharded outside cluster mode', () => new FakeClient(), { sharded: true }, 'sharded', /only in a Redis Cluster/],
    ['sharded: 1', () => new FakeClient(), { cluster: true, sharded: 1 }, 'sharded', /must be true or false/],
    ['sharded: true with history', () => new FakeCluster(), { history: true, sharded: true }, 'sharded', /only applies without history/],
    ['sharded: false with history', () => new FakeCluster(), { history: true, sharded: false }, 'sharded', /only applies without history/],
  ] as const)('refuses %s before sending', async (_name, make, options, field, message) => {
    const c = make();
    await expect(publish(c, 'ch', 'x', options as unknown as PublishOptions)).rejects.toMatchObject({
      name: 'PublishArgumentError', field, message: expect.stringMatching(message),
    });
    expect(c.calls).toEqual([]);
  });

  it('loadFunction loads sse.lua on every master', async () => {
    const c = new FakeCluster();
    expect(await loadFunction(c)).toBe(1); // what the (fake) node clients answer
    for (const node of c.nodes.values()) expect(node.shown).toEqual([['FUNCTION', 'LOAD', 'REPLACE', sseLua()]]);
    expect(c.calls).toEqual([]);
    await expect(loadFunction(new FakeCluster([], []))).rejects.toThrow(/knows no masters/);
  });

  it('loads the function on every master when the channel\'s master lacks it, then retries', async () => {
    const c = new FakeCluster([redisError('ERR Function not found'), 7]);
    expect(await publish(c, 'ch', 'x', { history: true })).toBe(7);
    expect(c.calls.map((call) => [call.key, ...call.args.slice(0, 3)])).toEqual([
      ['ch', 'FCALL', 'sse_publish', '1'],
      ['ch', 'FCALL', 'sse_publish', '1'],
    ]);
    for (const node of c.nodes.values()) expect(node.shown.map((a) => a.slice(0, 3))).toEqual([['FUNCTION', 'LOAD', 'REPLACE']]);
  });
});
