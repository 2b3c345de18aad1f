// The stop-workspace job's decision procedure on the real database, playing the provisioner with SQL once
// the job waits on a build (as the start tests do). Coder's stop_workspace tool (PR #24997) is the model:
// wait for a build in flight, read again, stop only what is not stopped, one stop build on the current
// version with the last build's parameters.
import { describe, expect, it } from 'vitest';
import {
  insertBuild,
  insertChat,
  insertTemplate,
  insertUser,
  insertWorkspace,
} from '../../../src/cli/fixtures.js';
import { cancelJob, completeJob } from '../../helpers/fixtures.js';
import { stopWorkspace } from '../../../src/jobs/stop-workspace/stop-workspace.js';
import { topics, type WorkspaceStore } from '../../../src/worker/ports.js';
import {
  awaitBuild,
  buildParameters,
  chatBinding,
  listBuilds,
  rowCounts,
  type StartContext,
  useStartContext,
} from '../../helpers/start-context.js';
import { createWorld, type WorldOptions } from '../../helpers/start-world.js';

describe('stopWorkspace', () => {
  const { db, context } = useStartContext();

  const world = (options?: WorldOptions) => createWorld(db, options);

  /** Plays the provisioner for build `buildNumber` once the job waits on it; with `error`, it fails. */
  async function provision(t: StartContext, workspaceId: string, buildNumber: number, error?: string) {
    const build = await awaitBuild(db, workspaceId, buildNumber);
    await t.waitingOn(topics.provisionerJob(build.job_id));
    await completeJob(db.pool, build.job_id, { error });
    return build;
  }

  it('a running workspace › one stop build on its current version with the last parameters, the chat bound to it', async () => {
    const t = await context();
    // The template requires a newer active version: a stop ignores it (no gate, nothing to resolve).
    const w = await world({
      versions: [[{ name: 'region', defaultValue: 'eu' }], [{ name: 'region', required: true }]],
      requireActiveVersion: true,
      buildParameters: { region: 'us' },
    });

    const running = stopWorkspace(t.ctx, w.payload);
    const build = await provision(t, w.workspaceId, 2);
    const result = await running;

    expect(result).toEqual({
      kind: 'stop-workspace',
      ok: true,
      stopped: true,
      workspace_name: w.workspaceName,
      build_id: build.id,
    });
    expect(build).toMatchObject({
      transition: 'stop',
      template_version_id: w.versionIds[0],
      initiator_id: w.ownerId,
      job_status: 'pending',
    });
    expect(await buildParameters(db, build.id)).toEqual({ region: 'us' });
    expect(await chatBinding(db, w.chatId)).toEqual({
      workspace_id: w.workspaceId,
      build_id: build.id,
      agent_id: null,
    });
    expect(t.stages()).toEqual(['checking', 'build_queued', 'build_succeeded']);
    expect(t.events[0]!.data).toEqual({ transition: 'stop' });
    const buildData = { build_id: build.id, build_number: 2, transition: 'stop' };
    // A queued build also says where it stands among pending builds: it is the only one.
    expect(t.events[1]!.data).toEqual({ ...buildData, position: 1, pending: 1 });
    expect(t.events[2]!.data).toEqual(buildData);
  });

  it('an already stopped workspace › no build', async () => {
    const t = await context();
    const w = await world({ then: { transition: 'stop', status: 'succeeded' } });
    const before = await rowCounts(db);
    const binding = await chatBinding(db, w.chatId);

    const result = await stopWorkspace(t.ctx, w.payload);

    expect(result).toEqual({
      kind: 'stop-workspace',
      ok: true,
      stopped: true,
      workspace_name: w.workspaceName,
      no_build: true,
    });
    expect(await rowCounts(db)).toEqual(before);
    expect(await chatBinding(db, w.chatId)).toEqual(binding);
  });

  it('a workspace that never had a build › no build', async () => {
    const t = await context();
    const user = await insertUser(db.pool);
    const template = await insertTemplate(db.pool, { versions: [{ parameters: [] }] });
    const ws = await insertWorkspace(db.pool, { ownerId: user.userId, templateId: template.templateId });
    const { chatId } = await insertChat(db.pool, { ownerId: user.userId, workspaceId: ws.workspaceId });

    const result = await stopWorkspace(t.ctx, { chatId, ownerId: user.userId, workspaceId: ws.workspaceId });

    expect(result).toEqual({
      kind: 'stop-workspace',
      ok: true,
      stopped: true,
      workspace_name: ws.name,
      no_build: true,
    });
    expect(await listBuilds(db, ws.workspaceId)).toEqual([]);
  });

  it('a failed start › a stop build all the same (it cleans up what the start left)', async () => {
    const t = await context();
    const w = await world({ then: { transition: 'start', status: 'failed' } });

    const running = stopWorkspace(t.ctx, w.payload);
    const build = await provision(t, w.workspaceId, 3);

    expect(await running).toEqual({
      kind: 'stop-workspace',
      ok: true,
      stopped: true,
      workspace_name: w.workspaceName,
      build_id: build.id,
    });
    expect(build.transition).toBe('stop');
  });

  it('a start build in flight › waits for it, bound to it, then stops the workspace it started', async () => {
    const t = await context();
    const w = await world({ then: { transition: 'start', status: 'running' } });
    const inFlight = w.latest;

    const running = stopWorkspace(t.ctx, w.payload);
    await t.waitingOn(topics.provisionerJob(inFlight.jobId));
    expect(t.stages()).toContain('waiting_for_existing_build');
    expect((await chatBinding(db, w.chatId)).build_id).toBe(inFlight.buildId);
    // Nothing is stopped while the start still runs.
    expect(await listBuilds(db, w.workspaceId)).toHaveLength(2);
    await completeJob(db.pool, inFlight.jobId);
    const build = await provision(t, w.workspaceId, 3);

    expect(await running).toEqual({
      kind: 'stop-workspace',
      ok: true,
      stopped: true,
      workspace_name: w.workspaceName,
      build_id: build.id,
    });
    expect(build.transition).toBe('stop');
    expect((await chatBinding(db, w.chatId)).build_id).toBe(build.id);
    const waiting = t.events.find((e) => e.stage === 'waiting_for_existing_build')!;
    expect(waiting.data).toEqual({ build_id: inFlight.buildId, build_number: 2, transition: 'start' });
  });

  it('a stop build in flight › waits for it, and the fresh row says stopped: no second build', async () => {
    const t = await context();
    const w = await world({ then: { transition: 'stop', status: 'pending' } });

    const running = stopWorkspace(t.ctx, w.payload);
    await t.waitingOn(topics.provisionerJob(w.latest.jobId));
    await completeJob(db.pool, w.latest.jobId);

    expect(await running).toEqual({
      kind: 'stop-workspace',
      ok: true,
      stopped: true,
      workspace_name: w.workspaceName,
      no_build: true,
    });
    expect(await listBuilds(db, w.workspaceId)).toHaveLength(2);
  });

  it('a build being canceled › waits for the cancellation, then stops', async () => {
    const t = await context();
    const w = await world({ then: { transition: 'start', status: 'canceling' } });

    const running = stopWorkspace(t.ctx, w.payload);
    await t.waitingOn(topics.provisionerJob(w.latest.jobId));
    // Coder's builder counts canceling as active: no stop build yet.
    expect(await listBuilds(db, w.workspaceId)).toHaveLength(2);
    await cancelJob(db.pool, w.latest.jobId);
    const build = await provision(t, w.workspaceId, 3);

    expect(await running).toEqual({
      kind: 'stop-workspace',
      ok: true,
      stopped: true,
      workspace_name: w.workspaceName,
      build_id: build.id,
    });
    expect(build.transition).toBe('stop');
  });

  it('a build in flight that fails › read again, then stopped', async () => {
    const t = await context();
    const w = await world({ then: { transition: 'start', status: 'running' } });

    const running = stopWorkspace(t.ctx, w.payload);
    await t.waitingOn(topics.provisionerJob(w.latest.jobId));
    await completeJob(db.pool, w.latest.jobId, { error: 'terraform apply failed' });
    const build = await provision(t, w.workspaceId, 3);

    expect(await running).toEqual({
      kind: 'stop-workspace',
      ok: true,
      stopped: true,
      workspace_name: w.workspaceName,
      build_id: build.id,
    });
  });

  it('a build in flight that outlasts the build timeout › build_timeout, no stop build', async () => {
    const t = await context({ timeouts: { buildTimeoutMs: 300 } });
    const w = await world({ then: { transition: 'start', status: 'running' } });

    const result = await stopWorkspace(t.ctx, w.payload);

    expect(result).toMatchObject({ code: 'build_timeout', is_error: false, build_id: w.latest.buildId });
    expect(result).toHaveProperty(
      'error',
      expect.stringMatching(/^waiting for in-progress build: timed out/),
    );
    expect(await listBuilds(db, w.workspaceId)).toHaveLength(2);
  });

  it('the workspace deleted while its build was waited for › workspace_deleted', async () => {
    const t = await context();
    const w = await world({ then: { transition: 'delete', status: 'running' } });

    const running = stopWorkspace(t.ctx, w.payload);
    await t.waitingOn(topics.provisionerJob(w.latest.jobId));
    await db.pool.query('UPDATE workspaces SET deleted = true WHERE id = $1', [w.workspaceId]);
    await completeJob(db.pool, w.latest.jobId);

    expect(await running).toEqual({
      kind: 'stop-workspace',
      ok: false,
      error: 'workspace was deleted; use create_workspace to make a new one',
      code: 'workspace_deleted',
      is_error: true,
    });
    expect(await listBuilds(db, w.workspaceId)).toHaveLength(2);
  });

  it('a deleted workspace › workspace_deleted, nothing written', async () => {
    const t = await context();
    const w = await world({ then: { transition: 'delete', status: 'succeeded' }, deleted: true });
    const before = await rowCounts(db);

    expect(await stopWorkspace(t.ctx, w.payload)).toEqual({
      kind: 'stop-workspace',
      ok: false,
      error: 'workspace was deleted; use create_workspace to make a new one',
      code: 'workspace_deleted',
      is_error: true,
    });
    expect(await rowCounts(db)).toEqual(before);
  });

  it('the stop build fails › build_failed with its build id', async () => {
    const t = await context();
    const w = await world();

    const running = stopWorkspace(t.ctx, w.payload);
    const build = await provision(t, w.workspaceId, 2, 'terraform destroy failed');

    expect(await running).toEqual({
      kind: 'stop-workspace',
      ok: false,
      error: 'workspace stop build failed: terraform destroy failed',
      code: 'build_failed',
      is_error: false,
      build_id: build.id,
    });
  });

  it('the stop build fails for quota › build_failed with the quota shape', async () => {
    const t = await context();
    const w = await world();

    const running = stopWorkspace(t.ctx, w.payload);
    const build = await awaitBuild(db, w.workspaceId, 2);
    await t.waitingOn(topics.provisionerJob(build.job_id));
    await completeJob(db.pool, build.job_id, {
      error: 'insufficient quota',
      errorCode: 'INSUFFICIENT_QUOTA',
      quota: { creditsConsumed: 4, budget: 3 },
    });

    expect(await running).toMatchObject({
      error: 'workspace stop build failed: insufficient quota',
      code: 'build_failed',
      is_error: false,
      build_id: build.id,
      error_code: 'INSUFFICIENT_QUOTA',
      title: 'Workspace quota reached',
      quota: { credits_consumed: 4, budget: 3 },
    });
  });

  it('a build inserted between the look and the transaction › build_active, no second build', async () => {
    // Something that bypasses the chat lock (another chat, the UI) starts a build just before ours.
    let rival: Awaited<ReturnType<typeof insertBuild>> | undefined;
    const w = await world();
    const t = await context({
      wrapStore: (store) => {
        const transaction: WorkspaceStore['transaction'] = async (fn) => {
          rival ??= await insertBuild(db.pool, {
            workspaceId: w.workspaceId,
            templateVersionId: w.versionIds[0]!,
            transition: 'start',
            status: 'pending',
            initiatorId: w.ownerId,
          });
          return store.transaction(fn);
        };
        // Everything else is the real store's (its prototype).
        return Object.assign(Object.create(store) as WorkspaceStore, { transaction });
      },
    });

    const result = await stopWorkspace(t.ctx, w.payload);

    expect(result).toEqual({
      kind: 'stop-workspace',
      ok: false,
      error: 'A workspace build is already active.',
      code: 'build_active',
      is_error: false,
      detail: 'A workspace build is already active.',
      template_id: w.templateId,
      build_id: rival!.buildId,
    });
    expect(await listBuilds(db, w.workspaceId)).toHaveLength(2);
  });

  it('a re-run after a crash whose stop build already finished › reports that build, not no_build', async () => {
    const t = await context();
    const w = await world({ then: { transition: 'stop', status: 'succeeded' } });
    t.ctx.ownBuildId = w.latest.buildId;

    expect(await stopWorkspace(t.ctx, w.payload)).toEqual({
      kind: 'stop-workspace',
      ok: true,
      stopped: true,
      workspace_name: w.workspaceName,
      build_id: w.latest.buildId,
    });
    expect(await listBuilds(db, w.workspaceId)).toHaveLength(2);
  });

  it('the chat checks of start › a sub-chat, another owner and a moved chat are refused, nothing written', async () => {
    const t = await context();
    const w = await world();
    const { chatId: subChatId } = await insertChat(db.pool, {
      ownerId: w.ownerId,
      workspaceId: w.workspaceId,
      parentChatId: w.chatId,
    });
    const other = await insertUser(db.pool);

    expect(await stopWorkspace(t.ctx, { ...w.payload, chatId: subChatId })).toMatchObject({
      code: 'forbidden',
      is_error: true,
      error: expect.stringContaining('only root chats'),
    });
    expect(await stopWorkspace(t.ctx, { ...w.payload, ownerId: other.userId })).toMatchObject({
      code: 'forbidden',
      error: `user ${other.userId} does not own chat ${w.chatId}`,
    });
    const elsewhere = await world();
    expect(await stopWorkspace(t.ctx, { ...w.payload, workspaceId: elsewhere.workspaceId })).toMatchObject({
      code: 'workspace_changed',
    });
    expect(await listBuilds(db, w.workspaceId)).toHaveLength(1);
  });
});
