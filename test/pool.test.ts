import * as net from 'node:net';

import { afterEach, beforeEach, describe, expect, it } from 'vitest';

import { attach, configure, poolStats, probe, type Chunk, type ZeroCopyReceiver } from '../src/index';
import { PatternChecker, startSender } from '../src/testing';
import {
  drain,
  errorWith,
  loopbackFixture,
  mapLimit,
  MiB,
  openFdCount,
  socketMappingCount,
  socketMappingRss,
} from './helpers';

const DEFAULT_CAP = 64 * MiB;
const { servers, senders, zerocopyStream } = loopbackFixture();
beforeEach(() => configure({ maxPinnedBytes: DEFAULT_CAP }));
afterEach(() => configure({ maxPinnedBytes: DEFAULT_CAP }));

/** A pauseOnConnect server that hands every connection to `onSocket`. */
async function server(onSocket: (socket: net.Socket) => void): Promise<number> {
  const srv = net.createServer({ pauseOnConnect: true }, onSocket);
  servers.push(srv);
  srv.listen(0, '127.0.0.1', 511);
  await new Promise((resolve) => srv.once('listening', resolve));
  return (srv.address() as net.AddressInfo).port;
}

/**
 * Releases the held chunks and reads on: the read that waited for room resolves, then the
 * rest of the stream, all checked against the pattern.
 */
async function releaseAndReadOn(
  hoard: Chunk[],
  pending: Promise<Chunk | null>,
  receiver: ZeroCopyReceiver,
  checker: PatternChecker,
): Promise<Awaited<ReturnType<typeof drain>>> {
  for (const chunk of hoard.splice(0)) chunk.release();
  const resumed = (await pending) as Chunk;
  checker.check(resumed.data);
  resumed.release();
  const rest = await drain(receiver, checker);
  expect(rest.error).toBeNull();
  return rest;
}

