// recv_ref: reference copying TCP receiver for the benchmark.
//
// The plain counterpart of zc_ref_recv: the same SO_RCVLOWAT = chunk batching (switchable with
// --no-lowat) and the same poll-then-receive loop, but poll -> recv(buf, chunk) into one reused
// buffer, so the two differ only in how the bytes reach user space.
//
// usage: recv_ref [--port P] [--chunk N] [--no-lowat] [--verify SEED] [--no-touch] [--streams N]
// Listens on 127.0.0.1:P (0 = ephemeral), prints {"port":N}, accepts N connections one after
// the other (default 1), receives each until EOF, and prints one JSON line of statistics for
// the last (as zc_ref_recv). Exit 0 success, 1 error, 2 usage error.

#include <getopt.h>
#include <poll.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cerrno>
#include <cinttypes>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>

#include "ref_common.h"

namespace {

using namespace refbench;

// Receives one connection until EOF, counting its syscalls.
void receive_stream(int fd, size_t chunk, bool use_lowat, Consumer& c, uint64_t& syscalls) {
  // Same batching as zc_ref_recv, for a like-for-like comparison: wake up once a chunk is
  // queued (the kernel caps the value at half of tcp_rmem[2] or of a locked SO_RCVBUF).
  const int lowat_bytes = static_cast<int>(chunk);
  if (use_lowat && setsockopt(fd, SOL_SOCKET, SO_RCVLOWAT, &lowat_bytes, sizeof lowat_bytes) != 0) {
    die_sys("setsockopt(SO_RCVLOWAT)");
  }
  void* mem;
  if (posix_memalign(&mem, kPage, chunk) != 0) die(1, "posix_memalign: out of memory");
  uint8_t* const buf = static_cast<uint8_t*>(mem);

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

  free(mem);
}

void usage(FILE* out) {
  fprintf(out,
          "usage: %s [--port P] [--chunk N] [--no-lowat] [--verify SEED] [--no-touch] [--streams N]\n"
          "  --port P       listen on 127.0.0.1:P (default 0: ephemeral)\n"
          "  --chunk N      bytes per recv() and SO_RCVLOWAT, K/M suffixes (default 512K)\n"
          "  --no-lowat     leave SO_RCVLOWAT at 1\n"
          "  --verify SEED  check every byte against the zc_sender pattern of SEED\n"
          "  --no-touch     read nothing received (the receive loop's own cost)\n"
          "  --streams N    receive N connections in turn, report each (default 1)\n",
          g_prog);
}

}  // namespace

int main(int argc, char** argv) {
  g_prog = "recv_ref";
  uint16_t port = 0;
  size_t chunk = 512 * 1024;
  bool lowat = true;
  int streams = 1;
  Consumer c;
  const option longopts[] = {{"port", required_argument, nullptr, 'p'}, {"chunk", required_argument, nullptr, 'c'},
                             {"no-lowat", no_argument, nullptr, 'l'},   {"verify", required_argument, nullptr, 'v'},
                             {"no-touch", no_argument, nullptr, 'n'},   {"streams", required_argument, nullptr, 's'},
                             {"help", no_argument, nullptr, 'h'},       {nullptr, 0, nullptr, 0}};
  for (int o; (o = getopt_long(argc, argv, "", longopts, nullptr)) != -1;) {
    switch (o) {
      case 'p': port = static_cast<uint16_t>(parse_num("port", optarg, 0, 65535, false)); break;
      case 'c': chunk = parse_num("chunk", optarg, 1, kMaxChunk, true); break;
      case 'l': lowat = false; break;
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

  return serve_streams(port, streams, c, [chunk, lowat](int fd, Consumer& each, uint64_t& syscalls) {
    receive_stream(fd, chunk, lowat, each, syscalls);
    return uint64_t{0};
  });
}
