// SSE fan-out (issue 11): the real dashboard in-process and 1,000 SSE clients on GET /chats/:id/events, all
// on one chat and on 1,000 distinct chats. The clients run in a child process (as browsers are not in the
// dashboard's process), each on its own TCP connection speaking HTTP/1.1 by hand: one process stands in for
// 1,000 browsers on other machines, so its own cost per received block must stay small beside the
// dashboard's (Node's http client spends ~20 µs per chunk on parsing and streams, which on one core put
// ~20 ms into the p50 that no dashboard change could remove). Latency runs from the publish call
// (EventPublisher, its own Redis connection) to the client's receipt of the event's block, on the machine's
// clock (performance.timeOrigin + now() in both processes); every client must get every event of its chat
// once, in order.
import { fork, type ChildProcess } from 'node:child_process';
import { randomUUID } from 'node:crypto';
import { connect, type Socket } from 'node:net';
import { fileURLToPath } from 'node:url';
import { PerformanceObserver } from 'node:perf_hooks';
import { startDashboard } from '../src/dashboard/server.js';
import { loadConfig } from '../src/shared/config.js';
import { EventPublisher } from '../src/shared/events.js';
import { createLogger } from '../src/shared/logger.js';
import {
  BenchFailure,
  DATABASE_URL,
  REDIS_URL,
  benchRedis,
  check,
  num,
  mapLimit,
  progressDraft,
  report,
  runBench,
  startCpuProfile,
  stats,
  uniquePrefix,
} from './lib.js';

const CLIENTS = 1_000;
/**
 * Measured events per case, one round at a time: the next once every client has the last. 100, so that one
 * round slowed by the neighbours or a GC is 1 % of the samples, not the p99 itself (30 until 2026-12-03).
 */
const ROUNDS = roundsFromEnv('BENCH_FANOUT_ROUNDS', 100, 1);
/**
 * Rounds before those, reported apart: the first events of a fresh process run through code V8 has not
 * compiled yet (the first 3 took 2-4 times a later round's CPU), which a dashboard that has been up a while
 * does not do again. `BENCH_FANOUT_WARMUP=0 BENCH_FANOUT_ROUNDS=30` is the measurement as it was before.
 */
const WARMUP_ROUNDS = roundsFromEnv('BENCH_FANOUT_WARMUP', 10, 0);
/** Publishes in flight when every client has a chat of its own, as in bench/events.ts. */
const IN_FLIGHT = 64;
const WAIT_MS = 20_000;
/** `BENCH_CPU_PROFILE=dir` writes a V8 CPU profile of the dashboard's process over each case's measured rounds. */
const PROFILE_DIR = process.env.BENCH_CPU_PROFILE;

function roundsFromEnv(name: string, fallback: number, least: number): number {
  const value = Number(process.env[name] ?? fallback);
  if (!Number.isInteger(value) || value < least || value > 1000) {
    throw new Error(`${name} takes a whole number from ${least} to 1000, not ${process.env[name]}`);
  }
  return value;
}

/** The machine's clock in ms, comparable across processes. */
const clock = () => performance.timeOrigin + performance.now();

/** parent → clients */
type Command =
  | { connect: { url: string; chatIds: string[] } }
  | { awaitRound: number; measuredFrom: boolean }
  | { results: true };
/** clients → parent */
type Answer =
  | { connected: true }
  | { round: number }
  | { results: { seqs: string[][]; receivedAt: number[][]; cpuMicros: number } }
  | { failed: string };

