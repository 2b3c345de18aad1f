// Event drafts for the event tests.
import type { EventDraft, WorkspaceJobEvent } from '../../src/shared/contract.js';

/**
 * Event number `n` of job `job-1` on the chat: a build_running progress event carrying `{ n }`. Overrides
 * may make it a result event (the publisher validates the combination).
 */
export function draft(chatId: string, n: number, overrides: Partial<EventDraft> = {}): EventDraft {
  return {
    type: 'progress',
    stage: 'build_running',
    job: { id: 'job-1', name: 'start-workspace', attempt: 1 },
    chatId,
    message: `event ${n}`,
    data: { n },
    ...overrides,
  } as EventDraft;
}

/** The `n` a draft() event carries. */
export const numberOf = (event: WorkspaceJobEvent) => (event.type === 'progress' ? event.data?.n : undefined);
