/**
 * tcp-zerocopy: zero-copy TCP receive for Node.js on Linux.
 *
 * `attach(socket)` turns a connected net.Socket that has not started reading into a
 * stream of chunks whose Buffers sit on payload pages the kernel mapped into the process
 * (mmap on a TCP socket + getsockopt(TCP_ZEROCOPY_RECEIVE)), copying only what cannot be
 * mapped. `probe()` tells what this machine supports.
 */
import * as net from 'node:net';

import {
  native,
  nativeLoadError,
  NativeMode,
  NativePoolFull,
  type NativeEventHandler,
  type NativeProbe,
  type NativeReceiver,
} from './binding';
import { autoPathFor } from './auto-path';
import { abortError, codedError } from './errors';
import {
  Receiver,
  socketCopySource,
  type Chunk,
  type PipeToOptions,
  type ReceiverStats,
  type ZeroCopyReceiver,
} from './receiver';
import { copySocketLifecycle, nativeSocketLifecycle } from './socket-lifecycle';

export type { Chunk, PipeToOptions, ReceiverStats, ZeroCopyReceiver };
export type { MeasuredCost, ReceivePath } from './auto-path';
export { isTcpZeroCopyError, TCP_ZEROCOPY_ERROR_CODES } from './errors';
export type { TcpZeroCopyError, TcpZeroCopyErrorCode, TcpZeroCopyWarningCode } from './errors';

/** Kernel and runtime features zero-copy receive depends on. */
export interface ProbeFeatures {
  /** The native addon is built and loaded. */
  nativeAddon: boolean;
  /** mmap() on a TCP socket and getsockopt(TCP_ZEROCOPY_RECEIVE) work (Linux >= 4.18). */
  zerocopyReceive: boolean;
  /** Size of struct tcp_zerocopy_receive the kernel accepts: 16, 24, 40 or 64 (0 if none). */
  structSize: number;
  /** The kernel reports queued bytes and socket errors in the call (Linux >= 5.7). */
  inqAndError: boolean;
  /** Small reads and leftovers are copied in the same call (copybuf, Linux >= 5.11). */
  copybuf: boolean;
  /** The kernel can skip its TLB flush for ranges known to be empty (Linux >= 5.11). */
  tlbCleanHint: boolean;
  /** Receive timestamps in the call (Linux >= 5.12); not used by this package. */
  rxTimestamps: boolean;
  /** The runtime lets Buffers point at foreign memory (no V8 sandbox). */
  externalBuffers: boolean;
  /**
   * Mapped chunks are handed back by V8 itself when their Buffer is released or collected,
   * not through a Node-API finalizer, which Node runs one event-loop wake-up later (the
   * addon runs in the Node version it was built for, and TCP_ZEROCOPY_NODE_API_BUFFERS is
   * not 1).
   */
  directBuffers: boolean;
}

/** What `probe()` found. */
export interface ProbeResult {
  /** Chunks can be mapped; when false, attach() still works by copying. */
  supported: boolean;
  /** Why zero-copy is unavailable, when `supported` is false. */
  reason?: string;
  /** Kernel release (uname -r), or '' if unknown. */
  kernel: string;
  /** Feature by feature. */
  features: ProbeFeatures;
}

