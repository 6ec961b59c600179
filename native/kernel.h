// Kernel ABI for TCP_ZEROCOPY_RECEIVE, defined here on purpose: glibc's <netinet/tcp.h>
// carries a 16-byte version of the struct that clashes with <linux/tcp.h>.
#pragma once

#include <cstddef>
#include <cstdint>

namespace tcpzc {

constexpr int kTcpZerocopyReceive = 35;  // TCP_ZEROCOPY_RECEIVE, Linux >= 4.18
constexpr uint32_t kTlbCleanHint = 0x1;  // TCP_RECEIVE_ZEROCOPY_FLAG_TLB_CLEAN_HINT, 5.11
constexpr size_t kPageSize = 4096;

// Layout of Linux 6.x (64 bytes). Older kernels know a prefix of it; probe.cc finds which.
struct ZerocopyReceive {
  uint64_t address;          // in: page-aligned start inside a TCP mapping
  uint32_t length;           // in: bytes wanted; out: bytes mapped
  uint32_t recv_skip_hint;   // out: bytes before the next mappable page
  uint32_t inq;              // out: bytes still queued (5.7)
  int32_t err;               // out: pending socket error as -errno, cleared by reading (5.7)
  uint64_t copybuf_address;  // in: buffer for small reads and leftovers (5.11)
  int32_t copybuf_len;       // in: capacity; out: bytes copied or -errno (5.11)
  uint32_t flags;            // in: kTlbCleanHint (5.11)
  uint64_t msg_control;      // rx timestamps (5.12), unused
  uint64_t msg_controllen;
  uint32_t msg_flags;
  uint32_t reserved;  // must be zero
};

static_assert(sizeof(ZerocopyReceive) == 64, "kernel struct is 64 bytes");
static_assert(offsetof(ZerocopyReceive, inq) == 16, "layout");
static_assert(offsetof(ZerocopyReceive, err) == 20, "layout");
static_assert(offsetof(ZerocopyReceive, copybuf_address) == 24, "layout");
static_assert(offsetof(ZerocopyReceive, copybuf_len) == 32, "layout");
static_assert(offsetof(ZerocopyReceive, flags) == 36, "layout");
static_assert(offsetof(ZerocopyReceive, msg_control) == 40, "layout");
static_assert(offsetof(ZerocopyReceive, msg_flags) == 56, "layout");

// optlen values the kernel answers with, which tell what the running kernel fills in.
constexpr uint32_t kOptlenBase = 16;     // 4.18-5.6: address, length, recv_skip_hint
constexpr uint32_t kOptlenWithErr = 24;  // 5.7+: inq, err
constexpr uint32_t kOptlenCopybuf = 40;  // 5.11+: copybuf, flags
constexpr uint32_t kOptlenFull = 64;     // 5.12+: msg_control...

}  // namespace tcpzc
