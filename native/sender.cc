// zc_sender: TCP sender for the tests and benchmarks of the zero-copy receive library.
//
// Sends a deterministic pattern that the receiver can verify byte by byte:
//   byte i of the stream = byte (i % 4), little-endian, of ((uint32_t)(i / 4) ^ seed) * 0x9E3779B1.
// In zerocopy mode it sends with MSG_ZEROCOPY. On loopback that (together with --mss 4108) is
// what makes the receiver's payload pages mappable by TCP_ZEROCOPY_RECEIVE: see
// shared/KERNEL.md, "Getting mappable data on loopback".
//
// Output: one JSON line of statistics on stdout. Exit status: 0 success, 1 system error,
// 2 usage error, 3 connection reset by the peer (EPIPE/ECONNRESET).

#include <arpa/inet.h>
#include <fcntl.h>
#include <getopt.h>
#include <linux/errqueue.h>
#include <linux/sockios.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <sys/ioctl.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstdarg>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <ctime>
#include <deque>
#include <memory>
#include <string>
#include <vector>

#ifndef SO_ZEROCOPY
#define SO_ZEROCOPY 60
#endif
#ifndef MSG_ZEROCOPY
#define MSG_ZEROCOPY 0x4000000
#endif

static_assert(__BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__, "pattern words are stored with memcpy");

