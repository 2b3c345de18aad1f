// The create-workspace job (docs/start-workspace.md, "create-workspace"): a port of Coder's create_workspace
// for a chat. It first looks at the workspace the chat already has (Coder's checkExistingWorkspace) and
// only creates a new one when that one is unusable; it never starts a stopped workspace (the start job
// does). Runs under the same chat lock as start-workspace, taken by the processor.
import { randomBytes } from 'node:crypto';
import {
  isFailure,
  type CreateWorkspacePayload,
  type CreateWorkspaceResult,
  type CreateWorkspaceSuccess,
  type Validation,
} from '../../shared/contract.js';
import {
  NameTakenError,
  type Build,
  type BuildTransaction,
  type Chat,
  type JobContext,
  type User,
  type Workspace,
} from '../../worker/ports.js';
import { agentReadiness } from '../../worker/agent-readiness.js';
import { agentConnectionStatus, selectChatAgent } from '../../worker/agent-selection.js';
import { waitForBuild, waitForBuildInFlight } from '../../worker/build-wait.js';
import { checkChatAccess } from '../../worker/chat-access.js';
import { resolveParameters } from '../../worker/parameters.js';
import { failures } from '../../worker/results.js';

const { buildFailed, flagged, unflagged } = failures('create-workspace');

// A stop in flight is waited for and then looked at again (as D2 does for starts); bounded like there.
const MAX_PASSES = 5;
// Generated names that clash (another chat of the owner created one at the same moment) are redrawn.
const NAME_ATTEMPTS = 5;

export async function createWorkspace(
  ctx: JobContext,
  payload: CreateWorkspacePayload,
): Promise<CreateWorkspaceResult> {
  await ctx.progress('checking', 'Checking the chat and the workspace it already has');
  const access = await checkChatAccess(ctx, 'create-workspace', payload.chatId, payload.ownerId);
  if (isFailure(access)) return access;
  const { chat, owner } = access;

  for (let pass = 0; pass < MAX_PASSES; pass++) {
    const existing = await checkExistingWorkspace(ctx, chat, owner);
    if (existing === 'create') return create(ctx, payload, chat, owner);
    if (existing !== 'look_again') return existing;
  }
  return flagged('internal', `the chat's workspace kept changing; gave up after ${MAX_PASSES} looks`);
}

/** Coder's checkExistingWorkspace: a result for a usable workspace, or 'create' when there is none. */
async function checkExistingWorkspace(
  ctx: JobContext,
  chat: Chat,
  owner: User,
): Promise<CreateWorkspaceResult | 'create' | 'look_again'> {
  const current = await ctx.store.getChat(chat.id);
  if (!current?.workspaceId) return 'create';
  const workspace = await ctx.store.getWorkspace(current.workspaceId);
  if (!workspace || workspace.deleted) return 'create';
  if (workspace.ownerId !== owner.id) {
    return flagged('forbidden', `workspace ${workspace.id} does not belong to the chat's owner`);
  }
  const name = `${owner.username}/${workspace.name}`;
  // Names the workspace for the job's later events and its result, whatever the outcome.
  await ctx.progress('checking', `The chat has workspace ${name}`, undefined, workspace.id);
  const latest = await ctx.store.getLatestBuild(workspace.id);
  if (!latest) return 'create';
  // A re-run after a crash: this job created the workspace; report it as the first attempt would.
  if (latest.id === ctx.ownBuildId) return waitForCreated(ctx, workspace, name, latest);

  switch (latest.jobStatus) {
    case 'pending':
    case 'running': {
      const outcome = await waitForBuildInFlight(ctx, chat.id, latest);
      if (!outcome.ok) {
        return buildFailed(outcome, 'existing workspace build failed', latest.id);
      }
      // A stop or delete that finished leaves a workspace to look at again, not one that "exists".
      if (latest.transition !== 'start') return 'look_again';
      return exists(ctx, workspace, name, 'workspace build completed', latest.id);
    }
    case 'succeeded':
      if (latest.transition === 'stop') {
        return {
          kind: 'create-workspace',
          ok: true,
          created: false,
          workspace_name: name,
          status: 'stopped',
          message: 'workspace is stopped; use start_workspace to start it',
        };
      }
      if (latest.transition === 'start') {
        const agents = await ctx.store.getAgentsOfLatestBuild(workspace.id);
        const selection = selectChatAgent(agents);
        // Coder falls back to the first agent when selection fails; no agents at all means create anew.
        const agent = selection.ok ? selection.agent : agents[0];
        if (!agent) return 'create';
        const status = agentConnectionStatus(agent);
        if (status === 'connected') {
          return exists(ctx, workspace, name, 'workspace is already running and recently connected');
        }
        if (status === 'connecting') {
          return exists(ctx, workspace, name, 'workspace exists and the agent is still connecting');
        }
      }
      return 'create';
    default:
      // failed, canceled, canceling: the workspace is unusable; a new one replaces it in the chat.
      return 'create';
  }
}

