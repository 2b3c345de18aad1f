// The worker's database interface on Postgres. SQL stays SQL; rows are mapped to the camel-cased types
// of ports.ts in one place each.
import { randomUUID } from 'node:crypto';
import {
  BuildConflictError,
  NameTakenError,
  type Agent,
  type Build,
  type BuildParameter,
  type BuildTransaction,
  type Chat,
  type NewestBuildLogs,
  type NewBuild,
  type NewWorkspace,
  type Template,
  type TemplateVersionParameter,
  type User,
  type Workspace,
  type WorkspaceStore,
} from './ports.js';
import { withTransaction, type Pool, type PoolClient, type Queryable } from '../shared/postgres.js';
import { traceCarrier } from '../shared/telemetry.js';
import { cancelProvisionerJobsSql } from '../shared/provisioner-cancel.js';
import type { BuildEstimate, QueuePosition } from '../shared/contract.js';

type Row = Record<string, unknown>;

/** Postgres's unique_violation: an insert a unique index refused. */
function isUniqueViolation(error: unknown): boolean {
  return (error as { code?: unknown } | null)?.code === '23505';
}

/** Runs an insert, turning a unique index's refusal into the domain's error for it. */
async function unlessTaken<T>(insert: Promise<T>, taken: (cause: unknown) => Error): Promise<T> {
  try {
    return await insert;
  } catch (error) {
    throw isUniqueViolation(error) ? taken(error) : error;
  }
}

const BUILD_COLUMNS = `b.id, b.workspace_id, b.build_number, b.transition, b.template_version_id, b.job_id,
  j.job_status, j.error, j.error_code, j.quota_credits_consumed, j.quota_budget`;

const WORKSPACE_COLUMNS = 'id, owner_id, template_id, name, deleted, automatic_updates';

const toChat = (r: Row): Chat => ({
  id: r.id as string,
  ownerId: r.owner_id as string,
  parentChatId: r.parent_chat_id as string | null,
  workspaceId: r.workspace_id as string | null,
  buildId: r.build_id as string | null,
  agentId: r.agent_id as string | null,
});

const toWorkspace = (r: Row): Workspace => ({
  id: r.id as string,
  ownerId: r.owner_id as string,
  templateId: r.template_id as string,
  name: r.name as string,
  deleted: r.deleted as boolean,
  automaticUpdates: r.automatic_updates as Workspace['automaticUpdates'],
});

const toBuild = (r: Row): Build => ({
  id: r.id as string,
  workspaceId: r.workspace_id as string,
  buildNumber: r.build_number as number,
  transition: r.transition as Build['transition'],
  templateVersionId: r.template_version_id as string,
  jobId: r.job_id as string,
  jobStatus: r.job_status as Build['jobStatus'],
  jobError: r.error as string | null,
  jobErrorCode: r.error_code as string | null,
  jobQuota:
    r.quota_budget === null
      ? null
      : { creditsConsumed: r.quota_credits_consumed as number, budget: r.quota_budget as number },
});

const toAgent = (r: Row): Agent => ({
  id: r.id as string,
  name: r.name as string,
  parentId: r.parent_id as string | null,
  displayOrder: r.display_order as number,
  lifecycleState: r.lifecycle_state as Agent['lifecycleState'],
  firstConnectedAt: r.first_connected_at as Date | null,
  lastConnectedAt: r.last_connected_at as Date | null,
  disconnectedAt: r.disconnected_at as Date | null,
  createdAt: r.created_at as Date,
  connectionTimeoutSeconds: r.connection_timeout_seconds as number,
});

const toParameter = (r: Row): TemplateVersionParameter => ({
  name: r.name as string,
  displayName: r.display_name as string,
  type: r.type as string,
  mutable: r.mutable as boolean,
  required: r.required as boolean,
  ephemeral: r.ephemeral as boolean,
  defaultValue: r.default_value as string,
  options: r.options as TemplateVersionParameter['options'],
  validationRegex: r.validation_regex as string | null,
  validationMin: r.validation_min as number | null,
  validationMax: r.validation_max as number | null,
  validationMonotonic: r.validation_monotonic as TemplateVersionParameter['validationMonotonic'],
  validationError: r.validation_error as string,
});

