// The create-workspace job's domain logic (docs/start-workspace.md "create-workspace", a port of Coder's
// create_workspace with its checkExistingWorkspace) on a real database. The test
// plays the provisioner and the agent with SQL once the job is actually waiting on them, as the start
// tests do. "Never starts it" / "nothing persisted" = no new workspace, build, job, parameter or binding.
import { Buffer } from 'node:buffer';
import { afterEach, beforeEach, describe, expect, it, vi } from 'vitest';
import {
  insertAgents,
  insertBuild,
  insertChat,
  insertTemplate,
  insertUser,
  insertWorkspace,
  type AgentInput,
  type BuildStatus,
  type InsertedBuild,
  type ParameterInput,
} from '../../src/cli/fixtures.js';
import {
  completeJob,
  connectAgent,
  disconnectAgent,
  setAgentLifecycle,
  startJob,
} from '../helpers/fixtures.js';
import type { CreateWorkspacePayload, CreateWorkspaceResult } from '../../src/shared/contract.js';
import {
  topics,
  type BuildTransaction,
  type WorkspaceStore,
  type WorkspaceTransition,
} from '../../src/worker/ports.js';
import { workspaceNameSchema } from '../../src/shared/schemas.js';
import { createWorkspace, generateName } from '../../src/jobs/create-workspace/create-workspace.js';
import { startWorkspace } from '../../src/jobs/start-workspace/start-workspace.js';
import { created, createFailure, persistedState, workspaceSnapshot } from '../helpers/create-results.js';
import {
  awaitBuild,
  buildParameters,
  chatBinding,
  listBuilds,
  READY_AGENT,
  type StartContext,
  useStartContext,
} from '../helpers/start-context.js';
import { stagesOf, WAIT_MS, WorkerHarness } from '../helpers/worker-harness.js';

// generateName draws `randomBytes(2)`; a test can queue the hex of the next draws to force name clashes.
// Every other call (and every draw once the queue is empty) is the real thing.
const forcedDraws = vi.hoisted(() => [] as string[]);
vi.mock('node:crypto', async (importOriginal) => {
  const actual = await importOriginal<typeof import('node:crypto')>();
  const randomBytes = (size: number, ...rest: unknown[]) => {
    const forced = size === 2 && rest.length === 0 ? forcedDraws.shift() : undefined;
    if (forced !== undefined) return Buffer.from(forced, 'hex');
    return (actual.randomBytes as (size: number, ...rest: unknown[]) => Buffer)(size, ...rest);
  };
  return { ...actual, randomBytes };
});

const STOPPED_MESSAGE = 'workspace is stopped; use start_workspace to start it';
const RUNNING_CONNECTED = 'workspace is already running and recently connected';
const RUNNING_CONNECTING = 'workspace exists and the agent is still connecting';