/** Options of `attach()`. */
export interface AttachOptions {
  /**
   * Bytes per chunk, 4096 to 67108864 (default 1 MiB). Also the socket's SO_RCVLOWAT
   * while data flows, so mapped chunks are large.
   */
  chunkSize?: number;
  /**
   * 'auto' (default): measures what mapping and what copying cost on this host with this
   * consumer (the process's CPU time per byte delivered, over windows of max(8 MiB, 4 chunks)), uses
   * the cheaper, and measures both again now and then (a close decision not yet backed by
   * a second measurement after 16 windows' worth of bytes, then every 128 windows or
   * further apart the clearer the choice); `stats.decision` says which and why. The measurement and the choice are shared by
   * the receivers of one thread with the same chunkSize and `autoGroup`, so a server's
   * later connections start on the cheaper path. A stream that cannot be mapped (under
   * half of its first window) copies on its own. It copies for good after a zero-copy
   * error other than end of stream (`stats.fallbackReason`). 'zerocopy': maps whatever
   * can be mapped, always; zero-copy errors fail the stream, and attach() throws where
   * zero-copy is unsupported. 'copy': never maps.
   */
  mode?: 'auto' | 'zerocopy' | 'copy';
  /**
   * mode 'auto': receivers of one thread with the same chunkSize and autoGroup share one
   * measurement and choice (default 'default'). Give consumers that differ in cost (a
   * hash per chunk here, a file write there) groups of their own.
   */
  autoGroup?: string;
  /**
   * When every byte the pinned-bytes cap allows is held by unreleased chunks:
   * 'copy' (default) keeps data flowing as copied chunks; 'wait' stops reading until
   * chunks are released, which deadlocks a consumer that waits for more data before it
   * releases what it holds.
   */
  whenPoolFull?: 'copy' | 'wait';
  /**
   * Milliseconds to wait for a full chunk before delivering whatever has arrived
   * (default 20). 0 delivers every wake-up at once (lower latency, smaller chunks).
   */
  flushDelayMs?: number;
  /**
   * Aborting it stops the stream as leaving a `for await` early does: queued chunks are
   * freed, pending reads reject with an AbortError, and the socket is destroyed.
   */
  signal?: AbortSignal;
}

/** Pinned-memory settings of this environment's page pool. */
export interface ConfigureOptions {
  /** Cap on bytes mapped and not yet released, for all receivers of this thread (default 64 MiB). */
  maxPinnedBytes?: number;
  /**
   * A write into a mapped chunk's Buffer turns the chunk into a private, writable copy
   * (default true). false: such a write ends the process with SIGSEGV, as the kernel's
   * read-only mapping makes it. Applies to chunks received from then on.
   */
  copyOnWrite?: boolean;
}

/** Counters of this environment's page pool. */
export interface PoolStats {
  /** Bytes mapped into chunks that are not released yet. */
  pinnedBytes: number;
  /** The cap on pinnedBytes. */
  maxPinnedBytes: number;
  /** TCP mappings (VMAs) the pool holds: shared by every receiver. */
  mappings: number;
  /** Mapped chunks handed out and not yet released or collected. */
  liveChunks: number;
  /** Bytes that arrived copied, on any receiver, because the pool was at its cap. */
  bytesCopiedPoolFull: number;
  /** Mapped chunks turned into private copies because something wrote into them. */
  chunksCopiedOnWrite: number;
  /** Address space of copied ranges that could not be made TCP mappings again (normally 0). */
  retiredBytes: number;
  /**
   * Memory of released copied chunks kept for the next ones (chunks of 128 KiB or more;
   * at most 32 MiB per thread): on VMs, receiving into fresh memory costs more than the
   * copy itself.
   */
  idleCopyBytes: number;
}

const DEFAULT_CHUNK_SIZE = 1 << 20;
const MIN_CHUNK_SIZE = 4096;
const MAX_CHUNK_SIZE = 64 << 20;
const DEFAULT_FLUSH_DELAY_MS = 20;
/**
 * The process's CPU time (user + system, every thread) in ns: auto mode's cost. The
 * thread's alone would miss what a consumer hands to the threadpool (fs writes of mapped
 * pages fault them in there).
 */
function processCpuNs(): number {
  const usage = process.cpuUsage();
  return (usage.user + usage.system) * 1000;
}

/** Minor page faults of the process so far: auto mode tells windows that paid for fresh memory. */
function processPageFaults(): number {
  return process.resourceUsage().minorPageFault;
}

/** Auto mode's smallest measurement window. */
const AUTO_WINDOW_BYTES = 8 * 1024 * 1024;
const OPTION_NAMES = new Set(['chunkSize', 'mode', 'autoGroup', 'whenPoolFull', 'flushDelayMs', 'signal']);

let cachedProbe: ProbeResult | null = null;

