// Copied chunks of 128 KiB or more are received into memory that released chunks gave
// back (native/copy_blocks.h): fresh memory is a page fault per page, which on a VM costs
// more than the copy.
import { spawn, spawnSync, type ChildProcess } from 'node:child_process';
import { once } from 'node:events';
import * as net from 'node:net';
import * as path from 'node:path';

import { afterEach, describe, expect, it } from 'vitest';

import { attach, poolStats, probe, type Chunk } from '../src/index';
import { PatternChecker } from '../src/testing';
import { loopbackFixture, MiB } from './helpers';

const fixture = loopbackFixture();
const MAX_IDLE_BYTES = 32 * MiB;
const underAsan = (process.env.LD_PRELOAD ?? '').includes('libasan');
// Where ArrayBuffer.prototype.transfer exists (Node 21+), copied chunks reuse memory only
// as direct Buffers (whose memory comes back only once nothing anywhere holds it).
const transferExists = typeof (ArrayBuffer.prototype as { transfer?: unknown }).transfer === 'function';
const blocksInUse = !transferExists || probe().features.directBuffers;

const sinks: ChildProcess[] = [];
afterEach(() => {
  for (const sink of sinks.splice(0)) sink.kill();
});

/**
 * A connection to another process that checks what it reads against pattern `seed` (a
 * forwarding target, checking what arrived there, after the forwarder's writes) and, at
 * the end, answers with the bytes it checked and the first mismatch, if any.
 */
async function checkingSink(seed: number): Promise<{ socket: net.Socket; result: Promise<SinkResult> }> {
  const testing = path.join(__dirname, '..', 'dist', 'testing.js');
  const sink = spawn(
    process.execPath,
    [
      '-e',
      `const { PatternChecker } = require(${JSON.stringify(testing)});
      const server = require('net').createServer((c) => {
        const checker = new PatternChecker(${String(seed)});
        let mismatch = null;
        c.on('data', (data) => {
          if (mismatch !== null) return;
          try { checker.check(data); } catch (error) { mismatch = String(error); }
        });
        c.on('end', () => c.end(JSON.stringify({ checked: checker.offset, mismatch })));
      });
      server.listen(0, '127.0.0.1', () => console.log(server.address().port));`,
    ],
    { stdio: ['ignore', 'pipe', 'inherit'] },
  );
  sinks.push(sink);
  const [line] = (await once(sink.stdout, 'data')) as [Buffer];
  const socket = net.connect({ port: Number(line.toString()), host: '127.0.0.1' });
  fixture.sockets.push(socket);
  await once(socket, 'connect');
  const result = (async () => {
    let answer = '';
    for await (const data of socket) answer += String(data);
    return JSON.parse(answer) as SinkResult;
  })();
  return { socket, result };
}

interface SinkResult {
  checked: number;
  mismatch: string | null;
}

async function copyStream(bytes: number, seed: number, chunkSize: number) {
  const { sender, socket } = await fixture.serverAndSender({ bytes, seed, mss: 4108 });
  return { receiver: attach(socket, { mode: 'copy', chunkSize }), socket, sender };
}

async function settle(): Promise<void> {
  // A detached chunk's memory comes back on a later turn of the loop.
  for (let i = 0; i < 5; i++) await new Promise((resolve) => setImmediate(resolve));
}

