// The operators' HTTP server (`workspace-jobs dashboard`):
//   /admin/queues             Bull Board for queue `workspaces`
//   /                         the live chat page (src/dashboard/public): pick a chat, start, stop or create
//                             its workspace, watch the events arrive
//   /api/...                  the page's JSON API (api.ts)
//   /chats/:chatId/events     a chat's events as Server-Sent Events (sse.ts)
//   /builds/:buildId/logs     a build's log as Server-Sent Events, `?follow=1` live (build-log-streams.ts)
//   /metrics                  Prometheus text: queue job counts, the producer's counters, process metrics
//   /healthz                  200 when Redis and Postgres answer (open, for orchestrators)
// Everything but /healthz needs DASHBOARD_USER/DASHBOARD_PASSWORD when they are set; without them the
// server refuses to listen beyond loopback. On every route, a non-GET request from another site is refused
// and a body must be JSON (cross-site.ts); DASHBOARD_READ_ONLY makes Bull Board and the page's API read-only.
import { existsSync } from 'node:fs';
import type { IncomingMessage, Server, ServerResponse } from 'node:http';
import type { Socket } from 'node:net';
import { createBullBoard } from '@bull-board/api';
import { BullMQAdapter } from '@bull-board/api/bullMQAdapter';
import { ExpressAdapter } from '@bull-board/express';
import { Queue } from 'bullmq';
import express, { type NextFunction, type Request, type Response } from 'express';
import { WorkspaceJobsProducer } from '../producer/producer.js';
import { QUEUE_NAME } from '../shared/contract.js';
import type { Config } from '../shared/config.js';
import type { Logger } from '../shared/logger.js';
import { httpUrl } from '../shared/http-url.js';
import { packageDir } from '../shared/package-dir.js';
import { DEFAULT_CHECK_TIMEOUT_MS, runHealthChecks } from '../shared/health.js';
import { createMetrics } from '../shared/metrics.js';
import { PgNotificationHub } from '../shared/notifications.js';
import { createPool } from '../shared/postgres.js';
import { closeRedis, createRedis } from '../shared/redis.js';
import { apiRouter } from './api.js';
import { assertSafeBinding, basicAuth } from './auth.js';
import { crossSiteGuard } from './cross-site.js';
import { BuildLogStreams } from './build-log-streams.js';
import { ChatEventStreams } from './sse.js';
import { EventStreamSlots, type SseOptions } from './stream-slots.js';

const BOARD_PATH = '/admin/queues';

/** The page's static files (tsc copies no assets, so compiled code serves them from the package's src/). */
const PUBLIC_DIR = packageDir('src/dashboard/public/');

/** Only our own files, no inline script or style: the page needs nothing else. Not applied to Bull Board. */
const PAGE_CSP = [
  "default-src 'self'",
  "script-src 'self'",
  "style-src 'self'",
  "img-src 'self' data:",
  "connect-src 'self'",
  "object-src 'none'",
  "base-uri 'none'",
  "form-action 'self'",
  "frame-ancestors 'none'",
].join('; ');

/** How long close() lets in-flight requests finish before cutting their connections. */
const CLOSE_GRACE_MS = 5_000;

export interface DashboardOptions {
  /** Event stream settings (tests shorten the heartbeat). */
  sse?: SseOptions;
}

export interface Dashboard {
  /** Base URL, e.g. `http://127.0.0.1:3000` (the real port when DASHBOARD_PORT=0). */
  url: string;
  /** Ends the event streams, stops the server, then closes the producer, queue, pool and Redis. Idempotent. */
  close(): Promise<void>;
}

