#pragma once

#include <cstddef>
#include <cstdint>
#include <map>
#include <memory>
#include <mutex>
#include <set>
#include <unordered_map>
#include <vector>

#include "write_fault.h"

namespace tcpzc {

class MappingPool;

// Told when released pages make room in a full pool (backpressure mode).
class PoolWaiter {
 public:
  virtual void OnPoolSpace() = 0;

 protected:
  ~PoolWaiter() = default;
};

// One mapped chunk handed to JS. Owned by whatever frees its Buffer's memory (Node's
// finalizer, or the deleter of a direct Buffer, see direct_buffer.h); keeps the pool (and
// so its mappings) alive for as long as the Buffer may still be read.
struct MappedChunk {
  std::shared_ptr<MappingPool> pool;
  uint8_t* address = nullptr;
  size_t length = 0;
  bool released = false;
  bool direct = false;  // its Buffer is a direct one (direct_buffer.h), not an external one
  // Copy-on-write: the write-fault table's entry (-1: none) and the receiver's counters,
  // kept alive for the handler until the chunk is released.
  int write_fault_ticket = -1;
  std::shared_ptr<CopyOnWriteCounters> receiver_counters;
  // Where its memory can be moved out of its Buffer (see MoveWatch): a weak napi_ref to its
  // ArrayBuffer, and whether the memory was moved when the environment stopped (then it
  // stays mapped, and so does the pool). The pool never touches either.
  void* array_buffer_ref = nullptr;
  bool moved = false;
};

// Address space for zero-copy receive, shared by every receiver of one environment.
// Any TCP mapping serves any TCP socket, so a few large mappings made from a throwaway
// socket replace one mapping per connection. The pool hands out page ranges that hold
// no pages (so the kernel may skip its zap: TLB_CLEAN_HINT) and bounds the bytes mapped
// and not yet released, which the kernel itself no longer accounts for.
//
// Used on its environment's thread, except ReleaseFromAnyThread(): V8 frees a direct
// Buffer's memory on whichever thread drops it last (a GC thread, another isolate it was
// moved to, a worker's teardown), so every member that touches chunks or ranges locks
// (the copy-on-write switch and the pool-full count are the environment thread's alone).
// Waiters are only ever told on the environment's thread: from any other, a release asks
// the wake-up set by SetWakeUp().
class MappingPool : public std::enable_shared_from_this<MappingPool> {
 public:
  struct Slot {
    uint8_t* address = nullptr;
    size_t length = 0;
    uint64_t releases_seen = 0;  // the pool's release count when it was reserved
  };

  explicit MappingPool(size_t max_pinned_bytes);
  ~MappingPool();
  MappingPool(const MappingPool&) = delete;
  MappingPool& operator=(const MappingPool&) = delete;

  // Reserves an empty range of at most `want` bytes (rounded down to pages), within the
  // cap. Returns 0 with slot->length == 0 when the cap leaves less than a page, or an
  // errno if a new mapping could not be made.
  int Reserve(size_t want, Slot* slot);
  // The kernel filled the first `mapped` bytes of a reserved slot: track them as a live
  // chunk (when mapped > 0) and give the rest of the slot back. Writes into the chunk
  // become private copies (counted in `receiver_counters` too) unless copy-on-write is off.
  MappedChunk* Commit(const Slot& slot, size_t mapped, std::shared_ptr<CopyOnWriteCounters> receiver_counters);
  // Drops the pages of a live chunk and frees its range (a copied range is made a TCP
  // mapping again first). Safe to call twice. On the environment's thread, tells the
  // waiters when room was made.
  void Release(MappedChunk* chunk);
  // The same from any thread at any time (a direct Buffer's deleter): never calls a
  // waiter, but asks for the wake-up if any waits (once until they are told), unless a
  // JsRelease of this pool on this thread tells them itself.
  void ReleaseFromAnyThread(MappedChunk* chunk);
  // Around the detach of a release() from JS, which runs the deleter right there: the
  // waiters are told when it ends, on this thread, without waking the loop for them.
  class JsRelease {
   public:
    explicit JsRelease(MappingPool* pool);
    ~JsRelease();
    JsRelease(const JsRelease&) = delete;
    JsRelease& operator=(const JsRelease&) = delete;

