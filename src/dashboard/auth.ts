// Basic auth for the dashboard, and the rule that it never listens beyond loopback without it.
import { timingSafeEqual } from 'node:crypto';
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

function same(a: string, b: string): boolean {
  const x = Buffer.from(a);
  const y = Buffer.from(b);
  return x.length === y.length && timingSafeEqual(x, y);
}

export function basicAuth(user: string, password: string) {
  return (req: Request, res: Response, next: NextFunction) => {
    const header = req.headers.authorization ?? '';
    const [scheme, encoded] = header.split(' ');
    if (scheme === 'Basic' && encoded) {
      const decoded = Buffer.from(encoded, 'base64').toString('utf8');
      const colon = decoded.indexOf(':');
      if (colon >= 0 && same(decoded.slice(0, colon), user) && same(decoded.slice(colon + 1), password)) {
        return next();
      }
    }
    res
      .set('WWW-Authenticate', 'Basic realm="workspace-jobs", charset="UTF-8"')
      .status(401)
      .send('Unauthorized');
  };
}