export async function startDashboard(
  config: Config,
  log: Logger,
  options: DashboardOptions = {},
): Promise<Dashboard> {
  assertSafeBinding(config.dashboardHost, { user: config.dashboardUser, password: config.dashboardPassword });
  const redis = createRedis(config.redisUrl, {
    name: 'workspace-jobs-dashboard',
    log,
    cluster: config.redisCluster,
  });
  const pool = createPool(config.databaseUrl, { max: 4, applicationName: 'workspace-jobs-dashboard', log });
  // One LISTEN connection behind every followed build log (and the producer's buildLogs), opened on the
  // first: the dashboard comes up while Postgres is down, and says so on /healthz.
  const changes = new PgNotificationHub(config.databaseUrl, { log });
  const queue = new Queue(QUEUE_NAME, { connection: redis, prefix: config.queuePrefix });
  queue.on('error', (err) => log.warn({ err }, 'dashboard queue error'));
  // /metrics: the queue's job counts (read on each scrape), the counters of the producer below, and Node's
  // process metrics.
  const metrics = createMetrics({ queueCounts: () => queue.getJobCounts(), log });
  // One producer for the whole process: the page's start/create calls, and one shared event subscriber
  // (its own Redis connection in subscriber mode) behind every SSE client.
  const producer = new WorkspaceJobsProducer({
    connection: redis,
    pool,
    changes,
    prefix: config.queuePrefix,
    attempts: config.jobAttempts,
    log,
    metrics,
  });
  const streams = new EventStreamSlots(log, {
    maxPerClient: config.dashboardSseMaxPerClient,
    maxStreams: config.dashboardSseMaxStreams,
    ...options.sse,
  });
  const chatEvents = new ChatEventStreams(producer, streams, log);
  const buildLogs = new BuildLogStreams(pool, changes, streams, log);

  const board = new ExpressAdapter();
  board.setBasePath(BOARD_PATH);
  createBullBoard({
    queues: [new BullMQAdapter(queue, { readOnlyMode: config.dashboardReadOnly })],
    serverAdapter: board,
  });

  const app = express();
  app.disable('x-powered-by');
  // First, so that no route (Bull Board's included) sees a forged request, authenticated or not.
  app.use(crossSiteGuard(config.dashboardAllowedOrigins ?? [], log));
  // Health is for orchestrators and stays open; everything else needs the credentials when configured.
  app.get('/healthz', async (_req, res) => {
    const report = await runHealthChecks(
      {
        redis: async () => void (await redis.ping()),
        postgres: async () => void (await pool.query('SELECT 1')),
      },
      DEFAULT_CHECK_TIMEOUT_MS,
      log,
    );
    res.status(report.ok ? 200 : 503).json(report.body);
  });
  if (config.dashboardUser && config.dashboardPassword) {
    app.use(basicAuth(config.dashboardUser, config.dashboardPassword));
  }
  app.use(BOARD_PATH, board.getRouter());
  app.get('/metrics', async (_req, res, next) => {
    try {
      const text = await metrics.registry.metrics();
      res.set('Content-Type', metrics.registry.contentType).send(text);
    } catch (error) {
      next(error);
    }
  });
  app.get('/chats/:chatId/events', chatEvents.handle);
  app.get('/builds/:buildId/logs', buildLogs.handle);
  app.use('/api', apiRouter({ pool, producer, log, readOnly: config.dashboardReadOnly }));
  app.use(
    express.static(PUBLIC_DIR, {
      index: 'index.html',
      setHeaders: (res) => {
        res.setHeader('Content-Security-Policy', PAGE_CSP);
        res.setHeader('X-Content-Type-Options', 'nosniff');
        res.setHeader('Referrer-Policy', 'no-referrer');
        // Small files that change with the code: always revalidate (ETag), never serve stale.
        res.setHeader('Cache-Control', 'no-cache');
      },
    }),
  );
  app.use((error: unknown, req: Request, res: Response, _next: NextFunction) => {
    log.error({ err: error, method: req.method, path: req.originalUrl }, 'dashboard request failed');
    if (!res.headersSent) res.status(500).json({ error: 'internal error; see the dashboard log' });
  });
  if (!existsSync(`${PUBLIC_DIR}index.html`)) {
    log.warn(
      { dir: PUBLIC_DIR },
      'live chat page files not found; only the board, API and events are served',
    );
  }

  let server: Server;
  try {
    server = await new Promise<Server>((resolve, reject) => {
      // Express 5 hands a listen error (EADDRINUSE, EACCES) to this callback instead of throwing.
      const s = app.listen(config.dashboardPort, config.dashboardHost, (error?: Error) =>
        error ? reject(error) : resolve(s),
      );
    });
  } catch (error) {
    await producer.close().catch(() => {});
    await changes.stop();
    await queue.close().catch(() => {});
    await pool.end().catch(() => {});
    await closeRedis(redis);
    throw error;
  }
  const address = server.address();
  const port = typeof address === 'object' && address ? address.port : config.dashboardPort;
  const url = httpUrl(config.dashboardHost, port);
  log.info(
    { url, board: `${url}${BOARD_PATH}`, auth: Boolean(config.dashboardUser) },
    `dashboard listening on ${url} (live chat page /, Bull Board ${BOARD_PATH})`,
  );

  const connections = trackConnections(server);

  let closing: Promise<void> | undefined;
  const close = async () => {
    const step = async (what: string, fn: () => Promise<unknown>) => {
      try {
        await fn();
      } catch (error) {
        log.warn({ err: error }, `dashboard: could not close the ${what}`);
      }
    };
    // Stop accepting connections and drop idle ones; end the event streams (they never finish on their
    // own); let other requests in flight finish for a moment, then cut what is left.
    await step('HTTP server', async () => {
      const serverClosed = new Promise<void>((resolve) => server.close(() => resolve()));
      connections.draining();
      await streams.close();
      await connections.settled(CLOSE_GRACE_MS);
      server.closeAllConnections();
      await serverClosed;
    });
    await step('producer', () => producer.close());
    await step('LISTEN connection', () => changes.stop());
    await step('queue', () => queue.close());
    await step('Postgres pool', () => pool.end());
    await step('Redis connection', () => closeRedis(redis));
    log.info('dashboard closed');
  };

  return {
    url,
    close: () => (closing ??= close()),
  };
}

