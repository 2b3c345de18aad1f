// The dashboard's HTTP surface on real Redis and Postgres: /healthz, /metrics, the page's static files,
// basic auth on everything but /healthz, and the refusal to listen beyond loopback without credentials.
import { randomUUID } from 'node:crypto';
import { Queue } from 'bullmq';
import { afterAll, beforeAll, describe, expect, it, onTestFinished } from 'vitest';
import { startDashboard } from '../../src/dashboard/server.js';
import { ConfigError, loadConfig } from '../../src/shared/config.js';
import { QUEUE_NAME } from '../../src/shared/contract.js';
import { createLogger } from '../../src/shared/logger.js';
import { createTestDatabase, type TestDatabase } from '../helpers/database.js';
import { removePrefix, uniquePrefix } from '../helpers/redis.js';
import {
  PASSWORD,
  USER,
  basic,
  dashboardEnv,
  openSse,
  startTestDashboard,
  type TestDashboard,
} from './helpers.js';

let db: TestDatabase;

beforeAll(async () => {
  db = await createTestDatabase();
});

afterAll(async () => {
  await db?.drop();
});

describe('without credentials configured (loopback)', () => {
  let t: TestDashboard;
  beforeAll(async () => {
    t = await startTestDashboard({ db });
  });
  afterAll(async () => {
    await t?.close();
  });

  it('listens on an ephemeral port and reports the real URL', () => {
    expect(t.dashboard.url).toMatch(/^http:\/\/127\.0\.0\.1:\d+$/);
    expect(t.dashboard.url).not.toMatch(/:0$/);
  });

  it('/healthz answers 200 with the state of Redis and Postgres', async () => {
    const res = await fetch(t.url('/healthz'));
    expect(res.status).toBe(200);
    expect(await res.json()).toEqual({ status: 'ok', redis: 'ok', postgres: 'ok' });
  });

  it('/metrics serves Prometheus text with the queue counts and the process metrics', async () => {
    const queue = new Queue(QUEUE_NAME, { connection: t.redis, prefix: t.prefix });
    try {
      await queue.add('start-workspace', { chatId: randomUUID() }, { jobId: randomUUID() });
      await queue.add('start-workspace', { chatId: randomUUID() }, { jobId: randomUUID(), delay: 60_000 });
    } finally {
      await queue.close();
    }
    const res = await fetch(t.url('/metrics'));
    expect(res.status).toBe(200);
    expect(res.headers.get('content-type')).toMatch(/^text\/plain; version=0\.0\.4/);
    const text = await res.text();
    expect(text).toContain('# TYPE wsjobs_queue_jobs gauge');
    expect(text).toMatch(/^wsjobs_queue_jobs\{state="waiting"\} 1$/m);
    expect(text).toMatch(/^wsjobs_queue_jobs\{state="delayed"\} 1$/m);
    expect(text).toMatch(/^wsjobs_queue_jobs\{state="failed"\} 0$/m);
    // Node's default metrics, with the wsjobs_ prefix.
    expect(text).toMatch(/^wsjobs_process_cpu_user_seconds_total \d/m);
    expect(text).toMatch(/^wsjobs_nodejs_heap_size_used_bytes \d/m);
    // The job counters are registered (their values come from the processes that count them).
    expect(text).toContain('# TYPE wsjobs_jobs_finished_total counter');
  });

  it('serves the live chat page and its assets with a strict CSP, and no inline script', async () => {
    const page = await fetch(t.url('/'));
    expect(page.status).toBe(200);
    expect(page.headers.get('content-type')).toMatch(/^text\/html/);
    expect(page.headers.get('content-security-policy')).toContain("script-src 'self'");
    const html = await page.text();
    expect(html).toContain('<script type="module" src="app.js"></script>');
    expect(html).not.toMatch(/<script(?![^>]*\bsrc=)[^>]*>/);
    for (const [path, type] of [
      ['/app.js', /javascript/],
      ['/style.css', /text\/css/],
    ] as const) {
      const res = await fetch(t.url(path));
      expect(res.status, path).toBe(200);
      expect(res.headers.get('content-type'), path).toMatch(type);
    }
  });

  it('serves Bull Board at /admin/queues', async () => {
    const res = await fetch(t.url('/admin/queues'));
    expect(res.status).toBe(200);
    expect(await res.text()).toContain('<div id="root"');
    const queues = await fetch(t.url('/admin/queues/api/queues'));
    expect(queues.status).toBe(200);
    const body = (await queues.json()) as { queues: { name: string }[] };
    expect(body.queues.map((q) => q.name)).toEqual([QUEUE_NAME]);
  });
});