describe('createWorkspace', () => {
  const { db, context } = useStartContext();

  beforeEach(() => {
    forcedDraws.length = 0;
  });

  afterEach(() => {
    forcedDraws.length = 0;
  });

  interface World {
    ownerId: string;
    username: string;
    templateId: string;
    templateName: string;
    /** [old, active]: the old version has a required parameter the active one does not. */
    versionIds: string[];
    activeVersionId: string;
    chatId: string;
    payload: CreateWorkspacePayload;
  }

  /** An owner, a template whose active (second) version has `parameters`, and a chat without a workspace. */
  async function world(
    options: { parameters?: ParameterInput[]; templateName?: string } = {},
  ): Promise<World> {
    const user = await insertUser(db.pool);
    const template = await insertTemplate(db.pool, {
      name: options.templateName,
      versions: [
        { parameters: [{ name: 'legacy_only', required: true }] },
        { parameters: options.parameters ?? [] },
      ],
    });
    const { chatId } = await insertChat(db.pool, { ownerId: user.userId });
    return {
      ownerId: user.userId,
      username: user.username,
      templateId: template.templateId,
      templateName: template.name,
      versionIds: template.versionIds,
      activeVersionId: template.activeVersionId,
      chatId,
      payload: { chatId, ownerId: user.userId, templateId: template.templateId },
    };
  }

  interface BuildSpec {
    transition: WorkspaceTransition;
    status: BuildStatus;
    agents?: AgentInput[];
    error?: string;
  }

  interface Existing {
    workspaceId: string;
    name: string;
    builds: InsertedBuild[];
    latest: InsertedBuild;
  }

  /** A workspace of the owner with these builds (oldest first), and the chat bound to it and its latest build. */
  async function existing(
    w: World,
    builds: BuildSpec[],
    options: { deleted?: boolean } = {},
  ): Promise<Existing> {
    const ws = await insertWorkspace(db.pool, {
      ownerId: w.ownerId,
      templateId: w.templateId,
      deleted: options.deleted,
    });
    const inserted: InsertedBuild[] = [];
    for (const build of builds) {
      inserted.push(
        await insertBuild(db.pool, {
          workspaceId: ws.workspaceId,
          templateVersionId: w.activeVersionId,
          initiatorId: w.ownerId,
          ...build,
        }),
      );
    }
    const latest = inserted.at(-1)!;
    await db.pool.query('UPDATE chats SET workspace_id = $2, build_id = $3 WHERE id = $1', [
      w.chatId,
      ws.workspaceId,
      latest.buildId,
    ]);
    return { workspaceId: ws.workspaceId, name: ws.name, builds: inserted, latest };
  }

  /** Follows a job's promise so that a helper waiting for the job can stop as soon as the job has ended. */
  function track(job: Promise<CreateWorkspaceResult>) {
    const state: { settled: boolean; outcome?: string } = { settled: false };
    job.then(
      (result) => Object.assign(state, { settled: true, outcome: JSON.stringify(result) }),
      (error: unknown) => Object.assign(state, { settled: true, outcome: String(error) }),
    );
    return (what: string) => {
      if (state.settled) throw new Error(`the job ended before ${what}: ${state.outcome}`);
    };
  }

  /**
   * Plays the provisioner for the workspace the job creates: waits until the chat is bound to a workspace
   * other than `previousWorkspaceId` with build #1 and the job waits on that build, then attaches `agents`
   * (default: one connected, ready agent) and completes the build (with `error`, fails it).
   */
  async function provisionNew(
    t: StartContext,
    job: Promise<CreateWorkspaceResult>,
    chatId: string,
    options: { previousWorkspaceId?: string; agents?: AgentInput[]; error?: string; running?: boolean } = {},
  ) {
    const alive = track(job);
    // waitUntil, not waitFor: alive() throwing (the job has ended) ends the wait at once.
    const binding = await vi.waitUntil(
      async () => {
        alive('binding the chat to a new workspace');
        const b = await chatBinding(db, chatId);
        return b.workspace_id !== null && b.workspace_id !== options.previousWorkspaceId ? b : undefined;
      },
      { timeout: 5_000, interval: 10 },
    );
    const workspaceId = binding.workspace_id!;
    const build = await awaitBuild(db, workspaceId, 1);
    await t.waitingOn(topics.provisionerJob(build.job_id));
    if (options.running) {
      await startJob(db.pool, build.job_id);
      await t.waitForStage('build_running');
    }
    let agentIds: string[] = [];
    if (options.error === undefined) {
      agentIds = (await insertAgents(db.pool, build.job_id, options.agents ?? READY_AGENT)).agentIds;
    }
    await completeJob(db.pool, build.job_id, { error: options.error });
    return { workspaceId, build, binding, agentIds };
  }

  async function workspaceRow(workspaceId: string) {
    const { rows } = await db.pool.query<{
      id: string;
      owner_id: string;
      template_id: string;
      name: string;
      deleted: boolean;
    }>('SELECT id, owner_id, template_id, name, deleted FROM workspaces WHERE id = $1', [workspaceId]);
    expect(rows).toHaveLength(1);
    return rows[0]!;
  }

  describe('a chat without a workspace', () => {
    it('creates the workspace, its first build on the active version with resolved parameters, and binds the chat', async () => {
      const t = await context();
      const w = await world({
        parameters: [
          { name: 'region', defaultValue: 'eu-west-1' },
          { name: 'cpus', type: 'number', defaultValue: '2' },
          { name: 'image', required: true },
        ],
      });
      const job = createWorkspace(t.ctx, {
        ...w.payload,
        parameters: { image: 'ubuntu', cpus: '4', not_a_parameter: 'dropped' },
      });

      // The agent connects after the build, then runs its startup scripts: every stage is seen.
      const provisioned = await provisionNew(t, job, w.chatId, { running: true, agents: [{ name: 'dev' }] });
      const agentId = provisioned.agentIds[0]!;
      await t.waitingOn(topics.agent(agentId));
      await connectAgent(db.pool, agentId);
      await setAgentLifecycle(db.pool, agentId, 'starting');
      await t.waitForStage('agent_starting');
      await setAgentLifecycle(db.pool, agentId, 'ready');
      const result = created(await job);

      const workspace = await workspaceRow(provisioned.workspaceId);
      expect(result).toEqual({
        kind: 'create-workspace',
        ok: true,
        created: true,
        workspace_name: `${w.username}/${workspace.name}`,
        build_id: provisioned.build.id,
      });
      expect(workspace).toMatchObject({ owner_id: w.ownerId, template_id: w.templateId, deleted: false });
      expect(workspace.name).toMatch(new RegExp(`^${w.templateName}-[0-9a-f]{4}$`));
      expect(workspaceNameSchema.safeParse(workspace.name).success).toBe(true);

      const builds = await listBuilds(db, provisioned.workspaceId);
      expect(builds).toHaveLength(1);
      expect(builds[0]).toMatchObject({
        id: provisioned.build.id,
        build_number: 1,
        transition: 'start',
        template_version_id: w.activeVersionId,
        initiator_id: w.ownerId,
        job_status: 'succeeded',
      });
      // Provided values win over defaults; the active version's set only (not the old version's).
      expect(await buildParameters(db, provisioned.build.id)).toEqual({
        region: 'eu-west-1',
        cpus: '4',
        image: 'ubuntu',
      });
      expect(await chatBinding(db, w.chatId)).toEqual({
        workspace_id: provisioned.workspaceId,
        build_id: provisioned.build.id,
        agent_id: null,
      });

      expect(t.stages()).toEqual([
        'checking',
        'build_queued',
        'build_running',
        'build_succeeded',
        'agent_connecting',
        'agent_starting',
        'agent_ready',
      ]);
      // Once the workspace exists, every event names it.
      for (const event of t.events.slice(1)) expect(event.workspaceId).toBe(provisioned.workspaceId);
      expect(t.events.find((e) => e.stage === 'build_queued')?.data).toEqual({
        build_id: provisioned.build.id,
        build_number: 1,
        transition: 'start',
        // The only pending build of this test's database; no estimate without an earlier build.
        position: 1,
        pending: 1,
      });
    });

    it('uses the given name, and reports a failed first build with its build_id', async () => {
      const t = await context();
      const w = await world();
      const job = createWorkspace(t.ctx, { ...w.payload, name: 'my-dev' });
      const provisioned = await provisionNew(t, job, w.chatId, { error: 'terraform apply failed' });
      const result = createFailure(await job);

      expect(result).toEqual({
        kind: 'create-workspace',
        ok: false,
        error: 'workspace build failed: terraform apply failed',
        code: 'build_failed',
        is_error: false,
        build_id: provisioned.build.id,
      });
      expect((await workspaceRow(provisioned.workspaceId)).name).toBe('my-dev');
      // The chat stays bound to the workspace it got, as Coder's does.
      expect((await chatBinding(db, w.chatId)).workspace_id).toBe(provisioned.workspaceId);
    });

    it('writes the workspace, the build and the chat binding in one transaction', async () => {
      // The binding fails inside the transaction: the workspace and the build inserted before it go too.
      const t = await context({
        wrapStore: (store) =>
          withTransactionOverride(store, { bindChat: () => Promise.reject(new Error('boom')) }),
      });
      const w = await world({ parameters: [{ name: 'region', defaultValue: 'eu' }] });
      const before = await persistedState(db);

      await expect(createWorkspace(t.ctx, w.payload)).rejects.toThrow('boom');

      expect(await persistedState(db)).toEqual(before);
    });
  });

  describe("the chat's existing workspace (Coder's checkExistingWorkspace)", () => {
    it.each(['pending', 'running'] as const)(
      'a %s start build: waits for it, then already_exists with the build and no new workspace',
      async (status) => {
        const t = await context();
        const w = await world();
        const ex = await existing(w, [
          { transition: 'start', status: 'succeeded', agents: READY_AGENT },
          { transition: 'stop', status: 'succeeded' },
          { transition: 'start', status },
        ]);
        const before = await persistedState(db);

        const job = createWorkspace(t.ctx, w.payload);
        await t.waitingOn(topics.provisionerJob(ex.latest.jobId));
        await insertAgents(db.pool, ex.latest.jobId, READY_AGENT);
        await completeJob(db.pool, ex.latest.jobId);
        const result = created(await job);

        expect(result).toEqual({
          kind: 'create-workspace',
          ok: true,
          created: false,
          workspace_name: `${w.username}/${ex.name}`,
          status: 'already_exists',
          message: 'workspace build completed',
          build_id: ex.latest.buildId,
        });
        expect(await persistedState(db)).toEqual(before);
        expect(t.stages()).toContain('waiting_for_existing_build');
        const waiting = t.events.find((e) => e.stage === 'waiting_for_existing_build')!;
        expect(waiting.workspaceId).toBe(ex.workspaceId);
        expect(waiting.data).toMatchObject({ build_id: ex.latest.buildId, build_number: 3 });
      },
    );

    it('a build in flight that fails: "existing workspace build failed" with its build_id, not flagged', async () => {
      const t = await context();
      const w = await world();
      const ex = await existing(w, [
        { transition: 'start', status: 'succeeded', agents: READY_AGENT },
        { transition: 'stop', status: 'succeeded' },
        { transition: 'start', status: 'running' },
      ]);
      const before = await persistedState(db);

      const job = createWorkspace(t.ctx, w.payload);
      await t.waitingOn(topics.provisionerJob(ex.latest.jobId));
      await completeJob(db.pool, ex.latest.jobId, { error: 'out of capacity' });
      const result = createFailure(await job);

      expect(result).toEqual({
        kind: 'create-workspace',
        ok: false,
        error: 'existing workspace build failed: out of capacity',
        code: 'build_failed',
        is_error: false,
        build_id: ex.latest.buildId,
      });
      // Coder reports it and creates nothing.
      expect(await persistedState(db)).toEqual(before);
    });

    it('a stop in flight: waits for it, then reports the workspace stopped without starting it', async () => {
      const t = await context();
      const w = await world();
      const ex = await existing(w, [
        { transition: 'start', status: 'succeeded', agents: READY_AGENT },
        { transition: 'stop', status: 'running' },
      ]);
      const before = await persistedState(db);

      const job = createWorkspace(t.ctx, w.payload);
      await t.waitingOn(topics.provisionerJob(ex.latest.jobId));
      await completeJob(db.pool, ex.latest.jobId);
      const result = created(await job);

      expect(result).toEqual({
        kind: 'create-workspace',
        ok: true,
        created: false,
        workspace_name: `${w.username}/${ex.name}`,
        status: 'stopped',
        message: STOPPED_MESSAGE,
      });
      expect(await persistedState(db)).toEqual(before);
      expect(t.stages()).toContain('waiting_for_existing_build');
    });

    it('a stopped workspace: status stopped with the start_workspace hint, and never starts it', async () => {
      const t = await context();
      const w = await world();
      const ex = await existing(w, [
        { transition: 'start', status: 'succeeded', agents: READY_AGENT },
        { transition: 'stop', status: 'succeeded' },
      ]);
      const before = await persistedState(db);

      const result = created(await createWorkspace(t.ctx, w.payload));

      expect(result).toEqual({
        kind: 'create-workspace',
        ok: true,
        created: false,
        workspace_name: `${w.username}/${ex.name}`,
        status: 'stopped',
        message: 'workspace is stopped; use start_workspace to start it',
      });
      // No build (start or otherwise), no new workspace, the binding as it was; nothing waited on.
      expect(await persistedState(db)).toEqual(before);
      expect(t.waits).toEqual([]);
    });

    it('running with a connected agent: already_exists, "recently connected", nothing new', async () => {
      const t = await context();
      const w = await world();
      const ex = await existing(w, [{ transition: 'start', status: 'succeeded', agents: READY_AGENT }]);
      const before = await persistedState(db);

      const result = created(await createWorkspace(t.ctx, w.payload));

      expect(result).toEqual({
        kind: 'create-workspace',
        ok: true,
        created: false,
        workspace_name: `${w.username}/${ex.name}`,
        status: 'already_exists',
        message: RUNNING_CONNECTED,
      });
      expect(await persistedState(db)).toEqual(before);
    });

    it('running with an agent still connecting: already_exists after waiting for its readiness', async () => {
      const t = await context();
      const w = await world();
      const ex = await existing(w, [
        { transition: 'start', status: 'succeeded', agents: [{ name: 'dev', connected: false }] },
      ]);
      const agentId = ex.latest.agentIds[0]!;
      const before = await persistedState(db);

      const job = createWorkspace(t.ctx, w.payload);
      await t.waitingOn(topics.agent(agentId));
      expect(t.stages()).toContain('agent_connecting');
      await connectAgent(db.pool, agentId);
      await setAgentLifecycle(db.pool, agentId, 'starting');
      await t.waitForStage('agent_starting');
      await setAgentLifecycle(db.pool, agentId, 'ready');
      const result = created(await job);

      expect(result).toEqual({
        kind: 'create-workspace',
        ok: true,
        created: false,
        workspace_name: `${w.username}/${ex.name}`,
        status: 'already_exists',
        message: RUNNING_CONNECTING,
      });
      expect(t.stages()).toEqual(
        expect.arrayContaining(['agent_connecting', 'agent_starting', 'agent_ready']),
      );
      expect(await persistedState(db)).toEqual(before);
    });

    it('running with an agent still connecting that never connects: already_exists with not_ready', async () => {
      const t = await context({ timeouts: { agentConnectTimeoutMs: 300 } });
      const w = await world();
      await existing(w, [{ transition: 'start', status: 'succeeded', agents: [{ name: 'dev' }] }]);

      const result = created(await createWorkspace(t.ctx, w.payload));

      expect(result).toMatchObject({
        kind: 'create-workspace',
        ok: true,
        created: false,
        status: 'already_exists',
        message: RUNNING_CONNECTING,
        agent_status: 'not_ready',
      });
      expect(result.agent_error).toContain('did not connect');
    });

    describe('an unusable workspace: a new one is created and the chat rebound, the old one untouched', () => {
      const cases: {
        name: string;
        builds: BuildSpec[];
        deleted?: boolean;
        /** Runs after the builds exist (before the job). */
        then?: (ex: Existing) => Promise<void>;
      }[] = [
        {
          name: 'running with a disconnected agent',
          builds: [{ transition: 'start', status: 'succeeded', agents: READY_AGENT }],
          then: (ex) => disconnectAgent(db.pool, ex.latest.agentIds[0]!),
        },
        {
          name: 'running with an agent past its connection timeout',
          builds: [{ transition: 'start', status: 'succeeded', agents: [{ name: 'dev' }] }],
          then: async (ex) => {
            await db.pool.query(
              `UPDATE workspace_agents SET connection_timeout_seconds = 1, created_at = now() - interval '1 minute'
                WHERE id = $1`,
              [ex.latest.agentIds[0]],
            );
          },
        },
        {
          name: 'running without agents',
          builds: [{ transition: 'start', status: 'succeeded', agents: [] }],
        },
        {
          name: 'deleted',
          builds: [
            { transition: 'start', status: 'succeeded', agents: READY_AGENT },
            { transition: 'delete', status: 'succeeded' },
          ],
          deleted: true,
        },
        {
          name: 'a failed latest build',
          builds: [
            { transition: 'start', status: 'succeeded', agents: READY_AGENT },
            { transition: 'stop', status: 'succeeded' },
            { transition: 'start', status: 'failed', error: 'boom' },
          ],
        },
        {
          name: 'a canceled latest build',
          builds: [
            { transition: 'start', status: 'succeeded', agents: READY_AGENT },
            { transition: 'stop', status: 'succeeded' },
            { transition: 'start', status: 'canceled' },
          ],
        },
        {
          name: 'a latest build being canceled',
          builds: [
            { transition: 'start', status: 'succeeded', agents: READY_AGENT },
            { transition: 'stop', status: 'succeeded' },
            { transition: 'start', status: 'canceling' },
          ],
        },
      ];

      it.each(cases)('$name', async ({ builds, deleted, then }) => {
        const t = await context();
        const w = await world({ parameters: [{ name: 'region', defaultValue: 'eu' }] });
        const ex = await existing(w, builds, { deleted });
        await then?.(ex);
        const old = await workspaceSnapshot(db, ex.workspaceId);
        const before = await persistedState(db);

        const job = createWorkspace(t.ctx, w.payload);
        const provisioned = await provisionNew(t, job, w.chatId, { previousWorkspaceId: ex.workspaceId });
        const result = created(await job);

        expect(provisioned.workspaceId).not.toBe(ex.workspaceId);
        const workspace = await workspaceRow(provisioned.workspaceId);
        expect(result).toEqual({
          kind: 'create-workspace',
          ok: true,
          created: true,
          workspace_name: `${w.username}/${workspace.name}`,
          build_id: provisioned.build.id,
        });
        expect(await chatBinding(db, w.chatId)).toEqual({
          workspace_id: provisioned.workspaceId,
          build_id: provisioned.build.id,
          agent_id: null,
        });
        expect(await buildParameters(db, provisioned.build.id)).toEqual({ region: 'eu' });
        // Exactly one new workspace with one build; the old workspace and its builds as they were.
        const after = await persistedState(db);
        expect(after.workspaces).toHaveLength(before.workspaces.length + 1);
        expect(after.builds).toHaveLength(before.builds.length + 1);
        expect(await workspaceSnapshot(db, ex.workspaceId)).toEqual(old);
      });

      it('a delete in flight: waits for it, then creates anew', async () => {
        const t = await context();
        const w = await world();
        const ex = await existing(w, [
          { transition: 'start', status: 'succeeded', agents: READY_AGENT },
          { transition: 'delete', status: 'running' },
        ]);

        const job = createWorkspace(t.ctx, w.payload);
        await t.waitingOn(topics.provisionerJob(ex.latest.jobId));
        await completeJob(db.pool, ex.latest.jobId);
        const provisioned = await provisionNew(t, job, w.chatId, { previousWorkspaceId: ex.workspaceId });
        const result = created(await job);

        expect(result).toMatchObject({
          kind: 'create-workspace',
          ok: true,
          created: true,
          build_id: provisioned.build.id,
        });
        expect((await chatBinding(db, w.chatId)).workspace_id).toBe(provisioned.workspaceId);
      });
    });
  });

  describe('who may create', () => {
    it('a sub-chat is forbidden, for create and for start alike, with a message about root chats', async () => {
      const t = await context();
      const w = await world();
      const ex = await existing(w, [{ transition: 'start', status: 'succeeded', agents: READY_AGENT }]);
      const { chatId: subChatId } = await insertChat(db.pool, {
        ownerId: w.ownerId,
        parentChatId: w.chatId,
        workspaceId: ex.workspaceId,
        buildId: ex.latest.buildId,
      });
      const { chatId: bareSubChatId } = await insertChat(db.pool, {
        ownerId: w.ownerId,
        parentChatId: w.chatId,
      });
      const before = await persistedState(db);

      for (const chatId of [subChatId, bareSubChatId]) {
        const create = createFailure(await createWorkspace(t.ctx, { ...w.payload, chatId }));
        expect(create).toMatchObject({ code: 'forbidden', is_error: true });
        expect(create.error).toContain('only root chats can start or create workspaces');
      }
      const start = await startWorkspace(t.ctx, {
        chatId: subChatId,
        ownerId: w.ownerId,
        workspaceId: ex.workspaceId,
      });
      expect(start).toMatchObject({ code: 'forbidden', is_error: true });
      expect((start as { error: string }).error).toContain('root chats');
      expect(await persistedState(db)).toEqual(before);
    });

    it('an owner who does not own the chat is forbidden', async () => {
      const t = await context();
      const w = await world();
      const other = await insertUser(db.pool);
      const before = await persistedState(db);

      const result = createFailure(await createWorkspace(t.ctx, { ...w.payload, ownerId: other.userId }));

      expect(result).toEqual({
        kind: 'create-workspace',
        ok: false,
        error: `user ${other.userId} does not own chat ${w.chatId}`,
        code: 'forbidden',
        is_error: true,
      });
      expect(await persistedState(db)).toEqual(before);
    });

    it('an owner who is not active is forbidden', async () => {
      const t = await context();
      const w = await world();
      await db.pool.query(`UPDATE users SET status = 'suspended' WHERE id = $1`, [w.ownerId]);
      const before = await persistedState(db);

      const result = createFailure(await createWorkspace(t.ctx, w.payload));

      expect(result).toMatchObject({ code: 'forbidden', is_error: true });
      expect(await persistedState(db)).toEqual(before);
    });

    it("a chat bound to someone else's workspace is forbidden", async () => {
      const t = await context();
      const w = await world();
      const other = await insertUser(db.pool);
      const theirs = await insertWorkspace(db.pool, { ownerId: other.userId, templateId: w.templateId });
      await db.pool.query('UPDATE chats SET workspace_id = $2 WHERE id = $1', [w.chatId, theirs.workspaceId]);
      const before = await persistedState(db);

      const result = createFailure(await createWorkspace(t.ctx, w.payload));

      expect(result).toMatchObject({ code: 'forbidden', is_error: true });
      expect(await persistedState(db)).toEqual(before);
    });

    it('a chat that does not exist: invalid_payload "load chat: …"', async () => {
      const t = await context();
      const w = await world();
      const chatId = '00000000-0000-4000-8000-000000000000';

      const result = createFailure(await createWorkspace(t.ctx, { ...w.payload, chatId }));

      expect(result).toEqual({
        kind: 'create-workspace',
        ok: false,
        error: `load chat: chat ${chatId} not found`,
        code: 'invalid_payload',
        is_error: true,
      });
    });
  });

  describe('template and parameters', () => {
    it('a template that does not exist: invalid_payload naming it, nothing persisted', async () => {
      const t = await context();
      const w = await world();
      const templateId = '00000000-0000-4000-8000-0000000000aa';
      const before = await persistedState(db);

      const result = createFailure(await createWorkspace(t.ctx, { ...w.payload, templateId }));

      expect(result).toEqual({
        kind: 'create-workspace',
        ok: false,
        error: `template ${templateId} not found`,
        code: 'invalid_payload',
        is_error: true,
      });
      expect(await persistedState(db)).toEqual(before);
    });

    it('several required parameters missing: invalid_parameters naming each, with template_id, nothing persisted', async () => {
      const t = await context();
      const w = await world({
        parameters: [
          { name: 'region', required: true },
          { name: 'size', defaultValue: 'small', options: [{ name: 'Small', value: 'small' }] },
          { name: 'image', required: true },
          { name: 'zone', required: true },
        ],
      });
      const before = await persistedState(db);

      const result = createFailure(await createWorkspace(t.ctx, { ...w.payload, parameters: { zone: 'a' } }));

      expect(result).toEqual({
        kind: 'create-workspace',
        ok: false,
        error: 'Unable to validate parameters "region", "image"',
        code: 'invalid_parameters',
        is_error: false,
        template_id: w.templateId,
        detail:
          'Parameter "region" is required but not provided\nParameter "image" is required but not provided',
        validations: [
          { field: 'region', detail: 'Parameter "region" is required but not provided' },
          { field: 'image', detail: 'Parameter "image" is required but not provided' },
        ],
      });
      expect(await persistedState(db)).toEqual(before);
      expect(t.waits).toEqual([]);
    });

    it('a missing required parameter and an invalid value are both named', async () => {
      const t = await context();
      const w = await world({
        parameters: [
          { name: 'region', required: true },
          {
            name: 'size',
            defaultValue: 'small',
            options: [
              { name: 'Small', value: 'small' },
              { name: 'Large', value: 'large' },
            ],
          },
        ],
      });
      const before = await persistedState(db);

      const result = createFailure(
        await createWorkspace(t.ctx, { ...w.payload, parameters: { size: 'huge' } }),
      );

      expect(result.code).toBe('invalid_parameters');
      expect(result.template_id).toBe(w.templateId);
      expect(result.validations?.map((v) => v.field)).toEqual(['region', 'size']);
      expect(result.validations?.[1]?.detail).toContain('size');
      expect(await persistedState(db)).toEqual(before);
    });
  });

  describe('workspace names', () => {
    it('a given name the owner already uses (in any case): a failure naming it, nothing persisted', async () => {
      const t = await context();
      const w = await world();
      await insertWorkspace(db.pool, { ownerId: w.ownerId, templateId: w.templateId, name: 'dev-box' });
      const before = await persistedState(db);

      const result = createFailure(await createWorkspace(t.ctx, { ...w.payload, name: 'Dev-Box' }));

      expect(result).toMatchObject({ code: 'invalid_payload', is_error: true });
      expect(result.error).toBe('Workspace "Dev-Box" already exists.');
      expect(await persistedState(db)).toEqual(before);
    });

    it('a given name another owner uses is fine', async () => {
      const t = await context();
      const w = await world();
      const other = await insertUser(db.pool);
      await insertWorkspace(db.pool, { ownerId: other.userId, templateId: w.templateId, name: 'dev-box' });

      const job = createWorkspace(t.ctx, { ...w.payload, name: 'dev-box' });
      const provisioned = await provisionNew(t, job, w.chatId);
      const result = created(await job);

      expect(result).toEqual({
        kind: 'create-workspace',
        ok: true,
        created: true,
        workspace_name: `${w.username}/dev-box`,
        build_id: provisioned.build.id,
      });
      expect(await workspaceRow(provisioned.workspaceId)).toMatchObject({
        owner_id: w.ownerId,
        name: 'dev-box',
      });
    });

    it('the name of a deleted workspace can be used again, even when the chat was bound to it', async () => {
      const t = await context();
      const w = await world();
      const ex = await existing(
        w,
        [
          { transition: 'start', status: 'succeeded', agents: READY_AGENT },
          { transition: 'delete', status: 'succeeded' },
        ],
        { deleted: true },
      );

      const job = createWorkspace(t.ctx, { ...w.payload, name: ex.name });
      const provisioned = await provisionNew(t, job, w.chatId, { previousWorkspaceId: ex.workspaceId });
      const result = created(await job);

      expect(result).toMatchObject({
        kind: 'create-workspace',
        ok: true,
        created: true,
        workspace_name: `${w.username}/${ex.name}`,
      });
      expect(await workspaceRow(provisioned.workspaceId)).toMatchObject({ name: ex.name, deleted: false });
      expect(await workspaceRow(ex.workspaceId)).toMatchObject({ name: ex.name, deleted: true });
    });

    it('a generated name that the owner already uses is drawn again', async () => {
      const t = await context();
      const w = await world({ templateName: `Tpl_${Date.now().toString(36)}` });
      const base = generateName(w.templateName).replace(/-[0-9a-f]{4}$/, '');
      // Another owner's name does not count; the owner's own does (case-insensitively).
      await insertWorkspace(db.pool, { ownerId: w.ownerId, templateId: w.templateId, name: `${base}-ABCD` });
      forcedDraws.push('abcd', 'abcd', '1234');

      const job = createWorkspace(t.ctx, w.payload);
      const provisioned = await provisionNew(t, job, w.chatId);
      const result = created(await job);

      expect(result.workspace_name).toBe(`${w.username}/${base}-1234`);
      expect((await workspaceRow(provisioned.workspaceId)).name).toBe(`${base}-1234`);
      expect(forcedDraws).toEqual([]);
    });

    it('a name taken between the check and the insert (by another chat): a given name is reported, a generated one drawn again', async () => {
      // The unique index is the last word: pretend the check saw the name free, as a concurrent create would.
      const t = await context({
        wrapStore: (store) => withTransactionOverride(store, { workspaceNameTaken: async () => false }),
      });
      const w = await world();
      await insertWorkspace(db.pool, { ownerId: w.ownerId, templateId: w.templateId, name: 'taken' });
      const base = generateName(w.templateName).replace(/-[0-9a-f]{4}$/, '');
      await insertWorkspace(db.pool, { ownerId: w.ownerId, templateId: w.templateId, name: `${base}-0001` });
      const before = await persistedState(db);

      const given = createFailure(await createWorkspace(t.ctx, { ...w.payload, name: 'TAKEN' }));
      expect(given.error).toBe('Workspace "TAKEN" already exists.');
      expect(await persistedState(db)).toEqual(before);

      forcedDraws.push('0001', '0002');
      const job = createWorkspace(t.ctx, w.payload);
      const provisioned = await provisionNew(t, job, w.chatId);
      expect(created(await job).workspace_name).toBe(`${w.username}/${base}-0002`);
      expect(await listBuilds(db, provisioned.workspaceId)).toHaveLength(1);
    });

    it('generated names are unique per owner across many creates', async () => {
      const t = await context();
      const w = await world();
      const names: string[] = [];
      for (let i = 0; i < 5; i++) {
        const { chatId } = await insertChat(db.pool, { ownerId: w.ownerId });
        const job = createWorkspace(t.ctx, { ...w.payload, chatId });
        const provisioned = await provisionNew(t, job, chatId);
        created(await job);
        names.push((await workspaceRow(provisioned.workspaceId)).name);
      }
      expect(new Set(names.map((n) => n.toLowerCase())).size).toBe(5);
      for (const name of names) expect(workspaceNameSchema.safeParse(name).success).toBe(true);
    });
  });
});

