// Small insert helpers over Postgres for demo data (`workspace-jobs seed`) and tests. Each helper is one or
// a few plain parameterised statements and returns the ids it made. Names get a random suffix by default,
// so that seeding again, or many tests in one database, never clash on a unique name. What only tests need
// (moving a provisioner job or an agent along) is in test/helpers/fixtures.ts.
import { randomBytes, randomUUID } from 'node:crypto';
import type pg from 'pg';
import type { AgentLifecycleState, TemplateVersionParameter, WorkspaceTransition } from '../worker/ports.js';
import type { Queryable } from '../shared/postgres.js';

/** 8 random hex characters. */
export function randomSuffix(): string {
  return randomBytes(4).toString('hex');
}

async function one<R extends pg.QueryResultRow>(db: Queryable, text: string, values: unknown[]): Promise<R> {
  const { rows } = await db.query<R>(text, values);
  const row = rows[0];
  if (row === undefined) throw new Error(`expected a row from: ${text.trim().split('\n')[0]}`);
  return row;
}

// ---------------------------------------------------------------------------------------------------
// Users, templates, workspaces, chats

export interface UserInput {
  /** Default `user-<suffix>`. */
  username?: string;
  /** Default `active`. */
  status?: 'active' | 'dormant' | 'suspended';
}

export interface InsertedUser {
  userId: string;
  username: string;
}

export async function insertUser(db: Queryable, input: UserInput = {}): Promise<InsertedUser> {
  const username = input.username ?? `user-${randomSuffix()}`;
  const row = await one<{ id: string }>(
    db,
    `INSERT INTO users (username, email, status) VALUES ($1, $2, $3) RETURNING id`,
    [username, `${username}@example.com`, input.status ?? 'active'],
  );
  return { userId: row.id, username };
}

/** A template version parameter; anything left out takes the column's default (optional, mutable string). */
export type ParameterInput = Partial<TemplateVersionParameter> & {
  name: string;
  description?: string;
  displayOrder?: number;
};

export interface TemplateVersionInput {
  /** Default `v<n>` (1-based position). */
  name?: string;
  parameters?: ParameterInput[];
}

export interface TemplateInput {
  /** Default `template-<suffix>`. */
  name?: string;
  requireActiveVersion?: boolean;
  /** At least one. */
  versions: TemplateVersionInput[];
  /** Which version is active. Default: the last one. */
  activeVersionIndex?: number;
}

export interface InsertedTemplate {
  templateId: string;
  name: string;
  requireActiveVersion: boolean;
  /** In the order given. */
  versionIds: string[];
  activeVersionId: string;
}

export async function insertTemplate(db: Queryable, input: TemplateInput): Promise<InsertedTemplate> {
  if (input.versions.length === 0) throw new Error('insertTemplate: a template needs at least one version');
  const activeIndex = input.activeVersionIndex ?? input.versions.length - 1;
  if (activeIndex < 0 || activeIndex >= input.versions.length) {
    throw new Error(`insertTemplate: activeVersionIndex ${activeIndex} is out of range`);
  }
  const name = input.name ?? `template-${randomSuffix()}`;
  const requireActiveVersion = input.requireActiveVersion ?? false;
  const template = await one<{ id: string }>(
    db,
    `INSERT INTO templates (name, display_name, require_active_version) VALUES ($1, $1, $2) RETURNING id`,
    [name, requireActiveVersion],
  );
  const versionIds: string[] = [];
  for (const [index, version] of input.versions.entries()) {
    versionIds.push(
      await insertTemplateVersion(db, template.id, {
        name: version.name ?? `v${index + 1}`,
        parameters: version.parameters,
      }),
    );
  }
  const activeVersionId = versionIds[activeIndex]!;
  await setActiveVersion(db, template.id, activeVersionId);
  return { templateId: template.id, name, requireActiveVersion, versionIds, activeVersionId };
}

