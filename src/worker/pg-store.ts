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
  type NewStartBuild,
  type NewWorkspace,
  type StartBuildInsert,
  type StartState,
  type Template,
  type TemplateVersionParameter,
  type User,
  type Workspace,
  type WorkspaceStore,
} from './ports.js';
import {
  prepared,
  runPrepared,
  withTransaction,
  type Pool,
  type PoolClient,
  type Prepared,
  type Queryable,
} from '../shared/postgres.js';
import { ReadBatcher } from '../shared/read-batcher.js';
import { traceCarrier } from '../shared/telemetry.js';
import { cancelProvisionerJobsSql } from '../shared/provisioner-cancel.js';
import type { BuildEstimate, QueuePosition } from '../shared/contract.js';

type Row = Record<string, unknown>;

/** Postgres's unique_violation: an insert a unique index refused. */
function isUniqueViolation(error: unknown): boolean {
  return (error as { code?: unknown } | null)?.code === '23505';
}

/**
 * Runs an insert, turning a unique index's refusal into the domain's error for it; with `table`, only a
 * refusal by that table's indexes (a statement that inserts into several).
 */
async function unlessTaken<T>(
  insert: Promise<T>,
  taken: (cause: unknown) => Error,
  table?: string,
): Promise<T> {
  try {
    return await insert;
  } catch (error) {
    const refused =
      isUniqueViolation(error) && (table === undefined || (error as { table?: unknown }).table === table);
    throw refused ? taken(error) : error;
  }
}

const BUILD_COLUMNS = `b.id, b.workspace_id, b.build_number, b.transition, b.template_version_id, b.job_id,
  j.job_status, j.started_at, j.error, j.error_code, j.quota_credits_consumed, j.quota_budget`;

const WORKSPACE_COLUMNS = 'id, owner_id, template_id, name, deleted, automatic_updates';

// Columns by name, not *: a prepared statement whose result columns change (a migration adds one while this
// runs) fails with "cached plan must not change result type" on every connection that prepared it.
const AGENT_COLUMNS = `a.id, a.name, a.parent_id, a.display_order, a.lifecycle_state, a.first_connected_at,
  a.last_connected_at, a.disconnected_at, a.created_at, a.connection_timeout_seconds`;

const PARAMETER_COLUMNS = `name, display_name, type, mutable, required, ephemeral, default_value, options,
  validation_regex, validation_min, validation_max, validation_monotonic, validation_error`;

