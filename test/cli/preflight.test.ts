// Start-up checks as real processes: with Redis or Postgres on a closed port, every command that uses it
// exits 1 with one stderr line naming the service, its URL without the password and how to start it: no
// stack trace, no stream of JSON error lines, no password. It gives up after its 3 s of retries (about 4 s
// from spawn on a quiet machine, tsx's start-up included); how long that takes is not a test's business.
import { afterAll, afterEach, beforeAll, describe, expect, it, onTestFinished } from 'vitest';
import { freePort } from '../helpers/redis-server.js';
import { CliProcess, killAll, runCli } from '../helpers/cli-process.js';
import { adminUrl, createTestDatabase, type TestDatabase } from '../helpers/database.js';
import { TEST_REDIS_URL, removePrefix, uniquePrefix } from '../helpers/redis.js';

/**
 * A hang detector, not a speed check: a command that never gives up is caught here. Under the test suite
 * next to a benchmark (load 6 on 2 cores), tsx's start-up plus the 3 s of retries took over 10 s.
 */
const EXIT_MS = 25_000;
const PASSWORD = 's3cret-pw';
const CHAT = '0a1b2c3d-0000-4000-8000-000000000001';
const OWNER = '0a1b2c3d-0000-4000-8000-000000000002';

function expectOneLine(result: Awaited<ReturnType<typeof runCli>>, ...parts: string[]): void {
  expect(result.exit, JSON.stringify(result)).toEqual({ code: 1, signal: null });
  const lines = result.stderr.filter((line) => line.trim());
  expect(lines, JSON.stringify(result)).toHaveLength(1);
  for (const part of parts) expect(lines[0]).toContain(part);
  // Nothing but that line: no pino error stream on stdout either.
  expect(result.stdout.filter((line) => line.trim())).toEqual([]);
  expect([...result.stdout, ...result.stderr].join('\n')).not.toContain(PASSWORD);
}

