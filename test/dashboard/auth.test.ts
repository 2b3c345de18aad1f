// The dashboard's Basic auth check on its own: which Authorization headers pass, and that a wrong user is
// found out the same way as a wrong password (both fields compared, as SHA-256 digests of equal length).
import type { NextFunction, Request, Response } from 'express';
import { afterEach, describe, expect, it, vi } from 'vitest';
import { basicAuth } from '../../src/dashboard/auth.js';
import { PASSWORD, USER, basic } from './helpers.js';

const compared = vi.hoisted(() => [] as [number, number][]);

vi.mock('node:crypto', async (importOriginal) => {
  const crypto = await importOriginal<typeof import('node:crypto')>();
  return {
    ...crypto,
    timingSafeEqual: (a: NodeJS.ArrayBufferView, b: NodeJS.ArrayBufferView) => {
      compared.push([a.byteLength, b.byteLength]);
      return crypto.timingSafeEqual(a, b);
    },
  };
});

afterEach(() => {
  compared.length = 0;
});

/** Runs the middleware on a request with this Authorization header: 'next', or the status it answered. */
function check(authorization: string | undefined): { outcome: 'next' | number; challenge?: string } {
  const req = { headers: authorization === undefined ? {} : { authorization } } as Request;
  let status: number | undefined;
  let challenge: string | undefined;
  const res = {
    set(name: string, value: string) {
      if (name === 'WWW-Authenticate') challenge = value;
      return res;
    },
    status(code: number) {
      status = code;
      return res;
    },
    send() {
      return res;
    },
  } as unknown as Response;
  let passed = false;
  basicAuth(USER, PASSWORD)(req, res, (() => (passed = true)) as NextFunction);
  return { outcome: passed ? 'next' : status!, challenge };
}

const encode = (text: string) => Buffer.from(text).toString('base64');

describe('basicAuth', () => {
  it('takes the right user and password, with the scheme in any case', () => {
    const credentials = encode(`${USER}:${PASSWORD}`);
    for (const header of [
      basic(),
      `basic ${credentials}`,
      `BASIC ${credentials}`,
      `bAsIc  ${credentials} `,
    ]) {
      expect(check(header).outcome, header).toBe('next');
    }
  });

  it('answers 401 with a Basic challenge to anything else', () => {
    for (const header of [
      undefined,
      '',
      basic(USER, 'wrong'),
      basic('wrong', PASSWORD),
      basic(`${USER}x`, PASSWORD),
      basic(USER, `${PASSWORD} `),
      basic('', ''),
      `Basic ${encode(`${USER}${PASSWORD}`)}`,
      `Bearer ${encode(`${USER}:${PASSWORD}`)}`,
      `Basic${encode(`${USER}:${PASSWORD}`)}`,
      'Basic',
    ]) {
      const { outcome, challenge } = check(header);
      expect(outcome, String(header)).toBe(401);
      expect(challenge, String(header)).toMatch(/^Basic realm=/);
    }
  });

  it('compares both fields, as digests of equal length, whether the user is right or wrong', () => {
    for (const header of [
      basic(),
      basic('wrong', PASSWORD),
      basic('a much longer user name than the real one', 'x'),
      basic(USER, ''),
    ]) {
      compared.length = 0;
      check(header);
      expect(compared, header).toEqual([
        [32, 32],
        [32, 32],
      ]);
    }
  });
});