describe.skipIf(!probe().supported)('the shared page pool', () => {
  it('caps pinned memory under a consumer that never releases; data keeps flowing as copies', async () => {
    const cap = 16 * MiB;
    configure({ maxPinnedBytes: cap });
    expect(poolStats().maxPinnedBytes).toBe(cap);
    const copiedBefore = poolStats().bytesCopiedPoolFull;
    const { receiver, socket } = await zerocopyStream(128 * MiB, 61);
    const hoard: Chunk[] = [];
    const checker = new PatternChecker(61);
    let maxRss = 0;
    let maxPinned = 0;
    for await (const chunk of receiver) {
      checker.check(chunk.data);
      hoard.push(chunk);
      maxPinned = Math.max(maxPinned, poolStats().pinnedBytes);
      if (hoard.length % 8 === 0) maxRss = Math.max(maxRss, socketMappingRss());
    }
    maxRss = Math.max(maxRss, socketMappingRss());
    expect(checker.offset).toBe(128 * MiB);
    // The kernel's own view of the mappings: resident pages never exceeded the cap.
    expect(maxRss).toBeGreaterThan(cap / 2);
    expect(maxRss).toBeLessThanOrEqual(cap);
    expect(maxPinned).toBeLessThanOrEqual(cap);
    expect(receiver.stats.bytesMapped).toBeLessThanOrEqual(cap);
    expect(receiver.stats.bytesCopiedPoolFull).toBeGreaterThan(64 * MiB);
    expect(poolStats().bytesCopiedPoolFull - copiedBefore).toBe(receiver.stats.bytesCopiedPoolFull);
    for (const chunk of hoard) chunk.release();
    expect(poolStats().pinnedBytes).toBe(0);
    expect(socketMappingRss()).toBe(0);
    socket.destroy();
  });

  it('maps again as soon as released chunks make room', async () => {
    configure({ maxPinnedBytes: 8 * MiB });
    const { receiver, socket } = await zerocopyStream(96 * MiB, 62);
    const hoard: Chunk[] = [];
    const checker = new PatternChecker(62);
    let copiedWhileFull = 0;
    let mappedAfterRelease = 0;
    let released = false;
    for await (const chunk of receiver) {
      checker.check(chunk.data);
      if (!released) {
        hoard.push(chunk);
        if (!chunk.mapped) copiedWhileFull += chunk.data.length;
        if (copiedWhileFull >= 8 * MiB) {
          for (const held of hoard.splice(0)) held.release();
          released = true;
        }
      } else {
        if (chunk.mapped) mappedAfterRelease += chunk.data.length;
        chunk.release();
      }
    }
    expect(checker.offset).toBe(96 * MiB);
    expect(released).toBe(true);
    expect(mappedAfterRelease).toBeGreaterThan(32 * MiB);
    socket.destroy();
  });

  it("whenPoolFull: 'wait' stops reading at the cap and resumes, mapped, when chunks return", async () => {
    const cap = 8 * MiB;
    configure({ maxPinnedBytes: cap });
    const { receiver, socket } = await zerocopyStream(64 * MiB, 63, { whenPoolFull: 'wait' });
    const hoard: Chunk[] = [];
    const checker = new PatternChecker(63);
    let held = 0;
    while (held < cap) {
      const chunk = (await receiver.read()) as Chunk;
      checker.check(chunk.data);
      hoard.push(chunk);
      held += chunk.data.length;
    }
    // Every pinned byte is held: the receiver waits instead of copying. (The read-ahead
    // may still hold one chunk mapped before the cap was reached; the one after it waits.)
    const timeout = (): Promise<'timeout'> => new Promise((resolve) => setTimeout(() => resolve('timeout'), 300));
    let pending = receiver.read();
    let outcome = await Promise.race([pending, timeout()]);
    if (outcome !== 'timeout') {
      checker.check((outcome as Chunk).data);
      hoard.push(outcome as Chunk);
      pending = receiver.read();
      outcome = await Promise.race([pending, timeout()]);
    }
    expect(outcome).toBe('timeout');
    expect(poolStats().pinnedBytes).toBeLessThanOrEqual(cap);
    expect(receiver.stats.poolWaits).toBeGreaterThan(0);
    const rest = await releaseAndReadOn(hoard, pending, receiver, checker);
    expect(checker.offset).toBe(64 * MiB);
    expect(rest.mappedBytes).toBeGreaterThan(0);
    expect(receiver.stats.bytesCopiedPoolFull).toBe(0);
    socket.destroy();
  });

  it('serves 200 concurrent streams byte-exact with a handful of mappings, under the cap', async () => {
    const streams = 200;
    const bytesEach = 4 * MiB;
    let maxPinned = 0;
    let maxMappings = 0;
    const results: Promise<{ bytes: number; error: unknown }>[] = [];
    const port = await server((socket) => {
      const receiver: ZeroCopyReceiver = attach(socket, { chunkSize: 256 * 1024 });
      results.push(
        (async () => {
          const seed = socket.remotePort as number;
          const received = await drain(receiver, seed, () => {
            maxPinned = Math.max(maxPinned, poolStats().pinnedBytes);
          });
          maxMappings = Math.max(maxMappings, socketMappingCount());
          socket.destroy();
          return { bytes: received.bytes, error: received.error };
        })(),
      );
    });
    // Each sender's seed is its own source port, which the receiver reads off the socket:
    // a stream that got another stream's bytes fails its check.
    await mapLimit(Array.from({ length: streams }), streams, async () => {
      const sender = startSender({ port, bytes: bytesEach, seed: 'local-port', mss: 4108 });
      senders.push(sender);
      await sender.done;
    });
    const outcomes = await Promise.all(results);
    expect(outcomes).toHaveLength(streams);
    for (const outcome of outcomes) expect(outcome).toEqual({ bytes: bytesEach, error: null });
    expect(maxPinned).toBeLessThanOrEqual(DEFAULT_CAP);
    expect(maxMappings).toBeLessThanOrEqual(3);
    expect(poolStats().mappings).toBeLessThanOrEqual(3);
  });

  it('leaves fds, mappings and pinned pages where they were after 1,000 short connections', async () => {
    let completed = 0;
    let failures = 0;
    const port = await server((socket) => {
      const receiver = attach(socket, { chunkSize: 64 * 1024 });
      void drain(receiver, 64).then((received) => {
        if (received.error !== null || received.bytes !== 64 * 1024) failures++;
        completed++;
        socket.destroy();
      });
    });
    const connect = async (): Promise<void> => {
      const sender = startSender({ port, bytes: 64 * 1024, seed: 64, mss: 4108 });
      await sender.done;
    };
    await connect(); // warm-up: the pool's first mapping is made once and kept
    const before = { fds: openFdCount(), mappings: socketMappingCount(), pinned: poolStats().pinnedBytes };
    await mapLimit(Array.from({ length: 1000 }), 16, connect);
    for (let i = 0; i < 100 && completed < 1001; i++) await new Promise((resolve) => setTimeout(resolve, 20));
    expect(completed).toBe(1001);
    expect(failures).toBe(0);
    expect(openFdCount()).toBe(before.fds);
    expect(socketMappingCount()).toBe(before.mappings);
    expect(poolStats().pinnedBytes).toBe(before.pinned);
    expect(poolStats().liveChunks).toBe(0);
  }, 300_000); // 1,000 sender processes: slow under ASan on a busy 2-vCPU machine
});

