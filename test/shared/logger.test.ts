// The daemons' background logger (issue 11) loses nothing when the process ends right after logging.
import { pino } from 'pino';
import { afterEach, describe, expect, it, vi } from 'vitest';
import { LazyChildLogger } from '../../src/shared/logger.js';
import { CliProcess, killAll, logLines } from '../helpers/cli-process.js';

const LINES = 5_000;
const EXIT_MS = 15_000;

afterEach(killAll);

/** One threadpool thread, which the helper keeps busy (see there). */
const BUSY_THREADPOOL = { UV_THREADPOOL_SIZE: '1' };

const numbers = (stderr: string[]) => logLines(stderr).map((l) => (l as unknown as { i: number }).i);
const oneTo = (n: number) => Array.from({ length: n }, (_, i) => i + 1);

describe('a background (asynchronous) logger', () => {
  it('when the process calls process.exit right after logging › every line reaches stderr, in order', async () => {
    const cli = new CliProcess(
      'log-then-exit',
      ['exit', String(LINES)],
      BUSY_THREADPOOL,
      'test/helpers/log-then-exit.ts',
    );
    expect(await cli.waitForExit(EXIT_MS)).toEqual({ code: 3, signal: null });
    expect(numbers(cli.stderr)).toEqual(oneTo(LINES));
  });

  it('when a command fails › its log lines come before its one-line error', async () => {
    const cli = new CliProcess(
      'log-then-exit',
      ['fail', String(LINES)],
      BUSY_THREADPOOL,
      'test/helpers/log-then-exit.ts',
    );
    expect(await cli.waitForExit(EXIT_MS)).toEqual({ code: 1, signal: null });
    expect(numbers(cli.stderr)).toEqual(oneTo(LINES));
    expect(cli.stderr.at(-1)).toBe('log-then-exit: the last word');
  });
});

describe('a lazy child logger', () => {
  /** A pino logger at `level` whose lines are kept, parsed, without their time. */
  function capturing(level: string) {
    const lines: Record<string, unknown>[] = [];
    const stream = {
      write(line: string) {
        const { time: _time, ...rest } = JSON.parse(line) as Record<string, unknown>;
        lines.push(rest);
      },
    };
    return { log: pino({ level }, stream), lines };
  }

  it('when it logs › writes the lines a pino child with the same bindings writes', () => {
    const lazy = capturing('info');
    const eager = capturing('info');
    const bindings = { jobId: 'j1', attempt: 1 };
    new LazyChildLogger(lazy.log, bindings).child({ workspaceId: 'w1' }).warn({ outcome: 'ok' }, 'done');
    eager.log.child(bindings).child({ workspaceId: 'w1' }).warn({ outcome: 'ok' }, 'done');
    new LazyChildLogger(lazy.log, bindings).info('plain');
    eager.log.child(bindings).info('plain');
    expect(lazy.lines).toEqual(eager.lines);
    expect(lazy.lines[0]).toMatchObject({ jobId: 'j1', workspaceId: 'w1', outcome: 'ok', msg: 'done' });
  });

  it('when its lines are below the level › makes no pino child and writes nothing', () => {
    const { log, lines } = capturing('info');
    const child = vi.spyOn(log, 'child');
    new LazyChildLogger(log, { jobId: 'j1' }).debug({ lock: 'l' }, 'chat lock acquired');
    expect(child).not.toHaveBeenCalled();
    expect(lines).toEqual([]);
  });
});
