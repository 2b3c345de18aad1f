// A test's entry point (test/shared/logger.test.ts): a daemon's background logger writes many lines in one
// tick, then the process ends at once: `exit` by process.exit(3), `fail` as main.ts ends a failed command
// (flushLogSync, then its one line on stderr, exit code 1).
import { pbkdf2 } from 'node:crypto';
import { createLogger, flushLogSync } from '../../src/shared/logger.js';

const [how, count] = process.argv.slice(2);
// The test runs this with one threadpool thread; keeping it busy for a while is what put a write handed to
// the threadpool (pino's asynchronous destination) behind the lines flushed after it, or lost it at exit.
pbkdf2('busy', 'threadpool', 300_000, 32, 'sha256', () => {});
const log = createLogger('info', 'log-then-exit', { sync: false });
for (let i = 1; i <= Number(count); i++) log.info({ i }, 'line');
if (how === 'exit') {
  process.exit(3);
} else {
  flushLogSync(log);
  console.error('log-then-exit: the last word');
  process.exitCode = 1;
}
