import * as net from 'node:net';

import { describe, expect, it } from 'vitest';

import { attach, probe } from '../src/index';
import { fillPattern, PatternChecker, startSender } from '../src/testing';
import { connectPaused, drain, listen, loopbackFixture, MiB } from './helpers';

const { servers, serverAndClient } = loopbackFixture();

describe('stream integrity', () => {
  it('maps >= 95% of a 256 MiB MSG_ZEROCOPY stream at MSS 4108, every byte right', async () => {
    const { server, port, accepted } = await listen();
    servers.push(server);
    const sender = startSender({ port, bytes: 256 * MiB, seed: 11, mss: 4108 });
    const socket = await accepted;
    const receiver = attach(socket, { mode: 'zerocopy' });
    const received = await drain(receiver, 11);
    socket.destroy();
    const sent = await sender.done;

    expect(received.error).toBeNull();
    expect(received.bytes).toBe(256 * MiB);
    expect(sent.bytes).toBe(256 * MiB);
    expect(receiver.stats.bytesMapped + receiver.stats.bytesCopied).toBe(256 * MiB);
    expect(receiver.stats.bytesMapped).toBe(received.mappedBytes);
    if (probe().supported) {
      expect(received.mappedBytes / received.bytes).toBeGreaterThanOrEqual(0.95);
      expect(receiver.stats.path).toBe('zerocopy');
    } else {
      expect(received.mappedBytes).toBe(0);
    }
  });

  it('receives a 256 MiB stream from a plain net.Socket with random write sizes (1 B to 1 MiB)', async () => {
    const { server, port, accepted } = await listen();
    servers.push(server);
    const total = 256 * MiB;
    const seed = 12;
    const client = net.connect({ port, host: '127.0.0.1' });
    const socket = await accepted;
    const receiver = attach(socket, { chunkSize: 256 * 1024 });
    const draining = drain(receiver, seed);

    // A seeded generator: a failure names the seed, and the same seed repeats the run.
    let state = 0x2545f491;
    const random = (): number => {
      state ^= state << 13;
      state ^= state >>> 17;
      state ^= state << 5;
      return (state >>> 0) / 2 ** 32;
    };
    let offset = 0;
    while (offset < total) {
      // Log-uniform sizes, so tiny writes are as common as huge ones.
      const size = Math.min(total - offset, Math.max(1, Math.floor(2 ** (random() * 20))));
      const buffer = Buffer.allocUnsafe(size);
      fillPattern(buffer, offset, seed);
      offset += size;
      if (!client.write(buffer)) await new Promise((resolve) => client.once('drain', resolve));
    }
    client.end();

    const received = await draining;
    socket.destroy();
    expect(received.error).toBeNull();
    expect(received.bytes).toBe(total);
  });

  it('delivers a dribble of 1-byte writes as it comes, in order, without waiting for a full chunk', async () => {
    // Lockstep, so the check does not depend on timing: a plain Node client sends a
    // round of 1-byte writes and sends the next only once the receiver has handed out
    // all of it. A receiver that held bytes back for its 1 MiB chunk would stall a round.
    const { client, socket } = await serverAndClient();
    client.setNoDelay(true);
    const seed = 13;
    const rounds = 40;
    const perRound = 64;
    const stream = Buffer.alloc(rounds * perRound);
    fillPattern(stream, 0, seed);
    const receiver = attach(socket, { chunkSize: MiB });
    const checker = new PatternChecker(seed);
    let chunks = 0;
    for (let round = 0; round < rounds; round++) {
      const end = (round + 1) * perRound;
      for (let at = round * perRound; at < end; at++) client.write(stream.subarray(at, at + 1));
      while (checker.offset < end) {
        let timer: NodeJS.Timeout | undefined;
        const stalled = new Promise<never>((_, reject) => {
          timer = setTimeout(
            () => reject(new Error(`round ${round}: stuck at byte ${checker.offset} of ${end} for 10 s`)),
            10_000,
          );
        });
        const chunk = await Promise.race([receiver.read(), stalled]).finally(() => clearTimeout(timer));
        if (chunk === null) throw new Error(`round ${round}: the stream ended at byte ${checker.offset}`);
        checker.check(chunk.data);
        chunk.release();
        chunks++;
      }
      expect(checker.offset).toBe(end);
    }
    client.end();
    expect(await receiver.read()).toBeNull();
    expect(chunks).toBeGreaterThanOrEqual(rounds);
    socket.destroy();
  });

  it('hands out data before the stream ends when less than a chunk arrives', async () => {
    const { client, socket } = await serverAndClient();
    const receiver = attach(socket, { chunkSize: 4 * MiB });
    const payload = Buffer.alloc(100);
    fillPattern(payload, 0, 14);
    client.write(payload);
    // The connection stays open: the 100 bytes must come through on their own.
    const chunk = await receiver.read();
    expect(chunk).not.toBeNull();
    expect(chunk?.data.equals(payload)).toBe(true);
    chunk?.release();
    client.destroy();
    socket.destroy();
  });
});

describe('client sockets', () => {
  it('maps on a client socket paused before it connected', async () => {
    const sender = startSender({ port: 0, listen: true, bytes: 64 * MiB, seed: 15, mss: 4108 });
    const socket = await connectPaused(await sender.listening);
    const receiver = attach(socket, { mode: 'zerocopy' });
    const received = await drain(receiver, 15);
    socket.destroy();
    await sender.done;
    expect(received.error).toBeNull();
    expect(received.bytes).toBe(64 * MiB);
    if (probe().supported) expect(received.mappedBytes / received.bytes).toBeGreaterThanOrEqual(0.95);
  });
});
