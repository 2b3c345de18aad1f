// Producer enqueue throughput: WorkspaceJobsProducer.startWorkspace for distinct workspaces (sequential and
// 64 in flight, with the workspace given and looked up from the chat), then a dedup storm: 10,000 calls at
// once for 10 workspaces must leave exactly 10 jobs.
import { randomUUID } from 'node:crypto';
import { Queue } from 'bullmq';
import { insertUser } from '../src/cli/fixtures.js';
import { JOB_NAMES, jobOptions } from '../src/producer/job-options.js';
import { DEFAULT_JOB_ATTEMPTS } from '../src/shared/config.js';
import { WorkspaceJobsProducer } from '../src/producer/producer.js';
import { QUEUE_NAME } from '../src/shared/contract.js';
import { dedupeIds } from '../src/jobs/registry.js';
import { createLogger } from '../src/shared/logger.js';
import type { Pool } from '../src/shared/postgres.js';
import {
  benchDatabase,
  benchRedis,
  check,
  memory,
  report,
  runBench,
  stats,
  timed,
  uniquePrefix,
  type Cleanup,
} from './lib.js';

const SEQUENTIAL = 2_000;
const CONCURRENT = 5_000;
const IN_FLIGHT = 64;
const LOOKUP = 1_000;
const STORM_CALLS = 10_000;
const STORM_WORKSPACES = 10;

const log = createLogger('silent');

interface Start {
  chatId: string;
  ownerId: string;
  workspaceId?: string;
}

function producerOn(cleanup: Cleanup, label: string, pool: Pool) {
  const prefix = uniquePrefix(label);
  const redis = benchRedis(cleanup, prefix);
  const producer = new WorkspaceJobsProducer({ connection: redis, pool, prefix, log });
  cleanup.add(`producer ${prefix}`, () => producer.close());
  const queue = new Queue(QUEUE_NAME, { connection: redis, prefix });
  cleanup.add(`queue ${prefix}`, () => queue.close());
  return { prefix, redis, producer, queue };
}

/** Jobs in the queue, in any state. */
async function jobCount(queue: Queue): Promise<number> {
  const counts = await queue.getJobCounts();
  return Object.values(counts).reduce((a, b) => a + b, 0);
}

