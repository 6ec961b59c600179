import type * as net from 'node:net';
import { Readable } from 'node:stream';

import { native, type NativeEventHandler, type NativeReceiverStats } from './binding';
import { codedError } from './errors';

/** A received piece of the stream, in order. */
export interface Chunk {
  /**
   * The bytes. Over pages mapped from the kernel when `mapped` is true (no copy was made),
   * otherwise a Buffer of copied bytes. Reads as length 0 after `release()`.
   */
  readonly data: Buffer;
  /** True when `data` is a view of kernel-mapped payload pages. */
  readonly mapped: boolean;
  /**
   * Gives the memory back (MADV_DONTNEED for mapped chunks) and empties `data` and every
   * view of it. Idempotent. Do not release a chunk whose Buffer is still queued in a
   * `socket.write()` or `fs.write()`: Node reads it later and would fail with EFAULT.
   */
  release(): void;
}

/** Counters for one receiver. */
export interface ReceiverStats {
  /** Bytes delivered over mapped pages. */
  bytesMapped: number;
  /** Bytes delivered as copies (unmappable runs, copy mode, pool full). */
  bytesCopied: number;
  /** Part of bytesCopied copied only because the pool was at its pinned-bytes cap. */
  bytesCopiedPoolFull: number;
  /** Chunks delivered over mapped pages. */
  chunksMapped: number;
  /** Chunks delivered as copies. */
  chunksCopied: number;
  /** Readiness wake-ups handled. */
  wakeups: number;
  /** getsockopt(TCP_ZEROCOPY_RECEIVE) calls. */
  zerocopyCalls: number;
  /** recv() calls. */
  recvCalls: number;
  /** Times the receiver paused because the pool was full (whenPoolFull: 'wait'). */
  poolWaits: number;
  /** The path now in use: 'zerocopy' maps what it can, 'copy' copies everything. */
  path: 'zerocopy' | 'copy';
  /** Why this receiver copies although zero-copy was asked for, or null. */
  fallbackReason: string | null;
}

/** Receives one TCP stream as chunks. `for await (const chunk of receiver)` reads to the end. */
export interface ZeroCopyReceiver extends AsyncIterable<Chunk> {
  /** The next chunk, or null at the end of the stream. Rejects once with a socket error. */
  read(): Promise<Chunk | null>;
  /** Counters so far. */
  readonly stats: ReceiverStats;
  /** Stops receiving, frees queued chunks and ends pending reads with null. Idempotent. */
  close(): void;
  /**
   * The stream as a Readable of Buffers, for `stream.pipeline()`. Mapped chunks are not
   * released by hand: each is released when the last reference to its Buffer is dropped,
   * which Node's own writers (fs, net) keep until their write completed, so a consumer
   * can never see pages go away under a pending write. Until the collector gets there,
   * the pool's cap bounds pinned memory and later data arrives copied. Call it once,
   * and do not mix it with read().
   */
  readable(): Readable;
}

/** Where chunks come from: the native receiver, or a plain net.Socket where there is none. */
export interface ChunkSource {
  start(): void;
  stop(): void;
  close(): void;
  /** Deliver what is queued now, then end (the socket was closed under us). */
  drain?(): void;
  stats(): NativeReceiverStats;
}

const EMPTY = Buffer.alloc(0);

class ReceivedChunk implements Chunk {
  #data: Buffer;
  #released = false;
  readonly mapped: boolean;

  constructor(data: Buffer, mapped: boolean) {
    this.#data = data;
    this.mapped = mapped;
  }

  get data(): Buffer {
    return this.#data;
  }

  release(): void {
    if (this.#released) return;
    this.#released = true;
    const data = this.#data;
    if (native !== null) {
      // Mapped: unmap and detach. Copied: detach too, so both kinds read as length 0.
      if (this.mapped) native.releaseChunk(data);
      else native.detachBuffer(data);
    }
    this.#data = EMPTY;
  }
}

type Waiter = { resolve(chunk: Chunk | null): void; reject(error: Error): void };

/** Chunks queued ahead of the reader before receiving pauses. */
const READ_AHEAD = 2;

/**
 * The ZeroCopyReceiver behind attach(): a queue of chunks in stream order fed by a
 * ChunkSource (the native receiver, or the socket's own reads without the addon), with
 * flow control (the source runs only while a read waits or the read-ahead has room).
 */
export class Receiver implements ZeroCopyReceiver {
  readonly #source: ChunkSource;
  readonly #socket: net.Socket;
  readonly #queue: ReceivedChunk[] = [];
  readonly #waiters: Waiter[] = [];
  #ended = false;
  #error: Error | null = null;
  #receiving = false;
  #finalStats: NativeReceiverStats | null = null;
  #readable = false;
  #closeError: Error | null = null;
  readonly #onSocketClose = (): void => {
    // Node closed the socket: destroy(), or a failed write. The native source still
    // holds the kernel socket through its dup and drains what is queued there (data, then
    // a reset the kernel saw), ending with the error Node saw, if any.
    this.#closeError = this.#socket.errored ?? null;
    if (this.#source.drain !== undefined) this.#source.drain();
    else this.#finish(this.#closeError);
  };

  readonly #waitsForPool: boolean;

  constructor(
    socket: net.Socket,
    makeSource: (onEvent: NativeEventHandler) => ChunkSource,
    options: { waitsForPool?: boolean } = {},
  ) {
    this.#socket = socket;
    this.#waitsForPool = options.waitsForPool === true;
    this.#source = makeSource(this.#onEvent);
    socket.once('close', this.#onSocketClose);
  }

  readonly #onEvent: NativeEventHandler = (chunks, mappedMask, error, eof) => {
    for (let i = 0; i < chunks.length; i++) {
      this.#queue.push(new ReceivedChunk(chunks[i], (mappedMask & (1 << i)) !== 0));
    }
    if (error !== null) this.#finish(error);
    else if (eof) this.#finish(this.#closeError);
    this.#settleWaiters();
    this.#adjustFlow();
  };

