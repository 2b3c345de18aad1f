// Files the package ships beside its code (migrations/, the live page): found from the package root, which
// is two levels above src/shared/ when running from source (tsx, tests) and three above dist/src/shared/
// when compiled (tsc copies no assets).
import { existsSync } from 'node:fs';
import { fileURLToPath } from 'node:url';

const FROM_SOURCE = new URL('../../', import.meta.url);
const FROM_DIST = new URL('../../../', import.meta.url);

/** The absolute path (ending in /) of `relative` (e.g. 'migrations/') in the package. */
export function packageDir(relative: string): string {
  const candidates = [FROM_SOURCE, FROM_DIST].map((root) => fileURLToPath(new URL(relative, root)));
  return candidates.find((dir) => existsSync(dir)) ?? candidates[0]!;
}
