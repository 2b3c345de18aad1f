// pino JSON logs; pretty only when stdout is a terminal (and pino-pretty, a dev dependency, is installed).
import { createRequire } from 'node:module';
import { pino, type Logger } from 'pino';

export type { Logger };

function prettyAvailable(): boolean {
  try {
    createRequire(import.meta.url).resolve('pino-pretty');
    return true;
  } catch {
    return false;
  }
}

export function createLogger(level: string, name?: string): Logger {
  const pretty = process.stdout.isTTY && prettyAvailable();
  return pino({
    level,
    name,
    ...(pretty ? { transport: { target: 'pino-pretty', options: { colorize: true } } } : {}),
  });
}