/** Tells whether zero-copy receive works here and which kernel features it can use. */
export function probe(): ProbeResult {
  if (cachedProbe !== null) return cloneProbe(cachedProbe);
  const raw: NativeProbe | null = native?.probe() ?? null;
  const features: ProbeFeatures = {
    nativeAddon: raw !== null,
    zerocopyReceive: raw?.kernelSupported ?? false,
    structSize: raw?.structSize ?? 0,
    inqAndError: raw?.inqAndErr ?? false,
    copybuf: raw?.copybuf ?? false,
    tlbCleanHint: raw?.tlbCleanHint ?? false,
    rxTimestamps: raw?.rxTimestamps ?? false,
    externalBuffers: raw?.externalBuffers ?? false,
    directBuffers: raw?.directBuffers ?? false,
  };
  let reason: string | undefined;
  if (raw === null) reason = nativeLoadError ?? 'native addon not loaded';
  else if (!raw.kernelSupported) reason = raw.reason ?? 'zero-copy receive unsupported';
  else if (!raw.externalBuffers) reason = 'the runtime refuses external Buffers (V8 sandbox)';
  cachedProbe = {
    supported: reason === undefined,
    ...(reason === undefined ? {} : { reason }),
    kernel: raw?.kernel ?? '',
    features,
  };
  return cloneProbe(cachedProbe);
}

function cloneProbe(result: ProbeResult): ProbeResult {
  return { ...result, features: { ...result.features } };
}

/** Sets the pinned-bytes cap and the copy-on-write rule of this thread's page pool. */
export function configure(options: ConfigureOptions): void {
  // eslint-disable-next-line @typescript-eslint/no-unnecessary-condition -- JavaScript callers pass anything
  if (typeof options !== 'object' || options === null) {
    throw codedError(TypeError, 'ERR_INVALID_ARG_TYPE', 'configure(options): options must be an object');
  }
  const { maxPinnedBytes } = options;
  if (maxPinnedBytes !== undefined) {
    if (!Number.isSafeInteger(maxPinnedBytes) || maxPinnedBytes < 0 || maxPinnedBytes > 2 ** 36) {
      throw codedError(
        RangeError,
        'ERR_OUT_OF_RANGE',
        `maxPinnedBytes must be an integer from 0 to 2**36, got ${String(maxPinnedBytes)}`,
      );
    }
    native?.configure({ maxPinnedBytes });
  }
  const { copyOnWrite } = options;
  if (copyOnWrite !== undefined) {
    if (typeof copyOnWrite !== 'boolean') {
      throw codedError(TypeError, 'ERR_INVALID_ARG_TYPE', `copyOnWrite must be a boolean, got ${typeof copyOnWrite}`);
    }
    native?.configure({ copyOnWrite });
  }
}

/** Pinned bytes, cap and mappings of this thread's page pool. */
export function poolStats(): PoolStats {
  const raw = native?.poolStats();
  return {
    pinnedBytes: raw?.pinnedBytes ?? 0,
    maxPinnedBytes: raw?.maxPinnedBytes ?? 0,
    mappings: raw?.mappings ?? 0,
    liveChunks: raw?.liveChunks ?? 0,
    bytesCopiedPoolFull: raw?.bytesCopiedPoolFull ?? 0,
    chunksCopiedOnWrite: raw?.chunksCopiedOnWrite ?? 0,
    retiredBytes: raw?.retiredBytes ?? 0,
    idleCopyBytes: raw?.idleCopyBytes ?? 0,
  };
}

const attachedSockets = new WeakSet<net.Socket>();

interface SocketInternals {
  _handle?: { fd?: number; reading?: boolean; readStart?: () => number } | null;
}

/**
 * Starts receiving from `socket`: a connected net.Socket that has not started reading
 * (accepted by `net.createServer({ pauseOnConnect: true })`, or paused before it
 * connected). From then on the receiver owns the socket's reading side and drives it as
 * Node would: 'end' once the reader has taken the end of the stream (then, unless
 * allowHalfOpen, the socket ends its side after pending writes, and closes), destroy on
 * a socket error or when the reader leaves early; bytesRead and setTimeout() count
 * received data. Writes keep working. Throws at once for anything else, socket untouched.
 */
