// The worker's own HTTP server on METRICS_PORT (node:http, nothing else): GET /metrics is the Prometheus
// registry's text, GET /healthz answers 200 when every check passes and 503 naming the failing parts.
//
// It listens on METRICS_HOST, default 0.0.0.0: setting METRICS_PORT is the opt-in, and a port that only
// answers on loopback would be of no use to a Prometheus server or a kubelet probe outside the container.
// Nothing served is sensitive: every metric label comes from a closed set (job names, outcome codes and
// their kinds, queue states, build transitions, auto-update reasons), never an id, a name, a payload or a
// URL; the health body holds only the words ok, error, timeout and the worker's state (the reasons go to
// the log); both are read-only GETs. On a shared host, set METRICS_HOST=127.0.0.1.
import { createServer, type IncomingMessage, type Server, type ServerResponse } from 'node:http';
import type { AddressInfo } from 'node:net';
import type { Registry } from 'prom-client';
import { httpUrl } from '../shared/http-url.js';
import { DEFAULT_CHECK_TIMEOUT_MS, runHealthChecks, type HealthCheck } from '../shared/health.js';
import type { Logger } from '../shared/logger.js';

export interface MetricsServerOptions {
  port: number;
  host: string;
  registry: Registry;
  /** The parts of /healthz, in the order of the response's fields. */
  checks: Record<string, HealthCheck>;
  /** Bound of each check. Default 3000. */
  checkTimeoutMs?: number;
  log: Logger;
}

export interface MetricsServer {
  /** e.g. http://127.0.0.1:9464 (the port actually bound, when 0 was asked for). */
  url: string;
  port: number;
  close(): Promise<void>;
}

export async function startMetricsServer(options: MetricsServerOptions): Promise<MetricsServer> {
  const { registry, checks, log } = options;
  const checkTimeoutMs = options.checkTimeoutMs ?? DEFAULT_CHECK_TIMEOUT_MS;

  const handle = async (req: IncomingMessage, res: ServerResponse): Promise<void> => {
    const path = new URL(req.url ?? '/', 'http://localhost').pathname;
    if (path !== '/metrics' && path !== '/healthz') {
      send(res, 404, 'text/plain; charset=utf-8', 'not found\n');
      return;
    }
    if (req.method !== 'GET' && req.method !== 'HEAD') {
      res.setHeader('allow', 'GET, HEAD');
      send(res, 405, 'text/plain; charset=utf-8', 'method not allowed\n');
      return;
    }
    if (path === '/metrics') {
      send(res, 200, registry.contentType, await registry.metrics());
      return;
    }
    const report = await runHealthChecks(checks, checkTimeoutMs, log);
    send(res, report.ok ? 200 : 503, 'application/json', `${JSON.stringify(report.body)}\n`);
  };

  const server = createServer((req, res) => {
    handle(req, res).catch((error: unknown) => {
      log.warn({ err: error, url: req.url }, 'metrics server request failed');
      if (!res.headersSent) send(res, 500, 'text/plain; charset=utf-8', 'internal error\n');
      else res.destroy();
    });
  });
  await new Promise<void>((resolve, reject) => {
    server.once('error', reject);
    server.listen(options.port, options.host, () => {
      server.off('error', reject);
      resolve();
    });
  });
  server.on('error', (err) => log.warn({ err }, 'metrics server error'));

  const { port } = server.address() as AddressInfo;
  let closing: Promise<void> | undefined;
  return {
    url: httpUrl(options.host, port),
    port,
    close: () => (closing ??= closeServer(server)),
  };
}

function send(res: ServerResponse, status: number, contentType: string, body: string): void {
  res.writeHead(status, {
    'content-type': contentType,
    'content-length': Buffer.byteLength(body),
    'cache-control': 'no-store',
  });
  res.end(res.req.method === 'HEAD' ? undefined : body);
}

function closeServer(server: Server): Promise<void> {
  return new Promise((resolve) => {
    server.close(() => resolve());
    // Keep-alive connections of a scraper would hold close() open.
    server.closeAllConnections();
  });
}
