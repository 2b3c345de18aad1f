// The chat backend's side in a process of its own, for a benchmark that measures a worker's process
// (waiters.ts): in production the producer runs in the chat backend, so the garbage and CPU of its enqueues
// are not the worker's. Not a benchmark itself: waiters.ts forks this file and sends it one order.
import { fork } from 'node:child_process';
import { once } from 'node:events';
import { fileURLToPath } from 'node:url';
import { WorkspaceJobsProducer } from '../src/producer/producer.js';
import type { StartWorkspaceInput } from '../src/jobs/start-workspace/schemas.js';
import { createLogger } from '../src/shared/logger.js';
import { createPool } from '../src/shared/postgres.js';
import { closeRedis, createRedis } from '../src/shared/redis.js';
import { BenchFailure, mapLimit, type Cleanup } from './lib.js';

interface StartOrder {
  redisUrl: string;
  databaseUrl: string;
  prefix: string;
  inputs: StartWorkspaceInput[];
  /** Starts in flight at once. */
  inFlight: number;
}

interface Enqueued {
  jobId: string;
  deduplicated: boolean;
}

type Answer = { enqueued: Enqueued[] } | { failed: string };

/**
 * Starts every input through a producer in a child process; resolves with each one's job id, in order. The
 * child is killed in `cleanup` if it is still running (the run interrupted during the enqueue), before the
 * keys it writes are removed.
 */
export function startWorkspacesElsewhere(
  order: StartOrder,
  timeoutMs: number,
  cleanup: Cleanup,
): Promise<Enqueued[]> {
  const child = fork(fileURLToPath(import.meta.url), [], { execArgv: ['--import', 'tsx'] });
  const exited = once(child, 'exit');
  cleanup.add('producer process', async () => {
    if (child.exitCode !== null || child.signalCode !== null) return;
    child.kill('SIGKILL');
    await exited;
  });
  return new Promise<Enqueued[]>((resolve, reject) => {
    const timer = setTimeout(() => {
      child.kill('SIGKILL');
      reject(new BenchFailure(`the producer process did not enqueue within ${timeoutMs / 1000} s`));
    }, timeoutMs);
    child.once('message', (answer: Answer) => {
      clearTimeout(timer);
      if ('failed' in answer) reject(new BenchFailure(`the producer process failed: ${answer.failed}`));
      else resolve(answer.enqueued);
    });
    // After an answer this rejects nothing: the promise is settled.
    child.once('exit', (code, signal) => {
      clearTimeout(timer);
      reject(new BenchFailure(`the producer process exited (${signal ?? code}) before it answered`));
    });
    child.send(order);
  });
}

async function carryOut(order: StartOrder): Promise<Answer> {
  const log = createLogger('silent');
  const redis = createRedis(order.redisUrl, { name: 'workspace-jobs-producer', log });
  const pool = createPool(order.databaseUrl, { max: 5, applicationName: 'workspace-jobs-producer', log });
  const producer = new WorkspaceJobsProducer({ connection: redis, pool, prefix: order.prefix, log });
  try {
    const enqueued = await mapLimit(order.inputs, order.inFlight, (input) => producer.startWorkspace(input));
    return { enqueued: enqueued.map(({ jobId, deduplicated }) => ({ jobId, deduplicated })) };
  } catch (error) {
    return { failed: error instanceof Error ? error.message : String(error) };
  } finally {
    await producer.close();
    await pool.end();
    await closeRedis(redis);
  }
}

if (process.argv[1] === fileURLToPath(import.meta.url)) {
  // The parent gone (killed, or its run interrupted): nothing is left to answer.
  const orphaned = () => process.exit(1);
  process.once('disconnect', orphaned);
  process.once('message', (order: StartOrder) => {
    void carryOut(order).then((answer) =>
      process.send!(answer, () => {
        process.off('disconnect', orphaned);
        process.disconnect();
      }),
    );
  });
}