/** Adds a version to a template (not made active); returns its id. */
export async function insertTemplateVersion(
  db: Queryable,
  templateId: string,
  version: TemplateVersionInput = {},
): Promise<string> {
  const row = await one<{ id: string }>(
    db,
    `INSERT INTO template_versions (template_id, name) VALUES ($1, $2) RETURNING id`,
    [templateId, version.name ?? `v-${randomSuffix()}`],
  );
  for (const [index, parameter] of (version.parameters ?? []).entries()) {
    await db.query(
      `INSERT INTO template_version_parameters
         (template_version_id, name, display_name, description, type, mutable, required, ephemeral,
          default_value, options, validation_regex, validation_min, validation_max, validation_monotonic,
          validation_error, display_order)
       VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10::jsonb, $11, $12, $13, $14, $15, $16)`,
      [
        row.id,
        parameter.name,
        parameter.displayName ?? '',
        parameter.description ?? '',
        parameter.type ?? 'string',
        parameter.mutable ?? true,
        parameter.required ?? false,
        parameter.ephemeral ?? false,
        parameter.defaultValue ?? '',
        JSON.stringify(parameter.options ?? []),
        parameter.validationRegex ?? null,
        parameter.validationMin ?? null,
        parameter.validationMax ?? null,
        parameter.validationMonotonic ?? null,
        parameter.validationError ?? '',
        parameter.displayOrder ?? index,
      ],
    );
  }
  return row.id;
}

export async function setActiveVersion(db: Queryable, templateId: string, versionId: string): Promise<void> {
  await db.query(`UPDATE templates SET active_version_id = $2, updated_at = now() WHERE id = $1`, [
    templateId,
    versionId,
  ]);
}

export interface WorkspaceInput {
  ownerId: string;
  templateId: string;
  /** Default `ws-<suffix>` (a valid Coder workspace name). */
  name?: string;
  /** Default `never`. */
  automaticUpdates?: 'always' | 'never';
  deleted?: boolean;
}

export interface InsertedWorkspace {
  workspaceId: string;
  name: string;
}

export async function insertWorkspace(db: Queryable, input: WorkspaceInput): Promise<InsertedWorkspace> {
  const name = input.name ?? `ws-${randomSuffix()}`;
  const row = await one<{ id: string }>(
    db,
    `INSERT INTO workspaces (owner_id, template_id, name, automatic_updates, deleted)
     VALUES ($1, $2, $3, $4, $5) RETURNING id`,
    [input.ownerId, input.templateId, name, input.automaticUpdates ?? 'never', input.deleted ?? false],
  );
  return { workspaceId: row.id, name };
}

export interface ChatInput {
  ownerId: string;
  workspaceId?: string;
  /** The build the chat is bound to (Coder's chat binding); usually the workspace's latest. */
  buildId?: string;
  parentChatId?: string;
  /** Default `chat-<suffix>`. */
  title?: string;
}

export interface InsertedChat {
  chatId: string;
}

export async function insertChat(db: Queryable, input: ChatInput): Promise<InsertedChat> {
  const row = await one<{ id: string }>(
    db,
    `INSERT INTO chats (owner_id, workspace_id, build_id, parent_chat_id, title)
     VALUES ($1, $2, $3, $4, $5) RETURNING id`,
    [
      input.ownerId,
      input.workspaceId ?? null,
      input.buildId ?? null,
      input.parentChatId ?? null,
      input.title ?? `chat-${randomSuffix()}`,
    ],
  );
  return { chatId: row.id };
}

// ---------------------------------------------------------------------------------------------------
// Builds and provisioner jobs

/** The status the build's provisioner job should have (produced through the derived `job_status`). */
export type BuildStatus = 'pending' | 'running' | 'succeeded' | 'failed' | 'canceled' | 'canceling';

export interface AgentInput {
  name: string;
  /** Makes it a sub-agent of the agent with this name (inserted in the same call). */
  parentName?: string;
  /** Default: the position in the list. */
  displayOrder?: number;
  /** Default `created`. */
  lifecycleState?: AgentLifecycleState;
  /** Connected now (first and last connected set). Default false: never connected. */
  connected?: boolean;
}

export interface BuildInput {
  workspaceId: string;
  templateVersionId: string;
  transition: WorkspaceTransition;
  status: BuildStatus;
  initiatorId: string;
  /** The build's full parameter set. */
  parameters?: Record<string, string>;
  /** Default: one more than the workspace's latest build. */
  buildNumber?: number;
  /** The job's error; only for `failed` (default `provisioner job failed`). */
  error?: string;
  /** Resources and agents of the build (one resource holds them all). */
  agents?: AgentInput[];
}

export interface InsertedBuild {
  buildId: string;
  jobId: string;
  buildNumber: number;
  /** In the order given. */
  agentIds: string[];
}

/** provisioner_jobs timestamps that produce each status (docs/design.md §8). */
const JOB_COLUMNS: Record<BuildStatus, { started: boolean; canceled: boolean; completed: boolean }> = {
  pending: { started: false, canceled: false, completed: false },
  running: { started: true, canceled: false, completed: false },
  succeeded: { started: true, canceled: false, completed: true },
  failed: { started: true, canceled: false, completed: true },
  canceled: { started: true, canceled: true, completed: true },
  canceling: { started: true, canceled: true, completed: false },
};

