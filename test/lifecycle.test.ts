import { spawnSync } from 'node:child_process';
import * as path from 'node:path';

import { describe, expect, it } from 'vitest';

const child = path.join(__dirname, 'fixtures', 'lifecycle-child.js');

function run(stage: string): { status: number | null; signal: NodeJS.Signals | null; stderr: string } {
  const result = spawnSync(process.execPath, [child, stage], { encoding: 'utf8', timeout: 60_000 });
  return { status: result.status, signal: result.signal, stderr: result.stderr };
}

describe('leaving at every lifecycle stage is clean', () => {
  it.each([
    ['loaded', 0],
    ['probed', 0],
    ['attached', 0],
    ['mid-stream', 0],
    ['mid-stream-natural', 0],
    ['closed', 0],
    ['socket-destroyed', 0],
    ['worker-terminate', 0],
    ['worker-exit', 0],
    ['uncaught-exception', 1],
  ])('%s: exits with %i', (stage, expected) => {
    const result = run(stage);
    expect(result.signal).toBeNull();
    expect(result.stderr).not.toMatch(/Assertion|Aborted|FATAL|open handles|Segmentation/i);
    if (stage === 'uncaught-exception') expect(result.stderr).toMatch(/deliberate crash mid-stream/);
    else expect(result.stderr).toBe('');
    expect(result.status).toBe(expected);
  });
});