  read(): Promise<Chunk | null> {
    if (this.#queue.length > 0 || this.#ended) {
      const result = this.#take();
      this.#adjustFlow();
      return result;
    }
    return new Promise<Chunk | null>((resolve, reject) => {
      this.#waiters.push({ resolve, reject });
      this.#adjustFlow();
    });
  }

  get stats(): ReceiverStats {
    const raw = this.#finalStats ?? this.#source.stats();
    return {
      bytesMapped: raw.bytesMapped,
      bytesCopied: raw.bytesCopied,
      bytesCopiedPoolFull: raw.bytesCopiedPoolFull,
      chunksMapped: raw.chunksMapped,
      chunksCopied: raw.chunksCopied,
      wakeups: raw.wakeups,
      zerocopyCalls: raw.zerocopyCalls,
      recvCalls: raw.recvCalls,
      poolWaits: raw.poolWaits,
      path: raw.zerocopy ? 'zerocopy' : 'copy',
      fallbackReason: raw.fallbackReason,
    };
  }

  close(): void {
    this.#finish(null);
    // Whatever is still queued, the reader no longer wants: chunks nobody read would pin
    // pages until collected, and a pending error is moot.
    for (const chunk of this.#queue.splice(0)) chunk.release();
    this.#error = null;
    this.#settleWaiters();
  }

  readable(): Readable {
    if (this.#readable) {
      throw codedError(Error, 'ERR_TCPZC_ALREADY_READABLE', 'readable() was already called on this receiver');
    }
    if (this.#waitsForPool) {
      // Its chunks return to the pool only when collected: waiting for them can hang.
      throw codedError(
        Error,
        'ERR_TCPZC_READABLE_WAIT',
        "readable() needs whenPoolFull: 'copy'; with 'wait' the stream could stop for good",
      );
    }
    this.#readable = true;
    const stream: Readable = new Readable({
      // One chunk ahead is enough: chunks are large, and the receiver reads ahead too.
      highWaterMark: 1,
      read: (): void => {
        this.read().then(
          (chunk) => stream.push(chunk === null ? null : chunk.data),
          (error: Error) => stream.destroy(error),
        );
      },
      destroy: (error, callback): void => {
        this.close();
        callback(error);
      },
    });
    return stream;
  }

  async *[Symbol.asyncIterator](): AsyncIterator<Chunk> {
    for (;;) {
      const chunk = await this.read();
      if (chunk === null) return;
      yield chunk;
    }
  }

  /** Resolves the next read from the queue, or with the end/error once it is empty. */
  #take(): Promise<Chunk | null> {
    const chunk = this.#queue.shift();
    if (chunk !== undefined) return Promise.resolve(chunk);
    const error = this.#error;
    if (error !== null) {
      this.#error = null; // reported once; later reads see the end
      return Promise.reject(error);
    }
    return Promise.resolve(null);
  }

  #settleWaiters(): void {
    while (this.#waiters.length > 0 && (this.#queue.length > 0 || this.#ended)) {
      const waiter = this.#waiters.shift() as Waiter;
      this.#take().then(waiter.resolve, waiter.reject);
    }
  }

  /** Receive while a reader waits or the read-ahead has room; pause otherwise. */
  #adjustFlow(): void {
    if (this.#ended) return;
    const wanted = this.#waiters.length > 0 || this.#queue.length < READ_AHEAD;
    if (wanted && !this.#receiving) {
      this.#receiving = true;
      this.#source.start();
    } else if (!wanted && this.#receiving) {
      this.#receiving = false;
      this.#source.stop();
    }
  }

  /** Ends the stream: no more chunks after those queued, then `error` (if any), then null. */
  #finish(error: Error | null): void {
    if (this.#ended) return;
    this.#ended = true;
    this.#error = error;
    this.#receiving = false;
    this.#socket.removeListener('close', this.#onSocketClose);
    this.#finalStats = this.#source.stats();
    this.#source.close();
    this.#settleWaiters();
  }
}

/**
 * A source built on the socket's own reads, for where the addon is missing: same
 * interface, every byte copied by Node.
 */
export function socketCopySource(socket: net.Socket, onEvent: NativeEventHandler, reason: string): ChunkSource {
  const stats: NativeReceiverStats = {
    bytesMapped: 0,
    bytesCopied: 0,
    bytesCopiedPoolFull: 0,
    chunksMapped: 0,
    chunksCopied: 0,
    wakeups: 0,
    zerocopyCalls: 0,
    recvCalls: 0,
    poolWaits: 0,
    zerocopy: false,
    fallbackReason: reason,
  };
  const onData = (data: Buffer): void => {
    stats.bytesCopied += data.length;
    stats.chunksCopied++;
    stats.wakeups++;
    onEvent([data], 0, null, false);
  };
  const onEnd = (): void => onEvent([], 0, null, true);
  const onError = (error: Error): void => onEvent([], 0, error, false);
  socket.pause();
  socket.on('data', onData);
  socket.on('end', onEnd);
  socket.on('error', onError);
  return {
    start: () => socket.resume(),
    stop: () => socket.pause(),
    close: () => {
      socket.removeListener('data', onData);
      socket.removeListener('end', onEnd);
      socket.removeListener('error', onError);
      socket.pause();
    },
    stats: () => ({ ...stats }),
  };
}
