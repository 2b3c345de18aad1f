import { afterEach, beforeEach, describe, expect, it, vi } from 'vitest';
import { Provisioner } from '../../src/provisioner/provisioner.js';
import {
  INSUFFICIENT_QUOTA_ERROR,
  SIMULATED_BUILD_FAILURE,
  SimExecutor,
  type SimExecutorOptions,
} from '../../src/provisioner/sim-executor.js';
import type { BuildJob } from '../../src/provisioner/executor.js';
import { PgNotificationHub } from '../../src/shared/notifications.js';
import type { Pool } from '../../src/shared/postgres.js';
import { createTestDatabase, type TestDatabase } from '../helpers/database.js';
import {
  createFixture,
  createWorkspace,
  getAgents,
  getLogs,
  insertBuild,
  POLL,
  silentLog,
  waitForCompletion,
  type AgentRow,
  type Fixture,
  synchronousCommit,
} from './helpers.js';

describe('SimExecutor', () => {
  let db: TestDatabase;
  let hub: PgNotificationHub;
  let fixture: Fixture;
  const cleanups: (() => Promise<void>)[] = [];

  beforeEach(async () => {
    db = await createTestDatabase();
    hub = new PgNotificationHub(db.url);
    await hub.start();
    fixture = await createFixture(db.pool);
  });

  afterEach(async () => {
    for (const cleanup of cleanups.splice(0).reverse()) await cleanup();
    await hub.stop();
    await db.drop();
  });

  /** A daemon running a fast simulator. */
  function startSim(options: Partial<SimExecutorOptions> = {}, concurrency = 4): SimExecutor {
    const executor = new SimExecutor({
      pool: db.pool,
      buildMs: 30,
      agentConnectMs: 30,
      startupMs: 30,
      log: silentLog,
      ...options,
    });
    const provisioner = new Provisioner({ pool: db.pool, hub, executor, concurrency, log: silentLog });
    provisioner.start();
    cleanups.push(() => provisioner.stop({ graceMs: 0 }));
    return executor;
  }

  function waitForAgents(jobId: string, done: (agents: AgentRow[]) => boolean): Promise<AgentRow[]> {
    return vi.waitFor(async () => {
      const agents = await getAgents(db.pool, jobId);
      expect(agents, `agents of job ${jobId}`).not.toEqual([]);
      expect(done(agents), `agents of job ${jobId}: ${JSON.stringify(agents)}`).toBe(true);
      return agents;
    }, POLL);
  }

  it('when a start build runs › succeeds with logs, then its agents connect, start and become ready', async () => {
    startSim({ agentNames: ['main', 'dev-coderd-chat'] });
    const build = await insertBuild(db.pool, fixture, await createWorkspace(db.pool, fixture, 'dev'), {
      parameters: { region: 'eu' },
    });

    expect(await waitForCompletion(db.pool, build.jobId)).toMatchObject({
      job_status: 'succeeded',
      error: null,
    });
    const stages = new Set((await getLogs(db.pool, build.jobId)).map((l) => l.stage));
    expect([...stages]).toEqual([
      'Setting up',
      'Planning infrastructure',
      'Starting workspace',
      'Cleaning Up',
    ]);

    const agents = await waitForAgents(build.jobId, (as) => as.every((a) => a.lifecycle_state === 'ready'));
    expect(agents.map((a) => [a.name, a.display_order])).toEqual([
      ['main', 0],
      ['dev-coderd-chat', 1],
    ]);
    for (const agent of agents) {
      expect(agent).toMatchObject({
        resource_type: 'sim_container',
        resource_name: 'dev',
        disconnected_at: null,
      });
      expect(agent.first_connected_at).not.toBeNull();
      expect(agent.last_connected_at).not.toBeNull();
      // 'ready' is only written over 'starting', so started_at set and not after ready_at shows the order.
      expect(agent.started_at!.getTime()).toBeLessThanOrEqual(agent.ready_at!.getTime());
    }
  });

  it('when agents are connecting › they pass through starting before ready', async () => {
    // A startup long enough to observe 'starting'; the test ends once 'starting' is seen.
    startSim({ agentConnectMs: 0, startupMs: 60_000 });
    const build = await insertBuild(db.pool, fixture, await createWorkspace(db.pool, fixture));
    await waitForCompletion(db.pool, build.jobId);

    const created = await getAgents(db.pool, build.jobId);
    expect(created.map((a) => a.lifecycle_state)).toEqual([expect.stringMatching(/^(created|starting)$/)]);
    const [agent] = await waitForAgents(build.jobId, (as) => as[0]!.lifecycle_state === 'starting');
    expect(agent!.first_connected_at).not.toBeNull();
    expect(agent!.ready_at).toBeNull();
  });

  it('when an agent reports › its connect report commits without waiting for the WAL flush, its ready report with it', async () => {
    // A committed start build whose agent has not connected: its daemon's simulator never lets it.
    const parked = startSim({ agentConnectMs: 60_000 });
    const workspaceId = await createWorkspace(db.pool, fixture);
    const build = await insertBuild(db.pool, fixture, workspaceId);
    await waitForCompletion(db.pool, build.jobId);
    await parked.stop();
    const [created] = await getAgents(db.pool, build.jobId);

    const client = await db.pool.connect();
    try {
      const show = () => synchronousCommit(client);
      // Each of the simulator's reports in a transaction of its own, as the pool runs it, with the setting
      // it commits under looked at before its commit.
      const settings: string[] = [];
      const oneTransactionEach = {
        query: async (...args: unknown[]) => {
          await client.query('BEGIN');
          const result = await client.query(...(args as [string]));
          settings.push(await show());
          await client.query('COMMIT');
          return result;
        },
      } as Pool;
      const before = await show();
      const sim = new SimExecutor({
        pool: oneTransactionEach,
        agentConnectMs: 0,
        startupMs: 0,
        log: silentLog,
      });
      const job = { jobId: build.jobId, workspaceId, transition: 'start' } as BuildJob;
      sim.afterCommit(job, [{ id: created!.id, name: created!.name }]);
      await vi.waitFor(async () => {
        expect((await getAgents(db.pool, build.jobId)).map((a) => a.lifecycle_state)).toEqual(['ready']);
      }, POLL);
      await sim.stop();

      expect(before).not.toBe('off');
      expect(settings).toEqual(['off', before]);
      expect(await show()).toBe(before);
    } finally {
      client.release();
    }
  });

  it('when the failure rate is 1 › the build fails with the simulated error, logs and no agents', async () => {
    startSim({ failureRate: 1 });
    const build = await insertBuild(db.pool, fixture, await createWorkspace(db.pool, fixture));

    const job = await waitForCompletion(db.pool, build.jobId);

    expect(job).toMatchObject({ job_status: 'failed', error: SIMULATED_BUILD_FAILURE, error_code: null });
    const logs = await getLogs(db.pool, build.jobId);
    expect(logs.filter((l) => l.source === 'provisioner').length).toBeGreaterThanOrEqual(3);
    expect(logs).toContainEqual(
      expect.objectContaining({ level: 'error', output: `Error: ${SIMULATED_BUILD_FAILURE}` }),
    );
    expect(await getAgents(db.pool, build.jobId)).toEqual([]);
  });

  const simulatedLines = (logs: { output: string }[]) =>
    logs.filter((l) => l.output.startsWith('Simulated output line')).map((l) => l.output);

  it('with logLines › a build that succeeds writes every simulated line, in order, in the build stages', async () => {
    startSim({ logLines: 500, buildMs: 200 });
    const build = await insertBuild(db.pool, fixture, await createWorkspace(db.pool, fixture));

    expect(await waitForCompletion(db.pool, build.jobId)).toMatchObject({ job_status: 'succeeded' });
    const logs = await getLogs(db.pool, build.jobId);
    expect(simulatedLines(logs)).toEqual(
      Array.from({ length: 500 }, (_, i) => `Simulated output line ${i + 1} of 500`),
    );
    const stages = new Set(logs.filter((l) => l.output.startsWith('Simulated')).map((l) => l.stage));
    for (const stage of stages) expect(['Planning infrastructure', 'Starting workspace']).toContain(stage);
  });

  it('with logLines › a build that fails stops its simulated output where the build stopped', async () => {
    startSim({ logLines: 500, buildMs: 1_000, failureRate: 1 });
    const build = await insertBuild(db.pool, fixture, await createWorkspace(db.pool, fixture));

    expect(await waitForCompletion(db.pool, build.jobId)).toMatchObject({ job_status: 'failed' });
    const lines = simulatedLines(await getLogs(db.pool, build.jobId));
    // It fails 65% into its duration: the rest of the schedule never comes.
    expect(lines.length).toBeLessThan(500);
    expect(lines).toEqual(
      Array.from({ length: lines.length }, (_, i) => `Simulated output line ${i + 1} of 500`),
    );
  });

  it('with a bad logLines › refuses to start', () => {
    expect(() => new SimExecutor({ pool: db.pool, logLines: -1 })).toThrow(
      new RangeError('logLines must be a whole number ≥ 0, got -1'),
    );
  });

  it('when a start would take the owner past the quota budget › it fails with INSUFFICIENT_QUOTA and the quota', async () => {
    startSim({ quotaBudget: 2, workspaceCost: 2 });
    const first = await createWorkspace(db.pool, fixture);
    const second = await createWorkspace(db.pool, fixture);
    const firstStart = await insertBuild(db.pool, fixture, first);
    expect(await waitForCompletion(db.pool, firstStart.jobId)).toMatchObject({
      job_status: 'succeeded',
      error_code: null,
      quota_credits_consumed: null,
    });

    const refused = await insertBuild(db.pool, fixture, second);

    expect(await waitForCompletion(db.pool, refused.jobId)).toMatchObject({
      job_status: 'failed',
      error: INSUFFICIENT_QUOTA_ERROR,
      error_code: 'INSUFFICIENT_QUOTA',
      quota_credits_consumed: 2,
      quota_budget: 2,
    });
    expect(await getAgents(db.pool, refused.jobId)).toEqual([]);
    expect(await getLogs(db.pool, refused.jobId)).toContainEqual(
      expect.objectContaining({
        level: 'error',
        output: `Error: ${INSUFFICIENT_QUOTA_ERROR} (2 of 2 credits consumed, this workspace costs 2)`,
      }),
    );

    // A stop is never refused, and the credits it frees let the other workspace start.
    const stop = await insertBuild(db.pool, fixture, first, { transition: 'stop' });
    expect(await waitForCompletion(db.pool, stop.jobId)).toMatchObject({ job_status: 'succeeded' });
    const retry = await insertBuild(db.pool, fixture, second);
    expect(await waitForCompletion(db.pool, retry.jobId)).toMatchObject({
      job_status: 'succeeded',
      error_code: null,
    });
  });

  it('when startup scripts fail › the agent ends in start_error', async () => {
    startSim({ startupFailureRate: 1 });
    const build = await insertBuild(db.pool, fixture, await createWorkspace(db.pool, fixture));
    await waitForCompletion(db.pool, build.jobId);

    const [agent] = await waitForAgents(
      build.jobId,
      (as) => as[0]!.lifecycle_state !== 'created' && as[0]!.lifecycle_state !== 'starting',
    );

    expect(agent!.lifecycle_state).toBe('start_error');
  });

  it('when the workspace is stopped › the agents of its earlier build disconnect and go off', async () => {
    startSim();
    const workspaceId = await createWorkspace(db.pool, fixture);
    const start = await insertBuild(db.pool, fixture, workspaceId);
    await waitForCompletion(db.pool, start.jobId);
    await waitForAgents(start.jobId, (as) => as[0]!.lifecycle_state === 'ready');

    const stop = await insertBuild(db.pool, fixture, workspaceId, { transition: 'stop' });
    expect(await waitForCompletion(db.pool, stop.jobId)).toMatchObject({ job_status: 'succeeded' });

    const [agent] = await getAgents(db.pool, start.jobId);
    expect(agent!.lifecycle_state).toBe('off');
    expect(agent!.disconnected_at).not.toBeNull();
    expect(await getAgents(db.pool, stop.jobId)).toEqual([]);
    expect((await getLogs(db.pool, stop.jobId)).map((l) => l.stage)).toContain('Stopping workspace');
  });

  it('when stopped before its agents connect › the agents stay as the build left them', async () => {
    const executor = startSim({ agentConnectMs: 60_000 });
    const startups = (executor as unknown as { startups: Map<string, unknown> }).startups;
    const build = await insertBuild(db.pool, fixture, await createWorkspace(db.pool, fixture));
    await waitForCompletion(db.pool, build.jobId);
    // afterCommit runs right after the completing transaction: it took the outcomes and started the agents.
    await expect.poll(() => startups.size, POLL).toBe(0);

    // Resolves at once: the pending agent timers are cancelled, not awaited.
    await executor.stop();

    expect((await getAgents(db.pool, build.jobId)).map((a) => a.lifecycle_state)).toEqual(['created']);
  });

  it('when a start build succeeds but is not committed › the startup outcomes it drew are let go', async () => {
    // Postgres text cannot hold NUL, so recording this agent fails and the job is failed instead.
    const executor = startSim({ agentNames: ['main', 'bad\0name'] });
    const startups = (executor as unknown as { startups: Map<string, unknown> }).startups;
    const build = await insertBuild(db.pool, fixture, await createWorkspace(db.pool, fixture));

    expect((await waitForCompletion(db.pool, build.jobId)).job_status).toBe('failed');
    await expect.poll(() => startups.size, POLL).toBe(0); // the startup outcomes were let go
    expect(await getAgents(db.pool, build.jobId)).toEqual([]);
  });

  it('when seeded › the same seed replays the same sequence of outcomes', async () => {
    async function outcomes(seed: number): Promise<string[]> {
      const executor = startSim({ seed, failureRate: 0.5, buildMs: 0, buildJitterMs: 20, agentNames: [] }, 1);
      const workspaceId = await createWorkspace(db.pool, fixture);
      const jobIds: string[] = [];
      for (let i = 0; i < 12; i++) jobIds.push((await insertBuild(db.pool, fixture, workspaceId)).jobId);
      const jobs = [];
      for (const id of jobIds) jobs.push(await waitForCompletion(db.pool, id));
      await cleanups.pop()!();
      await executor.stop();
      return jobs.map((j) => j.job_status);
    }

    const first = await outcomes(42);
    const second = await outcomes(42);
    const other = await outcomes(7);

    expect(second).toEqual(first);
    expect(new Set(first)).toEqual(new Set(['succeeded', 'failed']));
    expect(other).not.toEqual(first);
  });

  it('when the build is aborted › run rejects promptly with the abort reason', async () => {
    const executor = new SimExecutor({ pool: db.pool, buildMs: 60_000 });
    const controller = new AbortController();
    const running = executor.run(
      {
        jobId: '00000000-0000-0000-0000-000000000001',
        buildId: '00000000-0000-0000-0000-000000000002',
        workspaceId: '00000000-0000-0000-0000-000000000003',
        workspaceName: 'dev',
        ownerId: '00000000-0000-0000-0000-000000000004',
        templateVersionId: '00000000-0000-0000-0000-000000000005',
        buildNumber: 1,
        transition: 'start',
        parameters: {},
      },
      { signal: controller.signal, log: async () => {} },
    );
    controller.abort(new Error('canceled by test'));

    await expect(running).rejects.toThrow('canceled by test');
  });
});
