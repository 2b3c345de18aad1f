// `workspace-jobs seed`: a fresh, independent demo data set per run (new ids, unique names), written in one
// transaction, covering every path a start job can take. `formatSeedResult` prints it with the exact
// commands to try; `demo` and the README use the ids through `SeedResult`.
import { withTransaction, type Pool, type Queryable } from '../shared/postgres.js';
import {
  insertBuild,
  insertChat,
  insertTemplate,
  insertUser,
  insertWorkspace,
  randomSuffix,
  type InsertedBuild,
  type InsertedTemplate,
  type ParameterInput,
} from './fixtures.js';

export interface SeedTemplate {
  id: string;
  name: string;
  requireActiveVersion: boolean;
  activeVersionId: string;
  /** Oldest first. */
  versionIds: string[];
}

export interface SeedScenario {
  /** One line: what state the chat's workspace is in. */
  title: string;
  chatId: string;
  ownerId: string;
  /** Null for the chat without a workspace. */
  workspaceId: string | null;
  workspaceName: string | null;
  /** The workspace's template (for the chat without a workspace: the template to create one from). */
  templateId: string;
  /** What a start job for this chat does. */
  expect: string;
  /** Ready-to-run commands, in order. */
  commands: string[];
}

export type ScenarioKey =
  'stopped' | 'running' | 'noWorkspace' | 'building' | 'autoUpdate' | 'manualUpdate' | 'automaticUpdates';

export interface SeedResult {
  /** The random suffix of every name of this set. */
  suffix: string;
  user: { id: string; username: string };
  templates: {
    /** `dev-<suffix>`: one version, no parameters that matter. */
    dev: SeedTemplate;
    /** Requires the active version; the active v2 adds a parameter with a default: starts auto-update. */
    autoUpdate: SeedTemplate;
    /** Requires the active version; the active v2 adds the required `region`: manual update needed. */
    manualUpdate: SeedTemplate;
    /** Does not require the active version, but its active v2 is newer than v1. */
    newerVersion: SeedTemplate;
  };
  chats: Record<ScenarioKey, SeedScenario>;
}

const CPU: ParameterInput = {
  name: 'cpu',
  displayName: 'CPU cores',
  description: 'Number of CPU cores',
  type: 'number',
  defaultValue: '2',
  options: [
    { name: '2 cores', value: '2' },
    { name: '4 cores', value: '4' },
  ],
};

const MEMORY: ParameterInput = {
  name: 'memory',
  displayName: 'Memory (GiB)',
  description: 'Memory in GiB; new in v2, with a default, so an update needs no input',
  type: 'number',
  defaultValue: '4',
  validationMin: 1,
  validationMax: 64,
};

export const SEED_REGIONS = ['us-east-1', 'eu-west-1'] as const;

const REGION: ParameterInput = {
  name: 'region',
  displayName: 'Region',
  description: 'Where the workspace runs; new in v2 and required (no default)',
  type: 'string',
  required: true,
  mutable: false,
  options: SEED_REGIONS.map((value) => ({ name: value, value })),
};

const EDITOR: ParameterInput = {
  name: 'editor',
  displayName: 'Editor',
  description: 'New in v2, with a default',
  type: 'string',
  defaultValue: 'vscode',
};

const START_COMMAND = (chatId: string, params: Record<string, string> = {}) =>
  [
    'workspace-jobs enqueue start',
    `--chat ${chatId}`,
    ...Object.entries(params).map(([k, v]) => `--param ${k}=${v}`),
    '--wait',
  ].join(' ');

function seedTemplate(t: InsertedTemplate): SeedTemplate {
  return {
    id: t.templateId,
    name: t.name,
    requireActiveVersion: t.requireActiveVersion,
    activeVersionId: t.activeVersionId,
    versionIds: t.versionIds,
  };
}

/** A whole number of seconds in [min, max]. */
function between(min: number, max: number): number {
  return min + Math.floor(Math.random() * (max - min + 1));
}