/** The child: opens the streams, counts each one's event blocks and when they arrived. */
function runClients(): void {
  const send = (answer: Answer) => process.send!(answer);
  const sockets: Socket[] = [];
  const seqs: string[][] = [];
  const receivedAt: number[][] = [];
  let waiting: number | undefined;
  /** While a round is awaited: how many clients lack its event (counted down, not re-scanned per read). */
  let lacking = 0;
  /** The process's CPU time from the first measured round on (connecting and warming up are not part of it). */
  let roundsCpu: NodeJS.CpuUsage | undefined;
  const roundDone = () => {
    send({ round: waiting! });
    waiting = undefined;
  };
  // One buffer for every socket's reads (`onread`: each read is handed over at once, without a Buffer
  // allocated, pushed through a Readable and emitted per chunk): a stand-in for 1,000 browsers must cost
  // little per block beside the dashboard it measures, on the same 2 cores.
  const readBuffer = Buffer.allocUnsafe(64 * 1024);
  const open = (url: string, chatId: string, index: number) =>
    new Promise<void>((resolve, reject) => {
      const received: string[] = (seqs[index] = []);
      const times: number[] = (receivedAt[index] = []);
      const { hostname, port } = new URL(url);
      let buffer = '';
      let headed = false;
      const onRead = (length: number): boolean => {
        const at = clock();
        buffer += readBuffer.toString('latin1', 0, length);
        // The response head, then the chunked body: its size lines sit between the blocks, outside `id:` lines.
        if (!headed) {
          const head = buffer.indexOf('\r\n\r\n');
          if (head < 0) return true;
          if (!buffer.startsWith('HTTP/1.1 200')) {
            reject(new Error(`GET /chats/${chatId}/events: ${buffer.slice(0, 12)}`));
            return true;
          }
          headed = true;
          buffer = buffer.slice(head + 4);
        }
        let start = 0;
        let end: number;
        while ((end = buffer.indexOf('\n\n', start)) >= 0) {
          const id = buffer.indexOf('id: ', start);
          if (id >= 0 && id < end) {
            received.push(buffer.slice(id + 4, buffer.indexOf('\n', id)));
            times.push(at);
            if (received.length === waiting! + 1 && --lacking === 0) roundDone();
          } else if (buffer.startsWith(': replay done', buffer.indexOf(':', start))) {
            // The handler's comment once subscribed: from here on it gets every live event.
            resolve();
          }
          start = end + 2;
        }
        buffer = start === buffer.length ? '' : buffer.slice(start);
        return true;
      };
      const socket = connect({
        port: Number(port),
        host: hostname,
        noDelay: true,
        onread: { buffer: readBuffer, callback: onRead },
      });
      socket.on('error', reject);
      socket.write(
        `GET /chats/${chatId}/events HTTP/1.1\r\nHost: ${hostname}\r\nAccept: text/event-stream\r\n\r\n`,
      );
      sockets.push(socket);
    });
  process.on('message', (command: Command) => {
    if ('connect' in command) {
      const { url, chatIds } = command.connect;
      // 100 at a time, so the dashboard's accept queue and Redis see a steady stream rather than a wall.
      void mapLimit(chatIds, 100, (chatId, i) => open(url, chatId, i)).then(
        () => send({ connected: true }),
        (error: unknown) => send({ failed: String(error) }),
      );
    } else if ('awaitRound' in command) {
      if (command.measuredFrom) roundsCpu = process.cpuUsage();
      waiting = command.awaitRound;
      lacking = seqs.filter((received) => received.length <= waiting!).length;
      if (lacking === 0) roundDone();
    } else {
      const { user, system } = process.cpuUsage(roundsCpu);
      process.send!({ results: { seqs, receivedAt, cpuMicros: user + system } } satisfies Answer, () => {
        for (const socket of sockets) socket.destroy();
        process.disconnect();
      });
    }
  });
}

/** The clients' process, and a way to ask it something and wait (bounded) for its answer. */
function startClients(): { child: ChildProcess; ask: (command: Command) => Promise<Answer> } {
  const child = fork(fileURLToPath(import.meta.url), ['clients'], { execArgv: ['--import', 'tsx'] });
  const ask = (command: Command) =>
    new Promise<Answer>((resolve, reject) => {
      const timer = setTimeout(() => {
        child.off('message', onAnswer);
        reject(
          new BenchFailure(`the SSE clients did not answer ${JSON.stringify(command)} within ${WAIT_MS} ms`),
        );
      }, WAIT_MS);
      const onAnswer = (answer: Answer) => {
        clearTimeout(timer);
        child.off('message', onAnswer);
        if ('failed' in answer) reject(new BenchFailure(`the SSE clients failed: ${answer.failed}`));
        else resolve(answer);
      };
      child.on('message', onAnswer);
      child.send(command);
    });
  return { child, ask };
}

