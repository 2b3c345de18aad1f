// Coder's classic parameter resolution for a workspace build (coderd/wsbuilder + codersdk.ParameterResolver,
// see docs/start-workspace.md "Parameter resolution"). Pure: no I/O.
//
// For each parameter of the *target* template version, in that version's order:
//   value = provided (the job's) ?? previous build's value (unless ephemeral) ?? default_value,
// then validated. The first failing parameter aborts the whole resolution, so the caller persists nothing.

import type { Validation } from '../shared/contract.js';
import type { BuildParameter, TemplateVersionParameter } from './ports.js';

export interface ResolveParametersInput {
  /** The target template version's parameters. */
  parameters: TemplateVersionParameter[];
  /** The previous build's full parameter set ([] for a first build). */
  previous: BuildParameter[];
  /** Values from the job (the chat's request); they override previous values. */
  provided: Record<string, string>;
  /** True for a workspace's first build (no previous values; immutable parameters may be set freely). */
  firstBuild: boolean;
  /**
   * Report every failing parameter instead of the first (Coder's builder stops at the first; a create
   * request names them all, so the caller can fix them in one go). Default false.
   */
  allFailures?: boolean;
}

export type ResolveParametersResult =
  | { ok: true; values: BuildParameter[] } // full set, one per target parameter, in the target's order
  | { ok: false; name: string; message: string; detail: string; validations: Validation[] };

export function resolveParameters(input: ResolveParametersInput): ResolveParametersResult {
  // On a first build there is nothing to be "previous" to: ignore whatever the caller passed, so that
  // immutable and monotonic parameters can be set freely (Coder's create path has no last build either).
  const previous = new Map<string, string>();
  if (!input.firstBuild) {
    for (const p of input.previous) {
      // Coder's findLastValue takes the first match; keep that if a set ever holds a name twice.
      if (!previous.has(p.name)) previous.set(p.name, p.value);
    }
  }

  // Only the target version's parameters are iterated, so provided values for names it doesn't have and
  // previous values of parameters it removed are dropped: every build stores exactly its version's set.
  const values: BuildParameter[] = [];
  const validations: Validation[] = [];
  for (const param of input.parameters) {
    const outcome = resolveOne(param, providedValue(input.provided, param.name), previous.get(param.name));
    if (outcome.ok) {
      values.push({ name: param.name, value: outcome.value });
      continue;
    }
    validations.push({ field: param.name, detail: outcome.reason });
    if (!input.allFailures) break;
  }
  if (validations.length === 0) return { ok: true, values };
  const [first] = validations as [Validation, ...Validation[]];
  return {
    ok: false,
    name: first.field,
    message:
      validations.length === 1
        ? `Unable to validate parameter ${quote(first.field)}`
        : `Unable to validate parameters ${validations.map((v) => quote(v.field)).join(', ')}`,
    detail: validations.map((v) => v.detail).join('\n'),
    validations,
  };
}

type Outcome = { ok: true; value: string } | { ok: false; reason: string };

function resolveOne(
  param: TemplateVersionParameter,
  provided: string | undefined,
  previous: string | undefined,
): Outcome {
  const requiredError = `Parameter ${quote(param.name)} is required but not provided`;

  // The two checks of Coder's ParameterResolver.ValidateResolve, with its exact strings.
  if (!param.mutable && provided !== undefined && previous !== undefined && provided !== previous) {
    return {
      ok: false,
      reason: `Parameter ${quote(param.name)} is not mutable, so it can't be updated after creating a workspace.`,
    };
  }
  if (param.required && provided === undefined && previous === undefined) {
    return { ok: false, reason: requiredError };
  }

  // Ephemeral parameters are per-build: they fall back to their default rather than the previous value.
  let value = provided ?? (param.ephemeral ? undefined : previous) ?? param.defaultValue;

  if (value === '') {
    // Coder: a required parameter may not resolve to an empty value (e.g. ephemeral with an empty default,
    // or an explicit ""). We report it with the same message as a missing one, which is what it means.
    if (param.required) return { ok: false, reason: requiredError };
    // Coder validates an empty optional value as its default ("parameter is optional, so take the default
    // value"); we also store the default, so the stored set is exactly what was validated.
    value = param.defaultValue;
  }

  const reason = validateValue(param, value, previous);
  if (reason !== undefined) {
    // Coder wraps value-validation failures with the display name (codersdk.ValidateWorkspaceBuildParameter).
    const label = param.displayName !== '' ? param.displayName : param.name;
    return { ok: false, reason: `can't validate build parameter ${quote(label)}: ${reason}` };
  }
  return { ok: true, value };
}

/** Returns the reason the value is invalid, or undefined. Messages are the Coder / terraform-provider ones. */
function validateValue(
  param: TemplateVersionParameter,
  value: string,
  previous: string | undefined,
): string | undefined {
  switch (param.type) {
    case 'list(string)': {
      const items = parseStringList(value);
      if (items === undefined) return `value ${quote(value)} is not valid list of strings`;
      // A multi-select: every element must be an option (Coder's inOptionSet).
      if (param.options.length > 0 && !items.every((item) => isOption(param, item)))
        return optionsError(param);
      return undefined;
    }
    case 'bool':
      if (param.options.length > 0 && !isOption(param, value)) return optionsError(param);
      if (value !== 'true' && value !== 'false') return 'boolean value can be either "true" or "false"';
      return undefined;
    case 'number':
      if (param.options.length > 0 && !isOption(param, value)) return optionsError(param);
      return validateNumber(param, value, previous);
    default:
      // 'string' (and anything unknown, treated as a string).
      if (param.options.length > 0 && !isOption(param, value)) return optionsError(param);
      return validateRegex(param, value);
  }
}

