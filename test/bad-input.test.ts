import { spawnSync } from 'node:child_process';
import { once } from 'node:events';
import * as fs from 'node:fs';
import * as net from 'node:net';
import * as os from 'node:os';
import * as path from 'node:path';

import { describe, expect, it } from 'vitest';

import { native } from '../src/binding';
import { attach, configure, poolStats, probe, type AttachOptions, type Chunk } from '../src/index';
import { PatternChecker, startSender } from '../src/testing';
import { connectPaused, drain, listen, loopbackFixture, MiB } from './helpers';

const { servers, sockets, senders, serverAndClient: acceptedSocket, zerocopyStream } = loopbackFixture();

function expectCoded(fn: () => unknown, Class: ErrorConstructor, code: string, message: RegExp): void {
  let thrown: unknown;
  try {
    fn();
  } catch (error) {
    thrown = error;
  }
  expect(thrown).toBeInstanceOf(Class);
  expect((thrown as { code?: string }).code).toBe(code);
  expect((thrown as Error).message).toMatch(message);
}

describe('attach() rejects what it cannot receive from', () => {
  it.each([
    ['an object', {}],
    ['null', null],
    ['a number', 3],
    ['a stream that is not a socket', fs.createReadStream(__filename)],
  ])('%s: TypeError ERR_INVALID_ARG_TYPE', (_name, value) => {
    expectCoded(
      () => attach(value as unknown as net.Socket),
      TypeError,
      'ERR_INVALID_ARG_TYPE',
      /must be a net\.Socket/,
    );
  });

  it('a socket that never connected', () => {
    expectCoded(() => attach(new net.Socket()), Error, 'ERR_SOCKET_NOT_CONNECTED', /not connected/);
  });

  it('a socket still connecting', async () => {
    const { server, port } = await listen();
    servers.push(server);
    const client = net.connect({ port, host: '127.0.0.1' });
    sockets.push(client);
    expectCoded(() => attach(client), Error, 'ERR_SOCKET_NOT_CONNECTED', /not connected/);
  });

  it('a destroyed socket', async () => {
    const { socket } = await acceptedSocket();
    socket.destroy();
    expectCoded(() => attach(socket), Error, 'ERR_SOCKET_CLOSED', /destroyed/);
  });

  it('a socket that already reads (client not paused before connect)', async () => {
    const { server, port } = await listen();
    servers.push(server);
    const client = net.connect({ port, host: '127.0.0.1' });
    sockets.push(client);
    await once(client, 'connect');
    expectCoded(() => attach(client), Error, 'ERR_TCPZC_SOCKET_READING', /already started reading.*pauseOnConnect/);
  });

  it('a server socket accepted without pauseOnConnect', async () => {
    const server = net.createServer();
    servers.push(server);
    server.listen(0, '127.0.0.1');
    await once(server, 'listening');
    const client = net.connect({ port: (server.address() as net.AddressInfo).port, host: '127.0.0.1' });
    sockets.push(client);
    const [socket] = (await once(server, 'connection')) as [net.Socket];
    sockets.push(socket);
    expectCoded(() => attach(socket), Error, 'ERR_TCPZC_SOCKET_READING', /already started reading/);
  });

  it('a Unix domain socket', async () => {
    const socketPath = path.join(os.tmpdir(), `tcpzc-${process.pid}-${Date.now()}.sock`);
    const server = net.createServer({ pauseOnConnect: true });
    servers.push(server);
    server.listen(socketPath);
    await once(server, 'listening');
    const client = net.connect(socketPath);
    sockets.push(client);
    const [socket] = (await once(server, 'connection')) as [net.Socket];
    sockets.push(socket);
    expectCoded(() => attach(socket), TypeError, 'ERR_INVALID_ARG_VALUE', /not a TCP socket/);
  });

  it('a second attach() of the same socket', async () => {
    const { socket } = await acceptedSocket();
    const receiver = attach(socket);
    expectCoded(() => attach(socket), Error, 'ERR_TCPZC_ALREADY_ATTACHED', /already has a receiver/);
    receiver.close();
  });
});

