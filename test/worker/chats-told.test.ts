// Every chat that asked is told (docs/design.md §6), end to end with real workers: a chat whose start was
// deduplicated onto another chat's job gets the job's progress and its one result on its own stream and
// channel; a storm of duplicates leaves the job's events replayable; `queued` is always a job's first event.
import { describe, expect, it, vi } from 'vitest';
import { insertChat } from '../../src/cli/fixtures.js';
import type { WorkspaceJobEvent } from '../../src/shared/contract.js';
import { readChatEvents } from '../../src/shared/events.js';
import { POLL, WAIT_MS, stagesOf, useWorkspaceHarness } from '../helpers/worker-harness.js';

describe('every chat that asked is told', () => {
  const suite = useWorkspaceHarness();

  /** Everything the chat's channel carries from now on, as a subscriber gets it. */
  async function listen(chatId: string): Promise<WorkspaceJobEvent[]> {
    const received: WorkspaceJobEvent[] = [];
    const unsubscribe = await suite.h.producer.subscribe(chatId, (e) => received.push(e));
    suite.h.onClose(unsubscribe);
    return received;
  }

  const start = (chatId: string) =>
    suite.h.producer.startWorkspace({ chatId, ownerId: suite.ws.ownerId, workspaceId: suite.ws.workspaceId });

  it("two chats on one workspace both get the job's progress and its one result, on their streams and channels", async () => {
    const { chatId: second } = await insertChat(suite.h.db.pool, {
      ownerId: suite.ws.ownerId,
      workspaceId: suite.ws.workspaceId,
    });
    const firstLive = await listen(suite.ws.chatId);
    const secondLive = await listen(second);
    suite.h.provisioner.pause();
    await suite.h.startWorker();
    const first = await start(suite.ws.chatId);
    // The build waits for the provisioner: the job is running when the second chat asks.
    await suite.h.waitForEvent(suite.ws.chatId, 'build_queued', (e) => e.job.id === first.jobId);

    const joined = await start(second);
    expect(joined).toMatchObject({ jobId: first.jobId, deduplicated: true, differs: ['chatId'] });
    suite.h.provisioner.resume();
    const result = await suite.h.producer.waitForResult(first.jobId, { timeoutMs: WAIT_MS });

    const own = await suite.h.jobEvents(suite.ws.chatId, first.jobId);
    const theirs = await vi.waitFor(async () => {
      const events = await suite.h.jobEvents(second, first.jobId);
      expect(events.at(-1)?.type).toBe('result');
      return events;
    }, POLL);
    // The second chat hears everything after its announcement: the job's own events since build_queued.
    const after = own.slice(own.findIndex((e) => e.stage === 'build_queued') + 1);
    // Not build_running: there is none when the build ended before the worker looked at its claim.
    expect(after.map((e) => e.stage)).toContain('build_succeeded');
    expect(stagesOf(theirs)).toEqual(['deduplicated', ...stagesOf(after)]);
    expect(theirs.slice(1)).toEqual(after.map((e, i) => ({ ...e, chatId: second, seq: theirs[i + 1]!.seq })));
    for (const events of [own, theirs]) {
      expect(events.filter((e) => e.type === 'result').map((e) => e.data)).toEqual([result]);
    }
    await vi.waitFor(() => expect(firstLive).toEqual(own), POLL);
    await vi.waitFor(() => expect(secondLive).toEqual(theirs), POLL);
  });

  it("10,000 duplicate enqueues leave all of the job's events replayable with since", async () => {
    const { chatId: second } = await insertChat(suite.h.db.pool, {
      ownerId: suite.ws.ownerId,
      workspaceId: suite.ws.workspaceId,
    });
    const live = await listen(suite.ws.chatId);
    suite.h.provisioner.pause();
    await suite.h.startWorker();
    const first = await start(suite.ws.chatId);
    await suite.h.waitForEvent(suite.ws.chatId, 'build_queued', (e) => e.job.id === first.jobId);

    for (let batch = 0; batch < 20; batch++) {
      const calls = await Promise.all(
        Array.from({ length: 500 }, (_, i) => start(i % 2 === 0 ? suite.ws.chatId : second)),
      );
      expect(calls.every((c) => c.deduplicated && c.jobId === first.jobId)).toBe(true);
    }
    suite.h.provisioner.resume();
    await suite.h.producer.waitForResult(first.jobId, { timeoutMs: WAIT_MS });

    // Everything the chat's channel carried is still in its stream, from the job's queued event on.
    await vi.waitFor(() => expect(live.at(-1)?.type).toBe('result'), POLL);
    expect(live[0]!.stage).toBe('queued');
    const replayed = await readChatEvents(suite.h.redis, suite.h.prefix, suite.ws.chatId, '0');
    expect(replayed).toEqual(live);
    const sinceQueued = await readChatEvents(suite.h.redis, suite.h.prefix, suite.ws.chatId, live[0]!.seq);
    expect(sinceQueued).toEqual(live.slice(1));
    expect(stagesOf(live).filter((s) => s === 'deduplicated')).toHaveLength(1);
    // build_running is not among them when the build ended before the worker looked at its claim.
    expect(stagesOf(live)).toEqual(expect.arrayContaining(['lock_acquired', 'build_succeeded', 'completed']));
    const theirs = await suite.h.jobEvents(second, first.jobId);
    expect(stagesOf(theirs).filter((s) => s === 'deduplicated')).toHaveLength(1);
    expect(theirs.at(-1)?.type).toBe('result');
  }, 120_000);

  it('queued is the first event of each of 200 consecutive fast jobs, on the stream and on pub/sub', async () => {
    const live = await listen(suite.ws.chatId);
    await suite.h.startWorker();
    // Every other job's producer announces only once its job has its result: its worker must go first.
    const producerCommands = suite.h.redis as unknown as Record<
      string,
      (...args: unknown[]) => Promise<unknown>
    >;
    const evalsha = producerCommands.evalsha!.bind(suite.h.redis);
    let slowProducer = false;
    // The publish script's second key (after the script's sha and the number of keys) is the job's marker.
    vi.spyOn(producerCommands, 'evalsha').mockImplementation(async (...args) => {
      const queuedMarker = String(args[3]);
      const jobId = queuedMarker.slice(`${suite.h.prefix}:queued:`.length);
      if (slowProducer && queuedMarker.startsWith(`${suite.h.prefix}:queued:`)) {
        await vi.waitFor(async () => {
          expect((await suite.h.jobEvents(suite.ws.chatId, jobId)).at(-1)?.type).toBe('result');
        }, POLL);
      }
      return evalsha(...args);
    });
    const jobIds: string[] = [];
    // After the first start the workspace is running: each later job's worker is as quick as it gets.
    for (let i = 0; i < 200; i++) {
      slowProducer = i % 2 === 1;
      const { jobId, deduplicated } = await start(suite.ws.chatId);
      expect(deduplicated).toBe(false);
      jobIds.push(jobId);
      await suite.h.producer.waitForResult(jobId, { timeoutMs: WAIT_MS });
    }
    await vi.waitFor(() => expect(live.filter((e) => e.type === 'result')).toHaveLength(200), POLL);
    for (const jobId of jobIds) {
      const heard = live.filter((e) => e.job.id === jobId);
      expect(heard[0]?.stage, `job ${jobId} on pub/sub`).toBe('queued');
      expect(
        stagesOf(heard).filter((s) => s === 'queued'),
        `job ${jobId}`,
      ).toHaveLength(1);
    }
    // The stream is capped at ~1000 entries, trimmed from its oldest: all but its oldest job are whole in it.
    const stream = await suite.h.events(suite.ws.chatId);
    const kept = jobIds.filter((id) => stream.some((e) => e.job.id === id)).slice(1);
    expect(kept.length).toBeGreaterThan(100);
    for (const jobId of kept) {
      const events = stream.filter((e) => e.job.id === jobId);
      expect(events[0]?.stage, `job ${jobId} on the stream`).toBe('queued');
      expect(events).toEqual(live.filter((e) => e.job.id === jobId));
    }
  }, 120_000);
});