// Every statement of the store runs by name (prepared, src/shared/postgres.ts).
const GET_CHAT = prepared(
  'worker.get_chat',
  'SELECT id, owner_id, parent_chat_id, workspace_id, build_id, agent_id FROM chats WHERE id = $1',
);
const GET_CHAT_WITH_OWNER = prepared(
  'worker.get_chat_with_owner',
  `SELECT c.id, c.owner_id, c.parent_chat_id, c.workspace_id, c.build_id, c.agent_id, to_json(u) AS owner
     FROM chats c
     LEFT JOIN LATERAL (SELECT id, username, status, deleted FROM users WHERE id = c.owner_id) u ON true
    WHERE c.id = $1`,
);
const GET_WORKSPACE = prepared(
  'worker.get_workspace',
  `SELECT ${WORKSPACE_COLUMNS} FROM workspaces WHERE id = $1`,
);
const LOCK_WORKSPACE = prepared(
  'worker.lock_workspace',
  `SELECT ${WORKSPACE_COLUMNS} FROM workspaces WHERE id = $1 FOR UPDATE`,
);
const GET_LATEST_BUILD = prepared(
  'worker.get_latest_build',
  `SELECT ${BUILD_COLUMNS} FROM workspace_builds b JOIN provisioner_jobs j ON j.id = b.job_id
   WHERE b.workspace_id = $1 ORDER BY b.build_number DESC LIMIT 1`,
);
// The reads of a waiting job's end, each for a batch of keys (ReadBatcher): when a burst of builds completes,
// the jobs it wakes read in one query per batch instead of one each (issue 11). The keys are joined from
// unnest(), not matched by `= ANY($1)`: for a batch of hundreds the planner would scan the table instead.
const GET_BUILDS = prepared(
  'worker.get_builds',
  `SELECT ${BUILD_COLUMNS} FROM unnest($1::uuid[]) AS k(id)
     JOIN workspace_builds b ON b.id = k.id JOIN provisioner_jobs j ON j.id = b.job_id`,
);
// Per workspace, its latest build (by build_number), that build's resources and their agents.
const GET_AGENTS_OF_LATEST_BUILDS = prepared(
  'worker.get_agents_of_latest_builds',
  `SELECT w.id AS workspace_id, ${AGENT_COLUMNS}
     FROM unnest($1::uuid[]) AS w(id)
    CROSS JOIN LATERAL (
      SELECT job_id FROM workspace_builds WHERE workspace_id = w.id ORDER BY build_number DESC LIMIT 1
    ) latest
     JOIN workspace_resources r ON r.job_id = latest.job_id
     JOIN workspace_agents a ON a.resource_id = r.id
    WHERE NOT a.deleted`,
);
const GET_AGENTS = prepared(
  'worker.get_agents',
  // LIMIT 1 (an id is one row) keeps the lateral a lookup per key: as a join, the planner hashes a scan of
  // the whole table for a batch of hundreds.
  `SELECT a.* FROM unnest($1::uuid[]) AS k(id)
    CROSS JOIN LATERAL (
      SELECT ${AGENT_COLUMNS} FROM workspace_agents a WHERE a.id = k.id AND NOT a.deleted LIMIT 1
    ) a`,
);
const CANCEL_PROVISIONER_JOB = prepared(
  'worker.cancel_provisioner_job',
  cancelProvisionerJobsSql('$1::uuid'),
);
const BIND_CHAT = prepared(
  'worker.bind_chat',
  'UPDATE chats SET workspace_id = $2, build_id = $3, agent_id = NULL, updated_at = now() WHERE id = $1',
);

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
  // A Date, or its ISO text in the start state's JSON.
  jobStartedAt: r.started_at === null ? null : new Date(r.started_at as Date | string),
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

/** A build just inserted, as its insert's caller knows it: no error, no quota. */
function insertedBuild(id: string, input: NewBuild, jobId: string, jobStatus: string): Build {
  return {
    id,
    workspaceId: input.workspaceId,
    buildNumber: input.buildNumber,
    transition: input.transition,
    templateVersionId: input.templateVersionId,
    jobId,
    jobStatus: jobStatus as Build['jobStatus'],
    jobStartedAt: null,
    jobError: null,
    jobErrorCode: null,
    jobQuota: null,
  };
}

async function one<T>(
  db: Queryable,
  map: (r: Row) => T,
  statement: Prepared,
  params: unknown[],
): Promise<T | null> {
  const { rows } = await runPrepared<Row>(db, statement, params);
  return rows[0] ? map(rows[0]) : null;
}

/** A batched read's rows, grouped by the column that says which key each answers. */
async function rowsBy(
  db: Queryable,
  statement: Prepared,
  params: unknown[],
  column: string,
): Promise<Map<unknown, Row[]>> {
  const { rows } = await runPrepared<Row>(db, statement, params);
  const by = new Map<unknown, Row[]>();
  for (const row of rows) {
    const key = row[column];
    let group = by.get(key);
    if (!group) by.set(key, (group = []));
    group.push(row);
  }
  return by;
}

/** A key's one row, mapped; null when the batch had none for it (as a single-row read's absent row). */
function firstOf<T>(rows: Row[] | undefined, map: (r: Row) => T): T | null {
  return rows?.[0] ? map(rows[0]) : null;
}

/** One ask's rows of NEWEST_BUILD_LOGS (newest first), oldest first as the caller gets them. */
function toNewestBuildLogs(rows: Row[]): NewestBuildLogs {
  return {
    lines: rows.reverse().map((r) => ({
      id: r.id as string,
      at: (r.created_at as Date).toISOString(),
      level: r.level as string,
      stage: r.stage as string,
      output: r.output as string,
    })),
    total: (rows[0]?.total as number | undefined) ?? 0,
  };
}

function latestBuild(db: Queryable, workspaceId: string): Promise<Build | null> {
  return one(db, toBuild, GET_LATEST_BUILD, [workspaceId]);
}