describe('generateName', () => {
  it.each([
    ['dev', /^dev-[0-9a-f]{4}$/],
    ['My Template', /^my-template-[0-9a-f]{4}$/],
    ['snake__case--name', /^snake-case-name-[0-9a-f]{4}$/],
    ['--edges--', /^edges-[0-9a-f]{4}$/],
    ['Ünïcode', /^n-code-[0-9a-f]{4}$/],
    ['___', /^workspace-[0-9a-f]{4}$/],
    ['', /^workspace-[0-9a-f]{4}$/],
    ['a'.repeat(26) + '-b' + 'c'.repeat(20), new RegExp(`^${'a'.repeat(26)}-[0-9a-f]{4}$`)],
    ['x'.repeat(100), new RegExp(`^${'x'.repeat(27)}-[0-9a-f]{4}$`)],
  ])('%j → a valid Coder name (%s)', (templateName, expected) => {
    const name = generateName(templateName);
    expect(name).toMatch(expected);
    expect(name.length).toBeLessThanOrEqual(32);
    expect(workspaceNameSchema.safeParse(name).success).toBe(true);
  });

  it('draws a different suffix each time', () => {
    const names = new Set(Array.from({ length: 50 }, () => generateName('dev')));
    expect(names.size).toBeGreaterThan(40);
  });
});

