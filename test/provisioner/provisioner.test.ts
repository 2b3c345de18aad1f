import { randomUUID } from 'node:crypto';
import { afterEach, beforeEach, describe, expect, it, vi } from 'vitest';
import {
  CLAIM,
  Provisioner,
  STALE_JOB_ERROR,
  type ProvisionerOptions,
} from '../../src/provisioner/provisioner.js';
import { topics } from '../../src/worker/ports.js';
import { PENDING_JOB_TOPIC, PgNotificationHub } from '../../src/shared/notifications.js';
import { createPool, type Pool } from '../../src/shared/postgres.js';
import { createTestDatabase, type TestDatabase } from '../helpers/database.js';
import {
  CountingPool,
  countResources,
  createFixture,
  createWorkspace,
  getAgents,
  getClaims,
  getJob,
  getLogs,
  insertBuild,
  PausablePool,
  POLL,
  RecordingExecutor,
  silentLog,
  waitForCompletion,
  waitForStatus,
  type Fixture,
  synchronousCommit,
} from './helpers.js';

describe('Provisioner', () => {
  let db: TestDatabase;
  let fixture: Fixture;
  const cleanups: (() => Promise<void>)[] = [];

  beforeEach(async () => {
    db = await createTestDatabase();
    fixture = await createFixture(db.pool);
  });

  afterEach(async () => {
    for (const cleanup of cleanups.splice(0).reverse()) await cleanup();
    await db.drop();
  });

  async function startHub(): Promise<PgNotificationHub> {
    const hub = new PgNotificationHub(db.url);
    await hub.start();
    cleanups.push(() => hub.stop());
    return hub;
  }

  async function startProvisioner(
    options: Partial<ProvisionerOptions> & Pick<ProvisionerOptions, 'executor'>,
  ): Promise<Provisioner> {
    const hub = options.hub ?? (await startHub());
    const provisioner = new Provisioner({
      pool: db.pool,
      // Long by default, so a test that passes shows the notifications did the waking.
      pollIntervalMs: 60_000,
      log: silentLog,
      ...options,
      hub,
    });
    provisioner.start();
    cleanups.push(() => provisioner.stop({ graceMs: 0 }));
    return provisioner;
  }

  it('when a start build is pending › claims it, logs, succeeds and writes its resource and agents', async () => {
    const executor = new RecordingExecutor({ agents: ['main', 'dev-coderd-chat'] });
    const provisioner = await startProvisioner({ executor });
    const workspaceId = await createWorkspace(db.pool, fixture);
    const build = await insertBuild(db.pool, fixture, workspaceId, { parameters: { region: 'eu' } });

    const job = await waitForCompletion(db.pool, build.jobId);

    expect(job).toMatchObject({ job_status: 'succeeded', error: null, worker_id: provisioner.id });
    expect(job.started_at).not.toBeNull();
    expect(executor.runs).toEqual([build.jobId]);
    const agents = await getAgents(db.pool, build.jobId);
    expect(agents.map((a) => [a.name, a.display_order, a.lifecycle_state])).toEqual([
      ['main', 0, 'created'],
      ['dev-coderd-chat', 1, 'created'],
    ]);
    expect(agents[0]).toMatchObject({
      resource_type: 'test',
      resource_name: 'dev',
      resource_transition: 'start',
    });
    const logs = await getLogs(db.pool, build.jobId);
    expect(logs.map((l) => [l.source, l.output])).toEqual([
      ['provisioner_daemon', expect.stringContaining(`Provisioner ${provisioner.id} acquired the job`)],
      ['provisioner', 'recording start'],
      ['provisioner_daemon', 'Build succeeded'],
    ]);
  });

  it('when a job becomes pending › an idle daemon claims it at once; other job changes run no claim', async () => {
    // Counts the daemon's claim queries, sent and answered.
    let claims = 0;
    let claimsAnswered = 0;
    const pool = new Proxy(db.pool, {
      get(target, property) {
        if (property === 'query') {
          return (...args: Parameters<Pool['query']>) => {
            // The daemon runs its statements by name (src/shared/postgres.ts, prepared).
            const isClaim = (args[0] as { name?: string }).name === 'provisioner.claim';
            if (!isClaim) return (target.query as (...a: unknown[]) => unknown)(...args);
            claims++;
            return (target.query as (...a: unknown[]) => Promise<unknown>)(...args).finally(
              () => void claimsAnswered++,
            );
          };
        }
        const value: unknown = Reflect.get(target, property);
        return typeof value === 'function' ? (value as (...a: unknown[]) => unknown).bind(target) : value;
      },
    });
    const hub = await startHub();
    const workspaceId = await createWorkspace(db.pool, fixture);
    // A job a dead daemon was running; it is handed back below.
    const handedBack = await insertBuild(db.pool, fixture, workspaceId);
    const handedBackChanges: string[] = [];
    hub.on(topics.provisionerJob(handedBack.jobId), () => handedBackChanges.push('change'));
    await db.pool.query(`UPDATE provisioner_jobs SET started_at = now(), worker_id = $2 WHERE id = $1`, [
      handedBack.jobId,
      randomUUID(),
    ]);
    // Notifications come in order: once the update's is in, the insert's "pending" one has gone by too, and
    // cannot reach the daemon late as a wake (under load it did, and made a second claim).
    await expect.poll(() => handedBackChanges.length, POLL).toBeGreaterThanOrEqual(1);
    const executor = new RecordingExecutor();
    await startProvisioner({ executor, pool: pool as Pool, hub });
    // The start-up claim finds nothing.
    await expect.poll(() => claimsAnswered, POLL).toBe(1);

    // Jobs going running, canceling and completed give no work: the daemon stays quiet.
    const otherId = randomUUID();
    const seen: string[] = [];
    hub.on(topics.provisionerJob(otherId), () => seen.push('change'));
    await db.pool.query(`INSERT INTO provisioner_jobs (id, started_at) VALUES ($1, now())`, [otherId]);
    await db.pool.query(`UPDATE provisioner_jobs SET canceled_at = now() WHERE id = $1`, [otherId]);
    await db.pool.query(`UPDATE provisioner_jobs SET completed_at = now() WHERE id = $1`, [otherId]);
    await expect.poll(() => seen.length, POLL).toBe(3);
    expect(claims).toBe(1);

    // A job handed back to pending is claimed at once (the poll is a minute away).
    await db.pool.query(`UPDATE provisioner_jobs SET started_at = NULL, worker_id = NULL WHERE id = $1`, [
      handedBack.jobId,
    ]);
    expect(await waitForCompletion(db.pool, handedBack.jobId, 5_000)).toMatchObject({
      job_status: 'succeeded',
    });
    // And so is a new one.
    const fresh = await insertBuild(db.pool, fixture, workspaceId);
    expect(await waitForCompletion(db.pool, fresh.jobId, 5_000)).toMatchObject({ job_status: 'succeeded' });
    expect(executor.runs).toEqual([handedBack.jobId, fresh.jobId]);
  });

  it('when the executor passes the build details › they match the build and its parameters', async () => {
    const seen: unknown[] = [];
    const executor = new RecordingExecutor();
    const run = executor.run.bind(executor);
    executor.run = (job, ctx) => {
      seen.push(job);
      return run(job, ctx);
    };
    await startProvisioner({ executor });
    const workspaceId = await createWorkspace(db.pool, fixture, 'my-ws');
    const build = await insertBuild(db.pool, fixture, workspaceId, {
      transition: 'start',
      parameters: { region: 'eu', 'cpu count': '4' },
    });
    await waitForCompletion(db.pool, build.jobId);

    expect(seen).toEqual([
      {
        jobId: build.jobId,
        buildId: build.buildId,
        workspaceId,
        workspaceName: 'my-ws',
        ownerId: fixture.userId,
        templateVersionId: fixture.versionId,
        buildNumber: 1,
        transition: 'start',
        parameters: { region: 'eu', 'cpu count': '4' },
      },
    ]);
  });

  it('when the executor throws › the job fails with its message and no resources', async () => {
    const executor = new RecordingExecutor({ fail: 'terraform apply failed', agents: ['main'] });
    await startProvisioner({ executor });
    const build = await insertBuild(db.pool, fixture, await createWorkspace(db.pool, fixture));

    const job = await waitForCompletion(db.pool, build.jobId);

    expect(job).toMatchObject({ job_status: 'failed', error: 'terraform apply failed' });
    expect(await countResources(db.pool, build.jobId)).toBe(0);
    const logs = await getLogs(db.pool, build.jobId);
    expect(logs.at(-1)).toMatchObject({ level: 'error', output: 'Build failed: terraform apply failed' });
  });

  it('when the results cannot be recorded › the job fails and no resource is left behind', async () => {
    // Postgres text cannot hold NUL, so inserting this agent fails inside the completing transaction.
    const executor = new RecordingExecutor({ agents: ['main', 'bad\0name'] });
    await startProvisioner({ executor });
    const build = await insertBuild(db.pool, fixture, await createWorkspace(db.pool, fixture));

    const job = await waitForCompletion(db.pool, build.jobId);

    expect(job.job_status).toBe('failed');
    expect(job.error).toMatch(/^could not record the build's results: /);
    expect(await countResources(db.pool, build.jobId)).toBe(0);
  });

  it('when a run resolves but nothing is committed › afterCommit is still called, with no agents', async () => {
    const executor = new RecordingExecutor();
    const started: string[] = [];
    let releaseLate: () => void = () => {};
    executor.run = async (job) => {
      started.push(job.jobId);
      const mode = job.parameters.mode;
      if (mode === 'canceled as it finished') {
        await db.pool.query(`UPDATE provisioner_jobs SET canceled_at = now() WHERE id = $1`, [job.jobId]);
      } else if (mode === 'taken over as it finished') {
        await db.pool.query(`UPDATE provisioner_jobs SET completed_at = now(), error = $2 WHERE id = $1`, [
          job.jobId,
          STALE_JOB_ERROR,
        ]);
      } else if (mode === 'resolves after its abort') {
        // Ignores the signal: resolves only when the test says so, long after the cancellation.
        await new Promise<void>((resolve) => (releaseLate = resolve));
      }
      // Postgres text cannot hold NUL: these results cannot be written.
      return { agents: mode === 'unrecordable' ? ['main', 'bad\0name'] : ['main'] };
    };
    const provisioner = await startProvisioner({ executor });
    const workspaceId = await createWorkspace(db.pool, fixture);
    const run = async (mode: string) => {
      const build = await insertBuild(db.pool, fixture, workspaceId, { parameters: { mode } });
      if (mode === 'resolves after its abort') {
        await expect.poll(() => started, POLL).toContain(build.jobId);
        await db.pool.query(`UPDATE provisioner_jobs SET canceled_at = now() WHERE id = $1`, [build.jobId]);
      }
      const { job_status } = await waitForCompletion(db.pool, build.jobId);
      if (mode === 'resolves after its abort') releaseLate();
      const calls = await vi.waitFor(() => {
        const found = executor.afterCommits.filter(([jobId]) => jobId === build.jobId);
        expect(found, 'afterCommit').not.toEqual([]);
        return found;
      }, POLL);
      return { job_status, afterCommits: calls.map(([, agents]) => agents) };
    };

    expect(await run('committed')).toEqual({ job_status: 'succeeded', afterCommits: [['main']] });
    expect(await run('unrecordable')).toEqual({ job_status: 'failed', afterCommits: [[]] });
    expect(await run('canceled as it finished')).toEqual({ job_status: 'canceled', afterCommits: [[]] });
    expect(await run('taken over as it finished')).toEqual({ job_status: 'failed', afterCommits: [[]] });
    expect(await run('resolves after its abort')).toEqual({ job_status: 'canceled', afterCommits: [[]] });
    // Exactly once per run: with no run left, none can call it again.
    await expect.poll(() => provisioner.runningJobs, POLL).toBe(0);
    expect(executor.afterCommits).toHaveLength(5);
  });

  it('when a stop build succeeds › no resource or agents are written', async () => {
    const executor = new RecordingExecutor({ agents: ['main'] });
    await startProvisioner({ executor });
    const build = await insertBuild(db.pool, fixture, await createWorkspace(db.pool, fixture), {
      transition: 'stop',
    });

    expect(await waitForCompletion(db.pool, build.jobId)).toMatchObject({ job_status: 'succeeded' });
    expect(await countResources(db.pool, build.jobId)).toBe(0);
  });

  it('when three daemons share one database › each of 30 jobs runs exactly once, within each concurrency', async () => {
    const concurrency = 3;
    const runsPerJob = new Map<string, number>();
    const executors: RecordingExecutor[] = [];
    const ids: string[] = [];
    for (let i = 0; i < 3; i++) {
      // Each daemon has its own pool and LISTEN connection, as separate processes would.
      const pool: Pool = createPool(db.url, { max: concurrency + 3 });
      cleanups.push(() => pool.end());
      const executor = new RecordingExecutor({
        delayMs: () => Math.floor(Math.random() * 30),
        agents: ['main'],
      });
      const run = executor.run.bind(executor);
      executor.run = (job, ctx) => {
        runsPerJob.set(job.jobId, (runsPerJob.get(job.jobId) ?? 0) + 1);
        return run(job, ctx);
      };
      executors.push(executor);
      const provisioner = await startProvisioner({ executor, pool, concurrency });
      ids.push(provisioner.id);
    }

    const workspaces = await Promise.all(Array.from({ length: 10 }, () => createWorkspace(db.pool, fixture)));
    const jobIds: string[] = [];
    for (let round = 0; round < 3; round++) {
      for (const workspaceId of workspaces)
        jobIds.push((await insertBuild(db.pool, fixture, workspaceId)).jobId);
    }

    const jobs = await Promise.all(jobIds.map((id) => waitForCompletion(db.pool, id, 20_000)));

    expect(jobs.map((j) => j.job_status)).toEqual(jobIds.map(() => 'succeeded'));
    expect(jobIds.map((id) => runsPerJob.get(id))).toEqual(jobIds.map(() => 1));
    expect(runsPerJob.size).toBe(30);
    for (const job of jobs) expect(ids).toContain(job.worker_id);
    for (const executor of executors) expect(executor.maxRunning).toBeLessThanOrEqual(concurrency);
    // Exactly one resource with one agent per job: completion ran once too.
    const { rows } = await db.pool.query<{ n: number }>(
      `SELECT count(*)::int AS n FROM workspace_agents a JOIN workspace_resources r ON r.id = a.resource_id
       WHERE r.job_id = ANY($1::uuid[])`,
      [jobIds],
    );
    expect(rows[0]!.n).toBe(30);
  });

  it('when more jobs are pending than its concurrency › runs at most that many at once', async () => {
    const executor = new RecordingExecutor({ hold: true });
    const provisioner = await startProvisioner({ executor, concurrency: 2 });
    const workspaceId = await createWorkspace(db.pool, fixture);
    const builds = [];
    for (let i = 0; i < 4; i++) builds.push(await insertBuild(db.pool, fixture, workspaceId));

    await executor.whenStarted(builds[0]!.jobId);
    await executor.whenStarted(builds[1]!.jobId);
    expect((await getJob(db.pool, builds[2]!.jobId)).job_status).toBe('pending');
    expect(provisioner.runningJobs).toBe(2);

    // A freed slot claims the next job, oldest first.
    executor.release(builds[0]!.jobId);
    await executor.whenStarted(builds[2]!.jobId);
    for (const b of builds.slice(1)) {
      await executor.whenStarted(b.jobId);
      executor.release(b.jobId);
    }
    for (const b of builds) expect((await waitForCompletion(db.pool, b.jobId)).job_status).toBe('succeeded');
    expect(executor.runs).toEqual(builds.map((b) => b.jobId));
    expect(executor.maxRunning).toBe(2);
  });

  it('when a running job is canceled › the executor is aborted and the job completes as canceled', async () => {
    const executor = new RecordingExecutor({ hold: true, agents: ['main'] });
    await startProvisioner({ executor });
    const build = await insertBuild(db.pool, fixture, await createWorkspace(db.pool, fixture));
    await executor.whenStarted(build.jobId);

    await db.pool.query(`UPDATE provisioner_jobs SET canceled_at = now() WHERE id = $1`, [build.jobId]);
    const job = await waitForCompletion(db.pool, build.jobId);

    expect(job).toMatchObject({ job_status: 'canceled', error: null });
    expect(executor.aborted).toEqual([build.jobId]);
    expect(await countResources(db.pool, build.jobId)).toBe(0);
    expect((await getLogs(db.pool, build.jobId)).at(-1)).toMatchObject({ output: 'Job canceled' });
  });

  it("when its job's notification says running › the daemon checks nothing; any other status is checked", async () => {
    const counting = new CountingPool(db.pool);
    const hub = await startHub();
    const executor = new RecordingExecutor({ hold: true });
    await startProvisioner({ executor, pool: counting.pool, hub });
    const build = await insertBuild(db.pool, fixture, await createWorkspace(db.pool, fixture));
    await executor.whenStarted(build.jobId);
    // What the daemon's own claim sends (which may still be on its way too), and what a cancellation
    // sends, marked as the test's. The daemon subscribed first, so its listener has run once the test's has.
    const seen: unknown[] = [];
    hub.on(topics.provisionerJob(build.jobId), (payload) => {
      const { job_status, sent_by } = payload as { job_status?: string; sent_by?: string };
      if (sent_by === 'test') seen.push(job_status);
    });
    const notify = (status: string) =>
      db.pool.query(
        `SELECT pg_notify('provisioner_job_changed',
                          json_build_object('id', $1::uuid, 'job_status', $2::text, 'sent_by', 'test')::text)`,
        [build.jobId, status],
      );

    // Notifications arrive in order: once the test's first is in, any earlier one (the job's insert, when a
    // claim beat its 'pending' to the hub) has been handled and counted.
    await notify('running');
    await expect.poll(() => seen, POLL).toEqual(['running']);
    const checks = counting.count('provisioner.check_job');
    await notify('running');
    await expect.poll(() => seen, POLL).toEqual(['running', 'running']);
    expect(counting.count('provisioner.check_job')).toBe(checks);
    await notify('canceling');
    await expect.poll(() => seen, POLL).toEqual(['running', 'running', 'canceling']);
    expect(counting.count('provisioner.check_job')).toBe(checks + 1);

    // The check found the job running and its own: it goes on.
    executor.release(build.jobId);
    expect(await waitForCompletion(db.pool, build.jobId)).toMatchObject({ job_status: 'succeeded' });
    expect(executor.aborted).toEqual([]);
  });

  it('when a start build runs › its logs take one INSERT before the end, its completion one statement', async () => {
    const counting = new CountingPool(db.pool);
    const executor = new RecordingExecutor({ agents: ['main'] });
    const provisioner = await startProvisioner({ executor, pool: counting.pool });
    const build = await insertBuild(db.pool, fixture, await createWorkspace(db.pool, fixture));

    await waitForCompletion(db.pool, build.jobId);
    await expect.poll(() => provisioner.runningJobs, POLL).toBe(0);

    // The first line and the executor's went out at once; the last commits with the job's end.
    expect(counting.count('provisioner.insert_logs')).toBe(1);
    expect(counting.count('provisioner.complete')).toBe(1);
    expect((await getLogs(db.pool, build.jobId)).map((l) => l.output)).toEqual([
      expect.stringContaining('acquired the job'),
      'recording start',
      'Build succeeded',
    ]);
    expect((await getAgents(db.pool, build.jobId)).map((a) => a.name)).toEqual(['main']);
  });

  it.each([
    ['start', 'off'],
    ['stop', 'off'],
    ['delete', 'as before'],
  ] as const)(
    'when a %s build is claimed › the claim commits with synchronous_commit %s',
    async (transition, expected) => {
      await insertBuild(db.pool, fixture, await createWorkspace(db.pool, fixture), { transition });
      const client = await db.pool.connect();
      try {
        const show = () => synchronousCommit(client);
        const before = await show();
        // The claim inside a transaction the test keeps open (and rolls back), to look at its settings.
        await client.query('BEGIN');
        const { rows } = await client.query(CLAIM.text, [randomUUID(), []]);

        expect(rows).toHaveLength(1);
        expect(await show()).toBe(expected === 'off' ? 'off' : before);
        expect(before).not.toBe('off');
        await client.query('ROLLBACK');
        expect(await show()).toBe(before);
      } finally {
        client.release();
      }
    },
  );

  it('when a job is canceled between its claim and the subscription › its first log write aborts it', async () => {
    // The cancellation commits right after the claim, and its notification reaches nobody: the per-job
    // topics are not passed on, and the heartbeat is a minute away.
    const counting = new CountingPool(db.pool, async (name, rows) => {
      if (name !== 'provisioner.claim' || rows.length === 0) return;
      await db.pool.query(`UPDATE provisioner_jobs SET canceled_at = now() WHERE id = $1`, [rows[0]!.job_id]);
    });
    const hub = await startHub();
    const deaf: ProvisionerOptions['hub'] = {
      on: (topic, listener) => (topic === PENDING_JOB_TOPIC ? hub.on(topic, listener) : () => {}),
    };
    const executor = new RecordingExecutor({ hold: true, agents: ['main'] });
    await startProvisioner({
      executor,
      pool: counting.pool,
      hub: deaf,
      heartbeatMs: 60_000,
      staleAfterMs: 180_000,
    });
    const build = await insertBuild(db.pool, fixture, await createWorkspace(db.pool, fixture));

    const job = await waitForCompletion(db.pool, build.jobId);

    expect(job).toMatchObject({ job_status: 'canceled', error: null });
    expect(executor.aborted).toEqual([build.jobId]);
    expect(counting.count('provisioner.check_job')).toBe(0);
    expect(await countResources(db.pool, build.jobId)).toBe(0);
    expect((await getLogs(db.pool, build.jobId)).at(-1)).toMatchObject({ output: 'Job canceled' });
  });

  it('when a job is canceled while pending › it completes as canceled without running', async () => {
    const workspaceId = await createWorkspace(db.pool, fixture);
    const canceled = await insertBuild(db.pool, fixture, workspaceId, { canceled: true });
    const executor = new RecordingExecutor();
    await startProvisioner({ executor, pollIntervalMs: 100 });
    // A later job still runs: the canceled one does not block the queue.
    const next = await insertBuild(db.pool, fixture, workspaceId);

    const job = await waitForCompletion(db.pool, canceled.jobId);
    await waitForCompletion(db.pool, next.jobId);

    expect(job).toMatchObject({ job_status: 'canceled', error: null, started_at: null });
    expect(executor.runs).toEqual([next.jobId]);
    expect(await getLogs(db.pool, canceled.jobId)).toEqual([
      expect.objectContaining({ output: 'Job canceled before it started' }),
    ]);
  });

  const FAST_REAPING = { pollIntervalMs: 100, heartbeatMs: 100, staleAfterMs: 1_000 };

  /** Makes the job look claimed by a daemon that stopped heart-beating an hour ago. */
  async function abandon(jobId: string, reruns = 0): Promise<string> {
    const deadDaemon = randomUUID();
    await db.pool.query(
      `UPDATE provisioner_jobs SET started_at = now() - interval '1 hour', updated_at = now() - interval '1 hour',
       worker_id = $2, claims = claims + 1, claim_id = gen_random_uuid(), reruns = $3 WHERE id = $1`,
      [jobId, deadDaemon, reruns],
    );
    return deadDaemon;
  }

  it('when a running start build belongs to a dead daemon › it is handed back, counted, and run again', async () => {
    const workspaceId = await createWorkspace(db.pool, fixture);
    const build = await insertBuild(db.pool, fixture, workspaceId);
    const deadDaemon = await abandon(build.jobId);
    const executor = new RecordingExecutor({ agents: ['main'] });
    const provisioner = await startProvisioner({ executor, ...FAST_REAPING });

    const job = await waitForCompletion(db.pool, build.jobId);

    expect(job).toMatchObject({ job_status: 'succeeded', error: null, worker_id: provisioner.id });
    expect(await getClaims(db.pool, build.jobId)).toEqual({ claims: 2, reruns: 1 });
    expect(executor.runs).toEqual([build.jobId]);
    expect((await getAgents(db.pool, build.jobId)).map((a) => a.name)).toEqual(['main']);
    const outputs = (await getLogs(db.pool, build.jobId)).map((l) => l.output);
    expect(outputs[0]).toBe(
      `Provisioner ${deadDaemon} stopped responding; job handed back for re-run 1 of 2 by provisioner ${provisioner.id}`,
    );
    expect(outputs[1]).toContain(`Provisioner ${provisioner.id} acquired the job: start of workspace`);
    expect(outputs[1]).toContain('re-run 1 of 2');
  });

  it.each([
    ['a start build that used its re-runs', 'start', 2, 'job failed after 2 re-run(s)'],
    ['a delete build (not safe to repeat)', 'delete', 0, 'job failed'],
  ] as const)(
    'when the stale job is %s › the reaper fails it as stale',
    async (_what, transition, reruns, said) => {
      const workspaceId = await createWorkspace(db.pool, fixture);
      const build = await insertBuild(db.pool, fixture, workspaceId, { transition });
      const deadDaemon = await abandon(build.jobId, reruns);
      const executor = new RecordingExecutor();
      const provisioner = await startProvisioner({ executor, ...FAST_REAPING });

      const job = await waitForCompletion(db.pool, build.jobId);

      expect(job).toMatchObject({ job_status: 'failed', error: STALE_JOB_ERROR, worker_id: deadDaemon });
      expect(await getClaims(db.pool, build.jobId)).toEqual({ claims: 1, reruns });
      expect(executor.runs).toEqual([]);
      expect((await getLogs(db.pool, build.jobId)).at(-1)?.output).toBe(
        `Provisioner ${deadDaemon} stopped responding; ${said} by provisioner ${provisioner.id}`,
      );
    },
  );

  describe('when daemons are paused (SIGSTOP) mid-build', () => {
    const timing = { pollIntervalMs: 100, heartbeatMs: 100, staleAfterMs: 600, maxReruns: 1 };

    it('re-runs the build once, then fails it as stale; the paused runs write nothing when they wake', async () => {
      const build = await insertBuild(db.pool, fixture, await createWorkspace(db.pool, fixture));
      const first = { db: new PausablePool(db.pool), executor: new RecordingExecutor({ hold: true }) };
      const daemonA = await startProvisioner({ ...timing, pool: first.db.pool, executor: first.executor });
      await first.executor.whenStarted(build.jobId);
      first.db.pause();

      // The only live daemon reaps the stale run and claims the re-run itself.
      const second = { db: new PausablePool(db.pool), executor: new RecordingExecutor({ hold: true }) };
      const daemonB = await startProvisioner({ ...timing, pool: second.db.pool, executor: second.executor });
      await second.executor.whenStarted(build.jobId);
      expect(await getJob(db.pool, build.jobId)).toMatchObject({
        job_status: 'running',
        worker_id: daemonB.id,
      });
      second.db.pause();

      // Its re-run used, the next stale run fails.
      const reaper = new RecordingExecutor();
      const daemonC = await startProvisioner({ ...timing, executor: reaper });
      const failed = await waitForCompletion(db.pool, build.jobId);
      expect(failed).toMatchObject({ job_status: 'failed', error: STALE_JOB_ERROR, worker_id: daemonB.id });
      expect(await getClaims(db.pool, build.jobId)).toEqual({ claims: 2, reruns: 1 });
      expect(reaper.runs).toEqual([]);

      // Both paused daemons finish their builds and wake up: nothing of theirs lands.
      const logsBefore = await getLogs(db.pool, build.jobId);
      first.executor.release(build.jobId);
      second.executor.release(build.jobId);
      first.db.resume();
      second.db.resume();
      await vi.waitFor(() => {
        expect(daemonA.runningJobs).toBe(0); // the woken daemons dropped their runs
        expect(daemonB.runningJobs).toBe(0);
      }, POLL);
      expect(await getJob(db.pool, build.jobId)).toMatchObject({
        job_status: 'failed',
        error: STALE_JOB_ERROR,
      });
      expect(await countResources(db.pool, build.jobId)).toBe(0);
      expect(await getLogs(db.pool, build.jobId)).toEqual(logsBefore);
      expect(logsBefore.map((l) => l.output)).toEqual([
        expect.stringContaining(`Provisioner ${daemonA.id} acquired the job: start of workspace`),
        'recording start',
        `Provisioner ${daemonA.id} stopped responding; job handed back for re-run 1 of 1 by provisioner ${daemonB.id}`,
        expect.stringContaining(`Provisioner ${daemonB.id} acquired the job`),
        'recording start',
        `Provisioner ${daemonB.id} stopped responding; job failed after 1 re-run(s) by provisioner ${daemonC.id}`,
      ]);
    });

    it("refuses the paused daemon's late completion: the re-run's success, resource and agents stand", async () => {
      const build = await insertBuild(db.pool, fixture, await createWorkspace(db.pool, fixture));
      const paused = new PausablePool(db.pool);
      const stalled = new RecordingExecutor({ hold: true, agents: ['stale-agent'] });
      const daemonA = await startProvisioner({ ...timing, pool: paused.pool, executor: stalled });
      await stalled.whenStarted(build.jobId);
      paused.pause();
      // Its build completes while it is frozen; the outcome waits in its queries.
      stalled.release(build.jobId);

      const live = new RecordingExecutor({ agents: ['main'] });
      const daemonB = await startProvisioner({ ...timing, executor: live });
      const done = await waitForCompletion(db.pool, build.jobId);
      expect(done).toMatchObject({ job_status: 'succeeded', worker_id: daemonB.id });
      const logsBefore = await getLogs(db.pool, build.jobId);

      paused.resume();
      await vi.waitFor(() => {
        expect(daemonA.runningJobs).toBe(0); // the woken daemon dropped its run
        expect(stalled.afterCommits).not.toEqual([]);
      }, POLL);
      expect(stalled.afterCommits).toEqual([[build.jobId, []]]);
      expect(await getJob(db.pool, build.jobId)).toMatchObject({
        job_status: 'succeeded',
        worker_id: daemonB.id,
      });
      expect(await getClaims(db.pool, build.jobId)).toEqual({ claims: 2, reruns: 1 });
      expect(await countResources(db.pool, build.jobId)).toBe(1);
      expect((await getAgents(db.pool, build.jobId)).map((a) => a.name)).toEqual(['main']);
      expect(await getLogs(db.pool, build.jobId)).toEqual(logsBefore);
      // One success in the log: the re-run's, never the woken daemon's as well.
      expect(logsBefore.filter((l) => l.output === 'Build succeeded')).toHaveLength(1);
    });
  });

  it("when a Postgres crash loses a claim and the daemon claims the job again › the old run's late write is refused", async () => {
    const build = await insertBuild(db.pool, fixture, await createWorkspace(db.pool, fixture));
    // The first run's first log batch is still on its way to Postgres when the crash's loss is found.
    const slow = new PausablePool(db.pool);
    slow.pause('provisioner.insert_logs');
    const executor = new RecordingExecutor({ hold: true });
    const provisioner = await startProvisioner({ pool: slow.pool, executor });
    await executor.whenStarted(build.jobId);

    // The unflushed claim lost: the job is pending again as before it, its claim counter rolled back.
    await db.pool.query(
      `UPDATE provisioner_jobs SET started_at = NULL, updated_at = created_at, worker_id = NULL,
       claims = claims - 1, claim_id = NULL WHERE id = $1`,
      [build.jobId],
    );
    // The daemon drops its first run and claims the job again: the same daemon, the same claim count.
    await vi.waitFor(() => expect(executor.runs).toEqual([build.jobId, build.jobId]), POLL);
    expect(await getClaims(db.pool, build.jobId)).toEqual({ claims: 1, reruns: 0 });
    expect(executor.aborted).toEqual([build.jobId]);

    // Both runs' first batches reach Postgres now; only the second run's is its claim's.
    slow.resume();
    executor.release(build.jobId);
    const job = await waitForCompletion(db.pool, build.jobId);

    expect(job).toMatchObject({ job_status: 'succeeded', worker_id: provisioner.id });
    expect((await getLogs(db.pool, build.jobId)).map((l) => l.output)).toEqual([
      expect.stringContaining(`Provisioner ${provisioner.id} acquired the job: start of workspace`),
      'recording start',
      'Build succeeded',
    ]);
  });

  it('when a daemon is alive › its heartbeat keeps other daemons from reaping its long job', async () => {
    const executor = new RecordingExecutor({ hold: true });
    const options = { pollIntervalMs: 100, heartbeatMs: 100, staleAfterMs: 600 };
    await startProvisioner({ executor, ...options });
    const build = await insertBuild(db.pool, fixture, await createWorkspace(db.pool, fixture));
    await executor.whenStarted(build.jobId);
    await startProvisioner({ executor: new RecordingExecutor(), ...options });

    // Several stale periods pass while the job runs. Nothing to wait for: time passes so that a missing
    // heartbeat would let the second daemon's reaper (every 100 ms) take the job.
    await new Promise((resolve) => setTimeout(resolve, 2_000));
    expect((await getJob(db.pool, build.jobId)).job_status).toBe('running');

    executor.release(build.jobId);
    expect((await waitForCompletion(db.pool, build.jobId)).job_status).toBe('succeeded');
  });

  it('when its own heartbeat lags past the stale bound › the daemon does not reap and re-run its own build', async () => {
    // Heartbeats reach the database late (a slow query, a loaded host); every other query is prompt.
    const heartbeatLagMs = 1_500;
    const lagging = new Proxy(db.pool, {
      get(target, property) {
        if (property === 'query') {
          return async (...args: Parameters<Pool['query']>) => {
            if ((args[0] as { name?: string }).name === 'provisioner.heartbeat') {
              await new Promise((resolve) => setTimeout(resolve, heartbeatLagMs));
            }
            return (target.query as (...a: unknown[]) => unknown)(...args);
          };
        }
        const value: unknown = Reflect.get(target, property);
        return typeof value === 'function' ? (value as (...a: unknown[]) => unknown).bind(target) : value;
      },
    });
    const executor = new RecordingExecutor({ hold: true });
    await startProvisioner({ executor, pool: lagging as Pool, ...FAST_REAPING, staleAfterMs: 600 });
    const build = await insertBuild(db.pool, fixture, await createWorkspace(db.pool, fixture));
    await executor.whenStarted(build.jobId);

    // Several reaper ticks pass while the job's updated_at is older than the bound. Nothing to wait for:
    // time passes so that a daemon reaping its own job would do it.
    await new Promise((resolve) => setTimeout(resolve, 2_000));
    expect(await getJob(db.pool, build.jobId)).toMatchObject({ job_status: 'running' });
    expect(await getClaims(db.pool, build.jobId)).toEqual({ claims: 1, reruns: 0 });

    executor.release(build.jobId);
    expect((await waitForCompletion(db.pool, build.jobId)).job_status).toBe('succeeded');
    expect(executor.runs).toEqual([build.jobId]);
  });

  it('when the reaper settles a job its daemon still runs › the daemon aborts it and writes nothing', async () => {
    const executor = new RecordingExecutor({ hold: true, agents: ['main'] });
    const provisioner = await startProvisioner({ executor, heartbeatMs: 100, staleAfterMs: 60_000 });
    const build = await insertBuild(db.pool, fixture, await createWorkspace(db.pool, fixture));
    await executor.whenStarted(build.jobId);

    // What another daemon's reaper does after a long network partition of this one.
    await db.pool.query(`UPDATE provisioner_jobs SET completed_at = now(), error = $2 WHERE id = $1`, [
      build.jobId,
      STALE_JOB_ERROR,
    ]);
    await expect.poll(() => executor.aborted, POLL).not.toEqual([]);
    await expect.poll(() => provisioner.runningJobs, POLL).toBe(0); // the daemon is idle

    expect(await getJob(db.pool, build.jobId)).toMatchObject({
      job_status: 'failed',
      error: STALE_JOB_ERROR,
    });
    expect(await countResources(db.pool, build.jobId)).toBe(0);
  });

  it('when stopped with a running job › lets it finish within the grace period', async () => {
    const executor = new RecordingExecutor({ hold: true, agents: ['main'] });
    const provisioner = await startProvisioner({ executor });
    const workspaceId = await createWorkspace(db.pool, fixture);
    const build = await insertBuild(db.pool, fixture, workspaceId);
    await executor.whenStarted(build.jobId);

    let stopped = false;
    const stopping = provisioner.stop({ graceMs: 10_000 }).then(() => (stopped = true));
    // No new claims once stopping. Nothing to wait for: time passes so that a claim of `later`, or a stop
    // that did not wait for the running job, would show.
    const later = await insertBuild(db.pool, fixture, workspaceId);
    await new Promise((resolve) => setTimeout(resolve, 200));
    expect(stopped).toBe(false);

    executor.release(build.jobId);
    await stopping;

    expect(await getJob(db.pool, build.jobId)).toMatchObject({ job_status: 'succeeded' });
    expect(await getAgents(db.pool, build.jobId)).toHaveLength(1);
    expect(await getJob(db.pool, later.jobId)).toMatchObject({ job_status: 'pending', worker_id: null });
    expect(executor.runs).toEqual([build.jobId]);
  });

  it('when stopped and the grace period runs out › aborts the job and fails it as shut down', async () => {
    const executor = new RecordingExecutor({ hold: true });
    const provisioner = await startProvisioner({ executor });
    const build = await insertBuild(db.pool, fixture, await createWorkspace(db.pool, fixture));
    await executor.whenStarted(build.jobId);

    await provisioner.stop({ graceMs: 100 });

    expect(executor.aborted).toEqual([build.jobId]);
    expect(await getJob(db.pool, build.jobId)).toMatchObject({
      job_status: 'failed',
      error: 'provisioner shut down',
    });
    expect(provisioner.runningJobs).toBe(0);
  });

  it('when a job has no build › it is failed instead of left running', async () => {
    const executor = new RecordingExecutor();
    await startProvisioner({ executor });
    const { rows } = await db.pool.query<{ id: string }>(
      `INSERT INTO provisioner_jobs DEFAULT VALUES RETURNING id`,
    );

    const job = await waitForCompletion(db.pool, rows[0]!.id);

    expect(job).toMatchObject({
      job_status: 'failed',
      error: 'workspace build not found for provisioner job',
    });
    expect(executor.runs).toEqual([]);
  });

  it('when the executor logs many lines without awaiting › all are stored in order before completion', async () => {
    const executor = new RecordingExecutor();
    executor.run = async (_job, ctx) => {
      for (let i = 0; i < 500; i++) void ctx.log('info', `line ${i}`, 'Test');
      return {};
    };
    await startProvisioner({ executor });
    const build = await insertBuild(db.pool, fixture, await createWorkspace(db.pool, fixture));

    await waitForStatus(db.pool, build.jobId, 'succeeded');
    const lines = (await getLogs(db.pool, build.jobId)).filter((l) => l.source === 'provisioner');

    expect(lines.map((l) => l.output)).toEqual(Array.from({ length: 500 }, (_, i) => `line ${i}`));
  });
});
