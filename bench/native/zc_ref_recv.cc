// zc_ref_recv: reference TCP_ZEROCOPY_RECEIVE receiver for the benchmark.
//
// The receive loop of the Linux selftest tools/testing/selftests/net/tcp_mmap.c, written anew:
// SO_RCVLOWAT = chunk, one 2 MiB-aligned mapping of `chunk` bytes reused for every call, and
// poll -> getsockopt(TCP_ZEROCOPY_RECEIVE) -> read the mapped bytes -> madvise(MADV_DONTNEED) ->
// recv(recv_skip_hint bytes). It is the leanest loop the kernel API allows (no pool, no copybuf),
// the yardstick the library's zero-copy path is measured against. Kernel facts: shared/KERNEL.md.
//
// usage: zc_ref_recv [--port P] [--chunk N] [--verify SEED] [--no-touch] [--streams N]
// Listens on 127.0.0.1:P (0 = ephemeral), prints {"port":N}, accepts N connections one after
// the other (default 1), receives each until EOF, and prints one JSON line of statistics for
// the last: the ones before warm the process up as a long-running server is warm. Exit 0
// success, 1 error, 2 usage error.

#include <getopt.h>
#include <poll.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cinttypes>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>

#include "../../native/kernel.h"
#include "ref_common.h"

namespace {

using namespace refbench;

constexpr size_t kMapAlign = 2u << 20;  // the selftest's map_align

// The addon's own definition of the kernel struct (glibc's clashes with <linux/tcp.h>).
using ZcReceive = tcpzc::ZerocopyReceive;
using tcpzc::kTcpZerocopyReceive;

// A `chunk`-byte TCP mapping starting on a 2 MiB boundary, as the selftest does: the range
// then spans as few page-table pages as possible, which keeps the kernel's zap of it cheap.
// The over-allocation is a TCP mapping too, so the unaligned head and tail are simply unmapped.
uint8_t* map_region(int fd, size_t chunk) {
  const size_t len = chunk + kMapAlign;
  void* raw = mmap(nullptr, len, PROT_READ, MAP_SHARED, fd, 0);
  if (raw == MAP_FAILED) die_sys("mmap");
  const uintptr_t base = reinterpret_cast<uintptr_t>(raw);
  const uintptr_t start = (base + kMapAlign - 1) & ~static_cast<uintptr_t>(kMapAlign - 1);
  const size_t head = start - base;
  const size_t tail = len - head - chunk;
  if (head > 0 && munmap(raw, head) != 0) die_sys("munmap");
  if (tail > 0 && munmap(reinterpret_cast<void*>(start + chunk), tail) != 0) die_sys("munmap");
  return reinterpret_cast<uint8_t*>(start);
}

// Receives one connection until EOF; returns the bytes mapped, counts its syscalls.
uint64_t receive_stream(int fd, size_t chunk, Consumer& c, uint64_t& syscalls) {
  // Wake up only once a whole chunk is queued (or FIN), so one getsockopt maps a chunk. The
  // kernel caps it at half of tcp_rmem[2] (or of a locked SO_RCVBUF): fine, just fewer bytes.
  const int lowat = static_cast<int>(chunk);
  if (setsockopt(fd, SOL_SOCKET, SO_RCVLOWAT, &lowat, sizeof lowat) != 0) {
    die_sys("setsockopt(SO_RCVLOWAT)");
  }
  // One mapping for every call: each receive replaces the pages of its range.
  uint8_t* const region = map_region(fd, chunk);
  // For what cannot be mapped (recv_skip_hint); page aligned for Consumer's stride.
  void* mem;
  if (posix_memalign(&mem, kPage, chunk) != 0) die(1, "posix_memalign: out of memory");
  uint8_t* const buf = static_cast<uint8_t*>(mem);

  uint64_t mapped = 0;
  for (;;) {
    pollfd pfd{fd, POLLIN, 0};
    syscalls++;
    if (poll(&pfd, 1, -1) < 0) die_sys("poll");

    // The call never blocks: it maps what is queued now, hence the poll above.
    ZcReceive zc{};
    zc.address = reinterpret_cast<uintptr_t>(region);
    zc.length = static_cast<uint32_t>(chunk);
    socklen_t zclen = sizeof zc;
    syscalls++;
    if (getsockopt(fd, IPPROTO_TCP, kTcpZerocopyReceive, &zc, &zclen) != 0) {
      if (errno != EIO) die_sys("getsockopt(TCP_ZEROCOPY_RECEIVE)");
      // EIO: nothing queued and FIN received, i.e. end of stream, except that the kernel counts
      // the queue only up to an urgent mark, so bytes after a last urgent byte would be lost.
      // Let recv() below confirm (0) or deliver them: one extra call per stream.
      zc.length = 0;  // the struct is not written back on failure
    }
    // Reading err clears the socket error, after which recv() would report a clean EOF: an RST
    // must be caught here.
    if (zc.err != 0) die(1, "getsockopt(TCP_ZEROCOPY_RECEIVE): %s", strerror(-zc.err));

    if (zc.length > 0) {
      c.consume(region, zc.length);
      mapped += zc.length;
      // Release the pages now (as the selftest does) instead of leaving the zap to the next
      // getsockopt, which would do it while holding the socket lock.
      syscalls++;
      if (madvise(region, zc.length, MADV_DONTNEED) != 0) die_sys("madvise");
    }
    // Then the bytes before the next mappable page (recv_skip_hint, already queued; any part
    // beyond the buffer comes back as the next call's hint), or, when the call did nothing at
    // all (urgent data stops the mapping), whatever recv() makes of the queue. MSG_DONTWAIT:
    // poll is the only place the loop waits (with SO_RCVLOWAT a blocking recv() could wait for
    // bytes that an urgent byte counted in the hint will never provide).
    const size_t want = zc.recv_skip_hint > 0 ? std::min<size_t>(zc.recv_skip_hint, chunk) : zc.length == 0 ? chunk : 0;
    if (want > 0) {
      syscalls++;
      const ssize_t n = recv(fd, buf, want, MSG_DONTWAIT);
      if (n == 0) break;  // end of stream
      if (n < 0 && errno != EAGAIN) die_sys("recv");
      if (n > 0) c.consume(buf, static_cast<size_t>(n));
    }
  }

  if (munmap(region, chunk) != 0) die_sys("munmap");
  free(mem);
  return mapped;
}

void usage(FILE* out) {
  fprintf(out,
          "usage: %s [--port P] [--chunk N] [--verify SEED] [--no-touch] [--streams N]\n"
          "  --port P       listen on 127.0.0.1:P (default 0: ephemeral)\n"
          "  --chunk N      bytes per receive and SO_RCVLOWAT, a multiple of 4096,\n"
          "                 K/M suffixes (default 512K)\n"
          "  --verify SEED  check every byte against the zc_sender pattern of SEED\n"
          "  --no-touch     read nothing received (the receive loop's own cost)\n"
          "  --streams N    receive N connections in turn, report each (default 1)\n",
          g_prog);
}

}  // namespace

