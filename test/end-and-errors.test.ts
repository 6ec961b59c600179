import { once } from 'node:events';

import { describe, expect, it } from 'vitest';

import { attach, poolStats, probe } from '../src/index';
import { fillPattern, PatternChecker } from '../src/testing';
import { drain, loopbackFixture, MiB } from './helpers';

const { serverAndSender, serverAndClient } = loopbackFixture();

describe('end of stream', () => {
  it('ends iteration at FIN, after the last byte, and read() keeps returning null', async () => {
    const { sender, socket } = await serverAndSender({ bytes: 5 * MiB + 123, seed: 31, mss: 4108 });
    const receiver = attach(socket);
    const received = await drain(receiver, 31);
    expect(received.error).toBeNull();
    expect(received.bytes).toBe(5 * MiB + 123);
    expect(await receiver.read()).toBeNull();
    expect(await receiver.read()).toBeNull();
    socket.destroy(); // the sender waits for our close before it reports
    await sender.done;
  });

  it('ends an empty stream at once', async () => {
    const { socket } = await serverAndSender({ bytes: 0, seed: 32 });
    const receiver = attach(socket);
    expect(await receiver.read()).toBeNull();
    socket.destroy();
  });
});

describe('socket errors', () => {
  it('delivers every byte queued before a reset, then fails with ECONNRESET', async () => {
    const bytes = 1_000_000;
    const { sender, socket } = await serverAndSender({ bytes: 4 * MiB, rstAfter: bytes, seed: 33, mss: 4108 });
    const receiver = attach(socket);
    // Do not read until the reset has arrived: everything is still queued in the kernel.
    await sender.done;
    await new Promise((resolve) => setTimeout(resolve, 50));
    const received = await drain(receiver, 33);
    expect(received.bytes).toBe(bytes);
    expect(received.error).toBeInstanceOf(Error);
    expect(received.error?.code).toBe('ECONNRESET');
    expect(received.error?.message).toMatch(/ECONNRESET/);
    expect(await receiver.read()).toBeNull();
    socket.destroy();
  });

  it('keeps the prefix intact when the reset comes mid-stream while reading', async () => {
    const { socket } = await serverAndSender({ bytes: 256 * MiB, rstAfter: 48 * MiB, seed: 34, mss: 4108 });
    const receiver = attach(socket, { chunkSize: 256 * 1024 });
    const received = await drain(receiver, 34);
    // drain() checked every byte it got against the pattern: a clean prefix.
    expect(received.bytes).toBeLessThanOrEqual(48 * MiB);
    expect(received.bytes).toBeGreaterThan(0);
    expect(received.error?.code).toBe('ECONNRESET');
    socket.destroy();
  });
});

describe('urgent data', () => {
  it('steps over OOB bytes mid-stream (not inline, as in Node) and keeps mapping', async () => {
    const { sender, socket } = await serverAndSender({
      bytes: 32 * MiB,
      oobAt: [1_000_000, 20_000_001],
      seed: 35,
      mss: 4108,
    });
    const receiver = attach(socket, { mode: 'zerocopy' });
    const received = await drain(receiver, 35);
    socket.destroy();
    const sent = await sender.done;
    expect(sent.oobBytes).toBe(2);
    expect(received.error).toBeNull();
    expect(received.bytes).toBe(32 * MiB);
    if (probe().supported) expect(received.mappedBytes / received.bytes).toBeGreaterThan(0.5);
  });
});

describe('urgent data at the end', () => {
  it('delivers the bytes after an urgent byte that arrived together with FIN', async () => {
    // The kernel counts queued bytes only up to an urgent mark, so at the mark with FIN
    // in, TCP_ZEROCOPY_RECEIVE says EIO (end) although 20 bytes follow.
    const bytes = 4 * MiB;
    const { socket } = await serverAndSender({ bytes, oobAt: [bytes - 20], seed: 42, mss: 4108 });
    const receiver = attach(socket);
    await new Promise((resolve) => setTimeout(resolve, 200)); // everything, FIN included, is queued
    const received = await drain(receiver, 42);
    expect(received.error).toBeNull();
    expect(received.bytes).toBe(bytes);
    socket.destroy();
  });
});