async function bench(): Promise<void> {
  const log = createLogger('silent');
  await runBench('fanout', 100_000, async (cleanup) => {
    const prefix = uniquePrefix('fanout');
    const redis = benchRedis(cleanup, prefix);
    const publisher = new EventPublisher(redis, prefix, { log });
    const config = loadConfig({
      REDIS_URL,
      // Event streams need no tables: any database on the server does.
      DATABASE_URL,
      QUEUE_PREFIX: prefix,
      LOG_LEVEL: 'silent',
      DASHBOARD_HOST: '127.0.0.1',
      DASHBOARD_PORT: '0',
      // Room for a case's streams while the last case's may still be closing.
      DASHBOARD_SSE_MAX_PER_CLIENT: String(2 * CLIENTS),
      DASHBOARD_SSE_MAX_STREAMS: String(2 * CLIENTS),
    });
    const dashboard = await startDashboard(config, log);
    cleanup.add('dashboard', () => dashboard.close());

    const measure = async (label: string, chatIds: string[]) => {
      const { child, ask } = startClients();
      const exited = new Promise((resolve) => child.once('exit', resolve));
      cleanup.add('SSE clients', async () => {
        if (child.exitCode === null) child.kill('SIGKILL');
        await exited;
      });
      await ask({ connect: { url: dashboard.url, chatIds } });
      const chats = [...new Set(chatIds)];
      const published = new Map<string, { seq: string; at: number }[]>(chats.map((id) => [id, []]));
      // This process is the dashboard's, plus one publish per event (the publisher) and the rounds' messages.
      let stopProfile: ((file: string, what: string) => Promise<void>) | undefined;
      // GC pauses of this process over the measured rounds: whether a slow round was a collection.
      const gcPauses: number[] = [];
      const gcObserver = new PerformanceObserver((list) => {
        for (const entry of list.getEntries()) gcPauses.push(entry.duration);
      });
      const stopGcObserver = () => {
        // Entries are delivered after the fact: the last ones are still queued.
        for (const entry of gcObserver.takeRecords()) gcPauses.push(entry.duration);
        gcObserver.disconnect();
      };
      let serverCpu = process.cpuUsage();
      for (let round = 0; round < WARMUP_ROUNDS + ROUNDS; round++) {
        const measuredFrom = round === WARMUP_ROUNDS;
        if (measuredFrom) {
          if (PROFILE_DIR !== undefined) stopProfile = await startCpuProfile();
          gcObserver.observe({ entryTypes: ['gc'] });
          serverCpu = process.cpuUsage();
        }
        const done = ask({ awaitRound: round, measuredFrom });
        await mapLimit(chats, IN_FLIGHT, async (id) => {
          const at = clock();
          const event = await publisher.publish(progressDraft(id, round));
          published.get(id)!.push({ seq: event!.seq, at });
        });
        await done;
      }
      const { user, system } = process.cpuUsage(serverCpu);
      stopGcObserver();
      await stopProfile?.(`${PROFILE_DIR}/fanout-${chats.length}-chats.cpuprofile`, label);
      const answer = await ask({ results: true });
      check('results' in answer, 'the SSE clients sent no results');
      const { seqs, receivedAt, cpuMicros } = answer.results;
      const warmup: number[] = [];
      const latencies: number[] = [];
      /** Per measured round, its slowest delivery. */
      const roundMax = new Array<number>(ROUNDS).fill(0);
      chatIds.forEach((chatId, i) => {
        const expected = published.get(chatId)!;
        check(
          seqs[i]!.length === expected.length && seqs[i]!.every((s, r) => s === expected[r]!.seq),
          `a client of chat ${chatId} got ${seqs[i]!.length} events, not the ${expected.length} published in order`,
        );
        expected.forEach((e, r) => {
          const latency = receivedAt[i]![r]! - e.at;
          if (r < WARMUP_ROUNDS) warmup.push(latency);
          else {
            latencies.push(latency);
            roundMax[r - WARMUP_ROUNDS] = Math.max(roundMax[r - WARMUP_ROUNDS]!, latency);
          }
        });
      });
      await exited;
      const rounds = stats(roundMax);
      const cold = stats(warmup);
      const gc = stats(gcPauses);
      report({
        case: `publish -> SSE receipt, ${chatIds.length} clients on ${label}`,
        n: latencies.length,
        latency: stats(latencies),
        notes:
          `${ROUNDS} rounds of ${chats.length} publish(es), ${Math.min(IN_FLIGHT, chats.length)} in flight, ` +
          `after ${WARMUP_ROUNDS} warm-up rounds; every event once, in order; each round's slowest delivery ` +
          `p50 ${num(rounds.p50, 1)}, p95 ${num(rounds.p95, 1)}, max ${num(rounds.max, 1)} ms; ` +
          `${gcPauses.length} GC pauses in the rounds (max ${gcPauses.length > 0 ? num(gc.max, 1) : 0} ms)` +
          (WARMUP_ROUNDS > 0
            ? `; the warm-up rounds: p50 ${num(cold.p50, 1)}, p99 ${num(cold.p99, 1)} ms`
            : ''),
      });
      // CPU time does not grow with the machine's load as wall-clock latency does: the figure to compare.
      const perDelivery = (micros: number) => num(micros / latencies.length, 1);
      report({
        case: `CPU per event delivered, ${chatIds.length} clients on ${label}`,
        n: latencies.length,
        notes:
          `dashboard process ${perDelivery(user + system)} µs per client-event (user ${perDelivery(user)}, ` +
          `system ${perDelivery(system)}; ${num((user + system) / 1000 / (ROUNDS * chats.length), 2)} ms ` +
          `per published event), clients' process ${perDelivery(cpuMicros)} µs; over the measured rounds`,
      });
    };

    const oneChat = randomUUID();
    await measure(
      'one chat',
      Array.from({ length: CLIENTS }, () => oneChat),
    );
    await measure(
      `${CLIENTS} distinct chats`,
      Array.from({ length: CLIENTS }, () => randomUUID()),
    );
  });
}

if (process.argv[2] === 'clients') runClients();
else await bench();
