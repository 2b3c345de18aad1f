import { describe, expect, it } from 'vitest';
import type { BuildParameter, TemplateVersionParameter } from '../../src/worker/ports.js';
import {
  resolveParameters,
  type ResolveParametersInput,
  type ResolveParametersResult,
} from '../../src/worker/parameters.js';

function param(name: string, overrides: Partial<TemplateVersionParameter> = {}): TemplateVersionParameter {
  return {
    name,
    displayName: '',
    type: 'string',
    mutable: true,
    required: false,
    ephemeral: false,
    defaultValue: '',
    options: [],
    validationRegex: null,
    validationMin: null,
    validationMax: null,
    validationMonotonic: null,
    validationError: '',
    ...overrides,
  };
}

function options(...values: string[]): { name: string; value: string }[] {
  return values.map((value) => ({ name: value.toUpperCase(), value }));
}

function resolve(input: Partial<ResolveParametersInput>): ResolveParametersResult {
  return resolveParameters({ parameters: [], previous: [], provided: {}, firstBuild: false, ...input });
}

function values(result: ResolveParametersResult): BuildParameter[] {
  if (!result.ok) throw new Error(`expected success, got: ${result.detail}`);
  return result.values;
}

function valueOf(result: ResolveParametersResult, name: string): string | undefined {
  return values(result).find((p) => p.name === name)?.value;
}

/** The failure's reason, after checking that it has Coder's builder shape. */
function failure(result: ResolveParametersResult, name: string): string {
  if (result.ok) throw new Error(`expected a failure, got: ${JSON.stringify(result.values)}`);
  expect(result.name).toBe(name);
  expect(result.message).toBe(`Unable to validate parameter "${name}"`);
  expect(result.validations).toEqual([{ field: name, detail: result.detail }]);
  return result.detail;
}

