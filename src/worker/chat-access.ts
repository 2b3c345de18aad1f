// Who may act on a chat (D7), shared by start, stop and create: the job's owner owns the chat, the chat is
// a root chat (Coder gives the workspace tools to root chats only), and the owner is an active user. `kind`:
// the job asking, whose failure result it is.
import { isFailure, type JobFailure, type JobName } from '../shared/contract.js';
import type { Chat, JobContext, User, Workspace } from './ports.js';
import { failures, messages } from './results.js';

export type ChatAccess = { ok: true; chat: Chat; owner: User } | JobFailure;

export async function checkChatAccess(
  ctx: JobContext,
  kind: JobName,
  chatId: string,
  ownerId: string,
): Promise<ChatAccess> {
  const { flagged } = failures(kind);
  const found = await ctx.store.getChatWithOwner(chatId);
  if (!found) return flagged('invalid_payload', `load chat: chat ${chatId} not found`);
  const { chat, owner } = found;
  if (chat.ownerId !== ownerId) return flagged('forbidden', `user ${ownerId} does not own chat ${chat.id}`);
  if (chat.parentChatId !== null) {
    return flagged(
      'forbidden',
      'only root chats can start or create workspaces; this chat is a sub-chat (ask its root chat to do it)',
    );
  }
  if (!owner || owner.deleted || owner.status !== 'active') {
    return flagged('forbidden', `load user authorization: user ${chat.ownerId} is not an active user`);
  }
  return { ok: true, chat, owner };
}

/** Start's and stop's steps 3-4: who may act (D7), and that the chat still points at the job's workspace (D10). */
export async function checkChatWorkspace(
  ctx: JobContext,
  kind: JobName,
  payload: { chatId: string; ownerId: string; workspaceId: string },
): Promise<ChatAccess> {
  const { flagged } = failures(kind);
  const access = await checkChatAccess(ctx, kind, payload.chatId, payload.ownerId);
  if (isFailure(access)) return access;
  if (!access.chat.workspaceId) return flagged('no_workspace', messages.noWorkspace);
  if (access.chat.workspaceId !== payload.workspaceId)
    return flagged('workspace_changed', messages.workspaceChanged);
  return access;
}

/** Step 5: the job's workspace, unless it is gone or deleted, or not the owner's (D7). */
export async function loadOwnedWorkspace(
  ctx: JobContext,
  kind: JobName,
  workspaceId: string,
  owner: User,
): Promise<Workspace | JobFailure> {
  return ownedWorkspace(kind, await ctx.store.getWorkspace(workspaceId), owner);
}

/** Step 5 on a workspace row already read (null: none). */
export function ownedWorkspace(
  kind: JobName,
  workspace: Workspace | null,
  owner: User,
): Workspace | JobFailure {
  const { flagged } = failures(kind);
  if (!workspace || workspace.deleted) return flagged('workspace_deleted', messages.workspaceDeleted);
  if (workspace.ownerId !== owner.id) {
    return flagged('forbidden', `workspace ${workspace.id} does not belong to the chat's owner`);
  }
  return workspace;
}
