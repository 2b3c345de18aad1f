// A build's estimate from its template's history (PgWorkspaceStore.getBuildEstimate), on real Postgres: the
// builds of one template version and transition share its read, a full history is kept for a while (at a
// hundred starts a second the read was most of the worker's Postgres work), a young one is read anew.
import { afterEach, beforeEach, describe, expect, it, vi } from 'vitest';
import { insertBuild, insertTemplate, insertUser, insertWorkspace } from '../../src/cli/fixtures.js';
import { ESTIMATE_MAX_AGE_MS, PgWorkspaceStore } from '../../src/worker/pg-store.js';
import type { Build } from '../../src/worker/ports.js';
import { createTestDatabase, type TestDatabase } from '../helpers/database.js';
import { CountingPool } from '../provisioner/helpers.js';

const READ = 'worker.get_build_estimate';

describe('build estimate', () => {
  let db: TestDatabase;
  let counting: CountingPool;
  let store: PgWorkspaceStore;
  let userId: string;
  let templateId: string;
  let versionId: string;

  beforeEach(async () => {
    db = await createTestDatabase();
    counting = new CountingPool(db.pool);
    store = new PgWorkspaceStore(counting.pool);
    ({ userId } = await insertUser(db.pool));
    const template = await insertTemplate(db.pool, { versions: [{}] });
    templateId = template.templateId;
    versionId = template.versionIds[0]!;
  });

  afterEach(async () => {
    vi.useRealTimers();
    await db.drop();
  });

  /** `count` builds of the template's version, each on a workspace of its own, read back as the store has them. */
  const builds = async (
    count: number,
    transition: 'start' | 'stop',
    status: 'pending' | 'running' | 'succeeded',
  ): Promise<Build[]> => {
    const made: Build[] = [];
    for (let i = 0; i < count; i++) {
      const { workspaceId } = await insertWorkspace(db.pool, { ownerId: userId, templateId });
      const { buildId } = await insertBuild(db.pool, {
        workspaceId,
        templateVersionId: versionId,
        transition,
        status,
        initiatorId: userId,
      });
      made.push((await store.getBuild(buildId))!);
    }
    return made;
  };

  it('when builds of a version ask together › one read per transition serves them, and a young history is read anew', async () => {
    await builds(1, 'start', 'succeeded');
    await builds(1, 'stop', 'succeeded');
    const pending = [...(await builds(3, 'start', 'pending')), ...(await builds(3, 'stop', 'pending'))];
    const estimates = await Promise.all(pending.map((b) => store.getBuildEstimate(b)));
    // One per transition: a stop's estimate comes from the template's stops.
    expect(counting.count(READ)).toBe(2);
    expect(estimates.map((e) => e?.samples)).toEqual([1, 1, 1, 1, 1, 1]);
    // Asked once those are done: a history of fewer than 20 builds may have grown since, so it is read anew.
    await store.getBuildEstimate(pending[0]!);
    expect(counting.count(READ)).toBe(3);
  });

  it('when the history is full › it is kept for ESTIMATE_MAX_AGE_MS, then read again', async () => {
    vi.useFakeTimers({ toFake: ['Date'] });
    await builds(20, 'start', 'succeeded');
    const [pending] = await builds(1, 'start', 'pending');
    expect((await store.getBuildEstimate(pending!))?.samples).toBe(20);
    // A 21st build: the kept medians of 20 do not see it until they are read again.
    await builds(1, 'start', 'succeeded');
    vi.setSystemTime(Date.now() + ESTIMATE_MAX_AGE_MS - 1);
    await store.getBuildEstimate(pending!);
    expect(counting.count(READ)).toBe(1);
    vi.setSystemTime(Date.now() + 2);
    await store.getBuildEstimate(pending!);
    expect(counting.count(READ)).toBe(2);
  });

  it("when the build runs › its estimate is measured from its claim, a pending one's from now", async () => {
    await builds(1, 'start', 'succeeded');
    await db.pool.query(
      `UPDATE provisioner_jobs SET started_at = now() - interval '10 seconds', completed_at = now() - interval '7 seconds'`,
    );
    const [running] = await builds(1, 'start', 'running');
    await db.pool.query(
      `UPDATE provisioner_jobs SET started_at = now() - interval '1 second' WHERE id = $1`,
      [running!.jobId],
    );
    const claimed = (await store.getBuild(running!.id))!;
    const estimate = (await store.getBuildEstimate(claimed))!;
    expect(estimate.build_ms).toBe(3_000);
    expect(Date.parse(estimate.done_at)).toBe(claimed.jobStartedAt!.getTime() + 3_000);

    const before = Date.now();
    const [pending] = await builds(1, 'start', 'pending');
    const fromNow = Date.parse((await store.getBuildEstimate(pending!))!.done_at) - 3_000;
    expect(fromNow).toBeGreaterThanOrEqual(before);
    expect(fromNow).toBeLessThanOrEqual(Date.now());
  });
});
