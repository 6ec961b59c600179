import type * as net from 'node:net';
import { finished, Readable, type Writable } from 'node:stream';

import type { AutoPath, AutoPathMember, MeasuredCost } from './auto-path';
import { native, type NativeEventHandler, type NativeReceiverStats } from './binding';
import { abortError, codedError } from './errors';
import type { SocketLifecycle } from './socket-lifecycle';

/** A received piece of the stream, in order. `using chunk = ...` releases it at scope exit. */
export interface Chunk extends Disposable {
  /**
   * The bytes. Over pages mapped from the kernel when `mapped` is true (no copy was made),
   * otherwise a Buffer of copied bytes. Reads as length 0 after `release()`.
   */
  readonly data: Buffer;
  /** True when `data` is a view of kernel-mapped payload pages. */
  readonly mapped: boolean;
  /**
   * Gives the memory back (MADV_DONTNEED for mapped chunks) and empties `data` and every
   * view of it. Idempotent. Do not release a chunk whose Buffer is still in use by an
   * asynchronous operation (`socket.write()`, `fs.write()`, `zlib.gzip()`, ...): release
   * it in that operation's callback, or use `receiver.pipeTo()`.
   */
  release(): void;
  /** Same as release(), for `using`. */
  [Symbol.dispose](): void;
}

/** Counters for one receiver. */
export interface ReceiverStats {
  /** Bytes delivered over mapped pages. */
  bytesMapped: number;
  /** Bytes delivered as copies (unmappable runs, copy mode, pool full). */
  bytesCopied: number;
  /** Part of bytesCopied copied only because the pool was at its pinned-bytes cap. */
  bytesCopiedPoolFull: number;
  /**
   * Part of bytesCopied the kernel could not map because it did not sit in whole 4 KiB
   * pages: payload runs shorter than a page (MTU below 4096 + headers, a NIC without
   * header/data split, a loopback sender whose pages are not single pages, messages
   * under a page), and the copy-only spells a stream found unmappable gets.
   */
  bytesCopiedShortRuns: number;
  /** Part of bytesCopied read past an urgent (MSG_OOB) mark, where mapping stops. */
  bytesCopiedUrgent: number;
  /**
   * Part of bytesCopied copied because zero-copy was unavailable or failed: after a
   * kernel error in 'auto' mode (see fallbackReason), no addon, or no external Buffers.
   */
  bytesCopiedFallback: number;
  /** Part of bytesCopied copied because the receiver runs in mode 'copy'. */
  bytesCopiedCopyMode: number;
  /** Part of bytesCopied drained by copying after Node closed the socket (destroy()). */
  bytesCopiedDraining: number;
  /** Chunks delivered over mapped pages. */
  chunksMapped: number;
  /** Chunks delivered as copies. */
  chunksCopied: number;
  /**
   * Copied chunks received into the package's reusable blocks (128 KiB and more, while the
   * consumer holds chunks past the next read; see poolStats().idleCopyBytes). Always 0
   * without the addon, and on Node 21+ (where ArrayBuffer.prototype.transfer exists)
   * without direct Buffers (probe().features.directBuffers).
   */
  chunksInReusedMemory: number;
  /** Readiness wake-ups handled. */
  wakeups: number;
  /** getsockopt(TCP_ZEROCOPY_RECEIVE) calls. */
  zerocopyCalls: number;
  /** recv() calls. */
  recvCalls: number;
  /** Times the receiver paused because the pool was full (whenPoolFull: 'wait'). */
  poolWaits: number;
  /** Mapped chunks turned into private copies because something wrote into them. */
  chunksCopiedOnWrite: number;
  /** The path now in use: 'zerocopy' maps what it can, 'copy' copies everything. */
  path: 'zerocopy' | 'copy';
  /** Why this receiver copies although zero-copy was asked for, or null. */
  fallbackReason: string | null;
  /**
   * mode 'auto': which path it chose and why, in a sentence (e.g. "copy: copying measured
   * 150 µs of CPU per MB, mapping 201 (consumer included; 1.34x), re-checked every
   * 512 MiB"), or what it is measuring now. null in modes 'zerocopy' and 'copy'.
   */
  decision: string | null;
  /** mode 'auto': the last CPU time per MB measured on each path; null in other modes. */
  measuredCpu: MeasuredCost | null;
}

