#include "copy_blocks.h"

#include <cstdlib>
#include <new>

namespace tcpzc {

// Room for every idle block up front: Give runs in V8's deleters, on any thread, where an
// allocation failure could not be reported (a throw there ends the process).
CopyBlocks::CopyBlocks() { idle_.reserve(kMaxIdleBlocks); }

CopyBlocks::~CopyBlocks() { FreeIdle(); }

void CopyBlocks::Close() {
  std::lock_guard<std::mutex> lock(mutex_);
  closed_ = true;
  FreeIdle();
}

CopyBlock* CopyBlocks::Take(size_t size) {
  {
    std::lock_guard<std::mutex> lock(mutex_);
    for (size_t i = idle_.size(); i-- > 0;) {
      CopyBlock* block = idle_[i];
      if (block->size != size) continue;
      idle_.erase(idle_.begin() + static_cast<std::ptrdiff_t>(i));
      idle_bytes_ -= size;
      block->home = shared_from_this();
      return block;
    }
  }
  auto* data = static_cast<uint8_t*>(std::malloc(size));
  if (data == nullptr) return nullptr;
  auto* block = new (std::nothrow) CopyBlock{shared_from_this(), data, size};
  if (block == nullptr) std::free(data);
  return block;
}

void CopyBlocks::Give(CopyBlock* block) {
  // The idle list does not own its cache: a block out in JS keeps it alive, an idle one not.
  // Declared before the lock, so that if this was the last reference the cache goes (and
  // frees its idle blocks) after the lock is released.
  std::shared_ptr<CopyBlocks> self = std::move(block->home);
  if (block->size > kMaxIdleBytes) {
    Free(block);
    return;
  }
  std::lock_guard<std::mutex> lock(mutex_);
  if (closed_) {
    Free(block);
    return;
  }
  // The newest block stays; the oldest make room, so a chunk size no longer used ages out.
  while (!idle_.empty() && (idle_.size() >= kMaxIdleBlocks || idle_bytes_ + block->size > kMaxIdleBytes)) {
    idle_bytes_ -= idle_.front()->size;
    Free(idle_.front());
    idle_.erase(idle_.begin());
  }
  idle_.push_back(block);
  idle_bytes_ += block->size;
}

size_t CopyBlocks::idle_bytes() const {
  std::lock_guard<std::mutex> lock(mutex_);
  return idle_bytes_;
}

void CopyBlocks::Free(CopyBlock* block) {
  std::free(block->data);
  delete block;
}

void CopyBlocks::FreeIdle() {
  for (CopyBlock* block : idle_) Free(block);
  idle_.clear();
  idle_bytes_ = 0;
}

}  // namespace tcpzc
