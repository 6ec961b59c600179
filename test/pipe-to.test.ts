// receiver.pipeTo(): every chunk written with a callback and released in it, backpressure,
// the end, and errors on either side; pinned memory bounded without the garbage collector.
import { once } from 'node:events';
import * as fs from 'node:fs';
import * as net from 'node:net';
import * as os from 'node:os';
import * as path from 'node:path';
import { Writable } from 'node:stream';
import { pipeline } from 'node:stream/promises';
import * as zlib from 'node:zlib';

import { describe, expect, it } from 'vitest';

import { attach, poolStats, probe } from '../src/index';
import { PatternChecker } from '../src/testing';
import { errorWith, listen, loopbackFixture, MiB } from './helpers';

const { servers, sockets, serverAndSender } = loopbackFixture();
const sleep = (ms: number): Promise<void> => new Promise((resolve) => setTimeout(resolve, ms));

/** Resolves at 'close' (events.once would reject at 'error', which is not what is tested). */
function closeOf(stream: NodeJS.EventEmitter): Promise<void> {
  return new Promise((resolve) => stream.once('close', () => resolve()));
}

/** Samples the pool's pinned bytes until stopped; returns the highest seen. */
function watchPinned(): () => number {
  let peak = poolStats().pinnedBytes;
  const timer = setInterval(() => (peak = Math.max(peak, poolStats().pinnedBytes)), 2);
  return () => {
    clearInterval(timer);
    return Math.max(peak, poolStats().pinnedBytes);
  };
}

/** A Writable that checks the pattern and takes `delayMs` per write. */
function checkingWritable(seed: number, options: { delayMs?: number; highWaterMark?: number; failAt?: number } = {}) {
  const checker = new PatternChecker(seed);
  let finished = false;
  const writable = new Writable({
    highWaterMark: options.highWaterMark ?? 16 * 1024,
    write(data: Buffer, _encoding, callback) {
      if (options.failAt !== undefined && checker.offset + data.length > options.failAt) {
        callback(Object.assign(new Error('disk full (test)'), { code: 'ENOSPC' }));
        return;
      }
      const check = (): void => {
        checker.check(data); // reads every byte: a released chunk would read as empty
        callback();
      };
      if (options.delayMs) setTimeout(check, options.delayMs);
      else setImmediate(check);
    },
    final(callback) {
      finished = true;
      callback();
    },
  });
  return { writable, checker, finished: () => finished };
}