describe('attach() rejects bad options, and the socket loses nothing', () => {
  const cases: [string, unknown, ErrorConstructor, string, RegExp][] = [
    ['options not an object', 5, TypeError, 'ERR_INVALID_ARG_TYPE', /options must be an object/],
    ['options an array', [], TypeError, 'ERR_INVALID_ARG_TYPE', /options must be an object/],
    ['an unknown option', { chunksize: 4096 }, TypeError, 'ERR_INVALID_ARG_VALUE', /unknown option 'chunksize'/],
    ['chunkSize 0', { chunkSize: 0 }, RangeError, 'ERR_OUT_OF_RANGE', /chunkSize/],
    ['chunkSize below a page', { chunkSize: 4095 }, RangeError, 'ERR_OUT_OF_RANGE', /chunkSize/],
    ['chunkSize above 64 MiB', { chunkSize: 64 * MiB + 1 }, RangeError, 'ERR_OUT_OF_RANGE', /chunkSize/],
    ['chunkSize fractional', { chunkSize: 65536.5 }, RangeError, 'ERR_OUT_OF_RANGE', /chunkSize/],
    ['chunkSize NaN', { chunkSize: Number.NaN }, RangeError, 'ERR_OUT_OF_RANGE', /chunkSize/],
    ['chunkSize a string', { chunkSize: '65536' }, RangeError, 'ERR_OUT_OF_RANGE', /chunkSize/],
    ['mode unknown', { mode: 'fast' }, TypeError, 'ERR_INVALID_ARG_VALUE', /mode must be/],
    ['whenPoolFull unknown', { whenPoolFull: 'block' }, TypeError, 'ERR_INVALID_ARG_VALUE', /whenPoolFull/],
    ['flushDelayMs negative', { flushDelayMs: -1 }, RangeError, 'ERR_OUT_OF_RANGE', /flushDelayMs/],
    ['flushDelayMs Infinity', { flushDelayMs: Infinity }, RangeError, 'ERR_OUT_OF_RANGE', /flushDelayMs/],
  ];
  it.each(cases)('%s', async (_name, options, Class, code, message) => {
    const { server, port, accepted } = await listen();
    servers.push(server);
    const sender = startSender({ port, bytes: 4 * MiB, seed: 41, mss: 4108 });
    senders.push(sender);
    const socket = await accepted;
    sockets.push(socket);
    expectCoded(() => attach(socket, options as AttachOptions), Class, code, message);
    // The failed attach left the socket as it was: a correct attach gets every byte.
    const received = await drain(attach(socket), 41);
    expect(received.error).toBeNull();
    expect(received.bytes).toBe(4 * MiB);
  });
});

describe('configure() rejects bad values', () => {
  it.each([[-1], [1.5], [Number.NaN], [2 ** 40], ['64M']])('maxPinnedBytes %s', (value) => {
    expectCoded(() => configure({ maxPinnedBytes: value as number }), RangeError, 'ERR_OUT_OF_RANGE', /maxPinnedBytes/);
  });
  it('options not an object', () => {
    expectCoded(() => configure(null as unknown as object), TypeError, 'ERR_INVALID_ARG_TYPE', /options/);
  });
  it('copyOnWrite not a boolean', () => {
    for (const value of ['yes', 1, null]) {
      expectCoded(
        () => configure({ copyOnWrite: value as unknown as boolean }),
        TypeError,
        'ERR_INVALID_ARG_TYPE',
        /copyOnWrite/,
      );
    }
  });
});

describe.skipIf(native === null)('the raw binding survives any input', () => {
  const binding = native as NonNullable<typeof native>;
  const onEvent = (): void => undefined;
  const options = { chunkSize: 65536, mode: 1 as const, poolFull: 0 as const, flushDelayMs: 20 };

  it.each([
    ['no arguments', []],
    ['a negative fd', [-1, options, onEvent]],
    ['a huge fd', [2 ** 40, options, onEvent]],
    ['fd NaN', [Number.NaN, options, onEvent]],
    ['a closed fd', [99999, options, onEvent]],
    ['a file fd', [0, options, onEvent]],
    ['options not an object', [0, 1, onEvent]],
    ['callback missing', [0, options]],
  ])('Receiver(%s) throws', (_name, args) => {
    expect(() => new (binding.Receiver as unknown as new (...a: unknown[]) => unknown)(...args)).toThrow();
  });

  it.each([
    ['chunkSize huge', { ...options, chunkSize: 2 ** 53 }],
    ['chunkSize negative', { ...options, chunkSize: -4096 }],
    ['mode out of range', { ...options, mode: 7 }],
    ['poolFull out of range', { ...options, poolFull: -1 }],
  ])('Receiver option %s throws RangeError', async (_name, badOptions) => {
    const { socket } = await acceptedSocket();
    const fd = (socket as unknown as { _handle: { fd: number } })._handle.fd;
    expect(() => new binding.Receiver(fd, badOptions as typeof options, onEvent)).toThrow(RangeError);
  });

  it('releaseChunk and detachBuffer throw TypeError for what is not a Buffer', () => {
    expect(() => binding.releaseChunk(42 as unknown as Buffer)).toThrow(TypeError);
    expect(() => binding.detachBuffer('x' as unknown as Buffer)).toThrow(TypeError);
  });
});

