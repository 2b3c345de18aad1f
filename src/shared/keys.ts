// Every Redis key and channel name, derived from QUEUE_PREFIX (CONTRACT.md sections 5 and 6).
export function redisKeys(prefix: string) {
  return {
    chatLock: (chatId: string) => `${prefix}:lock:chat:${chatId}`,
    chatChannel: (chatId: string) => `${prefix}:events:chat:${chatId}`,
    workspaceChannel: (workspaceId: string) => `${prefix}:events:workspace:${workspaceId}`,
    chatLog: (chatId: string) => `${prefix}:events:chat:${chatId}:log`,
    /** Set once per job when its result event is published, so a re-run never publishes a second one. */
    resultMarker: (jobId: string) => `${prefix}:result:${jobId}`,
  };
}

export type RedisKeys = ReturnType<typeof redisKeys>;

export const dedupeIds = {
  start: (workspaceId: string) => `start-workspace:${workspaceId}`,
  create: (chatId: string) => `create-workspace:${chatId}`,
};
