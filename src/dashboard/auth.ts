// Basic auth for the dashboard, and the rule that it never listens beyond loopback without it.
import { createHash, timingSafeEqual } from 'node:crypto';
import type { NextFunction, Request, Response } from 'express';
import { ConfigError } from '../shared/config.js';

const LOOPBACK = new Set(['127.0.0.1', '::1', 'localhost']);

export function assertSafeBinding(host: string, credentials: { user?: string; password?: string }): void {
  if (!LOOPBACK.has(host) && !(credentials.user && credentials.password)) {
    throw new ConfigError(
      `DASHBOARD_HOST=${host} would open the dashboard to the network without auth; set DASHBOARD_USER and DASHBOARD_PASSWORD`,
    );
  }
}

/** SHA-256 first, so that timingSafeEqual compares equal lengths and the time tells nothing about either. */
function digest(text: string): Buffer {
  return createHash('sha256').update(text, 'utf8').digest();
}

/** `Basic <base64 of user:password>`; the scheme is case-insensitive (RFC 9110 section 11.1). */
const BASIC = /^basic +(\S+) *$/i;

export function basicAuth(user: string, password: string) {
  const userDigest = digest(user);
  const passwordDigest = digest(password);
  return (req: Request, res: Response, next: NextFunction) => {
    const encoded = BASIC.exec(req.headers.authorization ?? '')?.[1];
    if (encoded !== undefined) {
      const decoded = Buffer.from(encoded, 'base64').toString('utf8');
      const colon = decoded.indexOf(':');
      if (colon >= 0) {
        // Both fields are always compared: no early exit that would tell a right user from a wrong one.
        const userOk = timingSafeEqual(digest(decoded.slice(0, colon)), userDigest);
        const passwordOk = timingSafeEqual(digest(decoded.slice(colon + 1)), passwordDigest);
        if (userOk && passwordOk) return next();
      }
    }
    res
      .set('WWW-Authenticate', 'Basic realm="workspace-jobs", charset="UTF-8"')
      .status(401)
      .send('Unauthorized');
  };
}
