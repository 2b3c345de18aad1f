// Log line ids across Postgres crashes (migrations/0011): a reproduction, not a benchmark (bench/run.ts does
// not run it), for it crashes the server it is given. Each round a build writes a line every 10 ms through
// the daemon's JobLogWriter (batches every 250 ms, each committed unflushed), a reader reads the newest id
// every 5 ms, as a follower does, and after 1-2 s the postmaster gets SIGQUIT (`pg_ctl stop -m immediate`:
// no WAL flush) or, with --kill, SIGKILL; then the server is started again and the build writes one more
// line. Printed per round: the newest id the reader saw, the newest stored after recovery (seen lines that
// are gone), and the new line's id; a new id at or below one seen is a line a follower resuming after its
// cursor skips. --without-jump migrates without 0011, to show what it prevents.
//
// Only ever on a private cluster, whose postgresql.conf has its port and socket directory, e.g.
//   mkdir /tmp/pgcrash && chown postgres /tmp/pgcrash
//   su postgres -c '/usr/lib/postgresql/15/bin/initdb -D /tmp/pgcrash/data -A trust'
//   printf "port = 55432\nunix_socket_directories = '/tmp/pgcrash'\nlisten_addresses = '127.0.0.1'\n" \
//     >> /tmp/pgcrash/data/postgresql.conf
//   CRASH_PG_BIN=/usr/lib/postgresql/15/bin CRASH_PGDATA=/tmp/pgcrash/data \
//     CRASH_DATABASE_URL=postgres://postgres@127.0.0.1:55432/logcrash npx tsx bench/log-crash.ts --rounds 20
// It starts the server when it is down, leaves it running, and drops its database at the end.
import { execFileSync } from 'node:child_process';
import { randomUUID } from 'node:crypto';
import { cpSync, mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import pg from 'pg';
import { JobLogWriter } from '../src/provisioner/job-log-writer.js';
import { MIGRATIONS_DIR, migrate } from '../src/shared/migrate.js';
import { createPool, type Pool } from '../src/shared/postgres.js';
import { sleep } from './lib.js';

const { CRASH_PG_BIN, CRASH_PGDATA, CRASH_DATABASE_URL } = process.env;
if (!CRASH_PG_BIN || !CRASH_PGDATA || !CRASH_DATABASE_URL) {
  console.error(
    'set CRASH_PG_BIN, CRASH_PGDATA and CRASH_DATABASE_URL to a private cluster (see the header)',
  );
  process.exit(2);
}
const args = process.argv.slice(2);
const roundsAt = args.indexOf('--rounds');
const ROUNDS = roundsAt >= 0 ? Number(args[roundsAt + 1]) : 20;
const SIGNAL = args.includes('--kill') ? 'SIGKILL' : 'SIGQUIT';
const WITHOUT_JUMP = args.includes('--without-jump');
if (!Number.isInteger(ROUNDS) || ROUNDS < 1) {
  console.error('--rounds takes a whole number ≥ 1');
  process.exit(2);
}

/** pg_ctl as the data directory's owner (a root shell goes through su: Postgres refuses to run as root). */
function pgCtl(...pgArgs: string[]): void {
  const command = [`${CRASH_PG_BIN}/pg_ctl`, '-D', CRASH_PGDATA!, ...pgArgs];
  const owner = execFileSync('stat', ['-c', '%U', CRASH_PGDATA!], { encoding: 'utf8' }).trim();
  if (process.getuid?.() === 0 && owner !== 'root') {
    execFileSync('su', [owner, '-c', command.map((a) => `'${a}'`).join(' ')], { stdio: 'pipe' });
  } else execFileSync(command[0]!, command.slice(1), { stdio: 'pipe' });
}

/** Starts the server (waiting until it accepts connections); after SIGKILL its old backends may linger. */
async function start(): Promise<void> {
  for (let attempt = 1; ; attempt++) {
    try {
      pgCtl('-l', join(CRASH_PGDATA!, '..', 'log'), '-w', 'start');
      return;
    } catch (error) {
      if (attempt === 50) throw error;
      await sleep(200);
    }
  }
}

const running = () => {
  try {
    pgCtl('status');
    return true;
  } catch {
    return false;
  }
};
if (!running()) await start();

let migrations = MIGRATIONS_DIR;
if (WITHOUT_JUMP) {
  migrations = mkdtempSync(join(tmpdir(), 'wsjobs-migrations-'));
  cpSync(MIGRATIONS_DIR, migrations, {
    recursive: true,
    filter: (path) => !path.includes('0011_provisioner_job_logs_server_start'),
  });
}
await migrate(CRASH_DATABASE_URL, migrations);
if (WITHOUT_JUMP) rmSync(migrations, { recursive: true });

const newestId = async (pool: Pool) =>
  BigInt(
    (await pool.query<{ id: string | null }>('SELECT max(id) AS id FROM provisioner_job_logs')).rows[0]!.id ??
      0,
  );

let repeats = 0;
let lostRounds = 0;
for (let round = 1; round <= ROUNDS; round++) {
  const pool = createPool(CRASH_DATABASE_URL, { max: 4, applicationName: 'log-crash' });
  // A job claimed by a daemon, committed flushed (it is not what this looks at).
  const claim = { workerId: randomUUID(), claimId: randomUUID() };
  const { rows } = await pool.query<{ id: string }>(
    `INSERT INTO provisioner_jobs (started_at, worker_id, claims, claim_id) VALUES (now(), $1, 1, $2)
     RETURNING id`,
    [claim.workerId, claim.claimId],
  );
  const jobId = rows[0]!.id;
  const writer = new JobLogWriter({ pool, jobId, claim, maxLines: Number.MAX_SAFE_INTEGER });
  let seen = 0n;
  let crashed = false;
  const reading = (async () => {
    while (!crashed) {
      const id = await newestId(pool).catch(() => 0n);
      if (id > seen) seen = id;
      await sleep(5);
    }
  })();
  const writing = (async () => {
    for (let line = 0; !crashed; line++) {
      void writer.append('provisioner', 'info', `round ${round} line ${line}`);
      await sleep(10);
    }
  })();
  await sleep(1000 + Math.random() * 1000);
  const seenAtCrash = seen;
  crashed = true;
  process.kill(Number(readFileSync(join(CRASH_PGDATA, 'postmaster.pid'), 'utf8').split('\n')[0]), SIGNAL);
  await Promise.all([reading, writing]);
  await writer.close();
  await pool.end();

  await start();
  const after = createPool(CRASH_DATABASE_URL, { max: 2, applicationName: 'log-crash' });
  const stored = await newestId(after);
  const next = new JobLogWriter({ pool: after, jobId, claim });
  await next.append('provisioner', 'info', `round ${round}: after the crash`);
  const nextId = await newestId(after);
  await after.end();
  const repeated = nextId <= seenAtCrash;
  if (repeated) repeats++;
  if (stored < seenAtCrash) lostRounds++;
  console.log(
    `round ${round}: saw up to ${seenAtCrash}, ${stored < seenAtCrash ? seenAtCrash - stored : 0n} of them gone ` +
      `after recovery; next line ${nextId}${repeated ? ': an id already seen' : ''}`,
  );
}
console.log(
  `${ROUNDS} crashes (${SIGNAL}${WITHOUT_JUMP ? ', without 0011' : ''}): seen lines lost in ${lostRounds}, ` +
    `a seen id given again in ${repeats}`,
);

const url = new URL(CRASH_DATABASE_URL);
const database = decodeURIComponent(url.pathname.slice(1));
url.pathname = '/postgres';
const admin = new pg.Client({ connectionString: url.toString() });
await admin.connect();
await admin.query(`DROP DATABASE ${pg.escapeIdentifier(database)} WITH (FORCE)`);
await admin.end();
