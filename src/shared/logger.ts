// pino logs on stderr, for every command: stdout is for what a command prints as its output (`watch` and
// `enqueue --wait` JSON lines, `seed`'s ids), which a pipe must get alone. Pretty only when stderr is a
// terminal (and pino-pretty, a dev dependency, is installed); JSON lines otherwise.
import { createRequire } from 'node:module';
import { pino, type Bindings, type Level, type Logger } from 'pino';
import { LogDestination } from './log-destination.js';

export type { Logger };

function prettyAvailable(): boolean {
  try {
    createRequire(import.meta.url).resolve('pino-pretty');
    return true;
  } catch {
    return false;
  }
}

export interface LoggerOptions {
  /**
   * Write each line before returning (the default), or all the lines of one event-loop turn in one write at
   * its end (the daemons: the provisioner spent 14 % of its time in a write per line, issue 11). What is
   * still held at exit is written in order by the destination's `exit` handler, and by flushLogSync before.
   */
  sync?: boolean;
}

export function createLogger(level: string, name?: string, options: LoggerOptions = {}): Logger {
  if (process.stderr.isTTY && prettyAvailable()) {
    return pino({
      level,
      name,
      transport: { target: 'pino-pretty', options: { colorize: true, destination: 2 } },
    });
  }
  return pino(
    { level, name },
    options.sync === false ? new LogDestination() : pino.destination({ fd: 2, sync: true }),
  );
}

/**
 * Writes what the logger still holds, now: before a command's last line on stderr (its fatal error, say),
 * so that its log lines come first. A no-op for a synchronous destination; the pretty transport's worker
 * thread flushes itself at exit.
 */
export function flushLogSync(log: Logger): void {
  const stream = (log as unknown as Record<symbol, unknown>)[pino.symbols.streamSym];
  if (stream instanceof LogDestination) stream.flushSync();
}

/** What a job logs with: a LazyChildLogger, or any pino logger. */
export type JobLogger = Pick<Logger, 'debug' | 'info' | 'warn' | 'error'>;

type LogArgs = [obj: unknown, msg?: string, ...args: unknown[]];

/**
 * A pino child made on its first line that its level lets through: a job waiting for its build holds these
 * bindings (about 0.15 KiB), not two pino children (about 1.2 KiB; issue 11's 10,000 waiters), and at the
 * default level most of its lines come at its end. The lines are the ones the child would have written.
 */
export class LazyChildLogger implements JobLogger {
  private made: Logger | undefined;

  constructor(
    private readonly parent: Logger,
    private readonly bindings: Bindings,
  ) {}

  /** A lazy child with these bindings added, made from the same parent when it first logs. */
  child(bindings: Bindings): LazyChildLogger {
    return new LazyChildLogger(this.parent, { ...this.bindings, ...bindings });
  }

  debug(...args: LogArgs): void {
    this.write('debug', args);
  }

  info(...args: LogArgs): void {
    this.write('info', args);
  }

  warn(...args: LogArgs): void {
    this.write('warn', args);
  }

  error(...args: LogArgs): void {
    this.write('error', args);
  }

  private write(level: Level, args: LogArgs): void {
    if (!this.parent.isLevelEnabled(level)) return;
    this.made ??= this.parent.child(this.bindings);
    (this.made[level] as (...a: LogArgs) => void)(...args);
  }
}