async function bindChat(db: Queryable, chatId: string, workspaceId: string, buildId: string): Promise<void> {
  await runPrepared(db, BIND_CHAT, [chatId, workspaceId, buildId]);
}

// Coder's ROW_NUMBER() OVER (ORDER BY created_at) over the pending set (the pending partial index of 0001),
// for every job asked at once: one walk of the queue however many builds follow it. id breaks ties so that
// two jobs never share a place.
const QUEUE_POSITIONS = prepared(
  'worker.get_queue_positions',
  `SELECT id, position, pending
     FROM (SELECT id, (row_number() OVER (ORDER BY created_at, id))::int AS position,
                  (count(*) OVER ())::int AS pending
             FROM provisioner_jobs
            WHERE started_at IS NULL AND canceled_at IS NULL AND completed_at IS NULL
              AND type = 'workspace_build') queue
    WHERE id = ANY($1::uuid[])`,
);

/** A template version's recent builds of one transition, as an estimate's medians. */
interface TemplateEstimate {
  samples: number;
  buildMs: number;
  agentMs: number | null;
}

/** The builds an estimate is the median of. */
const ESTIMATE_SAMPLES = 20;
/**
 * How long a template version's estimate from a full history (ESTIMATE_SAMPLES builds) is kept: one more build
 * moves a median of 20 little, and at a hundred starts a second the read was most of what the worker's
 * backends did (bench/README.md). A younger history is read for every estimate (the reads running shared), so
 * that its first builds count at once.
 */
export const ESTIMATE_MAX_AGE_MS = 1_000;

// The template's last 20 succeeded builds of this transition (by when they were created), over all of its
// versions, so that a new version's first builds are estimated from the ones before it; an agent's time is
// its ready (else first connect) time after its build completed, the slowest agent's per build. Asked by a
// build's template version and transition: the builds of a version share what it answers.
const BUILD_ESTIMATE = prepared(
  'worker.get_build_estimate',
  `WITH recent AS (
     -- Newest first per version of the template, down workspace_builds' (version, transition, created_at)
     -- index (migrations/0007): a few probes per version however long the template's history.
     SELECT r.* FROM template_versions mine
       JOIN template_versions v ON v.template_id = mine.template_id
      CROSS JOIN LATERAL (
        SELECT j.id, j.completed_at, b.created_at,
               extract(epoch FROM j.completed_at - j.started_at) * 1000 AS build_ms
          FROM workspace_builds b
          JOIN provisioner_jobs j ON j.id = b.job_id
         WHERE b.template_version_id = v.id AND b.transition = $2
           -- The derived status (a stored column with statistics): the planner then walks the index.
           AND j.job_status = 'succeeded' AND j.started_at IS NOT NULL
         ORDER BY b.created_at DESC
         LIMIT ${ESTIMATE_SAMPLES}
      ) r
      WHERE mine.id = $1
      ORDER BY r.created_at DESC
      LIMIT ${ESTIMATE_SAMPLES}
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
          (SELECT percentile_cont(0.5) WITHIN GROUP (ORDER BY agent_ms) FROM agents) AS agent_ms`,
);

// Per (job, cursor, limit) of the batch (`ask`, its place in the arrays): newest first down (job_id, id),
// counting the whole run after the cursor (bounded by what one throttle interval wrote).
// ORDER BY the bigint column, not the text `id` output column (which would sort "999" after "1000").
const NEWEST_BUILD_LOGS = prepared(
  'worker.get_newest_logs_of_builds',
  `SELECT q.ask::int AS ask, l.id::text AS id, l.created_at, l.level::text AS level, l.stage, l.output, l.total
     FROM unnest($1::uuid[], $2::bigint[], $3::int[]) WITH ORDINALITY AS q(job_id, after, lim, ask)
    CROSS JOIN LATERAL (
      SELECT id, created_at, level, stage, output, (count(*) OVER ())::int AS total
        FROM provisioner_job_logs WHERE job_id = q.job_id AND id > q.after
       ORDER BY id DESC LIMIT q.lim
    ) l
    ORDER BY q.ask, l.id DESC`,
);

