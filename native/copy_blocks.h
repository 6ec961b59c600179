#pragma once

#include <cstddef>
#include <cstdint>
#include <memory>
#include <mutex>
#include <vector>

namespace tcpzc {

class CopyBlocks;

// Memory one copied chunk was received into. Owned by its Buffer's finalizer or deleter
// hint while JS can reach it, by the cache while idle.
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
// the environment lives, so a new connection starts on memory the last one used. Taken
// on the environment's thread; given back from any thread (a direct Buffer's memory comes
// back wherever the last ArrayBuffer over it is dropped: a GC thread, another isolate it
// was moved to), so the idle list is locked.
class CopyBlocks : public std::enable_shared_from_this<CopyBlocks> {
 public:
  // Below this, malloc's own free lists recycle the memory.
  static constexpr size_t kMinBlockBytes = 128 * 1024;
  static constexpr size_t kMaxIdleBytes = 32u << 20;
  static constexpr size_t kMaxIdleBlocks = 16;

  CopyBlocks();
  ~CopyBlocks();

  // An idle block of exactly `size` bytes, or a new one; nullptr when out of memory.
  CopyBlock* Take(size_t size);
  // A block back from JS (its Buffer released or collected): kept for reuse (the oldest
  // idle ones freed to make room), or freed if larger than the idle bound or closed.
  void Give(CopyBlock* block);
  // The environment is gone: idle blocks are freed now, and blocks that come back later
  // (memory moved to another thread outlives its environment) are freed as they come.
  void Close();

  size_t idle_bytes() const;

 private:
  static void Free(CopyBlock* block);
  void FreeIdle();

  mutable std::mutex mutex_;
  bool closed_ = false;
  std::vector<CopyBlock*> idle_;
  size_t idle_bytes_ = 0;
};

}  // namespace tcpzc