// Only Buffers the package itself made carry its type tag; every other Buffer is left
// alone. Before the tag, detachBuffer() took any Buffer covering its whole ArrayBuffer:
// Buffer.from(small.buffer) (Node's shared 8 KiB pool) was detached, and every later
// Buffer.from('x') threw RangeError.
describe.skipIf(native === null)('releaseChunk and detachBuffer touch only the chunks the package made', () => {
  const binding = native as NonNullable<typeof native>;

  it("refuse Buffers from elsewhere, which keep their bytes; Node's Buffer pool keeps working", () => {
    // In a child process: a detached pool would leave this one unable to make small Buffers.
    const result = spawnSync(process.execPath, [path.join(__dirname, 'fixtures', 'foreign-buffers-child.js')], {
      encoding: 'utf8',
      timeout: 30_000,
    });
    const report = JSON.parse(result.stdout.split('\n')[0] || '{}') as {
      results: { name: string; released: boolean; detached: boolean; kept: boolean }[];
      afterwards: Record<string, unknown>;
    };
    // eslint-disable-next-line @typescript-eslint/no-unnecessary-condition -- a child that failed prints '{}': then this shows its stderr
    expect(report.results?.length, result.stderr).toBe(7);
    for (const { name, released, detached, kept } of report.results) {
      expect({ name, released, detached, kept }).toEqual({ name, released: false, detached: false, kept: true });
    }
    expect(report.afterwards).toEqual({ small: 'abc', from: 'x', allocUnsafe: 7, concat: 'ab', base64: 'eHl6' });
    expect(result.stderr).toBe('');
    expect(result.status).toBe(0);
  });

  it.each([
    ['mapped', 'auto' as const],
    ['copied', 'copy' as const],
  ])('refuse views and copies of a real %s chunk, which stays whole; the chunk itself releases', async (kind, mode) => {
    if (kind === 'mapped' && !probe().supported) return;
    const { receiver } = await zerocopyStream(8 * MiB, 121, { mode });
    let chunk: Chunk | null = null;
    for (;;) {
      const next = await receiver.read();
      if (next === null) break;
      if (next.mapped === (kind === 'mapped')) {
        chunk = next;
        break;
      }
      next.release();
    }
    expect(chunk).not.toBeNull();
    const data = (chunk as Chunk).data;
    const snapshot = Buffer.from(data);
    const views: [string, Uint8Array][] = [
      ['subarray(1)', data.subarray(1)],
      ['subarray(0, length - 1)', data.subarray(0, data.length - 1)],
      ['Buffer.from(data) (a copy)', Buffer.from(data)],
    ];
    // A mapped chunk is found by its address among the pool's live chunks, so another
    // whole view of its memory is the same chunk (tested below); a copied chunk's Buffer
    // must be the tagged object itself.
    const wholeViews: [string, Uint8Array][] = [
      ['subarray() of the whole chunk', data.subarray()],
      ['Buffer.from(buffer, byteOffset, length)', Buffer.from(data.buffer, data.byteOffset, data.length)],
      ['new Uint8Array(data.buffer)', new Uint8Array(data.buffer)],
    ];
    if (kind === 'copied') views.push(...wholeViews);
    for (const [name, view] of views) {
      expect(binding.releaseChunk(view as Buffer), name).toBe(false);
      expect(binding.detachBuffer(view as Buffer), name).toBe(false);
    }
    expect(data.length).toBe(snapshot.length);
    expect(data.equals(snapshot)).toBe(true);
    // The entry point of its kind takes the chunk itself.
    if (kind === 'mapped') {
      expect(binding.detachBuffer(data.subarray(1))).toBe(false);
      // detachBuffer would empty the Buffer but leave the pages pinned: it refuses.
      expect(binding.detachBuffer(data)).toBe(false);
      expect(data.length).toBe(snapshot.length);
      // Another whole view of the same memory releases the same chunk, once.
      const pinnedBefore = poolStats().pinnedBytes;
      expect(binding.releaseChunk(new Uint8Array(data.buffer) as Buffer)).toBe(true);
      expect(poolStats().pinnedBytes).toBe(pinnedBefore - snapshot.length);
      for (const [name, view] of wholeViews) expect(view.length, name).toBe(0);
      expect(binding.releaseChunk(data)).toBe(false); // already released
      (chunk as Chunk).release(); // a no-op now
    } else {
      expect(binding.releaseChunk(data)).toBe(false); // not mapped
      expect(binding.detachBuffer(data)).toBe(true);
    }
    expect(data.length).toBe(0);
    receiver.close();
  });
});