describe('start-up checks', () => {
  afterEach(killAll);

  describe('when Redis is unreachable', () => {
    let redisUrl: string;
    let shownUrl: string;

    beforeAll(async () => {
      const port = await freePort();
      redisUrl = `redis://:${PASSWORD}@127.0.0.1:${port}/0`;
      shownUrl = `redis://:***@127.0.0.1:${port}/0`;
    });

    it.each([
      ['worker'],
      ['dashboard', 'DASHBOARD_PORT=0'],
      ['enqueue', 'start', '--chat', CHAT, '--owner', OWNER],
      ['watch', '--chat', CHAT],
      ['cancel', '--job', CHAT],
      ['demo', '--exit'],
    ])('%s › exits 1 with one line naming Redis and its URL', async (...args) => {
      const result = await runCli(
        args.filter((a) => !a.includes('=')),
        { REDIS_URL: redisUrl, DATABASE_URL: adminUrl(), DASHBOARD_PORT: '0' },
        EXIT_MS,
      );
      expectOneLine(result, 'Redis at', shownUrl, 'is unreachable', 'ECONNREFUSED', 'REDIS_URL');
    });
  });

  describe('when Redis and Postgres are both unreachable', () => {
    async function expectNamedFirst(args: string[], named: string): Promise<void> {
      const [redisPort, postgresPort] = [await freePort(), await freePort()];
      const result = await runCli(
        args,
        {
          REDIS_URL: `redis://127.0.0.1:${redisPort}/0`,
          DATABASE_URL: `postgres://postgres@127.0.0.1:${postgresPort}/wsjobs`,
        },
        EXIT_MS,
      );
      expect(result.exit, JSON.stringify(result)).toEqual({ code: 2, signal: null });
      const lines = result.stderr.filter((line) => line.trim());
      expect(lines, JSON.stringify(result)).toHaveLength(1);
      expect(lines[0]).toContain(named);
      expect(lines[0]).not.toContain('unreachable');
    }

    it.each([
      [['cancel'], 'give --job ID or --chat ID'],
      [['cancel', '--job', 'x'], '--job must be a UUID'],
      [['watch', '--chat', CHAT, '--since', 'now'], '--since must be a stream entry id'],
      [['logs', '--build', CHAT, '--after', 'abc'], '--after:'],
      [['enqueue', 'start', '--chat', CHAT, '--timeout', 'soon'], '--timeout'],
      [['enqueue', 'start', '--chat', CHAT, '--owner', 'x'], '--owner must be a UUID'],
      // A value the producer's schema refuses, checked with that schema before any service is asked.
      [
        ['enqueue', 'create', '--chat', CHAT, '--template', CHAT, '--name', 'bad name!'],
        'invalid --name: must be 1-32 letters',
      ],
      [['demo', '--exti'], '--exti'],
    ])('%j › a bad flag is still named first, exit 2', expectNamedFirst);

    it('enqueue start --param with a value over 4096 characters › named first, exit 2', () =>
      expectNamedFirst(
        ['enqueue', 'start', '--chat', CHAT, '--param', `size=${'x'.repeat(4097)}`],
        'invalid --param: size: Too big',
      ));
  });

  describe('when no seed node of a Redis Cluster answers', () => {
    it('worker › exits 1 with one line naming every seed without its password', async () => {
      const [a, b] = [await freePort(), await freePort()];
      const result = await runCli(
        ['worker'],
        {
          REDIS_CLUSTER: 'true',
          REDIS_URL: `redis://:${PASSWORD}@127.0.0.1:${a},redis://:${PASSWORD}@127.0.0.1:${b}`,
          DATABASE_URL: adminUrl(),
        },
        EXIT_MS,
      );
      expectOneLine(
        result,
        `Redis Cluster at redis://:***@127.0.0.1:${a},redis://:***@127.0.0.1:${b} is unreachable`,
        'REDIS_URL',
      );
    });
  });

  describe('when Postgres is unreachable', () => {
    let databaseUrl: string;
    let shownUrl: string;

    beforeAll(async () => {
      const port = await freePort();
      databaseUrl = `postgres://postgres:${PASSWORD}@127.0.0.1:${port}/wsjobs`;
      shownUrl = `postgres://postgres:***@127.0.0.1:${port}/wsjobs`;
    });

    it.each([
      ['worker'],
      ['provisioner'],
      ['dashboard'],
      ['enqueue', 'start', '--chat', CHAT, '--owner', OWNER],
      ['seed'],
      ['migrate'],
      ['demo', '--exit'],
    ])('%s › exits 1 with one line naming Postgres and its URL', async (...args) => {
      const result = await runCli(
        args,
        { REDIS_URL: TEST_REDIS_URL, DATABASE_URL: databaseUrl, DASHBOARD_PORT: '0' },
        EXIT_MS,
      );
      expectOneLine(result, 'Postgres at', shownUrl, 'is unreachable', 'ECONNREFUSED', 'DATABASE_URL');
    });
  });

  describe('when the database does not exist', () => {
    it('worker › exits 1 saying so and how to create it', async () => {
      const url = new URL(adminUrl());
      url.pathname = `/wsjobs_missing_${uniquePrefix('db').replace(/\W/g, '_')}`;
      const result = await runCli(
        ['worker'],
        { REDIS_URL: TEST_REDIS_URL, DATABASE_URL: url.toString() },
        EXIT_MS,
      );
      expectOneLine(result, 'does not exist', url.pathname, 'workspace-jobs migrate');
    });
  });

  describe('with three lock nodes', () => {
    let db: TestDatabase;

    beforeAll(async () => {
      db = await createTestDatabase();
    });

    afterAll(async () => {
      await db?.drop();
    });

    it('when two are unreachable › the worker exits 1 naming both', async () => {
      const [a, b] = [await freePort(), await freePort()];
      const result = await runCli(
        ['worker'],
        {
          REDIS_URL: TEST_REDIS_URL,
          DATABASE_URL: db.url,
          LOCK_REDIS_URLS: `redis://127.0.0.1:${a},redis://127.0.0.1:${b},${TEST_REDIS_URL}`,
        },
        EXIT_MS,
      );
      expectOneLine(result, '2 of 3 lock Redis nodes', `127.0.0.1:${a}`, `127.0.0.1:${b}`, 'LOCK_REDIS_URLS');
    });

    it('when one is unreachable › the worker starts, reporting the node, and stops cleanly', async () => {
      const down = await freePort();
      const prefix = uniquePrefix('preflight');
      onTestFinished(() => removePrefix(prefix));
      const worker = new CliProcess('worker', ['worker'], {
        REDIS_URL: TEST_REDIS_URL,
        DATABASE_URL: db.url,
        QUEUE_PREFIX: prefix,
        LOG_LEVEL: 'info',
        LOCK_REDIS_URLS: `redis://127.0.0.1:${down},${TEST_REDIS_URL}/1,${TEST_REDIS_URL}/2`,
      });
      const warning = await worker.waitForLog('the lock node warning', (l) =>
        l.msg.startsWith('a lock node is unreachable'),
      );
      expect(warning.url).toBe(`redis://127.0.0.1:${down}`);
      await worker.waitForLog('worker started', (l) => l.msg === 'worker started');
      expect(await worker.stop('SIGTERM')).toEqual({ code: 0, signal: null });
    });
  });
});
