// A write into a mapped chunk turns it into a private copy and lands: from JS, from Node's
// own C++, from workers and the threadpool. Every other fault keeps its meaning.
import { spawnSync } from 'node:child_process';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';

import { describe, expect, it } from 'vitest';

import { poolStats, probe, type Chunk } from '../src/index';
import { patternByte, PatternChecker } from '../src/testing';
import { errorWith, loopbackFixture, mapLimit, MiB, socketMappingCount } from './helpers';

const { zerocopyStream } = loopbackFixture();
const supported = probe().supported;
const child = path.join(__dirname, 'fixtures', 'cow-child.js');
// The ES2022 lib has no WebAssembly types; what these tests use of it.
const wasmApi = (
  globalThis as unknown as {
    WebAssembly: {
      instantiate(bytes: Uint8Array): Promise<{ instance: { exports: Record<string, unknown> } }>;
      RuntimeError: ErrorConstructor;
    };
  }
).WebAssembly;

function runChild(scenario: string) {
  const result = spawnSync(process.execPath, [child, scenario], { encoding: 'utf8', timeout: 60_000 });
  return { status: result.status, signal: result.signal, stdout: result.stdout, stderr: result.stderr };
}

/** What `chunk.data` must read after `edit` ran on it, from the pattern at `start`. */
interface Edit {
  name: string;
  apply(data: Buffer): void;
  expected(original: Buffer): Buffer;
}

const edits: Edit[] = [
  {
    name: 'JS stores',
    apply: (data) => {
      for (let i = 0; i < data.length; i += 4096) data[i] = 0xee;
    },
    expected: (original) => {
      const copy = Buffer.from(original);
      for (let i = 0; i < copy.length; i += 4096) copy[i] = 0xee;
      return copy;
    },
  },
  {
    name: 'fill() of a middle range',
    apply: (data) => data.fill(7, 100, 9000),
    expected: (original) => Buffer.from(original).fill(7, 100, 9000),
  },
  {
    name: 'write() of a string',
    apply: (data) => void data.write('hello, mapped page', 5000),
    expected: (original) => {
      const copy = Buffer.from(original);
      copy.write('hello, mapped page', 5000);
      return copy;
    },
  },
  {
    name: 'swap16() on a subarray',
    apply: (data) => void data.subarray(64, 64 + 8192).swap16(),
    expected: (original) => {
      const copy = Buffer.from(original);
      copy.subarray(64, 64 + 8192).swap16();
      return copy;
    },
  },
  {
    name: 'copy() into it (Node C++ memmove)',
    apply: (data) => void Buffer.alloc(3000, 0x5a).copy(data, 2000),
    expected: (original) => {
      const copy = Buffer.from(original);
      Buffer.alloc(3000, 0x5a).copy(copy, 2000);
      return copy;
    },
  },
  {
    name: 'a WebSocket-style unmask loop over the whole chunk',
    apply: (data) => {
      const mask = [0xa1, 0xb2, 0xc3, 0xd4];
      for (let i = 0; i < data.length; i++) data[i] ^= mask[i & 3];
    },
    expected: (original) => {
      const mask = [0xa1, 0xb2, 0xc3, 0xd4];
      const copy = Buffer.from(original);
      for (let i = 0; i < copy.length; i++) copy[i] ^= mask[i & 3];
      return copy;
    },
  },
];