function validateNumber(
  param: TemplateVersionParameter,
  value: string,
  previous: string | undefined,
): string | undefined {
  const num = parseNumber(value);
  if (num === undefined) return customError(param, value) ?? `value ${quote(value)} is not a number`;
  if (param.validationMin !== null && num < param.validationMin) {
    return customError(param, value) ?? `value ${num} is less than the minimum ${param.validationMin}`;
  }
  if (param.validationMax !== null && num > param.validationMax) {
    return customError(param, value) ?? `value ${num} is more than the maximum ${param.validationMax}`;
  }
  if (param.validationMonotonic !== null && previous !== undefined) {
    // Coder skips the check when the previous value is empty or not a number: failing there would leave
    // the workspace in a state the user can't repair.
    const prev = previous === '' ? undefined : parseNumber(previous);
    if (prev !== undefined) {
      if (param.validationMonotonic === 'increasing' && num < prev) {
        return `parameter value '${num}' must be equal or greater than previous value: ${prev}`;
      }
      if (param.validationMonotonic === 'decreasing' && num > prev) {
        return `parameter value '${num}' must be equal or lower than previous value: ${prev}`;
      }
    }
  }
  return undefined;
}

function validateRegex(param: TemplateVersionParameter, value: string): string | undefined {
  const source = param.validationRegex;
  if (source === null || source === '') return undefined;
  const regex = compileRegex(source);
  if (regex instanceof Error) return `compile regex ${quote(source)}: ${regex.message}`;
  if (regex.test(value)) return undefined;
  const mismatch = `value ${quote(value)} does not match ${quote(source)}`;
  // Coder: "<validation_error> (value "…" does not match "…")"; the template's message comes first.
  const custom = customError(param, value);
  return custom !== undefined ? `${custom} (${mismatch})` : mismatch;
}

/**
 * The template's `validation_error`, with the provider's {min}, {max} and {value} placeholders filled in
 * (an unset bound renders as 0, as in the provider), or undefined when the template has none.
 */
function customError(param: TemplateVersionParameter, value: string): string | undefined {
  if (param.validationError === '') return undefined;
  return param.validationError
    .replaceAll('{min}', String(param.validationMin ?? 0))
    .replaceAll('{max}', String(param.validationMax ?? 0))
    .replaceAll('{value}', value);
}

function optionsError(param: TemplateVersionParameter): string {
  // Go's %s of a []string: "[a b c]".
  return `parameter value must match one of options: [${param.options.map((o) => o.value).join(' ')}]`;
}

function isOption(param: TemplateVersionParameter, value: string): boolean {
  return param.options.some((o) => o.value === value);
}

/** A JSON array of strings, or undefined. */
function parseStringList(value: string): string[] | undefined {
  let parsed: unknown;
  try {
    parsed = JSON.parse(value);
  } catch {
    return undefined;
  }
  if (!Array.isArray(parsed) || !parsed.every((item) => typeof item === 'string')) return undefined;
  return parsed as string[];
}

// Strict decimal syntax: Number() alone would accept "", " 1 ", "0x10" and "Infinity".
const NUMBER = /^[+-]?(?:\d+\.?\d*|\.\d+)(?:[eE][+-]?\d+)?$/;

function parseNumber(value: string): number | undefined {
  if (!NUMBER.test(value)) return undefined;
  const num = Number(value);
  return Number.isFinite(num) ? num : undefined;
}

/**
 * Templates are written for Go's RE2. Most of its syntax means the same in JavaScript; a leading
 * `(?i)`/`(?s)`/`(?m)` flag group is translated to flags. Unicode mode first (RE2 is Unicode-aware),
 * then without it for patterns that only non-Unicode JavaScript accepts.
 */
function compileRegex(source: string): RegExp | Error {
  let pattern = source;
  let flags = '';
  const flagGroup = /^\(\?([ims]+)\)/.exec(pattern);
  if (flagGroup) {
    flags = [...new Set(flagGroup[1])].join('');
    pattern = pattern.slice(flagGroup[0].length);
  }
  try {
    return new RegExp(pattern, flags + 'u');
  } catch {
    try {
      return new RegExp(pattern, flags);
    } catch (error) {
      return error instanceof Error ? error : new Error(String(error));
    }
  }
}

function providedValue(provided: Record<string, string>, name: string): string | undefined {
  // Own properties only: a parameter named "constructor" must not pick up Object.prototype's.
  return Object.hasOwn(provided, name) ? provided[name] : undefined;
}

/** Go's %q for the strings we quote (JSON string syntax is the same for them). */
function quote(s: string): string {
  return JSON.stringify(s);
}
