// Shared by the benchmark's C reference receivers (zc_ref_recv, recv_ref): argument
// parsing, the consumer that reads what was received, CPU/time sampling, the listening
// socket and the JSON report the benchmark driver reads.
#pragma once

#include <arpa/inet.h>
#include <netinet/in.h>
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

namespace refbench {

constexpr size_t kPage = 4096;
constexpr size_t kLine = 64;
constexpr uint64_t kMaxChunk = 1u << 30;  // zc.length is a u32

// Set by each program's main, for messages.
inline const char* g_prog = "ref";

[[noreturn]] inline void die(int status, const char* fmt, ...) {
  va_list ap;
  va_start(ap, fmt);
  fprintf(stderr, "%s: ", g_prog);
  vfprintf(stderr, fmt, ap);
  va_end(ap);
  fputc('\n', stderr);
  exit(status);
}

[[noreturn]] inline void die_sys(const char* call) { die(1, "%s: %s", call, strerror(errno)); }

// Decimal or 0x-hex in [min, max]; with `suffix`, an optional binary K or M.
inline uint64_t parse_num(const char* opt, const char* s, uint64_t min, uint64_t max, bool suffix) {
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
  bool touch = true;  // false (--no-touch): the receive loop alone, nothing read
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
          die(1, "data mismatch at stream offset %" PRIu64 ": got 0x%02x, expected 0x%02x", i, p[j], want);
        }
        checksum += p[j];
      }
    } else if (touch) {
      for (size_t j = 0; j < n; j += kLine) checksum += p[j];
    }
    offset += n;
  }
};

struct Sample {
  timespec wall;
  rusage ru;
};

inline Sample sample() {
  Sample s;
  clock_gettime(CLOCK_MONOTONIC, &s.wall);
  getrusage(RUSAGE_SELF, &s.ru);
  return s;
}

inline double tv_ms(const timeval& a, const timeval& b) {
  return (b.tv_sec - a.tv_sec) * 1e3 + (b.tv_usec - a.tv_usec) / 1e3;
}

// Listens on 127.0.0.1:port and announces the port; connections are taken with accept_one.
inline int listen_announce(uint16_t port) {
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
  return ls;
}

inline int accept_one(int ls) {
  const int fd = accept4(ls, nullptr, nullptr, SOCK_CLOEXEC);
  if (fd < 0) die_sys("accept");
  return fd;
}

// The one JSON line the benchmark driver reads.
inline int print_report(const Sample& start, const Sample& end, const Consumer& consumer, uint64_t mapped,
                        uint64_t syscalls) {
  const double elapsed_ms = (end.wall.tv_sec - start.wall.tv_sec) * 1e3 + (end.wall.tv_nsec - start.wall.tv_nsec) / 1e6;
  printf("{\"bytes\":%" PRIu64 ",\"mappedBytes\":%" PRIu64
         ",\"cpuUserMs\":%.3f,\"cpuSysMs\":%.3f,\"elapsedMs\":%.3f,\"syscalls\":%" PRIu64
         ",\"maxRssKiB\":%ld,\"checksum\":%" PRIu64 ",\"processCpuMs\":%.3f}\n",
         consumer.offset, mapped, tv_ms(start.ru.ru_utime, end.ru.ru_utime), tv_ms(start.ru.ru_stime, end.ru.ru_stime),
         elapsed_ms, syscalls, end.ru.ru_maxrss, consumer.checksum,
         tv_ms(timeval{}, end.ru.ru_utime) + tv_ms(timeval{}, end.ru.ru_stime));
  return fflush(stdout) == 0 ? 0 : 1;
}

// Listens on port, takes `streams` connections one after the other, receives each with
// `receive(fd, consumer, syscalls)` (which returns the bytes it mapped) and reports each
// (the driver warms the process up with the first ones). Each stream's pattern starts at
// offset 0.
template <typename ReceiveStream>
int serve_streams(uint16_t port, int streams, const Consumer& consumer, ReceiveStream receive) {
  const int ls = listen_announce(port);
  for (int stream = 1;; stream++) {
    const int fd = accept_one(ls);
    Consumer each = consumer;
    uint64_t syscalls = 0;
    const Sample start = sample();
    const uint64_t mapped = receive(fd, each, syscalls);
    const Sample end = sample();
    close(fd);
    const int status = print_report(start, end, each, mapped, syscalls);
    if (status != 0 || stream == streams) return status;
  }
}

}  // namespace refbench
