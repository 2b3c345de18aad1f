// Where a start job deliberately does better than Coder (docs/start-workspace.md D1–D10), and the extra cases
// the design lists: automatic updates, parameter rules, and the database refusing a second active build.
import { randomUUID } from 'node:crypto';
import { describe, expect, it } from 'vitest';
import {
  insertAgents,
  insertBuild,
  insertChat,
  insertUser,
  insertWorkspace,
  type AgentInput,
  type ParameterInput,
} from '../../src/cli/fixtures.js';
import { cancelJob, completeJob, connectAgent, setAgentLifecycle, startJob } from '../helpers/fixtures.js';
import { PROGRESS_STAGES } from '../../src/shared/contract.js';
import { topics, type WorkspaceStore } from '../../src/worker/ports.js';
import { startWorkspace } from '../../src/jobs/start-workspace/start-workspace.js';
import {
  awaitBuild,
  buildParameters,
  chatBinding,
  listBuilds,
  rowCounts,
  failure,
  READY_AGENT,
  success,
  type StartContext,
  useStartContext,
} from '../helpers/start-context.js';
import { createWorld, type World, type WorldOptions } from '../helpers/start-world.js';

describe('startWorkspace: deviations from Coder and extra cases', () => {
  const { db, context } = useStartContext();

  const world = (options?: WorldOptions): Promise<World> => createWorld(db, options);

  const stopped = { transition: 'stop', status: 'succeeded' } as const;

  /** The store, awaiting `before(method)` before each of its calls. */
  const beforeCalls =
    (before: (method: string) => Promise<unknown> | void) =>
    (store: WorkspaceStore): WorkspaceStore =>
      new Proxy(store, {
        get(target, property) {
          const value: unknown = Reflect.get(target, property, target);
          if (typeof value !== 'function') return value;
          return async (...args: unknown[]) => {
            await before(String(property));
            return (value as (...a: unknown[]) => unknown).apply(target, args);
          };
        },
      });

  /** Plays the provisioner for build `buildNumber` once the job waits on it. */
  async function provision(
    t: StartContext,
    workspaceId: string,
    buildNumber: number,
    options: { agents?: AgentInput[]; error?: string } = {},
  ) {
    const build = await awaitBuild(db, workspaceId, buildNumber);
    await t.waitingOn(topics.provisionerJob(build.job_id));
    const agentIds =
      options.error === undefined
        ? (await insertAgents(db.pool, build.job_id, options.agents ?? READY_AGENT)).agentIds
        : [];
    await completeJob(db.pool, build.job_id, { error: options.error });
    return { ...build, agentIds };
  }

  // -------------------------------------------------------------------------------------------------
  // D1: the chat lock spans every worker process; startWorkspace does not take it (the processor does),
  // so D1 is covered by the processor's tests (test/worker/processor*.test.ts). The last line of defence,
  // the database refusing a second active build, is tested below ("build_active").

  describe('D2: an in-flight stop or delete is waited for and then re-read', () => {
    it('a stop in flight: waits for it, then starts the stopped workspace', async () => {
      const t = await context();
      const w = await world({ then: { transition: 'stop', status: 'running' } });
      const stopBuild = (await listBuilds(db, w.workspaceId))[1]!;

      const running = startWorkspace(t.ctx, w.payload);
      await t.waitingOn(topics.provisionerJob(stopBuild.job_id));
      expect(t.stages()).toContain('waiting_for_existing_build');
      await completeJob(db.pool, stopBuild.job_id);
      const startBuild = await provision(t, w.workspaceId, 3);
      const result = success(await running);

      expect(startBuild).toMatchObject({ transition: 'start', initiator_id: w.ownerId });
      expect(result.build_id).toBe(startBuild.id);
      expect(result.build_id).not.toBe(stopBuild.id);
      expect(result.agent_status).toBeUndefined();
      expect(await chatBinding(db, w.chatId)).toMatchObject({ build_id: startBuild.id });
    });

    it('a delete in flight: waits for it, then reports the workspace deleted', async () => {
      const t = await context();
      const w = await world({ then: { transition: 'delete', status: 'running' } });
      const deleteBuild = (await listBuilds(db, w.workspaceId))[1]!;

      const running = startWorkspace(t.ctx, w.payload);
      await t.waitingOn(topics.provisionerJob(deleteBuild.job_id));
      // The provisioner finishes the delete and marks the workspace deleted, as Coder's does.
      await db.pool.query('UPDATE workspaces SET deleted = true WHERE id = $1', [w.workspaceId]);
      await completeJob(db.pool, deleteBuild.job_id);
      const result = failure(await running);

      expect(result).toMatchObject({ code: 'workspace_deleted', is_error: true });
      expect(result.error).toBe('workspace was deleted; use create_workspace to make a new one');
      expect(await listBuilds(db, w.workspaceId)).toHaveLength(2);
    });
  });

  it('D3: a canceling build is waited for until it settles, then the workspace is started', async () => {
    const t = await context();
    const w = await world({ then: { transition: 'start', status: 'canceling' } });
    const canceling = (await listBuilds(db, w.workspaceId))[1]!;
    expect(canceling.job_status).toBe('canceling');

    const running = startWorkspace(t.ctx, w.payload);
    await t.waitingOn(topics.provisionerJob(canceling.job_id));
    await cancelJob(db.pool, canceling.job_id); // canceled
    const startBuild = await provision(t, w.workspaceId, 3);
    const result = success(await running);

    expect(result.build_id).toBe(startBuild.id);
    expect(startBuild).toMatchObject({ transition: 'start', build_number: 3 });
  });

  // Before 968bd25 the canceling branch ignored the wait's outcome and re-read, waiting 5 build timeouts and
  // ending with { code: 'internal', is_error: true }.
  it('D3 + D8: a cancellation that never settles ends with build_timeout after the build timeout', async () => {
    const t = await context({ timeouts: { buildTimeoutMs: 300 } });
    const w = await world({ then: { transition: 'start', status: 'canceling' } });
    const before = await rowCounts(db);

    const result = failure(await startWorkspace(t.ctx, w.payload));

    expect(result).toMatchObject({ code: 'build_timeout', is_error: false, build_id: w.latest.buildId });
    expect(result.error).toContain('timed out waiting for workspace build');
    // One wait on the canceling build, with the configured timeout; nothing built.
    const waits = t.waits.filter((x) => x.topics.includes(topics.provisionerJob(w.latest.jobId)));
    expect(waits.map((x) => x.timeoutMs)).toEqual([300]);
    expect(await rowCounts(db)).toEqual(before);
  });

  it('a start build canceled by the provisioner: build_canceled', async () => {
    const t = await context();
    const w = await world({ then: stopped });

    const running = startWorkspace(t.ctx, w.payload);
    const build = await awaitBuild(db, w.workspaceId, 3);
    await t.waitingOn(topics.provisionerJob(build.job_id));
    await cancelJob(db.pool, build.job_id);
    const result = failure(await running);

    expect(result).toEqual({
      kind: 'start-workspace',
      ok: false,
      error: 'workspace start build failed: build was canceled',
      code: 'build_canceled',
      is_error: false,
      build_id: build.id,
    });
  });

  describe('D4: the version to build', () => {
    it('template requires the active version: builds the active version', async () => {
      const t = await context();
      const w = await world({ then: stopped, versions: [[], []], requireActiveVersion: true });

      const running = startWorkspace(t.ctx, w.payload);
      const build = await provision(t, w.workspaceId, 3);
      const result = success(await running);

      expect(build.template_version_id).toBe(w.versionIds[1]);
      expect(result).toMatchObject({
        updated_to_active_version: true,
        update_reason: 'template requires active versions',
        previous_template_version_id: w.versionIds[0],
        template_version_id: w.versionIds[1],
      });
    });

    it('automatic_updates = always: builds the active version and says why', async () => {
      const t = await context();
      const w = await world({ then: stopped, versions: [[], []], automaticUpdates: 'always' });

      const running = startWorkspace(t.ctx, w.payload);
      const build = await provision(t, w.workspaceId, 3);
      const result = success(await running);

      expect(build.template_version_id).toBe(w.versionIds[1]);
      expect(result).toEqual({
        kind: 'start-workspace',
        ok: true,
        started: true,
        workspace_name: w.workspaceName,
        build_id: build.id,
        updated_to_active_version: true,
        update_reason: 'workspace automatic updates are set to always',
        message:
          'Workspace started and was updated to the active template version because workspace automatic updates are set to always.',
        previous_template_version_id: w.versionIds[0],
        template_version_id: w.versionIds[1],
      });
    });

    it('neither: keeps the previous build version, no update fields', async () => {
      const t = await context();
      const w = await world({ then: stopped, versions: [[], []] });

      const running = startWorkspace(t.ctx, w.payload);
      const build = await provision(t, w.workspaceId, 3);
      const result = success(await running);

      expect(build.template_version_id).toBe(w.versionIds[0]);
      expect(result).toEqual({
        kind: 'start-workspace',
        ok: true,
        started: true,
        workspace_name: w.workspaceName,
        build_id: build.id,
      });
    });

    it('already on the active version: no update fields', async () => {
      const t = await context();
      // Builds on v1, v1 active; a newer inactive v2 exists.
      const w = await world({
        then: stopped,
        versions: [[], []],
        activeVersionIndex: 0,
        requireActiveVersion: true,
      });

      const running = startWorkspace(t.ctx, w.payload);
      const build = await provision(t, w.workspaceId, 3);
      const result = success(await running);

      expect(build.template_version_id).toBe(w.versionIds[0]);
      expect(result.updated_to_active_version).toBeUndefined();
      expect(result.update_reason).toBeUndefined();
    });
  });

  describe('D5: manual update required', () => {
    const region: ParameterInput = {
      name: 'region',
      required: true,
      options: [
        { name: 'us-east-1', value: 'us-east-1' },
        { name: 'eu-west-1', value: 'eu-west-1' },
      ],
    };

    it('with ACCESS_URL: carries the workspace settings link', async () => {
      const t = await context({ accessUrl: 'https://coder.example.com' });
      const w = await world({ then: stopped, versions: [[], [region]], requireActiveVersion: true });

      const result = failure(await startWorkspace(t.ctx, w.payload));

      expect(result.code).toBe('manual_update_required');
      expect(result.template_id).toBe(w.templateId);
      expect(result.settings_url).toBe(
        `https://coder.example.com/@${w.username}/${w.workspaceName}/settings`,
      );
    });

    it('the required parameter supplied on retry: succeeds on the active version', async () => {
      const t = await context();
      const w = await world({
        then: stopped,
        versions: [[{ name: 'cpu', defaultValue: '2' }], [{ name: 'cpu', defaultValue: '2' }, region]],
        requireActiveVersion: true,
        buildParameters: { cpu: '4' },
      });

      const first = failure(await startWorkspace(t.ctx, w.payload));
      expect(first.code).toBe('manual_update_required');
      expect(await listBuilds(db, w.workspaceId)).toHaveLength(2);

      const running = startWorkspace(t.ctx, { ...w.payload, parameters: { region: 'eu-west-1' } });
      const build = await provision(t, w.workspaceId, 3);
      const result = success(await running);

      expect(build.template_version_id).toBe(w.versionIds[1]);
      expect(result).toMatchObject({ updated_to_active_version: true, build_id: build.id });
      // Previous values carry over; the new parameter takes the supplied value.
      expect(await buildParameters(db, build.id)).toEqual({ cpu: '4', region: 'eu-west-1' });
    });
  });

  /** A start of a stopped workspace, waiting on its new build, with the store calls it makes recorded. */
  async function startWaitingOnBuild() {
    const calls: string[] = [];
    const t = await context({ wrapStore: beforeCalls((m) => void calls.push(m)) });
    const w = await world({ then: stopped });
    const running = startWorkspace(t.ctx, w.payload);
    const build = await awaitBuild(db, w.workspaceId, 3);
    await t.waitingOn(topics.provisionerJob(build.job_id));
    return { calls, t, w, running, build };
  }

  it('D6: waits are woken by notifications, not by polling', async () => {
    // Only notifications wake these waits (the agent connect wait's timed re-check is 10 s away).
    const { calls, t, w, running, build } = await startWaitingOnBuild();
    await startJob(db.pool, build.job_id);
    await t.waitForStage('build_running');
    const { agentIds } = await insertAgents(db.pool, build.job_id, [{ name: 'dev' }]);
    const agentId = agentIds[0]!;
    await completeJob(db.pool, build.job_id);
    await t.waitingOn(topics.agent(agentId));
    await connectAgent(db.pool, agentId);
    await setAgentLifecycle(db.pool, agentId, 'starting');
    await t.waitForStage('agent_starting');
    await setAgentLifecycle(db.pool, agentId, 'ready');
    const result = success(await running);

    expect(result).toEqual({
      kind: 'start-workspace',
      ok: true,
      started: true,
      workspace_name: w.workspaceName,
      build_id: build.id,
    });
    expect(t.stages()).toContain('agent_ready');
    // The build is read as its wait begins and at its end; its running notification said all in between.
    expect(calls.filter((m) => m === 'getBuild')).toHaveLength(2);
  });

  it('D6: an agent already ready when its build ends is told ready from the agents read, without a wait on it', async () => {
    const { calls, t, running, build } = await startWaitingOnBuild();
    const { agentIds } = await insertAgents(db.pool, build.job_id, READY_AGENT);
    await completeJob(db.pool, build.job_id);
    const result = success(await running);

    expect(result).toMatchObject({ ok: true, build_id: build.id });
    expect(result.agent_status).toBeUndefined();
    expect(t.stages().slice(-2)).toEqual(['build_succeeded', 'agent_ready']);
    // 10,000 builds ending at once: no hub listener, timer or admission slot per agent phase (issue 11).
    expect(t.waits.filter((x) => x.topics.includes(topics.agent(agentIds[0]!)))).toEqual([]);
    expect(calls.filter((m) => m === 'getAgent')).toEqual([]);
  });

  it('D6: an agent that reconnects without a notification (only last_connected_at moves) is seen by the connect wait', async () => {
    const t = await context({ timeouts: { agentConnectRecheckMs: 100 } });
    const w = await world({ then: stopped });

    const running = startWorkspace(t.ctx, w.payload);
    const build = await awaitBuild(db, w.workspaceId, 3);
    await t.waitingOn(topics.provisionerJob(build.job_id));
    const { agentIds } = await insertAgents(db.pool, build.job_id, [{ name: 'dev' }]);
    const agentId = agentIds[0]!;
    // Connected once, disconnected since.
    await db.pool.query(
      `UPDATE workspace_agents SET first_connected_at = now() - interval '1 minute',
              last_connected_at = now() - interval '1 minute', disconnected_at = now() - interval '30 seconds'
        WHERE id = $1`,
      [agentId],
    );
    await completeJob(db.pool, build.job_id);
    await t.waitForStage('agent_connecting');
    // The reconnect as a heartbeat writes it: no trigger watches last_connected_at alone.
    await db.pool.query('UPDATE workspace_agents SET last_connected_at = now() WHERE id = $1', [agentId]);
    // Only the timed re-check can end the connect wait; the startup-script wait comes next.
    await expect
      .poll(() => t.waits.filter((x) => x.topics.includes(topics.agent(agentId))).length, { timeout: 5_000 })
      .toBe(2);
    await setAgentLifecycle(db.pool, agentId, 'ready');

    expect(success(await running)).toMatchObject({ ok: true, build_id: build.id });
    expect(t.stages()).toContain('agent_ready');
  });

  describe('D7: owner checks', () => {
    it('a job whose owner is not the chat owner is forbidden', async () => {
      const t = await context();
      const w = await world({ then: stopped });
      const other = await insertUser(db.pool);
      const before = await rowCounts(db);

      const result = failure(await startWorkspace(t.ctx, { ...w.payload, ownerId: other.userId }));

      expect(result).toMatchObject({ code: 'forbidden', is_error: true });
      expect(await rowCounts(db)).toEqual(before);
    });

    it.each(['suspended', 'dormant'] as const)('a %s owner is forbidden', async (status) => {
      const t = await context();
      const w = await world({ then: stopped });
      await db.pool.query('UPDATE users SET status = $2 WHERE id = $1', [w.ownerId, status]);
      const before = await rowCounts(db);

      const result = failure(await startWorkspace(t.ctx, w.payload));

      expect(result).toMatchObject({ code: 'forbidden', is_error: true });
      expect(await rowCounts(db)).toEqual(before);
    });

    it('a deleted owner is forbidden', async () => {
      const t = await context();
      const w = await world({ then: stopped });
      await db.pool.query('UPDATE users SET deleted = true WHERE id = $1', [w.ownerId]);

      const result = failure(await startWorkspace(t.ctx, w.payload));

      expect(result).toMatchObject({ code: 'forbidden', is_error: true });
    });

    it("a chat bound to someone else's workspace is forbidden", async () => {
      const t = await context();
      const w = await world({ then: stopped });
      const other = await insertUser(db.pool);
      const { chatId } = await insertChat(db.pool, { ownerId: other.userId, workspaceId: w.workspaceId });
      const before = await rowCounts(db);

      const result = failure(await startWorkspace(t.ctx, { ...w.payload, chatId, ownerId: other.userId }));

      expect(result).toMatchObject({ code: 'forbidden', is_error: true });
      expect(await rowCounts(db)).toEqual(before);
    });
  });

  describe('D8: every wait times out with its configured timeout', () => {
    it('the start build: build_timeout', async () => {
      const t = await context({ timeouts: { buildTimeoutMs: 400 } });
      const w = await world({ then: stopped });

      const result = failure(await startWorkspace(t.ctx, w.payload));

      const build = (await listBuilds(db, w.workspaceId))[2]!;
      expect(build).toMatchObject({ build_number: 3, job_status: 'pending' });
      expect(result).toMatchObject({ code: 'build_timeout', is_error: false, build_id: build.id });
      expect(result.error).toMatch(/^workspace start build failed: timed out waiting for workspace build/);
      const buildWait = t.waits.find((x) => x.topics.includes(topics.provisionerJob(build.job_id)));
      expect(buildWait?.timeoutMs).toBe(400);
    });

    it('an in-progress build: build_timeout', async () => {
      const t = await context({ timeouts: { buildTimeoutMs: 400 } });
      const w = await world({ then: { transition: 'start', status: 'running' } });

      const result = failure(await startWorkspace(t.ctx, w.payload));

      expect(result).toMatchObject({ code: 'build_timeout', is_error: false, build_id: w.latest.buildId });
      expect(result.error).toMatch(/^waiting for in-progress build: timed out waiting for workspace build/);
    });

    it('the agent connecting: not_ready', async () => {
      const t = await context({ timeouts: { agentConnectTimeoutMs: 400 } });
      const w = await world({ then: stopped });

      const running = startWorkspace(t.ctx, w.payload);
      const build = await provision(t, w.workspaceId, 3, { agents: [{ name: 'dev', connected: false }] });
      const result = success(await running);

      expect(result).toMatchObject({
        kind: 'start-workspace',
        ok: true,
        started: true,
        build_id: build.id,
        agent_status: 'not_ready',
      });
      expect(typeof result.agent_error).toBe('string');
      expect(result.agent_error).not.toBe('');
      expect(result.startup_scripts).toBeUndefined();
      const agentId = build.agentIds[0]!;
      expect(t.waits.some((x) => x.topics.includes(topics.agent(agentId)) && x.timeoutMs === 400)).toBe(true);
    });

    it('the startup scripts: startup_scripts_timeout', async () => {
      const t = await context({ timeouts: { startupScriptTimeoutMs: 450 } });
      const w = await world({ then: stopped });

      const running = startWorkspace(t.ctx, w.payload);
      const build = await provision(t, w.workspaceId, 3, {
        agents: [{ name: 'dev', connected: true, lifecycleState: 'starting' }],
      });
      const result = success(await running);

      expect(result).toMatchObject({
        kind: 'start-workspace',
        ok: true,
        started: true,
        build_id: build.id,
        startup_scripts: 'startup_scripts_timeout',
      });
      expect(result.agent_status).toBeUndefined();
      expect(
        t.waits.some((x) => x.topics.some((y) => y.startsWith('workspace_agent:')) && x.timeoutMs === 450),
      ).toBe(true);
    });

    it('a failed startup script: startup_scripts_failed with the lifecycle state', async () => {
      const t = await context();
      const w = await world({ then: stopped });

      const running = startWorkspace(t.ctx, w.payload);
      const build = await provision(t, w.workspaceId, 3, {
        agents: [{ name: 'dev', connected: true, lifecycleState: 'start_error' }],
      });
      const result = success(await running);

      expect(result).toMatchObject({
        build_id: build.id,
        startup_scripts: 'startup_scripts_failed',
        lifecycle_state: 'start_error',
      });
    });
  });

  describe('D9: already running', () => {
    it('with the chat agent connected and ready: answers at once, without waiting', async () => {
      const calls: string[] = [];
      const t = await context({ wrapStore: beforeCalls((m) => void calls.push(m)) });
      const w = await world();

      const result = success(await startWorkspace(t.ctx, w.payload));

      expect(result).toEqual({
        kind: 'start-workspace',
        ok: true,
        started: true,
        workspace_name: w.workspaceName,
        no_build: true,
      });
      expect(t.waits.filter((x) => x.blocked)).toEqual([]);
      // The agents read said it all: connected and ready need no second look.
      expect(calls.filter((m) => m.startsWith('getAgent'))).toEqual(['getAgentsOfLatestBuild']);
    });

    it('with the agent still starting: waits for it to become ready', async () => {
      const t = await context();
      const w = await world({ firstAgents: [{ name: 'dev', connected: true, lifecycleState: 'starting' }] });
      const agentId = w.latest.agentIds[0]!;

      const running = startWorkspace(t.ctx, w.payload);
      await t.waitingOn(topics.agent(agentId));
      await setAgentLifecycle(db.pool, agentId, 'ready');
      const result = success(await running);

      expect(result).toEqual({
        kind: 'start-workspace',
        ok: true,
        started: true,
        workspace_name: w.workspaceName,
        no_build: true,
      });
    });
  });

  it('D10: the chat now points at another workspace than the job names', async () => {
    const t = await context();
    const w = await world({ then: stopped });
    const other = await insertWorkspace(db.pool, { ownerId: w.ownerId, templateId: w.templateId });
    await db.pool.query('UPDATE chats SET workspace_id = $2, build_id = NULL WHERE id = $1', [
      w.chatId,
      other.workspaceId,
    ]);
    const before = await rowCounts(db);

    const result = failure(await startWorkspace(t.ctx, w.payload));

    expect(result).toMatchObject({
      code: 'workspace_changed',
      is_error: true,
      error: "the chat's workspace changed since the job was enqueued; enqueue again",
    });
    expect(await rowCounts(db)).toEqual(before);
  });

  describe('parameters', () => {
    it('an immutable parameter changed: invalid_parameters, nothing persisted', async () => {
      const t = await context();
      const w = await world({
        then: stopped,
        versions: [[{ name: 'region', mutable: false, defaultValue: 'us-east-1' }]],
        buildParameters: { region: 'us-east-1' },
      });
      const before = await rowCounts(db);
      const binding = await chatBinding(db, w.chatId);

      const result = failure(
        await startWorkspace(t.ctx, { ...w.payload, parameters: { region: 'eu-west-1' } }),
      );

      expect(result).toMatchObject({
        code: 'invalid_parameters',
        is_error: false,
        template_id: w.templateId,
      });
      expect(result.error).toContain('Unable to validate parameter "region"');
      const reason = `Parameter "region" is not mutable, so it can't be updated after creating a workspace.`;
      expect(result.detail).toContain(reason);
      expect(result.validations).toEqual([{ field: 'region', detail: expect.stringContaining(reason) }]);
      expect(result.settings_url).toBeUndefined();
      expect(await rowCounts(db)).toEqual(before);
      expect(await chatBinding(db, w.chatId)).toEqual(binding);
    });

    it('an invalid value without a version change: invalid_parameters, no new build or job rows', async () => {
      const t = await context();
      const w = await world({
        then: stopped,
        versions: [
          [
            {
              name: 'size',
              defaultValue: 'small',
              options: [
                { name: 'small', value: 'small' },
                { name: 'large', value: 'large' },
              ],
            },
          ],
        ],
        buildParameters: { size: 'small' },
      });
      const before = await rowCounts(db);

      const result = failure(await startWorkspace(t.ctx, { ...w.payload, parameters: { size: 'huge' } }));

      expect(result).toMatchObject({
        code: 'invalid_parameters',
        is_error: false,
        template_id: w.templateId,
      });
      expect(result.validations?.[0]?.field).toBe('size');
      expect(await rowCounts(db)).toEqual(before);
    });

    it('an ephemeral parameter falls back to its default, not the previous value', async () => {
      const t = await context();
      const w = await world({
        then: stopped,
        versions: [
          [
            { name: 'debug', type: 'bool', ephemeral: true, defaultValue: 'false' },
            { name: 'size', defaultValue: 'small' },
          ],
        ],
        buildParameters: { debug: 'true', size: 'large' },
      });

      const running = startWorkspace(t.ctx, w.payload);
      const build = await provision(t, w.workspaceId, 3);
      success(await running);

      expect(await buildParameters(db, build.id)).toEqual({ debug: 'false', size: 'large' });
    });
  });

  /** The start build's inserts awaiting `before` (after the job planned the build). */
  const beforeEachInsert = (before: () => Promise<unknown>) =>
    beforeCalls(async (method) => {
      if (method === 'insertStartBuild') await before();
    });

  it('build_active: the database refuses a second active build even without the chat lock', async () => {
    // Two jobs for one stopped workspace both decide to start it, then meet before creating the build:
    // exactly one build is created, the other job is refused by the build's insert (under the row lock).
    let arrived = 0;
    let release!: () => void;
    const bothArrived = new Promise<void>((resolve) => (release = resolve));
    const wrapStore = beforeEachInsert(async () => {
      if (++arrived === 2) release();
      await Promise.race([bothArrived, new Promise((resolve) => setTimeout(resolve, 5_000))]);
    });
    const t = await context({ wrapStore });
    const w = await world({ then: stopped });

    const jobs = [startWorkspace(t.ctx, w.payload), startWorkspace(t.ctx, w.payload)];
    // The refused job ends at once; the other waits for its build. (-1: neither ended within 5 s.)
    const firstDone = await Promise.race([
      ...jobs.map((job, index) => job.then(() => index)),
      new Promise<number>((resolve) => setTimeout(() => resolve(-1), 5_000)),
    ]);
    const build = await provision(t, w.workspaceId, 3);
    const results = await Promise.all(jobs);

    expect(arrived).toBe(2);
    // Exactly one new build.
    expect(await listBuilds(db, w.workspaceId)).toHaveLength(3);
    expect(firstDone).not.toBe(-1);
    const refusal = failure(results[firstDone]!);
    expect(refusal).toMatchObject({
      code: 'build_active',
      is_error: false,
      error: 'A workspace build is already active.',
    });
    expect(success(results[1 - firstDone]!).build_id).toBe(build.id);
  });

  describe('D12: the build insert checks under the row lock what the start was planned on', () => {
    /** A store that runs `meddle` once, after the job planned its build and before the insert. */
    const meddleBeforeInsert = (meddle: () => Promise<unknown>) => {
      let meddled = false;
      return beforeEachInsert(async () => {
        if (meddled) return;
        meddled = true;
        await meddle();
      });
    };

    it('when the template starts requiring its active version meanwhile › plans again and builds that version', async () => {
      const w = await world({ then: stopped, versions: [[], []] });
      const t = await context({
        wrapStore: meddleBeforeInsert(() =>
          db.pool.query('UPDATE templates SET require_active_version = true WHERE id = $1', [w.templateId]),
        ),
      });

      const running = startWorkspace(t.ctx, w.payload);
      const build = await provision(t, w.workspaceId, 3);
      const result = success(await running);

      expect(build.template_version_id).toBe(w.versionIds[1]);
      expect(result).toMatchObject({ update_reason: 'template requires active versions' });
      expect(await listBuilds(db, w.workspaceId)).toHaveLength(3);
    });

    it("when the template has no active version › builds on the previous build's version", async () => {
      const w = await world({ then: stopped });
      await db.pool.query('UPDATE templates SET active_version_id = NULL WHERE id = $1', [w.templateId]);
      const t = await context();

      const running = startWorkspace(t.ctx, w.payload);
      const build = await provision(t, w.workspaceId, 3);
      expect(success(await running).build_id).toBe(build.id);
      expect(build.template_version_id).toBe(w.versionIds[0]);
    });

    it('when another build of the workspace ended meanwhile › looks again and builds on it', async () => {
      const w = await world({ then: stopped });
      const t = await context({
        // A stop (build #3) that ran and ended between the job's look and its insert.
        wrapStore: meddleBeforeInsert(() =>
          insertBuild(db.pool, {
            workspaceId: w.workspaceId,
            templateVersionId: w.versionIds[0]!,
            initiatorId: w.ownerId,
            transition: 'stop',
            status: 'succeeded',
          }),
        ),
      });

      const running = startWorkspace(t.ctx, w.payload);
      const build = await provision(t, w.workspaceId, 4);
      expect(success(await running).build_id).toBe(build.id);
      expect(await listBuilds(db, w.workspaceId)).toHaveLength(4);
    });

    it('when the workspace is deleted meanwhile › workspace_deleted, no build', async () => {
      const w = await world({ then: stopped });
      const t = await context({
        wrapStore: meddleBeforeInsert(() =>
          db.pool.query('UPDATE workspaces SET deleted = true WHERE id = $1', [w.workspaceId]),
        ),
      });

      expect(failure(await startWorkspace(t.ctx, w.payload))).toMatchObject({ code: 'workspace_deleted' });
      expect(await listBuilds(db, w.workspaceId)).toHaveLength(2);
    });
  });

  it('progress events of a stopped start come in order, without going back', async () => {
    const t = await context();
    const w = await world({ then: stopped });

    const running = startWorkspace(t.ctx, w.payload);
    const build = await awaitBuild(db, w.workspaceId, 3);
    await t.waitingOn(topics.provisionerJob(build.job_id));
    await startJob(db.pool, build.job_id);
    await t.waitForStage('build_running');
    const { agentIds } = await insertAgents(db.pool, build.job_id, [{ name: 'dev' }]);
    const agentId = agentIds[0]!;
    await completeJob(db.pool, build.job_id);
    await t.waitForStage('agent_connecting');
    await connectAgent(db.pool, agentId);
    await setAgentLifecycle(db.pool, agentId, 'starting');
    await t.waitForStage('agent_starting');
    await setAgentLifecycle(db.pool, agentId, 'ready');
    success(await running);

    const expected = [
      'checking',
      'build_queued',
      'build_running',
      'build_succeeded',
      'agent_connecting',
      'agent_starting',
      'agent_ready',
    ];
    const stages = t.stages();
    // All of them, in this order, each stage's events together (no stage again after a later one).
    const firstSeen = stages.filter((stage, i) => stages.indexOf(stage) === i);
    expect(firstSeen).toEqual(expected);
    const rank = stages.map((stage) => PROGRESS_STAGES.indexOf(stage));
    expect(rank).toEqual([...rank].sort((a, b) => a - b));
    // Build events carry the build, agent events the agent.
    const buildEvent = t.events.find((e) => e.stage === 'build_succeeded')!;
    expect(buildEvent.data).toMatchObject({ build_id: build.id });
    for (const event of t.events) expect(event.workspaceId ?? w.workspaceId).toBe(w.workspaceId);
  });

  it('a job id that names no workspace of the chat still never builds a foreign workspace', async () => {
    const t = await context();
    const w = await world({ then: stopped });
    const before = await rowCounts(db);

    const result = failure(await startWorkspace(t.ctx, { ...w.payload, workspaceId: randomUUID() }));

    expect(result.code).toBe('workspace_changed');
    expect(await rowCounts(db)).toEqual(before);
  });
});
