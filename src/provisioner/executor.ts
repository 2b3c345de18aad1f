// What a provisioner daemon hands to the thing that actually builds a workspace. The daemon owns the
// provisioner job row (claim, heartbeat, cancellation, completion, resources and agents); an executor only
// does the build and says which agents it created, so executors stay small and easy to swap.
import type { QuotaUsage, WorkspaceTransition } from '../worker/ports.js';

/** Coder's log stage names for the apply step, so build logs read like a real build's. */
export const APPLY_STAGE: Record<WorkspaceTransition, string> = {
  start: 'Starting workspace',
  stop: 'Stopping workspace',
  delete: 'Destroying workspace',
};

export type LogLevel = 'trace' | 'debug' | 'info' | 'warn' | 'error';

/** One claimed workspace build, with everything an executor needs to build it. */
export interface BuildJob {
  jobId: string;
  buildId: string;
  workspaceId: string;
  workspaceName: string;
  ownerId: string;
  templateVersionId: string;
  buildNumber: number;
  transition: WorkspaceTransition;
  /** The build's full parameter set (workspace_build_parameters). */
  parameters: Record<string, string>;
}

export interface ExecutorContext {
  /** Aborted when the job is canceled, the daemon shuts down, or another daemon took the job over. */
  signal: AbortSignal;
  /**
   * Appends a line to provisioner_job_logs (source `provisioner`). Lines are written in call order, in
   * batches, and those of a run that resolved are all stored by the time the job completes (the last with
   * its completion), so executors may call this without awaiting it. Never rejects.
   */
  log(level: LogLevel, output: string, stage?: string): Promise<void>;
}

export interface ExecutorResult {
  /**
   * Agents the build created, in display order. Only used for `start` builds; the daemon writes them
   * in the transaction that completes the job. None or empty = a workspace without agents.
   */
  agents?: string[];
  /** `workspace_resources.type` of the resource the agents belong to. Default `'workspace'`. */
  resourceType?: string;
}

/** What a machine-readable error code may look like: Coder's are upper snake case (`INSUFFICIENT_QUOTA`). */
export const ERROR_CODE = /^[A-Z][A-Z0-9_]{0,63}$/;

/** The quota columns are Postgres integers, as Coder's credits are (int32). */
export const MAX_CREDITS = 2_147_483_647;

/**
 * A build failure with a machine-readable code: thrown by an executor, it fails the job like any error and
 * also sets provisioner_jobs.error_code (and the quota columns when `quota` is given).
 */
export class BuildFailure extends Error {
  override name = 'BuildFailure';
  constructor(
    message: string,
    readonly errorCode: string,
    readonly quota?: QuotaUsage,
  ) {
    super(message);
    if (!ERROR_CODE.test(errorCode)) {
      throw new RangeError(`error code must match ${ERROR_CODE.source}, got ${JSON.stringify(errorCode)}`);
    }
    for (const [name, credits] of Object.entries(quota ?? {})) {
      if (!Number.isInteger(credits) || credits < 0 || credits > MAX_CREDITS) {
        throw new RangeError(`quota ${name} must be a whole number from 0 to ${MAX_CREDITS}, got ${credits}`);
      }
    }
  }
}

/** An agent row the daemon committed for a succeeded start build. */
export interface CommittedAgent {
  id: string;
  name: string;
}

export interface Executor {
  /**
   * Builds the workspace. Resolving means success; throwing means failure, and the error's message
   * becomes provisioner_jobs.error (a BuildFailure's code and quota become error_code and the quota columns). Should stop soon after `ctx.signal` aborts (the daemon does not wait
   * for it to settle the job, but a process left running is the executor's to clean up).
   */
  run(job: BuildJob, ctx: ExecutorContext): Promise<ExecutorResult | void>;
  /**
   * Called exactly once for every run() that resolved, after the daemon is done with the job: with the
   * agents it committed for a succeeded start build (empty for other transitions), or empty when nothing
   * was committed (the job was canceled as it finished, was taken over or aborted, or its results could
   * not be written). Whatever run() kept for the job can be let go here; the simulator also plays the
   * agents' part. Not called for a run() that rejected. Must not throw.
   */
  afterCommit?(job: BuildJob, agents: CommittedAgent[]): void;
  /** Ends background work (simulated agents, build commands still running); the daemon calls it once it is idle. */
  stop?(): Promise<void>;
}