// A completed build of the history as it would have run `ago` seconds before now: picked up by a provisioner
// 1-5 s after it was queued, 20-90 s of work, its agents connected 5-15 s after and ready 10-40 s later.
// As inserted, all its times are the seed's now() (one transaction), and a start's estimate, the median of its
// template's recent builds (docs/design.md §6), would say 0 ms. An agent's times are shifted, so NULLs stay.
const BACKDATE_BUILD = `
  WITH t AS (
    SELECT now() - make_interval(secs => $2::int) AS created,
           now() - make_interval(secs => $2::int - $3::int) AS started,
           now() - make_interval(secs => $2::int - $3::int - $4::int) AS completed
  ), job AS (
    UPDATE provisioner_jobs j
       SET created_at = t.created, started_at = t.started, completed_at = t.completed, updated_at = t.completed
      FROM t WHERE j.id = $1
  ), build AS (
    UPDATE workspace_builds b SET created_at = t.created, updated_at = t.completed FROM t WHERE b.job_id = $1
    RETURNING b.workspace_id
  ), workspace AS (
    -- Made just before its first build.
    UPDATE workspaces w SET created_at = least(w.created_at, t.created) FROM t, build WHERE w.id = build.workspace_id
  )
  UPDATE workspace_agents a
     SET created_at = t.completed,
         first_connected_at = a.first_connected_at - (now() - t.completed - make_interval(secs => $5::int)),
         last_connected_at = a.last_connected_at - (now() - t.completed - make_interval(secs => $5::int)),
         started_at = a.started_at - (now() - t.completed - make_interval(secs => $5::int)),
         ready_at = a.ready_at - (now() - t.completed - make_interval(secs => $5::int + $6::int)),
         updated_at = t.completed + make_interval(secs => $5::int + $6::int)
    FROM t, workspace_resources r
   WHERE r.id = a.resource_id AND r.job_id = $1`;

/** Moves a just-inserted completed build into the past, `ago` seconds (more than its 140 s at most) back. */
async function backdate(db: Queryable, build: InsertedBuild, ago: number): Promise<void> {
  await db.query(BACKDATE_BUILD, [
    build.jobId,
    ago,
    between(1, 5),
    between(20, 90),
    between(5, 15),
    between(10, 40),
  ]);
}

/** Inserts one independent demo set in one transaction and returns its ids. */
export async function seed(pool: Pool): Promise<SeedResult> {
  return withTransaction(pool, (client) => seedWith(client));
}