await runBench('enqueue', 60_000, async (cleanup) => {
  const db = await benchDatabase(cleanup, 5);
  const { producer, queue } = producerOn(cleanup, 'enqueue', db.pool);

  // Chats with workspaces for the lookup variant, in bulk.
  const { userId } = await insertUser(db.pool);
  const { rows: template } = await db.pool.query<{ id: string }>(
    `INSERT INTO templates (name) VALUES ('bench-' || gen_random_uuid()) RETURNING id`,
  );
  const { rows: chats } = await db.pool.query<{ chat_id: string }>(
    `WITH ws AS (
       INSERT INTO workspaces (owner_id, template_id, name)
       SELECT $1, $2, 'ws-' || i FROM generate_series(1, $3::int) AS i RETURNING id)
     INSERT INTO chats (owner_id, workspace_id) SELECT $1, id FROM ws RETURNING id AS chat_id`,
    [userId, template[0]!.id, LOOKUP],
  );

  const distinct = (n: number): Start[] =>
    Array.from({ length: n }, () => ({ chatId: randomUUID(), ownerId: userId, workspaceId: randomUUID() }));
  const start = (input: Start) => producer.startWorkspace(input);

  // Warm-up: connections, Lua script loading, JIT.
  await timed(distinct(200), 16, start);
  let expected = 200;

  const seq = await timed(distinct(SEQUENTIAL), 1, start);
  expected += SEQUENTIAL;
  report({
    case: 'startWorkspace sequential, workspaceId given',
    n: SEQUENTIAL,
    opsPerSec: seq.opsPerSec,
    latency: stats(seq.latencies),
  });

  // Baseline: the BullMQ add alone, with the producer's job options (no validation, no queued event).
  const bare = await timed(distinct(SEQUENTIAL), 1, (input) => {
    const jobId = randomUUID();
    return queue.add(
      JOB_NAMES.start,
      input,
      jobOptions({
        jobId,
        deduplicationId: dedupeIds.start(input.workspaceId!),
        attempts: DEFAULT_JOB_ATTEMPTS,
      }),
    );
  });
  expected += SEQUENTIAL;
  report({
    case: 'baseline: bare queue.add sequential, same options',
    n: SEQUENTIAL,
    opsPerSec: bare.opsPerSec,
    latency: stats(bare.latencies),
  });

  const conc = await timed(distinct(CONCURRENT), IN_FLIGHT, start);
  expected += CONCURRENT;
  check(
    conc.results.every((r) => !r.deduplicated),
    'a start of a distinct workspace was deduplicated',
  );
  report({
    case: `startWorkspace ${IN_FLIGHT} in flight, workspaceId given`,
    n: CONCURRENT,
    opsPerSec: conc.opsPerSec,
    latency: stats(conc.latencies),
  });

  const lookups = chats.map(({ chat_id }) => ({ chatId: chat_id, ownerId: userId }));
  const half = LOOKUP / 2;
  const lookSeq = await timed(lookups.slice(0, half), 1, start);
  const lookConc = await timed(lookups.slice(half), IN_FLIGHT, start);
  expected += LOOKUP;
  report({
    case: 'startWorkspace sequential, workspace looked up',
    n: half,
    opsPerSec: lookSeq.opsPerSec,
    latency: stats(lookSeq.latencies),
    notes: 'SELECT from chats, pool of 5',
  });
  report({
    case: `startWorkspace ${IN_FLIGHT} in flight, workspace looked up`,
    n: LOOKUP - half,
    opsPerSec: lookConc.opsPerSec,
    latency: stats(lookConc.latencies),
    notes: 'pool of 5',
  });
  const total = await jobCount(queue);
  check(total === expected, `expected ${expected} jobs in the queue, found ${total}`);

  // Dedup storm on a fresh prefix: 10,000 calls at once for 10 workspaces.
  const storm = producerOn(cleanup, 'storm', db.pool);
  const workspaces = Array.from({ length: STORM_WORKSPACES }, () => ({
    workspaceId: randomUUID(),
    chatId: randomUUID(),
  }));
  const calls: Start[] = Array.from({ length: STORM_CALLS }, (_, i) => ({
    ...workspaces[i % STORM_WORKSPACES]!,
    ownerId: userId,
  }));
  const before = memory(true);
  let peakHeapMb = before.heapMb;
  const sampler = setInterval(() => (peakHeapMb = Math.max(peakHeapMb, memory().heapMb)), 20);
  const burst = await timed(calls, STORM_CALLS, (input) => storm.producer.startWorkspace(input)).finally(() =>
    clearInterval(sampler),
  );
  const after = memory();
  const deduplicated = burst.results.filter((r) => r.deduplicated).length;
  const jobIds = new Set(burst.results.map((r) => r.jobId));
  const stormJobs = await jobCount(storm.queue);
  check(stormJobs === STORM_WORKSPACES, `dedup storm: expected ${STORM_WORKSPACES} jobs, found ${stormJobs}`);
  check(jobIds.size === STORM_WORKSPACES, `dedup storm: ${jobIds.size} distinct job ids returned`);
  check(
    deduplicated === STORM_CALLS - STORM_WORKSPACES,
    `dedup storm: ${deduplicated} calls reported deduplicated`,
  );
  for (const { workspaceId } of workspaces) {
    const ids = new Set(burst.results.filter((r) => r.workspaceId === workspaceId).map((r) => r.jobId));
    check(ids.size === 1, `dedup storm: workspace ${workspaceId} got ${ids.size} job ids`);
  }
  report({
    case: `dedup storm: ${STORM_CALLS} at once, ${STORM_WORKSPACES} workspaces`,
    n: STORM_CALLS,
    opsPerSec: burst.opsPerSec,
    latency: stats(burst.latencies),
    notes:
      `${((deduplicated / STORM_CALLS) * 100).toFixed(1)}% deduplicated, ${stormJobs} jobs, ` +
      `heap peak +${(peakHeapMb - before.heapMb).toFixed(0)} MiB, RSS +${(after.rssMb - before.rssMb).toFixed(0)} MiB`,
  });
});