export function attach(socket: net.Socket, options: AttachOptions = {}): ZeroCopyReceiver {
  if (!(socket instanceof net.Socket)) {
    throw codedError(TypeError, 'ERR_INVALID_ARG_TYPE', 'attach(socket): socket must be a net.Socket');
  }
  const settings = checkOptions(options);
  if (socket.destroyed) {
    throw codedError(Error, 'ERR_SOCKET_CLOSED', 'attach(socket): socket is destroyed');
  }
  if (attachedSockets.has(socket)) {
    throw codedError(Error, 'ERR_TCPZC_ALREADY_ATTACHED', 'attach(socket): socket already has a receiver');
  }
  const handle = (socket as unknown as SocketInternals)._handle;
  if (socket.connecting || socket.pending || handle === null || handle === undefined) {
    throw codedError(Error, 'ERR_SOCKET_NOT_CONNECTED', 'attach(socket): socket is not connected');
  }
  if (handle.reading === true || socket.readableFlowing === true || socket.readableLength > 0) {
    throw codedError(
      Error,
      'ERR_TCPZC_SOCKET_READING',
      'attach(socket): socket has already started reading; accept it with ' +
        'net.createServer({ pauseOnConnect: true }) or pause() it before it connects',
    );
  }

  if (settings.signal?.aborted === true) throw abortError(settings.signal.reason);
  if (settings.mode === 'zerocopy' && !probe().supported) {
    throw codedError(
      Error,
      'ERR_TCPZC_UNSUPPORTED',
      `zero-copy receive unavailable: ${probe().reason ?? 'unsupported'}`,
    );
  }
  let receiver: Receiver;
  if (native !== null) {
    const fd = handle.fd;
    if (typeof fd !== 'number' || fd < 0) {
      throw codedError(TypeError, 'ERR_INVALID_ARG_VALUE', 'attach(socket): socket has no file descriptor');
    }
    const Native = native.Receiver;
    const nativeOptions = {
      chunkSize: settings.chunkSize,
      mode: NativeMode[settings.mode],
      poolFull: NativePoolFull[settings.whenPoolFull],
      flushDelayMs: settings.flushDelayMs,
    };
    try {
      const source = (onEvent: NativeEventHandler): NativeReceiver => new Native(fd, nativeOptions, onEvent);
      // The source first: if the addon refuses the fd, the socket is left untouched.
      const measure = settings.mode === 'auto' && probe().supported;
      receiver = new Receiver(socket, source, {
        waitsForPool: settings.whenPoolFull === 'wait',
        signal: settings.signal,
        lifecycle: nativeSocketLifecycle,
        autoPath: measure
          ? autoPathFor(settings.autoGroup, settings.chunkSize, {
              windowBytes: Math.max(AUTO_WINDOW_BYTES, 4 * settings.chunkSize),
              cpuNs: processCpuNs,
              pageFaults: processPageFaults,
            })
          : undefined,
        autoUnavailable: settings.mode === 'auto' && !measure ? (probe().reason ?? 'zero-copy unavailable') : undefined,
      });
    } catch (error) {
      throw explainNativeError(error);
    }
    // Node must never read this fd now: a stray socket.resume() or 'data' listener would
    // take bytes out of the middle of the stream. Its read start becomes a no-op.
    handle.readStart = () => 0;
  } else {
    const reason = probe().reason ?? 'native addon not loaded';
    receiver = new Receiver(socket, (onEvent) => socketCopySource(socket, onEvent, reason), {
      signal: settings.signal,
      lifecycle: copySocketLifecycle,
      autoUnavailable: settings.mode === 'auto' ? reason : undefined,
    });
  }
  attachedSockets.add(socket);
  return receiver;
}

interface Settings {
  chunkSize: number;
  mode: 'auto' | 'zerocopy' | 'copy';
  autoGroup: string;
  whenPoolFull: 'copy' | 'wait';
  flushDelayMs: number;
  signal: AbortSignal | undefined;
}

