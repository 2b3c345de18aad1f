// Logging: what a daemon's log line costs its main thread (issue 11: the provisioner spent 14 % of its time
// in a synchronous write per line), by destination, writing to a pipe that `cat` reads, as a container's
// stderr is read by its log driver. The lines come in bursts, a few per event-loop turn, as a busy daemon's do.
import { execFileSync, spawn } from 'node:child_process';
import { closeSync, constants, mkdtempSync, openSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { setImmediate as nextTurn } from 'node:timers/promises';
import { pino, type DestinationStream } from 'pino';
import { LogDestination } from '../src/shared/log-destination.js';
import { check, num, report, runBench, stats, threadsCpuMs } from './lib.js';

const LINES = 200_000;
const LINES_PER_TURN = 6;
const ROUNDS = 3;

interface Destination {
  name: string;
  make: (fd: number) => DestinationStream & { flushSync?: () => void };
  notes: string;
}

const DESTINATIONS: Destination[] = [
  {
    name: 'pino.destination, sync (a write per line)',
    make: (fd) => pino.destination({ fd, sync: true }),
    notes: "the other commands'",
  },
  {
    name: 'pino.destination, async (sonic-boom)',
    make: (fd) => pino.destination({ fd, sync: false }),
    notes: "the daemons' until 2026-12-07: writes in the threadpool, out of order at exit",
  },
  {
    name: 'LogDestination (a write per turn)',
    make: (fd) => new LogDestination({ fd }),
    notes: "the daemons'",
  },
];

const median = (values: number[]) => stats(values).p50;

function endSonicBoom(stream: DestinationStream): Promise<void> {
  const sonic = stream as unknown as NodeJS.EventEmitter & { end: () => void };
  return new Promise((resolve) => {
    sonic.once('close', () => resolve());
    sonic.end();
  });
}

await runBench('logging', 45_000, async (cleanup) => {
  const dir = mkdtempSync(join(tmpdir(), 'wsjbench-logging-'));
  cleanup.add('fifo directory', async () => rmSync(dir, { recursive: true, force: true }));
  const fifo = join(dir, 'stderr');
  execFileSync('mkfifo', [fifo]);
  const reader = spawn('cat', [fifo], { stdio: ['ignore', 'ignore', 'inherit'], detached: true });
  cleanup.add('cat reading the pipe', async () => {
    if (reader.exitCode === null) process.kill(-reader.pid!, 'SIGKILL');
  });
  // Blocking, as a container's stderr is; the open waits for `cat` to open its end. Held open throughout, so
  // that `cat` does not see the end of its input when a destination closes its own descriptor.
  const held = openSync(fifo, constants.O_WRONLY);
  cleanup.add('pipe', async () => closeSync(held));

  const measured = new Map<string, { mainUs: number[]; otherUs: number[]; linesPerSec: number[] }>();
  for (let round = 0; round < ROUNDS; round++) {
    for (const destination of DESTINATIONS) {
      const fd = openSync(fifo, constants.O_WRONLY);
      const stream = destination.make(fd);
      const log = pino({ level: 'info', name: 'workspace-jobs-provisioner' }, stream).child({
        jobId: '018f3c1e-7d7a-7c3e-9a41-3f1f2a6b9c10',
        buildId: 'b2b8c1d4-5e6f-4a7b-8c9d-0e1f2a3b4c5d',
      });
      const cpu = threadsCpuMs();
      const started = performance.now();
      for (let i = 0; i < LINES; i++) {
        log.info({ status: 'running', step: i }, 'provisioner job status changed');
        if ((i + 1) % LINES_PER_TURN === 0) await nextTurn();
      }
      stream.flushSync?.();
      const seconds = (performance.now() - started) / 1000;
      const after = threadsCpuMs();
      // sonic-boom's end waits for its writes in the threadpool, then closes the descriptor.
      if (stream instanceof LogDestination) closeSync(fd);
      else await endSonicBoom(stream);
      const entry = measured.get(destination.name) ?? { mainUs: [], otherUs: [], linesPerSec: [] };
      entry.mainUs.push(((after.mainMs - cpu.mainMs) * 1000) / LINES);
      entry.otherUs.push(((after.otherMs - cpu.otherMs) * 1000) / LINES);
      entry.linesPerSec.push(LINES / seconds);
      measured.set(destination.name, entry);
    }
  }

  const mainUs = (name: string) => median(measured.get(name)!.mainUs);
  for (const destination of DESTINATIONS) {
    const entry = measured.get(destination.name)!;
    report({
      case: destination.name,
      n: LINES,
      opsPerSec: median(entry.linesPerSec),
      notes:
        `${num(median(entry.mainUs), 2)} µs of the main thread per line, ` +
        `${num(median(entry.otherUs), 2)} µs of other threads; ${destination.notes}`,
    });
  }
  const [perLine, , perTurn] = DESTINATIONS.map((d) => mainUs(d.name));
  check(perTurn! < perLine!, `a write per turn cost the main thread more than a write per line`);
});
