// The operators' HTTP server: Bull Board for queue `workspaces` at /admin/queues and /healthz.
import type { Server } from 'node:http';
import { createBullBoard } from '@bull-board/api';
import { BullMQAdapter } from '@bull-board/api/bullMQAdapter';
import { ExpressAdapter } from '@bull-board/express';
import { Queue } from 'bullmq';
import express from 'express';
import { QUEUE_NAME, type Config } from '../shared/interfaces.js';
import type { Logger } from '../shared/logger.js';
import { createPool } from '../shared/postgres.js';
import { closeRedis, createRedis } from '../shared/redis.js';
import { assertSafeBinding, basicAuth } from './auth.js';

export const BOARD_PATH = '/admin/queues';

export interface Dashboard {
  url: string;
  close(): Promise<void>;
}

export async function startDashboard(config: Config, log: Logger): Promise<Dashboard> {
  assertSafeBinding(config.dashboardHost, { user: config.dashboardUser, password: config.dashboardPassword });
  const redis = createRedis(config.redisUrl, { name: 'workspace-jobs-dashboard' });
  const pool = createPool(config.databaseUrl, { max: 2, applicationName: 'workspace-jobs-dashboard' });
  const queue = new Queue(QUEUE_NAME, { connection: redis, prefix: config.queuePrefix });
  queue.on('error', (err) => log.warn({ err }, 'dashboard queue error'));

  const board = new ExpressAdapter();
  board.setBasePath(BOARD_PATH);
  createBullBoard({
    queues: [new BullMQAdapter(queue, { readOnlyMode: config.dashboardReadOnly })],
    serverAdapter: board,
  });

  const app = express();
  app.disable('x-powered-by');
  // Health is for orchestrators and stays open; everything else needs the credentials when configured.
  app.get('/healthz', async (_req, res) => {
    const checks = await Promise.allSettled([redis.ping(), pool.query('SELECT 1')]);
    const [redisCheck, postgresCheck] = checks.map((c) =>
      c.status === 'fulfilled' ? 'ok' : String(c.reason),
    );
    const ok = redisCheck === 'ok' && postgresCheck === 'ok';
    res
      .status(ok ? 200 : 503)
      .json({ status: ok ? 'ok' : 'unavailable', redis: redisCheck, postgres: postgresCheck });
  });
  if (config.dashboardUser && config.dashboardPassword) {
    app.use(basicAuth(config.dashboardUser, config.dashboardPassword));
  }
  app.use(BOARD_PATH, board.getRouter());
  app.get('/', (_req, res) => res.redirect(BOARD_PATH));

  const server = await new Promise<Server>((resolve, reject) => {
    const s = app.listen(config.dashboardPort, config.dashboardHost, () => resolve(s));
    s.once('error', reject);
  });
  const address = server.address();
  const port = typeof address === 'object' && address ? address.port : config.dashboardPort;
  const host = config.dashboardHost.includes(':') ? `[${config.dashboardHost}]` : config.dashboardHost;
  const url = `http://${host}:${port}`;
  log.info({ url: `${url}${BOARD_PATH}` }, 'dashboard listening');

  return {
    url,
    async close() {
      server.closeAllConnections();
      await new Promise<void>((resolve) => server.close(() => resolve()));
      await queue.close();
      await pool.end();
      await closeRedis(redis);
    },
  };
}
