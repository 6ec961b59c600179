import { describe, expect, it } from 'vitest';

import { AutoPath, autoPathFor, type AutoPathMember, type ReceivePath } from '../src/auto-path';
import type { NativeEventHandler, NativeReceiverStats } from '../src/binding';
import { attach, probe, type Chunk } from '../src/index';
import { Receiver, type ChunkSource } from '../src/receiver';
import { copySocketLifecycle } from '../src/socket-lifecycle';
import { connectPaused, drain, listen, loopbackFixture, MiB } from './helpers';

// The decision logic, over an injected CPU clock: deterministic, whatever this host's
// kernel and hypervisor make of mapping and copying.
describe('AutoPath (the decision, with an injected cost source)', () => {
  const WINDOW = 1000;

  function group(clock: () => number): AutoPath {
    return new AutoPath({ windowBytes: WINDOW, recheckEvery: 20, cpuNs: clock });
  }

  /**
   * Feeds `bytes / 100` deliveries (of 100 bytes, or `scale` times that in windows `scale`
   * times WINDOW) while the clock charges `cost(path)` µs per MB (ns per 1000 bytes) and,
   * given `faults`, the page-fault counter counts `faults(path)` per delivery.
   */
  function run(
    cost: (path: ReceivePath, delivery: number) => number,
    bytes: number,
    mappable = true,
    faults?: (path: ReceivePath) => number,
    scale = 1,
  ): { auto: AutoPath; paths: ReceivePath[] } {
    let clock = 0;
    let faultCount = 0;
    const paths: ReceivePath[] = [];
    const auto = new AutoPath({
      windowBytes: scale * WINDOW,
      recheckEvery: 20,
      cpuNs: () => clock,
      pageFaults: faults && (() => faultCount),
    });
    const member = auto.join((path) => paths.push(path));
    const size = 100 * scale;
    for (let i = 0; i * 100 < bytes; i++) {
      const path = member.path;
      clock += (size * cost(path, i)) / 1000;
      faultCount += faults?.(path) ?? 0;
      member.delivered(size, path === 'zerocopy' && mappable ? size : 0);
    }
    return { auto, paths };
  }

  it('settles on copying when copying is clearly cheaper, after two pairs of windows', () => {
    const { auto, paths } = run((path) => (path === 'copy' ? 100 : 250), 8 * WINDOW);
    expect(auto.checks).toBe(1);
    expect(auto.path).toBe('copy');
    expect(auto.cost.copy).toBeCloseTo(100, 6);
    expect(auto.decision).toMatch(
      /^copy: copying measured 100 µs of CPU per MB, mapping 250 \(consumer included; 2\.50x\)/,
    );
    // Warm-up and first window on zero-copy, then copy, copy, zero-copy, then settled on copy.
    expect(paths).toEqual(['copy', 'zerocopy', 'copy']);
  });

  it('settles on zero-copy when mapping is cheaper (a cheap consumer, mapping that pays)', () => {
    const { auto } = run((path) => (path === 'zerocopy' ? 80 : 120), 20 * WINDOW);
    expect(auto.checks).toBe(1);
    expect(auto.path).toBe('zerocopy');
    expect(auto.decision).toMatch(/^zerocopy: mapping measured 80 µs .* copying 120 /);
  });

  it('measures four pairs when the paths are close, and takes the lower median window', () => {
    // One inflated window per path (a burst of other work) must not decide. Windows are
    // ten deliveries; after a switch the first delivery only starts the window. Per path:
    // deliveries 0-9 zero-copy warm-up; copy 0 starts, 1-10 warm-up, 11-20 the first
    // measured copy window; zero-copy 10 starts, 11-20 the first measured one.
    const seen = { zerocopy: 0, copy: 0 };
    const { auto } = run((path) => {
      const n = seen[path]++;
      const burst = n >= 11 && n <= 20 ? 1000 : 0;
      return (path === 'zerocopy' ? 100 : 110) + burst;
    }, 12 * WINDOW);
    expect(auto.checks).toBe(1);
    expect(auto.path).toBe('zerocopy');
    expect(auto.cost.zerocopy).toBeCloseTo(100, 6);
    expect(auto.cost.copy).toBeCloseTo(110, 6);
  });

  it('is not swayed by two inflated windows of four on the cheaper path', () => {
    // Copying is cheaper, but two of its four measured windows pay for fresh memory (a
    // forwarder at 4 MiB chunks; the plain median chose mapping there). Copy deliveries
    // 11-20 and 32-41 are its first and third measured windows (21 and 42 start its
    // second and fourth, after a switch).
    const seen = { zerocopy: 0, copy: 0 };
    const { auto } = run((path) => {
      const n = seen[path]++;
      const inflated = (n >= 11 && n <= 20) || (n >= 32 && n <= 41);
      return path === 'copy' ? (inflated ? 3000 : 100) : 200;
    }, 20 * WINDOW);
    expect(auto.checks).toBe(1);
    expect(auto.path).toBe('copy');
    expect(auto.cost.copy).toBeCloseTo(100, 6);
  });

  it("leaves out each path's first window (a path's first use costs more)", () => {
    // Copying is cheaper, but its first chunks pay for fresh memory (seen: a file writer's
    // first copy window at ten times the next ones). Two windows' worth here: the warm-up
    // takes one, the median the other.
    const seen = { zerocopy: 0, copy: 0 };
    const { auto } = run((path) => {
      const n = seen[path]++;
      return path === 'copy' ? (n <= 20 ? 2000 : 80) : 100;
    }, 12 * WINDOW);
    expect(auto.checks).toBe(1);
    expect(auto.path).toBe('copy');
    expect(auto.cost.copy).toBeCloseTo(80, 6);
  });

  describe('windows that paid for fresh memory', () => {
    /**
     * Copying costs 100, mapping 200; but copying's first measured window, and its first
     * window after each switch back from mapping, fault in fresh memory and cost 3000 (a
     * forwarder at 4 MiB chunks whose copies moved to reused blocks mid-measurement).
     */
    function firstUseAfterSwitch(faultsPerDelivery = 30): {
      cost: (path: ReceivePath) => number;
      faults: (path: ReceivePath) => number;
    } {
      const seen = { zerocopy: 0, copy: 0 };
      let last: ReceivePath | null = null;
      let sinceSwitch = 0;
      let inflated = false;
      const cost = (path: ReceivePath): number => {
        if (path !== last) {
          last = path;
          sinceSwitch = 0;
        }
        const n = seen[path]++;
        const k = sinceSwitch++;
        // Deliveries 11-20 are copying's first measured window; after a later switch, 0
        // only starts the window and 1-10 are its first.
        inflated = path === 'copy' && ((n >= 11 && n <= 20) || (n > 20 && k >= 1 && k <= 10));
        if (path === 'copy') return inflated ? 3000 : 100;
        return 200;
      };
      return { cost, faults: () => (inflated ? faultsPerDelivery : 0) };
    }

    it('measures such a window again (without the fault count, the same windows mislead it)', () => {
      const withFaults = firstUseAfterSwitch();
      const { auto, paths } = run(withFaults.cost, 30 * WINDOW, true, withFaults.faults);
      expect(auto.checks).toBe(1);
      expect(auto.path).toBe('copy');
      expect(auto.cost.copy).toBeCloseTo(100, 6);
      // Both windows measured again, each once: clear after two pairs.
      expect(paths).toEqual(['copy', 'zerocopy', 'copy']);

      const blind = run(firstUseAfterSwitch().cost, 30 * WINDOW);
      expect(blind.auto.checks).toBe(1);
      expect(blind.auto.path).toBe('zerocopy');
    });

    it('takes a window for a first use only past 1/16 of its bytes in faulted pages', () => {
      // Deliveries of 100 x 65,536 bytes, ten to a window: 1/16 of a window is 4,096,000
      // bytes, 1,000 pages. 100 faults per delivery are at the line, 101 past it.
      const under = firstUseAfterSwitch(100);
      expect(run(under.cost, 30 * WINDOW, true, under.faults, 65536).auto.path).toBe('zerocopy');
      const over = firstUseAfterSwitch(101);
      expect(run(over.cost, 30 * WINDOW, true, over.faults, 65536).auto.path).toBe('copy');
    });

    it('measures a window again only once: a path that always faults is still measured', () => {
      const { auto } = run(
        (path) => (path === 'copy' ? 100 : 200),
        40 * WINDOW,
        true,
        (path) => (path === 'copy' ? 30 : 0),
      );
      expect(auto.checks).toBe(1);
      expect(auto.path).toBe('copy');
      expect(auto.cost.copy).toBeCloseTo(100, 6);
    });
  });

  /**
   * Delivers in turn from `members` until the first decision; copying costs 100 µs per MB,
   * mapping 300. A member's stale delivery (read ahead before its last switch, counted
   * down in `stale`) is on the other path, and costs and looks like it (copies in a
   * zero-copy window): counted, such deliveries would blur both figures.
   */
  function untilDecided(auto: AutoPath, members: AutoPathMember[], stale: number[], clock: { ns: number }): void {
    for (let i = 0; auto.checks === 0 && i < 4000; i++) {
      const m = i % members.length;
      const member = members[m];
      const fresh = stale[m] === 0;
      if (!fresh) stale[m]--;
      const path: ReceivePath = fresh ? member.path : member.path === 'copy' ? 'zerocopy' : 'copy';
      clock.ns += (100 * (path === 'copy' ? 100 : 300)) / 1000;
      member.delivered(100, path === 'zerocopy' ? 100 : 0, fresh);
    }
  }

  it('chunks read ahead on the old path count neither for the new window nor for the probe', () => {
    const clock = { ns: 0 };
    const auto = group(() => clock.ns);
    const stale = [0];
    const member = auto.join(() => (stale[0] = 3));
    untilDecided(auto, [member], stale, clock);
    expect(auto.checks).toBe(1);
    expect(auto.cost.copy).toBeCloseTo(100, 6);
    expect(auto.cost.zerocopy).toBeCloseTo(300, 6);
    expect(member.path).toBe('copy');
    expect(member.decision).toMatch(/^copy: copying measured 100 µs/);
  });

  it('with several receivers, one still consuming old-path chunks restarts the window', () => {
    const clock = { ns: 0 };
    const auto = group(() => clock.ns);
    // Member 0 keeps up (nothing queued at a switch); the others have three chunks queued.
    const stale = [0, 0, 0, 0];
    const members = stale.map((_, m) => auto.join(() => (stale[m] = m === 0 ? 0 : 3)));
    untilDecided(auto, members, stale, clock);
    expect(auto.checks).toBe(1);
    expect(auto.cost.copy).toBeCloseTo(100, 6);
    expect(auto.cost.zerocopy).toBeCloseTo(300, 6);
  });

  it('a stream under half mappable copies on its own after its first window', () => {
    const auto = group(() => 0);
    const paths: ReceivePath[] = [];
    const member = auto.join((path) => paths.push(path));
    for (let i = 0; i < 10; i++) member.delivered(100, 0);
    expect(member.path).toBe('copy');
    expect(paths).toEqual(['copy']);
    expect(member.decision).toBe('copy: only 0.0% of the stream could be mapped');
    // The group is not swayed by one unmappable peer.
    expect(auto.path).toBe('zerocopy');
  });

  it('a stream copying on its own looks again by mapping on its own, and rejoins once mappable', () => {
    let clock = 0;
    const auto = group(() => clock);
    const paths: ReceivePath[] = [];
    const member = auto.join((path) => paths.push(path));
    // Its first window: nothing mapped, so it copies on its own.
    for (let i = 0; i < 10; i++) member.delivered(100, 0);
    expect(paths).toEqual(['copy']);
    // After recheckEvery windows of its own bytes it maps again, on its own.
    for (let i = 0; i < 200; i++) {
      clock += 10;
      member.delivered(100, 0);
    }
    expect(paths).toEqual(['copy', 'zerocopy']);
    expect(member.path).toBe('zerocopy');
    expect(member.decision).toMatch(/^zerocopy: looking again whether this stream can be mapped \(copy: only 0\.0%/);
    // Chunks read ahead on copy do not count towards the probe, nor do its bytes towards
    // the group's windows.
    for (let i = 0; i < 3; i++) member.delivered(100, 0, false);
    for (let i = 0; i < 9; i++) member.delivered(100, 100);
    expect(member.decision).toMatch(/^zerocopy: looking again/);
    member.delivered(100, 100);
    // Mappable now: it follows the group again (on zero-copy, so no switch).
    expect(paths).toEqual(['copy', 'zerocopy']);
    expect(member.decision).toBe(auto.decision);
    expect(member.path).toBe(auto.path);
  });

  it('an unmappable peer does not decide for the group: its copies are not a measurement of mapping', () => {
    let clock = 0;
    const auto = group(() => clock);
    const plain = auto.join(() => undefined);
    // Its first window: nothing mapped, so it copies on its own from here on.
    for (let i = 0; i < 10; i++) plain.delivered(100, 0);
    expect(plain.path).toBe('copy');
    // Long after, still alone: the group has nothing to measure and decides nothing.
    for (let i = 0; i < 1000; i++) {
      clock += 10;
      plain.delivered(100, 0);
    }
    expect(auto.checks).toBe(0);
    // A mappable peer joins: mapping is cheaper for it, and the group says so.
    const mappable = auto.join(() => undefined);
    for (let i = 0; auto.checks === 0 && i < 2000; i++) {
      clock += mappable.path === 'zerocopy' ? 80 : 120;
      mappable.delivered(100, mappable.path === 'zerocopy' ? 100 : 0);
      // The plain peer's copies cost CPU in every window, whatever the group's path. When
      // it looked again it used to follow the group, so its bytes counted in copy windows
      // but not in zero-copy ones (where its probe then put it back on its own): copy
      // windows looked cheaper. It now probes on its own, outside the windows.
      clock += 120;
      plain.delivered(100, 0);
    }
    expect(auto.checks).toBe(1);
    expect(auto.path).toBe('zerocopy');
    expect(mappable.path).toBe('zerocopy');
    // The plain peer looks again now and then (its path may have changed), and goes back
    // to copying within one probe window.
    for (let i = 0; plain.path !== 'copy' && i < 20; i++) plain.delivered(100, 0);
    expect(plain.path).toBe('copy');
  });

  it('a stream that stops being mappable while it follows copies on its own after its next probe', () => {
    let clock = 0;
    const auto = group(() => clock);
    const paths: ReceivePath[] = [];
    const member = auto.join((path) => paths.push(path));
    // Mappable in its first probe, then (a zero-copy error made its source copy for good,
    // or the path to the peer changed) no longer mappable.
    for (let i = 0; i < 10; i++) member.delivered(100, 100);
    // The group's copy windows, then its first measured zero-copy one: a probe's worth of
    // copies there, and the member goes.
    for (let i = 0; i < 100 && member.decision.startsWith('measuring'); i++) {
      clock += 100;
      member.delivered(100, 0);
    }
    expect(paths).toEqual(['copy', 'zerocopy', 'copy']);
    expect(member.path).toBe('copy');
    expect(member.decision).toBe('copy: only 0.0% of the stream could be mapped');
    // Its copies were no measurement of mapping: the zero-copy window was not counted.
    expect(auto.checks).toBe(0);
    expect(auto.cost.zerocopy).toBeNull();
  });

  it('a peer that stops being mappable does not keep the group from deciding, however many bytes it brings', () => {
    let clock = 0;
    const auto = group(() => clock);
    const mappable = auto.join(() => undefined);
    const turning = auto.join(() => undefined);
    // Both map in their first probe; then the busier one stops being mappable. While it
    // followed, it made every zero-copy window of the group mostly copies, and each such
    // window was measured again, for ever.
    let turned = false;
    for (let i = 0; auto.checks === 0 && i < 5000; i++) {
      clock += mappable.path === 'zerocopy' ? 80 : 120;
      mappable.delivered(100, mappable.path === 'zerocopy' ? 100 : 0);
      for (let k = 0; k < 9; k++) {
        clock += 120;
        turning.delivered(100, turning.path === 'zerocopy' && !turned ? 100 : 0);
      }
      if (i === 2) turned = true;
    }
    expect(turning.path).toBe('copy');
    expect(turning.decision).toMatch(/^copy: only /);
    expect(auto.checks).toBe(1);
    expect(auto.path).toBe('zerocopy');
    expect(mappable.path).toBe('zerocopy');
  });

  it('a group outlives its receivers (the next connection carries on); idle groups are bounded', () => {
    const options = { cpuNs: () => 0, windowBytes: 1000 };
    const first = autoPathFor('kept', 4096, options);
    first.join(() => undefined).leave();
    expect(autoPathFor('kept', 4096, options)).toBe(first);
    // Names made per connection: the least recently used idle ones go past 64 groups.
    for (let i = 0; i < 100; i++)
      autoPathFor(`connection-${String(i)}`, 4096, options)
        .join(() => undefined)
        .leave();
    expect(autoPathFor('kept', 4096, options)).not.toBe(first);
    const busy = autoPathFor('busy', 4096, options);
    busy.join(() => undefined);
    for (let i = 0; i < 100; i++) autoPathFor(`again-${String(i)}`, 4096, options);
    expect(autoPathFor('busy', 4096, options)).toBe(busy);
  });

  it('re-checks now and then, and switches when the costs turned around', () => {
    // Copying is cheaper at first; from delivery 400 on, mapping is.
    const { auto } = run(
      (path, i) => (i < 400 ? (path === 'copy' ? 100 : 250) : path === 'copy' ? 250 : 100),
      200 * WINDOW,
    );
    expect(auto.checks).toBeGreaterThanOrEqual(2);
    expect(auto.path).toBe('zerocopy');
  });

  it('re-checks the further apart the clearer the choice (its cost grows with the ratio)', () => {
    const checksOver = (dearer: number): number =>
      run((path) => (path === 'copy' ? 100 : dearer), 2000 * WINDOW).auto.checks;
    // recheckEvery 20 windows: within 25%, every 20; at 2x, every 80; from 5x, every 320.
    const close = checksOver(110);
    const twice = checksOver(200);
    const far = checksOver(1000);
    expect(close).toBeGreaterThan(2 * twice);
    expect(twice).toBeGreaterThan(2 * far);
    expect(far).toBeGreaterThanOrEqual(2);
    // And says so, at the default 128 windows of 8 MiB.
    const decisionAt = (dearer: number): string => {
      let clock = 0;
      const auto = new AutoPath({ cpuNs: () => clock });
      const member = auto.join(() => undefined);
      for (let i = 0; auto.checks === 0 && i < 1000; i++) {
        clock += member.path === 'copy' ? 100 : dearer; // per MB
        member.delivered(1e6, member.path === 'zerocopy' ? 1e6 : 0);
      }
      return auto.decision;
    };
    expect(decisionAt(110)).toMatch(/1\.10x\), checked again after 128 MiB$/);
    expect(decisionAt(200)).toMatch(/2\.00x\), re-checked every 4096 MiB$/);
    expect(decisionAt(1000)).toMatch(/10\.00x\), re-checked every 16384 MiB$/);
  });

  it('checks a close decision again soon until a re-check backs it; a clear first one is not', () => {
    // At start-up copying looks 10% cheaper; from the first decision on, mapping is 20%
    // cheaper. Defaults: windows of 8 MiB, re-checks every 128 windows (1 GiB).
    let clock = 0;
    const auto = new AutoPath({ cpuNs: () => clock });
    const member = auto.join(() => undefined);
    const checks: { mib: number; decision: string }[] = [];
    for (let mib = 0; auto.checks < 4 && mib < 10_000; mib++) {
      clock += member.path === 'copy' ? 100 : auto.checks === 0 ? 110 : 80; // per MB
      member.delivered(2 ** 20, member.path === 'zerocopy' ? 2 ** 20 : 0);
      if (auto.checks > checks.length) checks.push({ mib, decision: auto.decision });
    }
    expect(checks.map((check) => check.decision)).toEqual([
      expect.stringMatching(/^copy: .*1\.10x\), checked again after 128 MiB$/),
      // The switch is a decision nothing backs yet either.
      expect.stringMatching(/^zerocopy: .*1\.25x\), checked again after 128 MiB$/),
      expect.stringMatching(/^zerocopy: .*1\.25x\), re-checked every 1024 MiB$/),
      expect.stringMatching(/^zerocopy: .*1\.25x\), re-checked every 1024 MiB$/),
    ]);
    // Soon: 128 MiB, then the re-check's six windows (and four more to confirm a switch).
    expect(checks[1].mib - checks[0].mib).toBeLessThan(256);
    expect(checks[2].mib - checks[1].mib).toBeLessThan(256);
    expect(checks[3].mib - checks[2].mib).toBeGreaterThan(1024);

    // A clear first decision (every window 1.5x apart) is not checked again soon.
    clock = 0;
    const clear = new AutoPath({ cpuNs: () => clock });
    const alone = clear.join(() => undefined);
    for (let i = 0; clear.checks === 0 && i < 1000; i++) {
      clock += alone.path === 'copy' ? 100 : 160;
      alone.delivered(2 ** 20, alone.path === 'zerocopy' ? 2 ** 20 : 0);
    }
    expect(clear.decision).toMatch(/1\.60x\), re-checked every 2458 MiB$/);
  });

  describe('a burst of other work during a re-check', () => {
    /**
     * Deliveries of 100 bytes (10 to a window) at `costs` µs per MB, except `cost` over
     * the deliveries [from, to) of each burst, counted from the second decision (the
     * first, a close one, is checked again soon; that one backs it). The next re-check
     * starts 200 deliveries after it (recheckEvery 20): the current path's window
     * (200-209), the other path's warm-up (210 starts it, 211-220), then other (221-230),
     * current (231 starts it, 232-241), other (243-252); measuring again before a switch
     * goes on with current (254-263), other (265-274), current, other.
     */
    function withBurst(
      costs: Record<ReceivePath, number>,
      bursts: { from: number; to: number; cost: number }[],
      after: number,
    ): { auto: AutoPath; pathsAfterDecision: ReceivePath[]; checksAfter: number } {
      let clock = 0;
      const paths: ReceivePath[] = [];
      const auto = group(() => clock);
      const member = auto.join((path) => paths.push(path));
      let sinceDecision = -1;
      let pathsBefore = 0;
      let checksBefore = 0;
      for (let i = 0; sinceDecision < after && i < 10_000; i++) {
        const burst = bursts.find(({ from, to }) => sinceDecision >= from && sinceDecision < to);
        clock += (100 * (burst?.cost ?? costs[member.path])) / 1000;
        member.delivered(100, member.path === 'zerocopy' ? 100 : 0);
        if (sinceDecision >= 0) sinceDecision++;
        else if (auto.checks === 2) {
          sinceDecision = 0;
          pathsBefore = paths.length;
          checksBefore = auto.checks;
        }
      }
      return { auto, pathsAfterDecision: paths.slice(pathsBefore), checksAfter: auto.checks - checksBefore };
    }

    it('over two windows in a row, inflates one window of each path, not both of one', () => {
      // Back to back (the old order: current, warm-up, other, other, current), both copy
      // windows fell in the burst and copying measured 700.
      const { auto, checksAfter } = withBurst({ zerocopy: 100, copy: 120 }, [{ from: 221, to: 241, cost: 700 }], 270);
      expect(checksAfter).toBe(1);
      expect(auto.path).toBe('zerocopy');
      expect(auto.cost.copy).toBeCloseTo(120, 6);
      expect(auto.decision).toMatch(/copying 120 \(consumer included; 1\.20x\)/);
    });

    it('a re-check measures again before it switches (pooled), and keeps the path the burst hid', () => {
      // Both of the current path's windows in bursts: copying's cheaper window measures
      // 900, mapping's 120. Pooled with two more pairs, copying's lower median is 100.
      const { auto, pathsAfterDecision, checksAfter } = withBurst(
        { zerocopy: 120, copy: 100 },
        [
          { from: 200, to: 210, cost: 900 },
          { from: 232, to: 242, cost: 900 },
        ],
        320,
      );
      expect(checksAfter).toBe(1);
      expect(auto.path).toBe('copy');
      expect(auto.cost).toEqual({ zerocopy: expect.closeTo(120, 6) as number, copy: expect.closeTo(100, 6) as number });
      // The re-check went to mapping, back and to mapping again; measuring again went back
      // and forth twice; then back to copying.
      expect(pathsAfterDecision).toEqual(Array(4).fill(['zerocopy', 'copy']).flat());
    });

    it('a ratio the last decision did not back does not put the next re-check further off', () => {
      // Both copy windows in the burst: kept mapping at 7x, but the decision before
      // measured 1.2x. The next re-check comes at the usual distance, not 16 times it.
      const { auto, checksAfter } = withBurst({ zerocopy: 100, copy: 120 }, [{ from: 221, to: 253, cost: 700 }], 600);
      expect(checksAfter).toBe(2);
      expect(auto.decision).toMatch(/copying 120 \(consumer included; 1\.20x\)/);
      expect(auto.path).toBe('zerocopy');
    });
  });

  it('a re-check keeps the path when the other is not cheaper by more than 5%', () => {
    const { auto } = run(
      (path, i) => (i < 200 ? (path === 'copy' ? 100 : 200) : path === 'copy' ? 100 : 97),
      200 * WINDOW,
    );
    expect(auto.checks).toBeGreaterThanOrEqual(2);
    expect(auto.path).toBe('copy');
    expect(auto.decision).toMatch(
      /^copy: copying measured 100 µs of CPU per MB, mapping 97 \(consumer included; kept: within 5%\)/,
    );
  });

  it('a later receiver starts on the path the group chose, without measuring again', () => {
    let clock = 0;
    const auto = group(() => clock);
    const first = auto.join(() => undefined);
    for (let i = 0; auto.checks === 0 && i < 200; i++) {
      clock += first.path === 'copy' ? 100 : 250;
      first.delivered(1000, first.path === 'zerocopy' ? 1000 : 0);
    }
    first.leave();
    expect(auto.path).toBe('copy');
    const paths: ReceivePath[] = [];
    const second = auto.join((path) => paths.push(path));
    expect(paths).toEqual(['copy']);
    expect(second.path).toBe('copy');
    expect(second.decision).toMatch(/^copy: copying measured 100 µs/);
    for (let i = 0; i < 10; i++) second.delivered(1000, 0);
    expect(paths).toEqual(['copy']);
    expect(auto.checks).toBe(1);
  });

  it('every member follows the path under measurement, and a member that left keeps its stats', () => {
    let clock = 0;
    const auto = group(() => clock);
    const a: ReceivePath[] = [];
    const b: ReceivePath[] = [];
    const memberA = auto.join((path) => a.push(path));
    const memberB = auto.join((path) => b.push(path));
    // Deliveries from both count towards the group's windows.
    for (let i = 0; auto.checks === 0 && i < 400; i++) {
      clock += auto.path === 'copy' ? 10 : 25;
      (i % 2 === 0 ? memberA : memberB).delivered(100, auto.path === 'zerocopy' ? 100 : 0);
    }
    expect(auto.checks).toBe(1);
    expect(a).toEqual(b);
    expect(a.at(-1)).toBe('copy');
    memberA.leave();
    const decision = memberA.decision;
    expect(auto.members).toBe(1);
    memberB.delivered(100, 0);
    expect(memberA.decision).toBe(decision);
  });

  it('CPU spent while no receiver is attached is not charged to the window in progress', () => {
    let clock = 0;
    const auto = group(() => clock);
    const first = auto.join(() => undefined);
    // Half the warm-up window, then the thread works on something else for a long time.
    for (let i = 0; i < 5; i++) {
      clock += 10;
      first.delivered(100, 100);
    }
    first.leave();
    clock += 1e9;
    const second = auto.join(() => undefined);
    for (let i = 0; auto.checks === 0 && i < 400; i++) {
      clock += second.path === 'copy' ? 120 : 100;
      second.delivered(1000, second.path === 'zerocopy' ? 1000 : 0);
    }
    expect(auto.path).toBe('zerocopy');
    expect(auto.cost.zerocopy).toBeCloseTo(100, 6);
  });
});