/** Options of `receiver.pipeTo()`. */
export interface PipeToOptions {
  /** End the destination after the last chunk (default true). */
  end?: boolean;
}

/**
 * Receives one TCP stream as chunks. `for await (const chunk of receiver)` reads to the
 * end; leaving the loop early (break, return, throw) closes the receiver and destroys the
 * socket, as leaving a Readable's iterator does.
 */
export interface ZeroCopyReceiver extends AsyncIterable<Chunk>, AsyncDisposable {
  /** The next chunk, or null at the end of the stream. Rejects once with a socket error. */
  read(): Promise<Chunk | null>;
  /** The chunks in order; an iterator as an async generator's (iterable itself). */
  [Symbol.asyncIterator](): AsyncIterableIterator<Chunk>;
  /** Counters so far. */
  readonly stats: ReceiverStats;
  /**
   * Stops receiving, frees queued and read-ahead chunks and ends pending reads with null.
   * Before the end of the stream was read it also destroys the socket (nobody can read
   * it any more); after it the socket is left as it is. Chunks already taken stay valid
   * until released. Idempotent.
   */
  close(): void;
  /** close(), for `await using`. */
  [Symbol.asyncDispose](): Promise<void>;
  /**
   * Writes every chunk to `destination` and releases each one in its write callback (once
   * the destination is done with the memory), waits for 'drain' when write() returns
   * false, and ends the destination after the last chunk. Resolves when the destination
   * has finished; rejects with the first error of either side (the receiver is closed
   * and the destination destroyed, as stream.pipeline() does). Pinned memory stays
   * bounded by the destination's highWaterMark, without waiting for the garbage collector.
   */
  pipeTo(destination: Writable, options?: PipeToOptions): Promise<void>;
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
  /** Auto mode: copy (true) or map (false) from the next wake-up on. */
  setCopying?(copying: boolean): void;
}

