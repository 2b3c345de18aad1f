// What the worker's domain logic runs over: the database rows (Coder's names; see migrations/), the store
// and the waiter it reads them through, and the context of one job. Implemented on Postgres by PgWorkspaceStore
// (pg-store.ts) and on LISTEN/NOTIFY by notifications.ts.
import type { BuildEstimate, BuildLogPreviewLine, ProgressStage, QueuePosition } from '../shared/contract.js';
import type { NotificationPayload } from '../shared/notifications.js';

// ---------------------------------------------------------------------------------------------------
// Database rows (Coder's names; see migrations/)

export type WorkspaceTransition = 'start' | 'stop' | 'delete';
export type ProvisionerJobStatus =
  'pending' | 'running' | 'succeeded' | 'canceling' | 'canceled' | 'failed' | 'unknown';
/** Job statuses of a build that has ended. */
export const FINISHED_JOB_STATUSES: ReadonlySet<ProvisionerJobStatus> = new Set([
  'succeeded',
  'failed',
  'canceled',
]);
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

/** The owner's quota when a build was refused for it, in credits (Coder's workspace quota). */
export interface QuotaUsage {
  creditsConsumed: number;
  budget: number;
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
  /** When a provisioner claimed the job: null while pending, and where the caller only heard it was claimed. */
  jobStartedAt: Date | null;
  jobError: string | null;
  /** provisioner_jobs.error_code: a failed build's machine-readable reason, e.g. INSUFFICIENT_QUOTA. */
  jobErrorCode: string | null;
  /** The quota the provisioner reported with the failure (provisioner_jobs.quota_*). */
  jobQuota: QuotaUsage | null;
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

// ---------------------------------------------------------------------------------------------------
// Store, waiter and job context

/** Reads and writes outside a transaction. */
export interface WorkspaceStore {
  getChat(chatId: string): Promise<Chat | null>;
  /** The chat with its owner's user row (null when that is missing), in one read. */
  getChatWithOwner(chatId: string): Promise<{ chat: Chat; owner: User | null } | null>;
  getWorkspace(workspaceId: string): Promise<Workspace | null>;
  getLatestBuild(workspaceId: string): Promise<Build | null>;
  getBuild(buildId: string): Promise<Build | null>;
  /** Root and sub-agents of the workspace's latest build, not deleted, in no particular order. */
  getAgentsOfLatestBuild(workspaceId: string): Promise<Agent[]>;
  getAgent(agentId: string): Promise<Agent | null>;
  /** Points the chat at a workspace and build and clears its agent (Coder's UpdateChatWorkspaceBinding). */
  bindChat(chatId: string, workspaceId: string, buildId: string): Promise<void>;
  /**
   * The places of the provisioner jobs among the pending ones (Coder's queue position), in one read, by job id;
   * a job that is not pending has none.
   */
  getQueuePositions(jobIds: readonly string[]): Promise<Map<string, QueuePosition>>;
  /**
   * When the build will be done, from its template's recent builds of its transition, measured from its claim
   * (`jobStartedAt`) or, without one, from now; null without history. The builds of one template version
   * share the read while it runs, and a full history for a second (pg-store.ts, ESTIMATE_MAX_AGE_MS).
   */
  getBuildEstimate(build: Build): Promise<BuildEstimate | null>;
  /** The newest `limit` log lines of the job after line `after` (oldest first), and how many there are in all. */
  getNewestBuildLogs(jobId: string, after: string, limit: number): Promise<NewestBuildLogs>;
  /**
   * Cancels a provisioner job with Coder's semantics (one statement): `canceled_at` set (an earlier one
   * kept); one no daemon has started is completed as canceled at once (`completed`), a running one is left
   * to its daemon to abort (`canceling`); a completed (or unknown) job is not touched (`untouched`).
   */
  cancelProvisionerJob(jobId: string): Promise<'completed' | 'canceling' | 'untouched'>;
  /**
   * What a start looks at, in one read: the workspace, its latest build and what a start build is planned
   * with. Null when there is no such workspace row.
   */
  getStartState(workspaceId: string): Promise<StartState | null>;
  /**
   * Creates a start build in one statement and transaction (migrations/0009): takes the workspace's row lock,
   * checks under it what the plan saw, inserts job, build and parameters, and binds the chat to the build
   * (as bindChat). BuildConflictError if the number is taken.
   */
  insertStartBuild(input: NewStartBuild): Promise<StartBuildInsert>;
  /** Runs `fn` in one transaction; commits when it resolves, rolls back when it throws. */
  transaction<T>(fn: (tx: BuildTransaction) => Promise<T>): Promise<T>;
}

export interface StartState {
  workspace: Workspace;
  latestBuild: Build | null;
  /** Null when the workspace's template is gone. */
  inputs: StartBuildInputs | null;
}

/** What a start build is planned with besides the workspace and its latest build. */
export interface StartBuildInputs {
  template: Template;
  /** The previous build's parameter values (none without a previous build). */
  previousParameters: BuildParameter[];
  /**
   * The parameters of the previous build's version and of the template's active version, by version id,
   * each in display order.
   */
  versionParameters: ReadonlyMap<string, TemplateVersionParameter[]>;
}

/** A start build, with what its plan saw: insertStartBuild creates it only while all of that still holds. */
export interface NewStartBuild extends Omit<NewBuild, 'transition'> {
  /** The chat bound to the build once it is created. */
  chatId: string;
  previousBuildId: string | null;
  automaticUpdates: Workspace['automaticUpdates'];
  activeVersionId: string;
  requireActiveVersion: boolean;
}

/**
 * insertStartBuild's outcome: `deleted` (the workspace is gone or deleted), `build_active` (its latest build
 * is), `changed` (something the plan saw changed; plan again), or `created`.
 */
export type StartBuildInsert =
  | { kind: 'created'; build: Build }
  | { kind: 'deleted' }
  | { kind: 'build_active'; build: Build }
  | { kind: 'changed' };

export interface NewestBuildLogs {
  lines: BuildLogPreviewLine[];
  /** Lines after the cursor, `lines` included. */
  total: number;
}

/** What creating a build needs, inside one transaction. */
export interface BuildTransaction {
  /** Locks the workspace row (FOR UPDATE) so that concurrent builds of it serialise. */
  lockWorkspace(workspaceId: string): Promise<Workspace | null>;
  getLatestBuild(workspaceId: string): Promise<Build | null>;
  getTemplate(templateId: string): Promise<Template | null>;
  getTemplateVersionParameters(templateVersionId: string): Promise<TemplateVersionParameter[]>;
  getBuildParameters(buildId: string): Promise<BuildParameter[]>;
  /** Inserts a pending provisioner job, the build and its full parameter set; BuildConflictError if taken. */
  insertBuild(input: NewBuild): Promise<Build>;
  /** Whether the owner has a live workspace of that name (names are unique per owner, case-insensitively). */
  workspaceNameTaken(ownerId: string, name: string): Promise<boolean>;
  /** Throws NameTakenError when the name is taken after all. */
  insertWorkspace(input: NewWorkspace): Promise<Workspace>;
  /** As WorkspaceStore.bindChat, inside the transaction. */
  bindChat(chatId: string, workspaceId: string, buildId: string): Promise<void>;
}

/**
 * insertWorkspace: the owner already has a live workspace of that name (names are unique per owner,
 * case-insensitively). The store's own check (workspaceNameTaken) can be overtaken by a concurrent create.
 */
export class NameTakenError extends Error {
  override name = 'NameTakenError';
  constructor(
    readonly ownerId: string,
    readonly workspaceName: string,
    options?: ErrorOptions,
  ) {
    super(`user ${ownerId} already has a workspace named ${JSON.stringify(workspaceName)}`, options);
  }
}

/**
 * insertBuild: the workspace already has a build of that number, inserted concurrently by something that
 * did not take the workspace's row lock.
 */
export class BuildConflictError extends Error {
  override name = 'BuildConflictError';
  constructor(
    readonly workspaceId: string,
    readonly buildNumber: number,
    options?: ErrorOptions,
  ) {
    super(`workspace ${workspaceId} already has a build #${buildNumber}`, options);
  }
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

/** Event-driven waiting on database changes (LISTEN/NOTIFY, on a connection its hub proves alive). */
export interface ChangeWaiter {
  /**
   * Calls `check` at once, then whenever one of `topics` changes (every one after the LISTEN connection was
   * restored), until it returns something other than `undefined`. A check woken by notifications gets the
   * last one's payload (`notice`, what the trigger sent: a job's new job_status); the first check, a timed
   * re-check and one after a reconnect get none and must read what they need. Rejects with a
   * `WaitTimeoutError` after `timeoutMs`, and with the signal's reason when `signal` aborts. `recheckMs`:
   * also re-check about this often (±20 %), for a condition that can change without a notification (a
   * heartbeat column no trigger watches, the clock); without it a wait costs no query until a change.
   * `minIntervalMs`: checks begin at least this far apart; what comes sooner is answered by one check once
   * the interval is over (a build's log, read at most every BUILD_LOG_INTERVAL_MS).
   */
  waitFor<T>(
    topics: string[],
    check: (notice?: NotificationPayload) => Promise<T | undefined>,
    options: { timeoutMs: number; signal?: AbortSignal; recheckMs?: number; minIntervalMs?: number },
  ): Promise<T>;
}

/**
 * The queue positions of waiting builds, read for all of a process's waits at once (queue-positions.ts):
 * what a waiting build tells of its queue costs the same few queries however many builds wait.
 */
export interface QueueWatch {
  /** The job's place among the pending ones (Coder's queue position); null when it is not pending. */
  position(jobId: string): Promise<QueuePosition | null>;
  /**
   * Calls `check` with the job's position (null once it is not pending) each time the queue is read after a
   * provisioner job changed, at most once per interval, until it returns something other than `undefined`.
   * The first read comes an interval after the call at the earliest. Rejects with a `WaitTimeoutError`
   * after `timeoutMs`, and with the signal's reason when `signal` aborts.
   */
  follow<T>(
    jobId: string,
    check: (position: QueuePosition | null) => Promise<T | undefined>,
    options: { timeoutMs: number; signal?: AbortSignal },
  ): Promise<T>;
}

/** Topics a ChangeWaiter understands: one per provisioner job, one per job's log lines, one per agent. */
export const topics = {
  provisionerJob: (jobId: string) => `provisioner_job:${jobId}`,
  /** Reached after every statement that appends lines to the job's log (migrations/0006). */
  provisionerJobLogs: (jobId: string) => `provisioner_job_logs:${jobId}`,
  agent: (agentId: string) => `workspace_agent:${agentId}`,
};

export interface WaitTimeouts {
  buildTimeoutMs: number;
  agentConnectTimeoutMs: number;
  startupScriptTimeoutMs: number;
  /** The agent connect wait's timed re-check (tests shorten it). Default AGENT_CONNECT_RECHECK_MS. */
  agentConnectRecheckMs?: number;
}

/** Publishes a progress event of the running job. */
export type ProgressReporter = (
  stage: ProgressStage,
  message: string,
  data?: Record<string, unknown>,
  workspaceId?: string,
) => Promise<void>;

/**
 * Why a start build moved to the template's active version (D4): the template requires it, or the workspace's
 * automatic updates are on. A code: results.ts makes the sentence, metrics use it as their label.
 */
export type UpdateReason = 'require_active_version' | 'automatic_updates';

/** Told what a job did, for metrics. Called after the fact; it must not throw. */
export interface JobObserver {
  /** A build was created and its transaction committed; `updateReason` when it moved to the active version. */
  buildCreated(build: Build, updateReason?: UpdateReason): void;
}

/** Everything the domain logic of one job needs; the processor builds it. */
export interface JobContext {
  store: WorkspaceStore;
  waiter: ChangeWaiter;
  queue: QueueWatch;
  progress: ProgressReporter;
  timeouts: WaitTimeouts;
  /** Aborted when the chat lock is lost, the worker shuts down, or the job is canceled. */
  signal: AbortSignal;
  accessUrl?: string;
  observe?: JobObserver;
  /** The build an earlier attempt of this job created (kept in the job's progress); a re-run reports it. */
  ownBuildId?: string;
  /** Records the build this attempt created, before it is waited for, so that a re-run knows it (ownBuildId). */
  recordBuild(buildId: string): Promise<void>;
}