async function one<T>(db: Queryable, map: (r: Row) => T, sql: string, params: unknown[]): Promise<T | null> {
  const { rows } = await db.query<Row>(sql, params);
  return rows[0] ? map(rows[0]) : null;
}

function latestBuild(db: Queryable, workspaceId: string): Promise<Build | null> {
  return one(
    db,
    toBuild,
    `SELECT ${BUILD_COLUMNS} FROM workspace_builds b JOIN provisioner_jobs j ON j.id = b.job_id
     WHERE b.workspace_id = $1 ORDER BY b.build_number DESC LIMIT 1`,
    [workspaceId],
  );
}

async function bindChat(db: Queryable, chatId: string, workspaceId: string, buildId: string): Promise<void> {
  await db.query(
    `UPDATE chats SET workspace_id = $2, build_id = $3, agent_id = NULL, updated_at = now() WHERE id = $1`,
    [chatId, workspaceId, buildId],
  );
}

export class PgWorkspaceStore implements WorkspaceStore {
  constructor(private readonly pool: Pool) {}

  getChat(chatId: string): Promise<Chat | null> {
    return one(
      this.pool,
      toChat,
      'SELECT id, owner_id, parent_chat_id, workspace_id, build_id, agent_id FROM chats WHERE id = $1',
      [chatId],
    );
  }

  getUser(userId: string): Promise<User | null> {
    return one(
      this.pool,
      (r) => r as unknown as User,
      'SELECT id, username, status, deleted FROM users WHERE id = $1',
      [userId],
    );
  }

  getWorkspace(workspaceId: string): Promise<Workspace | null> {
    return one(this.pool, toWorkspace, `SELECT ${WORKSPACE_COLUMNS} FROM workspaces WHERE id = $1`, [
      workspaceId,
    ]);
  }

  getLatestBuild(workspaceId: string): Promise<Build | null> {
    return latestBuild(this.pool, workspaceId);
  }

  getBuild(buildId: string): Promise<Build | null> {
    return one(
      this.pool,
      toBuild,
      `SELECT ${BUILD_COLUMNS} FROM workspace_builds b JOIN provisioner_jobs j ON j.id = b.job_id WHERE b.id = $1`,
      [buildId],
    );
  }

  async getAgentsOfLatestBuild(workspaceId: string): Promise<Agent[]> {
    const { rows } = await this.pool.query<Row>(
      `SELECT a.* FROM workspace_agents a
       JOIN workspace_resources r ON r.id = a.resource_id
       JOIN workspace_builds b ON b.job_id = r.job_id
       WHERE b.workspace_id = $1 AND NOT a.deleted
         AND b.build_number = (SELECT max(build_number) FROM workspace_builds WHERE workspace_id = $1)`,
      [workspaceId],
    );
    return rows.map(toAgent);
  }

  getAgent(agentId: string): Promise<Agent | null> {
    return one(this.pool, toAgent, 'SELECT * FROM workspace_agents WHERE id = $1 AND NOT deleted', [agentId]);
  }

  bindChat(chatId: string, workspaceId: string, buildId: string): Promise<void> {
    return bindChat(this.pool, chatId, workspaceId, buildId);
  }

  async cancelProvisionerJob(jobId: string): Promise<'completed' | 'canceling' | 'untouched'> {
    const { rows } = await this.pool.query<{ completed: boolean }>(cancelProvisionerJobsSql('$1::uuid'), [
      jobId,
    ]);
    if (!rows[0]) return 'untouched';
    return rows[0].completed ? 'completed' : 'canceling';
  }

  async getQueuePosition(jobId: string): Promise<QueuePosition | null> {
    // Coder's ROW_NUMBER() OVER (ORDER BY created_at), as a count over the pending set (the pending partial
    // index of 0001); id breaks ties so that two jobs never share a place.
    const { rows } = await this.pool.query<{ position: number; pending: number; listed: boolean | null }>(
      `SELECT count(*) FILTER (WHERE (p.created_at, p.id) <= (me.created_at, me.id))::int AS position,
              count(*)::int AS pending, bool_or(p.id = me.id) AS listed
         FROM provisioner_jobs me
         JOIN provisioner_jobs p
           ON p.started_at IS NULL AND p.canceled_at IS NULL AND p.completed_at IS NULL
          AND p.type = 'workspace_build'
        WHERE me.id = $1`,
      [jobId],
    );
    const row = rows[0];
    return row?.listed ? { position: row.position, pending: row.pending } : null;
  }

