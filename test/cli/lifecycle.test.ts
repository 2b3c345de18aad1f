// untilSignal as `npm run demo` meets it: a terminal's Ctrl-C reaches the node process from the terminal and
// again from npm's and tsx's relay, and that must stay one graceful stop, not a "second signal".
import { pino } from 'pino';
import { afterEach, describe, expect, it, vi } from 'vitest';
import { untilSignal } from '../../src/cli/lifecycle.js';

const log = pino({ level: 'silent' });

describe('untilSignal', () => {
  afterEach(() => {
    vi.restoreAllMocks();
    vi.useRealTimers();
    process.removeAllListeners('SIGINT');
    process.removeAllListeners('SIGTERM');
  });

  it('when the same signal comes again at once (relayed) › stops gracefully once and does not exit', async () => {
    const exit = vi.spyOn(process, 'exit').mockImplementation((() => undefined) as never);
    const stop = vi.fn(async () => {});
    const stopped = untilSignal(stop, log);

    process.emit('SIGINT', 'SIGINT');
    process.emit('SIGINT', 'SIGINT');

    await stopped;
    expect(stop).toHaveBeenCalledTimes(1);
    expect(exit).not.toHaveBeenCalled();
  });

  it('when a second signal comes later › exits at once with code 1', () => {
    vi.useFakeTimers();
    const exit = vi.spyOn(process, 'exit').mockImplementation((() => undefined) as never);
    const stop = vi.fn(() => new Promise<void>(() => {}));
    void untilSignal(stop, log);

    process.emit('SIGINT', 'SIGINT');
    vi.advanceTimersByTime(1500);
    process.emit('SIGINT', 'SIGINT');

    expect(exit).toHaveBeenCalledWith(1);
  });

  it('when SIGTERM follows SIGINT at once › it is a second signal and exits', () => {
    const exit = vi.spyOn(process, 'exit').mockImplementation((() => undefined) as never);
    void untilSignal(() => new Promise<void>(() => {}), log);

    process.emit('SIGINT', 'SIGINT');
    process.emit('SIGTERM', 'SIGTERM');

    expect(exit).toHaveBeenCalledWith(1);
  });
});
