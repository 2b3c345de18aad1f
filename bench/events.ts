// Events: EventPublisher.publish throughput (sequential and 64 in flight), end-to-end latency from the
// publish call to EventSubscriber delivery (one at a time, and under load with every event checked for
// delivery), and replay of a 1,000-event stream with `since`.
import { randomUUID } from 'node:crypto';
import { EventPublisher, EventSubscriber, compareSeq, readChatEvents } from '../src/shared/events.js';
import type { WorkspaceJobEvent } from '../src/shared/contract.js';
import { redisKeys } from '../src/shared/keys.js';
import { createLogger } from '../src/shared/logger.js';
import { closeRedis, duplicateSubscriber } from '../src/shared/redis.js';
import { benchRedis, check, progressDraft, report, runBench, stats, timed, uniquePrefix } from './lib.js';

const SEQUENTIAL = 3_000;
const CONCURRENT = 10_000;
const IN_FLIGHT = 64;
const CHATS = 100;
const PING_PONG = 2_000;
const LOADED = 10_000;
const REPLAY_EVENTS = 1_000;
const REPLAYS = 50;

const log = createLogger('silent');

const indexOf = (event: WorkspaceJobEvent) => (event.data as { i: number }).i;

/** How many events arrived with a seq lower than the one before. */
function outOfOrderCount(seqs: string[]): number {
  let count = 0;
  for (let i = 1; i < seqs.length; i++) if (compareSeq(seqs[i]!, seqs[i - 1]!) < 0) count++;
  return count;
}