  async getBuildEstimate(buildId: string): Promise<BuildEstimate | null> {
    // The template's last 20 succeeded builds of this transition (by when they were created); an agent's time
    // is its ready (else first connect) time after its build completed, the slowest agent's per build.
    const { rows } = await this.pool.query<{
      samples: number;
      build_ms: number | null;
      agent_ms: number | null;
      base: Date;
    }>(
      `WITH me AS (
         SELECT b.transition, v.template_id, coalesce(j.started_at, now()) AS base
           FROM workspace_builds b
           JOIN provisioner_jobs j ON j.id = b.job_id
           JOIN template_versions v ON v.id = b.template_version_id
          WHERE b.id = $1
       ), recent AS (
         -- Newest first per version of the template, down workspace_builds' (version, transition, created_at)
         -- index (migrations/0007): a few probes per version however long the template's history.
         SELECT r.* FROM me
           JOIN template_versions v ON v.template_id = me.template_id
          CROSS JOIN LATERAL (
            SELECT j.id, j.completed_at, b.created_at,
                   extract(epoch FROM j.completed_at - j.started_at) * 1000 AS build_ms
              FROM workspace_builds b
              JOIN provisioner_jobs j ON j.id = b.job_id
             WHERE b.template_version_id = v.id AND b.transition = me.transition
               -- The derived status (a stored column with statistics): the planner then walks the index.
               AND j.job_status = 'succeeded' AND j.started_at IS NOT NULL
             ORDER BY b.created_at DESC
             LIMIT 20
          ) r
          ORDER BY r.created_at DESC
          LIMIT 20
       ), agents AS (
         SELECT max(greatest(0, extract(epoch FROM coalesce(a.ready_at, a.first_connected_at) - r.completed_at)
                    * 1000)) AS agent_ms
           FROM recent r
           JOIN workspace_resources res ON res.job_id = r.id
           JOIN workspace_agents a ON a.resource_id = res.id
          WHERE coalesce(a.ready_at, a.first_connected_at) IS NOT NULL
          GROUP BY r.id
       )
       SELECT (SELECT count(*) FROM recent)::int AS samples,
              (SELECT percentile_cont(0.5) WITHIN GROUP (ORDER BY build_ms) FROM recent) AS build_ms,
              (SELECT percentile_cont(0.5) WITHIN GROUP (ORDER BY agent_ms) FROM agents) AS agent_ms,
              me.base
         FROM me`,
      [buildId],
    );
    const row = rows[0];
    if (!row || row.samples === 0 || row.build_ms === null) return null;
    const buildMs = Math.round(row.build_ms);
    const doneAt = row.base.getTime() + buildMs;
    const estimate: BuildEstimate = {
      build_ms: buildMs,
      done_at: new Date(doneAt).toISOString(),
      samples: row.samples,
    };
    if (row.agent_ms !== null) {
      estimate.agent_ms = Math.round(row.agent_ms);
      estimate.ready_at = new Date(doneAt + estimate.agent_ms).toISOString();
    }
    return estimate;
  }

  async getNewestBuildLogs(jobId: string, after: string, limit: number): Promise<NewestBuildLogs> {
    // Newest first down (job_id, id), counting the whole run after the cursor (bounded by what one throttle
    // interval wrote).
    const { rows } = await this.pool.query<{
      id: string;
      created_at: Date;
      level: string;
      stage: string;
      output: string;
      total: number;
    }>(
      // ORDER BY the bigint column, not the text `id` output column (which would sort "999" after "1000").
      `SELECT l.id::text AS id, l.created_at, l.level::text AS level, l.stage, l.output,
              (count(*) OVER ())::int AS total
         FROM provisioner_job_logs l WHERE l.job_id = $1 AND l.id > $2::bigint
        ORDER BY l.id DESC LIMIT $3`,
      [jobId, after, limit],
    );
    return {
      lines: rows.reverse().map((r) => ({
        id: r.id,
        at: r.created_at.toISOString(),
        level: r.level,
        stage: r.stage,
        output: r.output,
      })),
      total: rows[0]?.total ?? 0,
    };
  }

  transaction<T>(fn: (tx: BuildTransaction) => Promise<T>): Promise<T> {
    return withTransaction(this.pool, (client) => fn(new PgBuildTransaction(client)));
  }
}

