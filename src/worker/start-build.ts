// Creating a start build (Coder's wsbuilder, for a chat start): choose the template version, resolve the
// parameters, refuse when a build is still active, insert job + build + parameters in one transaction (one
// statement, migrations/0009). A parameter failure persists nothing. The transaction frame of the other
// builds (lock, refusals, counting) serves stop.
import type { Validation } from '../shared/contract.js';
import {
  BuildConflictError,
  type Build,
  type BuildTransaction,
  type JobContext,
  type StartBuildInputs,
  type UpdateReason,
  type Workspace,
} from './ports.js';
import { resolveParameters } from './parameters.js';

export interface StartBuildRequest {
  /**
   * The workspace and its latest build as the job read them, the build not active: the plan's base, checked
   * again under the workspace's row lock before the build is inserted.
   */
  workspace: Workspace;
  previousBuild: Build | null;
  /** The chat to bind to the build as it is created. */
  chatId: string;
  /** Read with them (null: the template is gone). */
  inputs: StartBuildInputs | null;
  initiatorId: string;
  /** Values from the job; they override the previous build's. */
  parameters: Record<string, string>;
}

export type StartBuildOutcome =
  | {
      kind: 'created';
      build: Build;
      previousBuild: Build | null;
      /** Why the build moved to the template's active version; absent when the version did not change. */
      updateReason?: UpdateReason;
    }
  | { kind: 'deleted' }
  | { kind: 'build_active'; build: Build }
  /** The workspace, its latest build or its template changed since the job read them: look again. */
  | { kind: 'changed' }
  | {
      kind: 'invalid_parameters';
      versionChanged: boolean;
      templateId: string;
      message: string;
      detail: string;
      validations: Validation[];
    };

/** Job statuses during which a build is still active (Coder's builder counts canceling too). */
const ACTIVE = new Set(['pending', 'running', 'canceling']);

export const isBuildActive = (build: Build): boolean => ACTIVE.has(build.jobStatus);

export type NewBuildRefusal = { kind: 'deleted' } | { kind: 'build_active'; build: Build };

/**
 * The start of every build transaction: locks the workspace row and reads its latest build, refusing a
 * deleted workspace or a second active build.
 */
export async function lockForNewBuild(
  tx: BuildTransaction,
  workspaceId: string,
): Promise<NewBuildRefusal | { kind: 'free'; workspace: Workspace; previousBuild: Build | null }> {
  const workspace = await tx.lockWorkspace(workspaceId);
  if (!workspace || workspace.deleted) return { kind: 'deleted' };

  // Read under the workspace lock: no other build can be inserted until we commit (Coder reads the
  // template and latest build outside its transaction, a TOCTOU: docs/start-workspace.md D12).
  const previousBuild = await tx.getLatestBuild(workspace.id);
  if (previousBuild && isBuildActive(previousBuild)) return { kind: 'build_active', build: previousBuild };
  return { kind: 'free', workspace, previousBuild };
}

/**
 * The start build (docs/start-workspace.md step 7): planned on what the job read (getStartState), then
 * created by one statement that locks the workspace row and checks the plan's base under it (D12).
 */
export async function createStartBuild(
  ctx: JobContext,
  request: StartBuildRequest,
): Promise<StartBuildOutcome> {
  const { workspace, previousBuild, inputs } = request;
  // Never create a build for an attempt that has already lost its lock.
  ctx.signal.throwIfAborted();
  if (!inputs) throw new Error(`get template: template ${workspace.templateId} not found`);
  const { template } = inputs;

  // D4: Coder's chat start honours only require_active_version; autobuild also honours automatic_updates.
  // A workspace without builds (an error in Coder's builder) starts on the active version.
  let targetVersionId = previousBuild?.templateVersionId ?? template.activeVersionId;
  let updateReason: UpdateReason | undefined;
  if (template.requireActiveVersion) {
    targetVersionId = template.activeVersionId;
    updateReason = 'require_active_version';
  } else if (workspace.automaticUpdates === 'always') {
    targetVersionId = template.activeVersionId;
    updateReason = 'automatic_updates';
  }
  const versionChanged = previousBuild !== null && previousBuild.templateVersionId !== targetVersionId;

  const resolved = resolveParameters({
    parameters: inputs.versionParameters.get(targetVersionId) ?? [],
    previous: inputs.previousParameters,
    provided: request.parameters,
    firstBuild: previousBuild === null,
  });
  if (!resolved.ok) {
    return {
      kind: 'invalid_parameters',
      versionChanged,
      templateId: template.id,
      message: resolved.message,
      detail: resolved.detail,
      validations: resolved.validations,
    };
  }

  ctx.signal.throwIfAborted();
  let inserted;
  try {
    inserted = await ctx.store.insertStartBuild({
      workspaceId: workspace.id,
      templateVersionId: targetVersionId,
      buildNumber: (previousBuild?.buildNumber ?? 0) + 1,
      initiatorId: request.initiatorId,
      parameters: resolved.values,
      chatId: request.chatId,
      previousBuildId: previousBuild?.id ?? null,
      automaticUpdates: workspace.automaticUpdates,
      activeVersionId: template.activeVersionId,
      requireActiveVersion: template.requireActiveVersion,
    });
  } catch (error) {
    const refusal = await activeAfterConflict(ctx, workspace.id, error);
    if (refusal) return refusal;
    throw error;
  }
  if (inserted.kind !== 'created') return inserted;
  const reason = versionChanged ? updateReason : undefined;
  // Committed: the build exists now.
  ctx.observe?.buildCreated(inserted.build, reason);
  return { kind: 'created', build: inserted.build, previousBuild, updateReason: reason };
}

/**
 * Runs a build's `plan` in one transaction, for any transition; a `created` outcome is counted once
 * committed.
 */
export async function createBuild<
  Outcome extends { kind: string; build?: Build; updateReason?: UpdateReason },
>(
  ctx: JobContext,
  workspaceId: string,
  plan: (tx: BuildTransaction) => Promise<Outcome>,
): Promise<Outcome | NewBuildRefusal> {
  // Never create a build for an attempt that has already lost its lock.
  ctx.signal.throwIfAborted();
  try {
    const outcome = await ctx.store.transaction(plan);
    // Committed: the build exists now.
    if (outcome.kind === 'created' && outcome.build)
      ctx.observe?.buildCreated(outcome.build, outcome.updateReason);
    return outcome;
  } catch (error) {
    const refusal = await activeAfterConflict(ctx, workspaceId, error);
    if (refusal) return refusal;
    throw error;
  }
}

/**
 * A failed insert that the unique (workspace_id, build_number) index refused: it caught a concurrent insert
 * the row lock did not (e.g. a build inserted by something that does not lock the workspace row), reported
 * as that build being active. Undefined for any other error.
 */
async function activeAfterConflict(
  ctx: JobContext,
  workspaceId: string,
  error: unknown,
): Promise<NewBuildRefusal | undefined> {
  if (!(error instanceof BuildConflictError)) return undefined;
  const latest = await ctx.store.getLatestBuild(workspaceId);
  return latest ? { kind: 'build_active', build: latest } : undefined;
}
