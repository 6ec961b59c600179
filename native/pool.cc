#include "pool.h"

#include <netinet/in.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>

#include "kernel.h"
#include "probe.h"

namespace tcpzc {
namespace {

// Virtual address space is cheap; pages are only pinned once the kernel maps them.
constexpr size_t kArenaSize = 64u << 20;
// 2 MiB alignment keeps a chunk's page-table entries together (as the kernel selftest does).
constexpr size_t kArenaAlign = 2u << 20;
// Released chunks of 1 MiB and more have their pages dropped together once this many
// bytes wait (or when no chunk is live, or space is needed): consecutive chunks sit next
// to each other in an arena, and one madvise (one TLB flush) serves several (one per
// 2 MiB block where DropPages keeps page tables). Measured on the project VM, receive
// path alone at 1 MiB chunks: 10-20% less CPU in 5 of 5 interleaved runs; at 256 KiB it
// cost more in 4 of 5, hence the floor.
constexpr size_t kMaxReleasedBytes = 8u << 20;
constexpr size_t kMinBatchedChunk = 1u << 20;

size_t PageFloor(size_t bytes) { return bytes & ~(kPageSize - 1); }

// Live copied chunks per pool at most: each is an anonymous mapping of its own, and the
// process has vm.max_map_count (65530) of them. Beyond it data arrives copied.
constexpr uint64_t kMaxLiveCopies = 4096;

int TcpSocket() {
  int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, IPPROTO_TCP);
  if (fd < 0) fd = socket(AF_INET6, SOCK_STREAM | SOCK_CLOEXEC, IPPROTO_TCP);
  return fd;
}

// An empty TCP mapping: at `fixed` (replacing what is there) or anywhere (null). Any TCP
// socket can make it, and the mapping outlives the socket.
void* MapTcp(int fd, void* fixed, size_t length) {
  return mmap(fixed, length, PROT_READ, MAP_SHARED | (fixed != nullptr ? MAP_FIXED : 0), fd, 0);
}

// Gives a released range's pages back to the kernel. Where MADV_DONTNEED also frees the
// page table of every 2 MiB block it covers whole (x86-64 from 6.14, CONFIG_PT_RECLAIM),
// the next receive into that block has to allocate and install a new one; under shadow
// paging (this project's VM) those two PMD writes cost more than an extra madvise. There,
// each whole block in the range is cut in its middle, so no call covers one whole.
void DropPages(uint8_t* address, size_t length) {
  static const bool keep_page_tables = ProbeKernel().madvise_frees_page_tables;
  uintptr_t start = reinterpret_cast<uintptr_t>(address);
  const uintptr_t end = start + length;
  if (keep_page_tables) {
    const uintptr_t mask = kArenaAlign - 1;
    for (uintptr_t block = (start + mask) & ~mask; block + kArenaAlign <= end; block += kArenaAlign) {
      const uintptr_t cut = block + kArenaAlign / 2;
      madvise(reinterpret_cast<void*>(start), cut - start, MADV_DONTNEED);
      start = cut;
    }
  }
  madvise(reinterpret_cast<void*>(start), end - start, MADV_DONTNEED);
}

}  // namespace

MappingPool::MappingPool(size_t max_pinned_bytes) : max_pinned_bytes_(max_pinned_bytes) {}

MappingPool::~MappingPool() {
  for (Arena& arena : arenas_) munmap(arena.base, arena.size);
  if (restore_fd_ >= 0) close(restore_fd_);
}

int MappingPool::AddArena() {
  size_t span = kArenaSize + kArenaAlign;
  int fd = TcpSocket();
  if (fd < 0) return errno;
  void* raw = MapTcp(fd, nullptr, span);
  int err = errno;
  close(fd);
  if (raw == MAP_FAILED) return err;
  uintptr_t start = reinterpret_cast<uintptr_t>(raw);
  uintptr_t aligned = (start + kArenaAlign - 1) & ~(kArenaAlign - 1);
  // Trim to an aligned arena; the mapping is empty, so unmapping parts of it is free.
  if (aligned > start) munmap(raw, aligned - start);
  size_t tail = span - (aligned - start) - kArenaSize;
  if (tail > 0) munmap(reinterpret_cast<void*>(aligned + kArenaSize), tail);
  Arena arena{reinterpret_cast<uint8_t*>(aligned), kArenaSize, {}, {}};
  arena.free_runs.emplace(0, kArenaSize);
  arenas_.push_back(std::move(arena));
  return 0;
}

int MappingPool::Reserve(size_t want, Slot* slot) {
  bool freed = false;
  int err;
  {
    std::lock_guard<std::mutex> lock(mutex_);
    err = ReserveLocked(want, slot, &freed);
  }
  if (freed) NotifyWaiters();
  return err;
}

