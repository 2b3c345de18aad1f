// Runs the benchmarks in sequence, each in a fresh Node process (so one's heap, connections and timers do not
// skew the next), bounded in time, then prints a Markdown table of every result. Exits 1 if any failed.
//
//   npm run bench                  # all of them
//   npm run bench -- lock events   # some of them
//   npm run bench -- --runs 3      # each 3 times; the table shows, per case, the median run
//
// On a shared machine other processes only ever slow a run down, so a median of a few runs is steadier.
import { spawn } from 'node:child_process';
import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { cpus, loadavg, tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { formatOps, ms, type Result } from './lib.js';

/** In the order they run, each with the wall-clock limit of its process. */
const BENCHES: Record<string, number> = {
  enqueue: 90_000,
  lock: 90_000,
  handoff: 100_000,
  events: 60_000,
  fanout: 120_000,
  waits: 90_000,
  // Its budget (600 s) and its cleanup: the worker's close alone may take 60 s at 10,000 jobs.
  waiters: 700_000,
  worker: 120_000,
  logs: 60_000,
  logging: 60_000,
  recovery: 160_000,
  plans: 180_000,
};

const args = process.argv.slice(2).filter((a) => a !== '--');
let runs = 1;
const runsAt = args.indexOf('--runs');
if (runsAt >= 0) {
  runs = Number(args[runsAt + 1]);
  args.splice(runsAt, 2);
  if (!Number.isInteger(runs) || runs < 1 || runs > 9) {
    console.error('--runs takes a whole number from 1 to 9');
    process.exit(2);
  }
}
const requested = args;
const unknown = requested.filter((name) => !(name in BENCHES));
if (unknown.length > 0) {
  console.error(`unknown benchmark ${unknown.join(', ')}; choose from ${Object.keys(BENCHES).join(', ')}`);
  process.exit(2);
}
const selected = requested.length > 0 ? requested : Object.keys(BENCHES);

const dir = mkdtempSync(join(tmpdir(), 'wsjobs-bench-'));
const resultsFile = join(dir, 'results.jsonl');

/** How long a benchmark stopped at its limit has for its cleanup. */
const CLEANUP_MS = 30_000;

// Ctrl-C reaches the benchmark too (one process group): wait for its cleanup, then stop with the rest.
let interrupted = false;
process.on('SIGINT', () => {
  if (interrupted) process.exit(130);
  interrupted = true;
  console.error('interrupted: waiting for the running benchmark to clean up (Ctrl-C again to leave now)');
});

function runOne(name: string): Promise<{ ok: boolean; seconds: number }> {
  const file = fileURLToPath(new URL(`./${name}.ts`, import.meta.url));
  const started = performance.now();
  return new Promise((resolve) => {
    const child = spawn(process.execPath, ['--expose-gc', '--import', 'tsx', file], {
      stdio: 'inherit',
      env: { ...process.env, BENCH_RESULTS_FILE: resultsFile },
    });
    const limit = BENCHES[name]!;
    // SIGTERM first: the benchmark's cleanup stops the processes it started and drops what it made.
    let killer: NodeJS.Timeout | undefined;
    const timer = setTimeout(() => {
      console.error(
        `${name}: stopped after ${limit / 1000} s; killed if not done within ${CLEANUP_MS / 1000} s`,
      );
      child.kill('SIGTERM');
      killer = setTimeout(() => child.kill('SIGKILL'), CLEANUP_MS);
    }, limit);
    child.on('exit', (code, signal) => {
      clearTimeout(timer);
      clearTimeout(killer);
      resolve({ ok: code === 0 && signal === null, seconds: (performance.now() - started) / 1000 });
    });
    child.on('error', (error) => {
      clearTimeout(timer);
      console.error(`${name}: could not start: ${error.message}`);
      resolve({ ok: false, seconds: 0 });
    });
  });
}

const machine =
  `${cpus().length} cores (${cpus()[0]?.model.trim() ?? 'unknown CPU'}), Node ${process.version}, ` +
  `load average ${loadavg()
    .map((l) => l.toFixed(1))
    .join(' ')} at start`;
console.log(`workspace-jobs benchmarks: ${selected.join(', ')}\n${machine}\n`);

const outcomes: { name: string; ok: boolean; seconds: number }[] = [];
for (let run = 1; run <= runs; run++) {
  if (runs > 1) console.log(`--- run ${run} of ${runs}\n`);
  for (const name of selected) {
    outcomes.push({ name: runs > 1 ? `${name} (run ${run})` : name, ...(await runOne(name)) });
    console.log();
    if (interrupted) process.exit(130);
  }
}

let results: Row[] = [];
try {
  results = readFileSync(resultsFile, 'utf8')
    .split('\n')
    .filter(Boolean)
    .map((line) => JSON.parse(line) as Row);
} catch {
  // no results at all: every benchmark failed before reporting
}
rmSync(dir, { recursive: true, force: true });

/** Per case, the run whose ops/s (or else p50) is the median: each row stays one real measurement. */
type Row = Result & { bench: string };
function medianRuns(all: Row[]): Row[] {
  const byCase = new Map<string, Row[]>();
  for (const r of all) {
    const key = `${r.bench}\u0000${r.case}`;
    byCase.set(key, [...(byCase.get(key) ?? []), r]);
  }
  return [...byCase.values()].map((rows) => {
    const score = (r: Row) => r.opsPerSec ?? -(r.latency?.p50 ?? 0);
    const sorted = [...rows].sort((a, b) => score(a) - score(b));
    return sorted[Math.floor((sorted.length - 1) / 2)]!;
  });
}
if (runs > 1) console.log(`Median of ${runs} runs per case:\n`);

const cell = (value: number | undefined, format: (n: number) => string) =>
  value === undefined || Number.isNaN(value) ? '' : format(value);
console.log('| benchmark | case | n | ops/s | p50 ms | p95 ms | p99 ms | notes |');
console.log('|---|---|--:|--:|--:|--:|--:|---|');
for (const r of medianRuns(results)) {
  console.log(
    `| ${r.bench} | ${r.case} | ${r.n} | ${cell(r.opsPerSec, formatOps)} | ${cell(r.latency?.p50, ms)} | ` +
      `${cell(r.latency?.p95, ms)} | ${cell(r.latency?.p99, ms)} | ${r.notes ?? ''} |`,
  );
}
console.log(`\n${machine}`);
for (const o of outcomes) console.log(`${o.ok ? 'ok    ' : 'FAILED'} ${o.name} (${o.seconds.toFixed(1)} s)`);
const failed = outcomes.filter((o) => !o.ok);
process.exit(failed.length > 0 ? 1 : 0);