const TEMPLATE_VERSION_PARAMETERS = prepared(
  'worker.get_template_version_parameters',
  `SELECT ${PARAMETER_COLUMNS} FROM template_version_parameters WHERE template_version_id = $1
   ORDER BY display_order, name`,
);

const BUILD_PARAMETERS = prepared(
  'worker.get_build_parameters',
  'SELECT name, value FROM workspace_build_parameters WHERE workspace_build_id = $1 ORDER BY name',
);

const GET_TEMPLATE = prepared(
  'worker.get_template',
  'SELECT id, name, active_version_id, require_active_version FROM templates WHERE id = $1',
);

const WORKSPACE_NAME_TAKEN = prepared(
  'worker.workspace_name_taken',
  'SELECT 1 FROM workspaces WHERE owner_id = $1 AND lower(name) = lower($2) AND NOT deleted',
);

const INSERT_WORKSPACE = prepared(
  'worker.insert_workspace',
  `INSERT INTO workspaces (owner_id, template_id, name) VALUES ($1, $2, $3) RETURNING ${WORKSPACE_COLUMNS}`,
);

const INSERT_PROVISIONER_JOB = prepared(
  'worker.insert_provisioner_job',
  `INSERT INTO provisioner_jobs (type, input, trace_context) VALUES ('workspace_build', $1, $2)
   RETURNING id, job_status`,
);

const INSERT_BUILD = prepared(
  'worker.insert_build',
  `INSERT INTO workspace_builds (id, workspace_id, template_version_id, build_number, transition, initiator_id, job_id)
   VALUES ($1, $2, $3, $4, $5, $6, $7)`,
);

const INSERT_BUILD_PARAMETERS = prepared(
  'worker.insert_build_parameters',
  `INSERT INTO workspace_build_parameters (workspace_build_id, name, value)
   SELECT $1, name, value FROM unnest($2::text[], $3::text[]) AS p(name, value)`,
);

// A start's look at its workspace in one read: the workspace, its latest build (as JSON, null without one),
// its template, and the parameters a start build is planned with: the previous build's values and those of
// the previous build's version and of the template's active version.
const GET_START_STATE = prepared(
  'worker.get_start_state',
  `SELECT w.id, w.owner_id, w.template_id, w.name, w.deleted, w.automatic_updates,
          to_json(b) AS latest_build, to_json(t) AS template,
          (SELECT coalesce(json_agg(p ORDER BY p.name), '[]')
             FROM (SELECT name, value FROM workspace_build_parameters WHERE workspace_build_id = b.id) p
          ) AS previous_parameters,
          (SELECT coalesce(json_agg(v ORDER BY v.display_order, v.name), '[]')
             FROM (SELECT template_version_id, display_order, ${PARAMETER_COLUMNS} FROM template_version_parameters
                    WHERE template_version_id IN (t.active_version_id, b.template_version_id)) v
          ) AS version_parameters
     FROM workspaces w
     LEFT JOIN LATERAL (
       SELECT ${BUILD_COLUMNS} FROM workspace_builds b JOIN provisioner_jobs j ON j.id = b.job_id
        WHERE b.workspace_id = w.id ORDER BY b.build_number DESC LIMIT 1
     ) b ON true
     LEFT JOIN LATERAL (
       SELECT id, name, active_version_id, require_active_version FROM templates WHERE id = w.template_id
     ) t ON true
    WHERE w.id = $1`,
);

// The insert (migrations/0009) and, once it created the build, the chat's binding to it ($13), in one
// statement and so one transaction.
const INSERT_START_BUILD = prepared(
  'worker.insert_start_build',
  `WITH created AS (
     SELECT outcome, build_id, job_id, job_status
       FROM create_start_build($1::uuid, $2::uuid, $3::automatic_updates, $4::uuid, $5::boolean, $6::uuid,
                               $7::uuid, $8::integer, $9::uuid, $10::text[], $11::text[], $12::jsonb)
   ), bound AS (
     UPDATE chats SET workspace_id = $1::uuid, build_id = created.build_id, agent_id = NULL, updated_at = now()
       FROM created WHERE chats.id = $13::uuid AND created.outcome = 'created'
   )
   SELECT outcome, build_id, job_id, job_status FROM created`,
);

