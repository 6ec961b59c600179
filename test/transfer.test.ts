// ArrayBuffer.prototype.transfer() (Node 21+; a V8 flag on Node 20) moves a chunk's memory
// into a plain ArrayBuffer, which postMessage can send to another thread. Node finalizes a
// stopping worker's external Buffers whoever holds their memory: the package must not
// free, reuse or unmap memory that moved there.
import { spawnSync } from 'node:child_process';
import * as path from 'node:path';

import { describe, expect, it } from 'vitest';

import { probe } from '../src/index';

// Node 20 has transfer() behind a V8 flag (children get it whatever this process has).
const transferFlag = Number(process.versions.node.split('.')[0]) < 21 ? ['--harmony-rab-gsab-transfer'] : [];

/** Mapped chunks as direct Buffers (the default here), or as Node-API ones (MoveWatch). */
const BUFFER_KINDS = [
  { kind: 'direct Buffers', env: process.env },
  { kind: 'Node-API Buffers', env: { ...process.env, TCP_ZEROCOPY_NODE_API_BUFFERS: '1' } },
];

/** Runs a fixture; on Node 20 with transfer() behind its flag. */
function runChild(args: string[], flags: string[] = [], fixture = 'transfer-child.js', env = process.env) {
  const result = spawnSync(
    process.execPath,
    [...flags, ...transferFlag, path.join(__dirname, 'fixtures', fixture), ...args],
    { encoding: 'utf8', timeout: 60_000, env },
  );
  return { status: result.status, signal: result.signal, stderr: result.stderr, stdout: result.stdout };
}

interface Moved {
  checked: number;
  mapped: boolean;
  reused: number;
}

/** Runs transfer-child.js and returns what the main thread found; nothing may have died. */
function runMoved(args: string[], flags: string[] = [], env = process.env): Moved {
  const result = runChild(args, flags, 'transfer-child.js', env);
  expect(result.stderr).toBe('');
  expect(result).toMatchObject({ status: 0, signal: null });
  return JSON.parse(result.stdout) as Moved;
}

/** Runs transfer-child.js: the main thread read the moved bytes intact. */
function expectMovedIntact(args: string[], mapped: boolean, flags: string[] = [], env = process.env): void {
  const moved = runMoved(args, flags, env);
  expect(moved.mapped).toBe(mapped);
  expect(moved.checked).toBeGreaterThanOrEqual(512 * 1024);
}

describe('a chunk moved to another thread with ArrayBuffer.prototype.transfer', () => {
  it('copied: its memory stays valid after its worker stops', () => {
    // The memory copied chunks reuse was freed under the main thread here (exit 139)
    // before they stopped reusing it where transfer() exists.
    expectMovedIntact(['copy'], false);
  });

  it.each(BUFFER_KINDS)(
    'copied, as $kind, while earlier chunks are held: reused memory only as direct Buffers, and intact where it moved',
    ({ kind, env }) => {
      // As direct Buffers, memory in reused blocks comes back only once nothing holds it,
      // here after the main thread checked it (the worker long gone). As Node-API Buffers
      // it would be freed under the main thread when the worker stops: they keep memory
      // of their own.
      const moved = runMoved(['copy', 'held'], [], env);
      if (kind === 'direct Buffers' && probe().features.directBuffers) {
        expect(moved.reused).toBeGreaterThanOrEqual(2);
        expect(moved.checked).toBeGreaterThanOrEqual(512 * 1024);
      } else {
        expect(moved.reused).toBe(0);
      }
    },
  );

  describe.skipIf(!probe().supported).each(BUFFER_KINDS)('mapped, as $kind', ({ env }) => {
    it('its pages stay mapped after its worker stops at once', () => {
      // The stopping worker's finalizer dropped the pages under the main thread: SIGSEGV.
      expectMovedIntact(['zerocopy'], true, [], env);
    });

    it('its pages stay mapped after its worker released the chunk, collected its ArrayBuffer and stopped', () => {
      expectMovedIntact(['zerocopy', 'gc'], true, ['--expose-gc'], env);
    });

    it('a worker that stops holding chunks it never released (none moved) leaves no mapping behind', () => {
      // Watching for moved memory must not take every unreleased chunk for moved: Node
      // detaches a stopping worker's ArrayBuffers itself before their finalizers run.
      // An earlier version left each worker's pool mapped here. With direct Buffers, the
      // worker's isolate hands their memory back as it is torn down, after Node unloaded
      // the addon (which only the workers loaded): that crashed before the addon kept
      // itself loaded.
      const result = runChild([], ['--expose-gc'], 'worker-holding-child.js', env);
      expect(result.stderr).toBe('');
      expect(result).toMatchObject({ status: 0, signal: null });
      expect(JSON.parse(result.stdout)).toEqual({ held: 16, leakedMappings: 0 });
    });
  });
});
