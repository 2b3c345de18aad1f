// The stop-workspace job's decision procedure, a port of Coder's chat stop_workspace tool (PR #24997),
// built from start's blocks. Plain functions over the JobContext: the processor takes the chat lock and
// validates the payload before calling in.
import { isFailure, type JobFailure } from '../../shared/contract.js';
import type { Build, BuildTransaction, JobContext, Workspace } from '../../worker/ports.js';
import { waitForBuild, waitForBuildInFlight } from '../../worker/build-wait.js';
import { checkChatWorkspace, loadOwnedWorkspace } from '../../worker/chat-access.js';
import { failures, messages } from '../../worker/results.js';
import {
  createBuild,
  isBuildActive,
  lockForNewBuild,
  type NewBuildRefusal,
} from '../../worker/start-build.js';
import type { StopWorkspacePayload, StopWorkspaceSuccess } from './schemas.js';

const KIND = 'stop-workspace';
const { buildActive, buildFailed, flagged } = failures(KIND);

export type StopWorkspaceResult = StopWorkspaceSuccess | JobFailure;

export async function stopWorkspace(
  ctx: JobContext,
  payload: StopWorkspacePayload,
): Promise<StopWorkspaceResult> {
  await ctx.progress(
    'checking',
    'Checking the chat and its workspace',
    { transition: 'stop' },
    payload.workspaceId,
  );
  const checked = await checkChatWorkspace(ctx, KIND, payload);
  if (isFailure(checked)) return checked;
  const { chat, owner } = checked;

  let workspace = await loadOwnedWorkspace(ctx, KIND, payload.workspaceId, owner);
  if (isFailure(workspace)) return workspace;
  const latest = await ctx.store.getLatestBuild(workspace.id);

  // A re-run after a crash: this job's own stop build is the latest; report it as the first attempt would.
  if (latest && latest.id === ctx.ownBuildId) {
    await ctx.store.bindChat(chat.id, workspace.id, latest.id);
    return waitForStop(ctx, workspace, latest);
  }

  if (latest && isBuildActive(latest)) {
    // Pending, running or canceling: wait for it, then read again; whatever it did, the fresh rows decide.
    const waited = await waitForBuildInFlight(ctx, chat.id, latest);
    workspace = await loadOwnedWorkspace(ctx, KIND, workspace.id, owner);
    if (isFailure(workspace)) return workspace;
    const fresh = await ctx.store.getLatestBuild(workspace.id);
    // As Coder: a failed wait counts only while the latest build is still active (the wait timed out).
    if (!waited.ok && fresh && isBuildActive(fresh)) {
      return buildFailed(waited, 'waiting for in-progress build', latest.id);
    }
  }

  const stopping = workspace;
  const outcome = await createBuild(ctx, workspace.id, (tx) => planStop(tx, stopping.id, owner.id));
  switch (outcome.kind) {
    case 'deleted':
      return flagged('workspace_deleted', messages.workspaceDeleted);
    case 'build_active':
      return buildActive(workspace, outcome.build);
    case 'stopped':
      return {
        kind: 'stop-workspace',
        ok: true,
        stopped: true,
        workspace_name: workspace.name,
        no_build: true,
      };
    case 'created':
      break;
  }
  await ctx.recordBuild(outcome.build.id);
  await ctx.store.bindChat(chat.id, workspace.id, outcome.build.id);
  return waitForStop(ctx, workspace, outcome.build);
}

type StopBuildOutcome = { kind: 'created'; build: Build } | { kind: 'stopped' };

/**
 * Under the workspace's row lock: already stopped (its last build stopped it, or it never had one) needs no
 * build; anything else (running, failed, canceled) gets a stop build on its current template version with
 * the last build's parameters, as Coder's stop does (no active-version rule, nothing to resolve).
 */
async function planStop(
  tx: BuildTransaction,
  workspaceId: string,
  initiatorId: string,
): Promise<NewBuildRefusal | StopBuildOutcome> {
  const locked = await lockForNewBuild(tx, workspaceId);
  if (locked.kind !== 'free') return locked;
  const { previousBuild } = locked;
  if (!previousBuild || (previousBuild.transition === 'stop' && previousBuild.jobStatus === 'succeeded')) {
    return { kind: 'stopped' };
  }
  const build = await tx.insertBuild({
    workspaceId,
    templateVersionId: previousBuild.templateVersionId,
    buildNumber: previousBuild.buildNumber + 1,
    transition: 'stop',
    initiatorId,
    parameters: await tx.getBuildParameters(previousBuild.id),
  });
  return { kind: 'created', build };
}

async function waitForStop(
  ctx: JobContext,
  workspace: Workspace,
  build: Build,
): Promise<StopWorkspaceResult> {
  const waited = await waitForBuild(ctx, build, workspace.id);
  if (!waited.ok) {
    return buildFailed(waited, 'workspace stop build failed', build.id);
  }
  return {
    kind: 'stop-workspace',
    ok: true,
    stopped: true,
    workspace_name: workspace.name,
    build_id: build.id,
  };
}
