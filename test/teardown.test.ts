import { spawnSync } from 'node:child_process';
import * as path from 'node:path';

import { describe, expect, it } from 'vitest';

const child = path.join(__dirname, 'fixtures', 'teardown-stress-child.js');

describe('an environment stopping inside a native call', () => {
  // Before NODE_API_SWALLOW_UNTHROWABLE_EXCEPTIONS this aborted the whole process within
  // the first few rounds: exit 134, "terminate called after throwing an instance of
  // 'Napi::Error'".
  it('48 workers terminated or exiting at random moments of a hard native loop: the process lives', () => {
    // The seed picks the delays and exit points; it is in every failure message.
    const seed = Date.now() % 1e9;
    const result = spawnSync(process.execPath, [child, '48', String(seed)], { encoding: 'utf8', timeout: 110_000 });
    const context = `seed ${seed}`;
    expect(result.stderr, context).not.toMatch(/terminate called|Aborted|FATAL|Assertion|open handles|Segmentation/i);
    expect(result.signal, context).toBeNull();
    expect(result.status, context).toBe(0);
    expect(result.stdout).toMatch(/^teardown stress done: 48 rounds, seed \d+/m);
  });
});