describe('the socket around the receiver', () => {
  it('stays writable while receiving', async () => {
    const { client, socket } = await serverAndClient();
    const receiver = attach(socket, { chunkSize: 64 * 1024 });
    let acks = '';
    client.on('data', (data: Buffer) => (acks += data.toString()));

    const total = 16 * MiB;
    const payload = Buffer.alloc(total);
    fillPattern(payload, 0, 36);
    client.end(payload);
    let chunks = 0;
    const received = await drain(receiver, 36, () => {
      chunks++;
      socket.write('.');
    });
    socket.end('done');
    await once(client, 'end');
    expect(received.error).toBeNull();
    expect(received.bytes).toBe(total);
    expect(acks).toBe('.'.repeat(chunks) + 'done');
  });

  it('ends iteration promptly when the socket is destroyed, pending reads included', async () => {
    const { socket } = await serverAndSender({
      bytes: 1024 * MiB,
      seed: 37,
      mss: 4108,
      pauseAt: 2 * MiB,
      pauseMs: 5000,
    });
    const receiver = attach(socket);
    let bytes = 0;
    while (bytes < 2 * MiB) {
      const chunk = await receiver.read();
      expect(chunk).not.toBeNull();
      bytes += chunk?.data.length ?? 0;
      chunk?.release();
    }
    // The sender now pauses: this read waits, and must end when the socket goes.
    const pending = receiver.read();
    const started = Date.now();
    socket.destroy();
    expect(await pending).toBeNull();
    expect(Date.now() - started).toBeLessThan(1000);
    expect(await receiver.read()).toBeNull();
  });

  it('close() ends pending reads and frees chunks nobody read', async () => {
    const baseline = poolStats().pinnedBytes;
    const { socket } = await serverAndSender({ bytes: 64 * MiB, seed: 38, mss: 4108 });
    const receiver = attach(socket);
    const first = await receiver.read();
    first?.release();
    // Let the read-ahead fill up, then close with chunks still queued.
    await new Promise((resolve) => setTimeout(resolve, 100));
    receiver.close();
    expect(await receiver.read()).toBeNull();
    expect(poolStats().pinnedBytes).toBe(baseline);
    receiver.close();
    socket.destroy();
  });
});

describe('the socket closed by Node', () => {
  it('a failed write closes the socket: queued bytes still arrive, then an error, never a clean end', async () => {
    const { client, socket } = await serverAndClient();
    socket.on('error', () => undefined); // the write below fails; that is the point
    const receiver = attach(socket, { chunkSize: 64 * 1024 });
    const payload = Buffer.alloc(50_000); // within the initial window: all of it is queued
    fillPattern(payload, 0, 39);
    client.write(payload);
    await new Promise((resolve) => setTimeout(resolve, 100));
    client.resetAndDestroy();
    await new Promise((resolve) => setTimeout(resolve, 50));
    socket.write('too late'); // hits the reset: Node destroys the socket
    await new Promise((resolve) => socket.once('close', resolve));
    const received = await drain(receiver, 39);
    expect(received.bytes).toBe(50_000);
    expect(received.error?.code).toMatch(/^(ECONNRESET|EPIPE)$/);
  });

  it('destroy() with bytes still queued delivers them, then ends', async () => {
    const { client, socket } = await serverAndClient();
    const receiver = attach(socket, { chunkSize: 64 * 1024 });
    // Less than the initial receive window: all of it is queued in our kernel.
    const payload = Buffer.alloc(50_000);
    fillPattern(payload, 0, 40);
    client.write(payload);
    await new Promise((resolve) => setTimeout(resolve, 100));
    socket.destroy();
    const received = await drain(receiver, 40);
    expect(received.error).toBeNull();
    expect(received.bytes).toBe(50_000);
    client.destroy();
  });
});

describe('the socket closed by Node, draining', () => {
  it('destroy() in front of an urgent byte still delivers the bytes queued behind it', async () => {
    // The kernel's queue count stops at the urgent mark; the drain must step over it.
    const { socket } = await serverAndSender({ bytes: 6000, oobAt: [3000], lingerMs: 2000, seed: 43, mode: 'plain' });
    const receiver = attach(socket, { chunkSize: 4096 });
    await new Promise((resolve) => setTimeout(resolve, 200)); // all 6000 bytes queued, no FIN
    socket.destroy();
    const received = await drain(receiver, 43);
    expect(received.error).toBeNull();
    expect(received.bytes).toBe(6000);
  });

  it('a long drain (many small chunks, several turns of the loop) runs to its end', async () => {
    const { client, socket } = await serverAndClient();
    const receiver = attach(socket, { chunkSize: 4096 });
    const first = await (async () => {
      const payload = Buffer.alloc(4096);
      fillPattern(payload, 0, 44);
      client.write(payload);
      return receiver.read();
    })();
    // Queue what the receive window takes without reading.
    const rest = Buffer.alloc(1_000_000);
    fillPattern(rest, 4096, 44);
    client.write(rest);
    await new Promise((resolve) => setTimeout(resolve, 300));
    socket.destroy();
    const checker = new PatternChecker(44);
    checker.check(first?.data ?? Buffer.alloc(0));
    first?.release();
    const received = await drain(receiver, checker);
    expect(received.error).toBeNull();
    // More than one turn of the drain loop (16 chunks a turn).
    expect(received.chunks).toBeGreaterThan(16);
    client.destroy();
  });
});

describe('close() after the end', () => {
  it('still frees the chunks read ahead, and clears a pending error', async () => {
    const baseline = poolStats().liveChunks;
    const { socket } = await serverAndSender({ bytes: 4 * MiB, seed: 41, mss: 4108 });
    const receiver = attach(socket, { chunkSize: MiB });
    const first = await receiver.read();
    first?.release();
    // Let the stream end with chunks still queued.
    await new Promise((resolve) => setTimeout(resolve, 200));
    receiver.close();
    expect(poolStats().liveChunks).toBe(baseline);
    expect(await receiver.read()).toBeNull();
    socket.destroy();
  });
});