   private:
    MappingPool* pool_;
    JsRelease* outer_;
    bool released_ = false;
    friend class MappingPool;
  };
  // How another thread's release gets the waiters told on the environment's thread (null:
  // it cannot any more). `wake_up` must be callable from any thread until replaced.
  void SetWakeUp(void (*wake_up)(void* data), void* data);
  // The live chunk whose Buffer starts at `address`, or null.
  MappedChunk* Find(const uint8_t* address, size_t length) const;
  // `visit` runs with the lock held: it may call N-API only in a pool without direct
  // Buffers (MoveWatch's), where no allocation can run a deleter that takes the lock.
  template <typename Visit>
  void ForEachLive(Visit visit) const {
    std::lock_guard<std::mutex> lock(mutex_);
    for (const auto& entry : live_) visit(entry.second);
  }

  // After a Reserve that gave no room (`empty`): registers a waiter to be told once, on a
  // later release, if some chunk is live to be released and none was since that Reserve
  // (kRoomNow: try again; a release on another thread may have come in between).
  enum class WaitResult { kWaiting, kNothingLive, kRoomNow };
  WaitResult WaitForRoom(PoolWaiter* waiter, const Slot& empty);
  void CancelWait(PoolWaiter* waiter);
  // Tells every waiter (environment's thread only).
  void NotifyWaiters();

  // Tests only: puts an anonymous PROT_NONE mapping over every arena, so the kernel's
  // next receive into the pool fails for real (EINVAL, "not a TCP mapping"). Refused
  // (false) while any chunk is live.
  bool BreakArenasForTesting();

  // Mapped bytes not yet released, less the chunks already turned into private copies.
  size_t pinned_bytes() const;
  // Writes into live chunks become private copies (default) or crash (off).
  void set_copy_on_write(bool enabled) { copy_on_write_ = enabled; }
  double chunks_copied_on_write() const {
    return static_cast<double>(cow_counters_.chunks.load(std::memory_order_relaxed));
  }
  // Bytes of copied ranges that could not be made TCP mappings again, kept out of use.
  size_t retired_bytes() const;
  size_t max_pinned_bytes() const;
  // A higher cap wakes receivers waiting for room.
  void set_max_pinned_bytes(size_t bytes);
  size_t mapping_count() const;
  size_t mapped_bytes() const;
  size_t live_chunks() const;
  // Bytes any receiver had to copy because the cap was reached (environment's thread).
  double copied_pool_full_bytes() const { return copied_pool_full_bytes_; }
  void CountCopiedPoolFull(double bytes) { copied_pool_full_bytes_ += bytes; }

 private:
  struct Arena {
    uint8_t* base;
    size_t size;
    std::map<size_t, size_t> free_runs;  // offset -> length, coalesced
    // Offsets where restoring copied ranges split the arena's VMA (TCP VMAs never merge).
    // A free run with a seam inside is mapped again as one, so seams only stay next to
    // live chunks.
    std::set<size_t> seams;
  };

  // The members below run with mutex_ held. True when room was made.
  bool ReleaseLocked(MappedChunk* chunk);
  size_t PinnedLocked() const;
  int ReserveLocked(size_t want, Slot* slot, bool* freed);
  int AddArena();
  // Drops the pages of every released range not dropped yet (one madvise per run of
  // adjacent ranges) and gives the ranges back.
  void FlushReleased();
  Arena* ArenaOf(const uint8_t* address);
  void FreeRange(uint8_t* address, size_t length);
  // Maps the free run around `offset` again as one TCP mapping; false if it could not.
  bool RemapFreeRun(Arena* arena, size_t offset);
  bool HasSeamInside(const Arena& arena, size_t offset) const;
  void TakeRange(Arena* arena, size_t offset, size_t length);

  mutable std::mutex mutex_;
  size_t max_pinned_bytes_;
  size_t pinned_bytes_ = 0;
  size_t retired_bytes_ = 0;
  int restore_fd_ = -1;  // a TCP socket kept to map copied ranges again, made on first use
  bool copy_on_write_ = true;
  CopyOnWriteCounters cow_counters_;
  double copied_pool_full_bytes_ = 0;
  std::vector<Arena> arenas_;
  std::unordered_map<uintptr_t, MappedChunk*> live_;
  std::vector<PoolWaiter*> waiters_;
  // Released ranges whose pages are still there, adjacent ones merged: one madvise (one
  // TLB flush) for several chunks instead of one each.
  std::vector<std::pair<uint8_t*, size_t>> released_;
  size_t released_bytes_ = 0;
  uint64_t releases_ = 0;         // chunks released, ever (see WaitForRoom)
  bool wake_up_pending_ = false;  // asked for the wake-up; the waiters were not told yet
  void (*wake_up_)(void* data) = nullptr;
  void* wake_up_data_ = nullptr;
};

}  // namespace tcpzc
