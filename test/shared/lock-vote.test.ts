// Counting Redlock nodes' answers: decided by the first answers that settle it, silent nodes bounded.
import { describe, expect, it } from 'vitest';
import { countVotes, quorumOf } from '../../src/shared/lock-vote.js';

const silent = () => new Promise<boolean>(() => {});
const unreachable = () => Promise.reject(new Error("Stream isn't writeable"));

describe('countVotes', () => {
  it('needs a majority: 1 of 1, 2 of 3, 3 of 5', () => {
    expect([1, 3, 5].map(quorumOf)).toEqual([1, 2, 3]);
  });

  it('when two of three say yes › is won without waiting for the third', async () => {
    const vote = await countVotes([Promise.resolve(true), Promise.resolve(true), silent()], 60_000);

    expect(vote).toMatchObject({ won: true, yes: 2, no: 0, unreachable: 0, quorumUnavailable: false });
  });

  it('when two of three say no › is lost without waiting for the third, and the quorum was there', async () => {
    const vote = await countVotes([Promise.resolve(false), Promise.resolve(false), silent()], 60_000);

    expect(vote).toMatchObject({ won: false, no: 2, quorumUnavailable: false });
  });

  it('when one node says no and another cannot be reached › is lost, not "unavailable"', async () => {
    const vote = await countVotes([Promise.resolve(true), Promise.resolve(false), unreachable()], 60_000);

    expect(vote).toMatchObject({ won: false, yes: 1, no: 1, unreachable: 1, quorumUnavailable: false });
  });

  it('when two of three cannot be reached › the quorum is unavailable', async () => {
    const vote = await countVotes([Promise.resolve(true), unreachable(), unreachable()], 60_000);

    expect(vote).toMatchObject({ won: false, unreachable: 2, quorumUnavailable: true });
  });

  it('when nodes stay silent › decides after the timeout, counting them as unreachable', async () => {
    const started = performance.now();
    const vote = await countVotes([Promise.resolve(true), silent(), silent()], 50);

    expect(performance.now() - started).toBeGreaterThanOrEqual(45);
    expect(vote).toMatchObject({ won: false, yes: 1, unreachable: 2, quorumUnavailable: true });
  });
});
