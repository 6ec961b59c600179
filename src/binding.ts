// Hand-written typings for the raw addon (native/addon.cc, native/receiver.cc) and the code
// that loads it. Nothing here is public API.
import * as path from 'node:path';

/** What native/addon.cc probe() returns. */
export interface NativeProbe {
  kernelSupported: boolean;
  reason: string | null;
  kernel: string;
  structSize: number;
  inqAndErr: boolean;
  copybuf: boolean;
  tlbCleanHint: boolean;
  rxTimestamps: boolean;
  externalBuffers: boolean;
  directBuffers: boolean;
}

/** Per-receiver counters kept by native/receiver.cc. */
export interface NativeReceiverStats {
  bytesMapped: number;
  bytesCopied: number;
  bytesCopiedPoolFull: number;
  bytesCopiedShortRuns: number;
  bytesCopiedUrgent: number;
  bytesCopiedFallback: number;
  bytesCopiedCopyMode: number;
  bytesCopiedDraining: number;
  chunksMapped: number;
  chunksCopied: number;
  chunksInReusedMemory: number;
  wakeups: number;
  zerocopyCalls: number;
  recvCalls: number;
  poolWaits: number;
  chunksCopiedOnWrite: number;
  zerocopy: boolean;
  fallbackReason: string | null;
}

/** Counters of the environment's shared mapping pool. */
export interface NativePoolStats {
  pinnedBytes: number;
  maxPinnedBytes: number;
  mappings: number;
  mappedAddressSpace: number;
  liveChunks: number;
  bytesCopiedPoolFull: number;
  chunksCopiedOnWrite: number;
  retiredBytes: number;
  idleCopyBytes: number;
}

/** Native mode numbers (Receiver::Mode). */
export const NativeMode = { copy: 0, auto: 1, zerocopy: 2 } as const;
export type NativeMode = (typeof NativeMode)[keyof typeof NativeMode];

/** Native pool-full policy numbers (Receiver::PoolFull). */
export const NativePoolFull = { copy: 0, wait: 1 } as const;
export type NativePoolFull = (typeof NativePoolFull)[keyof typeof NativePoolFull];

/** Called once per wake-up: chunks in stream order, bit i of mappedMask = chunk i is mapped. */
/**
 * One wake-up's delivery, in stream order: up to two chunks (`undefined` where absent; two
 * arguments rather than an array, which would be one more allocation per wake-up), bit i
 * of `mappedMask` set when chunk i is mapped, then the stream's error or end.
 */
export type NativeEventHandler = (
  first: Buffer | undefined,
  second: Buffer | undefined,
  mappedMask: number,
  error: (Error & { code?: string }) | null,
  eof: boolean,
) => void;

export interface NativeReceiver {
  start(): void;
  stop(): void;
  close(): void;
  drain(): void;
  stats(): NativeReceiverStats;
  /** Auto mode's choice: copy (true) or map (false) from the next wake-up; false if not 'auto'. */
  setCopying(copying: boolean): boolean;
}

export interface NativeBinding {
  probe(): NativeProbe;
  releaseChunk(buffer: Buffer): boolean;
  detachBuffer(buffer: Buffer): boolean;
  poolStats(): NativePoolStats;
  configure(options: { maxPinnedBytes?: number; copyOnWrite?: boolean }): void;
  /** Tests only: makes the kernel refuse every later receive into this thread's pool. */
  _breakPoolForTesting(): boolean;
  /** Tests only: a store into a read-only page outside the pool (ends the process: SIGSEGV). */
  _writeReadOnlyForTesting(): boolean;
  Receiver: new (
    fd: number,
    options: { chunkSize: number; mode: NativeMode; poolFull: NativePoolFull; flushDelayMs: number },
    onEvent: NativeEventHandler,
  ) => NativeReceiver;
}

/** The package root: compiled code runs from dist/, sources (under vitest) from src/. */
export const packageRoot = path.resolve(__dirname, '..');

function load(): { binding: NativeBinding | null; loadError: string | null } {
  if (process.platform !== 'linux') {
    return { binding: null, loadError: `zero-copy receive needs Linux (this is ${process.platform})` };
  }
  try {
    // eslint-disable-next-line @typescript-eslint/no-require-imports
    const bindings = require('bindings') as (options: { bindings: string; module_root: string }) => unknown;
    return {
      binding: bindings({ bindings: 'tcp_zerocopy', module_root: packageRoot }) as NativeBinding,
      loadError: null,
    };
  } catch (error) {
    const message = error instanceof Error ? error.message.split('\n')[0] : String(error);
    return {
      binding: null,
      loadError: `native addon did not load (${message}); run \`npm rebuild tcp-zerocopy\` with a C++ toolchain`,
    };
  }
}

const loaded = load();

/** The addon, or null where it could not be loaded (then everything copies). */
export const native: NativeBinding | null = loaded.binding;
/** Why the addon is missing, for probe(). */
export const nativeLoadError: string | null = loaded.loadError;
