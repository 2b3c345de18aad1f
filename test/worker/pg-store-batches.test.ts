// The worker store's batched reads (src/worker/pg-store.ts over src/shared/read-batcher.ts), on real
// Postgres: reads asked at the same time share one query, and each caller gets what a read of its own would
// have given; nothing is shared with a read asked later.
import { randomUUID } from 'node:crypto';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import {
  insertAgents,
  insertBuild,
  insertTemplate,
  insertUser,
  insertWorkspace,
  type BuildInput,
} from '../../src/cli/fixtures.js';
import { PgWorkspaceStore } from '../../src/worker/pg-store.js';
import { createTestDatabase, type TestDatabase } from '../helpers/database.js';
import { completeJob } from '../helpers/fixtures.js';
import { CountingPool } from '../provisioner/helpers.js';

const BUILDS = 'worker.get_builds';
const AGENTS = 'worker.get_agents';
const AGENTS_OF_LATEST_BUILDS = 'worker.get_agents_of_latest_builds';
const NEWEST_LOGS = 'worker.get_newest_logs_of_builds';

describe('the worker store: reads asked at the same time', () => {
  let db: TestDatabase;
  let base: Omit<BuildInput, 'workspaceId' | 'status'>;
  let templateId: string;
  let ownerId: string;

  beforeAll(async () => {
    db = await createTestDatabase();
    ({ userId: ownerId } = await insertUser(db.pool));
    const template = await insertTemplate(db.pool, { versions: [{}] });
    templateId = template.templateId;
    base = { templateVersionId: template.versionIds[0]!, transition: 'start', initiatorId: ownerId };
  });

  afterAll(async () => {
    await db.drop();
  });

  const workspace = async () => (await insertWorkspace(db.pool, { ownerId, templateId })).workspaceId;
  const build = async (status: BuildInput['status'], agents?: BuildInput['agents']) => {
    const workspaceId = await workspace();
    return { workspaceId, ...(await insertBuild(db.pool, { ...base, workspaceId, status, agents })) };
  };
  const counted = () => {
    const counting = new CountingPool(db.pool);
    return { counting, store: new PgWorkspaceStore(counting.pool) };
  };

  it('when several builds are read at once › each caller gets its own build, from one query', async () => {
    const builds = [await build('pending'), await build('running'), await build('failed')];
    const { counting, store } = counted();

    const together = await Promise.all(builds.map((b) => store.getBuild(b.buildId)));

    expect(counting.count(BUILDS)).toBe(1);
    expect(together.map((b) => [b?.id, b?.jobStatus])).toEqual([
      [builds[0]!.buildId, 'pending'],
      [builds[1]!.buildId, 'running'],
      [builds[2]!.buildId, 'failed'],
    ]);
    const alone = [];
    for (const b of builds) alone.push(await store.getBuild(b.buildId));
    expect(together).toEqual(alone);
    expect(counting.count(BUILDS)).toBe(1 + builds.length);
  });

  it('when a build asked for does not exist › its caller gets null and the others their builds', async () => {
    const existing = await build('succeeded');
    const { counting, store } = counted();

    const [missing, found, again] = await Promise.all([
      store.getBuild(randomUUID()),
      store.getBuild(existing.buildId),
      store.getBuild(existing.buildId),
    ]);

    expect(counting.count(BUILDS)).toBe(1);
    expect(missing).toBeNull();
    expect(found).toMatchObject({ id: existing.buildId, jobStatus: 'succeeded' });
    expect(again).toEqual(found);
  });

  it('when a batch fails › every caller of it is rejected, and the next batch reads again', async () => {
    const existing = await build('pending');
    const { counting, store } = counted();

    const failed = await Promise.allSettled([store.getBuild(existing.buildId), store.getBuild('not-a-uuid')]);

    expect(failed.map((f) => f.status)).toEqual(['rejected', 'rejected']);
    expect(String((failed[0] as PromiseRejectedResult).reason)).toContain(
      'invalid input syntax for type uuid',
    );
    await expect(store.getBuild(existing.buildId)).resolves.toMatchObject({ id: existing.buildId });
    expect(counting.count(BUILDS)).toBe(2);
  });

  it('when more builds are asked at once than a batch holds (500) › they are read in two queries, each caller its own', async () => {
    const existing = await build('running');
    const { counting, store } = counted();
    const absent = Array.from({ length: 500 }, () => randomUUID());

    const answers = await Promise.all([...absent, existing.buildId].map((id) => store.getBuild(id)));

    expect(counting.count(BUILDS)).toBe(2);
    expect(answers.slice(0, 500).every((b) => b === null)).toBe(true);
    expect(answers[500]).toMatchObject({ id: existing.buildId, jobStatus: 'running' });
  });

  it('when a build is read again after a write while an earlier read of it is still on its way › the new read sees the write', async () => {
    const existing = await build('pending');
    // The first read's answer is held back from the store until let go.
    let tellAnswered: () => void = () => {};
    let letGo: () => void = () => {};
    const answered = new Promise<void>((resolve) => (tellAnswered = resolve));
    const released = new Promise<void>((resolve) => (letGo = resolve));
    let first = true;
    const counting = new CountingPool(db.pool, async (name) => {
      if (name !== BUILDS || !first) return;
      first = false;
      tellAnswered();
      await released;
    });
    const store = new PgWorkspaceStore(counting.pool);

    const earlier = store.getBuild(existing.buildId);
    await answered;
    await completeJob(db.pool, existing.jobId);
    const later = store.getBuild(existing.buildId);
    try {
      // Its own query, not the answer on its way.
      await expect.poll(() => counting.count(BUILDS), { timeout: 5_000 }).toBe(2);
    } finally {
      letGo();
    }

    expect((await later)?.jobStatus).toBe('succeeded');
    expect((await earlier)?.jobStatus).toBe('pending');
  });

  it("when several workspaces' agents are read at once › each gets its latest build's agents, from one query", async () => {
    const twoBuilds = await build('succeeded', [{ name: 'old' }]);
    const latest = await insertBuild(db.pool, {
      ...base,
      workspaceId: twoBuilds.workspaceId,
      status: 'succeeded',
      agents: [{ name: 'main' }, { name: 'side', parentName: 'main' }],
    });
    const withoutAgents = await build('succeeded');
    const { counting, store } = counted();

    const [agents, none, missing] = await Promise.all([
      store.getAgentsOfLatestBuild(twoBuilds.workspaceId),
      store.getAgentsOfLatestBuild(withoutAgents.workspaceId),
      store.getAgentsOfLatestBuild(randomUUID()),
    ]);

    expect(counting.count(AGENTS_OF_LATEST_BUILDS)).toBe(1);
    expect(agents.map((a) => a.id).sort()).toEqual([...latest.agentIds].sort());
    expect(agents.find((a) => a.name === 'side')?.parentId).toBe(latest.agentIds[0]);
    expect(none).toEqual([]);
    expect(missing).toEqual([]);
  });

  it('when several agents are read at once › each caller gets its own agent or null, from one query', async () => {
    const built = await build('succeeded', [{ name: 'main', connected: true }, { name: 'other' }]);
    const { counting, store } = counted();

    const [main, other, missing] = await Promise.all([
      store.getAgent(built.agentIds[0]!),
      store.getAgent(built.agentIds[1]!),
      store.getAgent(randomUUID()),
    ]);

    expect(counting.count(AGENTS)).toBe(1);
    expect(main).toMatchObject({ id: built.agentIds[0], name: 'main' });
    expect(main?.lastConnectedAt).toBeInstanceOf(Date);
    expect(other).toMatchObject({ id: built.agentIds[1], name: 'other', lastConnectedAt: null });
    expect(missing).toBeNull();
  });

  it("when several builds' newest log lines are read at once › each gets its own job's lines after its cursor, from one query", async () => {
    const chatty = await build('running');
    const quiet = await build('running');
    const { rows } = await db.pool.query<{ id: string }>(
      `INSERT INTO provisioner_job_logs (job_id, stage, output)
       SELECT $1, 'Applying', 'line ' || n FROM generate_series(1, 5) n ORDER BY n RETURNING id::text`,
      [chatty.jobId],
    );
    const ids = rows.map((r) => r.id);
    const { counting, store } = counted();

    const [newest, afterThird, none] = await Promise.all([
      store.getNewestBuildLogs(chatty.jobId, '0', 2),
      store.getNewestBuildLogs(chatty.jobId, ids[2]!, 20),
      store.getNewestBuildLogs(quiet.jobId, '0', 20),
    ]);

    expect(counting.count(NEWEST_LOGS)).toBe(1);
    expect(newest.lines.map((l) => [l.id, l.output])).toEqual([
      [ids[3], 'line 4'],
      [ids[4], 'line 5'],
    ]);
    expect(newest.total).toBe(5);
    expect(afterThird.lines.map((l) => l.output)).toEqual(['line 4', 'line 5']);
    expect(afterThird.total).toBe(2);
    expect(none).toEqual({ lines: [], total: 0 });
  });

  it('when agents are added to a build between two reads › the second read has them', async () => {
    const built = await build('succeeded');
    const { store } = counted();
    expect(await store.getAgentsOfLatestBuild(built.workspaceId)).toEqual([]);

    const { agentIds } = await insertAgents(db.pool, built.jobId, [{ name: 'main' }]);

    expect((await store.getAgentsOfLatestBuild(built.workspaceId)).map((a) => a.id)).toEqual(agentIds);
  });
});
