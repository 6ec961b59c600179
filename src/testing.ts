/**
 * Helpers for tests, the demo and benchmarks: the stream pattern every sender writes and
 * every receiver checks, and the native MSG_ZEROCOPY sender built with the addon.
 * Import as `tcp-zerocopy/testing`.
 */
import { spawn, type ChildProcess } from 'node:child_process';
import * as fs from 'node:fs';
import * as path from 'node:path';

import { packageRoot } from './binding';

const GOLDEN = 0x9e3779b1;

/**
 * Byte at stream offset `offset` of the pattern with `seed`: byte (offset % 4) of the
 * little-endian word ((offset / 4) ^ seed) * 0x9E3779B1. Position-dependent, so a lost,
 * repeated or reordered range of any length shows up (unique for the first 16 GiB).
 */
export function patternByte(offset: number, seed: number): number {
  const word = Math.imul(Math.floor(offset / 4) ^ seed, GOLDEN);
  return (word >>> ((offset % 4) * 8)) & 0xff;
}

/** Fills `buffer` with the pattern as it stands at stream offset `offset`. */
export function fillPattern(buffer: Buffer, offset: number, seed: number): void {
  for (let i = 0; i < buffer.length; i++) buffer[i] = patternByte(offset + i, seed);
}

/** Thrown by PatternChecker at the first wrong byte. */
export class PatternMismatchError extends Error {
  constructor(
    readonly offset: number,
    readonly expected: number,
    readonly actual: number,
  ) {
    super(`stream byte ${offset}: expected 0x${expected.toString(16)}, got 0x${actual.toString(16)}`);
    this.name = 'PatternMismatchError';
  }
}

/** Checks a stream, chunk after chunk, against the pattern; reads every byte. */
export class PatternChecker {
  /** Stream bytes checked so far. */
  offset = 0;

  constructor(readonly seed: number) {}

  /** Checks the next bytes of the stream; throws PatternMismatchError at the first wrong one. */
  check(data: Uint8Array): void {
    const seed = this.seed;
    let i = 0;
    const n = data.length;
    // Bytes up to a word boundary of the stream, then whole words where memory is aligned.
    while (i < n && (this.offset + i) % 4 !== 0) this.#checkByte(data, i++);
    if ((data.byteOffset + i) % 4 === 0) {
      const words = new Uint32Array(data.buffer, data.byteOffset + i, (n - i) >>> 2);
      let word = (this.offset + i) / 4;
      for (let w = 0; w < words.length; w++, word++) {
        if (words[w] !== Math.imul(word ^ seed, GOLDEN) >>> 0) {
          const at = i + w * 4;
          for (let k = 0; k < 4; k++) this.#checkByte(data, at + k);
        }
      }
      i += words.length * 4;
    }
    while (i < n) this.#checkByte(data, i++);
    this.offset += n;
  }

  #checkByte(data: Uint8Array, index: number): void {
    const expected = patternByte(this.offset + index, this.seed);
    if (data[index] !== expected) throw new PatternMismatchError(this.offset + index, expected, data[index]);
  }
}

/** Path of the native sender executable built by `npm install`. */
export const senderPath = path.join(packageRoot, 'build', 'Release', 'zc_sender');

/** Options of the native sender (see native/sender.cc). */
export interface SenderOptions {
  /** Port to connect to; with `listen`, the port to listen on (0: any). */
  port: number;
  /** Listen and accept one connection instead of connecting (for receivers that connect). */
  listen?: boolean;
  host?: string;
  /** Pattern bytes to send (default 1 GiB). */
  bytes?: number;
  /** Pattern seed, or 'local-port': the sender's own source port (the receiver's remotePort). */
  seed?: number | 'local-port';
  /**
   * 'zerocopy' (default): MSG_ZEROCOPY sends, mappable on loopback. 'plain': send(), mappable on
   * loopback only with net.core.high_order_alloc_disable=1.
   */
  mode?: 'zerocopy' | 'plain';
  /** TCP_MAXSEG before connect; 4108 = 4096 payload + 12-byte timestamp option. */
  mss?: number;
  writeSize?: number;
  sndbuf?: number;
  pauseAt?: number;
  pauseMs?: number;
  /** Send the first `dribble` bytes one byte per send(). */
  dribble?: number;
  dribblePauseMs?: number;
  /** Stream offsets after which one urgent (MSG_OOB) byte is sent. */
  oobAt?: number[];
  /** Reset the connection after this many bytes. */
  rstAfter?: number;
  lingerMs?: number;
  /** Close right after sending instead of waiting for the peer to close. */
  noCloseWait?: boolean;
}

