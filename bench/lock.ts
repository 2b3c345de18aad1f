// ChatLocks (one Redis node, redis-semaphore Mutex): uncontended tryAcquire + release, sequential and 64 in
// flight; tryAcquire on a chat someone holds; and races of 200 simultaneous tryAcquire on one free chat,
// each of which must have exactly one winner.
import { randomUUID } from 'node:crypto';
import { ChatLocks, type HeldLock } from '../src/shared/lock.js';
import { createLogger } from '../src/shared/logger.js';
import { benchRedis, check, report, runBench, stats, timed, uniquePrefix } from './lib.js';

const SEQUENTIAL = 5_000;
const REFUSED_SEQUENTIAL = 1_000;
const CONCURRENT = 10_000;
const IN_FLIGHT = 64;
const CONTENDED = 10_000;
const RACES = 20;
const RACERS = 200;

await runBench('lock', 45_000, async (cleanup) => {
  const prefix = uniquePrefix('lock');
  const redis = benchRedis(cleanup, prefix);
  const locks = new ChatLocks([redis], prefix, { log: createLogger('silent') });
  const chats = (n: number) => Array.from({ length: n }, () => randomUUID());

  const acquireLatencies: number[] = [];
  const pair = async (chatId: string) => {
    const t0 = performance.now();
    const lock = await locks.tryAcquire(chatId);
    acquireLatencies.push(performance.now() - t0);
    check(lock, `uncontended tryAcquire of ${chatId} failed`);
    await lock.release();
  };

  await timed(chats(500), 8, pair); // warm-up
  acquireLatencies.length = 0;

  const seq = await timed(chats(SEQUENTIAL), 1, pair);
  report({
    case: 'uncontended tryAcquire + release, sequential',
    n: SEQUENTIAL,
    opsPerSec: seq.opsPerSec,
    latency: stats(seq.latencies),
    notes: `tryAcquire alone p50 ${stats(acquireLatencies).p50.toFixed(3)} ms`,
  });

  const conc = await timed(chats(CONCURRENT), IN_FLIGHT, pair);
  report({
    case: `uncontended tryAcquire + release, ${IN_FLIGHT} in flight`,
    n: CONCURRENT,
    opsPerSec: conc.opsPerSec,
    latency: stats(conc.latencies),
  });

  // Contended: the chat is held; every other tryAcquire must answer null at once (no retry, no sleep).
  const busyChat = randomUUID();
  const holder = await locks.tryAcquire(busyChat);
  check(holder, 'could not take the lock to contend on');
  cleanup.add('release the contended lock', () => holder.release());
  const refusedSeq = await timed(
    Array.from({ length: REFUSED_SEQUENTIAL }, () => busyChat),
    1,
    (chatId) => locks.tryAcquire(chatId),
  );
  check(
    refusedSeq.results.every((l) => l === null),
    'a sequential tryAcquire got a lock someone else holds',
  );
  report({
    case: 'contended tryAcquire (held chat), sequential',
    n: refusedSeq.results.length,
    opsPerSec: refusedSeq.opsPerSec,
    latency: stats(refusedSeq.latencies),
    notes: 'all refused',
  });
  const contended = await timed(
    Array.from({ length: CONTENDED }, () => busyChat),
    IN_FLIGHT,
    (chatId) => locks.tryAcquire(chatId),
  );
  const stolen = contended.results.filter((l) => l !== null).length;
  check(stolen === 0, `${stolen} tryAcquire calls got a lock someone else holds`);
  check(!holder.signal.aborted, 'the holder lost its lock while others contended');
  await holder.release();
  report({
    case: `contended tryAcquire (held chat), ${IN_FLIGHT} in flight`,
    n: CONTENDED,
    opsPerSec: contended.opsPerSec,
    latency: stats(contended.latencies),
    notes: 'all refused',
  });

  // Races: RACERS simultaneous tryAcquire on a free chat, exactly one winner each round.
  const raceLatencies: number[] = [];
  const started = performance.now();
  for (let round = 0; round < RACES; round++) {
    const chatId = randomUUID();
    const race = await timed(
      Array.from({ length: RACERS }, () => chatId),
      RACERS,
      (id) => locks.tryAcquire(id),
    );
    raceLatencies.push(...race.latencies);
    const winners = race.results.filter((l): l is HeldLock => l !== null);
    check(winners.length === 1, `race ${round}: ${winners.length} winners for one chat`);
    await winners[0]!.release();
  }
  report({
    case: `race: ${RACERS} tryAcquire at once on one free chat`,
    n: RACES * RACERS,
    opsPerSec: ((RACES * RACERS) / (performance.now() - started)) * 1000,
    latency: stats(raceLatencies),
    notes: `exactly 1 winner in each of ${RACES} rounds`,
  });

  const [, left] = await redis.scan('0', 'MATCH', `${prefix}:lock:*`, 'COUNT', 10_000);
  check(left.length === 0, `${left.length} lock keys left after every lock was released`);
});
