// The product on a real Redis Cluster (the `cluster` test project): the producer's enqueue and dedupe, a
// start-workspace job through a WorkspaceWorker and the provisioner daemon to its one result, with every
// key of the hash-tagged prefix in one slot; and a cancel of the running job, broadcast on the cluster.
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { hashTag } from '../../src/shared/config.js';
import { redisKeys } from '../../src/shared/keys.js';
import { Cluster } from '../../src/shared/redis.js';
import { ON_CLUSTER } from '../helpers/redis.js';
import { WAIT_MS, WorkerHarness, stagesOf } from '../helpers/worker-harness.js';

/** Every key under `prefix` on every master, with the node it is on. */
async function keysByNode(cluster: Cluster, prefix: string): Promise<Map<string, string[]>> {
  const found = new Map<string, string[]>();
  for (const node of cluster.nodes('master')) {
    const keys = await node.keys(`${prefix}:*`);
    if (keys.length) found.set(`${node.options.host}:${node.options.port}`, keys);
  }
  return found;
}

describe('on a Redis Cluster', () => {
  let h: WorkerHarness;

  beforeEach(async () => {
    h = await WorkerHarness.create();
  });

  afterEach(async () => {
    await h.close();
  });

  it('runs on a Cluster connection and a hash-tagged prefix', () => {
    expect(ON_CLUSTER).toBe(true);
    expect(h.redis).toBeInstanceOf(Cluster);
    expect(hashTag(h.prefix)).toBeDefined();
    expect(h.config()).toMatchObject({ redisCluster: true, lockRedisCluster: true });
  });

  it('enqueues a start, dedupes a second one while it waits, and announces both', async () => {
    const ws = await h.seedStoppedWorkspace();
    const first = await h.producer.startWorkspace({ chatId: ws.chatId, ownerId: ws.ownerId });
    const second = await h.producer.startWorkspace({ chatId: ws.chatId, ownerId: ws.ownerId });
    expect(first).toMatchObject({ workspaceId: ws.workspaceId, deduplicated: false });
    expect(second).toEqual({
      jobId: first.jobId,
      workspaceId: ws.workspaceId,
      deduplicated: true,
      differs: [],
    });
    expect(await h.queue.getJobState(first.jobId)).toBe('waiting');
    expect(await h.queue.getJobCounts('waiting')).toEqual({ waiting: 1 });
    const events = await h.events(ws.chatId);
    expect(events.map((e) => [e.stage, e.job.id])).toEqual([
      ['queued', first.jobId],
      ['deduplicated', first.jobId],
    ]);
  });

  it('takes a start through a worker and the provisioner daemon to one result, every key in one slot', async () => {
    await h.startProvisionerDaemon();
    await h.startWorker();
    const ws = await h.seedStoppedWorkspace();

    const { jobId } = await h.producer.startWorkspace({ chatId: ws.chatId, ownerId: ws.ownerId });
    const result = await h.producer.waitForResult(jobId, { timeoutMs: WAIT_MS });
    const [build] = await h.newStartBuilds(ws.workspaceId);
    expect(result).toEqual({
      kind: 'start-workspace',
      ok: true,
      started: true,
      workspace_name: ws.workspaceName,
      build_id: build!.id,
    });
    expect((await h.waitForState(jobId, ['completed'])).returnvalue).toEqual(result);

    const events = await h.jobEvents(ws.chatId, jobId);
    expect(events.filter((e) => e.type === 'result')).toHaveLength(1);
    expect(events.at(-1)).toMatchObject({ type: 'result', stage: 'completed', data: result });
    for (const stage of ['queued', 'lock_acquired', 'checking', 'build_succeeded', 'agent_ready'])
      expect(stagesOf(events)).toContain(stage);
    // The chat lock was taken and given back on the cluster.
    expect(await h.redis.exists(redisKeys(h.prefix).chatLock(ws.chatId))).toBe(0);

    // BullMQ's keys, the replay stream and the result marker: all on one master, in one slot.
    const byNode = await keysByNode(h.redis as Cluster, h.prefix);
    expect(byNode.size).toBe(1);
    const keys = [...byNode.values()][0]!;
    expect(keys).toEqual(
      expect.arrayContaining([
        redisKeys(h.prefix).chatLog(ws.chatId),
        redisKeys(h.prefix).resultMarker(jobId),
      ]),
    );
    expect(keys.some((key) => key.startsWith(`${h.prefix}:workspaces:`))).toBe(true);
    const slots = new Set(await Promise.all(keys.map((key) => h.redis.cluster('KEYSLOT', key))));
    expect(slots.size).toBe(1);
  });

  it("cancels a running job through the cluster's pub/sub: its worker ends it canceled", async () => {
    h.provisioner.pause();
    await h.startWorker();
    const ws = await h.seedStoppedWorkspace();
    const { jobId } = await h.producer.startWorkspace({ chatId: ws.chatId, ownerId: ws.ownerId });
    await h.waitForEvent(ws.chatId, 'build_queued', (e) => e.job.id === jobId);

    expect(await h.producer.cancel(jobId)).toEqual({ jobId, outcome: 'cancel_requested' });

    const result = await h.producer.waitForResult(jobId, { timeoutMs: WAIT_MS });
    expect(result).toMatchObject({ ok: false, code: 'canceled' });
    const [build] = await h.newStartBuilds(ws.workspaceId);
    const { rows } = await h.db.pool.query<{ job_status: string }>(
      'SELECT j.job_status FROM workspace_builds b JOIN provisioner_jobs j ON j.id = b.job_id WHERE b.id = $1',
      [build!.id],
    );
    expect(rows).toEqual([{ job_status: 'canceled' }]);
  });
});