describe.skipIf(!probe().supported)("whenPoolFull: 'wait' cannot hang", () => {
  it('copies when the cap is below a page and nothing is pinned', async () => {
    configure({ maxPinnedBytes: 2048 });
    const { receiver, socket } = await zerocopyStream(8 * MiB, 65, { whenPoolFull: 'wait' });
    const received = await drain(receiver, 65);
    expect(received.bytes).toBe(8 * MiB);
    expect(received.mappedBytes).toBe(0);
    socket.destroy();
  });

  it('raising the cap wakes a waiting receiver', async () => {
    configure({ maxPinnedBytes: 4 * MiB });
    const { receiver, socket } = await zerocopyStream(32 * MiB, 66, { whenPoolFull: 'wait' });
    const checker = new PatternChecker(66);
    const hoard: Chunk[] = [];
    let held = 0;
    while (held < 4 * MiB) {
      const chunk = (await receiver.read()) as Chunk;
      checker.check(chunk.data);
      hoard.push(chunk);
      held += chunk.data.length;
    }
    configure({ maxPinnedBytes: 64 * MiB });
    const rest = await drain(receiver, checker);
    expect(rest.error).toBeNull();
    expect(checker.offset).toBe(32 * MiB);
    for (const chunk of hoard) chunk.release();
    socket.destroy();
  });

  it('nor spin when the address space is used up below the cap (written chunks no longer count as pinned)', async () => {
    // A written chunk becomes a private copy: off the pinned count, but its range stays
    // taken. Once the pool's address space is gone, a receiver that took "under the cap"
    // for room retried on every turn of the loop (half a million wake-ups in 1.5 s).
    configure({ maxPinnedBytes: 4 * MiB });
    const { receiver, socket } = await zerocopyStream(256 * MiB, 69, { whenPoolFull: 'wait', chunkSize: 256 * 1024 });
    const checker = new PatternChecker(69);
    const hoard: Chunk[] = [];
    let pending = receiver.read();
    for (;;) {
      const outcome = await Promise.race([
        pending,
        new Promise<'stalled'>((resolve) => setTimeout(() => resolve('stalled'), 300)),
      ]);
      if (outcome === 'stalled') break;
      const chunk = outcome as Chunk;
      checker.check(chunk.data);
      if (chunk.mapped) chunk.data[0] ^= 1; // a private copy from here on
      hoard.push(chunk);
      pending = receiver.read();
    }
    const wakeups = receiver.stats.wakeups;
    await new Promise((resolve) => setTimeout(resolve, 500));
    expect(receiver.stats.poolWaits).toBeGreaterThan(0);
    expect(receiver.stats.wakeups - wakeups).toBeLessThan(5);
    expect(poolStats().chunksCopiedOnWrite).toBeGreaterThan(0);
    await releaseAndReadOn(hoard, pending, receiver, checker);
    expect(checker.offset).toBe(256 * MiB);
    socket.destroy();
  });

  it('readable() refuses the wait policy', async () => {
    const { receiver, socket } = await zerocopyStream(MiB, 67, { whenPoolFull: 'wait' });
    expect(() => receiver.readable()).toThrow(errorWith({ code: 'ERR_TCPZC_READABLE_WAIT' }));
    receiver.close();
    socket.destroy();
  });
});
