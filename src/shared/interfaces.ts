// Every public type of workspace-jobs in one place: configuration, job payloads, events, results and the
// database rows and interfaces the worker's domain logic runs over. CONTRACT.md is the source of truth
// for the shapes that leave the process (payloads, events, results).

// ---------------------------------------------------------------------------------------------------
// Configuration (CONTRACT.md section 3)

export interface Config {
  /**
   * Queue, events. Default `redis://127.0.0.1:6379`. With `redisCluster`, the cluster's seed nodes,
   * comma-separated (one is enough; the others are discovered).
   */
  redisUrl: string;
  /** REDIS_CLUSTER: `redisUrl` is a Redis Cluster. Default false. */
  redisCluster?: boolean;
  /** Independent Redis nodes for the chat lock; 3 or more = Redlock quorum. Default `[redisUrl]`. */
  lockRedisUrls: string[];
  /**
   * The lock's one node (`lockRedisUrls[0]`, then `redisUrl`) is a Redis Cluster: REDIS_CLUSTER without
   * LOCK_REDIS_URLS. Default false.
   */
  lockRedisCluster?: boolean;
  /** Default `postgres://postgres@127.0.0.1:5432/workspace_jobs`. */
  databaseUrl: string;
  /**
   * BullMQ prefix and prefix of every Redis key and channel. Default `wsjobs` (`{wsjobs}` on a cluster,
   * where it must carry a hash tag).
   */
  queuePrefix: string;
  /** Jobs one worker process runs at once. Default 50. */
  workerConcurrency: number;
  /** Default 600000 (Coder's 10 minutes). */
  buildTimeoutMs: number;
  /** Default 120000 (Coder's 2 minutes). */
  agentConnectTimeoutMs: number;
  /** Default 600000 (Coder's 10 minutes). */
  startupScriptTimeoutMs: number;
  /** Attempts for transient failures, exponential backoff with jitter. Default 5. */
  jobAttempts: number;
  /** BullMQ's job lock (lockDuration): a dead worker's jobs are recoverable once it expires. Default 5000. */
  jobLockMs: number;
  /** How often each worker looks for jobs whose lock expired (BullMQ's stalledInterval). Default 2000. */
  stalledIntervalMs: number;
  /** The chat lock's TTL, refreshed every third of it; a dead holder's lock is free after it. Default 6000. */
  chatLockTtlMs: number;
  /** Base URL of the workspace web UI; manual-update errors then carry a settings link. */
  accessUrl?: string;
  logLevel: string;
  dashboardPort: number;
  dashboardHost: string;
  dashboardUser?: string;
  dashboardPassword?: string;
  dashboardReadOnly: boolean;
  /** Origins the dashboard is also reached at (behind a proxy that rewrites Host), for its cross-site check. */
  dashboardAllowedOrigins?: string[];
  /** Open event streams allowed per client address (default 32) and in total (default 1000). */
  dashboardSseMaxPerClient?: number;
  dashboardSseMaxStreams?: number;
  /** The worker serves /metrics and /healthz on this port when set (0 = any free port). */
  metricsPort?: number;
  /**
   * Where the worker's metrics server listens. Default 0.0.0.0: scrapers and probes come from outside the
   * container, and nothing it serves is sensitive (see metrics-server.ts).
   */
  metricsHost?: string;
}

// ---------------------------------------------------------------------------------------------------
// Jobs (CONTRACT.md section 4)

export const QUEUE_NAME = 'workspaces';
export type JobName = 'start-workspace' | 'create-workspace';

export interface StartWorkspacePayload {
  chatId: string;
  ownerId: string;
  workspaceId: string;
  parameters?: Record<string, string>;
  requestId?: string;
}

export interface CreateWorkspacePayload {
  chatId: string;
  ownerId: string;
  templateId: string;
  name?: string;
  parameters?: Record<string, string>;
  requestId?: string;
}

// ---------------------------------------------------------------------------------------------------
// Events (CONTRACT.md section 6)