const EMPTY = Buffer.alloc(0);
/** What async generators' iterators inherit from. */
const AsyncIteratorPrototype = Object.getPrototypeOf(
  Object.getPrototypeOf(
    async function* () {
      // An empty generator: only its prototype chain is wanted.
    }.prototype,
  ),
) as object;

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

  [Symbol.dispose](): void {
    this.release();
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

interface Waiter {
  resolve: (chunk: Chunk | null) => void;
  reject: (error: Error) => void;
}

/**
 * One 'abort' listener per signal, however many receivers share it (a server-wide
 * shutdown signal would otherwise trip EventTarget's listener-leak warning at 11).
 */
const abortWatchers = new WeakMap<AbortSignal, Set<() => void>>();

function onAbort(signal: AbortSignal, callback: () => void): () => void {
  let watchers = abortWatchers.get(signal);
  if (watchers === undefined) {
    const set = new Set<() => void>();
    watchers = set;
    abortWatchers.set(signal, set);
    signal.addEventListener(
      'abort',
      () => {
        for (const watcher of [...set]) watcher();
        set.clear();
      },
      { once: true },
    );
  }
  const set = watchers;
  set.add(callback);
  return () => set.delete(callback);
}

/** Chunks queued ahead of the reader before receiving pauses. */
const READ_AHEAD = 2;

/** What attach() hands the Receiver besides its source. */
export interface ReceiverOptions {
  /** whenPoolFull: 'wait' (readable() refuses it). */
  waitsForPool?: boolean;
  /**
   * Takes over what the socket needs from its reading side ('end', destroy, bytesRead,
   * timeouts); called once the source exists, so a failed attach leaves the socket as it was.
   */
  lifecycle: (socket: net.Socket) => SocketLifecycle;
  /** Aborting closes the receiver and destroys the socket; pending reads reject. */
  signal?: AbortSignal | undefined;
  /** mode 'auto' with zero-copy available: the shared measurement this receiver joins. */
  autoPath?: AutoPath | undefined;
  /** mode 'auto' without zero-copy: why it copies (stats.decision). */
  autoUnavailable?: string | undefined;
}

/**
 * The ZeroCopyReceiver behind attach(): a queue of chunks in stream order fed by a
 * ChunkSource (the native receiver, or the socket's own reads without the addon), with
 * flow control (the source runs only while a read waits or the read-ahead has room).
 */
export class Receiver implements ZeroCopyReceiver {
  readonly #source: ChunkSource;
  readonly #socket: net.Socket;
  readonly #lifecycle: SocketLifecycle;
  readonly #queue: ReceivedChunk[] = [];
  readonly #waiters: Waiter[] = [];
  #ended = false; // the source is done: nothing after the queue but #error or null
  #endTaken = false; // the reader got null or the error: the stream is over for it
  #error: Error | null = null;
  #receiving = false;
  #finalStats: NativeReceiverStats | null = null;
  #readable = false;
  #piping = false;
  #closeError: Error | null = null;
  #socketClosed = false; // Node closed the socket before the end: what follows is a drain
  #endedByPeer = false; // the stream ended with the peer's FIN, not cut short here
  readonly #onSocketClose = (): void => {
    this.#socketClosed = true;
    // Node closed the socket: destroy(), or a failed write. The native source still
    // holds the kernel socket through its dup and drains what is queued there (data, then
    // a reset the kernel saw), ending with the error Node saw, if any.
    this.#closeError = this.#socket.errored ?? null;
    if (this.#source.drain !== undefined) this.#source.drain();
    else this.#finish(this.#closeError);
  };
  readonly #signal: AbortSignal | undefined;
  #stopWatchingSignal: () => void = () => undefined;

  readonly #waitsForPool: boolean;
  readonly #auto: AutoPathMember | null = null;
  // Auto mode: how many chunks at the head of the queue came before the last path switch.
  #staleAhead = 0;
  readonly #autoUnavailable: string | null;

  constructor(socket: net.Socket, makeSource: (onEvent: NativeEventHandler) => ChunkSource, options: ReceiverOptions) {
    this.#socket = socket;
    this.#waitsForPool = options.waitsForPool === true;
    this.#source = makeSource(this.#onEvent);
    this.#autoUnavailable = options.autoUnavailable ?? null;
    if (options.autoPath !== undefined && this.#source.setCopying !== undefined) {
      const source = this.#source;
      this.#auto = options.autoPath.join((path) => {
        source.setCopying?.(path === 'copy');
        // What is queued now was received on the old path.
        this.#staleAhead = this.#queue.length;
      });
    }
    this.#lifecycle = options.lifecycle(socket);
    socket.once('close', this.#onSocketClose);
    this.#signal = options.signal;
    if (this.#signal !== undefined) this.#stopWatchingSignal = onAbort(this.#signal, () => this.#abort());
  }

  readonly #onEvent: NativeEventHandler = (first, second, mappedMask, error, eof) => {
    let bytes = 0;
    if (first !== undefined) {
      this.#queue.push(new ReceivedChunk(first, (mappedMask & 1) !== 0));
      bytes += first.length;
    }
    if (second !== undefined) {
      this.#queue.push(new ReceivedChunk(second, (mappedMask & 2) !== 0));
      bytes += second.length;
    }
    if (bytes > 0) this.#lifecycle.received(bytes);
    if (error !== null) {
      this.#finish(error);
      this.#lifecycle.failed(error);
    } else if (eof) {
      if (!this.#socketClosed) this.#endedByPeer = true;
      this.#finish(this.#closeError);
    }
    this.#settleWaiters();
    this.#adjustFlow();
  };

  read(): Promise<Chunk | null> {
    if (this.#queue.length > 0 || this.#ended) {
      const result = this.#takeAsPromise();
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
      bytesCopiedShortRuns: raw.bytesCopiedShortRuns,
      bytesCopiedUrgent: raw.bytesCopiedUrgent,
      bytesCopiedFallback: raw.bytesCopiedFallback,
      bytesCopiedCopyMode: raw.bytesCopiedCopyMode,
      bytesCopiedDraining: raw.bytesCopiedDraining,
      chunksMapped: raw.chunksMapped,
      chunksCopied: raw.chunksCopied,
      chunksInReusedMemory: raw.chunksInReusedMemory,
      wakeups: raw.wakeups,
      zerocopyCalls: raw.zerocopyCalls,
      recvCalls: raw.recvCalls,
      poolWaits: raw.poolWaits,
      chunksCopiedOnWrite: raw.chunksCopiedOnWrite,
      path: raw.zerocopy ? 'zerocopy' : 'copy',
      fallbackReason: raw.fallbackReason,
      decision: this.#decision(raw),
      measuredCpu: this.#auto?.cost ?? null,
    };
  }

  #decision(raw: NativeReceiverStats): string | null {
    if (this.#auto !== null) {
      // A zero-copy error made the source copy for good: that, not the measurement, rules.
      return raw.fallbackReason !== null ? `copy: ${raw.fallbackReason}` : this.#auto.decision;
    }
    return this.#autoUnavailable !== null ? `copy: ${this.#autoUnavailable}` : null;
  }

  close(): void {
    this.#stop(null);
  }

  // eslint-disable-next-line @typescript-eslint/require-await -- async so that anything close() throws arrives as a rejection
  async [Symbol.asyncDispose](): Promise<void> {
    this.close();
  }

  readable(): Readable {
    if (this.#readable) {
      throw codedError(Error, 'ERR_TCPZC_ALREADY_READABLE', 'readable() was already called on this receiver');
    }
    if (this.#piping) {
      throw codedError(Error, 'ERR_TCPZC_ALREADY_PIPING', 'pipeTo() and readable() take the whole stream, once');
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
    // Made after close() or after the end was read: it just ends.
    const endsAtOnce = this.#endTaken;
    const stream: Readable = new Readable({
      // One chunk ahead is enough: chunks are large, and the receiver reads ahead too.
      highWaterMark: 1,
      read: (): void => {
        this.read().then(
          (chunk) => {
            if (chunk !== null) stream.push(chunk.data);
            else if (this.#endedByPeer || endsAtOnce) stream.push(null);
            // The socket was destroyed or the receiver closed elsewhere: not the whole stream.
            else
              stream.destroy(
                codedError(Error, 'ERR_STREAM_PREMATURE_CLOSE', 'the stream ended before the peer ended it'),
              );
          },
          (error: unknown) => stream.destroy(error as Error),
        );
      },
      destroy: (error, callback): void => {
        // After the end this only frees what is left; before it, the socket goes too.
        this.close();
        callback(error);
      },
    });
    return stream;
  }

  async pipeTo(destination: Writable, options: PipeToOptions = {}): Promise<void> {
    if (
      typeof destination !== 'object' ||
      // eslint-disable-next-line @typescript-eslint/no-unnecessary-condition -- JavaScript callers pass anything
      destination === null ||
      typeof destination.write !== 'function' ||
      typeof destination.end !== 'function' ||
      typeof destination.on !== 'function'
    ) {
      throw codedError(TypeError, 'ERR_INVALID_ARG_TYPE', 'pipeTo(destination): destination must be a Writable stream');
    }
    // eslint-disable-next-line @typescript-eslint/no-unnecessary-condition -- JavaScript callers pass anything
    if (typeof options !== 'object' || options === null) {
      throw codedError(TypeError, 'ERR_INVALID_ARG_TYPE', 'pipeTo(destination, options): options must be an object');
    }
    const endDestination = options.end ?? true;
    if (this.#piping || this.#readable) {
      throw codedError(Error, 'ERR_TCPZC_ALREADY_PIPING', 'pipeTo() and readable() take the whole stream, once');
    }
    this.#piping = true;

    // Set by the callbacks below while this awaits. TypeScript does not follow that: `as`
    // keeps it from reading as always null, and throwIfFailed() reads it after each wait.
    let failure = null as Error | null;
    let finishedOk = false;
    let needDrain = false;
    let pendingWrites = 0;
    let wake = (): void => undefined;
    // One wait at a time: for 'drain', for the last write callbacks, for 'finish'.
    const waitFor = (condition: () => boolean): Promise<void> =>
      new Promise<void>((resolve) => {
        const check = (): void => {
          if (failure === null && !condition()) return;
          wake = () => undefined;
          resolve();
        };
        wake = check;
        check();
      });
    const fail = (error: Error): void => {
      if (failure !== null) return;
      failure = error;
      // A read waiting for data that never comes ends now (with null: the error is
      // pipeTo's to report, and later reads see the end).
      this.#stop(null);
      wake();
    };
    const throwIfFailed = (): void => {
      if (failure !== null) throw failure;
    };
    const onDrain = (): void => {
      needDrain = false;
      wake();
    };
    destination.on('drain', onDrain);
    // Errors and an early close of the destination, whenever they come (eos reports a
    // close before 'finish' as ERR_STREAM_PREMATURE_CLOSE).
    const stopWatching = finished(destination, { readable: false }, (error) => {
      if (error !== undefined && error !== null) fail(error);
      else {
        finishedOk = true;
        wake();
      }
    });

    try {
      for await (const chunk of this) {
        if (failure !== null) {
          chunk.release();
          throw failure;
        }
        pendingWrites++;
        // Released once the destination reports the write done (or failed): only then
        // is Node finished with the memory.
        const flowing = destination.write(chunk.data, (error) => {
          chunk.release();
          pendingWrites--;
          if (error !== undefined && error !== null) fail(error);
          else wake();
        });
        if (!flowing) {
          needDrain = true;
          await waitFor(() => !needDrain);
        }
        throwIfFailed();
      }
      throwIfFailed();
      if (!this.#endedByPeer) {
        // The socket was destroyed or the receiver closed elsewhere: the copy is partial.
        throw codedError(Error, 'ERR_STREAM_PREMATURE_CLOSE', 'pipeTo(): the stream ended before the peer ended it');
      }
      await waitFor(() => pendingWrites === 0);
      if (endDestination) {
        destination.end((error?: Error | null) => {
          if (error !== undefined && error !== null) fail(error);
        });
        await waitFor(() => finishedOk);
      }
      throwIfFailed();
      stopWatching();
    } catch (error) {
      fail(error as Error);
      // As stream.pipeline(): either side failing takes both down. The watcher keeps an
      // 'error' listener on the destination, so its own late 'error' is not unhandled.
      destination.on('error', () => undefined);
      if (typeof destination.destroy === 'function' && !destination.destroyed) destination.destroy(error as Error);
      throw error;
    } finally {
      destination.removeListener('drain', onDrain);
    }
  }

  /**
   * A plain iterator object rather than an async generator: one promise per chunk, with
   * no generator resumption and no extra await turn for each yield.
   */
  [Symbol.asyncIterator](): AsyncIterableIterator<Chunk> {
    let finished = false;
    // Left early (break, return, throw in the loop body, a stream error): as for a
    // Readable's iterator, nothing reads this stream any more.
    const leave = (): void => {
      if (finished) return;
      finished = true;
      this.close();
    };
    const done = (value?: unknown): IteratorReturnResult<undefined> => ({ done: true, value: value as undefined });
    // On %AsyncIteratorPrototype%, as a generator's would be: [Symbol.asyncIterator]
    // returning itself, and whatever the runtime adds there (asyncDispose, helpers).
    const iterator = Object.create(AsyncIteratorPrototype) as AsyncIterableIterator<Chunk>;
    iterator.next = (): Promise<IteratorResult<Chunk>> => {
      if (finished) return Promise.resolve(done());
      return this.read().then(
        (chunk): IteratorResult<Chunk> => {
          if (chunk !== null) return { done: false, value: chunk };
          finished = true; // the whole stream was read: the socket ends as Node's would
          return done();
        },
        (error: unknown) => {
          leave();
          throw error;
        },
      );
    };
    iterator.return = (value?: unknown): Promise<IteratorResult<Chunk>> => {
      leave();
      return Promise.resolve(done(value));
    };
    iterator.throw = (error?: unknown): Promise<IteratorResult<Chunk>> => {
      leave();
      return Promise.reject(error instanceof Error ? error : new Error(String(error)));
    };
    return iterator;
  }

  /** The next chunk from the queue, or null at the end; throws the stream's error, once. */
  #take(): Chunk | null {
    const chunk = this.#queue.shift();
    if (chunk !== undefined) {
      // Auto mode counts a chunk when the reader takes it, not when it arrives: the CPU a
      // window sees is the consumer's work on the chunks before, and chunks queued ahead
      // would put a whole window of the old path's work into the next one (a file writer
      // at 4 MiB chunks measured mapping 6-9x cheaper than copying, the other way round).
      const fresh = this.#staleAhead === 0;
      if (!fresh) this.#staleAhead--;
      this.#auto?.delivered(chunk.data.length, chunk.mapped ? chunk.data.length : 0, fresh);
      return chunk;
    }
    const error = this.#error;
    if (!this.#endTaken) {
      this.#endTaken = true;
      this.#stopWatchingSignal();
      if (error === null) this.#lifecycle.ended();
    }
    if (error !== null) {
      this.#error = null; // reported once; later reads see the end
      throw error;
    }
    return null;
  }

  /** #take() as a settled promise. */
  #takeAsPromise(): Promise<Chunk | null> {
    try {
      return Promise.resolve(this.#take());
    } catch (error) {
      return Promise.reject(error instanceof Error ? error : new Error(String(error)));
    }
  }

  #settleWaiters(): void {
    while (this.#waiters.length > 0 && (this.#queue.length > 0 || this.#ended)) {
      const waiter = this.#waiters.shift() as Waiter;
      let chunk: Chunk | null;
      try {
        chunk = this.#take();
      } catch (error) {
        waiter.reject(error instanceof Error ? error : new Error(String(error)));
        continue;
      }
      waiter.resolve(chunk);
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

  #abort(): void {
    if (this.#endTaken) return;
    this.#stop(abortError(this.#signal?.reason));
  }

  /**
   * The reader is done before the end (close(), abort, early exit): frees every queued
   * and read-ahead chunk at once and lets the socket go; pending reads get `reason` (once)
   * or null.
   */
  #stop(reason: Error | null): void {
    for (const chunk of this.#queue.splice(0)) chunk.release();
    this.#staleAhead = 0;
    if (this.#endTaken) return; // the reader already had its end: nothing more to tell it
    this.#endTaken = true; // no 'end' for the socket: the reader did not read to it
    this.#stopWatchingSignal();
    // A pending stream error is moot now; `reason` takes its place.
    if (this.#ended) this.#error = reason;
    else this.#finish(reason);
    this.#lifecycle.abandoned();
    this.#settleWaiters();
  }

  /** Ends the stream: no more chunks after those queued, then `error` (if any), then null. */
  #finish(error: Error | null): void {
    if (this.#ended) return;
    this.#ended = true;
    this.#error = error;
    this.#receiving = false;
    this.#socket.removeListener('close', this.#onSocketClose);
    this.#finalStats = this.#source.stats();
    this.#auto?.leave();
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
    bytesCopiedShortRuns: 0,
    bytesCopiedUrgent: 0,
    bytesCopiedFallback: 0,
    bytesCopiedCopyMode: 0,
    bytesCopiedDraining: 0,
    chunksMapped: 0,
    chunksCopied: 0,
    chunksInReusedMemory: 0,
    wakeups: 0,
    zerocopyCalls: 0,
    recvCalls: 0,
    poolWaits: 0,
    chunksCopiedOnWrite: 0,
    zerocopy: false,
    fallbackReason: reason,
  };
  const onData = (data: Buffer): void => {
    stats.bytesCopied += data.length;
    stats.bytesCopiedFallback += data.length;
    stats.chunksCopied++;
    stats.wakeups++;
    onEvent(data, undefined, 0, null, false);
  };
  const onEnd = (): void => onEvent(undefined, undefined, 0, null, true);
  const onError = (error: Error): void => onEvent(undefined, undefined, 0, error, false);
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
