// Waiting for a workspace build's provisioner job (Coder's waitForBuild), driven by notifications, with
// a progress event for each status the job passes through, an estimate of when it will be done, and (via
// build-watch.ts) its queue position and its log's newest lines.
import { WaitTimeoutError } from '../shared/errors.js';
import type { FailureCode } from '../shared/contract.js';
import { topics, type Build, type JobContext } from './ports.js';
import { buildFailureDetails, type BuildFailureDetails } from './results.js';
import { BuildWatch } from './build-watch.js';
import { isBuildActive } from './start-build.js';

/** A failed outcome's `details`: the provisioner job's error code, and for a quota failure Coder's quota shape. */
export type BuildOutcome =
  | { ok: true; build: Build }
  | { ok: false; reason: string; code: FailureCode; details?: BuildFailureDetails };

const STAGE_OF_STATUS = {
  pending: 'build_queued',
  running: 'build_running',
  succeeded: 'build_succeeded',
} as const;

/** What a status event says the build does (its message's verb). */
const VERB_OF_STAGE = {
  build_queued: 'is queued',
  build_running: 'is running',
  build_succeeded: 'succeeded',
} as const;
const REQUEUED_VERB =
  'is queued again: its run was interrupted (its provisioner stopped responding or shut down, or the database restarted)';

/** How a build appears in progress events. */
export function buildData(build: Build) {
  return { build_id: build.id, build_number: build.buildNumber, transition: build.transition };
}

export async function waitForBuild(
  ctx: JobContext,
  build: Build,
  workspaceId: string,
): Promise<BuildOutcome> {
  const watch = new BuildWatch(ctx, build, workspaceId);
  const report = async (b: Build) => {
    const stage = STAGE_OF_STATUS[b.jobStatus as keyof typeof STAGE_OF_STATUS];
    if (!stage || watch.reported === stage) return;
    // Running, then pending again: the run ended without an outcome and the build waits for another. Its
    // daemon stopped responding (handed back by another daemon's reaper), shut down as it claimed the job,
    // or Postgres crashed and lost the claim, which it had committed unflushed (docs/design.md §8).
    const requeued = stage === 'build_queued' && watch.reported === 'build_running';
    const verb = requeued ? REQUEUED_VERB : VERB_OF_STAGE[stage];
    const position = stage === 'build_queued' ? await watch.position() : null;
    const estimate = stage === 'build_succeeded' ? null : await ctx.store.getBuildEstimate(b);
    await watch.say(async () => {
      watch.told(stage);
      const data = { ...buildData(b), ...position, ...(estimate && { estimate }) };
      await ctx.progress(stage, `Build #${b.buildNumber} ${verb}`, data, workspaceId);
    });
    if (stage === 'build_queued') watch.followQueue();
  };

  // The status the caller saw first (a new build is pending), even if the provisioner is quicker than our check.
  await report(build);
  // The build's wait before the log follower's: an attempt's first wait is the one whose ending check keeps
  // its admission slot for the job to go on with (admission.ts), and the follower's is the side wait.
  const waited = ctx.waiter.waitFor<BuildOutcome>(
    [topics.provisionerJob(build.jobId)],
    async (notice) => {
      // A notification of a status the build is still active in (`running`, or `pending` again) says all a
      // progress event needs: the build is read only at its end, or when no notification says why we look.
      const noticed = notice?.job_status && {
        ...build,
        jobStatus: notice.job_status as Build['jobStatus'],
      };
      if (noticed && isBuildActive(noticed)) {
        await report(noticed);
        return undefined;
      }
      const current = await ctx.store.getBuild(build.id);
      if (!current) throw new Error(`get build: build ${build.id} not found`);
      switch (current.jobStatus) {
        case 'succeeded':
          return { ok: true, build: current };
        case 'failed':
          return {
            ok: false,
            reason: current.jobError || 'build failed',
            code: 'build_failed',
            details: buildFailureDetails(current),
          };
        case 'canceled':
          return { ok: false, reason: 'build was canceled', code: 'build_canceled' };
        case 'pending':
        case 'running':
        case 'canceling':
          await report(current);
          return undefined;
        default:
          return { ok: false, reason: `unexpected job status: ${current.jobStatus}`, code: 'build_failed' };
      }
    },
    // No timed re-check: every change of job_status notifies (migrations/0001), and the hub's ping covers loss.
    { timeoutMs: ctx.timeouts.buildTimeoutMs, signal: watch.signal },
  );
  watch.followLogs();
  // The wait's end in callbacks, not after an await: a frame suspended for the whole wait holds its
  // registers and promises, about 1.1 KiB per waiting start (issue 11).
  return waited.then(
    async (outcome) => {
      // The log's last lines before the build's last status, so a chat sees the output that led to it.
      await watch.end(true);
      if (outcome.ok) await report(outcome.build);
      return outcome;
    },
    async (error: unknown): Promise<BuildOutcome> => {
      if (!(error instanceof WaitTimeoutError)) {
        await watch.end(false);
        throw error;
      }
      await watch.end(true);
      return {
        ok: false,
        reason: `timed out waiting for workspace build: ${error.message}`,
        code: 'build_timeout',
      };
    },
  );
}

/**
 * A build already in flight when the job looked (Coder binds the chat to it and waits): the chat is bound
 * to it, its wait announced, and its outcome returned.
 */
export async function waitForBuildInFlight(
  ctx: JobContext,
  chatId: string,
  build: Build,
): Promise<BuildOutcome> {
  await ctx.store.bindChat(chatId, build.workspaceId, build.id);
  await ctx.progress(
    'waiting_for_existing_build',
    `Waiting for the workspace's ${build.transition} build #${build.buildNumber}`,
    buildData(build),
    build.workspaceId,
  );
  return waitForBuild(ctx, build, build.workspaceId);
}