int MappingPool::ReserveLocked(size_t want, Slot* slot, bool* freed) {
  *slot = Slot{};
  slot->releases_seen = releases_;
  // Too many chunks turned into copies: treat the pool as full until some come back.
  if (cow_counters_.live_chunks.load(std::memory_order_relaxed) >= kMaxLiveCopies) return 0;
  size_t pinned = PinnedLocked();
  size_t headroom = max_pinned_bytes_ > pinned ? max_pinned_bytes_ - pinned : 0;
  want = PageFloor(std::min({want, headroom, kArenaSize}));
  if (want == 0) return 0;

  // First fit for the whole request; otherwise a new arena while the address space stays
  // within twice the cap; otherwise the largest run there is.
  Arena* best_arena = nullptr;
  std::map<size_t, size_t>::iterator best_run;
  for (Arena& arena : arenas_) {
    for (auto run = arena.free_runs.begin(); run != arena.free_runs.end(); ++run) {
      if (run->second >= want) {
        best_arena = &arena;
        best_run = run;
        break;
      }
      if (best_arena == nullptr || run->second > best_run->second) {
        best_arena = &arena;
        best_run = run;
      }
    }
    if (best_arena != nullptr && best_run->second >= want) break;
  }
  bool fits = best_arena != nullptr && best_run->second >= want;
  if (!fits && !released_.empty()) {
    // Released ranges first, before any new address space.
    FlushReleased();
    *freed = true;
    return ReserveLocked(want, slot, freed);
  }
  if (!fits && arenas_.size() * kArenaSize < 2 * max_pinned_bytes_ + kArenaSize) {
    int err = AddArena();
    if (err != 0) return err;
    best_arena = &arenas_.back();
    best_run = best_arena->free_runs.begin();
  }
  if (best_arena == nullptr) return 0;

  size_t offset = best_run->first;
  size_t length = std::min(want, best_run->second);
  size_t rest = best_run->second - length;
  best_arena->free_runs.erase(best_run);
  if (rest > 0) best_arena->free_runs.emplace(offset + length, rest);
  slot->address = best_arena->base + offset;
  slot->length = length;
  return 0;
}

MappedChunk* MappingPool::Commit(const Slot& slot, size_t mapped,
                                 std::shared_ptr<CopyOnWriteCounters> receiver_counters) {
  std::lock_guard<std::mutex> lock(mutex_);
  mapped = std::min(PageFloor(mapped), slot.length);
  if (slot.length > mapped) FreeRange(slot.address + mapped, slot.length - mapped);
  if (mapped == 0) return nullptr;
  pinned_bytes_ += mapped;
  auto* chunk = new MappedChunk;
  chunk->pool = shared_from_this();
  chunk->address = slot.address;
  chunk->length = mapped;
  if (copy_on_write_ && receiver_counters != nullptr && write_fault::Install()) {
    chunk->receiver_counters = std::move(receiver_counters);
    chunk->write_fault_ticket =
        write_fault::Register(chunk->address, mapped, &cow_counters_, chunk->receiver_counters.get());
  }
  live_.emplace(reinterpret_cast<uintptr_t>(slot.address), chunk);
  return chunk;
}

void MappingPool::Release(MappedChunk* chunk) {
  bool room;
  {
    std::lock_guard<std::mutex> lock(mutex_);
    room = ReleaseLocked(chunk);
  }
  if (room) NotifyWaiters();
}

namespace {
thread_local MappingPool::JsRelease* innermost_js_release = nullptr;
}  // namespace

MappingPool::JsRelease::JsRelease(MappingPool* pool) : pool_(pool), outer_(innermost_js_release) {
  innermost_js_release = this;
}

MappingPool::JsRelease::~JsRelease() {
  innermost_js_release = outer_;
  if (released_) pool_->NotifyWaiters();
}

void MappingPool::ReleaseFromAnyThread(MappedChunk* chunk) {
  std::lock_guard<std::mutex> lock(mutex_);
  if (!ReleaseLocked(chunk) || waiters_.empty()) return;
  for (JsRelease* scope = innermost_js_release; scope != nullptr; scope = scope->outer_) {
    if (scope->pool_ == this) {
      scope->released_ = true;  // told as the scope ends
      return;
    }
  }
  // Under the lock: SetWakeUp(nullptr) cannot pull the wake-up from under the call.
  if (!wake_up_pending_ && wake_up_ != nullptr) {
    wake_up_pending_ = true;
    wake_up_(wake_up_data_);
  }
}

void MappingPool::SetWakeUp(void (*wake_up)(void* data), void* data) {
  std::lock_guard<std::mutex> lock(mutex_);
  wake_up_ = wake_up;
  wake_up_data_ = data;
}

