// Faults a real network and a real peer produce, each with its expected result.
import { once } from 'node:events';

import { describe, expect, it } from 'vitest';

import { attach } from '../src/index';
import { fillPattern, PatternChecker, startSender } from '../src/testing';
import { drain, listen, loopbackFixture, MiB, openFdCount } from './helpers';

const { serverAndSender, serverAndClient } = loopbackFixture();

const sleep = (ms: number): Promise<void> => new Promise((resolve) => setTimeout(resolve, ms));

describe('faults', () => {
  it('peer half-closes while we keep writing back (allowHalfOpen): we get all its bytes and it gets all of ours', async () => {
    const { client, socket } = await serverAndClient({ allowHalfOpen: true });
    const receiver = attach(socket, { chunkSize: 256 * 1024 });
    const upload = Buffer.alloc(8 * MiB);
    fillPattern(upload, 0, 101);
    client.end(upload); // half-close: the client still reads

    const replyChecker = new PatternChecker(102);
    client.on('data', (data: Buffer) => replyChecker.check(data));
    const clientEnded = once(client, 'end');
    let replyOffset = 0;
    const reply = async (bytes: number): Promise<void> => {
      const buffer = Buffer.alloc(bytes);
      fillPattern(buffer, replyOffset, 102);
      replyOffset += bytes;
      if (!socket.write(buffer)) await once(socket, 'drain');
    };
    const received = await drain(receiver, 101, () => void reply(64 * 1024));
    // After the peer's FIN, keep writing for a while, then end.
    for (let i = 0; i < 32; i++) await reply(128 * 1024);
    socket.end();
    await clientEnded;
    expect(received.error).toBeNull();
    expect(received.bytes).toBe(8 * MiB);
    expect(replyChecker.offset).toBe(replyOffset);
    client.destroy();
  });

  it('our side closes mid-stream: iteration ends at once, the sender sees the connection go, no fd is left', async () => {
    const fdsBefore = openFdCount();
    const { server, port, accepted } = await listen();
    const sender = startSender({ port, bytes: 1024 * MiB, seed: 103, mss: 4108 });
    const socket = await accepted;
    server.close();
    const receiver = attach(socket);
    const checker = new PatternChecker(103);
    for await (const chunk of receiver) {
      checker.check(chunk.data);
      chunk.release();
      if (checker.offset >= 8 * MiB) socket.destroy();
    }
    expect(checker.offset).toBeGreaterThanOrEqual(8 * MiB);
    expect(checker.offset).toBeLessThan(1024 * MiB);
    await expect(sender.done).rejects.toThrow(/exited with 3/); // EPIPE / ECONNRESET at the sender
    await sleep(50);
    expect(openFdCount()).toBe(fdsBefore);
  });

  it('the sender stalls for seconds and resumes: what came before the stall is delivered during it, nothing is lost', async () => {
    const { socket } = await serverAndSender({
      bytes: 64 * MiB,
      pauseAt: 16 * MiB + 1000,
      pauseMs: 2500,
      seed: 104,
      mss: 4108,
    });
    const receiver = attach(socket);
    const started = Date.now();
    let bytesAtStall = 0;
    const received = await drain(receiver, 104, () => {
      if (Date.now() - started < 2000) bytesAtStall = receiver.stats.bytesMapped + receiver.stats.bytesCopied;
    });
    expect(received.error).toBeNull();
    expect(received.bytes).toBe(64 * MiB);
    expect(bytesAtStall).toBe(16 * MiB + 1000); // the tail before the stall was flushed, not held for a chunk
    expect(Date.now() - started).toBeGreaterThanOrEqual(2500);
    socket.destroy();
  });

  it('SO_RCVLOWAT (chunkSize) larger than the whole stream: the bytes arrive while the connection is still open', async () => {
    const bytes = MiB + 7;
    const { socket } = await serverAndSender({ bytes, lingerMs: 3000, seed: 105, mss: 4108 });
    const receiver = attach(socket, { chunkSize: 64 * MiB });
    const started = Date.now();
    const checker = new PatternChecker(105);
    while (checker.offset < bytes) {
      const chunk = await receiver.read();
      expect(chunk).not.toBeNull();
      checker.check(chunk?.data ?? Buffer.alloc(0));
      chunk?.release();
    }
    // The sender lingers 3 s before its FIN: these bytes came through the flush timer.
    expect(Date.now() - started).toBeLessThan(2000);
    expect(await receiver.read()).toBeNull();
    socket.destroy();
  });
});
