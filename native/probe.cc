#include "probe.h"

#include <netinet/in.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <sys/utsname.h>
#include <unistd.h>

#include <cerrno>
#include <cstdio>
#include <cstring>
#include <mutex>

#include "kernel.h"

namespace tcpzc {
namespace {

std::string Describe(const char* what, int err) { return std::string(what) + ": " + std::strerror(err); }

void Probe(KernelFeatures* out) {
  struct utsname uts;
  if (uname(&uts) == 0) out->kernel = uts.release;
#if defined(__x86_64__)
  // mm/pt_reclaim.c, 6.14: x86-64 only so far.
  int major = 0, minor = 0;
  if (std::sscanf(out->kernel.c_str(), "%d.%d", &major, &minor) == 2) {
    out->madvise_frees_page_tables = major > 6 || (major == 6 && minor >= 14);
  }
#endif
  // Slots, alignment and the copybuf size assume 4 KiB pages (arm64 may run 16 or 64 KiB).
  long page_size = sysconf(_SC_PAGESIZE);
  if (page_size != static_cast<long>(kPageSize)) {
    out->reason = "page size " + std::to_string(page_size) + " (only 4096 is supported)";
    return;
  }

  int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, IPPROTO_TCP);
  if (fd < 0) fd = socket(AF_INET6, SOCK_STREAM | SOCK_CLOEXEC, IPPROTO_TCP);
  if (fd < 0) {
    out->reason = Describe("socket(AF_INET, SOCK_STREAM)", errno);
    return;
  }

  void* mapping = mmap(nullptr, kPageSize, PROT_READ, MAP_SHARED, fd, 0);
  if (mapping == MAP_FAILED) {
    int err = errno;
    out->reason = Describe("mmap on a TCP socket", err);
    if (err == ENODEV) out->reason += " (kernel older than 4.18?)";
    close(fd);
    return;
  }
  munmap(mapping, kPageSize);

  // An unconnected socket has nothing queued, so the call maps nothing and only tells
  // whether the option exists and how long the kernel's struct is (written back to optlen).
  ZerocopyReceive zc;
  std::memset(&zc, 0, sizeof(zc));
  socklen_t optlen = sizeof(zc);
  int rc = getsockopt(fd, IPPROTO_TCP, kTcpZerocopyReceive, &zc, &optlen);
  if (rc != 0 && errno == EINVAL) {
    // 4.18-5.6 accept exactly the 16-byte struct.
    std::memset(&zc, 0, sizeof(zc));
    optlen = kOptlenBase;
    rc = getsockopt(fd, IPPROTO_TCP, kTcpZerocopyReceive, &zc, &optlen);
  }
  int err = errno;
  close(fd);
  if (rc != 0) {
    out->reason = Describe("getsockopt(TCP_ZEROCOPY_RECEIVE)", err);
    if (err == ENOPROTOOPT) out->reason += " (kernel without TCP_ZEROCOPY_RECEIVE)";
    return;
  }
  if (optlen < kOptlenBase || optlen > sizeof(zc)) {
    out->reason = "getsockopt(TCP_ZEROCOPY_RECEIVE) answered an unexpected optlen " + std::to_string(optlen);
    return;
  }
  out->struct_size = optlen;
  out->inq_and_err = optlen >= kOptlenWithErr;
  out->copybuf = optlen >= kOptlenCopybuf;
  out->tlb_clean_hint = out->copybuf;
  out->rx_timestamps = optlen >= kOptlenFull;
  out->supported = true;
}

}  // namespace

const KernelFeatures& ProbeKernel() {
  static KernelFeatures features;
  static std::once_flag once;
  std::call_once(once, Probe, &features);
  return features;
}

}  // namespace tcpzc