describe('connected clients work too', () => {
  it('a client paused before it connected can be attached', async () => {
    const server = net.createServer((socket) => {
      socket.end(Buffer.alloc(10000, 7));
    });
    servers.push(server);
    server.listen(0, '127.0.0.1');
    await once(server, 'listening');
    const client = await connectPaused((server.address() as net.AddressInfo).port);
    sockets.push(client);
    const receiver = attach(client);
    let bytes = 0;
    for await (const chunk of receiver) {
      expect(chunk.data.every((byte) => byte === 7)).toBe(true);
      bytes += chunk.data.length;
      chunk.release();
    }
    expect(bytes).toBe(10000);
  });
});

describe('wrong states', () => {
  async function stream(bytes: number, seed: number) {
    const { server, port, accepted } = await listen();
    servers.push(server);
    const sender = startSender({ port, bytes, seed, mss: 4108 });
    senders.push(sender);
    const socket = await accepted;
    sockets.push(socket);
    return socket;
  }

  it('read() after close() returns null; close() twice does nothing; stats stay readable', async () => {
    const receiver = attach(await stream(4 * MiB, 111));
    (await receiver.read())?.release();
    receiver.close();
    receiver.close();
    expect(await receiver.read()).toBeNull();
    expect(receiver.stats.bytesMapped + receiver.stats.bytesCopied).toBeGreaterThan(0);
  });

  it('release() after close(), after the socket is gone, and twice: harmless, and the pages are freed', async () => {
    const socket = await stream(8 * MiB, 112);
    const receiver = attach(socket);
    const first = (await receiver.read()) as NonNullable<Awaited<ReturnType<typeof receiver.read>>>;
    const second = (await receiver.read()) as typeof first;
    receiver.close();
    first.release();
    socket.destroy();
    second.release();
    second.release();
    expect(first.data.length).toBe(0);
    expect(second.data.length).toBe(0);
  });

  it('concurrent read() calls get consecutive chunks, in order', async () => {
    const receiver = attach(await stream(16 * MiB, 113), { chunkSize: 256 * 1024 });
    const checker = new PatternChecker(113);
    for (;;) {
      const batch = await Promise.all([receiver.read(), receiver.read(), receiver.read()]);
      for (const chunk of batch) {
        if (chunk === null) continue;
        checker.check(chunk.data);
        chunk.release();
      }
      if (batch.includes(null)) break;
    }
    expect(checker.offset).toBe(16 * MiB);
  });

  it('a stream error rejects one read, later reads return null', async () => {
    const { server, port, accepted } = await listen();
    servers.push(server);
    const sender = startSender({ port, bytes: 4 * MiB, rstAfter: 100_000, seed: 114, mss: 4108 });
    senders.push(sender);
    const socket = await accepted;
    sockets.push(socket);
    const receiver = attach(socket);
    await sender.done;
    const received = await drain(receiver, 114);
    expect(received.error?.code).toBe('ECONNRESET');
    expect(await receiver.read()).toBeNull();
  });

  it('readable() twice throws ERR_TCPZC_ALREADY_READABLE; after close() it just ends', async () => {
    const receiver = attach(await stream(MiB, 115));
    receiver.close();
    const readable = receiver.readable();
    expectCoded(() => receiver.readable(), Error, 'ERR_TCPZC_ALREADY_READABLE', /already called/);
    const pieces: Buffer[] = [];
    for await (const piece of readable) pieces.push(piece as Buffer);
    expect(pieces).toEqual([]);
  });

  it('startSender() with bad options: the sender refuses, done rejects', async () => {
    const sender = startSender({ port: 1, bytes: -5 });
    await expect(sender.done).rejects.toThrow(/exited with 2/);
  });
});
