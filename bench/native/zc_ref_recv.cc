// zc_ref_recv: reference TCP_ZEROCOPY_RECEIVE receiver for the benchmark.
//
// The receive loop of the Linux selftest tools/testing/selftests/net/tcp_mmap.c, written anew:
// SO_RCVLOWAT = chunk, one 2 MiB-aligned mapping of `chunk` bytes reused for every call, and
// poll -> getsockopt(TCP_ZEROCOPY_RECEIVE) -> read the mapped bytes -> madvise(MADV_DONTNEED) ->
// recv(recv_skip_hint bytes). It is the leanest loop the kernel API allows (no pool, no copybuf),
// the yardstick the library's zero-copy path is measured against. Kernel facts: shared/KERNEL.md.
//
// usage: zc_ref_recv [--port P] [--chunk N] [--verify SEED]
// Listens on 127.0.0.1:P (0 = ephemeral), prints {"port":N}, accepts one connection, receives
// until EOF, prints one JSON line of statistics. Exit 0 success, 1 error, 2 usage error.

#include <arpa/inet.h>
#include <getopt.h>
#include <netinet/in.h>
#include <poll.h>
#include <sys/mman.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cinttypes>
#include <cstdarg>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <ctime>

namespace {

const char kProg[] = "zc_ref_recv";
constexpr size_t kPage = 4096;
constexpr size_t kMapAlign = 2u << 20;  // the selftest's map_align
constexpr size_t kLine = 64;
constexpr uint64_t kMaxChunk = 1u << 30;  // zc.length is a u32

// glibc's <netinet/tcp.h> has a 16-byte version of this struct that clashes with <linux/tcp.h>,
// so the Linux 6.x layout is defined here.
constexpr int kTcpZerocopyReceive = 35;
struct ZcReceive {
  uint64_t address;         // in: page-aligned start inside a TCP mapping
  uint32_t length;          // in: bytes wanted; out: bytes mapped
  uint32_t recv_skip_hint;  // out: bytes before the next mappable page, to read()
  uint32_t inq;             // out: bytes still queued
  int32_t err;              // out: pending socket error as -errno, cleared by reading it
  uint64_t copybuf_address;
  int32_t copybuf_len;
  uint32_t flags;
  uint64_t msg_control;
  uint64_t msg_controllen;
  uint32_t msg_flags;
  uint32_t reserved;
};
static_assert(sizeof(ZcReceive) == 64, "Linux 6.x struct tcp_zerocopy_receive");

[[noreturn]] void die(int status, const char* fmt, ...) {
  va_list ap;
  va_start(ap, fmt);
  fprintf(stderr, "%s: ", kProg);
  vfprintf(stderr, fmt, ap);
  va_end(ap);
  fputc('\n', stderr);
  exit(status);
}

[[noreturn]] void die_sys(const char* call) { die(1, "%s: %s", call, strerror(errno)); }

// Decimal or 0x-hex in [min, max]; with `suffix`, an optional binary K or M.
uint64_t parse_num(const char* opt, const char* s, uint64_t min, uint64_t max, bool suffix) {
  char* end;
  errno = 0;
  uint64_t v = strtoull(s, &end, 0);
  if (errno != 0 || end == s || *s == '-') die(2, "invalid value for --%s: '%s'", opt, s);
  if (suffix && (*end == 'K' || *end == 'k' || *end == 'M' || *end == 'm')) {
    const int shift = (*end++ & ~0x20) == 'K' ? 10 : 20;
    v = v > (max >> shift) ? max + 1 : v << shift;
  }
  if (*end != '\0') die(2, "invalid value for --%s: '%s'", opt, s);
  if (v < min || v > max) die(2, "value for --%s out of range: '%s'", opt, s);
  return v;
}

// "Received means read": every byte delivered, mapped or copied, is looked at. Touching one
// byte per 64-byte line pulls every cache line in (and, for mapped pages, walks the fresh page
// table entries) at the least cost a real consumer could pay. Buffers given to consume() start
// page aligned, so a stride of 64 from the start hits every line once. The checksum is printed,
// so the compiler cannot drop the loads.
struct Consumer {
  bool verify = false;
  uint32_t seed = 0;
  uint64_t offset = 0;  // stream offset of the next byte = bytes received so far
  uint64_t checksum = 0;