/**
 * Counts requests in flight per connection, so that a closing server can drop every connection that has
 * none: Node's closeIdleConnections() skips a connection that never sent a request (clients and browsers
 * open spare ones), which would hold server.close() until the client gives up on it.
 */
function trackConnections(server: Server) {
  const inFlight = new Map<Socket, number>();
  let closing = false;
  let onSettled: (() => void) | undefined;
  const release = (socket: Socket) => {
    const before = inFlight.get(socket);
    // A response closes after its connection when the client went away: nothing left to count then.
    if (before === undefined) return;
    const n = before - 1;
    inFlight.set(socket, n);
    if (closing && n === 0) socket.destroy();
  };
  server.on('connection', (socket: Socket) => {
    inFlight.set(socket, 0);
    socket.once('close', () => {
      inFlight.delete(socket);
      if (closing && inFlight.size === 0) onSettled?.();
    });
  });
  server.on('request', (req: IncomingMessage, res: ServerResponse) => {
    const socket = req.socket;
    inFlight.set(socket, (inFlight.get(socket) ?? 0) + 1);
    res.once('close', () => release(socket));
  });
  return {
    /** From now on, a connection is closed as soon as it has no request in flight. */
    draining() {
      closing = true;
      for (const [socket, n] of inFlight) if (n === 0) socket.destroy();
    },
    /** Resolves when every connection is gone, or after `ms`. */
    async settled(ms: number) {
      if (inFlight.size === 0) return;
      let timer: NodeJS.Timeout | undefined;
      await new Promise<void>((resolve) => {
        onSettled = resolve;
        timer = setTimeout(resolve, ms);
      });
      clearTimeout(timer);
    },
  };
}
