import * as os from 'node:os';

import { describe, expect, it } from 'vitest';

import { probe } from '../src/index';

/** [major, minor] of a kernel release string such as "6.18.44-fc". */
function kernelVersion(release: string): [number, number] {
  const match = /^(\d+)\.(\d+)/.exec(release);
  return match === null ? [0, 0] : [Number(match[1]), Number(match[2])];
}

function atLeast(release: string, major: number, minor: number): boolean {
  const [a, b] = kernelVersion(release);
  return a > major || (a === major && b >= minor);
}

describe('probe()', () => {
  it('reports the running kernel and features that match its version', () => {
    const result = probe();
    expect(result.kernel).toBe(os.release());
    const { features } = result;
    if (process.platform !== 'linux') {
      expect(result.supported).toBe(false);
      expect(result.reason).toMatch(/Linux/);
      return;
    }
    expect(features.nativeAddon).toBe(true);
    expect(features.zerocopyReceive).toBe(atLeast(result.kernel, 4, 18));
    expect(features.inqAndError).toBe(atLeast(result.kernel, 5, 7));
    // copybuf arrived in 5.11 and was backported to 5.10.82.
    if (atLeast(result.kernel, 5, 11)) expect(features.copybuf).toBe(true);
    expect(features.tlbCleanHint).toBe(features.copybuf);
    expect(features.rxTimestamps).toBe(atLeast(result.kernel, 5, 12));
    const expectedSize = features.rxTimestamps ? 64 : features.copybuf ? 40 : features.inqAndError ? 24 : 16;
    expect(features.structSize).toBe(features.zerocopyReceive ? expectedSize : 0);
    expect(result.supported).toBe(features.zerocopyReceive && features.externalBuffers);
    if (result.supported) expect(result.reason).toBeUndefined();
    else expect(result.reason).toMatch(/\S/);
  });

  it('answers the same each time and cannot be changed by the caller', () => {
    const first = probe();
    first.features.copybuf = !first.features.copybuf;
    first.supported = !first.supported;
    const second = probe();
    expect(second.supported).toBe(!first.supported);
    expect(second.features.copybuf).toBe(!first.features.copybuf);
  });
});
