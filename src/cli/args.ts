// Command-line parsing on node:util's parseArgs, turning its errors into one-line usage errors (exit 2).
import { parseArgs, type ParseArgsConfig } from 'node:util';
import { idSchema, parameterNameSchema } from '../shared/schemas.js';

/** Bad flags or values: the CLI prints the message and exits 2. */
export class UsageError extends Error {
  override name = 'UsageError';
}

type Options = NonNullable<ParseArgsConfig['options']>;
type FlagValue<T> = T extends { type: 'boolean' }
  ? boolean
  : T extends { multiple: true }
    ? string[]
    : string;
export type Flags<O> = { [K in keyof O]?: FlagValue<O[K]> } & { help?: boolean };

export function parseFlags<O extends Options>(args: string[], options: O): { values: Flags<O> } {
  try {
    const { values } = parseArgs({
      args,
      options: { ...options, help: { type: 'boolean', short: 'h' } },
      strict: true,
    });
    return { values: values as Flags<O> };
  } catch (error) {
    // node:util's messages can span lines (e.g. an ambiguous value that starts with a dash); keep one.
    throw new UsageError((error as Error).message.replace(/\s*\n\s*/g, ' '));
  }
}

/**
 * `--param k=v` pairs into a map without a prototype; names a malformed pair, a name the producer would refuse
 * (the same rule) and a name given twice.
 */
export function parseParams(pairs: string[] | undefined): Record<string, string> | undefined {
  if (!pairs?.length) return undefined;
  const parameters = Object.create(null) as Record<string, string>;
  for (const pair of pairs) {
    const eq = pair.indexOf('=');
    if (eq <= 0) throw new UsageError(`--param must be name=value, got ${JSON.stringify(pair)}`);
    const name = pair.slice(0, eq);
    const checked = parameterNameSchema.safeParse(name);
    if (!checked.success) {
      throw new UsageError(`--param ${JSON.stringify(name)}: ${checked.error.issues[0]!.message}`);
    }
    if (Object.hasOwn(parameters, name))
      throw new UsageError(`--param ${JSON.stringify(name)} is given twice`);
    parameters[name] = pair.slice(eq + 1);
  }
  return parameters;
}

export function parseMs(flag: string, raw: string | undefined, fallback: number): number {
  if (raw === undefined) return fallback;
  const n = Number(raw);
  if (!/^\d+$/.test(raw) || !Number.isSafeInteger(n) || n <= 0) {
    throw new UsageError(
      `${flag} must be a positive whole number of milliseconds, got ${JSON.stringify(raw)}`,
    );
  }
  return n;
}

/**
 * The producer's id rule (a UUID of version 1-8), so that the CLI refuses exactly what the producer would;
 * returned in lower case, as the producer uses it.
 */
export function requireId(flag: string, value: string | undefined): string {
  if (value === undefined) throw new UsageError(`${flag} is required`);
  const parsed = idSchema.safeParse(value);
  if (!parsed.success) {
    throw new UsageError(`${flag} must be a UUID (version 1-8), got ${JSON.stringify(value)}`);
  }
  return parsed.data;
}
