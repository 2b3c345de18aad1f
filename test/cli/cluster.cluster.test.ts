// The CLI on a real Redis Cluster (the `cluster` test project): REDIS_CLUSTER=true passes the start-up
// check when one seed answers, and a worker process runs a job there; with no seed answering it stops
// with one line naming the cluster.
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { preflight, ServiceUnavailableError } from '../../src/shared/preflight.js';
import { killAll } from '../helpers/cli-process.js';
import { TEST_REDIS_ENV } from '../helpers/redis.js';
import { WAIT_MS, WorkerHarness } from '../helpers/worker-harness.js';

/** A loopback seed nothing listens on. */
const DEAD_SEED = 'redis://127.0.0.1:1';

describe('the CLI on a Redis Cluster', () => {
  let h: WorkerHarness;

  beforeEach(async () => {
    h = await WorkerHarness.create();
  });

  afterEach(async () => {
    await killAll();
    await h.close();
  });

  it('passes the start-up check when one seed answers, and fails naming the cluster when none does', async () => {
    const config = h.config({ REDIS_URL: `${DEAD_SEED},${TEST_REDIS_ENV.REDIS_URL}` });
    await expect(
      preflight(config, { redis: true, lockNodes: true }, { timeoutMs: 2_000 }),
    ).resolves.toBeUndefined();

    const dead = h.config({ REDIS_URL: `${DEAD_SEED},redis://127.0.0.1:2` });
    const failed = preflight(dead, { redis: true }, { timeoutMs: 500, retryDelayMs: 100 });
    await expect(failed).rejects.toBeInstanceOf(ServiceUnavailableError);
    await expect(failed).rejects.toThrow(
      /^Redis Cluster at redis:\/\/127\.0\.0\.1:1\/?,redis:\/\/127\.0\.0\.1:2\/? is unreachable .*set REDIS_URL$/,
    );
  });

  it('a worker process started with REDIS_CLUSTER=true runs a start to its result and stops cleanly', async () => {
    const worker = h.cliProcess('worker');
    await worker.waitForLog('worker started', (line) => line.msg === 'worker started');
    const ws = await h.seedStoppedWorkspace();

    const { jobId } = await h.producer.startWorkspace({ chatId: ws.chatId, ownerId: ws.ownerId });
    const result = await h.producer.waitForResult(jobId, { timeoutMs: WAIT_MS });

    expect(result).toMatchObject({
      kind: 'start-workspace',
      ok: true,
      started: true,
      workspace_name: ws.workspaceName,
    });
    expect(await worker.stop('SIGTERM')).toEqual({ code: 0, signal: null });
  });
});