export const PROGRESS_STAGES = [
  'queued',
  'deduplicated',
  'waiting_for_lock',
  'lock_acquired',
  'checking',
  'waiting_for_existing_build',
  'updating_to_active_version',
  'build_queued',
  'build_running',
  'build_succeeded',
  'agent_connecting',
  'agent_starting',
  'agent_ready',
  'retrying',
] as const;
export type ProgressStage = (typeof PROGRESS_STAGES)[number];
export const RESULT_STAGES = ['completed', 'failed'] as const;
export type ResultStage = (typeof RESULT_STAGES)[number];

export interface JobRef {
  id: string;
  name: JobName;
  attempt: number;
}

/** What every event carries; `type` tells a progress event from the job's one result event. */
interface EventEnvelope {
  v: 1;
  /** The replay stream's entry id. */
  seq: string;
  job: JobRef;
  chatId: string;
  workspaceId?: string;
  /** ISO 8601. */
  at: string;
  message: string;
}

export interface ProgressEvent extends EventEnvelope {
  type: 'progress';
  stage: ProgressStage;
  /** Stage details, e.g. `{ build_id, build_number, transition }` for `build_running`. */
  data?: Record<string, unknown>;
}

/** The job's one result event: `data` is its result. */
export interface ResultEvent extends EventEnvelope {
  type: 'result';
  stage: ResultStage;
  data: JobResult;
}

export type WorkspaceJobEvent = ProgressEvent | ResultEvent;

/** Omit applied to each member of a union (plain Omit would merge the members into one loose type). */
type OmitEach<T, K extends PropertyKey> = T extends unknown ? Omit<T, K> : never;

/** An event before the publisher has given it a `seq` and a time. */
export type EventDraft = OmitEach<WorkspaceJobEvent, 'v' | 'seq' | 'at'>;

// ---------------------------------------------------------------------------------------------------
// Results (CONTRACT.md section 7; compatible with Coder's start_workspace tool result)

export interface AgentReadiness {
  agent_status?: 'no_agent' | 'selection_error' | 'not_ready';
  agent_error?: string;
  startup_scripts?: 'startup_scripts_failed' | 'startup_scripts_timeout' | 'startup_scripts_unknown';
  lifecycle_state?: string;
}

export interface StartWorkspaceSuccess extends AgentReadiness {
  started: true;
  /** The bare workspace name. */
  workspace_name: string;
  build_id?: string;
  no_build?: true;
  updated_to_active_version?: true;
  update_reason?: string;
  message?: string;
  previous_template_version_id?: string;
  template_version_id?: string;
}

export interface CreateWorkspaceSuccess extends AgentReadiness {
  created: boolean;
  /** `owner/name`. */
  workspace_name: string;
  status?: 'already_exists' | 'stopped';
  message?: string;
  build_id?: string;
}

export const FAILURE_CODES = [
  'no_workspace',
  'workspace_deleted',
  'workspace_changed',
  'forbidden',
  'build_active',
  'build_failed',
  'build_canceled',
  'build_timeout',
  'manual_update_required',
  'invalid_parameters',
  'invalid_payload',
  'internal',
] as const;
export type FailureCode = (typeof FAILURE_CODES)[number];

export interface Validation {
  field: string;
  detail: string;
}

export interface JobFailure {
  error: string;
  code: FailureCode;
  /** Coder's "flagged" errors (plain precondition failures); build and parameter failures are not. */
  is_error: boolean;
  detail?: string;
  validations?: Validation[];
  template_id?: string;
  build_id?: string;
  settings_url?: string;
}

export type StartWorkspaceResult = StartWorkspaceSuccess | JobFailure;
export type CreateWorkspaceResult = CreateWorkspaceSuccess | JobFailure;
export type JobResult = StartWorkspaceResult | CreateWorkspaceResult;

export function isFailure(result: JobResult): result is JobFailure {
  return 'error' in result;
}

// ---------------------------------------------------------------------------------------------------
// Database rows (Coder's names; see migrations/)

export type WorkspaceTransition = 'start' | 'stop' | 'delete';
export type ProvisionerJobStatus =
  'pending' | 'running' | 'succeeded' | 'canceling' | 'canceled' | 'failed' | 'unknown';