  void consume(const uint8_t* p, size_t n) {
    if (verify) {
      for (size_t j = 0; j < n; j++) {
        const uint64_t i = offset + j;
        const uint32_t word = (static_cast<uint32_t>(i / 4) ^ seed) * 0x9E3779B1u;
        const uint8_t want = static_cast<uint8_t>(word >> (8 * (i % 4)));
        if (p[j] != want) {
          die(1, "data mismatch at stream offset %" PRIu64 ": got 0x%02x, expected 0x%02x", i,
              p[j], want);
        }
        checksum += p[j];
      }
    } else {
      for (size_t j = 0; j < n; j += kLine) checksum += p[j];
    }
    offset += n;
  }
};

struct Sample {
  timespec wall;
  rusage ru;
};

Sample sample() {
  Sample s;
  clock_gettime(CLOCK_MONOTONIC, &s.wall);
  getrusage(RUSAGE_SELF, &s.ru);
  return s;
}

double tv_ms(const timeval& a, const timeval& b) {
  return (b.tv_sec - a.tv_sec) * 1e3 + (b.tv_usec - a.tv_usec) / 1e3;
}

// Listens on 127.0.0.1:port, announces the port and returns the one accepted connection.
int listen_and_accept(uint16_t port) {
  const int ls = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  if (ls < 0) die_sys("socket");
  const int one = 1;
  if (setsockopt(ls, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one) != 0) {
    die_sys("setsockopt(SO_REUSEADDR)");
  }
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_port = htons(port);
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  if (bind(ls, reinterpret_cast<sockaddr*>(&addr), sizeof addr) != 0) die_sys("bind");
  if (listen(ls, 1) != 0) die_sys("listen");
  socklen_t len = sizeof addr;
  if (getsockname(ls, reinterpret_cast<sockaddr*>(&addr), &len) != 0) die_sys("getsockname");
  printf("{\"port\":%u}\n", ntohs(addr.sin_port));
  fflush(stdout);
  const int fd = accept4(ls, nullptr, nullptr, SOCK_CLOEXEC);
  if (fd < 0) die_sys("accept");
  close(ls);
  return fd;
}

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

void usage(FILE* out) {
  fprintf(out,
          "usage: %s [--port P] [--chunk N] [--verify SEED]\n"
          "  --port P       listen on 127.0.0.1:P (default 0: ephemeral)\n"
          "  --chunk N      bytes per receive and SO_RCVLOWAT, a multiple of 4096,\n"
          "                 K/M suffixes (default 512K)\n"
          "  --verify SEED  check every byte against the zc_sender pattern of SEED\n",
          kProg);
}

}  // namespace

int main(int argc, char** argv) {
  uint16_t port = 0;
  size_t chunk = 512 * 1024;
  Consumer c;
  const option longopts[] = {{"port", required_argument, nullptr, 'p'},
                             {"chunk", required_argument, nullptr, 'c'},
                             {"verify", required_argument, nullptr, 'v'},
                             {"help", no_argument, nullptr, 'h'},
                             {nullptr, 0, nullptr, 0}};
  for (int o; (o = getopt_long(argc, argv, "", longopts, nullptr)) != -1;) {
    switch (o) {
      case 'p': port = static_cast<uint16_t>(parse_num("port", optarg, 0, 65535, false)); break;
      case 'c': chunk = parse_num("chunk", optarg, kPage, kMaxChunk, true); break;
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

  const int fd = listen_and_accept(port);
  const Sample start = sample();

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
  uint64_t syscalls = 0;
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
    const size_t want = zc.recv_skip_hint > 0 ? std::min<size_t>(zc.recv_skip_hint, chunk)
                        : zc.length == 0     ? chunk
                                             : 0;
    if (want > 0) {
      syscalls++;
      const ssize_t n = recv(fd, buf, want, MSG_DONTWAIT);
      if (n == 0) break;  // end of stream
      if (n < 0 && errno != EAGAIN) die_sys("recv");
      if (n > 0) c.consume(buf, static_cast<size_t>(n));
    }
  }

  const Sample end = sample();
  const double elapsed_ms =
      (end.wall.tv_sec - start.wall.tv_sec) * 1e3 + (end.wall.tv_nsec - start.wall.tv_nsec) / 1e6;
  printf("{\"bytes\":%" PRIu64 ",\"mappedBytes\":%" PRIu64
         ",\"cpuUserMs\":%.3f,\"cpuSysMs\":%.3f,\"elapsedMs\":%.3f,\"syscalls\":%" PRIu64
         ",\"maxRssKiB\":%ld,\"checksum\":%" PRIu64 "}\n",
         c.offset, mapped, tv_ms(start.ru.ru_utime, end.ru.ru_utime),
         tv_ms(start.ru.ru_stime, end.ru.ru_stime), elapsed_ms, syscalls, end.ru.ru_maxrss,
         c.checksum);
  return fflush(stdout) == 0 ? 0 : 1;
}
