// Mapped chunks as direct Buffers (native/direct_buffer.h): V8 hands their memory back
// itself, at release() or wherever the last holder lets go, instead of Node-API's finalizer
// one event-loop wake-up later. TCP_ZEROCOPY_NODE_API_BUFFERS=1 keeps the old path; both
// are checked here in child processes.
import { spawn, spawnSync } from 'node:child_process';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import * as readline from 'node:readline';
import { MessageChannel, markAsUntransferable } from 'node:worker_threads';

import { afterEach, describe, expect, it } from 'vitest';

import { configure, probe } from '../src/index';
import { PatternChecker, startSender } from '../src/testing';
import { loopbackFixture, MiB } from './helpers';

const fixtures = path.join(__dirname, 'fixtures');
const NODE_API_BUFFERS = { ...process.env, TCP_ZEROCOPY_NODE_API_BUFFERS: '1' };
const { zerocopyStream } = loopbackFixture();
afterEach(() => configure({ maxPinnedBytes: 64 * MiB }));

function hasCommand(name: string): boolean {
  return (process.env.PATH ?? '').split(':').some((dir) => fs.existsSync(path.join(dir, name)));
}

interface WakeupRun {
  chunks: number;
  mapped: number;
  direct: boolean;
  writes: number;
}

/**
 * Runs release-wakeups-child.js under strace, sends it 256 MiB from the native sender, and
 * counts its write() calls: two lines on stdout and Node's eventfd wake-ups (a handful
 * for its own tasks, about 6 in all with direct Buffers, over a stream of 256 chunks).
 */
async function countWrites(env: NodeJS.ProcessEnv): Promise<WakeupRun> {
  const summary = path.join(fs.mkdtempSync(path.join(os.tmpdir(), 'tcpzc-strace-')), 'summary');
  const child = spawn(
    'strace',
    ['-f', '-c', '-e', 'trace=write', '-o', summary, process.execPath, path.join(fixtures, 'release-wakeups-child.js')],
    { env, stdio: ['ignore', 'pipe', 'inherit'] },
  );
  const exited = new Promise<number | null>((resolve) => child.on('exit', resolve));
  const lines = readline.createInterface({ input: child.stdout });
  const reports: string[] = [];
  for await (const line of lines) {
    reports.push(line);
    if (reports.length === 1) {
      const { port } = JSON.parse(line) as { port: number };
      startSender({ port, bytes: 256 * MiB, seed: 81, mss: 4108 });
    }
  }
  expect(await exited).toBe(0);
  const table = fs.readFileSync(summary, 'utf8');
  fs.rmSync(path.dirname(summary), { recursive: true, force: true });
  // "% time  seconds  usecs/call  calls  [errors]  syscall"
  const writes = /^\s*[\d.]+\s+[\d.]+\s+\d+\s+(\d+)\s+(?:\d+\s+)?write\s*$/m.exec(table);
  expect(writes, table).not.toBeNull();
  return { ...(JSON.parse(reports[1]) as Omit<WakeupRun, 'writes'>), writes: Number(writes?.[1]) };
}

