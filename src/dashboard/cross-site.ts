// Cross-site request forgery: a page on another site can make the operator's browser send a form post or a
// no-CORS fetch to the dashboard, and the browser adds the Basic credentials it saved. Bull Board's write
// endpoints (add, retry, clean, ...) would take it: its router parses JSON but runs its handlers on any body.
// So, on every route, a request that may change something is refused unless it comes from the dashboard's
// own pages, and a body it carries must be JSON, which a cross-site page can only send after a CORS
// preflight that the dashboard never answers.
import type { NextFunction, Request, Response } from 'express';
import type { Logger } from '../shared/logger.js';

/** Methods that change nothing, here and in Bull Board; a cross-site page cannot read their answers (no CORS). */
const SAFE_METHODS = new Set(['GET', 'HEAD', 'OPTIONS']);

export function isSafeMethod(method: string): boolean {
  return SAFE_METHODS.has(method);
}

/** Sec-Fetch-Site of a request made by one of the dashboard's pages, or typed by the user. */
const OWN_REQUEST = new Set(['same-origin', 'none']);

/** The request's media type, lower-case and without parameters; '' when it has no Content-Type. */
export function mediaType(req: Request): string {
  return (req.headers['content-type'] ?? '').split(';')[0]!.trim().toLowerCase();
}

function hasBody(req: Request): boolean {
  const length = req.headers['content-length'];
  return req.headers['transfer-encoding'] !== undefined || (length !== undefined && length !== '0');
}

/**
 * Why a non-GET request is not the dashboard's own, or undefined when it is. Browsers send Sec-Fetch-Site
 * (since 2020-2023) and Origin on every cross-origin POST; a request with neither is not from a browser.
 * Origin is compared with the Host the request was sent to, so behind a proxy that rewrites Host the
 * public origin must be listed in `allowedOrigins`.
 */
function crossSiteReason(req: Request, allowedOrigins: ReadonlySet<string>): string | undefined {
  const site = req.headers['sec-fetch-site'];
  if (site !== undefined && !OWN_REQUEST.has(site)) {
    return `Sec-Fetch-Site is ${JSON.stringify(site)}`;
  }
  const origin = req.headers.origin;
  if (origin === undefined || allowedOrigins.has(origin)) return undefined;
  let host: string | undefined;
  try {
    const parsed = new URL(origin);
    if (parsed.protocol === 'http:' || parsed.protocol === 'https:') host = parsed.host;
  } catch {
    // `null` (a sandboxed frame, a redirect across origins) or garbage: no origin of ours.
  }
  if (host !== undefined && host === req.headers.host?.toLowerCase()) return undefined;
  return (
    `Origin ${JSON.stringify(origin)} is not this dashboard (Host ${JSON.stringify(req.headers.host ?? '')}); ` +
    'behind a proxy that changes Host, list the public origin in DASHBOARD_ALLOWED_ORIGINS'
  );
}

/** Refuses cross-site non-GET requests (403) and non-JSON bodies on them (415), on every route. */
export function crossSiteGuard(allowedOrigins: readonly string[], log: Logger) {
  const allowed = new Set(allowedOrigins);
  return (req: Request, res: Response, next: NextFunction) => {
    if (isSafeMethod(req.method)) return next();
    const reason = crossSiteReason(req, allowed);
    if (reason !== undefined) {
      log.info({ method: req.method, path: req.originalUrl, reason }, 'refused a cross-site request');
      res.status(403).json({ error: `cross-site request refused: ${reason}` });
      return;
    }
    const type = mediaType(req);
    if ((type !== '' || hasBody(req)) && type !== 'application/json') {
      res.status(415).json({
        error: `send the request body as application/json${type ? `, not ${type}` : ''}`,
      });
      return;
    }
    next();
  };
}