await runBench('events', 45_000, async (cleanup) => {
  const prefix = uniquePrefix('events');
  const redis = benchRedis(cleanup, prefix);
  const keys = redisKeys(prefix);
  const publisher = new EventPublisher(redis, prefix, { log });
  const subscriberConnection = duplicateSubscriber(redis, 'workspace-jobs-bench-sub', log);
  cleanup.add('subscriber connection', () => closeRedis(subscriberConnection));
  const subscriber = new EventSubscriber({ subscriber: subscriberConnection, commands: redis, prefix, log });
  cleanup.add('event subscriber', () => subscriber.close());

  const warm = randomUUID();
  await timed(
    Array.from({ length: 300 }, (_, i) => i),
    8,
    (i) => publisher.publish(progressDraft(warm, i)),
  );

  // Throughput without subscribers.
  const busyChat = randomUUID();
  const seq = await timed(
    Array.from({ length: SEQUENTIAL }, (_, i) => i),
    1,
    (i) => publisher.publish(progressDraft(busyChat, i)),
  );
  report({
    case: 'publish sequential, one chat',
    n: SEQUENTIAL,
    opsPerSec: seq.opsPerSec,
    latency: stats(seq.latencies),
    notes: 'one script: XADD, EXPIRE, PUBLISH x2',
  });
  const chats = Array.from({ length: CHATS }, () => randomUUID());
  const conc = await timed(
    Array.from({ length: CONCURRENT }, (_, i) => i),
    IN_FLIGHT,
    (i) => publisher.publish(progressDraft(chats[i % CHATS]!, i)),
  );
  await timed(
    Array.from({ length: CONCURRENT }, (_, i) => i),
    IN_FLIGHT,
    (i) => publisher.publish(progressDraft(busyChat, SEQUENTIAL + i)),
  );
  const kept = await redis.xlen(keys.chatLog(busyChat));
  check(kept >= 1_000 && kept < 1_200, `the replay stream kept ${kept} entries, expected about 1000`);
  report({
    case: `publish ${IN_FLIGHT} in flight, ${CHATS} chats`,
    n: CONCURRENT,
    opsPerSec: conc.opsPerSec,
    latency: stats(conc.latencies),
    notes: `a stream of ${SEQUENTIAL + CONCURRENT} events kept ${kept}`,
  });

  // End to end, one at a time: publish, wait for the subscriber to deliver it, next.
  const pingChat = randomUUID();
  let onDelivered: ((event: WorkspaceJobEvent) => void) | undefined;
  const unsubscribePing = await subscriber.subscribe(pingChat, (event) => onDelivered?.(event));
  const pingPong = await timed(
    Array.from({ length: PING_PONG }, (_, i) => i),
    1,
    (i) =>
      new Promise<void>((resolve, reject) => {
        onDelivered = (event) => {
          if (indexOf(event) === i) resolve();
        };
        publisher.publish(progressDraft(pingChat, i)).catch(reject);
      }),
  );
  await unsubscribePing();
  report({
    case: 'publish -> subscriber delivery, one at a time',
    n: PING_PONG,
    opsPerSec: pingPong.opsPerSec,
    latency: stats(pingPong.latencies),
  });

  // End to end under load: 64 publishes in flight on one chat; every event must arrive exactly once.
  const loadChat = randomUUID();
  const sentAt = new Float64Array(LOADED);
  const latencies: number[] = [];
  const received: WorkspaceJobEvent[] = [];
  let allDelivered!: () => void;
  const delivered = new Promise<void>((resolve) => (allDelivered = resolve));
  const unsubscribeLoad = await subscriber.subscribe(loadChat, (event) => {
    latencies.push(performance.now() - sentAt[indexOf(event)]!);
    received.push(event);
    if (received.length === LOADED) allDelivered();
  });
  const started = performance.now();
  await timed(
    Array.from({ length: LOADED }, (_, i) => i),
    IN_FLIGHT,
    (i) => {
      sentAt[i] = performance.now();
      return publisher.publish(progressDraft(loadChat, i));
    },
  );
  let timer: NodeJS.Timeout | undefined;
  await Promise.race([
    delivered,
    new Promise((_, reject) => {
      timer = setTimeout(() => reject(new Error(`only ${received.length}/${LOADED} delivered`)), 10_000);
    }),
  ]).finally(() => clearTimeout(timer));
  const loadMs = performance.now() - started;
  await unsubscribeLoad();
  const unique = new Set(received.map(indexOf)).size;
  check(unique === LOADED, `${unique} distinct events of ${LOADED} delivered`);
  const outOfOrder = outOfOrderCount(received.map((e) => e.seq));
  report({
    case: `publish -> delivery, ${IN_FLIGHT} publishes in flight`,
    n: LOADED,
    opsPerSec: (LOADED / loadMs) * 1000,
    latency: stats(latencies),
    notes: `all delivered once, ${outOfOrder} out of seq order`,
  });

  // Replay: a chat with 1,000 events, read by fresh subscriptions with `since`.
  const replayChat = randomUUID();
  const events = await timed(
    Array.from({ length: REPLAY_EVENTS }, (_, i) => i),
    IN_FLIGHT,
    (i) => publisher.publish(progressDraft(replayChat, i)),
  );
  const seqs = events.results.map((e) => e!.seq);
  const replay = async (since: string, expected: number) => {
    let count = 0;
    const unsubscribe = await subscriber.subscribe(replayChat, () => count++, { since });
    await unsubscribe();
    check(count === expected, `replay since ${since} delivered ${count} events, expected ${expected}`);
  };
  const full = await timed(
    Array.from({ length: REPLAYS }, () => '0'),
    1,
    (since) => replay(since, REPLAY_EVENTS),
  );
  report({
    case: `replay ${REPLAY_EVENTS} events: subscribe({ since: '0' })`,
    n: REPLAYS,
    opsPerSec: full.opsPerSec,
    latency: stats(full.latencies),
    notes: `${Math.round((REPLAY_EVENTS * 1000) / stats(full.latencies).p50).toLocaleString('en-US')} events/s at p50`,
  });
  const middle = seqs[REPLAY_EVENTS / 2 - 1]!;
  const half = await timed(
    Array.from({ length: REPLAYS }, () => middle),
    1,
    (since) => replay(since, REPLAY_EVENTS / 2),
  );
  report({
    case: `replay the last ${REPLAY_EVENTS / 2}: subscribe({ since: <500th seq> })`,
    n: REPLAYS,
    opsPerSec: half.opsPerSec,
    latency: stats(half.latencies),
  });
  const read = await timed(
    Array.from({ length: REPLAYS }, () => '0'),
    1,
    async (since) => {
      const all = await readChatEvents(redis, prefix, replayChat, since, undefined, log);
      check(all.length === REPLAY_EVENTS, `readChatEvents returned ${all.length} events`);
    },
  );
  report({
    case: `readChatEvents(since '0'), ${REPLAY_EVENTS} events`,
    n: REPLAYS,
    opsPerSec: read.opsPerSec,
    latency: stats(read.latencies),
  });
});