namespace {

const char kProg[] = "zc_sender";

// ---------------------------------------------------------------------------------------------
// Errors

[[noreturn]] void die_usage(const char* fmt, ...) {
  va_list ap;
  va_start(ap, fmt);
  fprintf(stderr, "%s: ", kProg);
  vfprintf(stderr, fmt, ap);
  va_end(ap);
  fprintf(stderr, " (see --help)\n");
  exit(2);
}

[[noreturn]] void die(const char* fmt, ...) {
  va_list ap;
  va_start(ap, fmt);
  fprintf(stderr, "%s: ", kProg);
  vfprintf(stderr, fmt, ap);
  va_end(ap);
  fputc('\n', stderr);
  exit(1);
}

// `what` names the failing call; the peer resetting the connection exits with 3.
[[noreturn]] void die_sys(const char* what, int err) {
  fprintf(stderr, "%s: %s: %s\n", kProg, what, strerror(err));
  exit(err == EPIPE || err == ECONNRESET ? 3 : 1);
}

void warn(const char* fmt, ...) {
  va_list ap;
  va_start(ap, fmt);
  fprintf(stderr, "%s: warning: ", kProg);
  vfprintf(stderr, fmt, ap);
  va_end(ap);
  fputc('\n', stderr);
}

// ---------------------------------------------------------------------------------------------
// Time

double now_ms() {
  timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return ts.tv_sec * 1e3 + ts.tv_nsec / 1e6;
}

void sleep_ms(uint64_t ms) {
  timespec ts{static_cast<time_t>(ms / 1000), static_cast<long>(ms % 1000) * 1000000L};
  while (nanosleep(&ts, &ts) != 0 && errno == EINTR) {
  }
}

double timeval_ms(const timeval& tv) { return tv.tv_sec * 1e3 + tv.tv_usec / 1e3; }

// ---------------------------------------------------------------------------------------------
// Pattern

constexpr uint32_t kPatternMul = 0x9E3779B1u;

uint8_t pattern_byte(uint64_t off, uint32_t seed) {
  const uint32_t word = (static_cast<uint32_t>(off / 4) ^ seed) * kPatternMul;
  return static_cast<uint8_t>(word >> (8 * (off % 4)));
}

// Fills dst with stream bytes [off, off + len); off and len need not be multiples of 4.
void fill_pattern(uint8_t* dst, uint64_t off, size_t len, uint32_t seed) {
  size_t p = 0;
  for (; p < len && (off + p) % 4 != 0; p++) dst[p] = pattern_byte(off + p, seed);
  uint32_t word = static_cast<uint32_t>((off + p) / 4);
  for (; len - p >= 4; p += 4, word++) {
    const uint32_t v = (word ^ seed) * kPatternMul;
    memcpy(dst + p, &v, 4);
  }
  for (; p < len; p++) dst[p] = pattern_byte(off + p, seed);
}

// ---------------------------------------------------------------------------------------------
// Options

struct Options {
  std::string host = "127.0.0.1";
  std::string port;
  uint64_t bytes = 1ull << 30;
  uint32_t seed = 1;
  bool seed_from_local_port = false;  // many senders, one receiver: tell streams apart
  bool zerocopy = true;
  int mss = 0;  // 0: leave the kernel default
  size_t write_size = 262144;
  int sndbuf = 0;  // 0: leave the kernel default
  bool pause = false;
  uint64_t pause_at = 0;
  uint64_t pause_ms = 0;
  uint64_t dribble = 0;
  uint64_t dribble_pause_ms = 1;
  std::vector<uint64_t> oob_at;
  bool rst = false;
  uint64_t rst_after = 0;
  uint64_t linger_ms = 0;
  bool close_wait = true;
  int connect_timeout_ms = 5000;
  bool listen = false;  // accept one connection instead of connecting
};

constexpr size_t kMaxOob = 16;
constexpr uint64_t kMaxMs = 24ull * 3600 * 1000;

void usage(FILE* out) {
  fprintf(out,
          "usage: %s --port P [options]\n"
          "  --host H                 IPv4/IPv6 literal (default 127.0.0.1)\n"
          "  --port P                 required\n"
          "  --bytes N                pattern bytes to send, K/M/G suffixes (default 1G)\n"
          "  --seed S                 pattern seed, uint32 (default 1), or 'local-port'\n"
          "                           for this connection's own source port\n"
          "  --mode zerocopy|plain    MSG_ZEROCOPY or ordinary send() (default zerocopy)\n"
          "  --mss N                  TCP_MAXSEG before connect (4108 for mappable loopback)\n"
          "  --write-size N           bytes per send() (default 256K)\n"
          "  --sndbuf N               SO_SNDBUF\n"
          "  --pause-at N --pause-ms M        sleep M ms once after N bytes\n"
          "  --dribble N [--dribble-pause-ms M]  first N bytes as 1-byte sends with\n"
          "                           TCP_NODELAY, sleeping M ms (default 1) every 64 bytes\n"
          "  --oob-at N               send one MSG_OOB byte 0xA5 after N pattern bytes\n"
          "                           (up to %zu times, strictly ascending)\n"
          "  --rst-after N            after N bytes are acknowledged, close with RST\n"
          "  --linger-ms M            sleep M ms after the last byte, before shutdown\n"
          "  --no-close-wait          do not wait for the peer to close after shutdown\n"
          "  --connect-timeout-ms M   (default 5000)\n"
          "  --listen                 listen on --host:--port (0: any port), print\n"
          "                           {\"listening\":PORT}, accept one connection and send\n",
          kProg, kMaxOob);
}

// Unsigned decimal (or 0x-prefixed hex) number in [min, max]; optional binary K/M/G suffix.
uint64_t parse_num(const char* opt, const char* s, uint64_t min, uint64_t max, bool suffix = false) {
  if (*s < '0' || *s > '9') die_usage("invalid value for --%s: '%s'", opt, s);
  const int base = s[0] == '0' && (s[1] == 'x' || s[1] == 'X') ? 16 : 10;
  char* end;
  errno = 0;
  uint64_t v = strtoull(s, &end, base);
  if (errno != 0) die_usage("invalid value for --%s: '%s'", opt, s);
  if (suffix && *end != '\0') {
    const char* units = "KMG";
    const char* u = strchr(units, *end & ~0x20);  // case-insensitive
    if (u == nullptr) die_usage("invalid value for --%s: '%s'", opt, s);
    const int shift = 10 * static_cast<int>(u - units + 1);
    if (v > (UINT64_MAX >> shift)) die_usage("value for --%s out of range: '%s'", opt, s);
    v <<= shift;
    end++;
  }
  if (*end != '\0') die_usage("invalid value for --%s: '%s'", opt, s);
  if (v < min || v > max) {
    die_usage("value for --%s out of range [%llu, %llu]: '%s'", opt, static_cast<unsigned long long>(min),
              static_cast<unsigned long long>(max), s);
  }
  return v;
}

Options parse_args(int argc, char** argv) {
  enum {
    kHost = 256,
    kPort,
    kBytes,
    kSeed,
    kMode,
    kMss,
    kWriteSize,
    kSndbuf,
    kPauseAt,
    kPauseMs,
    kDribble,
    kDribblePauseMs,
    kOobAt,
    kRstAfter,
    kLingerMs,
    kNoCloseWait,
    kConnectTimeoutMs,
    kListen,
    kHelp,
  };
  static const option kLong[] = {
      {"host", required_argument, nullptr, kHost},
      {"port", required_argument, nullptr, kPort},
      {"bytes", required_argument, nullptr, kBytes},
      {"seed", required_argument, nullptr, kSeed},
      {"mode", required_argument, nullptr, kMode},
      {"mss", required_argument, nullptr, kMss},
      {"write-size", required_argument, nullptr, kWriteSize},
      {"sndbuf", required_argument, nullptr, kSndbuf},
      {"pause-at", required_argument, nullptr, kPauseAt},
      {"pause-ms", required_argument, nullptr, kPauseMs},
      {"dribble", required_argument, nullptr, kDribble},
      {"dribble-pause-ms", required_argument, nullptr, kDribblePauseMs},
      {"oob-at", required_argument, nullptr, kOobAt},
      {"rst-after", required_argument, nullptr, kRstAfter},
      {"linger-ms", required_argument, nullptr, kLingerMs},
      {"no-close-wait", no_argument, nullptr, kNoCloseWait},
      {"connect-timeout-ms", required_argument, nullptr, kConnectTimeoutMs},
      {"listen", no_argument, nullptr, kListen},
      {"help", no_argument, nullptr, kHelp},
      {nullptr, 0, nullptr, 0},
  };
  constexpr uint64_t kBig = 1ull << 62;

  Options o;
  bool pause_ms_given = false;
  int c;
  int long_index = 0;
  while ((c = getopt_long(argc, argv, "", kLong, &long_index)) != -1) {
    const char* name = kLong[long_index].name;
    switch (c) {
      case kHost: o.host = optarg; break;
      case kPort: o.port = std::to_string(parse_num(name, optarg, 0, 65535)); break;
      case kBytes: o.bytes = parse_num(name, optarg, 0, kBig, true); break;
      case kSeed:
        if (strcmp(optarg, "local-port") == 0) {
          o.seed_from_local_port = true;
        } else {
          o.seed = static_cast<uint32_t>(parse_num(name, optarg, 0, UINT32_MAX));
        }
        break;
      case kMode:
        if (strcmp(optarg, "zerocopy") == 0) {
          o.zerocopy = true;
        } else if (strcmp(optarg, "plain") == 0) {
          o.zerocopy = false;
        } else {
          die_usage("invalid value for --mode: '%s' (zerocopy or plain)", optarg);
        }
        break;
      case kMss: o.mss = static_cast<int>(parse_num(name, optarg, 0, 65535)); break;
      case kWriteSize: o.write_size = parse_num(name, optarg, 1, 1ull << 30, true); break;
      case kSndbuf: o.sndbuf = static_cast<int>(parse_num(name, optarg, 1, INT32_MAX, true)); break;
      case kPauseAt:
        o.pause = true;
        o.pause_at = parse_num(name, optarg, 0, kBig, true);
        break;
      case kPauseMs:
        pause_ms_given = true;
        o.pause_ms = parse_num(name, optarg, 0, kMaxMs);
        break;
      case kDribble: o.dribble = parse_num(name, optarg, 0, kBig, true); break;
      case kDribblePauseMs: o.dribble_pause_ms = parse_num(name, optarg, 0, kMaxMs); break;
      case kOobAt:
        if (o.oob_at.size() == kMaxOob) die_usage("at most %zu --oob-at", kMaxOob);
        o.oob_at.push_back(parse_num(name, optarg, 0, kBig, true));
        if (o.oob_at.size() > 1 && o.oob_at.back() <= o.oob_at[o.oob_at.size() - 2]) {
          die_usage("--oob-at positions must be strictly ascending");
        }
        break;
      case kRstAfter:
        o.rst = true;
        o.rst_after = parse_num(name, optarg, 0, kBig, true);
        break;
      case kLingerMs: o.linger_ms = parse_num(name, optarg, 0, kMaxMs); break;
      case kNoCloseWait: o.close_wait = false; break;
      case kListen: o.listen = true; break;
      case kConnectTimeoutMs: o.connect_timeout_ms = static_cast<int>(parse_num(name, optarg, 1, INT32_MAX)); break;
      case kHelp: usage(stdout); exit(0);
      default: exit(2);  // getopt_long already printed what was wrong
    }
  }
  if (optind < argc) die_usage("unexpected argument '%s'", argv[optind]);
  if (o.port.empty()) die_usage("--port is required");
  if (o.port == "0" && !o.listen) die_usage("--port 0 needs --listen");
  if (o.pause != pause_ms_given) die_usage("--pause-at and --pause-ms go together");
  if (o.pause && o.pause_at > o.bytes) die_usage("--pause-at is beyond --bytes");
  if (o.rst && o.rst_after > o.bytes) die_usage("--rst-after is beyond --bytes");
  if (!o.oob_at.empty() && o.oob_at.back() > o.bytes) die_usage("--oob-at is beyond --bytes");
  o.dribble = std::min(o.dribble, o.bytes);
  return o;
}

// ---------------------------------------------------------------------------------------------
// Connection setup

void set_int_opt(int fd, int level, int name, int value, const char* what) {
  if (setsockopt(fd, level, name, &value, sizeof value) != 0) die_sys(what, errno);
}

uint16_t local_port(int fd) {
  sockaddr_storage addr{};
  socklen_t len = sizeof addr;
  if (getsockname(fd, reinterpret_cast<sockaddr*>(&addr), &len) != 0) die_sys("getsockname", errno);
  return ntohs(addr.ss_family == AF_INET6 ? reinterpret_cast<sockaddr_in6*>(&addr)->sin6_port
                                          : reinterpret_cast<sockaddr_in*>(&addr)->sin_port);
}

// --listen: accepts one connection on host:port and returns it, nonblocking. Receivers
// that must be the connecting side (net.Socket's onread option) use this.
int accept_one(const Options& o) {
  addrinfo hints{};
  hints.ai_family = AF_UNSPEC;
  hints.ai_socktype = SOCK_STREAM;
  hints.ai_flags = AI_NUMERICHOST | AI_NUMERICSERV | AI_PASSIVE;
  addrinfo* ai = nullptr;
  const int rc = getaddrinfo(o.host.c_str(), o.port.c_str(), &hints, &ai);
  if (rc != 0) die_usage("invalid --host '%s': %s", o.host.c_str(), gai_strerror(rc));
  const int listener = socket(ai->ai_family, SOCK_STREAM | SOCK_CLOEXEC, IPPROTO_TCP);
  if (listener < 0) die_sys("socket", errno);
  set_int_opt(listener, SOL_SOCKET, SO_REUSEADDR, 1, "setsockopt(SO_REUSEADDR)");
  if (o.sndbuf > 0) set_int_opt(listener, SOL_SOCKET, SO_SNDBUF, o.sndbuf, "setsockopt(SO_SNDBUF)");
  // Accepted sockets inherit the MSS set on the listener; it is advertised in the SYN-ACK.
  if (o.mss > 0) set_int_opt(listener, IPPROTO_TCP, TCP_MAXSEG, o.mss, "setsockopt(TCP_MAXSEG)");
  if (bind(listener, ai->ai_addr, ai->ai_addrlen) != 0) die_sys("bind", errno);
  freeaddrinfo(ai);
  if (listen(listener, 1) != 0) die_sys("listen", errno);
  printf("{\"listening\":%u}\n", local_port(listener));
  fflush(stdout);
  int fd;
  while ((fd = accept4(listener, nullptr, nullptr, SOCK_NONBLOCK | SOCK_CLOEXEC)) < 0 && errno == EINTR) {
  }
  if (fd < 0) die_sys("accept", errno);
  close(listener);
  if (o.zerocopy) set_int_opt(fd, SOL_SOCKET, SO_ZEROCOPY, 1, "setsockopt(SO_ZEROCOPY)");
  return fd;
}

// Returns a connected, nonblocking socket.
int connect_to(const Options& o) {
  addrinfo hints{};
  hints.ai_family = AF_UNSPEC;
  hints.ai_socktype = SOCK_STREAM;
  hints.ai_flags = AI_NUMERICHOST | AI_NUMERICSERV;
  addrinfo* ai = nullptr;
  const int rc = getaddrinfo(o.host.c_str(), o.port.c_str(), &hints, &ai);
  if (rc != 0) die_usage("invalid --host '%s': %s", o.host.c_str(), gai_strerror(rc));

  const int fd = socket(ai->ai_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, IPPROTO_TCP);
  if (fd < 0) die_sys("socket", errno);
  if (o.sndbuf > 0) set_int_opt(fd, SOL_SOCKET, SO_SNDBUF, o.sndbuf, "setsockopt(SO_SNDBUF)");
  // The MSS is negotiated in the SYN, so it must be set before connect().
  if (o.mss > 0) set_int_opt(fd, IPPROTO_TCP, TCP_MAXSEG, o.mss, "setsockopt(TCP_MAXSEG)");
  if (o.zerocopy) set_int_opt(fd, SOL_SOCKET, SO_ZEROCOPY, 1, "setsockopt(SO_ZEROCOPY)");

  if (connect(fd, ai->ai_addr, ai->ai_addrlen) != 0) {
    if (errno != EINPROGRESS) die_sys("connect", errno);
    pollfd p{fd, POLLOUT, 0};
    int n;
    while ((n = poll(&p, 1, o.connect_timeout_ms)) < 0 && errno == EINTR) {
    }
    if (n < 0) die_sys("poll", errno);
    if (n == 0) die_sys("connect", ETIMEDOUT);
    int err = 0;
    socklen_t len = sizeof err;
    if (getsockopt(fd, SOL_SOCKET, SO_ERROR, &err, &len) != 0) die_sys("getsockopt(SO_ERROR)", errno);
    if (err != 0) die_sys("connect", err);
  }
  freeaddrinfo(ai);
  return fd;
}

// ---------------------------------------------------------------------------------------------
// Sender

struct FreeDeleter {
  void operator()(uint8_t* p) const { free(p); }
};
using Buffer = std::unique_ptr<uint8_t, FreeDeleter>;

class Sender {
 public:
  Sender(int fd, const Options& o);
  void run();

