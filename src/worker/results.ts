// Building the tool results of docs/design.md §7, and Coder's user-visible strings in one place.
import { INSUFFICIENT_QUOTA, type FailureCode, type JobFailure, type JobName } from '../shared/contract.js';
import type { CancelRequest } from '../shared/cancel-requests.js';
import type { BuildOutcome } from './build-wait.js';
import type { Build, UpdateReason, Workspace } from './ports.js';

/** Each update reason's words: as a result's `update_reason`, and as the end of a "because" sentence. */
const UPDATE_REASONS: Record<UpdateReason, { reason: string; because: string }> = {
  require_active_version: {
    reason: 'template requires active versions',
    because: 'the template requires active versions',
  },
  automatic_updates: {
    reason: 'workspace automatic updates are set to always',
    because: 'workspace automatic updates are set to always',
  },
};

export const messages = {
  noWorkspace: 'chat has no workspace; use create_workspace first',
  workspaceDeleted: 'workspace was deleted; use create_workspace to make a new one',
  workspaceChanged: "the chat's workspace changed since the job was enqueued; enqueue again",
  buildActive: 'A workspace build is already active.',
  // Coder PR #24434's wording: the model reads it and retries with parameters.
  manualUpdateRequired:
    "The workspace needs the template's active version before it can start. Use read_template with this " +
    "workspace's template_id to inspect the active version's required parameters, then retry start_workspace " +
    'with a parameters object that supplies any missing or changed values.',
  /** A result's `update_reason`: Coder's words for the template's rule, the same shape for automatic updates. */
  updateReason: (reason: UpdateReason) => UPDATE_REASONS[reason].reason,
  /** Coder's sentence for the template's rule; the same shape for automatic updates. */
  updatedMessage: (reason: UpdateReason) =>
    `Workspace started and was updated to the active template version because ${UPDATE_REASONS[reason].because}.`,
  updatingMessage: (reason: UpdateReason) =>
    `Updating to the template's active version because ${UPDATE_REASONS[reason].because}`,
  quotaTitle: 'Workspace quota reached',
  quotaMessage: (quota: Build['jobQuota']) =>
    'The workspace build was refused because it would exceed your workspace quota' +
    (quota ? ` (${quota.creditsConsumed} of ${quota.budget} credits already in use).` : '.'),
  quotaNextSteps: [
    'Stop or delete a workspace you no longer need to free quota credits, then try again.',
    'Ask an administrator to raise your quota budget.',
  ],
};

/** What a failed build's result carries of its provisioner job besides the error. */
export type BuildFailureDetails = Pick<
  JobFailure,
  'error_code' | 'title' | 'message' | 'next_steps' | 'quota'
>;

/**
 * The failed build's error code, whenever it has one; a quota failure also gets Coder's quota shape (PR
 * #24956), so that the model can tell the user what happened and what to do instead of retrying.
 */
export function buildFailureDetails(build: Build): BuildFailureDetails {
  const { jobErrorCode: errorCode, jobQuota: quota } = build;
  if (!errorCode) return {};
  if (errorCode !== INSUFFICIENT_QUOTA) return { error_code: errorCode };
  return {
    error_code: errorCode,
    title: messages.quotaTitle,
    message: messages.quotaMessage(quota),
    next_steps: [...messages.quotaNextSteps],
    ...(quota ? { quota: { credits_consumed: quota.creditsConsumed, budget: quota.budget } } : {}),
  };
}

/**
 * The failure results of one job kind (`kind` is the job name they carry): Coder's flagged, plain
 * precondition failures (`is_error: true`), its unflagged ones that keep structured fields (`is_error:
 * false`), and the two every kind that makes builds reports.
 */
export function failures(kind: JobName) {
  const flagged = (code: FailureCode, error: string): JobFailure => ({
    kind,
    ok: false,
    error,
    code,
    is_error: true,
  });
  const unflagged = (code: FailureCode, error: string, fields: Partial<JobFailure> = {}): JobFailure => ({
    kind,
    ok: false,
    error,
    code,
    is_error: false,
    ...fields,
  });
  return {
    flagged,
    unflagged,
    /** A build could not be created because another is still active (Coder's builder answers 409). */
    buildActive: (workspace: Workspace, active: Build): JobFailure =>
      unflagged('build_active', messages.buildActive, {
        detail: messages.buildActive,
        template_id: workspace.templateId,
        build_id: active.id,
      }),
    /**
     * A build wait that failed: `what` says which build (`workspace start build failed`), then the reason;
     * the build's id and the outcome's details (error code, quota) ride along.
     */
    buildFailed: (failed: Extract<BuildOutcome, { ok: false }>, what: string, buildId: string): JobFailure =>
      unflagged(failed.code, `${what}: ${failed.reason}`, { build_id: buildId, ...failed.details }),
    /** The one result of a canceled job: the answer its caller asked for, so not flagged as an error. */
    canceled: (request: CancelRequest): JobFailure =>
      unflagged('canceled', `canceled: ${request.reason ?? 'cancel requested'}`),
  };
}