describe('a receiver in auto mode (scripted source, injected clock)', () => {
  it('tells the group which chunks were read ahead before a switch', async () => {
    const { server, port, accepted } = await listen();
    const client = await connectPaused(port);
    const socket = await accepted;
    let clock = 0;
    const auto = new AutoPath({ windowBytes: 1000, recheckEvery: 1000, cpuNs: () => clock });
    const switches: boolean[] = [];
    let push: NativeEventHandler = () => undefined;
    const source: ChunkSource = {
      start: () => undefined,
      stop: () => undefined,
      close: () => undefined,
      stats: () => ({ zerocopy: switches.at(-1) !== true, fallbackReason: null }) as NativeReceiverStats,
      setCopying: (copying) => switches.push(copying),
    };
    const receiver = new Receiver(
      socket,
      (onEvent) => {
        push = onEvent;
        return source;
      },
      { lifecycle: copySocketLifecycle, autoPath: auto },
    );
    // Two chunks per wake-up on the source's current path; the consumer's work on a chunk
    // costs 100 µs per MB copied, 300 mapped. The second chunk of a pair is often still
    // queued when reading the first one switches the path.
    for (let i = 0; auto.checks === 0 && i < 500; i++) {
      const mapped = switches.at(-1) !== true;
      push(Buffer.alloc(100), Buffer.alloc(100), mapped ? 3 : 0, null, false);
      for (let k = 0; k < 2; k++) {
        const chunk = (await receiver.read()) as Chunk;
        clock += (chunk.data.length * (chunk.mapped ? 300 : 100)) / 1000;
      }
    }
    expect(auto.checks).toBe(1);
    expect(switches.length).toBeGreaterThanOrEqual(2);
    // Counted in the new path's window, a chunk of the old path would blur both figures.
    expect(auto.cost.copy).toBeCloseTo(100, 6);
    expect(auto.cost.zerocopy).toBeCloseTo(300, 6);
    expect(switches.at(-1)).toBe(true);
    receiver.close();
    client.destroy();
    socket.destroy();
    server.close();
  });
});