bool MappingPool::ReleaseLocked(MappedChunk* chunk) {
  if (chunk->released) return false;
  chunk->released = true;
  releases_++;
  // Off the write-fault table first: from here on a store into the range is a stray one.
  bool copied = chunk->write_fault_ticket >= 0 && write_fault::Unregister(chunk->write_fault_ticket);
  chunk->write_fault_ticket = -1;
  live_.erase(reinterpret_cast<uintptr_t>(chunk->address));
  pinned_bytes_ -= chunk->length;
  Arena* arena = ArenaOf(chunk->address);
  size_t offset = arena != nullptr ? static_cast<size_t>(chunk->address - arena->base) : 0;
  // Restores leave seams that only whole free runs heal: no batching in such arenas. Nor
  // for chunks under 1 MiB: freeing many small chunks' pages late measured dearer here
  // (the pages the loopback path copies into next are no longer cache-hot).
  bool batch = !copied && arena != nullptr && arena->seams.empty() && chunk->length >= kMinBatchedChunk;
  if (!batch) FlushReleased();
  if (copied) {
    // A private copy sits in the range: its whole free run becomes one TCP mapping again
    // (the copy goes with it).
    FreeRange(chunk->address, chunk->length);
    if (arena == nullptr || !RemapFreeRun(arena, offset)) {
      madvise(chunk->address, chunk->length, MADV_DONTNEED);  // the copy's memory, at least
      retired_bytes_ += chunk->length;
      if (arena != nullptr) TakeRange(arena, offset, chunk->length);
    }
  } else if (!batch) {
    // Drop the pages before the range can be handed out again: the next receive into it
    // must find it empty (TLB_CLEAN_HINT), and nothing may read the old payload.
    DropPages(chunk->address, chunk->length);
    FreeRange(chunk->address, chunk->length);
    if (arena != nullptr && HasSeamInside(*arena, offset)) RemapFreeRun(arena, offset);
  } else {
    // The pages are dropped before the range can be handed out again (the next receive
    // into it must find it empty: TLB_CLEAN_HINT), in a batch: JS can no longer see them
    // (the Buffer is detached), and they no longer count as pinned.
    if (!released_.empty() && released_.back().first + released_.back().second == chunk->address) {
      released_.back().second += chunk->length;
    } else {
      released_.emplace_back(chunk->address, chunk->length);
    }
    released_bytes_ += chunk->length;
    if (released_bytes_ >= std::min(kMaxReleasedBytes, max_pinned_bytes_ / 8) || live_.empty() || !waiters_.empty()) {
      FlushReleased();
    }
  }
  // Room counts as made once the chunk no longer counts as pinned, batched pages or not
  // (a waiter's Reserve flushes them first).
  return true;
}

void MappingPool::FlushReleased() {
  if (released_.empty()) return;
  std::vector<std::pair<uint8_t*, size_t>> ranges;
  ranges.swap(released_);
  released_bytes_ = 0;
  for (const auto& range : ranges) {
    DropPages(range.first, range.second);
    FreeRange(range.first, range.second);
    Arena* arena = ArenaOf(range.first);
    size_t offset = arena != nullptr ? static_cast<size_t>(range.first - arena->base) : 0;
    if (arena != nullptr && HasSeamInside(*arena, offset)) RemapFreeRun(arena, offset);
  }
}

size_t MappingPool::pinned_bytes() const {
  std::lock_guard<std::mutex> lock(mutex_);
  return PinnedLocked();
}

size_t MappingPool::PinnedLocked() const {
  size_t copied = cow_counters_.live_bytes.load(std::memory_order_relaxed);
  return pinned_bytes_ > copied ? pinned_bytes_ - copied : 0;
}

// One mapping for the whole free run around `offset`: restores a copied range and heals
// the seams earlier restores left inside the run.
bool MappingPool::RemapFreeRun(Arena* arena, size_t offset) {
  auto run = arena->free_runs.upper_bound(offset);
  if (run == arena->free_runs.begin()) return false;
  --run;
  size_t start = run->first;
  size_t end = run->first + run->second;
  if (offset >= end) return false;
  if (restore_fd_ < 0) restore_fd_ = TcpSocket();
  if (restore_fd_ < 0 || MapTcp(restore_fd_, arena->base + start, end - start) == MAP_FAILED) return false;
  arena->seams.erase(arena->seams.upper_bound(start), arena->seams.lower_bound(end));
  if (start > 0) arena->seams.insert(start);
  if (end < arena->size) arena->seams.insert(end);
  return true;
}

bool MappingPool::HasSeamInside(const Arena& arena, size_t offset) const {
  if (arena.seams.empty()) return false;
  auto run = arena.free_runs.upper_bound(offset);
  if (run == arena.free_runs.begin()) return false;
  --run;
  auto seam = arena.seams.upper_bound(run->first);
  return seam != arena.seams.end() && *seam < run->first + run->second;
}

