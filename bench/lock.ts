// ChatLocks (one Redis node, redis-semaphore Mutex): uncontended tryAcquire + release, sequential and 64 in
// flight; tryAcquire on a chat someone holds; and races of 200 simultaneous tryAcquire on one free chat,
// each of which must have exactly one winner. What holding many locks costs: 1,000 held with the worker's
// default TTL, idle, their refreshes' Redis commands and this process's CPU. Then Redlock on three redis-server processes of its own, as
// the worker connects to them (failFast): acquire, refresh and release with all nodes up, with one killed
// and with one frozen (SIGSTOP), while locks are held and refreshed; none may be lost.
import { randomUUID } from 'node:crypto';
import { monitorEventLoopDelay } from 'node:perf_hooks';
import { BATCH_SHARE } from '../src/shared/lock-refresher.js';
import { ChatLocks, type HeldLock, type LockOperation } from '../src/shared/lock.js';
import { createLogger } from '../src/shared/logger.js';
import { closeRedis, createRedis } from '../src/shared/redis.js';
import { RedisServerProcess } from '../test/helpers/redis-server.js';
import {
  benchRedis,
  check,
  countCalls,
  report,
  runBench,
  sleep,
  stats,
  timed,
  ticksOf,
  uniquePrefix,
  type Cleanup,
} from './lib.js';

const SEQUENTIAL = 5_000;
const REFUSED_SEQUENTIAL = 1_000;
const CONCURRENT = 10_000;
const IN_FLIGHT = 64;
const CONTENDED = 10_000;
const RACES = 20;
const RACERS = 200;
/** The target for every lock operation with one of three nodes down. */
const ONE_DOWN_P99_TARGET_MS = 50;
// Redlock: locks held (and refreshed) through each scenario, acquire+release pairs measured meanwhile.
const HELD = 50;
const PAIRS = 2_000;
const TTL_MS = 2_000;
const REFRESH_MS = 200;
// Held idle: as many locks as bench/waiters.ts's jobs, the worker's default CHAT_LOCK_TTL_MS.
const IDLE_HELD = 1_000;
const IDLE_TTL_MS = 6_000;
const IDLE_MS = 6_000;

await runBench('lock', 75_000, async (cleanup) => {
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

  await heldIdle(cleanup, prefix);
  await redlockWithOneNodeDown(cleanup);
});

/** IDLE_HELD locks held for three refresh periods: the Redis commands and the CPU their refreshes take. */
async function heldIdle(cleanup: Cleanup, prefix: string): Promise<void> {
  const connection = 'workspace-jobs-bench-lock-held';
  const redis = benchRedis(cleanup, prefix, connection);
  /** When each refresh's tick (its command) started. */
  let refreshes: number[] = [];
  const locks = new ChatLocks([redis], prefix, {
    lockTimeoutMs: IDLE_TTL_MS,
    onOperation: (operation, ms) => void (operation === 'refresh' && refreshes.push(performance.now() - ms)),
    log: createLogger('silent'),
  });
  // Taken over one refresh period, as a worker's jobs start at different times.
  const held: HeldLock[] = [];
  cleanup.add('release the idle locks', () => Promise.all(held.map((lock) => lock.release())));
  const periodMs = IDLE_TTL_MS / 3;
  for (let i = 0; i < IDLE_HELD; i++) {
    const lock = await locks.tryAcquire(randomUUID());
    check(lock, 'could not take a free lock to hold idle');
    held.push(lock);
    if (i % 10 === 9) await sleep(periodMs / (IDLE_HELD / 10));
  }
  await sleep(periodMs); // every lock refreshed once: the window sees only steady state
  refreshes = [];
  const calls = countCalls();
  const cpu = process.cpuUsage();
  const loopDelay = monitorEventLoopDelay({ resolution: 5 });
  loopDelay.enable();
  const started = performance.now();
  await sleep(IDLE_MS);
  loopDelay.disable();
  const seconds = (performance.now() - started) / 1000;
  const used = process.cpuUsage(cpu);
  const commands = calls().redis[connection] ?? 0;
  const ticks = ticksOf(refreshes);
  const perPeriod = refreshes.length / ((seconds * 1000) / periodMs);
  const lost = held.filter((lock) => lock.signal.aborted).length;
  check(lost === 0, `${lost} of ${IDLE_HELD} idle locks were lost`);
  check(
    commands * 10 < refreshes.length,
    `${commands} Redis commands for ${refreshes.length} lock refreshes: not batched (one command per tick)`,
  );
  report({
    case: `${IDLE_HELD} locks held, idle ${seconds.toFixed(1)} s: refreshes`,
    n: refreshes.length,
    opsPerSec: refreshes.length / seconds,
    notes:
      `TTL ${IDLE_TTL_MS} ms; ${(commands / seconds).toFixed(1)} Redis commands/s in ${ticks.length} ticks, ` +
      `${(refreshes.length / Math.max(ticks.length, 1)).toFixed(0)} locks per tick, the most ` +
      `${Math.max(0, ...ticks)} = ${((Math.max(0, ...ticks) / perPeriod) * 100).toFixed(1)} % of a period's ` +
      `(even: ${BATCH_SHARE * 100} %); this process ` +
      `${((used.user + used.system) / 1000 / seconds).toFixed(1)} ms CPU/s, event loop delay p99 ` +
      `${(loopDelay.percentile(99) / 1e6).toFixed(1)} ms; 0 lost`,
  });
  await Promise.all(held.splice(0).map((lock) => lock.release()));
}