async function seedWith(db: Queryable): Promise<SeedResult> {
  const suffix = randomSuffix();
  const user = await insertUser(db, { username: `demo-${suffix}` });
  const ownerId = user.userId;

  const dev = await insertTemplate(db, {
    name: `dev-${suffix}`,
    versions: [{ name: 'v1', parameters: [CPU] }],
  });
  const autoUpdate = await insertTemplate(db, {
    name: `dev-auto-update-${suffix}`,
    requireActiveVersion: true,
    versions: [
      { name: 'v1', parameters: [CPU] },
      { name: 'v2', parameters: [CPU, MEMORY] },
    ],
  });
  const manualUpdate = await insertTemplate(db, {
    name: `dev-region-${suffix}`,
    requireActiveVersion: true,
    versions: [
      { name: 'v1', parameters: [CPU] },
      { name: 'v2', parameters: [CPU, REGION] },
    ],
  });
  const newerVersion = await insertTemplate(db, {
    name: `dev-latest-${suffix}`,
    versions: [
      { name: 'v1', parameters: [CPU] },
      { name: 'v2', parameters: [CPU, EDITOR] },
    ],
  });
  const v1Params = { cpu: '2' };

  /** A workspace whose build #1 started it and build #2 stopped it. */
  const stoppedWorkspace = async (
    name: string,
    template: InsertedTemplate,
    automaticUpdates: 'always' | 'never' = 'never',
  ) => {
    const versionId = template.versionIds[0]!;
    const ws = await insertWorkspace(db, {
      ownerId,
      templateId: template.templateId,
      name,
      automaticUpdates,
    });
    const start = await insertBuild(db, {
      workspaceId: ws.workspaceId,
      templateVersionId: versionId,
      transition: 'start',
      status: 'succeeded',
      initiatorId: ownerId,
      parameters: v1Params,
      agents: [{ name: 'dev', lifecycleState: 'ready', connected: true }],
    });
    // Started 3-6 hours ago, stopped 10 minutes to 2 hours ago.
    await backdate(db, start, between(3 * 3600, 6 * 3600));
    const stop = await insertBuild(db, {
      workspaceId: ws.workspaceId,
      templateVersionId: versionId,
      transition: 'stop',
      status: 'succeeded',
      initiatorId: ownerId,
      parameters: v1Params,
    });
    await backdate(db, stop, between(600, 2 * 3600));
    return { ...ws, buildId: stop.buildId };
  };

  const chat = async (title: string, workspaceId?: string, buildId?: string) =>
    (await insertChat(db, { ownerId, workspaceId, buildId, title })).chatId;

  // (a) stopped
  const stopped = await stoppedWorkspace(`stopped-${suffix}`, dev);
  const stoppedChat = await chat('Stopped workspace', stopped.workspaceId, stopped.buildId);

  // (b) running: build #1 started it, agent connected and ready
  const running = await insertWorkspace(db, {
    ownerId,
    templateId: dev.templateId,
    name: `running-${suffix}`,
  });
  const runningBuild = await insertBuild(db, {
    workspaceId: running.workspaceId,
    templateVersionId: dev.versionIds[0]!,
    transition: 'start',
    status: 'succeeded',
    initiatorId: ownerId,
    parameters: v1Params,
    agents: [{ name: 'dev', lifecycleState: 'ready', connected: true }],
  });
  await backdate(db, runningBuild, between(600, 2 * 3600));
  const runningChat = await chat('Running workspace', running.workspaceId, runningBuild.buildId);

  // (c) no workspace
  const noWorkspaceChat = await chat('Chat without a workspace');

  // (d) being built: stopped, then a pending start build the running provisioner picks up
  const building = await stoppedWorkspace(`building-${suffix}`, dev);
  const buildingBuild = await insertBuild(db, {
    workspaceId: building.workspaceId,
    templateVersionId: dev.versionIds[0]!,
    transition: 'start',
    status: 'pending',
    initiatorId: ownerId,
    parameters: v1Params,
  });
  const buildingChat = await chat('Workspace being built', building.workspaceId, buildingBuild.buildId);

  // (e) stopped on v1 of a template that requires its active v2 (v2's new parameter has a default)
  const auto = await stoppedWorkspace(`auto-${suffix}`, autoUpdate);
  const autoChat = await chat('Stopped on an old version (auto-update)', auto.workspaceId, auto.buildId);

  // (f) stopped on v1 of a template that requires its active v2 (v2 adds the required `region`)
  const manual = await stoppedWorkspace(`manual-${suffix}`, manualUpdate);
  const manualChat = await chat(
    'Stopped on an old version (manual update)',
    manual.workspaceId,
    manual.buildId,
  );

  // (g) stopped on v1, automatic updates always, template does not require the active v2
  const always = await stoppedWorkspace(`always-${suffix}`, newerVersion, 'always');
  const alwaysChat = await chat('Stopped, automatic updates always', always.workspaceId, always.buildId);

  const scenario = (
    title: string,
    chatId: string,
    ws: { workspaceId: string; name: string } | null,
    templateId: string,
    expect: string,
    commands: string[] = [START_COMMAND(chatId)],
  ): SeedScenario => ({
    title,
    chatId,
    ownerId,
    workspaceId: ws?.workspaceId ?? null,
    workspaceName: ws?.name ?? null,
    templateId,
    expect,
    commands,
  });

  return {
    suffix,
    user: { id: ownerId, username: user.username },
    templates: {
      dev: seedTemplate(dev),
      autoUpdate: seedTemplate(autoUpdate),
      manualUpdate: seedTemplate(manualUpdate),
      newerVersion: seedTemplate(newerVersion),
    },
    chats: {
      stopped: scenario(
        'Stopped workspace (latest build: succeeded stop)',
        stoppedChat,
        stopped,
        dev.templateId,
        'a new start build (#3), then the agent: started: true with build_id',
      ),
      running: scenario(
        'Running workspace (latest build: succeeded start, agent connected and ready)',
        runningChat,
        running,
        dev.templateId,
        'no build: started: true, no_build: true, answered at once',
      ),
      noWorkspace: scenario(
        'Chat without a workspace',
        noWorkspaceChat,
        null,
        dev.templateId,
        'start fails: "chat has no workspace; use create_workspace first" (no_workspace); create one instead',
        [
          START_COMMAND(noWorkspaceChat),
          `workspace-jobs enqueue create --chat ${noWorkspaceChat} --template ${dev.templateId} --wait`,
        ],
      ),
      building: scenario(
        'Workspace being built (a pending start build)',
        buildingChat,
        building,
        dev.templateId,
        'waits for the pending build #3 (the provisioner picks it up), no new build: started: true',
      ),
      autoUpdate: scenario(
        'Stopped on v1 of a template that requires its active v2',
        autoChat,
        auto,
        autoUpdate.templateId,
        'starts on v2 (memory takes its default): updated_to_active_version: true, ' +
          'update_reason "template requires active versions"',
      ),
      manualUpdate: scenario(
        'Stopped on v1 of a template whose required active v2 adds the required parameter "region"',
        manualChat,
        manual,
        manualUpdate.templateId,
        'fails with manual_update_required (validations for "region"), nothing built; ' +
          `the retry with --param region=${SEED_REGIONS[1]} starts it on v2`,
        [START_COMMAND(manualChat), START_COMMAND(manualChat, { region: SEED_REGIONS[1] })],
      ),
      automaticUpdates: scenario(
        'Stopped on v1 with automatic updates "always"; the template does not require its newer active v2',
        alwaysChat,
        always,
        newerVersion.templateId,
        'starts on v2: updated_to_active_version: true, ' +
          'update_reason "workspace automatic updates are set to always"',
      ),
    },
  };
}

