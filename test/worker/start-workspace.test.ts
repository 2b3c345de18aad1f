// Coder's 13 TestStartWorkspace sub-tests (docs/start-workspace.md), ported. Coder's seams become the real
// database here: "StartFn called" = a new start build row (build_number + 1, transition start, initiator =
// owner) with the chat bound to it; "StartFn not called" = no new build row; "the dialer was called with
// agent X" = only agent X's readiness decides the result. The test plays the provisioner and the agent with
// SQL, after the job has started waiting (its first check found nothing), as Coder's tests do.
import { randomUUID } from 'node:crypto';
import { describe, expect, it } from 'vitest';
import { insertAgents, insertChat, type AgentInput, type ParameterInput } from '../../src/cli/fixtures.js';
import { completeJob, startJob } from '../helpers/fixtures.js';
import { topics } from '../../src/worker/ports.js';
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
import { createWorld, type World } from '../helpers/start-world.js';

const MANUAL_UPDATE_MESSAGE =
  "The workspace needs the template's active version before it can start. Use read_template with this " +
  "workspace's template_id to inspect the active version's required parameters, then retry start_workspace " +
  'with a parameters object that supplies any missing or changed values.';

describe('startWorkspace: Coder TestStartWorkspace', () => {
  const { db, context } = useStartContext();

  /** A user, a template, a workspace whose latest build is `latest`, and a chat bound to it. */
  async function world(options: {
    latest: 'stopped' | 'running' | 'running-start' | 'deleted';
    agents?: AgentInput[];
    parameters?: ParameterInput[];
    buildParameters?: Record<string, string>;
    requireActiveVersion?: boolean;
    /** A second, active version (the workspace's builds stay on the first). */
    activeVersion?: { parameters?: ParameterInput[] };
  }): Promise<World & { latestBuildId: string; latestJobId: string }> {
    const stop = { transition: 'stop', status: 'succeeded' } as const;
    const then = {
      stopped: [stop],
      running: [],
      'running-start': [stop, { transition: 'start', status: 'running' } as const],
      deleted: [{ transition: 'delete', status: 'succeeded' } as const],
    }[options.latest];
    const w = await createWorld(db, {
      then,
      firstAgents: options.latest === 'running' ? (options.agents ?? []) : undefined,
      versions: [
        options.parameters ?? [],
        ...(options.activeVersion ? [options.activeVersion.parameters ?? []] : []),
      ],
      requireActiveVersion: options.requireActiveVersion,
      buildParameters: options.buildParameters,
      deleted: options.latest === 'deleted',
    });
    return { ...w, latestBuildId: w.latest.buildId, latestJobId: w.latest.jobId };
  }

  /**
   * Plays the provisioner for build `buildNumber`: waits until the job waits on it, attaches the agents and
   * completes it (with `error`, it fails). Returns the build.
   */
  async function provision(
    t: StartContext,
    workspaceId: string,
    buildNumber: number,
    options: { agents?: AgentInput[]; error?: string; errorCode?: string } = {},
  ) {
    const build = await awaitBuild(db, workspaceId, buildNumber);
    await t.waitingOn(topics.provisionerJob(build.job_id));
    if (options.error === undefined) await insertAgents(db.pool, build.job_id, options.agents ?? READY_AGENT);
    await completeJob(db.pool, build.job_id, { error: options.error, errorCode: options.errorCode });
    return build;
  }

  const agentWaits = (t: StartContext) =>
    t.waits.filter((w) => w.topics.some((x) => x.startsWith('workspace_agent:')));

  it('NoWorkspace', async () => {
    const t = await context();
    // The owner has a stopped workspace, but the chat is not bound to it.
    const w = await world({ latest: 'stopped' });
    const { chatId } = await insertChat(db.pool, { ownerId: w.ownerId });
    const before = await rowCounts(db);

    const result = failure(await startWorkspace(t.ctx, { ...w.payload, chatId }));

    expect(result.error).toContain('no workspace');
    expect(result).toMatchObject({
      error: 'chat has no workspace; use create_workspace first',
      code: 'no_workspace',
      is_error: true,
    });
    // StartFn not called.
    expect(await rowCounts(db)).toEqual(before);
    expect((await chatBinding(db, chatId)).workspace_id).toBeNull();
  });

  it('AlreadyRunning', async () => {
    const t = await context();
    const w = await world({ latest: 'running', agents: READY_AGENT });
    const before = await rowCounts(db);

    const result = success(await startWorkspace(t.ctx, w.payload));

    expect(result.started).toBe(true);
    expect(result.build_id).toBeUndefined();
    expect(result.no_build).toBe(true);
    expect(result).toEqual({
      kind: 'start-workspace',
      ok: true,
      started: true,
      workspace_name: w.workspaceName,
      no_build: true,
    });
    // StartFn not called.
    expect(await rowCounts(db)).toEqual(before);
  });

  it('AlreadyRunningPrefersChatSuffixAgent', async () => {
    // Both agents are `ready`, but only the chat agent is connected: had the job chosen `dev` (the first
    // after sorting), it would report not_ready once the connect window ends.
    const t = await context({ timeouts: { agentConnectTimeoutMs: 1_500 } });
    const w = await world({
      latest: 'running',
      agents: [
        { name: 'dev', lifecycleState: 'ready', connected: false },
        { name: 'dev-coderd-chat', lifecycleState: 'ready', connected: true },
      ],
    });
    const chatAgentId = (
      await db.pool.query<{ id: string }>(`SELECT id FROM workspace_agents WHERE name = 'dev-coderd-chat'`)
    ).rows[0]!.id;

    const result = success(await startWorkspace(t.ctx, w.payload));

    expect(result.started).toBe(true);
    expect(result.agent_status).toBeUndefined();
    expect(result.agent_error).toBeUndefined();
    expect(result.startup_scripts).toBeUndefined();
    // Whatever the job waited on or reported about an agent, it was the chat agent.
    for (const wait of agentWaits(t)) expect(wait.topics).toContain(topics.agent(chatAgentId));
    for (const event of t.events) {
      if (event.data?.agent_id !== undefined) expect(event.data.agent_id).toBe(chatAgentId);
      if (event.data?.agent_name !== undefined) expect(event.data.agent_name).toBe('dev-coderd-chat');
    }
  });

  it('AlreadyRunningWithoutAgentsReturnsNoAgent', async () => {
    const t = await context();
    const w = await world({ latest: 'running', agents: [] });

    const result = success(await startWorkspace(t.ctx, w.payload));

    expect(result.started).toBe(true);
    expect(result.agent_status).toBe('no_agent');
    expect(result.no_build).toBe(true);
    // Dialer never called: no wait on any agent.
    expect(agentWaits(t)).toEqual([]);
  });

  it('AlreadyRunningPreservesAgentSelectionError', async () => {
    const t = await context();
    const w = await world({
      latest: 'running',
      agents: [
        { name: 'alpha-coderd-chat', lifecycleState: 'ready', connected: true },
        { name: 'beta-coderd-chat', lifecycleState: 'ready', connected: true },
      ],
    });

    const result = success(await startWorkspace(t.ctx, w.payload));

    expect(result.started).toBe(true);
    expect(result.agent_status).toBe('selection_error');
    expect(result.agent_error).toContain('multiple agents match the chat suffix');
    expect(result.agent_error).toBe(
      'multiple agents match the chat suffix "-coderd-chat": alpha-coderd-chat, beta-coderd-chat; ' +
        'only one agent should use this suffix',
    );
    expect(agentWaits(t)).toEqual([]);
  });

  it('StoppedWorkspace', async () => {
    const t = await context();
    const w = await world({ latest: 'stopped' });

    const running = startWorkspace(t.ctx, w.payload);
    const build = await provision(t, w.workspaceId, 3);
    const result = success(await running);

    // StartFn called with transition start and the workspace id: a new start build by the owner.
    expect(build).toMatchObject({
      build_number: 3,
      transition: 'start',
      initiator_id: w.ownerId,
      template_version_id: w.versionIds[0],
    });
    expect(await listBuilds(db, w.workspaceId)).toHaveLength(3);
    expect(await chatBinding(db, w.chatId)).toMatchObject({
      workspace_id: w.workspaceId,
      build_id: build.id,
    });
    expect(result.started).toBe(true);
    expect(result.build_id).toBe(build.id);
    expect(result.no_build).toBeUndefined();
    expect(result).toEqual({
      kind: 'start-workspace',
      ok: true,
      started: true,
      workspace_name: w.workspaceName,
      build_id: build.id,
    });
  });

  it('StoppedWorkspaceReportsAutoUpdate', async () => {
    const t = await context();
    const w = await world({ latest: 'stopped', requireActiveVersion: true, activeVersion: {} });
    const [oldVersion, activeVersion] = w.versionIds;

    const running = startWorkspace(t.ctx, w.payload);
    const build = await provision(t, w.workspaceId, 3);
    const result = success(await running);

    expect(build.template_version_id).toBe(activeVersion);
    expect(result.build_id).toBe(build.id);
    expect(result.updated_to_active_version).toBe(true);
    expect(result.update_reason).toBe('template requires active versions');
    expect(result.message).toContain('updated to the active template version');
    expect(result.message).toBe(
      'Workspace started and was updated to the active template version because the template requires active versions.',
    );
    expect(result.previous_template_version_id).toBe(oldVersion);
    expect(result.template_version_id).toBe(activeVersion);
  });

  it('PassesParameters', async () => {
    const t = await context();
    const w = await world({
      latest: 'stopped',
      parameters: [
        { name: 'region', defaultValue: 'eu-west-1' },
        { name: 'size', defaultValue: 'small' },
      ],
      buildParameters: { region: 'eu-west-1', size: 'small' },
    });

    const running = startWorkspace(t.ctx, {
      ...w.payload,
      parameters: { region: 'us-east-1', size: 'large' },
    });
    const build = await provision(t, w.workspaceId, 3);
    const result = success(await running);

    expect(result.started).toBe(true);
    expect(await buildParameters(db, build.id)).toEqual({ region: 'us-east-1', size: 'large' });
  });

  it('ManualUpdateRequired', async () => {
    const t = await context();
    const w = await world({
      latest: 'stopped',
      requireActiveVersion: true,
      parameters: [{ name: 'cpu', defaultValue: '2' }],
      buildParameters: { cpu: '2' },
      activeVersion: {
        parameters: [
          { name: 'cpu', defaultValue: '2' },
          {
            name: 'region',
            required: true,
            options: [
              { name: 'us-east-1', value: 'us-east-1' },
              { name: 'eu-west-1', value: 'eu-west-1' },
            ],
          },
        ],
      },
    });
    const before = await rowCounts(db);
    const bindingBefore = await chatBinding(db, w.chatId);

    const result = failure(await startWorkspace(t.ctx, w.payload));

    expect(result.is_error).toBe(false);
    expect(JSON.stringify(result)).not.toContain('start workspace:');
    expect(result.error).toContain('read_template');
    expect(result.error).toContain('retry start_workspace');
    expect(result.error).toBe(MANUAL_UPDATE_MESSAGE);
    expect(result.code).toBe('manual_update_required');
    expect(result.template_id).toBe(w.templateId);
    expect(result.detail).toBe(
      'Unable to validate parameter "region": Parameter "region" is required but not provided',
    );
    expect(result.validations).toHaveLength(1);
    expect(result.validations![0]!.field).toBe('region');
    expect(result.validations![0]!.detail).toContain('Parameter "region" is required but not provided');
    // No ACCESS_URL: no settings link.
    expect(result.settings_url).toBeUndefined();
    // Nothing persisted, the chat untouched.
    expect(await rowCounts(db)).toEqual(before);
    expect(await chatBinding(db, w.chatId)).toEqual(bindingBefore);
  });

  it('InProgressBuild', async () => {
    const t = await context();
    const w = await world({ latest: 'running-start' });
    const inProgress = (await listBuilds(db, w.workspaceId))[2]!;
    expect(inProgress).toMatchObject({ build_number: 3, transition: 'start', job_status: 'running' });
    // The chat still points at the stop build, so binding it to the in-progress build is visible.
    const stopBuild = (await listBuilds(db, w.workspaceId))[1]!;
    await db.pool.query('UPDATE chats SET build_id = $2 WHERE id = $1', [w.chatId, stopBuild.id]);

    const running = startWorkspace(t.ctx, w.payload);
    await provision(t, w.workspaceId, 3);
    const result = success(await running);

    expect(result.started).toBe(true);
    expect(result.build_id).toBe(inProgress.id);
    // OnChatUpdated: the chat was bound to the in-progress build.
    expect(await chatBinding(db, w.chatId)).toMatchObject({
      workspace_id: w.workspaceId,
      build_id: inProgress.id,
    });
    expect(t.stages()).toContain('waiting_for_existing_build');
    // StartFn not called.
    expect(await listBuilds(db, w.workspaceId)).toHaveLength(3);
  });

  it('FailedBuild', async () => {
    const t = await context();
    const w = await world({ latest: 'running-start' });
    const inProgress = (await listBuilds(db, w.workspaceId))[2]!;

    const running = startWorkspace(t.ctx, w.payload);
    await provision(t, w.workspaceId, 3, { error: 'terraform apply failed' });
    const result = failure(await running);

    expect(result.error).toContain('waiting for in-progress build');
    expect(result.error).toBe('waiting for in-progress build: terraform apply failed');
    expect(result.build_id).toBe(inProgress.id);
    expect(result.is_error).toBe(false);
    expect(result.code).toBe('build_failed');
    expect(await listBuilds(db, w.workspaceId)).toHaveLength(3);
  });

  it('FailedBuildWithErrorCode: the in-flight build error code is carried on the build_failed result', async () => {
    const t = await context();
    const w = await world({ latest: 'running-start' });
    const inProgress = (await listBuilds(db, w.workspaceId))[2]!;

    const running = startWorkspace(t.ctx, w.payload);
    await provision(t, w.workspaceId, 3, {
      error: 'required template variables',
      errorCode: 'REQUIRED_TEMPLATE_VARIABLES',
    });

    expect(await running).toEqual({
      kind: 'start-workspace',
      ok: false,
      error: 'waiting for in-progress build: required template variables',
      code: 'build_failed',
      is_error: false,
      build_id: inProgress.id,
      error_code: 'REQUIRED_TEMPLATE_VARIABLES',
    });
  });

  it('StartTriggeredBuildFailure', async () => {
    const t = await context();
    const w = await world({ latest: 'stopped' });

    const running = startWorkspace(t.ctx, w.payload);
    const build = await awaitBuild(db, w.workspaceId, 3);
    // The provisioner picks the job up, the job sees it running, then it fails.
    await t.waitingOn(topics.provisionerJob(build.job_id));
    await startJob(db.pool, build.job_id);
    await t.waitForStage('build_running');
    await completeJob(db.pool, build.job_id, { error: 'terraform apply failed' });
    const result = failure(await running);

    expect(result.error).toContain('workspace start build failed');
    expect(result.error).toBe('workspace start build failed: terraform apply failed');
    expect(result.build_id).toBe(build.id);
    expect(result).not.toHaveProperty('error_code');
    expect(result.is_error).toBe(false);
    expect(result.code).toBe('build_failed');
    expect(await chatBinding(db, w.chatId)).toMatchObject({ build_id: build.id });
  });

  it('DeletedWorkspace', async () => {
    const t = await context();
    const w = await world({ latest: 'deleted' });
    const before = await rowCounts(db);

    const result = failure(await startWorkspace(t.ctx, w.payload));

    expect(result.error).toContain('workspace was deleted');
    expect(result).toMatchObject({
      error: 'workspace was deleted; use create_workspace to make a new one',
      code: 'workspace_deleted',
      is_error: true,
    });
    expect(await rowCounts(db)).toEqual(before);
  });

  it('a job whose chat does not exist fails with load chat', async () => {
    const t = await context();
    const w = await world({ latest: 'stopped' });

    const result = failure(await startWorkspace(t.ctx, { ...w.payload, chatId: randomUUID() }));

    expect(result.error).toMatch(/^load chat: /);
    expect(result.is_error).toBe(true);
  });
});
