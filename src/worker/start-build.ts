// Creating a start build in one transaction (Coder's wsbuilder, for a chat start): choose the template
// version, resolve the parameters, refuse when a build is still active, insert job + build + parameters.
// A parameter failure persists nothing. The transaction's frame (lock, refusals, counting) serves stop too.
import type { Validation } from '../shared/contract.js';
import {
  BuildConflictError,
  type Build,
  type BuildTransaction,
  type JobContext,
  type UpdateReason,
  type Workspace,
} from './ports.js';
import { resolveParameters } from './parameters.js';

export interface StartBuildRequest {
  workspaceId: string;
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

async function plan(tx: BuildTransaction, request: StartBuildRequest): Promise<StartBuildOutcome> {
  const locked = await lockForNewBuild(tx, request.workspaceId);
  if (locked.kind !== 'free') return locked;
  const { workspace, previousBuild } = locked;

  const template = await tx.getTemplate(workspace.templateId);
  if (!template) throw new Error(`get template: template ${workspace.templateId} not found`);

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
    parameters: await tx.getTemplateVersionParameters(targetVersionId),
    previous: previousBuild ? await tx.getBuildParameters(previousBuild.id) : [],
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

  const build = await tx.insertBuild({
    workspaceId: workspace.id,
    templateVersionId: targetVersionId,
    buildNumber: (previousBuild?.buildNumber ?? 0) + 1,
    transition: 'start',
    initiatorId: request.initiatorId,
    parameters: resolved.values,
  });
  return { kind: 'created', build, previousBuild, updateReason: versionChanged ? updateReason : undefined };
}

export function createStartBuild(ctx: JobContext, request: StartBuildRequest): Promise<StartBuildOutcome> {
  return createBuild(ctx, request.workspaceId, (tx) => plan(tx, request));
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
    // The unique (workspace_id, build_number) index caught a concurrent insert the row lock did not
    // (e.g. a build inserted by something that does not lock the workspace row).
    if (error instanceof BuildConflictError) {
      const latest = await ctx.store.getLatestBuild(workspaceId);
      if (latest) return { kind: 'build_active', build: latest };
    }
    throw error;
  }
}