const toTemplate = (r: Row): Template => ({
  id: r.id as string,
  name: r.name as string,
  activeVersionId: r.active_version_id as string,
  requireActiveVersion: r.require_active_version as boolean,
});

/** One ask of getNewestBuildLogs. */
interface LogsAsk {
  jobId: string;
  after: string;
  limit: number;
}

export class PgWorkspaceStore implements WorkspaceStore {
  private readonly builds: ReadBatcher<string, Build | null>;
  private readonly agentsOfLatestBuilds: ReadBatcher<string, Agent[]>;
  private readonly agents: ReadBatcher<string, Agent | null>;
  private readonly newestBuildLogs: ReadBatcher<LogsAsk, NewestBuildLogs>;
  /** Estimate reads by template version and transition: running (kept until Infinity), or kept a while. */
  private readonly estimates = new Map<
    string,
    { read: Promise<TemplateEstimate | null>; keptUntil: number }
  >();
  private nextEstimateSweep = 0;

  constructor(private readonly pool: Pool) {
    this.builds = new ReadBatcher(async (ids) => {
      const byId = await rowsBy(pool, GET_BUILDS, [ids], 'id');
      return ids.map((id) => firstOf(byId.get(id), toBuild));
    });
    this.agentsOfLatestBuilds = new ReadBatcher(async (workspaceIds) => {
      const byWorkspace = await rowsBy(pool, GET_AGENTS_OF_LATEST_BUILDS, [workspaceIds], 'workspace_id');
      return workspaceIds.map((id) => (byWorkspace.get(id) ?? []).map(toAgent));
    });
    this.agents = new ReadBatcher(async (ids) => {
      const byId = await rowsBy(pool, GET_AGENTS, [ids], 'id');
      return ids.map((id) => firstOf(byId.get(id), toAgent));
    });
    this.newestBuildLogs = new ReadBatcher(
      async (asks) => {
        const byAsk = await rowsBy(
          pool,
          NEWEST_BUILD_LOGS,
          [asks.map((a) => a.jobId), asks.map((a) => a.after), asks.map((a) => a.limit)],
          'ask',
        );
        return asks.map((_, i) => toNewestBuildLogs(byAsk.get(i + 1) ?? []));
      },
      { identify: (a) => `${a.jobId} ${a.after} ${a.limit}` },
    );
  }

  getChat(chatId: string): Promise<Chat | null> {
    return one(this.pool, toChat, GET_CHAT, [chatId]);
  }

  getChatWithOwner(chatId: string): Promise<{ chat: Chat; owner: User | null } | null> {
    return one(
      this.pool,
      (r) => ({ chat: toChat(r), owner: (r.owner as User | null) ?? null }),
      GET_CHAT_WITH_OWNER,
      [chatId],
    );
  }

  getWorkspace(workspaceId: string): Promise<Workspace | null> {
    return one(this.pool, toWorkspace, GET_WORKSPACE, [workspaceId]);
  }

  getLatestBuild(workspaceId: string): Promise<Build | null> {
    return latestBuild(this.pool, workspaceId);
  }

  getBuild(buildId: string): Promise<Build | null> {
    return this.builds.get(buildId);
  }

  getAgentsOfLatestBuild(workspaceId: string): Promise<Agent[]> {
    return this.agentsOfLatestBuilds.get(workspaceId);
  }

  getAgent(agentId: string): Promise<Agent | null> {
    return this.agents.get(agentId);
  }

  bindChat(chatId: string, workspaceId: string, buildId: string): Promise<void> {
    return bindChat(this.pool, chatId, workspaceId, buildId);
  }

  async cancelProvisionerJob(jobId: string): Promise<'completed' | 'canceling' | 'untouched'> {
    const { rows } = await runPrepared<{ completed: boolean }>(this.pool, CANCEL_PROVISIONER_JOB, [jobId]);
    if (!rows[0]) return 'untouched';
    return rows[0].completed ? 'completed' : 'canceling';
  }

  async getQueuePositions(jobIds: readonly string[]): Promise<Map<string, QueuePosition>> {
    const { rows } = await runPrepared<{ id: string; position: number; pending: number }>(
      this.pool,
      QUEUE_POSITIONS,
      [jobIds],
    );
    return new Map(rows.map((r) => [r.id, { position: r.position, pending: r.pending }]));
  }

