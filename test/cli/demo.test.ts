// `workspace-jobs demo` as a real process on real Redis and Postgres, stopped as a terminal's Ctrl-C does:
// SIGINT to the whole foreground process group, the demo and its worker, provisioner and dashboard alike.
// Each child must still get its graceful shutdown (one signal, from the demo) and exit 0, and so must the demo.
import { randomBytes } from 'node:crypto';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { freePort } from '../helpers/redis-server.js';
import { CliProcess, killAll } from '../helpers/cli-process.js';
import { dropDatabase, testDatabaseUrl } from '../helpers/database.js';
import { TEST_REDIS_URL, deleteKeys, testRedis, uniquePrefix } from '../helpers/redis.js';
import { closeRedis } from '../../src/shared/redis.js';

/** The scenarios' builds and waits, with fast simulated builds. */
const RUN_MS = 90_000;
const EXIT_MS = 30_000;

describe('workspace-jobs demo', () => {
  let database: string;
  let prefix: string;

  beforeEach(() => {
    // The demo creates and migrates its database itself.
    database = `wsjobs_test_demo_${randomBytes(6).toString('hex')}`;
    prefix = uniquePrefix('demo');
  });

  afterEach(async () => {
    await killAll();
    await dropDatabase(database);
    const redis = testRedis();
    await deleteKeys(redis, prefix);
    await closeRedis(redis);
  });

  it('Ctrl-C (SIGINT to its process group) stops every child gracefully: each exits 0, and so does the demo', async () => {
    const demo = new CliProcess('demo', ['demo'], {
      REDIS_URL: TEST_REDIS_URL,
      DATABASE_URL: testDatabaseUrl(database),
      QUEUE_PREFIX: prefix,
      DASHBOARD_HOST: '127.0.0.1',
      DASHBOARD_PORT: String(await freePort()),
      LOG_LEVEL: 'info',
      SIM_BUILD_MS: '300',
      SIM_AGENT_CONNECT_MS: '100',
      SIM_STARTUP_MS: '100',
    });
    await expect
      .poll(() => demo.hasExited || demo.stdout.includes('Press Ctrl-C to stop.'), {
        timeout: RUN_MS,
        interval: 100,
      })
      .toBe(true);
    expect(demo.stdout, demo.describe()).toContain('All scenarios ended as expected.');
    expect(demo.stdout).toContain('=== 6. Stop it (a stop build; its agent goes off)');

    demo.signal('SIGINT');

    expect(await demo.waitForExit(EXIT_MS)).toEqual({ code: 0, signal: null });
    const exits = demo
      .logs()
      .filter((l) => l.msg.endsWith(' exited'))
      .map((l) => ({ child: l.child, code: l.code, signal: l.signal }));
    expect(exits.sort((a, b) => String(a.child).localeCompare(String(b.child)))).toEqual([
      { child: 'dashboard', code: 0, signal: null },
      { child: 'provisioner', code: 0, signal: null },
      { child: 'worker', code: 0, signal: null },
    ]);
  }, 150_000);
});