// Takes [offset, offset + length) out of the free runs for good (retired address space).
void MappingPool::TakeRange(Arena* arena, size_t offset, size_t length) {
  auto run = arena->free_runs.upper_bound(offset);
  if (run == arena->free_runs.begin()) return;
  --run;
  size_t start = run->first;
  size_t end = run->first + run->second;
  if (offset < start || offset + length > end) return;
  arena->free_runs.erase(run);
  if (offset > start) arena->free_runs.emplace(start, offset - start);
  if (offset + length < end) arena->free_runs.emplace(offset + length, end - offset - length);
}

MappingPool::Arena* MappingPool::ArenaOf(const uint8_t* address) {
  for (Arena& arena : arenas_) {
    if (address >= arena.base && address < arena.base + arena.size) return &arena;
  }
  return nullptr;
}

void MappingPool::set_max_pinned_bytes(size_t bytes) {
  bool raised;
  {
    std::lock_guard<std::mutex> lock(mutex_);
    raised = bytes > max_pinned_bytes_;
    max_pinned_bytes_ = bytes;
    if (raised) releases_++;  // room, as a release makes it
  }
  if (raised) NotifyWaiters();
}

void MappingPool::NotifyWaiters() {
  std::vector<PoolWaiter*> waiters;
  {
    std::lock_guard<std::mutex> lock(mutex_);
    waiters.swap(waiters_);
    wake_up_pending_ = false;
  }
  // Outside the lock: a waiter starts polling again, and may reserve at once.
  for (PoolWaiter* waiter : waiters) waiter->OnPoolSpace();
}

MappingPool::WaitResult MappingPool::WaitForRoom(PoolWaiter* waiter, const Slot& empty) {
  std::lock_guard<std::mutex> lock(mutex_);
  // Released on another thread since the Reserve that found no room (perhaps the last
  // live chunk): it may fit now. Only a release changes the answer, so this cannot spin.
  if (releases_ != empty.releases_seen) return WaitResult::kRoomNow;
  if (live_.empty()) return WaitResult::kNothingLive;
  if (std::find(waiters_.begin(), waiters_.end(), waiter) == waiters_.end()) waiters_.push_back(waiter);
  return WaitResult::kWaiting;
}

void MappingPool::CancelWait(PoolWaiter* waiter) {
  std::lock_guard<std::mutex> lock(mutex_);
  waiters_.erase(std::remove(waiters_.begin(), waiters_.end(), waiter), waiters_.end());
}

size_t MappingPool::retired_bytes() const {
  std::lock_guard<std::mutex> lock(mutex_);
  return retired_bytes_;
}

size_t MappingPool::max_pinned_bytes() const {
  std::lock_guard<std::mutex> lock(mutex_);
  return max_pinned_bytes_;
}

size_t MappingPool::mapping_count() const {
  std::lock_guard<std::mutex> lock(mutex_);
  return arenas_.size();
}

size_t MappingPool::live_chunks() const {
  std::lock_guard<std::mutex> lock(mutex_);
  return live_.size();
}

MappedChunk* MappingPool::Find(const uint8_t* address, size_t length) const {
  std::lock_guard<std::mutex> lock(mutex_);
  auto it = live_.find(reinterpret_cast<uintptr_t>(address));
  if (it == live_.end() || it->second->length != length) return nullptr;
  return it->second;
}

bool MappingPool::BreakArenasForTesting() {
  std::lock_guard<std::mutex> lock(mutex_);
  if (!live_.empty()) return false;
  FlushReleased();
  if (arenas_.empty() && AddArena() != 0) return false;
  for (Arena& arena : arenas_) {
    // MAP_FIXED replaces the TCP mapping in place and keeps the range reserved.
    void* replaced = mmap(arena.base, arena.size, PROT_NONE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_FIXED, -1, 0);
    if (replaced == MAP_FAILED) return false;
  }
  return true;
}

size_t MappingPool::mapped_bytes() const {
  std::lock_guard<std::mutex> lock(mutex_);
  return arenas_.size() * kArenaSize;
}

void MappingPool::FreeRange(uint8_t* address, size_t length) {
  Arena* arena = ArenaOf(address);
  if (arena == nullptr) return;
  size_t offset = static_cast<size_t>(address - arena->base);
  auto next = arena->free_runs.lower_bound(offset);
  // Coalesce with the neighbours so large slots stay available.
  if (next != arena->free_runs.end() && offset + length == next->first) {
    length += next->second;
    next = arena->free_runs.erase(next);
  }
  if (next != arena->free_runs.begin()) {
    auto prev = std::prev(next);
    if (prev->first + prev->second == offset) {
      prev->second += length;
      return;
    }
  }
  arena->free_runs.emplace(offset, length);
}

}  // namespace tcpzc
