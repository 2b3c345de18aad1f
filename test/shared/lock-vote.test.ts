// Counting Redlock nodes' answers: decided by the first answers that settle it, silent nodes bounded.
import { describe, expect, it } from 'vitest';
import { countBatchVotes, countVotes, quorumOf, type Vote } from '../../src/shared/lock-vote.js';

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

describe('countBatchVotes', () => {
  /** Every vote of a batch of `size`, by index, once all are decided. */
  async function batch(answers: Promise<readonly number[]>[], size: number, timeoutMs = 60_000) {
    const votes = new Array<Vote>(size);
    await countBatchVotes(answers, size, timeoutMs, (i, vote) => {
      expect(votes[i], `vote ${i} decided twice`).toBeUndefined();
      votes[i] = vote;
    });
    return votes;
  }

  it('counts each node as yes to every vote but those it lists', async () => {
    const votes = await batch([Promise.resolve([1]), Promise.resolve([1, 2]), Promise.resolve([])], 4);

    expect(votes.map((vote) => vote.won)).toEqual([true, false, true, true]);
    // Decided lost by the first two: the third's yes was not needed.
    expect(votes[1]).toMatchObject({ yes: 0, no: 2, quorumUnavailable: false });
    expect(votes[2]).toMatchObject({ yes: 2, no: 1 });
  });

  it('decides each vote once its quorum is in, without waiting for the nodes it does not need', async () => {
    const decided = new Map<number, Vote>();
    void countBatchVotes(
      [Promise.resolve([]), Promise.resolve([0]), silent().then(() => [])],
      2,
      60_000,
      (i, vote) => decided.set(i, vote),
    );

    // Vote 1 has its two yes; vote 0 can still be won only by the silent node, so it waits.
    await expect.poll(() => decided.get(1)).toMatchObject({ won: true, yes: 2 });
    expect(decided.has(0)).toBe(false);
  });

  it('with a silent node › decides the rest at the timeout, counting it as unreachable', async () => {
    const votes = await batch([Promise.resolve([]), Promise.resolve([0]), silent().then(() => [])], 2, 50);

    expect(votes[0]).toMatchObject({ won: false, yes: 1, no: 1, unreachable: 1, quorumUnavailable: false });
    expect(votes[1]).toMatchObject({ won: true, yes: 2, unreachable: 0 });
  });

  it('when the nodes are unreachable › every vote lost for want of a quorum', async () => {
    const votes = await batch([unreachable(), unreachable(), Promise.resolve([])], 3);

    expect(votes.every((vote) => !vote.won && vote.quorumUnavailable && vote.unreachable === 2)).toBe(true);
  });

  it('gives votes with the same counts one Vote object (nothing allocated per vote)', async () => {
    const votes = await batch([Promise.resolve([2])], 1_000);

    expect(new Set(votes).size).toBe(2);
    expect(votes[0]).toBe(votes[999]);
    expect(votes[2]).toMatchObject({ won: false, no: 1 });
  });
});