 private:
  // Zerocopy ring: 16 buffers, fewer when write-size is large (at most 64 MiB in all).
  static constexpr size_t kRingSlots = 16;
  static constexpr size_t kRingBytes = 64u << 20;

  void send_chunk(uint64_t end);
  void send_all(const uint8_t* buf, size_t len, int slot);
  ssize_t try_send(const void* buf, size_t len, int flags);
  void dribble(uint64_t end);
  void send_oob();
  void set_nodelay(bool on);

  short wait_fd(short events, int timeout_ms);
  uint64_t drain_completions();
  void complete_range(uint32_t lo, uint32_t count);
  void wait_completions(int timeout_ms);
  void wait_slot_free(size_t slot);
  void finish_completions(int timeout_ms);

  void finish();
  void reset_connection();
  void print_stats() const;

  const int fd_;
  const Options& o_;
  uint64_t off_ = 0;  // pattern bytes sent so far

  std::vector<Buffer> ring_;  // plain mode uses ring_[0] only
  size_t next_slot_ = 0;

  // Notification ids: each successful MSG_ZEROCOPY send() takes the next id (uint32, wraps).
  // owner_[k] is the ring slot of id base_id_ + k, or -1 once completed. Completions may
  // arrive out of order, so ids are retired from the front only.
  uint32_t base_id_ = 0;
  std::deque<int> owner_;
  std::vector<uint32_t> slot_pending_;  // uncompleted ids per slot
  uint64_t outstanding_ = 0;

