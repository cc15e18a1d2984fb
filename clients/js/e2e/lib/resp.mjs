// A tiny RESP2 client over net: enough for PING, PUBLISH, FCALL, FUNCTION LOAD,
// PUBSUB, SHUTDOWN. Commands are pipelined; replies come back in order.
//
//   const r = await RedisConn.connect(port);
//   await r.cmd('PUBLISH', 'ch', 'hello');    // -> 1 (number)
//   await r.cmd('GET', 'nope');                // -> null
//   await r.cmd('FOO');                        // rejects with RedisReplyError
//   r.close();
//
// A command whose connection breaks before its reply rejects with an Error
// whose `sent` is true (Redis may or may not have run it); a command that
// could not be written at all has `sent` false.

import net from 'node:net';

export class RedisReplyError extends Error {
  constructor(message) {
    super(message);
    this.name = 'RedisReplyError';
    this.reply = true;
  }
}

export function encode(args) {
  const parts = [Buffer.from(`*${args.length}\r\n`)];
  for (const a of args) {
    const b = Buffer.isBuffer(a) ? a : Buffer.from(String(a), 'utf8');
    parts.push(Buffer.from(`$${b.length}\r\n`), b, Buffer.from('\r\n'));
  }
  return Buffer.concat(parts);
}

const INCOMPLETE = Symbol('incomplete');

// Parses one reply from buf at pos: [value, nextPos] or INCOMPLETE.
function parse(buf, pos) {
  const eol = buf.indexOf('\r\n', pos);
  if (eol < 0) return INCOMPLETE;
  const type = String.fromCharCode(buf[pos]);
  const line = buf.toString('utf8', pos + 1, eol);
  const next = eol + 2;
  switch (type) {
    case '+': return [line, next];
    case '-': return [new RedisReplyError(line), next];
    case ':': return [Number(line), next];
    case '$': {
      const len = Number(line);
      if (len < 0) return [null, next];
      if (buf.length < next + len + 2) return INCOMPLETE;
      return [buf.toString('utf8', next, next + len), next + len + 2];
    }
    case '*': {
      const n = Number(line);
      if (n < 0) return [null, next];
      const out = [];
      let p = next;
      for (let i = 0; i < n; i++) {
        const r = parse(buf, p);
        if (r === INCOMPLETE) return INCOMPLETE;
        out.push(r[0]);
        p = r[1];
      }
      return [out, p];
    }
    default:
      throw new Error(`unexpected RESP reply line: ${type}${line}`);
  }
}

export class RedisConn {
  constructor(sock) {
    this.sock = sock;
    this.buf = Buffer.alloc(0);
    this.pending = [];
    this.closed = false;
    sock.on('data', (d) => this.#onData(d));
    sock.on('error', (e) => this.#fail(e));
    sock.on('close', () => this.#fail(new Error('redis closed the connection')));
  }

  /** Connects to 127.0.0.1:port within timeoutMs. */
  static connect(port, timeoutMs = 2000) {
    return new Promise((resolve, reject) => {
      const sock = net.connect({ host: '127.0.0.1', port });
      const t = setTimeout(() => { sock.destroy(); reject(new Error(`redis connect to ${port} timed out`)); }, timeoutMs);
      sock.once('connect', () => {
        clearTimeout(t);
        sock.setNoDelay(true);
        resolve(new RedisConn(sock));
      });
      sock.once('error', (e) => { clearTimeout(t); reject(e); });
    });
  }

  #onData(d) {
    this.buf = this.buf.length ? Buffer.concat([this.buf, d]) : d;
    let pos = 0;
    while (pos < this.buf.length && this.pending.length) {
      const r = parse(this.buf, pos);
      if (r === INCOMPLETE) break;
      pos = r[1];
      const p = this.pending.shift();
      clearTimeout(p.timer);
      if (r[0] instanceof RedisReplyError) p.reject(r[0]); else p.resolve(r[0]);
    }
    this.buf = this.buf.subarray(pos);
  }

  #fail(err) {
    this.closed = true;
    const pend = this.pending;
    this.pending = [];
    for (const p of pend) {
      clearTimeout(p.timer);
      const e = new Error(`${err.message} (reply to ${p.name} not received)`);
      e.sent = true;
      p.reject(e);
    }
  }

  /** Sends one command; resolves with its reply. timeoutMs bounds the wait
   * (the connection is then destroyed). */
  cmd(...args) {
    return this.cmdTimeout(10000, ...args);
  }

  cmdTimeout(timeoutMs, ...args) {
    if (this.closed) {
      const e = new Error('redis connection is closed');
      e.sent = false;
      return Promise.reject(e);
    }
    return new Promise((resolve, reject) => {
      const p = { resolve, reject, name: String(args[0]) };
      p.timer = setTimeout(() => this.sock.destroy(new Error(`redis reply timed out after ${timeoutMs} ms`)), timeoutMs);
      this.pending.push(p);
      this.sock.write(encode(args));
    });
  }

  close() {
    this.closed = true;
    this.sock.destroy();
  }
}

/** One command on a fresh connection. */
export async function redisCmd(port, ...args) {
  const c = await RedisConn.connect(port);
  try {
    return await c.cmd(...args);
  } finally {
    c.close();
  }
}