/** What the sender prints when it finishes. */
export interface SenderResult {
  bytes: number;
  sends: number;
  zerocopyCompletions: number;
  copiedCompletions: number;
  oobBytes: number;
  elapsedMs: number;
  cpuUserMs: number;
  cpuSysMs: number;
  mss: number;
}

/** A running sender process. */
export interface Sender {
  child: ChildProcess;
  /** Resolves with the sender's report when it exits 0; rejects with its stderr otherwise. */
  done: Promise<SenderResult>;
  /** With `listen`: the port it listens on, once it does. */
  listening: Promise<number>;
  /** Kills the sender if it still runs and ignores how it ended. */
  stop(): void;
}

function senderArgs(options: SenderOptions): string[] {
  const args = ['--port', String(options.port), '--host', options.host ?? '127.0.0.1'];
  const add = (flag: string, value: number | string | undefined): void => {
    if (value !== undefined) args.push(flag, String(value));
  };
  add('--bytes', options.bytes);
  add('--seed', options.seed);
  add('--mode', options.mode);
  add('--mss', options.mss);
  add('--write-size', options.writeSize);
  add('--sndbuf', options.sndbuf);
  add('--pause-at', options.pauseAt);
  add('--pause-ms', options.pauseMs);
  add('--dribble', options.dribble);
  add('--dribble-pause-ms', options.dribblePauseMs);
  for (const at of options.oobAt ?? []) add('--oob-at', at);
  add('--rst-after', options.rstAfter);
  add('--linger-ms', options.lingerMs);
  if (options.noCloseWait === true) args.push('--no-close-wait');
  if (options.listen === true) args.push('--listen');
  return args;
}

/** Starts the native sender connecting to `options.port`. */
export function startSender(options: SenderOptions): Sender {
  if (!fs.existsSync(senderPath)) {
    throw new Error(`sender not built at ${senderPath}: run npm install (Linux only)`);
  }
  const child = spawn(senderPath, senderArgs(options), { stdio: ['ignore', 'pipe', 'pipe'] });
  let reportPort: (port: number) => void = () => undefined;
  const listening = new Promise<number>((resolve) => (reportPort = resolve));
  const done = new Promise<SenderResult>((resolve, reject) => {
    let stdout = '';
    let stderr = '';
    child.stdout.on('data', (data: Buffer) => {
      stdout += data.toString();
      const match = /\{"listening":(\d+)\}/.exec(stdout);
      if (match !== null) reportPort(Number(match[1]));
    });
    child.stderr.on('data', (data: Buffer) => (stderr += data.toString()));
    child.on('error', reject);
    child.on('close', (code, signal) => {
      if (code === 0) {
        try {
          resolve(JSON.parse(stdout.trim().split('\n').pop() ?? '') as SenderResult);
        } catch {
          reject(new Error(`sender printed no report: ${stdout}`));
        }
      } else {
        reject(new Error(`sender exited with ${String(signal ?? code)}: ${stderr.trim()}`));
      }
    });
  });
  // A sender whose peer stopped early fails on purpose in many tests; only callers that
  // await `done` hear of it.
  done.catch(() => undefined);
  return {
    child,
    done,
    listening,
    stop: () => {
      if (child.exitCode === null && child.signalCode === null) child.kill();
    },
  };
}