describe.runIf(supported)('copy-on-write of mapped chunks', () => {
  it.each(edits.map((edit) => [edit.name, edit] as const))(
    '%s: the write lands, the rest of the stream is byte-exact',
    async (_name, edit) => {
      const baseline = poolStats();
      const { receiver } = await zerocopyStream(32 * MiB, 51);
      const checker = new PatternChecker(51);
      let edited = 0;
      for await (const chunk of receiver) {
        const start = checker.offset;
        if (chunk.mapped && edited < 4 && chunk.data.length >= 16384) {
          const original = Buffer.from(chunk.data);
          edit.apply(chunk.data);
          expect(chunk.data.equals(edit.expected(original))).toBe(true);
          checker.offset += chunk.data.length; // checked against the edit above
          expect(original[0]).toBe(patternByte(start, 51));
          edited++;
        } else {
          checker.check(chunk.data);
        }
        chunk.release();
      }
      expect(edited).toBe(4);
      expect(checker.offset).toBe(32 * MiB);
      expect(receiver.stats.chunksCopiedOnWrite).toBe(4);
      expect(poolStats().chunksCopiedOnWrite - baseline.chunksCopiedOnWrite).toBe(4);
      expect(poolStats().pinnedBytes).toBe(baseline.pinnedBytes);
    },
  );

  it('a copied chunk stops counting as pinned at once; its range maps again after release', async () => {
    const baseline = poolStats();
    const { receiver } = await zerocopyStream(64 * MiB, 52);
    const held: Chunk[] = [];
    let bytes = 0;
    let mappedAfterRestore = 0;
    const checker = new PatternChecker(52);
    for await (const chunk of receiver) {
      checker.check(chunk.data);
      bytes += chunk.data.length;
      if (held.length < 3 && chunk.mapped) {
        held.push(chunk);
        continue;
      }
      if (held.length === 3 && chunk.mapped) mappedAfterRestore += chunk.data.length;
      chunk.release();
      if (held.length === 3 && held[0].data.length > 0) {
        const pinnedBefore = poolStats().pinnedBytes;
        const length = held[0].data.length;
        held[0].data[0] ^= 0xff; // copy-on-write
        expect(poolStats().pinnedBytes).toBe(pinnedBefore - length);
        held[0].data[0] ^= 0xff;
        for (const kept of held) kept.release();
      }
    }
    expect(bytes).toBe(64 * MiB);
    expect(mappedAfterRestore).toBeGreaterThan(32 * MiB); // the pool keeps mapping
    expect(poolStats().pinnedBytes).toBe(baseline.pinnedBytes);
  });

  it('thousands of copies released in random order keep the mapping count bounded', async () => {
    // Each copied range becomes a TCP mapping of its own again when released, and TCP
    // mappings never merge: without re-mapping whole free runs the VMAs pile up.
    const mappingsBefore = socketMappingCount();
    const { receiver } = await zerocopyStream(384 * MiB, 53, { chunkSize: 64 * 1024, flushDelayMs: 0 });
    let random = 7;
    const next = (): number => (random = (Math.imul(random, 1103515245) + 12345) >>> 0);
    const held: Chunk[] = [];
    let copied = 0;
    let peak = 0;
    for await (const chunk of receiver) {
      if (chunk.mapped && next() % 2 === 0) {
        chunk.data[next() % chunk.data.length] ^= 0;
        copied++;
      }
      held.push(chunk);
      while (held.length > 1 + (next() % 24)) held.splice(next() % held.length, 1)[0].release();
      peak = Math.max(peak, socketMappingCount());
    }
    for (const chunk of held) chunk.release();
    expect(copied).toBeGreaterThan(1000);
    expect(receiver.stats.chunksCopiedOnWrite).toBe(copied);
    expect(peak - mappingsBefore).toBeLessThanOrEqual(2 * 24 + 4); // about one per held chunk
    expect(socketMappingCount() - mappingsBefore).toBeLessThanOrEqual(2);
    expect(poolStats().retiredBytes).toBe(0);
  });

  it('200 concurrent streams with random writes into random chunks stay byte-exact', async () => {
    let random = 12345;
    const next = (): number => (random = (Math.imul(random, 1103515245) + 12345) >>> 0);
    const results = await mapLimit(
      Array.from({ length: 200 }, (_, i) => i),
      200,
      async (i) => {
        const seed = 1000 + i;
        const { receiver } = await zerocopyStream(2 * MiB, seed, { chunkSize: 256 * 1024 });
        const checker = new PatternChecker(seed);
        let writes = 0;
        for await (const chunk of receiver) {
          if (chunk.data.length > 0 && next() % 3 === 0) {
            const at = next() % chunk.data.length;
            const before = chunk.data[at];
            chunk.data[at] = before ^ 0xff;
            if (chunk.data[at] !== (before ^ 0xff)) throw new Error('write lost');
            chunk.data[at] = before;
            writes++;
          }
          checker.check(chunk.data);
          chunk.release();
        }
        return { bytes: checker.offset, writes };
      },
    );
    expect(results.every((result) => result.bytes === 2 * MiB)).toBe(true);
    expect(results.reduce((sum, result) => sum + result.writes, 0)).toBeGreaterThan(100);
    expect(poolStats().pinnedBytes).toBe(0);
  });

  it('WebAssembly out-of-bounds loads still throw RuntimeError after copies happened', async () => {
    const { receiver } = await zerocopyStream(4 * MiB, 54);
    for await (const chunk of receiver) {
      if (chunk.mapped) chunk.data[0] ^= 0;
      chunk.release();
    }
    expect(poolStats().chunksCopiedOnWrite).toBeGreaterThan(0);
    // (module (memory 1) (func (export "load") (param i32) (result i32) local.get 0 i32.load))
    const wasm = new Uint8Array([
      0x00, 0x61, 0x73, 0x6d, 0x01, 0x00, 0x00, 0x00, 0x01, 0x06, 0x01, 0x60, 0x01, 0x7f, 0x01, 0x7f, 0x03, 0x02, 0x01,
      0x00, 0x05, 0x03, 0x01, 0x00, 0x01, 0x07, 0x08, 0x01, 0x04, 0x6c, 0x6f, 0x61, 0x64, 0x00, 0x00, 0x0a, 0x09, 0x01,
      0x07, 0x00, 0x20, 0x00, 0x28, 0x02, 0x00, 0x0b,
    ]);
    const { instance } = await wasmApi.instantiate(wasm);
    const load = instance.exports.load as (address: number) => number;
    expect(load(0)).toBe(0);
    for (const address of [65536, 0x7fffffff, -1]) expect(() => load(address)).toThrow(wasmApi.RuntimeError);
  });

  it('kernel writes into a mapped chunk (fs.readSync) fail with EFAULT, no crash', async () => {
    const file = path.join(os.tmpdir(), `tcpzc-efault-${process.pid}.bin`);
    fs.writeFileSync(file, Buffer.alloc(8192, 1));
    try {
      const { receiver } = await zerocopyStream(4 * MiB, 55);
      const fd = fs.openSync(file, 'r');
      let tried = false;
      try {
        for await (const chunk of receiver) {
          if (chunk.mapped && !tried) {
            tried = true;
            expect(() => fs.readSync(fd, chunk.data, 0, 4096, 0)).toThrow(errorWith({ code: 'EFAULT' }));
            new PatternChecker(55).check(chunk.data.subarray(0, 0)); // still readable
          }
          chunk.release();
        }
      } finally {
        fs.closeSync(fd);
      }
      expect(tried).toBe(true);
    } finally {
      fs.rmSync(file, { force: true });
    }
  });

  it('in a worker: the unmask loop over every mapped chunk, byte-exact, nothing pinned after', () => {
    const result = runChild('worker');
    expect(result.stderr).toBe('');
    expect(result.status).toBe(0);
    const report = JSON.parse(result.stdout) as {
      bytes: number;
      mapped: number;
      stats: { chunksCopiedOnWrite: number; chunksMapped: number };
      pool: { pinnedBytes: number };
    };
    expect(report.bytes).toBe(16 * MiB);
    expect(report.mapped).toBeGreaterThan(0);
    expect(report.stats.chunksCopiedOnWrite).toBe(report.stats.chunksMapped);
    expect(report.pool.pinnedBytes).toBe(0);
  });

  it("libuv's threadpool writing into mapped chunks (crypto.randomFill) gets copies too", () => {
    const result = runChild('threadpool');
    expect(result.stderr).toBe('');
    expect(result.status).toBe(0);
    const [received, pool] = result.stdout
      .trim()
      .split('\n')
      .map((line) => JSON.parse(line) as unknown);
    expect((received as { bytes: number }).bytes).toBe(16 * MiB);
    expect((pool as { pool: { chunksCopiedOnWrite: number } }).pool.chunksCopiedOnWrite).toBeGreaterThan(0);
  });

  it.each([
    ['kill-segv', 'process.kill(pid, SIGSEGV)'],
    ['write-outside', 'a real store into read-only memory outside the pool'],
    ['copy-on-write-off', 'a store into a mapped chunk with configure({ copyOnWrite: false })'],
  ])('%s (%s) still ends the process with SIGSEGV', (scenario) => {
    const result = runChild(scenario);
    expect(result.signal).toBe('SIGSEGV');
    expect(result.stdout).not.toMatch(/survived/);
  });
});