  uint64_t sends_ = 0;
  uint64_t completions_ = 0;
  uint64_t copied_ = 0;
  uint64_t oob_bytes_ = 0;
  int mss_ = 0;
  double start_ms_ = 0;
  rusage start_ru_{};
  double elapsed_ms_ = 0;
  rusage end_ru_{};
};

Sender::Sender(int fd, const Options& o) : fd_(fd), o_(o) {
  const size_t slot_bytes = (o.write_size + 4095) & ~size_t{4095};
  const size_t slots = o.zerocopy ? std::clamp<size_t>(kRingBytes / slot_bytes, 2, kRingSlots) : 1;
  for (size_t i = 0; i < slots; i++) {
    // Page-aligned so that no two slots share a page pinned by MSG_ZEROCOPY.
    void* p = aligned_alloc(4096, slot_bytes);
    if (p == nullptr) die("aligned_alloc(%zu): out of memory", slot_bytes);
    ring_.emplace_back(static_cast<uint8_t*>(p));
  }
  slot_pending_.assign(slots, 0);

  socklen_t len = sizeof mss_;
  if (getsockopt(fd_, IPPROTO_TCP, TCP_MAXSEG, &mss_, &len) != 0) {
    die_sys("getsockopt(TCP_MAXSEG)", errno);
  }
}

void Sender::run() {
  start_ms_ = now_ms();
  getrusage(RUSAGE_SELF, &start_ru_);

  size_t next_oob = 0;
  bool paused = false;
  if (o_.dribble > 0) set_nodelay(true);
  for (;;) {
    // Events due at this offset; the loop below makes a send() boundary fall on each of them.
    for (; next_oob < o_.oob_at.size() && o_.oob_at[next_oob] == off_; next_oob++) send_oob();
    if (o_.pause && !paused && off_ == o_.pause_at) {
      sleep_ms(o_.pause_ms);
      paused = true;
    }
    if (o_.rst && off_ == o_.rst_after) {
      reset_connection();
      return;
    }
    if (off_ == o_.bytes) break;

    uint64_t end = o_.bytes;
    if (next_oob < o_.oob_at.size()) end = std::min(end, o_.oob_at[next_oob]);
    if (o_.pause && !paused) end = std::min(end, o_.pause_at);
    if (o_.rst) end = std::min(end, o_.rst_after);
    if (off_ < o_.dribble) {
      dribble(std::min(end, o_.dribble));
      if (off_ == o_.dribble) set_nodelay(false);
    } else {
      send_chunk(std::min<uint64_t>(end, off_ + o_.write_size));
    }
  }
  finish();
}

// Sends stream bytes [off_, end), end - off_ <= write_size.
void Sender::send_chunk(uint64_t end) {
  const size_t len = end - off_;
  int slot = -1;
  uint8_t* buf = ring_[0].get();
  if (o_.zerocopy) {
    // The kernel reads a MSG_ZEROCOPY buffer until its notification arrives: only then refill.
    slot = static_cast<int>(next_slot_);
    next_slot_ = (next_slot_ + 1) % ring_.size();
    wait_slot_free(slot);
    buf = ring_[slot].get();
  }
  fill_pattern(buf, off_, len, o_.seed);
  send_all(buf, len, slot);
  off_ = end;
}

// Sends buf[0, len) completely; slot >= 0 sends with MSG_ZEROCOPY from that ring slot.
void Sender::send_all(const uint8_t* buf, size_t len, int slot) {
  const int flags = MSG_NOSIGNAL | (slot >= 0 ? MSG_ZEROCOPY : 0);
  size_t pos = 0;
  while (pos < len) {
    const ssize_t n = try_send(buf + pos, len - pos, flags);
    if (n > 0) {
      pos += n;
      sends_++;
      if (slot >= 0) {  // a partial send takes an id too
        owner_.push_back(slot);
        slot_pending_[slot]++;
        outstanding_++;
      }
    } else if (n < 0) {
      // ENOBUFS: optmem (one notification per send) or RLIMIT_MEMLOCK (pinned pages) is
      // exhausted; both are released by completions.
      if (drain_completions() == 0) {
        if (outstanding_ == 0) {
          die("send(MSG_ZEROCOPY): %s with no notification outstanding "
              "(raise ulimit -l or net.core.optmem_max, or lower --write-size)",
              strerror(ENOBUFS));
        }
        wait_completions(-1);
      }
    }
  }
}

// One send() attempt: bytes sent, 0 after EINTR/EAGAIN (having waited for POLLOUT), or -1 on
// ENOBUFS with MSG_ZEROCOPY. Any other error is fatal.
ssize_t Sender::try_send(const void* buf, size_t len, int flags) {
  const ssize_t n = send(fd_, buf, len, flags);
  if (n >= 0) return n;
  if (errno == EINTR) return 0;
  if (errno == EAGAIN || errno == EWOULDBLOCK) {
    wait_fd(POLLOUT, -1);
    return 0;
  }
  if (errno == ENOBUFS && (flags & MSG_ZEROCOPY)) return -1;
  die_sys(flags & MSG_OOB ? "send(MSG_OOB)" : flags & MSG_ZEROCOPY ? "send(MSG_ZEROCOPY)" : "send", errno);
}

// Sends stream bytes [off_, end) one byte per send(), pausing every 64 stream bytes.
void Sender::dribble(uint64_t end) {
  while (off_ < end) {
    const uint8_t b = pattern_byte(off_, o_.seed);
    if (try_send(&b, 1, MSG_NOSIGNAL) != 1) continue;
    off_++;
    sends_++;
    if (off_ % 64 == 0) sleep_ms(o_.dribble_pause_ms);
  }
}

void Sender::send_oob() {
  const uint8_t b = 0xA5;
  while (try_send(&b, 1, MSG_OOB | MSG_NOSIGNAL) != 1) {
  }
  oob_bytes_++;
}

void Sender::set_nodelay(bool on) { set_int_opt(fd_, IPPROTO_TCP, TCP_NODELAY, on, "setsockopt(TCP_NODELAY)"); }

// poll() for `events`; returns revents (0 on timeout). POLLERR drains the error queue; a
// POLLERR with nothing queued is a socket error, which is fatal.
short Sender::wait_fd(short events, int timeout_ms) {
  pollfd p{fd_, events, 0};
  const int n = poll(&p, 1, timeout_ms);
  if (n < 0) {
    if (errno == EINTR) return 0;
    die_sys("poll", errno);
  }
  if ((p.revents & POLLERR) && drain_completions() == 0) {
    int err = 0;
    socklen_t len = sizeof err;
    if (getsockopt(fd_, SOL_SOCKET, SO_ERROR, &err, &len) != 0) die_sys("getsockopt(SO_ERROR)", errno);
    if (err != 0) die_sys("socket error (SO_ERROR)", err);
  }
  return p.revents;
}

// Reads every queued zerocopy notification; returns the number of ids completed.
uint64_t Sender::drain_completions() {
  uint64_t done = 0;
  for (;;) {
    alignas(cmsghdr) char control[128];
    msghdr msg{};
    msg.msg_control = control;
    msg.msg_controllen = sizeof control;
    if (recvmsg(fd_, &msg, MSG_ERRQUEUE) < 0) {
      if (errno == EAGAIN || errno == EWOULDBLOCK) return done;
      if (errno == EINTR) continue;
      die_sys("recvmsg(MSG_ERRQUEUE)", errno);
    }
    for (cmsghdr* c = CMSG_FIRSTHDR(&msg); c != nullptr; c = CMSG_NXTHDR(&msg, c)) {
      if (!(c->cmsg_level == SOL_IP && c->cmsg_type == IP_RECVERR) &&
          !(c->cmsg_level == SOL_IPV6 && c->cmsg_type == IPV6_RECVERR)) {
        continue;
      }
      sock_extended_err ee;
      memcpy(&ee, CMSG_DATA(c), sizeof ee);
      if (ee.ee_origin != SO_EE_ORIGIN_ZEROCOPY || ee.ee_errno != 0) continue;
      // [ee_info, ee_data] is an inclusive id range. The kernel coalesces adjacent ranges
      // and keeps the first one's ee_code, so the COPIED count is approximate.
      const uint32_t count = ee.ee_data - ee.ee_info + 1;
      complete_range(ee.ee_info, count);
      completions_ += count;
      if (ee.ee_code & SO_EE_CODE_ZEROCOPY_COPIED) copied_ += count;
      done += count;
    }
  }
}

void Sender::complete_range(uint32_t lo, uint32_t count) {
  for (uint32_t i = 0; i < count; i++) {
    const uint32_t k = lo + i - base_id_;
    if (k >= owner_.size() || owner_[k] < 0) continue;
    slot_pending_[owner_[k]]--;
    owner_[k] = -1;
    outstanding_--;
  }
  while (!owner_.empty() && owner_.front() < 0) {
    owner_.pop_front();
    base_id_++;
  }
}

// Waits up to timeout_ms (-1: forever) for notifications, draining any that arrive.
void Sender::wait_completions(int timeout_ms) {
  // Once both directions are shut down poll() reports POLLHUP at once: don't spin on it.
  if (wait_fd(0, timeout_ms) == POLLHUP) sleep_ms(1);
}

void Sender::wait_slot_free(size_t slot) {
  while (slot_pending_[slot] > 0) {
    if (drain_completions() == 0) wait_completions(-1);
  }
}

// Waits until every notification has arrived, warning if timeout_ms passes first.
void Sender::finish_completions(int timeout_ms) {
  const double deadline = now_ms() + timeout_ms;
  drain_completions();
  while (outstanding_ > 0) {
    const double left = deadline - now_ms();
    if (left <= 0) {
      warn("%llu zerocopy notifications still outstanding after %d ms", static_cast<unsigned long long>(outstanding_),
           timeout_ms);
      return;
    }
    wait_completions(static_cast<int>(left) + 1);
  }
}

// Normal end: optional linger, FIN, wait for the peer's FIN, wait for notifications, close.
void Sender::finish() {
  sleep_ms(o_.linger_ms);
  if (shutdown(fd_, SHUT_WR) != 0) die_sys("shutdown", errno);
  if (o_.close_wait) {
    constexpr int kCloseWaitMs = 30000;
    const double deadline = now_ms() + kCloseWaitMs;
    char discard[65536];
    for (;;) {
      const ssize_t n = recv(fd_, discard, sizeof discard, 0);
      if (n == 0) break;
      if (n > 0 || errno == EINTR) continue;
      if (errno != EAGAIN && errno != EWOULDBLOCK) die_sys("recv", errno);
      const double left = deadline - now_ms();
      if (left <= 0) {
        warn("peer did not close within %d ms", kCloseWaitMs);
        break;
      }
      wait_fd(POLLIN, static_cast<int>(left) + 1);
    }
  }
  // Notifications are only delivered while the socket is open.
  finish_completions(10000);
  if (close(fd_) != 0) die_sys("close", errno);
  elapsed_ms_ = now_ms() - start_ms_;
  getrusage(RUSAGE_SELF, &end_ru_);
  print_stats();
}

// --rst-after: once the peer has acknowledged everything sent, abort with an RST.
void Sender::reset_connection() {
  constexpr int kAckWaitMs = 5000;
  const double deadline = now_ms() + kAckWaitMs;
  for (;;) {
    int unacked = 0;
    if (ioctl(fd_, SIOCOUTQ, &unacked) != 0) die_sys("ioctl(SIOCOUTQ)", errno);
    if (unacked == 0) {
      // Everything is acknowledged, so the notifications are on their way.
      finish_completions(10000);
      break;
    }
    if (now_ms() >= deadline) {
      warn("%d bytes still unacknowledged after %d ms; resetting anyway", unacked, kAckWaitMs);
      break;
    }
    drain_completions();
    sleep_ms(1);
  }
  const linger lg{1, 0};
  if (setsockopt(fd_, SOL_SOCKET, SO_LINGER, &lg, sizeof lg) != 0) {
    die_sys("setsockopt(SO_LINGER)", errno);
  }
  if (close(fd_) != 0) die_sys("close", errno);
  elapsed_ms_ = now_ms() - start_ms_;
  getrusage(RUSAGE_SELF, &end_ru_);
  print_stats();
}

void Sender::print_stats() const {
  printf(
      "{\"bytes\":%llu,\"sends\":%llu,\"zerocopyCompletions\":%llu,\"copiedCompletions\":%llu,"
      "\"oobBytes\":%llu,\"elapsedMs\":%.3f,\"cpuUserMs\":%.3f,\"cpuSysMs\":%.3f,\"mss\":%d}\n",
      static_cast<unsigned long long>(off_), static_cast<unsigned long long>(sends_),
      static_cast<unsigned long long>(completions_), static_cast<unsigned long long>(copied_),
      static_cast<unsigned long long>(oob_bytes_), elapsed_ms_,
      timeval_ms(end_ru_.ru_utime) - timeval_ms(start_ru_.ru_utime),
      timeval_ms(end_ru_.ru_stime) - timeval_ms(start_ru_.ru_stime), mss_);
}

}  // namespace

int main(int argc, char** argv) {
  Options opts = parse_args(argc, argv);
  const int fd = opts.listen ? accept_one(opts) : connect_to(opts);
  if (opts.seed_from_local_port) opts.seed = local_port(fd);
  Sender sender(fd, opts);
  sender.run();
  return fflush(stdout) == 0 ? 0 : 1;
}