describe('pipeTo()', () => {
  it('into a file: 256 MiB byte-exact, each chunk released in its write callback, pinned memory bounded', async () => {
    const file = path.join(os.tmpdir(), `tcpzc-pipeto-${process.pid}.bin`);
    try {
      const baseline = poolStats();
      const { socket } = await serverAndSender({ bytes: 256 * MiB, seed: 61, mss: 4108 });
      const receiver = attach(socket, { mode: 'zerocopy' });
      const stopWatching = watchPinned();
      await receiver.pipeTo(fs.createWriteStream(file));
      const peak = stopWatching();
      expect(fs.statSync(file).size).toBe(256 * MiB);
      const checker = new PatternChecker(61);
      for await (const data of fs.createReadStream(file, { highWaterMark: 4 * MiB })) checker.check(data as Buffer);
      expect(checker.offset).toBe(256 * MiB);
      if (probe().supported) expect(receiver.stats.bytesMapped).toBeGreaterThan(0.9 * 256 * MiB);
      // One chunk in the file's write, one waiting for 'drain', the read-ahead: no GC needed.
      expect(peak - baseline.pinnedBytes).toBeLessThanOrEqual(6 * MiB);
      expect(poolStats().pinnedBytes).toBe(baseline.pinnedBytes);
    } finally {
      fs.rmSync(file, { force: true });
    }
  });

  it('into another socket (a forwarding proxy), byte-exact at the far end', async () => {
    const baseline = poolStats();
    const far = await listen();
    servers.push(far.server);
    const { socket } = await serverAndSender({ bytes: 128 * MiB, seed: 62, mss: 4108 });
    const outbound = net.connect({ port: far.port, host: '127.0.0.1' });
    sockets.push(outbound);
    await once(outbound, 'connect');
    const farSocket = await far.accepted;
    sockets.push(farSocket);
    const checker = new PatternChecker(62);
    const farDone = (async () => {
      for await (const data of farSocket) checker.check(data as Buffer);
    })();
    const stopWatching = watchPinned();
    await attach(socket).pipeTo(outbound);
    const peak = stopWatching();
    await farDone;
    expect(checker.offset).toBe(128 * MiB);
    expect(peak - baseline.pinnedBytes).toBeLessThanOrEqual(8 * MiB);
    expect(poolStats().pinnedBytes).toBe(baseline.pinnedBytes);
  });

  it('honours backpressure of a slow destination: pinned bytes stay at a few chunks', async () => {
    const baseline = poolStats();
    const { socket } = await serverAndSender({ bytes: 32 * MiB, seed: 63, mss: 4108 });
    const receiver = attach(socket, { chunkSize: 256 * 1024 });
    const { writable, checker, finished } = checkingWritable(63, { delayMs: 2, highWaterMark: 1 });
    const stopWatching = watchPinned();
    await receiver.pipeTo(writable);
    const peak = stopWatching();
    expect(checker.offset).toBe(32 * MiB);
    expect(finished()).toBe(true);
    // One in the destination's write, two read ahead, one in hand.
    expect(peak - baseline.pinnedBytes).toBeLessThanOrEqual(4 * 256 * 1024);
    expect(poolStats().pinnedBytes).toBe(baseline.pinnedBytes);
  });

  it('through zlib (threadpool reads the chunk): released only after the compressor is done with it', async () => {
    const { socket } = await serverAndSender({ bytes: 64 * MiB, seed: 64, mss: 4108 });
    const gzip = zlib.createGzip({ level: 1 });
    const gunzip = zlib.createGunzip();
    gzip.pipe(gunzip);
    const checker = new PatternChecker(64);
    gunzip.on('data', (data: Buffer) => checker.check(data));
    const gunzipEnded = once(gunzip, 'end');
    await attach(socket).pipeTo(gzip);
    await gunzipEnded;
    expect(checker.offset).toBe(64 * MiB);
  });

  it('{ end: false } leaves the destination open', async () => {
    const { socket } = await serverAndSender({ bytes: 4 * MiB, seed: 65, mss: 4108 });
    const { writable, checker, finished } = checkingWritable(65);
    await attach(socket).pipeTo(writable, { end: false });
    expect(checker.offset).toBe(4 * MiB);
    expect(finished()).toBe(false);
    expect(writable.writable).toBe(true);
    writable.end();
  });

  it('rejects with the destination error; the socket is destroyed and every chunk released', async () => {
    const baseline = poolStats();
    const { socket } = await serverAndSender({ bytes: 256 * MiB, seed: 66, mss: 4108 });
    const closed = once(socket, 'close');
    const { writable, checker } = checkingWritable(66, { failAt: 8 * MiB });
    const receiver = attach(socket);
    await expect(receiver.pipeTo(writable)).rejects.toMatchObject({ code: 'ENOSPC' });
    await closed;
    expect(checker.offset).toBeLessThanOrEqual(8 * MiB);
    await sleep(10);
    expect(poolStats().pinnedBytes).toBe(baseline.pinnedBytes);
    expect(await receiver.read()).toBeNull();
  });

  it('rejects when the destination is destroyed while the source is idle', async () => {
    const { socket } = await serverAndSender({ bytes: 64 * MiB, seed: 67, mss: 4108, pauseAt: MiB, pauseMs: 10_000 });
    const closed = once(socket, 'close');
    const { writable } = checkingWritable(67);
    const piping = attach(socket).pipeTo(writable);
    await sleep(200); // the sender pauses after 1 MiB: a read waits
    const started = Date.now();
    writable.destroy();
    await expect(piping).rejects.toMatchObject({ code: 'ERR_STREAM_PREMATURE_CLOSE' });
    expect(Date.now() - started).toBeLessThan(1000);
    await closed;
  });

  it('rejects with a socket error after writing every byte before it; the destination is destroyed', async () => {
    const { socket, sender } = await serverAndSender({ bytes: 8 * MiB, rstAfter: 1_000_000, seed: 68, mss: 4108 });
    const receiver = attach(socket);
    await sender.done;
    const { writable, checker } = checkingWritable(68);
    const errors: Error[] = [];
    writable.on('error', (error) => errors.push(error));
    await expect(receiver.pipeTo(writable)).rejects.toMatchObject({ code: 'ECONNRESET' });
    expect(checker.offset).toBe(1_000_000);
    expect(writable.destroyed).toBe(true);
  });

  it('into a file with no error listener: a reset rejects and the process lives (no unhandled error)', async () => {
    const file = path.join(os.tmpdir(), `tcpzc-pipeto-rst-${process.pid}.bin`);
    try {
      const { socket, sender } = await serverAndSender({ bytes: 8 * MiB, rstAfter: 1_000_000, seed: 70, mss: 4108 });
      const receiver = attach(socket);
      await sender.done;
      const destination = fs.createWriteStream(file);
      await expect(receiver.pipeTo(destination)).rejects.toMatchObject({ code: 'ECONNRESET' });
      await closeOf(destination); // an unhandled 'error' here would fail the test run
      expect(destination.destroyed).toBe(true);
    } finally {
      fs.rmSync(file, { force: true });
    }
  });

  it('into /dev/full: ENOSPC from an fs.WriteStream rejects, no unhandled error, nothing pinned', async () => {
    const baseline = poolStats();
    const { socket } = await serverAndSender({ bytes: 64 * MiB, seed: 71, mss: 4108 });
    const destination = fs.createWriteStream('/dev/full');
    await expect(attach(socket).pipeTo(destination)).rejects.toMatchObject({ code: 'ENOSPC' });
    await closeOf(destination);
    await sleep(10);
    expect(poolStats().pinnedBytes).toBe(baseline.pinnedBytes);
  });

  it('aborting the signal rejects with AbortError; the file stream is destroyed without an unhandled error', async () => {
    const file = path.join(os.tmpdir(), `tcpzc-pipeto-abort-${process.pid}.bin`);
    try {
      const { socket } = await serverAndSender({
        bytes: 64 * MiB,
        seed: 72,
        mss: 4108,
        pauseAt: 2 * MiB,
        pauseMs: 5000,
      });
      const controller = new AbortController();
      const destination = fs.createWriteStream(file);
      const piping = attach(socket, { signal: controller.signal }).pipeTo(destination);
      await sleep(100);
      controller.abort();
      await expect(piping).rejects.toMatchObject({ name: 'AbortError' });
      await closeOf(destination);
    } finally {
      fs.rmSync(file, { force: true });
    }
  });

  it('a destination destroyed while it ends makes pipeTo reject, not resolve', async () => {
    const { socket } = await serverAndSender({ bytes: MiB, seed: 73, mss: 4108 });
    const destination = new Writable({
      write: (_data, _encoding, callback) => setImmediate(callback),
      final: (callback) => setTimeout(callback, 200), // ending takes a while
    });
    destination.on('error', () => undefined);
    const piping = attach(socket).pipeTo(destination);
    const ending = new Promise<void>((resolve) => {
      const original = destination.end.bind(destination);
      destination.end = ((...args: Parameters<Writable['end']>) => {
        const result = original(...args);
        resolve();
        return result;
      }) as Writable['end'];
    });
    await ending;
    destination.destroy();
    const error = (await piping.then(
      () => null,
      (caught: unknown) => caught,
    )) as { code?: string } | null;
    expect(['ERR_STREAM_PREMATURE_CLOSE', 'ERR_STREAM_DESTROYED']).toContain(error?.code);
  });

  it('a socket destroyed mid-stream makes pipeTo and pipeline(readable()) reject: a partial copy is not a success', async () => {
    for (const how of ['pipeTo', 'readable'] as const) {
      const { socket } = await serverAndSender({
        bytes: 64 * MiB,
        seed: 74,
        mss: 4108,
        pauseAt: 2 * MiB,
        pauseMs: 5000,
      });
      const receiver = attach(socket);
      const { writable, checker } = checkingWritable(74);
      const piping = how === 'pipeTo' ? receiver.pipeTo(writable) : pipeline(receiver.readable(), writable);
      await sleep(150);
      socket.destroy();
      await expect(piping).rejects.toMatchObject({ code: 'ERR_STREAM_PREMATURE_CLOSE' });
      expect(checker.offset).toBe(2 * MiB);
    }
  });

  it('{ end: false } resolves only after every write callback', async () => {
    const baseline = poolStats();
    const { socket } = await serverAndSender({ bytes: 4 * MiB, seed: 75, mss: 4108 });
    let outstanding = 0;
    const destination = new Writable({
      highWaterMark: 64 * MiB, // never asks for 'drain': writes pile up
      write: (_data, _encoding, callback) => {
        outstanding++;
        setTimeout(() => {
          outstanding--;
          callback();
        }, 20);
      },
    });
    await attach(socket).pipeTo(destination, { end: false });
    expect(outstanding).toBe(0);
    // At most the baseline: an earlier test's chunk may be collected meanwhile.
    expect(poolStats().pinnedBytes).toBeLessThanOrEqual(baseline.pinnedBytes);
  });

  it('refuses a non-stream destination, and a second pipeTo()', async () => {
    const { socket } = await serverAndSender({ bytes: MiB, seed: 69 });
    const receiver = attach(socket);
    await expect(receiver.pipeTo({} as unknown as Writable)).rejects.toMatchObject({ code: 'ERR_INVALID_ARG_TYPE' });
    const { writable } = checkingWritable(69);
    const first = receiver.pipeTo(writable);
    await expect(receiver.pipeTo(checkingWritable(69).writable)).rejects.toMatchObject({
      code: 'ERR_TCPZC_ALREADY_PIPING',
    });
    expect(() => receiver.readable()).toThrow(errorWith({ code: 'ERR_TCPZC_ALREADY_PIPING' }));
    await first;
  });
});