describe.skipIf(!probe().supported)('mapped chunks as direct Buffers', () => {
  it('are used where the addon runs in the Node it was built for, unless turned off', () => {
    expect(probe().features.directBuffers).toBe(true);
    const off = spawnSync(process.execPath, ['-p', "require('./dist/index.js').probe().features.directBuffers"], {
      env: NODE_API_BUFFERS,
      encoding: 'utf8',
      cwd: path.join(__dirname, '..'),
    });
    expect(off.stdout.trim()).toBe('false');
  });

  it.skipIf(!hasCommand('strace'))(
    'a release() wakes the event loop no more: no eventfd write per chunk, as with Node-API Buffers',
    async () => {
      const direct = await countWrites(process.env);
      expect(direct.direct).toBe(true);
      expect(direct.chunks).toBeGreaterThanOrEqual(256);
      expect(direct.mapped).toBeGreaterThan(direct.chunks * 0.9);
      expect(direct.writes).toBeLessThan(direct.chunks / 8);
      // The same receiver with Node-API external Buffers: Node's finalizer wake-up, about
      // one eventfd write per released mapped chunk (what the direct path removes). Their
      // pages come back a turn of the loop later, so under strace the pool can fill and
      // some chunks are copied (376 of 576 mapped in one CI run): counted per mapped chunk.
      const nodeApi = await countWrites(NODE_API_BUFFERS);
      expect(nodeApi.direct).toBe(false);
      expect(nodeApi.mapped).toBeGreaterThanOrEqual(128);
      expect(nodeApi.writes).toBeGreaterThan(nodeApi.mapped / 2);
    },
  );

  it("whenPoolFull: 'wait' resumes when chunks dropped without release() are collected", async () => {
    // Their memory comes back through V8's deleter, maybe on a GC thread: the waiting
    // receiver must still be told, on its own thread. The consumer keeps every chunk
    // until the receiver waits, then drops them all and collects.
    configure({ maxPinnedBytes: 4 * MiB });
    const { receiver, socket } = await zerocopyStream(32 * MiB, 68, { whenPoolFull: 'wait', chunkSize: 256 * 1024 });
    const checker = new PatternChecker(68);
    let kept: unknown[] = [];
    let waitsSeen = 0;
    let collections = 0;
    const collector = setInterval(() => {
      if (receiver.stats.poolWaits === waitsSeen) return;
      waitsSeen = receiver.stats.poolWaits;
      kept = [];
      globalThis.gc?.();
      collections++;
    }, 10);
    let mapped = 0;
    try {
      for await (const chunk of receiver) {
        checker.check(chunk.data);
        if (chunk.mapped) mapped += chunk.data.length;
        kept.push(chunk);
      }
    } finally {
      clearInterval(collector);
    }
    expect(checker.offset).toBe(32 * MiB);
    expect(collections).toBeGreaterThan(0);
    expect(receiver.stats.poolWaits).toBeGreaterThan(0);
    expect(receiver.stats.bytesCopiedPoolFull).toBe(0);
    // Far more than the cap was mapped: the collected chunks made the room.
    expect(mapped).toBeGreaterThan(16 * MiB);
    socket.destroy();
  }, 60_000);

  describe('memory moved to another isolate (postMessage transfer list)', () => {
    /** Runs moved-chunks-child.js: a worker posts 4 mapped chunks' memory and exits. */
    function runMoved(env: NodeJS.ProcessEnv) {
      const result = spawnSync(process.execPath, ['--expose-gc', path.join(fixtures, 'moved-chunks-child.js')], {
        env,
        encoding: 'utf8',
        timeout: 60_000,
      });
      expect(result.stderr).toBe('');
      expect({ status: result.status, signal: result.signal }).toEqual({ status: 0, signal: null });
      return JSON.parse(result.stdout) as {
        error?: string;
        moved: number;
        checked: number;
        mappingsWhileHeld: number;
        mappingsAfter: number;
        before: number;
      };
    }

    it('stays mapped after the worker is gone, and goes back to its pool when collected here', () => {
      const moved = runMoved(process.env);
      expect(moved.moved).toBe(4);
      expect(moved.checked).toBeGreaterThanOrEqual(4 * 4096);
      // The worker's pool lives on for the memory it lent, then goes with it.
      expect(moved.mappingsWhileHeld).toBeGreaterThan(moved.before);
      expect(moved.mappingsAfter).toBe(moved.before);
    });

    // Node-API Buffers are untransferable: postMessage copies them on Node 20 and throws
    // a DataCloneError from Node 21 on (as the README says). Which one this Node does is
    // asked of Node itself, with an ArrayBuffer of its own.
    const refusesUntransferable = (() => {
      const memory = new ArrayBuffer(8);
      markAsUntransferable(memory);
      const { port1, port2 } = new MessageChannel();
      try {
        port1.postMessage(memory, [memory]);
        return false;
      } catch {
        return true;
      } finally {
        port1.close();
        port2.close();
      }
    })();

    it('is copied by postMessage with Node-API Buffers (Node 20), or refused (Node 21+); the pool goes with the worker', () => {
      const moved = runMoved(NODE_API_BUFFERS);
      if (refusesUntransferable) {
        expect(moved.error).toMatch(/^DataCloneError/);
        expect(moved.mappingsAfter).toBe(moved.before);
      } else {
        expect(moved.moved).toBe(4);
        expect(moved.checked).toBeGreaterThanOrEqual(4 * 4096);
        expect(moved.mappingsWhileHeld).toBe(moved.before);
      }
    });
  });
});