describe('with DASHBOARD_USER and DASHBOARD_PASSWORD', () => {
  let t: TestDashboard;
  beforeAll(async () => {
    t = await startTestDashboard({ db, env: { DASHBOARD_USER: USER, DASHBOARD_PASSWORD: PASSWORD } });
  });
  afterAll(async () => {
    await t?.close();
  });

  const protectedPaths = () => [
    '/',
    '/app.js',
    '/admin/queues',
    '/admin/queues/api/queues',
    '/api/chats',
    '/api/templates',
    '/metrics',
    `/chats/${randomUUID()}/events`,
  ];

  it('answers 401 with a Basic challenge without credentials, or with wrong ones', async () => {
    for (const path of protectedPaths()) {
      const none = await fetch(t.url(path));
      expect(none.status, path).toBe(401);
      expect(none.headers.get('www-authenticate'), path).toMatch(/^Basic realm=/);
      const wrong = await fetch(t.url(path), { headers: { Authorization: basic(USER, 'nope') } });
      expect(wrong.status, path).toBe(401);
    }
    const post = await fetch(t.url(`/api/chats/${randomUUID()}/start`), { method: 'POST' });
    expect(post.status).toBe(401);
  });

  it('answers 200 with them', async () => {
    for (const path of protectedPaths()) {
      if (path.startsWith('/chats/')) {
        const client = await openSse(t.url(path), { authorization: basic() });
        expect(client.status, path).toBe(200);
        await client.comment('live');
        client.close();
      } else {
        const res = await fetch(t.url(path), { headers: { Authorization: basic() } });
        expect(res.status, path).toBe(200);
        await res.arrayBuffer();
      }
    }
  });

  it('keeps /healthz open', async () => {
    const res = await fetch(t.url('/healthz'));
    expect(res.status).toBe(200);
  });
});

describe('/healthz when Postgres is unreachable', () => {
  it('answers 503 naming the part, with no error text in its open body', async () => {
    const prefix = uniquePrefix('dash');
    onTestFinished(() => removePrefix(prefix));
    // A database that does not exist: every Postgres check fails with an error that names it.
    const missing = `wsjobs_test_missing_${randomUUID().slice(0, 8)}`;
    const config = loadConfig(
      dashboardEnv(db, prefix, { DATABASE_URL: db.url.replace(/\/[^/]+$/, `/${missing}`) }),
    );
    const dashboard = await startDashboard(config, createLogger('silent'));
    try {
      const res = await fetch(`${dashboard.url}/healthz`);
      expect(res.status).toBe(503);
      const body = await res.text();
      expect(JSON.parse(body)).toEqual({ status: 'unavailable', redis: 'ok', postgres: 'error' });
      expect(body).not.toContain(missing);
    } finally {
      await dashboard.close();
    }
  });
});

describe('binding', () => {
  it('refuses a non-loopback host without credentials (ConfigError) and opens nothing', async () => {
    const prefix = uniquePrefix('dash');
    onTestFinished(() => removePrefix(prefix));
    const config = loadConfig(dashboardEnv(db, prefix, { DASHBOARD_HOST: '0.0.0.0' }));
    await expect(startDashboard(config, createLogger('silent'))).rejects.toThrow(ConfigError);
    await expect(startDashboard(config, createLogger('silent'))).rejects.toThrow(/DASHBOARD_USER/);
  });

  it('listens on a non-loopback host with credentials', async () => {
    const t = await startTestDashboard({
      db,
      env: { DASHBOARD_HOST: '0.0.0.0', DASHBOARD_USER: USER, DASHBOARD_PASSWORD: PASSWORD },
    });
    try {
      const port = new URL(t.dashboard.url).port;
      const res = await fetch(`http://127.0.0.1:${port}/healthz`);
      expect(res.status).toBe(200);
    } finally {
      await t.close();
    }
  });

  it('fails to start, closing what it opened, when the port is taken', async () => {
    const t = await startTestDashboard({ db });
    try {
      const port = new URL(t.dashboard.url).port;
      const config = loadConfig(dashboardEnv(db, t.prefix, { DASHBOARD_PORT: port }));
      await expect(startDashboard(config, createLogger('silent'))).rejects.toThrow(/EADDRINUSE/);
    } finally {
      await t.close();
    }
  });
});
