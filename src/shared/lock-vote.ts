// Counting the answers of independent Redlock nodes. redis-semaphore's RedlockMutex awaits every node
// (Promise.all) before it decides, so one node that does not answer makes each acquire, refresh and release
// as slow as that node's timeout. A vote here is decided by the first answers that settle it: a quorum of
// "yes", or enough "no" and unreachable nodes that no quorum is left. A node still silent after `timeoutMs`
// counts as unreachable; its command goes on in the background (bounded by the client's command timeout).

export interface Vote {
  /** A quorum of nodes said yes. */
  readonly won: boolean;
  readonly yes: number;
  readonly no: number;
  /** Nodes whose command failed (refused, timed out, not connected) or that were still silent. */
  readonly unreachable: number;
  readonly nodes: number;
  readonly quorum: number;
  /** Lost because too few nodes could be reached: no answer of theirs could have made a quorum. */
  readonly quorumUnavailable: boolean;
}

/** A majority: 2 of 3, 3 of 5. */
export function quorumOf(nodes: number): number {
  return Math.floor(nodes / 2) + 1;
}

/** Resolves as soon as `answers` (one per node: true = yes, false = no, rejected = unreachable) decide. */
export function countVotes(answers: Promise<boolean>[], timeoutMs: number): Promise<Vote> {
  const nodes = answers.length;
  const quorum = quorumOf(nodes);
  let yes = 0;
  let no = 0;
  let unreachable = 0;
  return new Promise((resolve) => {
    let decided = false;
    const decide = (timedOut: boolean) => {
      if (decided) return;
      const won = yes >= quorum;
      const lost = nodes - no - unreachable < quorum;
      if (!won && !lost && !timedOut) return;
      decided = true;
      clearTimeout(timer);
      if (timedOut) unreachable = nodes - yes - no;
      resolve({
        won,
        yes,
        no,
        unreachable,
        nodes,
        quorum,
        quorumUnavailable: !won && nodes - unreachable < quorum,
      });
    };
    const timer = setTimeout(() => decide(true), timeoutMs);
    for (const answer of answers) {
      answer.then(
        (ok) => {
          if (decided) return;
          if (ok) yes++;
          else no++;
          decide(false);
        },
        () => {
          if (decided) return;
          unreachable++;
          decide(false);
        },
      );
    }
  });
}

export function describeVote(vote: Vote): string {
  return `${vote.unreachable} of ${vote.nodes} lock nodes unreachable, ${vote.quorum} needed`;
}
