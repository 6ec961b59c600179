// Why bytes were not mapped: every copied byte is counted under one cause in the
// receiver's stats (bytesCopiedShortRuns, ...Urgent, ...PoolFull, ...Fallback,
// ...CopyMode, ...Draining), and the causes add up to bytesCopied.
import { describe, expect, it } from 'vitest';

import { attach, configure, probe, type Chunk } from '../src/index';
import { drain, loopbackFixture, MiB, sumOfCopyCauses } from './helpers';

const { serverAndSender } = loopbackFixture();

describe.skipIf(!probe().supported)('copied bytes by cause', () => {
  it('a MSG_ZEROCOPY stream at MSS 4108 is mapped; what is copied is accounted for', async () => {
    const { socket } = await serverAndSender({ bytes: 64 * MiB, seed: 91, mss: 4108 });
    const receiver = attach(socket, { mode: 'zerocopy' });
    const received = await drain(receiver, 91);
    const { stats } = receiver;
    expect(received.bytes).toBe(64 * MiB);
    expect(stats.bytesMapped / received.bytes).toBeGreaterThan(0.95);
    expect(sumOfCopyCauses(stats)).toBe(stats.bytesCopied);
    expect(stats.bytesCopiedUrgent + stats.bytesCopiedFallback + stats.bytesCopiedCopyMode).toBe(0);
    socket.destroy();
  });

  it('bytes after urgent marks are counted as urgent', async () => {
    // One mark: a second urgent byte that arrives before the first is read makes the
    // kernel put the first one in the stream (TCP has one urgent pointer).
    const marks = [3 * MiB + 7];
    const { socket } = await serverAndSender({ bytes: 8 * MiB, seed: 92, mss: 4108, oobAt: marks });
    const receiver = attach(socket, { chunkSize: 256 * 1024, mode: 'zerocopy' });
    const received = await drain(receiver, 92);
    const { stats } = receiver;
    // Urgent bytes are out of band: the stream has the rest, in order.
    expect(received.error).toBeNull();
    expect(received.bytes).toBe(8 * MiB);
    expect(stats.bytesCopiedUrgent).toBeGreaterThan(0);
    expect(sumOfCopyCauses(stats)).toBe(stats.bytesCopied);
    socket.destroy();
  });

  it('bytes copied while the pool is at its cap are counted as pool full', async () => {
    configure({ maxPinnedBytes: 4 * MiB });
    try {
      const { socket } = await serverAndSender({ bytes: 32 * MiB, seed: 93, mss: 4108 });
      const receiver = attach(socket, { chunkSize: MiB, mode: 'zerocopy' });
      // Hold every mapped chunk to the end: the cap fills and the rest arrives copied.
      const held: Chunk[] = [];
      let bytes = 0;
      for await (const chunk of receiver) {
        bytes += chunk.data.length;
        if (chunk.mapped) held.push(chunk);
        else chunk.release();
      }
      for (const chunk of held) chunk.release();
      const { stats } = receiver;
      expect(bytes).toBe(32 * MiB);
      expect(stats.bytesMapped).toBeLessThanOrEqual(4 * MiB);
      expect(stats.bytesCopiedPoolFull).toBeGreaterThan(16 * MiB);
      expect(sumOfCopyCauses(stats)).toBe(stats.bytesCopied);
      socket.destroy();
    } finally {
      configure({ maxPinnedBytes: 64 * MiB });
    }
  });
});
