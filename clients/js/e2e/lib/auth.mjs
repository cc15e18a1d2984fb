// The auth service behind nginx's auth_request: a node http server on a free
// loopback port. GET /check reads the user from the cookie `user=<id>` and
// answers 204 with `X-SSE-User: <id>` and `X-SSE-Channels: <grants>`; 401
// without the cookie, 403 for a user it does not know. Grants live in a map
// the test changes at run time (setGrants).

import http from 'node:http';
import { freePort } from './procs.mjs';

export const DEFAULT_GRANTS = {
  alice: 'logs:*:*, metrics:*, alerts:alice, dashboards:1',
  bob: 'logs:**, metrics:*, alerts:*, dashboards:*',
};

function cookieUser(header) {
  for (const part of String(header || '').split(';')) {
    const [k, ...v] = part.trim().split('=');
    if (k === 'user') return decodeURIComponent(v.join('='));
  }
  return null;
}

export class AuthService {
  constructor(grants = DEFAULT_GRANTS) {
    this.grants = new Map(Object.entries(grants));
    this.checks = []; // { t, user, status, uri }
    this.server = null;
    this.port = null;
  }

  setGrants(user, grants) { this.grants.set(user, grants); }

  checksFor(user) { return this.checks.filter((c) => c.user === user); }

  async start() {
    this.port = await freePort();
    this.server = http.createServer((req, res) => {
      const user = cookieUser(req.headers.cookie);
      let status;
      if (!req.url.startsWith('/check')) status = 404;
      else if (!user) status = 401;
      else if (!this.grants.has(user)) status = 403;
      else status = 204;
      if (status === 204) {
        res.setHeader('X-SSE-User', user);
        res.setHeader('X-SSE-Channels', this.grants.get(user));
      }
      this.checks.push({ t: Date.now(), user, status });
      res.writeHead(status);
      res.end();
    });
    this.server.keepAliveTimeout = 1000;
    await new Promise((resolve, reject) => {
      this.server.once('error', reject);
      this.server.listen(this.port, '127.0.0.1', resolve);
    });
    return this;
  }

  async stop() {
    if (!this.server) return;
    const s = this.server;
    this.server = null;
    s.closeAllConnections?.();
    await new Promise((resolve) => s.close(() => resolve()));
  }
}