function checkOptions(options: AttachOptions): Settings {
  // eslint-disable-next-line @typescript-eslint/no-unnecessary-condition -- JavaScript callers pass anything
  if (typeof options !== 'object' || options === null || Array.isArray(options)) {
    throw codedError(TypeError, 'ERR_INVALID_ARG_TYPE', 'attach(socket, options): options must be an object');
  }
  for (const name of Object.keys(options)) {
    if (!OPTION_NAMES.has(name)) {
      throw codedError(TypeError, 'ERR_INVALID_ARG_VALUE', `attach(): unknown option '${name}'`);
    }
  }
  const {
    chunkSize = DEFAULT_CHUNK_SIZE,
    mode = 'auto',
    autoGroup = 'default',
    whenPoolFull = 'copy',
    flushDelayMs = DEFAULT_FLUSH_DELAY_MS,
  } = options;
  if (!Number.isSafeInteger(chunkSize) || chunkSize < MIN_CHUNK_SIZE || chunkSize > MAX_CHUNK_SIZE) {
    throw codedError(
      RangeError,
      'ERR_OUT_OF_RANGE',
      `chunkSize must be an integer from ${MIN_CHUNK_SIZE} to ${MAX_CHUNK_SIZE}, got ${String(chunkSize)}`,
    );
  }
  // eslint-disable-next-line @typescript-eslint/no-unnecessary-condition -- JavaScript callers pass anything
  if (mode !== 'auto' && mode !== 'zerocopy' && mode !== 'copy') {
    throw codedError(
      TypeError,
      'ERR_INVALID_ARG_VALUE',
      `mode must be 'auto', 'zerocopy' or 'copy', got ${String(mode)}`,
    );
  }
  if (typeof autoGroup !== 'string') {
    throw codedError(TypeError, 'ERR_INVALID_ARG_TYPE', `autoGroup must be a string, got ${typeof autoGroup}`);
  }
  // eslint-disable-next-line @typescript-eslint/no-unnecessary-condition -- JavaScript callers pass anything
  if (whenPoolFull !== 'copy' && whenPoolFull !== 'wait') {
    throw codedError(
      TypeError,
      'ERR_INVALID_ARG_VALUE',
      `whenPoolFull must be 'copy' or 'wait', got ${String(whenPoolFull)}`,
    );
  }
  if (!Number.isSafeInteger(flushDelayMs) || flushDelayMs < 0 || flushDelayMs > 3_600_000) {
    throw codedError(
      RangeError,
      'ERR_OUT_OF_RANGE',
      `flushDelayMs must be an integer from 0 to 3600000, got ${String(flushDelayMs)}`,
    );
  }
  const { signal } = options;
  // Duck-typed as Node does: signals from other realms or polyfills are fine.
  const signalLike = signal as { aborted?: unknown; addEventListener?: unknown } | null | undefined;
  if (
    signal !== undefined &&
    (typeof signalLike !== 'object' ||
      signalLike === null ||
      typeof signalLike.aborted !== 'boolean' ||
      typeof signalLike.addEventListener !== 'function')
  ) {
    throw codedError(TypeError, 'ERR_INVALID_ARG_TYPE', 'signal must be an AbortSignal');
  }
  return { chunkSize, mode, autoGroup, whenPoolFull, flushDelayMs, signal };
}

/** Native attach errors name a syscall; say what they mean for the caller. */
function explainNativeError(error: unknown): Error {
  const code = (error as { code?: unknown } | null)?.code;
  if (code === 'ENOTSOCK' || code === 'EPROTOTYPE') {
    return codedError(TypeError, 'ERR_INVALID_ARG_VALUE', 'attach(socket): socket is not a TCP socket');
  }
  if (code === 'ENOTCONN') {
    return codedError(Error, 'ERR_SOCKET_NOT_CONNECTED', 'attach(socket): socket is not connected');
  }
  return error instanceof Error ? error : new Error(String(error));
}