/** Wraps the store so that its transactions' methods can be replaced (the rest stays real). */
function withTransactionOverride(
  store: WorkspaceStore,
  overrides: Partial<BuildTransaction>,
): WorkspaceStore {
  return new Proxy(store, {
    get(target, property, receiver) {
      if (property === 'transaction') {
        return <T>(fn: (tx: BuildTransaction) => Promise<T>) =>
          target.transaction((tx) =>
            fn(
              new Proxy(tx, {
                get(inner, name, innerReceiver) {
                  if (name in overrides) return overrides[name as keyof BuildTransaction];
                  const value = Reflect.get(inner, name, innerReceiver) as unknown;
                  return typeof value === 'function'
                    ? (value as (...a: unknown[]) => unknown).bind(inner)
                    : value;
                },
              }),
            ),
          );
      }
      const value = Reflect.get(target, property, receiver) as unknown;
      return typeof value === 'function' ? (value as (...a: unknown[]) => unknown).bind(target) : value;
    },
  });
}

describe('createWorkspace through the producer and a worker', () => {
  let h: WorkerHarness;

  beforeEach(async () => {
    h = await WorkerHarness.create();
  });

  afterEach(async () => {
    await h.close();
  });

  it('a chat without a workspace: created, with one result event that names the new workspace', async () => {
    await h.startWorker();
    const owner = await h.seedOwner();
    const { chatId } = await insertChat(h.db.pool, { ownerId: owner.ownerId });

    const { jobId, deduplicated } = await h.producer.createWorkspace({
      chatId,
      ownerId: owner.ownerId,
      templateId: owner.templateId,
    });
    const result = await h.producer.waitForResult(jobId, { timeoutMs: WAIT_MS });

    expect(deduplicated).toBe(false);
    const { rows } = await h.db.pool.query<{ workspace_id: string; build_id: string; name: string }>(
      `SELECT c.workspace_id, c.build_id, w.name FROM chats c JOIN workspaces w ON w.id = c.workspace_id
        WHERE c.id = $1`,
      [chatId],
    );
    expect(result).toEqual({
      kind: 'create-workspace',
      ok: true,
      created: true,
      workspace_name: `${owner.username}/${rows[0]!.name}`,
      build_id: rows[0]!.build_id,
    });
    await h.waitForState(jobId, ['completed']);
    const events = await h.jobEvents(chatId, jobId);
    expect(events.filter((e) => e.type === 'result')).toHaveLength(1);
    expect(events.at(-1)).toMatchObject({
      type: 'result',
      stage: 'completed',
      workspaceId: rows[0]!.workspace_id,
    });
    expect(stagesOf(events)).toEqual(
      expect.arrayContaining([
        'queued',
        'lock_acquired',
        'checking',
        'build_queued',
        'build_succeeded',
        'agent_ready',
      ]),
    );
  });

  it('a chat with a stopped workspace: the job completes with the stopped result and one result event naming the workspace', async () => {
    await h.startWorker();
    const ws = await h.seedStoppedWorkspace();
    const { rows } = await h.db.pool.query<{ template_id: string }>(
      'SELECT template_id FROM workspaces WHERE id = $1',
      [ws.workspaceId],
    );

    const { jobId } = await h.producer.createWorkspace({
      chatId: ws.chatId,
      ownerId: ws.ownerId,
      templateId: rows[0]!.template_id,
    });
    const result = await h.producer.waitForResult(jobId, { timeoutMs: WAIT_MS });

    expect(result).toMatchObject({
      kind: 'create-workspace',
      ok: true,
      created: false,
      status: 'stopped',
      message: STOPPED_MESSAGE,
    });
    await h.waitForState(jobId, ['completed']);
    const events = await h.jobEvents(ws.chatId, jobId);
    const results = events.filter((e) => e.type === 'result');
    expect(results).toHaveLength(1);
    // The job knew the workspace, so its result names it (and reaches the workspace channel).
    expect(results[0]!.workspaceId).toBe(ws.workspaceId);
    expect(await h.newStartBuilds()).toEqual([]);
  });
});