const ORDER: ScenarioKey[] = [
  'stopped',
  'running',
  'noWorkspace',
  'building',
  'autoUpdate',
  'manualUpdate',
  'automaticUpdates',
];

/** Human-readable summary with the commands to try. */
export function formatSeedResult(result: SeedResult): string {
  const lines: string[] = [];
  lines.push(`Seeded demo set ${result.suffix}`);
  lines.push(`  owner: ${result.user.username} (${result.user.id})`);
  lines.push('  templates:');
  for (const template of Object.values(result.templates)) {
    lines.push(
      `    ${template.name} (${template.id})${template.requireActiveVersion ? ', requires the active version' : ''}` +
        `, ${template.versionIds.length} version(s), active ${template.activeVersionId}`,
    );
  }
  lines.push('');
  ORDER.forEach((key, index) => {
    const s = result.chats[key];
    lines.push(`${String.fromCharCode(97 + index)}) ${s.title}  [chats.${key}]`);
    lines.push(`   chat ${s.chatId}`);
    lines.push(
      s.workspaceId === null
        ? '   workspace: none'
        : `   workspace ${result.user.username}/${s.workspaceName} (${s.workspaceId})`,
    );
    lines.push(`   expect: ${s.expect}`);
    for (const command of s.commands) lines.push(`   $ ${command}`);
    lines.push('');
  });
  return lines.join('\n');
}
