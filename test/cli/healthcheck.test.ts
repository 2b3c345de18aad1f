// The provisioner's health check as compose runs it, with real processes on a real Postgres: a provisioner
// with PROVISIONER_HEALTH_FILE rewrites its health there, and `workspace-jobs healthcheck` exits 0 while it
// is fresh and ok, 1 (one line saying why) when the process is frozen, gone or unhealthy.
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import { CliProcess, killAll, runCli } from '../helpers/cli-process.js';
import { createTestDatabase, type TestDatabase } from '../helpers/database.js';

const START_MS = 20_000;
const EXIT_MS = 15_000;
/** A frozen provisioner's file is older than this a few seconds after its last write (every 5 s). */
const SHORT_MAX_AGE_MS = 6_000;

describe('workspace-jobs healthcheck of a provisioner', () => {
  let db: TestDatabase;
  let dir: string;
  let file: string;

  beforeAll(async () => {
    db = await createTestDatabase();
  });

  afterAll(async () => {
    await db.drop();
  });

  afterEach(async () => {
    await killAll();
    rmSync(dir, { recursive: true, force: true });
  });

  const env = (extra: Record<string, string> = {}) => ({
    DATABASE_URL: db.url,
    LOG_LEVEL: 'info',
    SHUTDOWN_GRACE_MS: '2000',
    PROVISIONER_HEALTH_FILE: file,
    ...extra,
  });

  function setUp(): void {
    dir = mkdtempSync(join(tmpdir(), 'wsjobs-health-'));
    file = join(dir, 'provisioner-health.json');
  }

  async function startProvisioner(): Promise<CliProcess> {
    const provisioner = new CliProcess('provisioner', ['provisioner'], env());
    await provisioner.waitForLog('running', (l) => l.msg === 'provisioner daemon running', START_MS);
    return provisioner;
  }

  const healthcheck = (...args: string[]) => runCli(['healthcheck', ...args], env(), EXIT_MS);

  it('exits 0 while the provisioner runs; 1 once it is frozen; 1 once it has stopped (the file is gone)', async () => {
    setUp();
    const provisioner = await startProvisioner();

    const healthy = await healthcheck();
    expect(healthy.exit, JSON.stringify(healthy)).toEqual({ code: 0, signal: null });
    expect(healthy.stdout).toEqual([
      expect.stringMatching(
        new RegExp(
          `^workspace-jobs: ok: postgres ok, provisioner running \\(pid ${provisioner.pid}, written \\d+ s ago\\)$`,
        ),
      ),
    ]);

    // Frozen (as a hung event loop would be): the file stops being rewritten and goes stale.
    provisioner.signal('SIGSTOP');
    await expect
      .poll(async () => (await healthcheck('--max-age', String(SHORT_MAX_AGE_MS))).exit.code, {
        timeout: 3 * SHORT_MAX_AGE_MS,
        interval: 500,
      })
      .toBe(1);
    const stale = await healthcheck('--max-age', String(SHORT_MAX_AGE_MS));
    expect(stale.stderr).toEqual([
      expect.stringMatching(/^workspace-jobs: stale health file .* over 6000 ms\): hung or stopped$/),
    ]);

    provisioner.signal('SIGCONT');
    await expect.poll(async () => (await healthcheck()).exit.code, { timeout: EXIT_MS }).toBe(0);
    expect(await provisioner.stop('SIGTERM', EXIT_MS)).toEqual({ code: 0, signal: null });

    const stopped = await healthcheck();
    expect(stopped.exit).toEqual({ code: 1, signal: null });
    expect(stopped.stderr).toEqual([
      `workspace-jobs: no health file at ${file}: not running, or not started yet`,
    ]);
  }, 90_000);

  it('exits 1 naming the failing part when a fresh file says unavailable', async () => {
    setUp();
    const health = { status: 'unavailable', postgres: 'timeout', provisioner: 'running' };
    writeFileSync(file, JSON.stringify({ at: new Date().toISOString(), pid: 4242, health }));

    const run = await healthcheck();

    expect(run.exit).toEqual({ code: 1, signal: null });
    expect(run.stderr).toEqual([
      expect.stringMatching(
        /^workspace-jobs: unavailable: postgres timeout, provisioner running \(pid 4242, /,
      ),
    ]);
  }, 30_000);

  it('a provisioner whose health file cannot be written does not start: exit 2 naming the variable', async () => {
    setUp();
    const missingDir = join(dir, 'no-such-dir', 'health.json');
    const run = await runCli(['provisioner'], env({ PROVISIONER_HEALTH_FILE: missingDir }), START_MS);

    expect(run.exit, JSON.stringify(run)).toEqual({ code: 2, signal: null });
    expect(run.stderr.at(-1)).toMatch(
      new RegExp(`^workspace-jobs: PROVISIONER_HEALTH_FILE: cannot write ${missingDir} \\(ENOENT`),
    );
  }, 30_000);
});