export type AgentLifecycleState =
  | 'created'
  | 'starting'
  | 'start_timeout'
  | 'start_error'
  | 'ready'
  | 'shutting_down'
  | 'shutdown_timeout'
  | 'shutdown_error'
  | 'off';

export interface User {
  id: string;
  username: string;
  status: 'active' | 'dormant' | 'suspended';
  deleted: boolean;
}

export interface Chat {
  id: string;
  ownerId: string;
  parentChatId: string | null;
  workspaceId: string | null;
  buildId: string | null;
  agentId: string | null;
}

export interface Workspace {
  id: string;
  ownerId: string;
  templateId: string;
  name: string;
  deleted: boolean;
  automaticUpdates: 'always' | 'never';
}

export interface Template {
  id: string;
  name: string;
  activeVersionId: string;
  requireActiveVersion: boolean;
}

export interface TemplateVersionParameter {
  name: string;
  displayName: string;
  type: string;
  mutable: boolean;
  required: boolean;
  ephemeral: boolean;
  defaultValue: string;
  options: { name: string; value: string }[];
  validationRegex: string | null;
  validationMin: number | null;
  validationMax: number | null;
  validationMonotonic: 'increasing' | 'decreasing' | null;
  validationError: string;
}

export interface BuildParameter {
  name: string;
  value: string;
}

/** A workspace build together with the status of its provisioner job. */
export interface Build {
  id: string;
  workspaceId: string;
  buildNumber: number;
  transition: WorkspaceTransition;
  templateVersionId: string;
  jobId: string;
  jobStatus: ProvisionerJobStatus;
  jobError: string | null;
}

export interface Agent {
  id: string;
  name: string;
  parentId: string | null;
  displayOrder: number;
  lifecycleState: AgentLifecycleState;
  firstConnectedAt: Date | null;
  lastConnectedAt: Date | null;
  disconnectedAt: Date | null;
  createdAt: Date;
  /** 0 = never times out while connecting. */
  connectionTimeoutSeconds: number;
}

/** Coder's derived agent connection status (not stored). */
export type AgentConnectionStatus = 'connecting' | 'connected' | 'disconnected' | 'timeout';

/**
 * The producer's Postgres pool: a `pg.Pool` fits. Structural, so that the package's public types do not need
 * `@types/pg` (a dev dependency) in the chat backend.
 */
export interface QueryPool {
  query<R extends Record<string, unknown>>(text: string, values?: unknown[]): Promise<{ rows: R[] }>;
  end(): Promise<void>;
}

// ---------------------------------------------------------------------------------------------------
// What the worker's domain logic runs over (src/worker). Implemented on Postgres by PgWorkspaceStore.

/** Reads and writes outside a transaction. */
export interface WorkspaceStore {
  getChat(chatId: string): Promise<Chat | null>;
  getUser(userId: string): Promise<User | null>;
  getWorkspace(workspaceId: string): Promise<Workspace | null>;
  getLatestBuild(workspaceId: string): Promise<Build | null>;
  getBuild(buildId: string): Promise<Build | null>;
  /** Root and sub-agents of the workspace's latest build, not deleted, in no particular order. */
  getAgentsOfLatestBuild(workspaceId: string): Promise<Agent[]>;
  getAgent(agentId: string): Promise<Agent | null>;
  /** Points the chat at a workspace and build and clears its agent (Coder's UpdateChatWorkspaceBinding). */
  bindChat(chatId: string, workspaceId: string, buildId: string): Promise<void>;
  /** Runs `fn` in one transaction; commits when it resolves, rolls back when it throws. */
  transaction<T>(fn: (tx: BuildTransaction) => Promise<T>): Promise<T>;
}

