// `workspace-jobs enqueue stop --chat ID [--wait]` as a real process, against an in-process worker and the
// real provisioner daemon (simulated builds): exit 0 with the result JSON last, 1 on a failed result, 2 for a
// flag a stop does not take.
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import type { JobResult, WorkspaceJobEvent } from '../../../src/shared/contract.js';
import { killAll, runCli } from '../../helpers/cli-process.js';
import { TEST_REDIS_ENV } from '../../helpers/redis.js';
import { WAIT_MS, WorkerHarness } from '../../helpers/worker-harness.js';

const RUN_MS = 40_000;

describe('workspace-jobs enqueue stop', () => {
  let h: WorkerHarness;

  beforeEach(async () => {
    h = await WorkerHarness.create({ provisioner: { paused: true } });
    await h.startWorker();
    await h.startProvisionerDaemon();
  });

  afterEach(async () => {
    try {
      await killAll();
    } finally {
      await h.close();
    }
  });

  const env = () => ({
    ...TEST_REDIS_ENV,
    DATABASE_URL: h.db.url,
    QUEUE_PREFIX: h.prefix,
    LOG_LEVEL: 'warn',
  });

  /** stdout of `--wait --json`: the enqueued job, its events, the result last. */
  function parseWaitOutput(stdout: string[]) {
    const lines = stdout.map((line) => JSON.parse(line) as Record<string, unknown>);
    return {
      enqueued: lines[0] as { jobId: string; deduplicated: boolean },
      events: lines.slice(1, -1) as unknown as WorkspaceJobEvent[],
      result: lines.at(-1) as unknown as JobResult,
    };
  }

  it('--wait on a running workspace: the stop build, exit 0, the result JSON last', async () => {
    const ws = await h.seedStoppedWorkspace();
    const { jobId } = await h.producer.startWorkspace({ chatId: ws.chatId, ownerId: ws.ownerId });
    expect(await h.producer.waitForResult(jobId, { timeoutMs: WAIT_MS })).toMatchObject({ ok: true });

    const run = await runCli(['enqueue', 'stop', '--chat', ws.chatId, '--wait', '--json'], env(), RUN_MS);

    expect(run.exit, JSON.stringify(run)).toEqual({ code: 0, signal: null });
    const out = parseWaitOutput(run.stdout);
    const { rows } = await h.db.pool.query<{ build_id: string }>('SELECT build_id FROM chats WHERE id = $1', [
      ws.chatId,
    ]);
    expect(out.result).toEqual({
      kind: 'stop-workspace',
      ok: true,
      stopped: true,
      workspace_name: ws.workspaceName,
      build_id: rows[0]!.build_id,
    });
    expect(out.events.every((e) => e.job.id === out.enqueued.jobId && e.job.name === 'stop-workspace')).toBe(
      true,
    );
    expect(out.events.find((e) => e.stage === 'build_succeeded')).toMatchObject({
      data: { build_id: rows[0]!.build_id, transition: 'stop' },
    });
    expect(out.events.at(-1)).toMatchObject({ type: 'result', stage: 'completed' });
  });

  it('--wait on a deleted workspace: exit 1 with the failure result last', async () => {
    const ws = await h.seedStoppedWorkspace();
    await h.db.pool.query('UPDATE workspaces SET deleted = true WHERE id = $1', [ws.workspaceId]);

    const run = await runCli(['enqueue', 'stop', '--chat', ws.chatId, '--wait', '--json'], env(), RUN_MS);

    expect(run.exit, JSON.stringify(run)).toEqual({ code: 1, signal: null });
    expect(parseWaitOutput(run.stdout).result).toMatchObject({
      kind: 'stop-workspace',
      ok: false,
      code: 'workspace_deleted',
    });
  });

  it('a flag a stop does not take (--param) is a usage error: exit 2, nothing enqueued', async () => {
    const ws = await h.seedStoppedWorkspace();

    const run = await runCli(
      ['enqueue', 'stop', '--chat', ws.chatId, '--param', 'size=large'],
      env(),
      RUN_MS,
    );

    expect(run.exit, JSON.stringify(run)).toEqual({ code: 2, signal: null });
    expect(run.stderr.join('\n')).toContain('--param');
    expect(Object.values(await h.queue.getJobCounts()).reduce((a, b) => a + b, 0)).toBe(0);
  });
});