int main(int argc, char** argv) {
  g_prog = "zc_ref_recv";
  uint16_t port = 0;
  size_t chunk = 512 * 1024;
  int streams = 1;
  Consumer c;
  const option longopts[] = {{"port", required_argument, nullptr, 'p'},
                             {"chunk", required_argument, nullptr, 'c'},
                             {"verify", required_argument, nullptr, 'v'},
                             {"no-touch", no_argument, nullptr, 'n'},
                             {"streams", required_argument, nullptr, 's'},
                             {"help", no_argument, nullptr, 'h'},
                             {nullptr, 0, nullptr, 0}};
  for (int o; (o = getopt_long(argc, argv, "", longopts, nullptr)) != -1;) {
    switch (o) {
      case 'p': port = static_cast<uint16_t>(parse_num("port", optarg, 0, 65535, false)); break;
      case 'c': chunk = parse_num("chunk", optarg, kPage, kMaxChunk, true); break;
      case 'n': c.touch = false; break;
      case 's': streams = static_cast<int>(parse_num("streams", optarg, 1, 1000, false)); break;
      case 'v':
        c.verify = true;
        c.seed = static_cast<uint32_t>(parse_num("verify", optarg, 0, UINT32_MAX, false));
        break;
      case 'h': usage(stdout); return 0;
      default: usage(stderr); return 2;
    }
  }
  if (optind < argc) die(2, "unexpected argument '%s'", argv[optind]);
  // Only whole pages are mapped, and the mapping's tail must end on a page boundary.
  if (chunk % kPage != 0) die(2, "--chunk must be a multiple of %zu", kPage);

  return serve_streams(port, streams, c, [chunk](int fd, Consumer& each, uint64_t& syscalls) {
    return receive_stream(fd, chunk, each, syscalls);
  });
}
