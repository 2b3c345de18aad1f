// Every Redis key and channel name, derived from QUEUE_PREFIX (docs/design.md §5 and §6).
//
// Chat and workspace ids are UUIDs, which Postgres compares case-blind; a Redis key is a plain string. The
// ids go in lower case, as idSchema parses them, also when they come from a job added without that schema
// (its invalid-payload result, a result the worker publishes for a job BullMQ failed), so that one chat is
// one channel, one lock and one replay stream whatever case an id arrived in.
const id = (value: string) => value.toLowerCase();

export function redisKeys(prefix: string) {
  return {
    chatLock: (chatId: string) => `${prefix}:lock:chat:${id(chatId)}`,
    /** The chat's jobs in enqueue order (chat-order.ts): a sorted set of job ids scored by Redis' clock. */
    chatOrder: (chatId: string) => `${prefix}:order:chat:${id(chatId)}`,
    chatChannel: (chatId: string) => `${prefix}:events:chat:${id(chatId)}`,
    workspaceChannel: (workspaceId: string) => `${prefix}:events:workspace:${id(workspaceId)}`,
    chatLog: (chatId: string) => `${prefix}:events:chat:${id(chatId)}:log`,
    /** Set once per job when its result event is published, so a re-run never publishes a second one. */
    resultMarker: (jobId: string) => `${prefix}:result:${jobId}`,
    /** Set once per job when its `queued` event is published, by the producer or the worker, whichever is first. */
    queuedMarker: (jobId: string) => `${prefix}:queued:${jobId}`,
    /** The job's watcher chats: other chats deduplicated onto it, which get its events too (until its result). */
    jobChats: (jobId: string) => `${prefix}:job:${jobId}:chats`,
    /** The chats whose replay stream already has a `deduplicated` announcement of the job (each gets one). */
    jobDeduplicated: (jobId: string) => `${prefix}:job:${jobId}:deduplicated`,
    /** A cancel request of the job (cancel-requests.ts): JSON `{ at, reason }`, for a day. */
    cancelMarker: (jobId: string) => `${prefix}:cancel:${jobId}`,
    /** Broadcast of cancel requests (message = job id), so that the worker running the job hears it. */
    cancelChannel: `${prefix}:cancel`,
  };
}

export type RedisKeys = ReturnType<typeof redisKeys>;

/** A job's BullMQ deduplication id: its name and the id it is deduplicated by (its kind's `dedupeBy`). */
export function dedupeId(jobName: string, by: string): string {
  return `${jobName}:${id(by)}`;
}