async function exists(
  ctx: JobContext,
  workspace: Workspace,
  name: string,
  message: string,
  buildId?: string,
): Promise<CreateWorkspaceSuccess> {
  return {
    kind: 'create-workspace',
    ok: true,
    created: false,
    workspace_name: name,
    status: 'already_exists',
    message,
    ...(buildId ? { build_id: buildId } : {}),
    ...(await agentReadiness(ctx, workspace.id)),
  };
}

type CreateOutcome =
  | { kind: 'created'; workspace: Workspace; build: Build }
  | { kind: 'no_template' }
  | { kind: 'name_taken'; name: string }
  | { kind: 'invalid_parameters'; message: string; detail: string; validations: Validation[] };

async function create(
  ctx: JobContext,
  payload: CreateWorkspacePayload,
  chat: Chat,
  owner: User,
): Promise<CreateWorkspaceResult> {
  ctx.signal.throwIfAborted();
  let outcome: CreateOutcome | undefined;
  for (let attempt = 1; !outcome; attempt++) {
    try {
      outcome = await ctx.store.transaction((tx) => insertWorkspaceAndBuild(tx, payload, chat, owner));
    } catch (error) {
      // Another chat of the owner took the name between our check and our insert (the unique index
      // caught it): report a given name, draw a generated one again.
      if (!(error instanceof NameTakenError) || attempt >= NAME_ATTEMPTS) throw error;
      if (payload.name) outcome = { kind: 'name_taken', name: payload.name };
    }
  }

  switch (outcome.kind) {
    case 'no_template':
      return flagged('invalid_payload', `template ${payload.templateId} not found`);
    case 'name_taken':
      return flagged('invalid_payload', `Workspace "${outcome.name}" already exists.`);
    case 'invalid_parameters':
      return unflagged('invalid_parameters', outcome.message, {
        detail: outcome.detail,
        validations: outcome.validations,
        template_id: payload.templateId,
      });
    case 'created':
      break;
  }

  const { workspace, build } = outcome;
  // Committed: the workspace and its first build exist now.
  ctx.observe?.buildCreated(build);
  await ctx.recordBuild(build.id);
  return waitForCreated(ctx, workspace, `${owner.username}/${workspace.name}`, build);
}

/** The new workspace's first build, then its agent's readiness. */
async function waitForCreated(
  ctx: JobContext,
  workspace: Workspace,
  name: string,
  build: Build,
): Promise<CreateWorkspaceResult> {
  const waited = await waitForBuild(ctx, build, workspace.id);
  if (!waited.ok) {
    return buildFailed(waited, 'workspace build failed', build.id);
  }
  return {
    kind: 'create-workspace',
    ok: true,
    created: true,
    workspace_name: name,
    build_id: build.id,
    ...(await agentReadiness(ctx, workspace.id)),
  };
}

/** One transaction: the workspace, its first build on the active version, and the chat bound to both. */
async function insertWorkspaceAndBuild(
  tx: BuildTransaction,
  payload: CreateWorkspacePayload,
  chat: Chat,
  owner: User,
): Promise<CreateOutcome> {
  const template = await tx.getTemplate(payload.templateId);
  if (!template) return { kind: 'no_template' };
  const resolved = resolveParameters({
    parameters: await tx.getTemplateVersionParameters(template.activeVersionId),
    previous: [],
    provided: payload.parameters ?? {},
    firstBuild: true,
    allFailures: true,
  });
  if (!resolved.ok) return { kind: 'invalid_parameters', ...resolved };

  let name = payload.name ?? generateName(template.name);
  for (let drawn = 1; await tx.workspaceNameTaken(owner.id, name); drawn++) {
    if (payload.name) return { kind: 'name_taken', name };
    if (drawn >= NAME_ATTEMPTS) throw new Error(`no free workspace name after ${NAME_ATTEMPTS} draws`);
    name = generateName(template.name);
  }
  const workspace = await tx.insertWorkspace({ ownerId: owner.id, templateId: template.id, name });
  const build = await tx.insertBuild({
    workspaceId: workspace.id,
    templateVersionId: template.activeVersionId,
    buildNumber: 1,
    transition: 'start',
    initiatorId: owner.id,
    parameters: resolved.values,
  });
  await tx.bindChat(chat.id, workspace.id, build.id);
  return { kind: 'created', workspace, build };
}

/** `<template name>-<4 hex>`, within Coder's 32-character name limit. */
export function generateName(templateName: string): string {
  const base = templateName
    .toLowerCase()
    .replace(/[^a-z0-9-]+/g, '-')
    .replace(/-{2,}/g, '-')
    .replace(/^-|-$/g, '')
    .slice(0, 27)
    .replace(/-$/, '');
  return `${base || 'workspace'}-${randomBytes(2).toString('hex')}`;
}