const { serverAndSender, zerocopyStream } = loopbackFixture();

/** `us` per MiB of the chunk: a cost per byte, as a real consumer's. */
function perMiB(chunk: Chunk, us: number): number {
  return (us * chunk.data.length) / MiB;
}

/**
 * Burns about `us` microseconds of CPU (not of wall time: on a loaded machine a
 * wall-clock spin is descheduled part of the time and costs the thread less than asked).
 */
function spin(us: number): void {
  const start = process.cpuUsage();
  for (;;) {
    const spent = process.cpuUsage(start);
    if (spent.user + spent.system >= us) return;
  }
}

// The whole loop on real sockets: the consumer's cost is part of what auto mode measures,
// so a consumer that is expensive on one kind of chunk steers it, whatever the kernel's
// own costs on this host. With a cheap consumer the two paths are too close on the
// project VM to show either direction reliably; the unit tests above cover that logic.
// 5 ms per MiB: well above what reading every byte costs (mapped pages cost up
// to 1.2 ms/MB more to read than freshly copied ones here).
describe.skipIf(!probe().supported)("mode 'auto' on real streams", () => {
  const bytes = 256 * MiB;

  async function autoStream(seed: number, onChunk: (chunk: Chunk) => void) {
    const { receiver, socket } = await zerocopyStream(bytes, seed, {
      chunkSize: MiB,
      mode: 'auto',
      autoGroup: `test-${seed}`,
    });
    const received = await drain(receiver, seed, onChunk);
    socket.destroy();
    expect(received.error).toBeNull();
    expect(received.bytes).toBe(bytes);
    return { received, stats: receiver.stats };
  }

  // Under test:asan (the ASan runtime preloaded into Node) copying itself costs more than
  // the 5 ms per MiB these tests add to mapped chunks (measured: copying 11556 µs of thread
  // CPU per MB against mapping 7926 with the added cost: ASan's interceptors check every
  // byte recv() writes), so auto rightly keeps mapping there. These are left to the normal run.
  const underAsan = (process.env.LD_PRELOAD ?? '').includes('libasan');
  it.skipIf(underAsan)('settles on copying when mapped chunks cost the consumer more', async () => {
    const { stats, received } = await autoStream(161, (chunk) => chunk.mapped && spin(perMiB(chunk, 5000)));
    expect(stats.path, stats.decision ?? 'no decision yet').toBe('copy');
    expect(stats.decision).toMatch(/^copy: copying measured \d+ µs of CPU per MB, mapping \d+/);
    expect(stats.measuredCpu?.zerocopy).toBeGreaterThan(stats.measuredCpu?.copy ?? Infinity);
    // Only the warm-up and measurement windows were mapped.
    expect(received.mappedBytes).toBeLessThan(bytes / 2);
  });

  it.skipIf(underAsan)("a server's next connection starts on the path its group chose", async () => {
    const expensiveMapped = (chunk: Chunk) => chunk.mapped && spin(perMiB(chunk, 5000));
    const group = 'next-connection';
    const first = await zerocopyStream(bytes, 166, { chunkSize: MiB, mode: 'auto', autoGroup: group });
    await drain(first.receiver, 166, expensiveMapped);
    first.socket.destroy();
    expect(first.receiver.stats.path, first.receiver.stats.decision ?? '').toBe('copy');
    const next = await zerocopyStream(64 * MiB, 167, { chunkSize: MiB, mode: 'auto', autoGroup: group });
    const received = await drain(next.receiver, 167, expensiveMapped);
    next.socket.destroy();
    expect(received.bytes).toBe(64 * MiB);
    expect(received.mappedBytes).toBe(0);
    expect(next.receiver.stats.decision).toBe(first.receiver.stats.decision);
    // Another group measures for itself.
    const other = await zerocopyStream(16 * MiB, 168, { chunkSize: MiB, mode: 'auto', autoGroup: 'another' });
    const otherReceived = await drain(other.receiver, 168);
    other.socket.destroy();
    expect(otherReceived.mappedBytes).toBeGreaterThan(0);
  });

  it('settles on zero-copy when copied chunks cost the consumer more', async () => {
    const { stats, received } = await autoStream(162, (chunk) => !chunk.mapped && spin(perMiB(chunk, 5000)));
    expect(stats.path).toBe('zerocopy');
    expect(stats.decision).toMatch(/^zerocopy: mapping measured \d+ µs of CPU per MB, copying \d+/);
    expect(received.mappedBytes).toBeGreaterThan(bytes / 2);
  });

  it('settles on copying a stream that cannot be mapped (plain sender)', async () => {
    const { socket } = await serverAndSender({ bytes, seed: 163, mode: 'plain' });
    const receiver = attach(socket, { chunkSize: MiB, autoGroup: 'plain-sender' });
    const received = await drain(receiver, 163);
    socket.destroy();
    expect(received.bytes).toBe(bytes);
    expect(receiver.stats.path).toBe('copy');
    expect(receiver.stats.decision).toMatch(/^copy: only \d+\.\d% of the stream could be mapped$/);
  });

  it("'zerocopy' maps whatever it can even when mapping costs the consumer more; 'copy' never maps", async () => {
    const { receiver, socket } = await zerocopyStream(64 * MiB, 164, { chunkSize: MiB, mode: 'zerocopy' });
    const received = await drain(receiver, 164, (chunk) => chunk.mapped && spin(perMiB(chunk, 5000)));
    socket.destroy();
    expect(received.mappedBytes / received.bytes).toBeGreaterThan(0.99);
    expect(receiver.stats.decision).toBeNull();
    const copy = await zerocopyStream(64 * MiB, 165, { chunkSize: MiB, mode: 'copy' });
    const copied = await drain(copy.receiver, 165);
    copy.socket.destroy();
    expect(copied.mappedBytes).toBe(0);
    expect(copy.receiver.stats.decision).toBeNull();
  });
});
