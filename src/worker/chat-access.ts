// Who may act on a chat (D7), shared by start and create: the job's owner owns the chat, the chat is a
// root chat (Coder gives the workspace tools to root chats only), and the owner is an active user.
import type { JobFailure } from '../shared/contract.js';
import type { Chat, JobContext, User } from './ports.js';
import { flagged } from './results.js';

export type ChatAccess = { chat: Chat; owner: User } | JobFailure;

export async function checkChatAccess(ctx: JobContext, chatId: string, ownerId: string): Promise<ChatAccess> {
  const chat = await ctx.store.getChat(chatId);
  if (!chat) return flagged('invalid_payload', `load chat: chat ${chatId} not found`);
  if (chat.ownerId !== ownerId) return flagged('forbidden', `user ${ownerId} does not own chat ${chat.id}`);
  if (chat.parentChatId !== null) {
    return flagged(
      'forbidden',
      'only root chats can start or create workspaces; this chat is a sub-chat (ask its root chat to do it)',
    );
  }
  const owner = await ctx.store.getUser(chat.ownerId);
  if (!owner || owner.deleted || owner.status !== 'active') {
    return flagged('forbidden', `load user authorization: user ${chat.ownerId} is not an active user`);
  }
  return { chat, owner };
}