/** What creating a build needs, inside one transaction. */
export interface BuildTransaction {
  /** Locks the workspace row (FOR UPDATE) so that concurrent builds of it serialise. */
  lockWorkspace(workspaceId: string): Promise<Workspace | null>;
  getLatestBuild(workspaceId: string): Promise<Build | null>;
  getTemplate(templateId: string): Promise<Template | null>;
  getTemplateVersionParameters(templateVersionId: string): Promise<TemplateVersionParameter[]>;
  getBuildParameters(buildId: string): Promise<BuildParameter[]>;
  /** Inserts a pending provisioner job, the build and its full parameter set. */
  insertBuild(input: NewBuild): Promise<Build>;
  /** Whether the owner has a live workspace of that name (names are unique per owner, case-insensitively). */
  workspaceNameTaken(ownerId: string, name: string): Promise<boolean>;
  insertWorkspace(input: NewWorkspace): Promise<Workspace>;
  /** As WorkspaceStore.bindChat, inside the transaction. */
  bindChat(chatId: string, workspaceId: string, buildId: string): Promise<void>;
}

export interface NewWorkspace {
  ownerId: string;
  templateId: string;
  name: string;
}

export interface NewBuild {
  workspaceId: string;
  templateVersionId: string;
  buildNumber: number;
  transition: WorkspaceTransition;
  initiatorId: string;
  parameters: BuildParameter[];
}

/** Event-driven waiting on database changes (LISTEN/NOTIFY plus a slow safety re-check). */
export interface ChangeWaiter {
  /**
   * Calls `check` at once, then whenever one of `topics` changes (and at the safety re-check interval),
   * until it returns something other than `undefined`. Rejects with a `WaitTimeoutError` after
   * `timeoutMs`, and with the signal's reason when `signal` aborts.
   */
  waitFor<T>(
    topics: string[],
    check: () => Promise<T | undefined>,
    options: { timeoutMs: number; signal?: AbortSignal },
  ): Promise<T>;
}

/** Topics a ChangeWaiter understands: one per provisioner job and one per agent. */
export const topics = {
  provisionerJob: (jobId: string) => `provisioner_job:${jobId}`,
  agent: (agentId: string) => `workspace_agent:${agentId}`,
};

export interface WaitTimeouts {
  buildTimeoutMs: number;
  agentConnectTimeoutMs: number;
  startupScriptTimeoutMs: number;
}

/** Publishes a progress event of the running job. */
export type ProgressReporter = (
  stage: ProgressStage,
  message: string,
  data?: Record<string, unknown>,
  workspaceId?: string,
) => Promise<void>;

/** Told what a job did, for metrics. Called after the fact; it must not throw. */
export interface JobObserver {
  /** A build was created and its transaction committed; `updateReason` when it moved to the active version. */
  buildCreated(build: Build, updateReason?: string): void;
}

/** Everything the domain logic of one job needs; the processor builds it. */
export interface JobContext {
  store: WorkspaceStore;
  waiter: ChangeWaiter;
  progress: ProgressReporter;
  timeouts: WaitTimeouts;
  /** Aborted when the chat lock is lost or the worker shuts down. */
  signal: AbortSignal;
  accessUrl?: string;
  observe?: JobObserver;
  /** The build an earlier attempt of this job created (kept in the job's progress); a re-run reports it. */
  ownBuildId?: string;
  /** Records the build this attempt created, before it is waited for, so that a re-run knows it (ownBuildId). */
  recordBuild(buildId: string): Promise<void>;
}

/**
 * A job's BullMQ progress: the last event it published, and its full result once it ended. A job ends in
 * BullMQ as completed with its result as return value, a success or an expected failure result; only a
 * real failure (`internal`, `invalid_payload`) fails it, for Bull Board's failed list (README, Alerting).
 */
export interface JobProgress {
  stage: ProgressStage | ResultStage;
  message: string;
  at: string;
  /** How many times the job found the chat lock busy and was re-delayed. */
  lockWaits?: number;
  /** When the job first found the chat lock busy (ISO 8601); bounds how long it may keep waiting. */
  lockWaitStartedAt?: string;
  /**
   * When a worker first picked the job up (ISO 8601; BullMQ's `processedOn` of the first attempt, which
   * BullMQ itself overwrites on every attempt and re-delay). Kept across attempts; the job's duration
   * metric counts from here.
   */
  startedAt?: string;
  /** The build the job created (kept across attempts): a re-run that finds it reports it, not "no build". */
  buildId?: string;
  result?: JobResult;
}
