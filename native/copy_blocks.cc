#include "copy_blocks.h"

#include <cstdlib>
#include <new>

namespace tcpzc {

CopyBlocks::~CopyBlocks() { FreeIdle(); }

CopyBlock* CopyBlocks::Take(size_t size) {
  for (size_t i = idle_.size(); i-- > 0;) {
    CopyBlock* block = idle_[i];
    if (block->size != size) continue;
    idle_.erase(idle_.begin() + static_cast<std::ptrdiff_t>(i));
    idle_bytes_ -= size;
    block->home = shared_from_this();
    return block;
  }
  auto* data = static_cast<uint8_t*>(std::malloc(size));
  if (data == nullptr) return nullptr;
  auto* block = new (std::nothrow) CopyBlock{shared_from_this(), data, size};
  if (block == nullptr) std::free(data);
  return block;
}

void CopyBlocks::Give(CopyBlock* block) {
  // The idle list does not own its cache: a block out in JS keeps it alive, an idle one not.
  std::shared_ptr<CopyBlocks> self = std::move(block->home);
  if (block->size > kMaxIdleBytes) {
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