describe('resolveParameters', () => {
  describe('choosing a value', () => {
    it('when a value is provided › it overrides the previous value', () => {
      const result = resolve({
        parameters: [param('region', { defaultValue: 'eu' })],
        previous: [{ name: 'region', value: 'us' }],
        provided: { region: 'ap' },
      });
      expect(values(result)).toEqual([{ name: 'region', value: 'ap' }]);
    });

    it('when nothing is provided › keeps the previous value rather than the default', () => {
      const result = resolve({
        parameters: [param('region', { defaultValue: 'eu' })],
        previous: [{ name: 'region', value: 'us' }],
      });
      expect(values(result)).toEqual([{ name: 'region', value: 'us' }]);
    });

    it('when there is neither a provided nor a previous value › uses the default', () => {
      const result = resolve({ parameters: [param('region', { defaultValue: 'eu' })] });
      expect(values(result)).toEqual([{ name: 'region', value: 'eu' }]);
    });

    it('when the parameter is ephemeral › falls back to its default even with a previous value', () => {
      const result = resolve({
        parameters: [param('debug', { type: 'bool', ephemeral: true, defaultValue: 'false' })],
        previous: [{ name: 'debug', value: 'true' }],
      });
      expect(values(result)).toEqual([{ name: 'debug', value: 'false' }]);
    });

    it('when the parameter is ephemeral and a value is provided › uses the provided value', () => {
      const result = resolve({
        parameters: [param('debug', { type: 'bool', ephemeral: true, defaultValue: 'false' })],
        previous: [{ name: 'debug', value: 'false' }],
        provided: { debug: 'true' },
      });
      expect(valueOf(result, 'debug')).toBe('true');
    });

    it('when the version adds a parameter with a default › resolves it to its default', () => {
      const result = resolve({
        parameters: [
          param('region', { defaultValue: 'eu' }),
          param('disk', { type: 'number', defaultValue: '20' }),
        ],
        previous: [{ name: 'region', value: 'us' }],
      });
      expect(values(result)).toEqual([
        { name: 'region', value: 'us' },
        { name: 'disk', value: '20' },
      ]);
    });

    it('when an optional value resolves to empty › stores the default in its place', () => {
      const result = resolve({
        parameters: [param('size', { defaultValue: 'small', options: options('small', 'large') })],
        provided: { size: '' },
      });
      expect(valueOf(result, 'size')).toBe('small');
    });

    it('when an optional parameter has an empty default and no value › resolves to the empty string', () => {
      const result = resolve({ parameters: [param('note')] });
      expect(values(result)).toEqual([{ name: 'note', value: '' }]);
    });

    it('when a provided name is an Object.prototype key › only own values count', () => {
      const result = resolve({ parameters: [param('constructor', { defaultValue: 'x' })] });
      expect(valueOf(result, 'constructor')).toBe('x');
    });
  });

  describe('which parameters the set holds', () => {
    it('when values are given for names the version lacks › drops them', () => {
      const result = resolve({
        parameters: [param('region', { defaultValue: 'eu' })],
        provided: { region: 'us', unknown: 'x' },
      });
      expect(values(result)).toEqual([{ name: 'region', value: 'us' }]);
    });

    it('when the version removed a parameter › drops its previous value', () => {
      const result = resolve({
        parameters: [param('region')],
        previous: [
          { name: 'region', value: 'us' },
          { name: 'removed', value: 'old' },
        ],
      });
      expect(values(result)).toEqual([{ name: 'region', value: 'us' }]);
    });

    it('keeps the target version’s order, not the previous or provided order', () => {
      const result = resolve({
        parameters: [param('c', { defaultValue: '3' }), param('a'), param('b')],
        previous: [
          { name: 'b', value: '2' },
          { name: 'a', value: '1' },
        ],
        provided: { b: 'two', a: 'one' },
      });
      expect(values(result).map((p) => p.name)).toEqual(['c', 'a', 'b']);
      expect(values(result)).toEqual([
        { name: 'c', value: '3' },
        { name: 'a', value: 'one' },
        { name: 'b', value: 'two' },
      ]);
    });

    it('when the version has no parameters › resolves to an empty set', () => {
      expect(values(resolve({ previous: [{ name: 'gone', value: 'x' }], provided: { x: 'y' } }))).toEqual([]);
    });
  });

  describe('required parameters', () => {
    it('when a required parameter has no value › fails naming it', () => {
      const result = resolve({ parameters: [param('region', { required: true })] });
      expect(failure(result, 'region')).toBe('Parameter "region" is required but not provided');
    });

    it('when the version adds a required parameter without default › fails, then succeeds once provided', () => {
      const parameters = [param('region'), param('project', { required: true })];
      const previous = [{ name: 'region', value: 'us' }];

      const first = resolve({ parameters, previous });
      expect(failure(first, 'project')).toBe('Parameter "project" is required but not provided');

      const retry = resolve({ parameters, previous, provided: { project: 'apollo' } });
      expect(values(retry)).toEqual([
        { name: 'region', value: 'us' },
        { name: 'project', value: 'apollo' },
      ]);
    });

    it('when several fail › stops at the first, like Coder’s builder', () => {
      const parameters = [param('region', { required: true }), param('project', { required: true })];
      expect(failure(resolve({ parameters }), 'region')).toBe(
        'Parameter "region" is required but not provided',
      );
    });

    it('when several fail and allFailures is set › names every one', () => {
      const parameters = [
        param('region', { required: true }),
        param('size', { options: options('s', 'l'), defaultValue: 's' }),
        param('project', { required: true }),
      ];
      const result = resolve({ parameters, firstBuild: true, allFailures: true, provided: { size: 'xl' } });
      if (result.ok) throw new Error('expected a failure');
      expect(result.message).toBe('Unable to validate parameters "region", "size", "project"');
      expect(result.validations.map((v) => v.field)).toEqual(['region', 'size', 'project']);
      expect(result.validations[0]!.detail).toBe('Parameter "region" is required but not provided');
      expect(result.detail.split('\n')).toEqual(result.validations.map((v) => v.detail));
    });

    it('when a required parameter has a previous value › keeps it', () => {
      const result = resolve({
        parameters: [param('region', { required: true })],
        previous: [{ name: 'region', value: 'us' }],
      });
      expect(valueOf(result, 'region')).toBe('us');
    });

    it('when a required parameter is provided as empty › fails as required', () => {
      const result = resolve({ parameters: [param('region', { required: true })], provided: { region: '' } });
      expect(failure(result, 'region')).toBe('Parameter "region" is required but not provided');
    });

    it('when a required ephemeral parameter has only a previous value and no default › fails as required', () => {
      const result = resolve({
        parameters: [param('token', { required: true, ephemeral: true })],
        previous: [{ name: 'token', value: 'old' }],
      });
      expect(failure(result, 'token')).toBe('Parameter "token" is required but not provided');
    });

    it('when several parameters fail › reports the first in the version’s order', () => {
      const result = resolve({
        parameters: [
          param('ok', { defaultValue: 'x' }),
          param('second', { required: true }),
          param('first', { required: true }),
        ],
      });
      expect(failure(result, 'second')).toBe('Parameter "second" is required but not provided');
    });
  });

  describe('immutable parameters', () => {
    const immutable = param('region', { mutable: false, options: options('us', 'eu') });
    const notMutable =
      'Parameter "region" is not mutable, so it can\'t be updated after creating a workspace.';

    it('when an immutable parameter is changed › fails with Coder’s message', () => {
      const result = resolve({
        parameters: [immutable],
        previous: [{ name: 'region', value: 'us' }],
        provided: { region: 'eu' },
      });
      expect(failure(result, 'region')).toBe(notMutable);
    });

    it('when an immutable parameter is provided unchanged › passes', () => {
      const result = resolve({
        parameters: [immutable],
        previous: [{ name: 'region', value: 'us' }],
        provided: { region: 'us' },
      });
      expect(valueOf(result, 'region')).toBe('us');
    });

    it('when an immutable parameter is not provided › keeps its previous value', () => {
      const result = resolve({ parameters: [immutable], previous: [{ name: 'region', value: 'us' }] });
      expect(valueOf(result, 'region')).toBe('us');
    });

    it('on a first build › may be set freely', () => {
      const result = resolve({ parameters: [immutable], provided: { region: 'eu' }, firstBuild: true });
      expect(valueOf(result, 'region')).toBe('eu');
    });

    it('on a first build › previous values passed by mistake are ignored', () => {
      const result = resolve({
        parameters: [immutable],
        previous: [{ name: 'region', value: 'us' }],
        provided: { region: 'eu' },
        firstBuild: true,
      });
      expect(valueOf(result, 'region')).toBe('eu');
    });

    it('when the version adds an immutable parameter › it may be set (no previous value)', () => {
      const result = resolve({
        parameters: [immutable],
        previous: [{ name: 'other', value: 'x' }],
        provided: { region: 'eu' },
      });
      expect(valueOf(result, 'region')).toBe('eu');
    });
  });

  describe('options', () => {
    const size = param('size', { displayName: 'Machine size', options: options('small', 'large') });

    it('when the value is one of the options › passes', () => {
      expect(valueOf(resolve({ parameters: [size], provided: { size: 'large' } }), 'size')).toBe('large');
    });

    it('when the value is not one of the options › fails listing them, wrapped with the display name', () => {
      const result = resolve({ parameters: [size], provided: { size: 'huge' } });
      expect(failure(result, 'size')).toBe(
        'can\'t validate build parameter "Machine size": parameter value must match one of options: [small large]',
      );
    });

    it('when the parameter has no display name › the wrap uses its name', () => {
      const result = resolve({
        parameters: [param('size', { options: options('s') })],
        provided: { size: 'x' },
      });
      expect(failure(result, 'size')).toBe(
        'can\'t validate build parameter "size": parameter value must match one of options: [s]',
      );
    });

    it('when a previous value is no longer an option in the new version › fails', () => {
      const result = resolve({
        parameters: [param('size', { options: options('medium', 'xl') })],
        previous: [{ name: 'size', value: 'small' }],
      });
      expect(failure(result, 'size')).toContain('parameter value must match one of options: [medium xl]');
    });

    describe('for list(string)', () => {
      const ides = param('ides', { type: 'list(string)', options: options('vscode', 'jetbrains', 'vim') });

      it('when every element is an option › passes', () => {
        const result = resolve({ parameters: [ides], provided: { ides: '["vim","vscode"]' } });
        expect(valueOf(result, 'ides')).toBe('["vim","vscode"]');
      });

      it('when the list is empty › passes', () => {
        expect(valueOf(resolve({ parameters: [ides], provided: { ides: '[]' } }), 'ides')).toBe('[]');
      });

      it('when one element is not an option › fails', () => {
        const result = resolve({ parameters: [ides], provided: { ides: '["vim","emacs"]' } });
        expect(failure(result, 'ides')).toBe(
          'can\'t validate build parameter "ides": parameter value must match one of options: [vscode jetbrains vim]',
        );
      });

      it('when the value is not a JSON list › fails as an invalid list, not as an option mismatch', () => {
        const result = resolve({ parameters: [ides], provided: { ides: 'vim' } });
        expect(failure(result, 'ides')).toBe(
          'can\'t validate build parameter "ides": value "vim" is not valid list of strings',
        );
      });
    });
  });

  describe('validation_regex', () => {
    it('when the value matches › passes', () => {
      const result = resolve({
        parameters: [param('repo', { validationRegex: '^[a-z]+$' })],
        provided: { repo: 'coder' },
      });
      expect(valueOf(result, 'repo')).toBe('coder');
    });

    it('when the value does not match and there is no validation_error › fails with the mismatch', () => {
      const result = resolve({
        parameters: [param('repo', { validationRegex: '^[a-z]+$' })],
        provided: { repo: 'Coder1' },
      });
      expect(failure(result, 'repo')).toBe(
        'can\'t validate build parameter "repo": value "Coder1" does not match "^[a-z]+$"',
      );
    });

    it('when the value does not match and there is a validation_error › leads with the template’s message', () => {
      const result = resolve({
        parameters: [
          param('repo', {
            validationRegex: '^[a-z]+$',
            validationError: 'Only lower-case letters, not {value}',
          }),
        ],
        provided: { repo: 'Coder1' },
      });
      expect(failure(result, 'repo')).toBe(
        'can\'t validate build parameter "repo": Only lower-case letters, not Coder1 ' +
          '(value "Coder1" does not match "^[a-z]+$")',
      );
    });

    it('when the regex is unanchored › matches anywhere in the value, as Go does', () => {
      const result = resolve({
        parameters: [param('repo', { validationRegex: 'dev' })],
        provided: { repo: 'my-dev-1' },
      });
      expect(valueOf(result, 'repo')).toBe('my-dev-1');
    });

    it('when the regex starts with a Go flag group › honours it', () => {
      const result = resolve({
        parameters: [param('repo', { validationRegex: '(?i)^coder$' })],
        provided: { repo: 'CODER' },
      });
      expect(valueOf(result, 'repo')).toBe('CODER');
    });

    it('when the regex does not compile › fails with the compile error', () => {
      const result = resolve({
        parameters: [param('repo', { validationRegex: '([a-z' })],
        provided: { repo: 'x' },
      });
      expect(failure(result, 'repo')).toMatch(
        /^can't validate build parameter "repo": compile regex "\(\[a-z": /,
      );
    });

    it('when the value is the default › the default is validated too', () => {
      const result = resolve({
        parameters: [param('repo', { validationRegex: '^[a-z]+$', defaultValue: 'BAD' })],
      });
      expect(failure(result, 'repo')).toBe(
        'can\'t validate build parameter "repo": value "BAD" does not match "^[a-z]+$"',
      );
    });
  });

  describe('type number', () => {
    const cpus = param('cpus', { type: 'number', validationMin: 1, validationMax: 8 });

    it('when the value is within min and max › passes (bounds inclusive)', () => {
      for (const value of ['1', '4', '8']) {
        expect(valueOf(resolve({ parameters: [cpus], provided: { cpus: value } }), 'cpus')).toBe(value);
      }
    });

    it('when the value is below the minimum › fails', () => {
      const result = resolve({ parameters: [cpus], provided: { cpus: '0' } });
      expect(failure(result, 'cpus')).toBe(
        'can\'t validate build parameter "cpus": value 0 is less than the minimum 1',
      );
    });

    it('when the value is above the maximum › fails', () => {
      const result = resolve({ parameters: [cpus], provided: { cpus: '9' } });
      expect(failure(result, 'cpus')).toBe(
        'can\'t validate build parameter "cpus": value 9 is more than the maximum 8',
      );
    });

    it('when only a minimum is set › any larger value passes', () => {
      const result = resolve({
        parameters: [param('cpus', { type: 'number', validationMin: 2 })],
        provided: { cpus: '1000' },
      });
      expect(valueOf(result, 'cpus')).toBe('1000');
    });

    it('when the value is not a number › fails even without min or max', () => {
      for (const value of ['abc', '1x', ' 1', '0x10', 'Infinity']) {
        const result = resolve({
          parameters: [param('cpus', { type: 'number' })],
          provided: { cpus: value },
        });
        expect(failure(result, 'cpus')).toBe(
          `can't validate build parameter "cpus": value ${JSON.stringify(value)} is not a number`,
        );
      }
    });

    it('when the value is a negative or decimal number › parses it', () => {
      const range = param('temp', { type: 'number', validationMin: -10, validationMax: 10 });
      expect(valueOf(resolve({ parameters: [range], provided: { temp: '-2.5' } }), 'temp')).toBe('-2.5');
    });

    it('when there is a validation_error › it replaces the message, with placeholders filled in', () => {
      const result = resolve({
        parameters: [
          param('cpus', {
            type: 'number',
            validationMin: 1,
            validationMax: 8,
            validationError: 'Pick {min}-{max}, not {value}',
          }),
        ],
        provided: { cpus: '16' },
      });
      expect(failure(result, 'cpus')).toBe('can\'t validate build parameter "cpus": Pick 1-8, not 16');
    });
  });

  describe('validation_monotonic', () => {
    const disk = (monotonic: 'increasing' | 'decreasing') =>
      param('disk', { type: 'number', validationMonotonic: monotonic });

    it('when increasing and the value grows or stays › passes', () => {
      for (const value of ['20', '30']) {
        const result = resolve({
          parameters: [disk('increasing')],
          previous: [{ name: 'disk', value: '20' }],
          provided: { disk: value },
        });
        expect(valueOf(result, 'disk')).toBe(value);
      }
    });

    it('when increasing and the value shrinks › fails', () => {
      const result = resolve({
        parameters: [disk('increasing')],
        previous: [{ name: 'disk', value: '20' }],
        provided: { disk: '10' },
      });
      expect(failure(result, 'disk')).toBe(
        "can't validate build parameter \"disk\": parameter value '10' must be equal or greater than previous value: 20",
      );
    });

    it('when decreasing and the value shrinks or stays › passes', () => {
      for (const value of ['20', '10']) {
        const result = resolve({
          parameters: [disk('decreasing')],
          previous: [{ name: 'disk', value: '20' }],
          provided: { disk: value },
        });
        expect(valueOf(result, 'disk')).toBe(value);
      }
    });

    it('when decreasing and the value grows › fails', () => {
      const result = resolve({
        parameters: [disk('decreasing')],
        previous: [{ name: 'disk', value: '20' }],
        provided: { disk: '30' },
      });
      expect(failure(result, 'disk')).toBe(
        "can't validate build parameter \"disk\": parameter value '30' must be equal or lower than previous value: 20",
      );
    });

    it('compares numerically, not as strings', () => {
      const result = resolve({
        parameters: [disk('increasing')],
        previous: [{ name: 'disk', value: '9' }],
        provided: { disk: '10' },
      });
      expect(valueOf(result, 'disk')).toBe('10');
    });

    it('when there is no previous value (first build or new parameter) › passes', () => {
      const first = resolve({ parameters: [disk('decreasing')], provided: { disk: '99' }, firstBuild: true });
      expect(valueOf(first, 'disk')).toBe('99');
      const added = resolve({ parameters: [disk('decreasing')], provided: { disk: '99' } });
      expect(valueOf(added, 'disk')).toBe('99');
    });

    it('when the previous value is empty or not a number › skips the check, as Coder does', () => {
      for (const previousValue of ['', 'lots']) {
        const result = resolve({
          parameters: [disk('increasing')],
          previous: [{ name: 'disk', value: previousValue }],
          provided: { disk: '1' },
        });
        expect(valueOf(result, 'disk')).toBe('1');
      }
    });
  });

  describe('type bool', () => {
    const gpu = param('gpu', { type: 'bool', defaultValue: 'false' });

    it('when the value is "true" or "false" › passes', () => {
      for (const value of ['true', 'false']) {
        expect(valueOf(resolve({ parameters: [gpu], provided: { gpu: value } }), 'gpu')).toBe(value);
      }
    });

    it('when the value is anything else › fails', () => {
      for (const value of ['yes', 'True', '1']) {
        const result = resolve({ parameters: [gpu], provided: { gpu: value } });
        expect(failure(result, 'gpu')).toBe(
          'can\'t validate build parameter "gpu": boolean value can be either "true" or "false"',
        );
      }
    });
  });

  describe('type list(string)', () => {
    const tags = param('tags', { type: 'list(string)', defaultValue: '[]' });

    it('when the value is a JSON array of strings › passes', () => {
      expect(valueOf(resolve({ parameters: [tags], provided: { tags: '["a","b"]' } }), 'tags')).toBe(
        '["a","b"]',
      );
    });

    it('when the value is not a JSON array of strings › fails', () => {
      for (const value of ['a,b', '{"a":1}', '[1,2]', '"a"', '["a",null]']) {
        const result = resolve({ parameters: [tags], provided: { tags: value } });
        expect(failure(result, 'tags')).toBe(
          `can't validate build parameter "tags": value ${JSON.stringify(value)} is not valid list of strings`,
        );
      }
    });
  });
});
