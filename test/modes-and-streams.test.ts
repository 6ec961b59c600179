import { once } from 'node:events';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { pipeline } from 'node:stream/promises';

import { describe, expect, it } from 'vitest';

import { attach, poolStats, probe } from '../src/index';
import { Receiver, socketCopySource } from '../src/receiver';
import { copySocketLifecycle } from '../src/socket-lifecycle';
import { PatternChecker, startSender } from '../src/testing';
import {
  drain,
  errorWith,
  listen,
  loopbackFixture,
  MiB,
  readHighOrderAllocDisable,
  withHighOrderAllocLock,
} from './helpers';

const { servers, senders, serverAndSender } = loopbackFixture();
const zerocopyStream = (bytes: number, seed: number) => serverAndSender({ bytes, seed, mss: 4108 });

describe('modes', () => {
  it("'copy' never maps", async () => {
    const { socket } = await zerocopyStream(64 * MiB, 71);
    const receiver = attach(socket, { mode: 'copy' });
    const received = await drain(receiver, 71);
    expect(received.bytes).toBe(64 * MiB);
    expect(received.mappedBytes).toBe(0);
    expect(receiver.stats.path).toBe('copy');
    expect(receiver.stats.zerocopyCalls).toBe(0);
    expect(receiver.stats.fallbackReason).toBeNull();
    expect(receiver.stats.bytesCopiedCopyMode).toBe(64 * MiB);
    socket.destroy();
  });

  it.skipIf(!probe().supported)("'zerocopy' maps and reports no fallback", async () => {
    const { socket } = await zerocopyStream(64 * MiB, 72);
    const receiver = attach(socket, { mode: 'zerocopy' });
    const received = await drain(receiver, 72);
    expect(received.bytes).toBe(64 * MiB);
    expect(received.mappedBytes / received.bytes).toBeGreaterThan(0.95);
    expect(receiver.stats.path).toBe('zerocopy');
    socket.destroy();
  });

  it('a plain (unmappable) stream switches to copying per chunk instead of probing every segment', async (context) => {
    // A plain sender is unmappable on loopback only while net.core.high_order_alloc_disable
    // is 0; the sysctl test flips it, so take turns with it.
    await withHighOrderAllocLock(async () => {
      if (readHighOrderAllocDisable() === '1')
        context.skip('net.core.high_order_alloc_disable=1 makes plain senders mappable');
      const { server, port, accepted } = await listen();
      servers.push(server);
      const sender = startSender({ port, bytes: 128 * MiB, seed: 73, mode: 'plain' });
      senders.push(sender);
      const socket = await accepted;
      const receiver = attach(socket, { chunkSize: MiB, mode: 'zerocopy' });
      const received = await drain(receiver, 73);
      expect(received.bytes).toBe(128 * MiB);
      expect(received.mappedBytes).toBe(0);
      // Far fewer zero-copy calls than chunks: after a streak of misses it only copies.
      expect(receiver.stats.zerocopyCalls).toBeLessThan(receiver.stats.chunksCopied / 4);
      // Every byte is counted under its cause: runs shorter than a page.
      expect(receiver.stats.bytesCopiedShortRuns).toBe(128 * MiB);
      socket.destroy();
    });
  });
});

describe('without the native addon', () => {
  it('the net.Socket copy source delivers the same stream through the same API', async () => {
    const { server, port, accepted } = await listen();
    servers.push(server);
    const sender = startSender({ port, bytes: 32 * MiB, seed: 74, mss: 4108 });
    senders.push(sender);
    const socket = await accepted;
    // What attach() builds where the addon cannot load (macOS, no toolchain).
    const receiver = new Receiver(socket, (onEvent) => socketCopySource(socket, onEvent, 'no addon (test)'), {
      lifecycle: copySocketLifecycle,
    });
    const received = await drain(receiver, 74);
    expect(received.error).toBeNull();
    expect(received.bytes).toBe(32 * MiB);
    expect(received.mappedBytes).toBe(0);
    expect(receiver.stats.path).toBe('copy');
    expect(receiver.stats.fallbackReason).toBe('no addon (test)');
    expect(receiver.stats.bytesCopiedFallback).toBe(32 * MiB);
    socket.destroy();
  });
});

describe('readable()', () => {
  it('pipes 256 MiB into a file with bounded memory, byte-exact', async () => {
    const file = path.join(os.tmpdir(), `tcpzc-pipeline-${process.pid}.bin`);
    const { socket } = await zerocopyStream(256 * MiB, 75);
    const receiver = attach(socket, { mode: 'zerocopy' });
    let maxPinned = 0;
    const sampler = setInterval(() => (maxPinned = Math.max(maxPinned, poolStats().pinnedBytes)), 5);
    try {
      await pipeline(receiver.readable(), fs.createWriteStream(file));
      clearInterval(sampler);
      expect(maxPinned).toBeLessThanOrEqual(poolStats().maxPinnedBytes);
      expect(receiver.stats.bytesMapped + receiver.stats.bytesCopied).toBe(256 * MiB);
      if (probe().supported) expect(receiver.stats.bytesMapped).toBeGreaterThan(0);
      const checker = new PatternChecker(75);
      for await (const data of fs.createReadStream(file, { highWaterMark: 4 * MiB })) checker.check(data as Buffer);
      expect(checker.offset).toBe(256 * MiB);
    } finally {
      clearInterval(sampler);
      fs.rmSync(file, { force: true });
      socket.destroy();
    }
  });

  it('ends the pipeline with the socket error', async () => {
    const { server, port, accepted } = await listen();
    servers.push(server);
    const sender = startSender({ port, bytes: 64 * MiB, rstAfter: 8 * MiB, seed: 76, mss: 4108 });
    senders.push(sender);
    const socket = await accepted;
    const receiver = attach(socket);
    const sink = new (await import('node:stream')).Writable({ write: (_chunk, _encoding, callback) => callback() });
    await expect(pipeline(receiver.readable(), sink)).rejects.toMatchObject({ code: 'ECONNRESET' });
    socket.destroy();
  });

  it('can be asked for once', async () => {
    const { socket } = await zerocopyStream(MiB, 77);
    const receiver = attach(socket);
    const readable = receiver.readable();
    expect(() => receiver.readable()).toThrow(errorWith({ code: 'ERR_TCPZC_ALREADY_READABLE' }));
    readable.destroy();
    await once(readable, 'close');
    expect(await receiver.read()).toBeNull();
    socket.destroy();
  });
});
