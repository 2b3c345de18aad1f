// A failed build's provisioner_jobs.error_code in the job's result, through the real provisioner daemon with
// either executor: a quota failure gets Coder's quota shape (PR #24956), any other code rides on a plain
// build_failed result.
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { insertChat } from '../../src/cli/fixtures.js';
import type { JobFailure, JobName, JobResult, QuotaReport } from '../../src/shared/contract.js';
import { WAIT_MS, WorkerHarness, type SeededWorkspace } from '../helpers/worker-harness.js';

/** The result of a build refused for quota, as Coder's chat tools shape it, with our code and flag. */
function quotaFailure(kind: JobName, error: string, buildId: string, quota?: QuotaReport): JobFailure {
  return {
    kind,
    ok: false,
    error,
    code: 'build_failed',
    is_error: false,
    build_id: buildId,
    error_code: 'INSUFFICIENT_QUOTA',
    title: 'Workspace quota reached',
    message: `The workspace build was refused because it would exceed your workspace quota${
      quota ? ` (${quota.credits_consumed} of ${quota.budget} credits already in use).` : '.'
    }`,
    next_steps: [
      'Stop or delete a workspace you no longer need to free quota credits, then try again.',
      'Ask an administrator to raise your quota budget.',
    ],
    ...(quota ? { quota } : {}),
  };
}

describe('a build that fails with an error code', () => {
  let h: WorkerHarness;

  beforeEach(async () => {
    h = await WorkerHarness.create();
  });

  afterEach(async () => {
    await h.close();
  });

  /** Starts the workspace through the producer; returns the result, its start build and the result event. */
  async function start(ws: SeededWorkspace) {
    const { jobId } = await h.producer.startWorkspace({ chatId: ws.chatId, ownerId: ws.ownerId });
    const result: JobResult = await h.producer.waitForResult(jobId, { timeoutMs: WAIT_MS });
    const [build] = await h.newStartBuilds(ws.workspaceId);
    const events = await h.jobEvents(ws.chatId, jobId);
    return { jobId, result, buildId: build!.id, resultEvent: events.at(-1) };
  }

  /** Starts a stopped workspace with a build command that prints `lines`, then `stderr` on stderr, and fails. */
  async function startWithFailingCommand(lines: string[], stderr: string) {
    const command = [...lines.map((line) => `echo '${line}'`), `echo '${stderr}' >&2`, 'exit 1'].join('; ');
    await h.startProvisionerDaemon({ PROVISIONER_EXECUTOR: 'command', PROVISIONER_COMMAND: command });
    await h.startWorker();
    return start(await h.seedStoppedWorkspace());
  }

  it('when the simulator refuses a start for quota › the quota shape, unflagged, and the job completes', async () => {
    await h.startProvisionerDaemon({ SIM_QUOTA_BUDGET: '1', SIM_WORKSPACE_COST: '1' });
    await h.startWorker();
    const owner = await h.seedOwner();
    const running = await h.seedStoppedWorkspace(owner);
    const refused = await h.seedStoppedWorkspace(owner);
    expect((await start(running)).result).toMatchObject({ started: true });

    const { jobId, result, buildId, resultEvent } = await start(refused);

    expect(result).toEqual(
      quotaFailure('start-workspace', 'workspace start build failed: insufficient quota', buildId, {
        credits_consumed: 1,
        budget: 1,
      }),
    );
    expect(resultEvent).toMatchObject({ type: 'result', stage: 'failed', data: result });
    // An expected failure: the job completes in BullMQ with the result as its return value.
    expect((await h.waitForState(jobId, ['completed'])).returnvalue).toEqual(result);
  });

  it('when the simulator refuses the first build of a create for quota › the create result has the quota shape', async () => {
    await h.startProvisionerDaemon({ SIM_QUOTA_BUDGET: '0' });
    await h.startWorker();
    const { ownerId, templateId } = await h.seedOwner();
    const { chatId } = await insertChat(h.db.pool, { ownerId });

    const { jobId } = await h.producer.createWorkspace({ chatId, ownerId, templateId });
    const result = await h.producer.waitForResult(jobId, { timeoutMs: WAIT_MS });

    const { rows } = await h.db.pool.query<{ id: string }>(
      `SELECT b.id FROM workspace_builds b JOIN workspaces w ON w.id = b.workspace_id WHERE w.owner_id = $1`,
      [ownerId],
    );
    expect(result).toEqual(
      quotaFailure('create-workspace', 'workspace build failed: insufficient quota', rows[0]!.id, {
        credits_consumed: 0,
        budget: 0,
      }),
    );
  });

  it('when a build command reports INSUFFICIENT_QUOTA with its quota › the quota shape with its numbers', async () => {
    const { result, buildId } = await startWithFailingCommand(
      ['wsjobs-error-code: INSUFFICIENT_QUOTA', 'wsjobs-quota: credits_consumed=3 budget=2'],
      'quota exceeded',
    );

    expect(result).toEqual(
      quotaFailure(
        'start-workspace',
        'workspace start build failed: command exited with code 1: quota exceeded',
        buildId,
        {
          credits_consumed: 3,
          budget: 2,
        },
      ),
    );
  });

  it('when a build command reports INSUFFICIENT_QUOTA without a quota › the quota shape without numbers', async () => {
    const { result, buildId } = await startWithFailingCommand(
      ['wsjobs-error-code: INSUFFICIENT_QUOTA'],
      'quota exceeded',
    );

    expect(result).toEqual(
      quotaFailure(
        'start-workspace',
        'workspace start build failed: command exited with code 1: quota exceeded',
        buildId,
      ),
    );
  });

  it('when a build command reports another error code › a plain build_failed result carries it', async () => {
    const { result, buildId } = await startWithFailingCommand(
      ['wsjobs-error-code: REQUIRED_TEMPLATE_VARIABLES', 'wsjobs-quota: credits_consumed=3 budget=2'],
      'variable "region" is required',
    );

    expect(result).toEqual({
      kind: 'start-workspace',
      ok: false,
      error: 'workspace start build failed: command exited with code 1: variable "region" is required',
      code: 'build_failed',
      is_error: false,
      build_id: buildId,
      error_code: 'REQUIRED_TEMPLATE_VARIABLES',
    });
  });
});
