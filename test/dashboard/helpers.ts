// The dashboard under test: a private database and Redis prefix, the dashboard started in-process on an
// ephemeral port, and a small Server-Sent Events client over fetch (so that a test controls Last-Event-ID
// and sees comments such as heartbeats, which EventSource hides).
import { expect } from 'vitest';
import { startDashboard, type Dashboard, type DashboardOptions } from '../../src/dashboard/server.js';
import { loadConfig, type Config, type Env } from '../../src/shared/config.js';
import type { WorkspaceJobEvent } from '../../src/shared/contract.js';
import { createLogger, type Logger } from '../../src/shared/logger.js';
import { closeRedis, type RedisClient } from '../../src/shared/redis.js';
import { createTestDatabase, type TestDatabase } from '../helpers/database.js';
import { TEST_REDIS_ENV, deleteKeys, testClient, uniquePrefix } from '../helpers/redis.js';

export const USER = 'ops';
export const PASSWORD = 'correct horse battery staple';

export function basic(user = USER, password = PASSWORD): string {
  return `Basic ${Buffer.from(`${user}:${password}`).toString('base64')}`;
}

export interface TestDashboard {
  db: TestDatabase;
  prefix: string;
  config: Config;
  dashboard: Dashboard;
  /** The test's own Redis connection (publishing events, inspecting keys). */
  redis: RedisClient;
  log: Logger;
  url(path: string): string;
  /** Closes the dashboard (if not closed yet), removes the prefix's keys and drops the database. */
  close(): Promise<void>;
}

export interface TestDashboardOptions {
  env?: Env;
  dashboard?: DashboardOptions;
  /** Reuse a database (the caller drops it). */
  db?: TestDatabase;
  prefix?: string;
}

/** Base environment for a test dashboard on `db` and `prefix`: ephemeral port, quiet logs. */
export function dashboardEnv(db: TestDatabase, prefix: string, env: Env = {}): Env {
  return {
    ...TEST_REDIS_ENV,
    DATABASE_URL: db.url,
    QUEUE_PREFIX: prefix,
    LOG_LEVEL: 'silent',
    DASHBOARD_HOST: '127.0.0.1',
    DASHBOARD_PORT: '0',
    ...env,
  };
}

export async function startTestDashboard(options: TestDashboardOptions = {}): Promise<TestDashboard> {
  const db = options.db ?? (await createTestDatabase());
  const prefix = options.prefix ?? uniquePrefix('dash');
  const redis = testClient();
  const config = loadConfig(dashboardEnv(db, prefix, options.env));
  const log = createLogger('silent');
  let dashboard: Dashboard;
  try {
    dashboard = await startDashboard(config, log, options.dashboard);
  } catch (error) {
    await closeRedis(redis);
    if (!options.db) await db.drop();
    throw error;
  }
  return {
    db,
    prefix,
    config,
    dashboard,
    redis,
    log,
    url: (path) => `${dashboard.url}${path}`,
    async close() {
      await dashboard.close();
      await deleteKeys(redis, prefix);
      await closeRedis(redis);
      if (!options.db) await db.drop();
    },
  };
}

// ---------------------------------------------------------------------------------------------------
// A Server-Sent Events client

export interface SseMessage {
  id?: string;
  /** The `event:` field; absent = the default `message`. */
  event?: string;
  data: string;
}

export interface SseClient {
  status: number;
  headers: Headers;
  /** The next event (not comment); fails after `timeoutMs`. */
  next(timeoutMs?: number): Promise<SseMessage>;
  /** Resolves once a comment containing `text` has arrived (at once if one already has). */
  comment(text: string, timeoutMs?: number): Promise<void>;
  /** Events received but not taken with next() yet. */
  pending(): SseMessage[];
  comments: string[];
  retry?: number;
  /** Resolves when the server ends the stream. */
  ended: Promise<void>;
  close(): void;
}

export async function openSse(
  url: string,
  options: { lastEventId?: string; authorization?: string } = {},
): Promise<SseClient> {
  const abort = new AbortController();
  const headers: Record<string, string> = { Accept: 'text/event-stream' };
  if (options.lastEventId !== undefined) headers['Last-Event-ID'] = options.lastEventId;
  if (options.authorization !== undefined) headers.Authorization = options.authorization;
  const res = await fetch(url, { headers, signal: abort.signal });

  const queue: SseMessage[] = [];
  const comments: string[] = [];
  let wake: (() => void) | undefined;
  const notify = () => {
    wake?.();
    wake = undefined;
  };
  let done = false;

  const client: SseClient = {
    status: res.status,
    headers: res.headers,
    comments,
    ended: Promise.resolve(),
    pending: () => [...queue],
    async next(timeoutMs = 5_000) {
      const deadline = Date.now() + timeoutMs;
      while (queue.length === 0) {
        if (done) throw new Error('the event stream ended');
        const left = deadline - Date.now();
        if (left <= 0) throw new Error(`no event within ${timeoutMs} ms`);
        await new Promise<void>((resolve) => {
          const timer = setTimeout(resolve, left);
          wake = () => {
            clearTimeout(timer);
            resolve();
          };
        });
      }
      return queue.shift()!;
    },
    async comment(text, timeoutMs = 5_000) {
      const deadline = Date.now() + timeoutMs;
      while (!comments.some((c) => c.includes(text))) {
        if (done) throw new Error(`the event stream ended before a comment ${JSON.stringify(text)}`);
        const left = deadline - Date.now();
        if (left <= 0) throw new Error(`no comment ${JSON.stringify(text)} within ${timeoutMs} ms`);
        await new Promise<void>((resolve) => {
          const timer = setTimeout(resolve, left);
          wake = () => {
            clearTimeout(timer);
            resolve();
          };
        });
      }
    },
    close: () => abort.abort(),
  };

  if (!res.ok || !res.body) {
    done = true;
    return client;
  }

  // The wire format: blocks separated by a blank line; `field: value` lines; `:` starts a comment.
  const reader = res.body.pipeThrough(new TextDecoderStream()).getReader();
  client.ended = (async () => {
    let buffer = '';
    try {
      for (;;) {
        const { value, done: finished } = await reader.read();
        if (finished) break;
        buffer += value;
        let end: number;
        while ((end = buffer.indexOf('\n\n')) >= 0) {
          const block = buffer.slice(0, end);
          buffer = buffer.slice(end + 2);
          const message: SseMessage = { data: '' };
          let hasData = false;
          for (const line of block.split('\n')) {
            if (line.startsWith(':')) comments.push(line.slice(1).trim());
            else if (line.startsWith('id: ')) message.id = line.slice(4);
            else if (line.startsWith('event: ')) message.event = line.slice(7);
            else if (line.startsWith('retry: ')) client.retry = Number(line.slice(7));
            else if (line.startsWith('data: ')) {
              message.data += (hasData ? '\n' : '') + line.slice(6);
              hasData = true;
            }
          }
          if (hasData) queue.push(message);
          notify();
        }
      }
    } catch {
      // aborted by close()
    } finally {
      done = true;
      notify();
    }
  })();
  return client;
}

/** Takes `n` events off the stream and checks each `id:` line matches the envelope's seq. */
export async function take(client: SseClient, n: number): Promise<WorkspaceJobEvent[]> {
  const events: WorkspaceJobEvent[] = [];
  for (let i = 0; i < n; i++) {
    const message = await client.next();
    const event = JSON.parse(message.data) as WorkspaceJobEvent;
    expect(message.id).toBe(event.seq);
    events.push(event);
  }
  return events;
}
