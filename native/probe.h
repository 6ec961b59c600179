#pragma once

#include <cstdint>
#include <string>

namespace tcpzc {

// What the running kernel offers for zero-copy receive. Probed once per process:
// the answer cannot change while the process lives, and workers share it.
struct KernelFeatures {
  bool supported = false;    // mmap on TCP + TCP_ZEROCOPY_RECEIVE both work
  std::string reason;        // why not, when !supported
  std::string kernel;        // uname release
  uint32_t struct_size = 0;  // optlen the kernel accepts (16/24/40/64)
  bool inq_and_err = false;  // inq + err fields (5.7)
  bool copybuf = false;      // copybuf + flags (5.11)
  bool tlb_clean_hint = false;
  bool rx_timestamps = false;  // msg_control fields (5.12)
  // madvise(MADV_DONTNEED) over a whole 2 MiB-aligned block also frees its page table
  // (x86-64, 6.14+, CONFIG_PT_RECLAIM), which the next receive into it must allocate
  // again. From the version: the config option cannot be read from here.
  bool madvise_frees_page_tables = false;
};

const KernelFeatures& ProbeKernel();

}  // namespace tcpzc
