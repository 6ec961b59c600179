// recv_ref: reference copying TCP receiver for the benchmark.
//
// The plain counterpart of zc_ref_recv: the same SO_RCVLOWAT = chunk batching (switchable with
// --no-lowat) and the same poll-then-receive loop, but poll -> recv(buf, chunk) into one reused
// buffer, so the two differ only in how the bytes reach user space.
//
// usage: recv_ref [--port P] [--chunk N] [--no-lowat] [--verify SEED]
// Listens on 127.0.0.1:P (0 = ephemeral), prints {"port":N}, accepts one connection, receives
// until EOF, prints one JSON line of statistics. Exit 0 success, 1 error, 2 usage error.

#include <arpa/inet.h>
#include <getopt.h>
#include <netinet/in.h>
#include <poll.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cerrno>
#include <cinttypes>
#include <cstdarg>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <ctime>

namespace {

const char kProg[] = "recv_ref";
constexpr size_t kPage = 4096;
constexpr size_t kLine = 64;
constexpr uint64_t kMaxChunk = 1u << 30;  // the same bound as zc_ref_recv

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

// "Received means read", as in zc_ref_recv: every byte delivered is looked at. Touching one byte
// per 64-byte line pulls every cache line in at the least cost a real consumer could pay. The
// buffer is page aligned, so a stride of 64 from its start hits every line once. The checksum
// is printed, so the compiler cannot drop the loads.
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

void usage(FILE* out) {
  fprintf(out,
          "usage: %s [--port P] [--chunk N] [--no-lowat] [--verify SEED]\n"
          "  --port P       listen on 127.0.0.1:P (default 0: ephemeral)\n"
          "  --chunk N      bytes per recv() and SO_RCVLOWAT, K/M suffixes (default 512K)\n"
          "  --no-lowat     leave SO_RCVLOWAT at 1\n"
          "  --verify SEED  check every byte against the zc_sender pattern of SEED\n",
          kProg);
}

}  // namespace

int main(int argc, char** argv) {
  uint16_t port = 0;
  size_t chunk = 512 * 1024;
  bool lowat = true;
  Consumer c;
  const option longopts[] = {{"port", required_argument, nullptr, 'p'},
                             {"chunk", required_argument, nullptr, 'c'},
                             {"no-lowat", no_argument, nullptr, 'l'},
                             {"verify", required_argument, nullptr, 'v'},
                             {"help", no_argument, nullptr, 'h'},
                             {nullptr, 0, nullptr, 0}};
  for (int o; (o = getopt_long(argc, argv, "", longopts, nullptr)) != -1;) {
    switch (o) {
      case 'p': port = static_cast<uint16_t>(parse_num("port", optarg, 0, 65535, false)); break;
      case 'c': chunk = parse_num("chunk", optarg, 1, kMaxChunk, true); break;
      case 'l': lowat = false; break;
      case 'v':
        c.verify = true;
        c.seed = static_cast<uint32_t>(parse_num("verify", optarg, 0, UINT32_MAX, false));
        break;
      case 'h': usage(stdout); return 0;
      default: usage(stderr); return 2;
    }
  }
  if (optind < argc) die(2, "unexpected argument '%s'", argv[optind]);

  const int fd = listen_and_accept(port);
  const Sample start = sample();

  // Same batching as zc_ref_recv, for a like-for-like comparison: wake up once a chunk is
  // queued (the kernel caps the value at half of tcp_rmem[2] or of a locked SO_RCVBUF).
  const int lowat_bytes = static_cast<int>(chunk);
  if (lowat && setsockopt(fd, SOL_SOCKET, SO_RCVLOWAT, &lowat_bytes, sizeof lowat_bytes) != 0) {
    die_sys("setsockopt(SO_RCVLOWAT)");
  }
  void* mem;
  if (posix_memalign(&mem, kPage, chunk) != 0) die(1, "posix_memalign: out of memory");
  uint8_t* const buf = static_cast<uint8_t*>(mem);

  uint64_t syscalls = 0;
  for (;;) {
    // Redundant for a blocking socket, but it is what zc_ref_recv (and an event loop) pays.
    pollfd pfd{fd, POLLIN, 0};
    syscalls++;
    if (poll(&pfd, 1, -1) < 0) die_sys("poll");
    syscalls++;
    const ssize_t n = recv(fd, buf, chunk, 0);
    if (n == 0) break;  // end of stream
    if (n < 0) die_sys("recv");
    c.consume(buf, static_cast<size_t>(n));
  }

  const Sample end = sample();
  const double elapsed_ms =
      (end.wall.tv_sec - start.wall.tv_sec) * 1e3 + (end.wall.tv_nsec - start.wall.tv_nsec) / 1e6;
  printf("{\"bytes\":%" PRIu64
         ",\"mappedBytes\":0,\"cpuUserMs\":%.3f,\"cpuSysMs\":%.3f,\"elapsedMs\":%.3f,"
         "\"syscalls\":%" PRIu64 ",\"maxRssKiB\":%ld,\"checksum\":%" PRIu64 "}\n",
         c.offset, tv_ms(start.ru.ru_utime, end.ru.ru_utime),
         tv_ms(start.ru.ru_stime, end.ru.ru_stime), elapsed_ms, syscalls, end.ru.ru_maxrss,
         c.checksum);
  return fflush(stdout) == 0 ? 0 : 1;
}
