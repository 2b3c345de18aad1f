// The producer's metrics on real Redis and Postgres: every enqueue is counted once, as added or as
// deduplicated, by job name, and an announcement that cannot be published is counted too.
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { insertChat } from '../../src/cli/fixtures.js';
import { WorkspaceJobsProducer } from '../../src/producer/producer.js';
import { redisKeys } from '../../src/shared/keys.js';
import { createMetrics, type Metrics } from '../../src/shared/metrics.js';
import { WorkerHarness, bounded } from '../helpers/worker-harness.js';

/** A counter's value for these labels (0 when never counted). */
async function value(metrics: Metrics, name: string, labels: Record<string, string> = {}): Promise<number> {
  const metric = await metrics.registry.getSingleMetric(name)!.get();
  const match = metric.values.find(
    (v) => JSON.stringify(Object.entries(v.labels).sort()) === JSON.stringify(Object.entries(labels).sort()),
  );
  return match?.value ?? 0;
}

describe('WorkspaceJobsProducer metrics', () => {
  // No worker: the jobs stay waiting, so every further enqueue for the same thing is deduplicated.
  let h: WorkerHarness;
  let metrics: Metrics;
  let producer: WorkspaceJobsProducer;

  beforeEach(async () => {
    h = await WorkerHarness.create();
    metrics = createMetrics({ defaultMetrics: false });
    producer = new WorkspaceJobsProducer({
      connection: h.redis,
      pool: h.db.pool,
      prefix: h.prefix,
      metrics,
    });
    h.onClose(() => bounded(producer.close(), 5_000, 'producer.close'));
  });

  afterEach(async () => {
    await h.close();
  });

  it('counts a dedup burst as one enqueue per workspace and the rest as deduplicated, by job name', async () => {
    const owner = await h.seedOwner();
    const workspaces = await Promise.all([1, 2, 3].map(() => h.seedStoppedWorkspace(owner)));
    const calls = workspaces.flatMap((ws) =>
      Array.from({ length: 40 }, () => producer.startWorkspace({ chatId: ws.chatId, ownerId: ws.ownerId })),
    );
    const results = await Promise.all(calls);
    expect(results.filter((r) => !r.deduplicated)).toHaveLength(3);

    const { chatId } = await insertChat(h.db.pool, { ownerId: owner.ownerId });
    const create = { chatId, ownerId: owner.ownerId, templateId: owner.templateId };
    await Promise.all([producer.createWorkspace(create), producer.createWorkspace(create)]);

    expect(await value(metrics, 'wsjobs_enqueued_total', { name: 'start-workspace' })).toBe(3);
    expect(await value(metrics, 'wsjobs_deduplicated_enqueues_total', { name: 'start-workspace' })).toBe(117);
    expect(await value(metrics, 'wsjobs_enqueued_total', { name: 'create-workspace' })).toBe(1);
    expect(await value(metrics, 'wsjobs_deduplicated_enqueues_total', { name: 'create-workspace' })).toBe(1);
    expect(await h.queue.getJobCounts('waiting')).toEqual({ waiting: 4 });
    expect(await value(metrics, 'wsjobs_event_publish_failures_total', { type: 'progress' })).toBe(0);
    // The registry's text, as a /metrics endpoint serves it.
    const text = await metrics.registry.metrics();
    expect(text).toContain('wsjobs_enqueued_total{name="start-workspace"} 3');
    expect(text).toContain('wsjobs_deduplicated_enqueues_total{name="start-workspace"} 117');
  });

  it('counts an enqueue whose queued event could not be published; the job is enqueued all the same', async () => {
    const ws = await h.seedStoppedWorkspace();
    // The chat's replay stream key holds a string: the XADD of the queued event fails (WRONGTYPE).
    await h.redis.set(redisKeys(h.prefix).chatLog(ws.chatId), 'not a stream');
    const { jobId, deduplicated } = await producer.startWorkspace({ chatId: ws.chatId, ownerId: ws.ownerId });
    expect(deduplicated).toBe(false);
    expect(await h.queue.getJobState(jobId)).toBe('waiting');
    expect(await value(metrics, 'wsjobs_event_publish_failures_total', { type: 'progress' })).toBe(1);
    expect(await value(metrics, 'wsjobs_enqueued_total', { name: 'start-workspace' })).toBe(1);
  });
});
