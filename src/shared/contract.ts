// The public contract of workspace-jobs: job payloads, events, results and failure codes, the shapes that
// leave the process (what src/index.ts exports). docs/design.md is the source of truth for them; the worker's
// own ports (rows, store, waiter) are in src/worker/ports.ts. The job kinds are listed once, in
// src/jobs/registry.ts: JobName and JobResult are derived from that list (a type-only import, no cycle at run
// time).
import type { z } from 'zod';
import type { JOB_KINDS } from '../jobs/registry.js';

// ---------------------------------------------------------------------------------------------------
// Jobs (docs/design.md §4)

export const QUEUE_NAME = 'workspaces';
type RegisteredKind = (typeof JOB_KINDS)[number];
/** A job kind's BullMQ job name: `start-workspace`, `create-workspace`, … (one per kind in the registry). */
export type JobName = RegisteredKind['name'];

export interface StartWorkspacePayload {
  chatId: string;
  ownerId: string;
  workspaceId: string;
  parameters?: Record<string, string>;
  requestId?: string;
}

/**
 * The payload fields a deduplicated start is compared on. Not `workspaceId` (it is the deduplication id) and
 * not `requestId` (each request has its own).
 */
export type StartWorkspaceField = 'chatId' | 'ownerId' | 'parameters';

export interface CreateWorkspacePayload {
  chatId: string;
  ownerId: string;
  templateId: string;
  name?: string;
  parameters?: Record<string, string>;
  requestId?: string;
}

/** The payload fields a deduplicated create is compared on (not `chatId`, the deduplication id). */
export type CreateWorkspaceField = 'ownerId' | 'templateId' | 'name' | 'parameters';

// ---------------------------------------------------------------------------------------------------
// Events (docs/design.md §6)

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
  'build_log',
  'queue_position',
] as const;
export type ProgressStage = (typeof PROGRESS_STAGES)[number];
export const RESULT_STAGES = ['completed', 'failed'] as const;
export type ResultStage = (typeof RESULT_STAGES)[number];

export interface JobRef {
  id: string;
  name: JobName;
  attempt: number;
}

/**
 * When a build will be done, from the template's last 20 succeeded builds of the same transition (medians);
 * absent without history. `done_at` = the build's start (now while pending) + `build_ms`; `agent_ms`/`ready_at`
 * (the agents' connect or ready time after their build completed) only when those builds had agents.
 */
export interface BuildEstimate {
  build_ms: number;
  /** ISO 8601. */
  done_at: string;
  /** How many builds the medians are of (1 to 20). */
  samples: number;
  agent_ms?: number;
  /** ISO 8601. */
  ready_at?: string;
}

/** A pending build's place among the pending provisioner jobs: `position` 1 = next to run. */
export interface QueuePosition {
  position: number;
  pending: number;
}

/** One line of a `build_log` event (a preview: the full log is served by the logs endpoint). */
export interface BuildLogPreviewLine {
  /** provisioner_job_logs.id as a decimal string. */
  id: string;
  /** ISO 8601. */
  at: string;
  level: string;
  stage: string;
  output: string;
}

/**
 * `build_log` data: the newest lines (at most 20) written since the build's previous build_log event,
 * `skipped` = the lines in between that were not carried, `last_log_id` = the newest line's id.
 */
export interface BuildLogData {
  build_id: string;
  transition: string;
  lines: BuildLogPreviewLine[];
  last_log_id: string;
  skipped: number;
}

/** `queue_position` data: published when a pending build's position changes. */
export interface QueuePositionData extends QueuePosition {
  build_id: string;
  transition: string;
  estimate?: BuildEstimate;
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
// Results (docs/design.md §7; compatible with Coder's start_workspace tool result)

export interface AgentReadiness {
  agent_status?: 'no_agent' | 'selection_error' | 'not_ready';
  agent_error?: string;
  startup_scripts?: 'startup_scripts_failed' | 'startup_scripts_timeout' | 'startup_scripts_unknown';
  lifecycle_state?: string;
}

/**
 * What every result carries, so that nothing tells results apart by their other properties: `kind` is the job
 * name that produced it, `ok` is `true` for a success and `false` for a failure (which has a `code`).
 */
interface ResultDiscriminants<Kind extends string, Ok extends boolean> {
  kind: Kind;
  ok: Ok;
}

export interface StartWorkspaceSuccess extends AgentReadiness, ResultDiscriminants<'start-workspace', true> {
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

export interface CreateWorkspaceSuccess
  extends AgentReadiness, ResultDiscriminants<'create-workspace', true> {
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
  'canceled',
] as const;
export type FailureCode = (typeof FAILURE_CODES)[number];

export interface Validation {
  field: string;
  detail: string;
}

/** Coder's provisioner_jobs.error_code of a build refused for lack of quota (codersdk.JobErrorCodeInsufficientQuota). */
export const INSUFFICIENT_QUOTA = 'INSUFFICIENT_QUOTA';

/** The owner's quota in credits when a build was refused for it. */
export interface QuotaReport {
  credits_consumed: number;
  budget: number;
}

export interface JobFailure extends ResultDiscriminants<JobName, false> {
  error: string;
  code: FailureCode;
  /** Coder's "flagged" errors (plain precondition failures); build and parameter failures are not. */
  is_error: boolean;
  detail?: string;
  validations?: Validation[];
  template_id?: string;
  build_id?: string;
  settings_url?: string;
  /** The failed build's provisioner_jobs.error_code, whenever it has one. */
  error_code?: string;
  // Coder's quota failure (error_code INSUFFICIENT_QUOTA, PR #24956) adds the next four.
  /** A short heading, e.g. for a tool card. */
  title?: string;
  /** What happened, for the user and the model. */
  message?: string;
  /** What the user can do about it. */
  next_steps?: string[];
  /** The owner's quota, when the provisioner reported it. */
  quota?: QuotaReport;
}

export type StartWorkspaceResult = StartWorkspaceSuccess | JobFailure;
export type CreateWorkspaceResult = CreateWorkspaceSuccess | JobFailure;
/** A success of any registered kind (its `successSchema`'s type). */
export type JobSuccess = z.output<RegisteredKind['successSchema']>;
export type JobResult = JobSuccess | JobFailure;

/** A failure result, told by its `ok` (also among other outcomes, e.g. a row or a failure). */
export function isFailure<R extends object>(result: R): result is Extract<R, JobFailure> {
  return (result as { ok?: unknown }).ok === false;
}

/**
 * The producer's Postgres pool: a `pg.Pool` fits. Structural, so that the package's public types do not need
 * `@types/pg` (a dev dependency) in the chat backend. It takes pg's query config too: the build log reads run
 * as a named prepared statement.
 */
export interface QueryPool {
  query<R extends Record<string, unknown>>(
    textOrConfig: string | { name?: string; text: string; values?: unknown[] },
    values?: unknown[],
  ): Promise<{ rows: R[] }>;
  end(): Promise<void>;
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
