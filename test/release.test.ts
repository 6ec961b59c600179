import * as fs from 'node:fs';

import { describe, expect, it } from 'vitest';

import { attach, poolStats, probe, type Chunk } from '../src/index';
import { PatternChecker } from '../src/testing';
import { loopbackFixture, MiB, socketMappingRss } from './helpers';

const fixture = loopbackFixture();

const supported = probe().supported;

const zerocopyStream = (bytes: number, seed: number, chunkSize = MiB) =>
  fixture.zerocopyStream(bytes, seed, { chunkSize });

async function firstMappedChunk(receiver: ReturnType<typeof attach>): Promise<Chunk> {
  for (;;) {
    const chunk = await receiver.read();
    if (chunk === null) throw new Error('stream ended without a mapped chunk');
    if (chunk.mapped) return chunk;
    chunk.release();
  }
}

describe.skipIf(!supported)('release', () => {
  it('empties the Buffer and every view of it; reading afterwards is harmless', async () => {
    const { receiver, socket } = await zerocopyStream(8 * MiB, 21);
    const chunk = await firstMappedChunk(receiver);
    const view = chunk.data.subarray(4096, 8192);
    const data = chunk.data;
    const length = data.length;
    expect(length).toBeGreaterThanOrEqual(4096);
    const pinnedBefore = poolStats().pinnedBytes;
    expect(pinnedBefore).toBeGreaterThanOrEqual(data.length);

    chunk.release();
    expect(chunk.data.length).toBe(0);
    // The old references are detached: no read can reach the unmapped pages (SIGBUS).
    expect(data.length).toBe(0);
    expect(data[0]).toBeUndefined();
    expect(view.length).toBe(0);
    expect(data.toString()).toBe('');
    expect(() => data.readUInt8(0)).toThrow(RangeError);
    expect(poolStats().pinnedBytes).toBe(pinnedBefore - length);

    chunk.release(); // twice: nothing happens
    expect(chunk.data.length).toBe(0);
    receiver.close();
    socket.destroy();
  });

  it('gives the pages back to the kernel (smaps Rss of the socket mappings drops)', async () => {
    const { receiver, socket } = await zerocopyStream(32 * MiB, 22, 4 * MiB);
    const held: Chunk[] = [];
    let heldBytes = 0;
    while (heldBytes < 8 * MiB) {
      const chunk = await receiver.read();
      if (chunk === null) break;
      if (chunk.mapped) {
        held.push(chunk);
        heldBytes += chunk.data.length;
      } else chunk.release();
    }
    const rssHeld = socketMappingRss();
    expect(rssHeld).toBeGreaterThanOrEqual(heldBytes);
    for (const chunk of held) chunk.release();
    expect(socketMappingRss()).toBeLessThanOrEqual(rssHeld - heldBytes);
    receiver.close();
    socket.destroy();
  });

  it('releases a chunk that was garbage-collected without release()', async () => {
    expect(typeof global.gc).toBe('function');
    const { receiver, socket } = await zerocopyStream(16 * MiB, 23);
    const baseline = poolStats().pinnedBytes;
    let chunk: Chunk | null = await firstMappedChunk(receiver);
    const length = chunk.data.length;
    expect(poolStats().pinnedBytes).toBeGreaterThanOrEqual(baseline + length);
    receiver.close();
    socket.destroy();
    chunk = null;
    // The finalizer runs on a later turn of the loop after the collection.
    for (let i = 0; i < 50 && poolStats().pinnedBytes > 0; i++) {
      global.gc?.();
      await new Promise((resolve) => setTimeout(resolve, 10));
    }
    expect(chunk).toBeNull();
    expect(poolStats().pinnedBytes).toBe(0);
  });

  it('never refills a range while a Buffer over it is alive', async () => {
    // Hold every other mapped chunk while 64 MiB stream past, then check the held ones.
    const seed = 24;
    const { receiver, socket } = await zerocopyStream(64 * MiB, seed, 256 * 1024);
    const held: { chunk: Chunk; offset: number }[] = [];
    const checker = new PatternChecker(seed);
    let offset = 0;
    let index = 0;
    for await (const chunk of receiver) {
      checker.check(chunk.data);
      const length = chunk.data.length;
      if (chunk.mapped && held.length < 64 && index++ % 2 === 0) held.push({ chunk, offset });
      else chunk.release();
      offset += length;
    }
    expect(offset).toBe(64 * MiB);
    expect(held.length).toBeGreaterThan(10);
    for (const { chunk, offset: at } of held) {
      const recheck = new PatternChecker(seed);
      recheck.offset = at;
      recheck.check(chunk.data);
      chunk.release();
    }
    socket.destroy();
  });
});

describe.skipIf(!supported)('isolation', () => {
  it('every TCP mapping is read-only and shared (r--s): JS cannot change received pages', async () => {
    const { receiver, socket } = await zerocopyStream(8 * MiB, 25);
    const chunk = await firstMappedChunk(receiver);
    const maps = fs
      .readFileSync('/proc/self/maps', 'utf8')
      .split('\n')
      .filter((line) => line.includes('socket:['));
    expect(maps.length).toBeGreaterThan(0);
    for (const line of maps) expect(line.split(/\s+/)[1]).toBe('r--s');
    chunk.release();
    receiver.close();
    socket.destroy();
  });
});