class PgBuildTransaction implements BuildTransaction {
  constructor(private readonly client: PoolClient) {}

  lockWorkspace(workspaceId: string): Promise<Workspace | null> {
    return one(
      this.client,
      toWorkspace,
      `SELECT ${WORKSPACE_COLUMNS} FROM workspaces WHERE id = $1 FOR UPDATE`,
      [workspaceId],
    );
  }

  getLatestBuild(workspaceId: string): Promise<Build | null> {
    return latestBuild(this.client, workspaceId);
  }

  getTemplate(templateId: string): Promise<Template | null> {
    return one(
      this.client,
      (r) => ({
        id: r.id as string,
        name: r.name as string,
        activeVersionId: r.active_version_id as string,
        requireActiveVersion: r.require_active_version as boolean,
      }),
      'SELECT id, name, active_version_id, require_active_version FROM templates WHERE id = $1',
      [templateId],
    );
  }

  async getTemplateVersionParameters(templateVersionId: string): Promise<TemplateVersionParameter[]> {
    const { rows } = await this.client.query<Row>(
      `SELECT * FROM template_version_parameters WHERE template_version_id = $1 ORDER BY display_order, name`,
      [templateVersionId],
    );
    return rows.map(toParameter);
  }

  async getBuildParameters(buildId: string): Promise<BuildParameter[]> {
    const { rows } = await this.client.query<BuildParameter>(
      'SELECT name, value FROM workspace_build_parameters WHERE workspace_build_id = $1 ORDER BY name',
      [buildId],
    );
    return rows;
  }

  bindChat(chatId: string, workspaceId: string, buildId: string): Promise<void> {
    return bindChat(this.client, chatId, workspaceId, buildId);
  }

  async workspaceNameTaken(ownerId: string, name: string): Promise<boolean> {
    const { rowCount } = await this.client.query(
      'SELECT 1 FROM workspaces WHERE owner_id = $1 AND lower(name) = lower($2) AND NOT deleted',
      [ownerId, name],
    );
    return (rowCount ?? 0) > 0;
  }

  async insertWorkspace(input: NewWorkspace): Promise<Workspace> {
    const row = await unlessTaken(
      one(
        this.client,
        toWorkspace,
        `INSERT INTO workspaces (owner_id, template_id, name) VALUES ($1, $2, $3) RETURNING ${WORKSPACE_COLUMNS}`,
        [input.ownerId, input.templateId, input.name],
      ),
      (cause) => new NameTakenError(input.ownerId, input.name, { cause }),
    );
    return row!;
  }

  async insertBuild(input: NewBuild): Promise<Build> {
    const buildId = randomUUID();
    const {
      rows: [job],
    } = await this.client.query<{ id: string; job_status: Build['jobStatus'] }>(
      `INSERT INTO provisioner_jobs (type, input, trace_context) VALUES ('workspace_build', $1, $2)
       RETURNING id, job_status`,
      // The job attempt's span (active here): the provisioner's build span links to it.
      [{ workspace_build_id: buildId }, traceCarrier() ?? null],
    );
    await unlessTaken(
      this.client.query(
        `INSERT INTO workspace_builds (id, workspace_id, template_version_id, build_number, transition, initiator_id, job_id)
         VALUES ($1, $2, $3, $4, $5, $6, $7)`,
        [
          buildId,
          input.workspaceId,
          input.templateVersionId,
          input.buildNumber,
          input.transition,
          input.initiatorId,
          job!.id,
        ],
      ),
      (cause) => new BuildConflictError(input.workspaceId, input.buildNumber, { cause }),
    );
    await this.client.query(
      `INSERT INTO workspace_build_parameters (workspace_build_id, name, value)
       SELECT $1, name, value FROM unnest($2::text[], $3::text[]) AS p(name, value)`,
      [buildId, input.parameters.map((p) => p.name), input.parameters.map((p) => p.value)],
    );
    return {
      id: buildId,
      workspaceId: input.workspaceId,
      buildNumber: input.buildNumber,
      transition: input.transition,
      templateVersionId: input.templateVersionId,
      jobId: job!.id,
      jobStatus: job!.job_status,
      jobError: null,
      jobErrorCode: null,
      jobQuota: null,
    };
  }
}
