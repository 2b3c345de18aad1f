import { afterEach, beforeEach, describe, expect, it, vi } from 'vitest';
import { loadProvisionerConfig, startProvisioner } from '../../src/provisioner/index.js';
import { loadConfig } from '../../src/shared/config.js';
import { createTestDatabase, type TestDatabase } from '../helpers/database.js';
import {
  createFixture,
  createWorkspace,
  getAgents,
  insertBuild,
  POLL,
  silentLog,
  waitForCompletion,
} from './helpers.js';

describe('startProvisioner', () => {
  let db: TestDatabase;

  beforeEach(async () => {
    db = await createTestDatabase();
  });

  afterEach(async () => {
    await db.drop();
  });

  async function connections(): Promise<number> {
    const { rows } = await db.pool.query<{ n: number }>(
      `SELECT count(*)::int AS n FROM pg_stat_activity
       WHERE datname = current_database() AND application_name LIKE 'workspace-jobs-%'
         AND application_name <> 'workspace-jobs-test'`,
    );
    return rows[0]!.n;
  }

  it('when started from the environment › runs sim builds to ready agents, and stop closes its connections', async () => {
    const config = loadConfig({ DATABASE_URL: db.url });
    const provisionerConfig = loadProvisionerConfig({
      SIM_BUILD_MS: '20',
      SIM_AGENT_CONNECT_MS: '20',
      SIM_STARTUP_MS: '20',
      SIM_SEED: '1',
    });
    const daemon = await startProvisioner(config, provisionerConfig, silentLog);
    const fixture = await createFixture(db.pool);
    const build = await insertBuild(db.pool, fixture, await createWorkspace(db.pool, fixture));

    const job = await waitForCompletion(db.pool, build.jobId);
    await vi.waitFor(async () => {
      const agents = await getAgents(db.pool, build.jobId);
      expect(agents[0]?.lifecycle_state).toBe('ready');
    }, POLL);
    expect(job).toMatchObject({ job_status: 'succeeded', worker_id: daemon.id });

    await daemon.stop(1_000);
    await daemon.stop(1_000);
    await expect.poll(connections, POLL).toBe(0); // the daemon's connections closed
  });

  it('when its executor or daemon cannot be created › rejects and closes its connections', async () => {
    const config = loadConfig({ DATABASE_URL: db.url });
    const valid = loadProvisionerConfig({});

    // The executor refuses an empty command; the daemon refuses a staleness below three heartbeats.
    await expect(
      startProvisioner(config, { ...valid, executor: 'command', command: ' ' }, silentLog),
    ).rejects.toThrow('command must not be empty');
    await expect(startProvisioner(config, { ...valid, staleAfterMs: 1 }, silentLog)).rejects.toThrow(
      RangeError,
    );

    await expect.poll(connections, POLL).toBe(0); // the daemon's connections closed
  });

  it('when the database is unreachable › rejects instead of running', async () => {
    const config = loadConfig({ DATABASE_URL: 'postgres://postgres@127.0.0.1:1/nowhere' });

    await expect(startProvisioner(config, loadProvisionerConfig({}), silentLog)).rejects.toThrow();
  });
});