async function redlockWithOneNodeDown(cleanup: Cleanup): Promise<void> {
  const nodes = await RedisServerProcess.startMany(3);
  cleanup.add('lock nodes', () => Promise.all(nodes.map((node) => node.stop())));
  const clients = nodes.map((node) =>
    createRedis(node.url, { name: 'workspace-jobs-bench-lock', failFast: true }),
  );
  cleanup.add('lock node connections', () => Promise.all(clients.map((c) => closeRedis(c, 500))));
  let samples: Record<LockOperation, number[]> = { acquire: [], refresh: [], release: [] };
  const locks = new ChatLocks(clients, uniquePrefix('redlock'), {
    lockTimeoutMs: TTL_MS,
    refreshIntervalMs: REFRESH_MS,
    onOperation: (operation, ms) => samples[operation].push(ms),
    log: createLogger('silent'),
  });
  const allReady = async () => {
    for (let i = 0; i < 100 && clients.some((c) => c.status !== 'ready'); i++) await sleep(50);
    check(
      clients.every((c) => c.status === 'ready'),
      'a lock node did not (re)connect within 5 s',
    );
  };

  const scenarios: { label: string; fault?: (node: RedisServerProcess) => Promise<void> | void }[] = [
    { label: '3 nodes, all up' },
    { label: '3 nodes, one killed', fault: (node) => node.kill() },
    { label: '3 nodes, one frozen (SIGSTOP)', fault: (node) => node.freeze() },
  ];
  for (const { label, fault } of scenarios) {
    await allReady();
    // Taken over one refresh period, as jobs start at different times: their refreshes do not all fire in
    // the same tick (50 at once would measure the event loop's queue, not the nodes).
    const held: (HeldLock | null)[] = [];
    for (let i = 0; i < HELD; i++) {
      held.push(await locks.tryAcquire(randomUUID()));
      await sleep(REFRESH_MS / HELD);
    }
    check(
      held.every((lock) => lock !== null),
      `${label}: could not take ${HELD} free locks`,
    );
    await fault?.(nodes[2]!);
    samples = { acquire: [], refresh: [], release: [] };
    const started = performance.now();
    // Fresh chats locked and released one after the other while the held ones refresh in the background,
    // for at least 10 refresh periods.
    for (let i = 0; i < PAIRS || performance.now() - started < REFRESH_MS * 10; i++) {
      const lock = await locks.tryAcquire(randomUUID());
      check(lock, `${label}: tryAcquire of a free chat failed`);
      await lock.release();
    }
    const lost = held.filter((lock) => lock!.signal.aborted).length;
    await Promise.all(held.map((lock) => lock!.release()));
    check(lost === 0, `${label}: ${lost} of ${HELD} held locks were lost`);
    for (const operation of ['acquire', 'refresh', 'release'] as const) {
      const latency = stats(samples[operation]);
      const target =
        fault === undefined
          ? ''
          : latency.p99 < ONE_DOWN_P99_TARGET_MS
            ? `, p99 target < ${ONE_DOWN_P99_TARGET_MS} ms: met`
            : `, p99 target < ${ONE_DOWN_P99_TARGET_MS} ms: MISSED`;
      report({
        case: `redlock ${operation}, ${label}`,
        n: latency.n,
        latency,
        notes: `${HELD} held, 0 lost${target}`,
      });
    }
    if (!nodes[2]!.running) await nodes[2]!.restart();
    else nodes[2]!.thaw();
  }
}