export async function insertBuild(db: Queryable, input: BuildInput): Promise<InsertedBuild> {
  if (input.error !== undefined && input.status !== 'failed') {
    throw new Error(`insertBuild: an error makes the job failed, not ${input.status}`);
  }
  const buildId = randomUUID();
  const columns = JOB_COLUMNS[input.status];
  const error = input.status === 'failed' ? (input.error ?? 'provisioner job failed') : null;
  const job = await one<{ id: string }>(
    db,
    `INSERT INTO provisioner_jobs (type, input, started_at, canceled_at, completed_at, error)
     VALUES ('workspace_build', $1::jsonb,
             CASE WHEN $2::boolean THEN now() END,
             CASE WHEN $3::boolean THEN now() END,
             CASE WHEN $4::boolean THEN now() END,
             $5)
     RETURNING id`,
    [
      JSON.stringify({ workspace_build_id: buildId }),
      columns.started,
      columns.canceled,
      columns.completed,
      error,
    ],
  );
  const build = await one<{ build_number: number }>(
    db,
    `INSERT INTO workspace_builds
       (id, workspace_id, template_version_id, build_number, transition, initiator_id, job_id)
     VALUES ($1, $2, $3,
             COALESCE($4::integer,
                      (SELECT COALESCE(max(build_number), 0) + 1 FROM workspace_builds WHERE workspace_id = $2)),
             $5, $6, $7)
     RETURNING build_number`,
    [
      buildId,
      input.workspaceId,
      input.templateVersionId,
      input.buildNumber ?? null,
      input.transition,
      input.initiatorId,
      job.id,
    ],
  );
  for (const [name, value] of Object.entries(input.parameters ?? {})) {
    await db.query(
      `INSERT INTO workspace_build_parameters (workspace_build_id, name, value) VALUES ($1, $2, $3)`,
      [buildId, name, value],
    );
  }
  const agentIds =
    input.agents && input.agents.length > 0 ? (await insertAgents(db, job.id, input.agents)).agentIds : [];
  return { buildId, jobId: job.id, buildNumber: build.build_number, agentIds };
}

// ---------------------------------------------------------------------------------------------------
// Resources and agents

interface InsertedAgents {
  resourceId: string;
  /** In the order given. */
  agentIds: string[];
}

/** Attaches one resource with these agents to a build's provisioner job (what a provisioner reports). */
export async function insertAgents(
  db: Queryable,
  jobId: string,
  agents: AgentInput[],
): Promise<InsertedAgents> {
  const resource = await one<{ id: string }>(
    db,
    `INSERT INTO workspace_resources (job_id, transition, type, name)
     VALUES ($1, COALESCE((SELECT transition FROM workspace_builds WHERE job_id = $1), 'start'),
             'docker_container', 'dev')
     RETURNING id`,
    [jobId],
  );
  const ids = new Map<string, string>();
  const agentIds: string[] = new Array<string>(agents.length);
  // Parents first, so that sub-agents can reference them.
  const order = agents.map((agent, index) => ({ agent, index }));
  order.sort((a, b) => Number(a.agent.parentName !== undefined) - Number(b.agent.parentName !== undefined));
  for (const { agent, index } of order) {
    let parentId: string | null = null;
    if (agent.parentName !== undefined) {
      parentId = ids.get(agent.parentName) ?? null;
      if (parentId === null)
        throw new Error(`insertAgents: no agent named ${agent.parentName} to be a parent`);
    }
    const connected = agent.connected ?? false;
    const lifecycle = agent.lifecycleState ?? 'created';
    const row = await one<{ id: string }>(
      db,
      `INSERT INTO workspace_agents
         (resource_id, parent_id, name, display_order, lifecycle_state,
          first_connected_at, last_connected_at, started_at, ready_at)
       VALUES ($1, $2, $3, $4, $5::workspace_agent_lifecycle_state,
               CASE WHEN $6::boolean THEN now() END,
               CASE WHEN $6::boolean THEN now() END,
               CASE WHEN $5::text <> 'created' THEN now() END,
               CASE WHEN $5::text = 'ready' THEN now() END)
       RETURNING id`,
      [resource.id, parentId, agent.name, agent.displayOrder ?? index, lifecycle, connected],
    );
    ids.set(agent.name, row.id);
    agentIds[index] = row.id;
  }
  return { resourceId: resource.id, agentIds };
}
