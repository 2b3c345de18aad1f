import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { insertAgents } from '../../src/cli/fixtures.js';
import { completeJob } from '../helpers/fixtures.js';
import { formatSeedResult, seed, type SeedResult } from '../../src/cli/seed.js';
import { isFailure, type StartWorkspaceResult } from '../../src/shared/contract.js';
import { PgWorkspaceStore } from '../../src/worker/pg-store.js';
import { topics } from '../../src/worker/ports.js';
import { startWorkspace } from '../../src/jobs/start-workspace/start-workspace.js';
import { createTestDatabase, type TestDatabase } from '../helpers/database.js';
import { awaitBuild, createStartContext, listBuilds, type StartContext } from '../helpers/start-context.js';

describe('seed', () => {
  let db: TestDatabase;

  beforeEach(async () => {
    db = await createTestDatabase();
  });

  afterEach(async () => {
    await db.drop();
  });

  interface LatestBuild {
    build_id: string;
    build_number: number;
    transition: string;
    job_status: string;
    template_version_id: string;
    initiator_id: string;
  }

  async function latestBuild(workspaceId: string): Promise<LatestBuild> {
    const { rows } = await db.pool.query<LatestBuild>(
      `SELECT b.id AS build_id, b.build_number, b.transition, j.job_status, b.template_version_id, b.initiator_id
         FROM workspace_builds b JOIN provisioner_jobs j ON j.id = b.job_id
        WHERE b.workspace_id = $1 ORDER BY b.build_number DESC LIMIT 1`,
      [workspaceId],
    );
    expect(rows).toHaveLength(1);
    return rows[0]!;
  }

  async function chatRow(chatId: string) {
    const { rows } = await db.pool.query<{
      owner_id: string;
      workspace_id: string | null;
      build_id: string | null;
    }>('SELECT owner_id, workspace_id, build_id FROM chats WHERE id = $1', [chatId]);
    expect(rows).toHaveLength(1);
    return rows[0]!;
  }

  async function workspaceRow(workspaceId: string) {
    const { rows } = await db.pool.query<{
      owner_id: string;
      template_id: string;
      name: string;
      deleted: boolean;
      automatic_updates: string;
    }>('SELECT owner_id, template_id, name, deleted, automatic_updates FROM workspaces WHERE id = $1', [
      workspaceId,
    ]);
    expect(rows).toHaveLength(1);
    return rows[0]!;
  }

  async function agentsOf(buildId: string) {
    const { rows } = await db.pool.query<{
      name: string;
      lifecycle_state: string;
      first_connected_at: Date | null;
      last_connected_at: Date | null;
      disconnected_at: Date | null;
    }>(
      `SELECT a.name, a.lifecycle_state, a.first_connected_at, a.last_connected_at, a.disconnected_at
         FROM workspace_agents a
         JOIN workspace_resources r ON r.id = a.resource_id
         JOIN workspace_builds b ON b.job_id = r.job_id
        WHERE b.id = $1`,
      [buildId],
    );
    return rows;
  }

  async function parametersOf(versionId: string) {
    const { rows } = await db.pool.query<{
      name: string;
      required: boolean;
      default_value: string;
      options: unknown;
    }>(
      `SELECT name, required, default_value, options FROM template_version_parameters
        WHERE template_version_id = $1 ORDER BY display_order, name`,
      [versionId],
    );
    return rows;
  }

  async function buildParameters(buildId: string): Promise<Record<string, string>> {
    const { rows } = await db.pool.query<{ name: string; value: string }>(
      'SELECT name, value FROM workspace_build_parameters WHERE workspace_build_id = $1',
      [buildId],
    );
    return Object.fromEntries(rows.map((r) => [r.name, r.value]));
  }

  function allIds(r: SeedResult): string[] {
    return [
      r.user.id,
      ...Object.values(r.templates).flatMap((t) => [t.id, ...t.versionIds]),
      ...Object.values(r.chats).flatMap((c) => [c.chatId, ...(c.workspaceId ? [c.workspaceId] : [])]),
    ];
  }

  function allNames(r: SeedResult): string[] {
    return [
      r.user.username,
      ...Object.values(r.templates).map((t) => t.name),
      ...Object.values(r.chats).flatMap((c) => (c.workspaceName ? [c.workspaceName] : [])),
    ];
  }

  it('seeding twice gives two independent sets with distinct ids and names', async () => {
    const first = await seed(db.pool);
    const second = await seed(db.pool);

    expect(first.suffix).not.toBe(second.suffix);
    const ids = [...allIds(first), ...allIds(second)];
    expect(new Set(ids).size).toBe(ids.length);
    const names = [...allNames(first), ...allNames(second)];
    expect(new Set(names).size).toBe(names.length);
    expect(first.templates.dev.name).toBe(`dev-${first.suffix}`);

    // Nothing of one set points into the other.
    for (const [a, b] of [
      [first, second],
      [second, first],
    ] as const) {
      const foreign = new Set(allIds(b));
      for (const scenario of Object.values(a.chats)) {
        const chat = await chatRow(scenario.chatId);
        expect(chat.owner_id).toBe(a.user.id);
        if (chat.workspace_id) expect(foreign.has(chat.workspace_id)).toBe(false);
        expect(foreign.has(scenario.templateId)).toBe(false);
      }
    }

    const { rows } = await db.pool.query<{ users: number; templates: number; chats: number }>(
      `SELECT (SELECT count(*)::int FROM users) AS users, (SELECT count(*)::int FROM templates) AS templates,
              (SELECT count(*)::int FROM chats) AS chats`,
    );
    expect(rows[0]).toEqual({ users: 2, templates: 8, chats: 14 });
  });

  it('every scenario is in the state it claims', async () => {
    const r = await seed(db.pool);
    const owner = r.user.id;
    const { dev, autoUpdate, manualUpdate, newerVersion } = r.templates;

    // Every scenario: the chat belongs to the owner and is bound to its workspace and latest build.
    for (const scenario of Object.values(r.chats)) {
      expect(scenario.ownerId).toBe(owner);
      const chat = await chatRow(scenario.chatId);
      expect(chat.owner_id).toBe(owner);
      expect(chat.workspace_id).toBe(scenario.workspaceId);
      if (scenario.workspaceId) {
        const ws = await workspaceRow(scenario.workspaceId);
        expect(ws).toMatchObject({ owner_id: owner, template_id: scenario.templateId, deleted: false });
        expect(ws.name).toBe(scenario.workspaceName);
        expect(chat.build_id).toBe((await latestBuild(scenario.workspaceId)).build_id);
      } else {
        expect(chat.build_id).toBeNull();
      }
      expect(scenario.commands[0]).toBe(`workspace-jobs enqueue start --chat ${scenario.chatId} --wait`);
    }

    // Templates.
    expect(dev).toMatchObject({ requireActiveVersion: false, activeVersionId: dev.versionIds[0] });
    expect(dev.versionIds).toHaveLength(1);
    for (const t of [autoUpdate, manualUpdate, newerVersion]) {
      expect(t.versionIds).toHaveLength(2);
      expect(t.activeVersionId).toBe(t.versionIds[1]);
    }
    const { rows: templates } = await db.pool.query<{
      id: string;
      active_version_id: string;
      require_active_version: boolean;
    }>('SELECT id, active_version_id, require_active_version FROM templates');
    const byId = new Map(templates.map((t) => [t.id, t]));
    for (const t of Object.values(r.templates)) {
      expect(byId.get(t.id)).toEqual({
        id: t.id,
        active_version_id: t.activeVersionId,
        require_active_version: t.requireActiveVersion,
      });
    }
    expect(autoUpdate.requireActiveVersion).toBe(true);
    expect(manualUpdate.requireActiveVersion).toBe(true);
    expect(newerVersion.requireActiveVersion).toBe(false);
    // The auto-update template's new parameter has a default; the manual one's is required, no default.
    const autoV2 = await parametersOf(autoUpdate.versionIds[1]!);
    const added = autoV2.filter((p) => !['cpu'].includes(p.name));
    expect(added).toHaveLength(1);
    expect(added[0]).toMatchObject({ required: false });
    expect(added[0]!.default_value).not.toBe('');
    const manualV2 = await parametersOf(manualUpdate.versionIds[1]!);
    expect(manualV2.find((p) => p.name === 'region')).toMatchObject({
      required: true,
      default_value: '',
      options: [
        { name: 'us-east-1', value: 'us-east-1' },
        { name: 'eu-west-1', value: 'eu-west-1' },
      ],
    });
    expect((await parametersOf(manualUpdate.versionIds[0]!)).map((p) => p.name)).not.toContain('region');

    // (a) stopped: latest build succeeded stop.
    const stopped = r.chats.stopped;
    expect(await latestBuild(stopped.workspaceId!)).toMatchObject({
      transition: 'stop',
      job_status: 'succeeded',
      template_version_id: dev.versionIds[0],
      initiator_id: owner,
    });

    // (b) running: latest build succeeded start, its agent connected and ready.
    const running = await latestBuild(r.chats.running.workspaceId!);
    expect(running).toMatchObject({ transition: 'start', job_status: 'succeeded' });
    const agents = await agentsOf(running.build_id);
    expect(agents).toHaveLength(1);
    expect(agents[0]).toMatchObject({ lifecycle_state: 'ready', disconnected_at: null });
    expect(agents[0]!.first_connected_at).not.toBeNull();
    expect(agents[0]!.last_connected_at).not.toBeNull();

    // (c) no workspace; the create command names a template.
    expect(r.chats.noWorkspace.workspaceId).toBeNull();
    expect(r.chats.noWorkspace.commands).toContain(
      `workspace-jobs enqueue create --chat ${r.chats.noWorkspace.chatId} --template ${dev.id} --wait`,
    );

    // (d) being built: latest build is a pending start, no resources yet.
    const building = await latestBuild(r.chats.building.workspaceId!);
    expect(building).toMatchObject({ transition: 'start', job_status: 'pending' });
    expect(await agentsOf(building.build_id)).toHaveLength(0);
    const { rows: jobInput } = await db.pool.query<{ input: unknown }>(
      'SELECT j.input FROM provisioner_jobs j JOIN workspace_builds b ON b.job_id = j.id WHERE b.id = $1',
      [building.build_id],
    );
    expect(jobInput[0]!.input).toEqual({ workspace_build_id: building.build_id });

    // (e), (f), (g): stopped on v1 of a template whose active version is v2.
    for (const [key, template, automaticUpdates] of [
      ['autoUpdate', autoUpdate, 'never'],
      ['manualUpdate', manualUpdate, 'never'],
      ['automaticUpdates', newerVersion, 'always'],
    ] as const) {
      const scenario = r.chats[key];
      expect(scenario.templateId).toBe(template.id);
      const latest = await latestBuild(scenario.workspaceId!);
      expect(latest).toMatchObject({
        transition: 'stop',
        job_status: 'succeeded',
        template_version_id: template.versionIds[0],
      });
      expect(latest.template_version_id).not.toBe(template.activeVersionId);
      expect((await workspaceRow(scenario.workspaceId!)).automatic_updates).toBe(automaticUpdates);
      // The stop build stores v1's full parameter set.
      expect(await buildParameters(latest.build_id)).toEqual({ cpu: '2' });
    }
    expect(r.chats.manualUpdate.commands).toContain(
      `workspace-jobs enqueue start --chat ${r.chats.manualUpdate.chatId} --param region=eu-west-1 --wait`,
    );

    // Every build's provisioner job names its build.
    const { rows: mismatched } = await db.pool.query(
      `SELECT b.id FROM workspace_builds b JOIN provisioner_jobs j ON j.id = b.job_id
        WHERE j.input->>'workspace_build_id' IS DISTINCT FROM b.id::text`,
    );
    expect(mismatched).toEqual([]);
  });

  it('the history builds took time › a start or stop reads an estimate of seconds, not 0 ms', async () => {
    const r = await seed(db.pool);
    const store = new PgWorkspaceStore(db.pool);
    // The demo's waiting start asks for its pending build's estimate; every template's other builds ask too.
    const pending = (await store.getBuild((await latestBuild(r.chats.building.workspaceId!)).build_id))!;
    expect(pending.jobStatus).toBe('pending');
    for (const template of Object.values(r.templates)) {
      for (const transition of ['start', 'stop'] as const) {
        const estimate = await store.getBuildEstimate({
          ...pending,
          templateVersionId: template.activeVersionId,
          transition,
        });
        expect(estimate?.build_ms).toBeGreaterThanOrEqual(20_000);
        expect(estimate?.build_ms).toBeLessThanOrEqual(90_000);
        if (transition === 'start') expect(estimate?.agent_ms).toBeGreaterThan(0);
      }
    }

    // Each completed job was queued, then run, in the past; a workspace's builds follow their numbers.
    const { rows } = await db.pool.query<{ workspace_id: string; ordered: boolean }>(
      `SELECT b.workspace_id, b.build_number,
              j.created_at < j.started_at AND j.started_at < j.completed_at AND j.completed_at < now()
              AND w.created_at <= b.created_at
              AND b.created_at > coalesce(lag(j.completed_at) OVER (PARTITION BY b.workspace_id
                                                                  ORDER BY b.build_number), '-infinity')
                AS ordered
         FROM workspace_builds b JOIN provisioner_jobs j ON j.id = b.job_id
         JOIN workspaces w ON w.id = b.workspace_id
        WHERE j.job_status = 'succeeded'`,
    );
    expect(rows.length).toBeGreaterThan(0);
    expect(rows.filter((row) => !row.ordered)).toEqual([]);
  });

  it('writes the whole set in one transaction', async () => {
    await seed(db.pool);
    // Every row a transaction inserts (or updates) carries its transaction id.
    const { rows } = await db.pool.query<{ xmin: string }>(
      `SELECT xmin::text FROM users UNION SELECT xmin::text FROM templates
       UNION SELECT xmin::text FROM template_versions UNION SELECT xmin::text FROM template_version_parameters
       UNION SELECT xmin::text FROM workspaces UNION SELECT xmin::text FROM workspace_builds
       UNION SELECT xmin::text FROM workspace_build_parameters UNION SELECT xmin::text FROM provisioner_jobs
       UNION SELECT xmin::text FROM workspace_resources UNION SELECT xmin::text FROM workspace_agents
       UNION SELECT xmin::text FROM chats`,
    );
    expect(rows).toHaveLength(1);
  });

  it('leaves nothing behind when a statement fails part-way', async () => {
    // Fail the last chat insert of the set: everything before it must roll back.
    await db.pool.query(`
      CREATE FUNCTION fail_seed() RETURNS trigger LANGUAGE plpgsql AS $$
      BEGIN
        IF NEW.title LIKE 'Stopped, automatic updates%' THEN RAISE EXCEPTION 'injected failure'; END IF;
        RETURN NEW;
      END $$;
      CREATE TRIGGER fail_seed BEFORE INSERT ON chats FOR EACH ROW EXECUTE FUNCTION fail_seed();
    `);
    await expect(seed(db.pool)).rejects.toThrow('injected failure');
    const { rows } = await db.pool.query<{ n: number }>(
      `SELECT (SELECT count(*) FROM users) + (SELECT count(*) FROM templates) + (SELECT count(*) FROM workspaces)
            + (SELECT count(*) FROM workspace_builds) + (SELECT count(*) FROM provisioner_jobs)
            + (SELECT count(*) FROM chats) AS n`,
    );
    expect(Number(rows[0]!.n)).toBe(0);
  });

  it('prints every scenario with the commands to try', async () => {
    const r = await seed(db.pool);
    const text = formatSeedResult(r);
    for (const scenario of Object.values(r.chats)) {
      expect(text).toContain(scenario.chatId);
      for (const command of scenario.commands) expect(text).toContain(`$ ${command}`);
    }
    expect(text).toContain(r.templates.dev.name);
    expect(text).toContain(r.user.username);
  });

  it('each scenario does what it says when a start job runs', async () => {
    const r = await seed(db.pool);
    const t: StartContext = await createStartContext(db);
    try {
      const run = async (key: keyof SeedResult['chats'], parameters?: Record<string, string>) => {
        const s = r.chats[key];
        return startWorkspace(t.ctx, {
          chatId: s.chatId,
          ownerId: s.ownerId,
          workspaceId: s.workspaceId ?? '00000000-0000-4000-8000-000000000000',
          parameters,
        });
      };
      /** Runs a start that needs a build #n, playing the provisioner once the job waits on it. */
      const runBuilding = async (
        key: keyof SeedResult['chats'],
        buildNumber: number,
        parameters?: Record<string, string>,
      ): Promise<StartWorkspaceResult> => {
        const running = run(key, parameters);
        const build = await awaitBuild(db, r.chats[key].workspaceId!, buildNumber);
        await t.waitingOn(topics.provisionerJob(build.job_id));
        await insertAgents(db.pool, build.job_id, [
          { name: 'dev', connected: true, lifecycleState: 'ready' },
        ]);
        await completeJob(db.pool, build.job_id);
        return running;
      };

      expect(await runBuilding('stopped', 3)).toMatchObject({
        kind: 'start-workspace',
        ok: true,
        started: true,
      });
      expect(await run('running')).toMatchObject({
        kind: 'start-workspace',
        ok: true,
        started: true,
        no_build: true,
      });
      expect(await run('noWorkspace')).toMatchObject({ code: 'no_workspace' });
      const building = await runBuilding('building', 3);
      expect(building).toMatchObject({ kind: 'start-workspace', ok: true, started: true });
      expect(await listBuilds(db, r.chats.building.workspaceId!)).toHaveLength(3);
      expect(await runBuilding('autoUpdate', 3)).toMatchObject({
        updated_to_active_version: true,
        update_reason: 'template requires active versions',
        template_version_id: r.templates.autoUpdate.activeVersionId,
      });
      const manual = await run('manualUpdate');
      expect(isFailure(manual) && manual.code).toBe('manual_update_required');
      expect(await listBuilds(db, r.chats.manualUpdate.workspaceId!)).toHaveLength(2);
      expect(await runBuilding('manualUpdate', 3, { region: 'eu-west-1' })).toMatchObject({
        updated_to_active_version: true,
        template_version_id: r.templates.manualUpdate.activeVersionId,
      });
      expect(await runBuilding('automaticUpdates', 3)).toMatchObject({
        updated_to_active_version: true,
        update_reason: 'workspace automatic updates are set to always',
        template_version_id: r.templates.newerVersion.activeVersionId,
      });
    } finally {
      await t.close();
    }
  });
});