  async getBuildEstimate(build: Build): Promise<BuildEstimate | null> {
    const history = await this.templateEstimate(build.templateVersionId, build.transition);
    if (!history) return null;
    // A pending build's is measured from now, a running one's from its claim (as far as the caller knows it).
    const doneAt = (build.jobStartedAt?.getTime() ?? Date.now()) + history.buildMs;
    const estimate: BuildEstimate = {
      build_ms: history.buildMs,
      done_at: new Date(doneAt).toISOString(),
      samples: history.samples,
    };
    if (history.agentMs !== null) {
      estimate.agent_ms = history.agentMs;
      estimate.ready_at = new Date(doneAt + estimate.agent_ms).toISOString();
    }
    return estimate;
  }

  /**
   * The version's history of the transition: one read for the builds that ask while it runs, kept for
   * ESTIMATE_MAX_AGE_MS when it is full.
   */
  private templateEstimate(versionId: string, transition: string): Promise<TemplateEstimate | null> {
    const key = `${versionId} ${transition}`;
    const now = Date.now();
    const known = this.estimates.get(key);
    if (known && known.keptUntil > now) return known.read;
    // Expired entries go at most once a keeping period: a sweep per miss would be quadratic in a burst of
    // starts on many templates.
    if (now >= this.nextEstimateSweep) {
      this.nextEstimateSweep = now + ESTIMATE_MAX_AGE_MS;
      for (const [k, kept] of this.estimates) if (kept.keptUntil <= now) this.estimates.delete(k);
    }
    const entry = { read: this.readTemplateEstimate(versionId, transition), keptUntil: Infinity };
    this.estimates.set(key, entry);
    const forget = () => {
      if (this.estimates.get(key) === entry) this.estimates.delete(key);
    };
    entry.read.then((history) => {
      if (history?.samples === ESTIMATE_SAMPLES) entry.keptUntil = Date.now() + ESTIMATE_MAX_AGE_MS;
      else forget();
    }, forget);
    return entry.read;
  }

  private async readTemplateEstimate(
    versionId: string,
    transition: string,
  ): Promise<TemplateEstimate | null> {
    const { rows } = await runPrepared<{ samples: number; build_ms: number | null; agent_ms: number | null }>(
      this.pool,
      BUILD_ESTIMATE,
      [versionId, transition],
    );
    const row = rows[0];
    if (!row || row.samples === 0 || row.build_ms === null) return null;
    return {
      samples: row.samples,
      buildMs: Math.round(row.build_ms),
      agentMs: row.agent_ms === null ? null : Math.round(row.agent_ms),
    };
  }

  getNewestBuildLogs(jobId: string, after: string, limit: number): Promise<NewestBuildLogs> {
    return this.newestBuildLogs.get({ jobId, after, limit });
  }

  async getStartState(workspaceId: string): Promise<StartState | null> {
    const {
      rows: [row],
    } = await runPrepared<Row>(this.pool, GET_START_STATE, [workspaceId]);
    if (!row) return null;
    const versionParameters = new Map<string, TemplateVersionParameter[]>();
    for (const r of row.version_parameters as Row[]) {
      const versionId = r.template_version_id as string;
      let parameters = versionParameters.get(versionId);
      if (!parameters) versionParameters.set(versionId, (parameters = []));
      parameters.push(toParameter(r));
    }
    return {
      workspace: toWorkspace(row),
      latestBuild: row.latest_build ? toBuild(row.latest_build as Row) : null,
      inputs: row.template
        ? {
            template: toTemplate(row.template as Row),
            previousParameters: row.previous_parameters as BuildParameter[],
            versionParameters,
          }
        : null,
    };
  }

