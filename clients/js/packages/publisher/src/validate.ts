// nginx-sse's name rules, checked before anything is sent to Redis.
//
// The server's rules are in crates/sse-core/src/channel.rs
// (ChannelName::parse: channel names), crates/sse-core/src/envelope.rs
// (valid_user: user ids follow the channel name rules) and src/config.rs
// (set_prefix: sse_redis_prefix values too); redis/sse.lua checks the same for
// `to=`. A name is 1 to 128 bytes of A-Z a-z 0-9 _ - . @ in non-empty segments
// separated by ':'. Channels starting with "sse:" are the module's own.

/** Longest channel name, user id or prefix, in bytes. */
export const MAX_NAME_LEN = 128;
/** Channels starting with this are the module's own (`sse:control`). */
export const RESERVED_PREFIX = 'sse:';

const NAME_RULE = "a name is 1 to 128 bytes of A-Z a-z 0-9 _ - . @ in non-empty segments separated by ':'";

/** The argument of `publish` that broke a rule. */
export type PublishArgumentField =
  'channel' | 'to' | 'prefix' | 'maxlen' | 'ttl' | 'history' | 'cluster' | 'sharded' | 'data' | 'options';

/**
 * An argument of `publish` that nginx-sse or `sse_publish` would refuse (or
 * silently drop). Thrown before anything is sent to Redis. `field` is the
 * argument, `value` the offending value, `rule` the rule it breaks.
 */
export class PublishArgumentError extends Error {
  readonly code = 'ERR_NGINX_SSE_ARGUMENT';
  constructor(
    readonly field: PublishArgumentField,
    readonly value: unknown,
    readonly rule: string,
  ) {
    super(`${field} ${show(value)}: ${rule}`);
    this.name = 'PublishArgumentError';
  }
}

function show(value: unknown): string {
  if (typeof value === 'string') return JSON.stringify(value);
  if (typeof value === 'bigint') return `${value}n`;
  try {
    const s = JSON.stringify(value);
    if (s !== undefined) return s.length > 80 ? `${s.slice(0, 77)}...` : s;
  } catch { /* cyclic */ }
  return String(value);
}

function isNameByte(b: number): boolean {
  return (b >= 0x30 && b <= 0x3a) // 0-9 and ':'
    || (b >= 0x40 && b <= 0x5a) // @ A-Z
    || (b >= 0x61 && b <= 0x7a) // a-z
    || b === 0x5f || b === 0x2d || b === 0x2e; // _ - .
}

/** Why `name` is not a valid name, or null. */
function nameProblem(name: string): string | null {
  const raw = Buffer.from(name, 'utf8');
  if (raw.length === 0) return `empty; ${NAME_RULE}`;
  if (raw.length > MAX_NAME_LEN) return `${raw.length} bytes, longer than ${MAX_NAME_LEN}; ${NAME_RULE}`;
  for (const b of raw) {
    if (!isNameByte(b)) {
      const shown = b > 0x20 && b < 0x7f ? `'${String.fromCharCode(b)}'` : `byte 0x${b.toString(16).padStart(2, '0')}`;
      return `contains ${shown}; ${NAME_RULE}`;
    }
  }
  if (name.split(':').some((segment) => segment === '')) return `has an empty ':' segment; ${NAME_RULE}`;
  return null;
}

function asString(field: PublishArgumentField, value: unknown): string {
  if (typeof value !== 'string') {
    throw new PublishArgumentError(field, value, `must be a string, not ${value === null ? 'null' : typeof value}`);
  }
  return value;
}

/** Returns the channel, or throws `PublishArgumentError`. */
export function validateChannel(channel: unknown): string {
  const name = asString('channel', channel);
  const problem = nameProblem(name);
  if (problem) throw new PublishArgumentError('channel', channel, problem);
  if (name.startsWith(RESERVED_PREFIX)) {
    throw new PublishArgumentError('channel', channel, 'names starting with "sse:" are reserved for nginx-sse itself');
  }
  return name;
}

/** Returns the user id, or throws `PublishArgumentError`. */
export function validateUserId(user: unknown): string {
  const name = asString('to', user);
  const problem = nameProblem(name);
  if (problem) throw new PublishArgumentError('to', user, `invalid user id: ${problem.replace('a name is', 'a user id is')}`);
  return name;
}

/** Returns the history prefix, or throws `PublishArgumentError`. */
export function validatePrefix(prefix: unknown): string {
  const name = asString('prefix', prefix);
  const problem = nameProblem(name);
  if (problem) throw new PublishArgumentError('prefix', prefix, `${problem} (the rules of sse_redis_prefix)`);
  return name;
}

/** The `to=` list: one user id (a string) or an array (iterable) of them. */
export function audience(to: unknown): string {
  let users: unknown[];
  if (typeof to === 'string') users = [to];
  else if (to !== null && typeof to === 'object' && Symbol.iterator in to) users = [...(to as Iterable<unknown>)];
  else throw new PublishArgumentError('to', to, 'must be a user id or an array of user ids');
  if (users.length === 0) {
    throw new PublishArgumentError('to', to, 'an empty audience reaches nobody; leave `to` out to reach every subscriber');
  }
  return users.map(validateUserId).join(',');
}

/** `value`, checked to be an integer >= minimum. */
export function checkInt(field: 'maxlen' | 'ttl', value: unknown, minimum: number): number {
  if (typeof value !== 'number' || !Number.isSafeInteger(value) || value < minimum) {
    throw new PublishArgumentError(field, value, `must be an integer >= ${minimum}`);
  }
  return value;
}