describe.skipIf(!blocksInUse)('copied chunks reuse memory', () => {
  it('gets the memory of a chunk collected without release() back', async () => {
    expect(typeof global.gc).toBe('function');
    // First in this file (its own process): the idle list is empty, far from its cap.
    const chunkSize = 3 * MiB;
    const { receiver, socket } = await copyStream(24 * MiB, 63, chunkSize);
    // Large chunks go into reused memory once the consumer holds one at the next read:
    // hold them all. At most two are read ahead, so with three in blocks one is held here.
    const checker = new PatternChecker(63);
    let held: Chunk[] = [];
    while (receiver.stats.chunksInReusedMemory < 3) {
      const chunk = await receiver.read();
      if (chunk === null) throw new Error('the stream ended before three chunks in blocks');
      checker.check(chunk.data);
      held.push(chunk);
    }
    receiver.close();
    socket.destroy();
    const idleBefore = poolStats().idleCopyBytes;
    held = [];
    for (let i = 0; i < 50 && poolStats().idleCopyBytes <= idleBefore; i++) {
      global.gc?.();
      await new Promise((resolve) => setTimeout(resolve, 10));
    }
    expect(held).toEqual([]);
    expect(poolStats().idleCopyBytes).toBeGreaterThan(idleBefore);
  });

  it('gives a consumer that releases each chunk before the next read Buffers of its own', async () => {
    // Memory malloc reuses by itself; a block would add an event-loop wake-up per release.
    const seed = 65;
    const { receiver } = await copyStream(64 * MiB, seed, MiB);
    const checker = new PatternChecker(seed);
    for await (const chunk of receiver) {
      checker.check(chunk.data);
      chunk.release();
    }
    expect(checker.offset).toBe(64 * MiB);
    expect(receiver.stats.chunksCopied).toBeGreaterThan(32);
    expect(receiver.stats.chunksInReusedMemory).toBe(0);
  });

  it('gets reused memory for a consumer that holds each chunk past the next read: 256 MiB with under one page fault per 16 pages', async () => {
    // As a write still in progress holds its chunk, deterministically: each chunk is
    // released only once the next one is read.
    const seed = 61;
    const bytes = 256 * MiB;
    const { receiver } = await copyStream(bytes, seed, MiB);
    const checker = new PatternChecker(seed);
    let previous: Chunk | null = null;
    const faultsBefore = process.resourceUsage().minorPageFault;
    for await (const chunk of receiver) {
      checker.check(chunk.data);
      previous?.release();
      previous = chunk;
    }
    previous?.release();
    const faults = process.resourceUsage().minorPageFault - faultsBefore;
    expect(checker.offset).toBe(bytes);
    expect(receiver.stats.bytesCopied).toBe(bytes);
    // Every read after the first sees the last chunk held. Not under test:asan, whose
    // allocator and shadow memory fault on their own.
    if (!underAsan) {
      expect(receiver.stats.chunksInReusedMemory).toBeGreaterThan(0.9 * receiver.stats.chunksCopied);
      // 65,536 pages were received. Into fresh memory for each chunk that is up to one
      // fault per page (9,000-24,000 measured); into reused memory far fewer.
      expect(faults).toBeLessThan(bytes / 4096 / 16);
    }
    await settle();
    if (!underAsan) expect(poolStats().idleCopyBytes).toBeGreaterThanOrEqual(MiB);
  });

  it('forwards 256 MiB at 1 MiB chunks with pipeTo byte-exact at the far end, blocks in use or not', async () => {
    // A block is reused only once the chunk in it is released, here in its write's
    // callback: what the sink reads is what was received. How many chunks a write still
    // holds at the next read (and so go into blocks) depends on how fast the sink reads:
    // 0-255 of 257 seen, so it is not asserted here (the test above is).
    const seed = 66;
    const bytes = 256 * MiB;
    const sink = await checkingSink(seed);
    const { receiver } = await copyStream(bytes, seed, MiB);
    await receiver.pipeTo(sink.socket);
    expect(receiver.stats.bytesCopied).toBe(bytes);
    expect(await sink.result).toEqual({ checked: bytes, mismatch: null });
  });

  it('keeps at most 32 MiB idle, and only what chunks gave back', async () => {
    const chunkSize = 2 * MiB;
    const { receiver } = await copyStream(96 * MiB, 62, chunkSize);
    const held: Chunk[] = [];
    for await (const chunk of receiver) held.push(chunk);
    const full = held.filter((chunk) => chunk.data.length * 2 >= chunkSize).length;
    expect(full).toBeGreaterThan(MAX_IDLE_BYTES / chunkSize);
    const idleBefore = poolStats().idleCopyBytes;
    for (const chunk of held) chunk.release();
    await settle();
    const idle = poolStats().idleCopyBytes;
    expect(idle).toBeLessThanOrEqual(MAX_IDLE_BYTES);
    expect(idle - idleBefore).toBeGreaterThanOrEqual(chunkSize);
  });

  it('never hands out memory a live chunk still uses', async () => {
    // Hold every third chunk while the rest are released and reused, then check the held.
    const seed = 64;
    const chunkSize = 256 * 1024;
    const { receiver } = await copyStream(64 * MiB, seed, chunkSize);
    const held: { chunk: Chunk; offset: number }[] = [];
    const checker = new PatternChecker(seed);
    let offset = 0;
    let index = 0;
    for await (const chunk of receiver) {
      const at = offset;
      checker.check(chunk.data);
      offset += chunk.data.length;
      if (index++ % 3 === 0 && held.length < 48) held.push({ chunk, offset: at });
      else chunk.release();
    }
    expect(offset).toBe(64 * MiB);
    expect(receiver.stats.chunksInReusedMemory).toBeGreaterThan(64);
    for (const { chunk, offset: at } of held) {
      const recheck = new PatternChecker(seed);
      recheck.offset = at;
      recheck.check(chunk.data);
      chunk.release();
    }
  });
});

describe('copied chunks in reused memory as Node-API Buffers (TCP_ZEROCOPY_NODE_API_BUFFERS=1)', () => {
  it('are used where transfer() does not exist (Node 20), and not where it does: byte-exact either way', () => {
    const result = spawnSync(process.execPath, [path.join(__dirname, 'fixtures', 'held-copies-child.js')], {
      env: { ...process.env, TCP_ZEROCOPY_NODE_API_BUFFERS: '1' },
      encoding: 'utf8',
      timeout: 60_000,
    });
    expect(result.stderr).toBe('');
    expect({ status: result.status, signal: result.signal }).toEqual({ status: 0, signal: null });
    const held = JSON.parse(result.stdout) as { checked: number; copied: number; reused: number };
    expect(held.checked).toBe(32 * MiB);
    if (transferExists) expect(held.reused).toBe(0);
    else expect(held.reused).toBeGreaterThan(0.8 * held.copied);
  });
});
