#pragma once

#include <cstddef>
#include <cstdint>
#include <memory>
#include <vector>

namespace tcpzc {

class CopyBlocks;

// Memory one copied chunk was received into. Owned by its Buffer's finalizer hint while
// JS can reach it, by the cache while idle.
struct CopyBlock {
  std::shared_ptr<CopyBlocks> home;
  uint8_t* data;
  size_t size;
};

// Memory for copied chunks, kept for reuse by the receivers of one environment. A fresh
// allocation of a large chunk is fresh pages from the kernel (glibc maps large blocks and
// trims its heap on free), and on a VM each first touch is a page fault that costs more
// than copying the page: a forwarder at 1 MiB chunks spent 1.6x the CPU per MB in windows
// with 480 faults per 8 MiB as in windows without. Idle blocks are bounded and kept while
// the environment lives, so a new connection starts on memory the last one used. Used on
// the environment's own thread only.
class CopyBlocks : public std::enable_shared_from_this<CopyBlocks> {
 public:
  // Below this, malloc's own free lists recycle the memory.
  static constexpr size_t kMinBlockBytes = 128 * 1024;
  static constexpr size_t kMaxIdleBytes = 32u << 20;
  static constexpr size_t kMaxIdleBlocks = 16;

  ~CopyBlocks();

  // An idle block of exactly `size` bytes, or a new one; nullptr when out of memory.
  CopyBlock* Take(size_t size);
  // A block back from JS (its Buffer released or collected): kept for reuse (the oldest
  // idle ones freed to make room), or freed if larger than the idle bound.
  void Give(CopyBlock* block);

  size_t idle_bytes() const { return idle_bytes_; }

 private:
  static void Free(CopyBlock* block);
  void FreeIdle();

  std::vector<CopyBlock*> idle_;
  size_t idle_bytes_ = 0;
};

}  // namespace tcpzc