  async insertStartBuild(input: NewStartBuild): Promise<StartBuildInsert> {
    const buildId = randomUUID();
    const {
      rows: [row],
    } = await unlessTaken(
      runPrepared<{ outcome: string; build_id: string | null; job_id: string | null; job_status: string }>(
        this.pool,
        INSERT_START_BUILD,
        [
          input.workspaceId,
          input.previousBuildId,
          input.automaticUpdates,
          input.activeVersionId,
          input.requireActiveVersion,
          buildId,
          input.templateVersionId,
          input.buildNumber,
          input.initiatorId,
          input.parameters.map((p) => p.name),
          input.parameters.map((p) => p.value),
          // The job attempt's span (active here): the provisioner's build span links to it.
          traceCarrier() ?? null,
          input.chatId,
        ],
      ),
      (cause) => new BuildConflictError(input.workspaceId, input.buildNumber, { cause }),
      'workspace_builds',
    );
    switch (row!.outcome) {
      case 'deleted':
      case 'changed':
        return { kind: row!.outcome };
      case 'build_active': {
        const active = await this.getBuild(row!.build_id!);
        if (!active) throw new Error(`get build: build ${row!.build_id} not found`);
        return { kind: 'build_active', build: active };
      }
      case 'created':
        return {
          kind: 'created',
          build: insertedBuild(buildId, { ...input, transition: 'start' }, row!.job_id!, row!.job_status),
        };
      default:
        throw new Error(`create start build: unexpected outcome ${JSON.stringify(row!.outcome)}`);
    }
  }

  transaction<T>(fn: (tx: BuildTransaction) => Promise<T>): Promise<T> {
    return withTransaction(this.pool, (client) => fn(new PgBuildTransaction(client)));
  }
}

class PgBuildTransaction implements BuildTransaction {
  constructor(private readonly client: PoolClient) {}

  lockWorkspace(workspaceId: string): Promise<Workspace | null> {
    return one(this.client, toWorkspace, LOCK_WORKSPACE, [workspaceId]);
  }

  getLatestBuild(workspaceId: string): Promise<Build | null> {
    return latestBuild(this.client, workspaceId);
  }

  getTemplate(templateId: string): Promise<Template | null> {
    return one(this.client, toTemplate, GET_TEMPLATE, [templateId]);
  }

  async getTemplateVersionParameters(templateVersionId: string): Promise<TemplateVersionParameter[]> {
    const { rows } = await runPrepared<Row>(this.client, TEMPLATE_VERSION_PARAMETERS, [templateVersionId]);
    return rows.map(toParameter);
  }

  async getBuildParameters(buildId: string): Promise<BuildParameter[]> {
    const { rows } = await runPrepared<BuildParameter>(this.client, BUILD_PARAMETERS, [buildId]);
    return rows;
  }

  bindChat(chatId: string, workspaceId: string, buildId: string): Promise<void> {
    return bindChat(this.client, chatId, workspaceId, buildId);
  }

  async workspaceNameTaken(ownerId: string, name: string): Promise<boolean> {
    const { rowCount } = await runPrepared(this.client, WORKSPACE_NAME_TAKEN, [ownerId, name]);
    return (rowCount ?? 0) > 0;
  }

  async insertWorkspace(input: NewWorkspace): Promise<Workspace> {
    const row = await unlessTaken(
      one(this.client, toWorkspace, INSERT_WORKSPACE, [input.ownerId, input.templateId, input.name]),
      (cause) => new NameTakenError(input.ownerId, input.name, { cause }),
    );
    return row!;
  }

  async insertBuild(input: NewBuild): Promise<Build> {
    const buildId = randomUUID();
    const {
      rows: [job],
    } = await runPrepared<{ id: string; job_status: Build['jobStatus'] }>(
      this.client,
      INSERT_PROVISIONER_JOB,
      // The job attempt's span (active here): the provisioner's build span links to it.
      [{ workspace_build_id: buildId }, traceCarrier() ?? null],
    );
    await unlessTaken(
      runPrepared(this.client, INSERT_BUILD, [
        buildId,
        input.workspaceId,
        input.templateVersionId,
        input.buildNumber,
        input.transition,
        input.initiatorId,
        job!.id,
      ]),
      (cause) => new BuildConflictError(input.workspaceId, input.buildNumber, { cause }),
    );
    await runPrepared(this.client, INSERT_BUILD_PARAMETERS, [
      buildId,
      input.parameters.map((p) => p.name),
      input.parameters.map((p) => p.value),
    ]);
    return insertedBuild(buildId, input, job!.id, job!.job_status);
  }
}
