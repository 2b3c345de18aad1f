// The start-workspace job's decision procedure (docs/start-workspace.md), a port of Coder's chat
// start_workspace tool with its auto-update to the template's active version. Plain functions over the
// JobContext: the processor takes the chat lock and validates the payload before calling in.
import {
  isFailure,
  type AgentReadiness,
  type StartWorkspacePayload,
  type StartWorkspaceResult,
} from '../../shared/contract.js';
import {
  FINISHED_JOB_STATUSES,
  type Build,
  type Chat,
  type JobContext,
  type User,
  type Workspace,
} from '../../worker/ports.js';
import { agentReadiness } from '../../worker/agent-readiness.js';
import { checkChatWorkspace, ownedWorkspace } from '../../worker/chat-access.js';
import { buildData, waitForBuild, waitForBuildInFlight } from '../../worker/build-wait.js';
import { failures, messages } from '../../worker/results.js';
import { createStartBuild, type StartBuildOutcome } from '../../worker/start-build.js';

const { buildActive, buildFailed, flagged, unflagged } = failures('start-workspace');

// Re-reading after waiting for a stop or a cancellation (D2, D3) loops; a workspace that keeps
// changing under us this many times is reported rather than chased forever.
const MAX_PASSES = 5;

export async function startWorkspace(
  ctx: JobContext,
  payload: StartWorkspacePayload,
): Promise<StartWorkspaceResult> {
  await ctx.progress('checking', 'Checking the chat and its workspace', undefined, payload.workspaceId);
  const checked = await checkChatWorkspace(ctx, 'start-workspace', payload);
  if (isFailure(checked)) return checked;
  const { chat, owner } = checked;

  for (let pass = 0; pass < MAX_PASSES; pass++) {
    // One read per look: the workspace, its latest build and what a start build would be planned with.
    const state = await ctx.store.getStartState(payload.workspaceId);
    const workspace = ownedWorkspace('start-workspace', state?.workspace ?? null, owner);
    if (isFailure(workspace)) return workspace;
    const { latestBuild: latest, inputs } = state!;

    // A re-run after a crash: the build this job made already finished; report it as the first attempt would.
    if (latest && latest.id === ctx.ownBuildId && FINISHED_JOB_STATUSES.has(latest.jobStatus)) {
      await ctx.store.bindChat(chat.id, workspace.id, latest.id);
      return waitForStart(ctx, workspace, latest);
    }
    switch (latest?.jobStatus) {
      case 'pending':
      case 'running': {
        const outcome = await waitForBuildInFlight(ctx, chat.id, latest);
        if (!outcome.ok) {
          return buildFailed(outcome, 'waiting for in-progress build', latest.id);
        }
        // D2: Coder reports a finished stop or delete as "started"; we look again and start it.
        if (latest.transition !== 'start') continue;
        return started(workspace.name, { build_id: latest.id }, await agentReadiness(ctx, workspace.id));
      }
      case 'canceling':
        // D3: Coder tries to start at once and gets a 409; we let the cancellation settle first.
        await ctx.progress(
          'waiting_for_existing_build',
          `Waiting for the cancellation of build #${latest.buildNumber} to finish`,
          buildData(latest),
          workspace.id,
        );
        {
          const settled = await waitForBuild(ctx, latest, workspace.id);
          // Canceled, failed or even succeeded: look again. Only a cancellation that never settles ends here.
          if (!settled.ok && settled.code === 'build_timeout') {
            return buildFailed(settled, 'waiting for in-progress build', latest.id);
          }
        }
        continue;
      case 'succeeded':
        if (latest.transition === 'start') {
          // Already running: no build; D9: a ready agent answers at once (readiness checks before waiting).
          return started(workspace.name, { no_build: true }, await agentReadiness(ctx, workspace.id));
        }
        break;
    }
    const outcome = await createStartBuild(ctx, {
      workspace,
      previousBuild: latest,
      chatId: chat.id,
      inputs,
      initiatorId: owner.id,
      parameters: payload.parameters ?? {},
    });
    // The workspace changed between our look and the build's insert: look again.
    if (outcome.kind === 'changed') continue;
    return start(ctx, chat, owner, workspace, outcome);
  }
  return flagged('internal', `the workspace's state kept changing; gave up after ${MAX_PASSES} looks`);
}

/** Steps 7-9: the start build's creation, then the wait for it and for the agent. */
async function start(
  ctx: JobContext,
  chat: Chat,
  owner: User,
  workspace: Workspace,
  outcome: Exclude<StartBuildOutcome, { kind: 'changed' }>,
): Promise<StartWorkspaceResult> {
  switch (outcome.kind) {
    case 'deleted':
      return flagged('workspace_deleted', messages.workspaceDeleted);
    case 'build_active':
      return buildActive(workspace, outcome.build);
    case 'invalid_parameters': {
      const fields = { template_id: outcome.templateId, validations: outcome.validations };
      if (!outcome.versionChanged) {
        return unflagged('invalid_parameters', outcome.message, { ...fields, detail: outcome.detail });
      }
      return unflagged('manual_update_required', messages.manualUpdateRequired, {
        ...fields,
        detail: `${outcome.message}: ${outcome.detail}`,
        // D5: the follow-up Coder left out, a direct link for the user.
        ...(ctx.accessUrl
          ? {
              settings_url: `${ctx.accessUrl}/@${owner.username}/${encodeURIComponent(workspace.name)}/settings`,
            }
          : {}),
      });
    }
    case 'created':
      break;
  }

  const { build, previousBuild, updateReason } = outcome;
  if (updateReason) {
    await ctx.progress(
      'updating_to_active_version',
      messages.updatingMessage(updateReason),
      {
        build_id: build.id,
        previous_template_version_id: previousBuild?.templateVersionId,
        template_version_id: build.templateVersionId,
        update_reason: messages.updateReason(updateReason),
      },
      workspace.id,
    );
  }
  // The chat is bound to the build already, by its insert.
  await ctx.recordBuild(build.id);

  const update =
    updateReason && previousBuild
      ? {
          updated_to_active_version: true,
          update_reason: messages.updateReason(updateReason),
          message: messages.updatedMessage(updateReason),
          previous_template_version_id: previousBuild.templateVersionId,
          template_version_id: build.templateVersionId,
        }
      : undefined;
  // Returned, not awaited: while the build runs, only `update` is held, not this frame with the chat, its
  // owner and the workspace's previous build (issue 11: thousands of starts wait at once).
  return waitForStart(ctx, workspace, build).then((result) =>
    update && !isFailure(result) ? Object.assign(result, update) : result,
  );
}

/** Step 9: the start build's outcome, then the agent's readiness. */
function waitForStart(ctx: JobContext, workspace: Workspace, build: Build): Promise<StartWorkspaceResult> {
  // Not awaited here: while the build runs, a start holds the ids and the name it needs after, not this
  // frame with the workspace's row (issue 11: thousands of starts wait at once).
  const { id: workspaceId, name } = workspace;
  const buildId = build.id;
  return waitForBuild(ctx, build, workspaceId).then(async (waited) => {
    if (!waited.ok) return buildFailed(waited, 'workspace start build failed', buildId);
    return started(name, { build_id: buildId }, await agentReadiness(ctx, workspaceId));
  });
}

function started(
  workspaceName: string,
  build: { build_id: Build['id'] } | { no_build: true },
  readiness: AgentReadiness,
): StartWorkspaceResult {
  return {
    kind: 'start-workspace',
    ok: true,
    started: true,
    workspace_name: workspaceName,
    ...build,
    ...readiness,
  };
}
