#include "write_fault.h"

#include <sched.h>
#include <signal.h>
#include <sys/mman.h>
#include <ucontext.h>

#include <cerrno>
#include <cstring>
#include <mutex>

namespace tcpzc {
namespace write_fault {
namespace {

// An entry's life: kFree -> kClaimed (Register fills it) -> kLive -> [kCopying -> kCopied]
// -> kClosing (Unregister) -> kFree. Fields are written only while kClaimed and published
// by the release store of kLive; they are atomics because the handler may read an entry
// that is being reused, and checks again once it owns the entry (kCopying).
enum State : uint32_t { kFree, kClaimed, kLive, kCopying, kCopied, kCopyFailed, kClosing };

struct Entry {
  std::atomic<uint32_t> state{kFree};
  std::atomic<uintptr_t> start{0};
  std::atomic<size_t> length{0};
  std::atomic<CopyOnWriteCounters*> pool{nullptr};
  std::atomic<CopyOnWriteCounters*> receiver{nullptr};

  bool Contains(uintptr_t address) const {
    uintptr_t first = start.load(std::memory_order_relaxed);
    return address >= first && address - first < length.load(std::memory_order_relaxed);
  }
};

static_assert(std::atomic<uint32_t>::is_always_lock_free, "the handler needs lock-free atomics");
static_assert(std::atomic<uint64_t>::is_always_lock_free, "the handler needs lock-free atomics");
static_assert(std::atomic<size_t>::is_always_lock_free, "the handler needs lock-free atomics");
static_assert(std::atomic<uintptr_t>::is_always_lock_free, "the handler needs lock-free atomics");
static_assert(std::atomic<CopyOnWriteCounters*>::is_always_lock_free, "the handler needs lock-free atomics");

Entry g_table[kCapacity];
// One past the highest entry ever claimed: the handler scans no further.
std::atomic<size_t> g_used{0};
std::atomic<size_t> g_next_hint{0};
struct sigaction g_previous;
std::once_flag g_install_once;
bool g_installed = false;

// Hands the fault to whoever handled SIGSEGV before us, as it asked to be called. The
// kernel reads handler values SIG_DFL and SIG_IGN as such whatever the flags.
void Chain(int signo, siginfo_t* info, void* context) {
  bool from_kernel = info != nullptr && info->si_code > 0;
  // Ignoring a real fault would re-run the faulting instruction for ever; the kernel
  // itself forces the default action there.
  bool take_default = g_previous.sa_handler == SIG_DFL || (g_previous.sa_handler == SIG_IGN && from_kernel);
  if (g_previous.sa_handler == SIG_IGN && !take_default) return;
  if (take_default) {
    // The default action: the faulting store runs again and ends the process. A signal
    // sent with kill() has no store to re-run, so send it again (delivered on return).
    struct sigaction default_action;
    std::memset(&default_action, 0, sizeof(default_action));
    default_action.sa_handler = SIG_DFL;
    sigaction(signo, &default_action, nullptr);
    if (!from_kernel) raise(signo);
    return;
  }
  struct sigaction previous = g_previous;
  // A one-shot handler is called once; afterwards the default action applies, as it would
  // have without us. (Its sa_mask and SA_NODEFER are not emulated.)
  if (previous.sa_flags & SA_RESETHAND) {
    std::memset(&g_previous, 0, sizeof(g_previous));
    g_previous.sa_handler = SIG_DFL;
  }
  if (previous.sa_flags & SA_SIGINFO) previous.sa_sigaction(signo, info, context);
  else previous.sa_handler(signo);
}

// True for a store (not a read or an instruction fetch) where the CPU tells; elsewhere a
// permission fault in a read-only chunk can only be a store.
bool IsWrite(const void* context) {
#if defined(__x86_64__)
  const auto* uc = static_cast<const ucontext_t*>(context);
  return (uc->uc_mcontext.gregs[REG_ERR] & 0x2) != 0;
#else
  (void)context;
  return true;
#endif
}

// Puts a private, writable copy of the entry's range in its place. Readers on other
// threads see the old pages until mremap swaps the range under the mmap lock, then the
// copy: never a hole.
bool CopyInPlace(uintptr_t start, size_t length) {
  void* copy = mmap(nullptr, length, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
  if (copy == MAP_FAILED) return false;
  std::memcpy(copy, reinterpret_cast<const void*>(start), length);
  void* moved = mremap(copy, length, length, MREMAP_MAYMOVE | MREMAP_FIXED, reinterpret_cast<void*>(start));
  if (moved == MAP_FAILED) {
    munmap(copy, length);
    return false;
  }
  return true;
}

// True when the fault was a store into a live chunk and the store can now be retried.
bool HandleChunkWrite(uintptr_t address) {
  size_t used = g_used.load(std::memory_order_acquire);
  for (size_t i = 0; i < used; i++) {
    Entry& entry = g_table[i];
    uint32_t state = entry.state.load(std::memory_order_acquire);
    if (state != kLive && state != kCopying && state != kCopied) continue;
    if (!entry.Contains(address)) continue;
    for (;;) {
      state = entry.state.load(std::memory_order_acquire);
      // Another thread copied it after this store faulted: retry the store. (Only stores
      // get here, so this cannot spin on a fault of another kind.)
      if (state == kCopied) return entry.Contains(address);
      if (state == kCopying) {
        sched_yield();
        continue;
      }
      if (state != kLive) return false;  // released meanwhile: a store after release
      if (!entry.state.compare_exchange_strong(state, kCopying, std::memory_order_acq_rel)) continue;
      if (!entry.Contains(address)) {  // the entry was reused for another range meanwhile
        entry.state.store(kLive, std::memory_order_release);
        break;
      }
      size_t length = entry.length.load(std::memory_order_relaxed);
      bool copied = CopyInPlace(entry.start.load(std::memory_order_relaxed), length);
      if (copied) {
        CopyOnWriteCounters* pool = entry.pool.load(std::memory_order_relaxed);
        pool->chunks.fetch_add(1, std::memory_order_relaxed);
        pool->live_bytes.fetch_add(length, std::memory_order_relaxed);
        pool->live_chunks.fetch_add(1, std::memory_order_relaxed);
        entry.receiver.load(std::memory_order_relaxed)->chunks.fetch_add(1, std::memory_order_relaxed);
      }
      entry.state.store(copied ? kCopied : kCopyFailed, std::memory_order_release);
      return copied;
    }
  }
  return false;
}

void OnSegv(int signo, siginfo_t* info, void* context) {
  int saved_errno = errno;
  // Only faults the kernel raised carry an address (kill() does not), and a store into a
  // read-only mapping is a permission fault.
  bool handled = info != nullptr && info->si_code == SEGV_ACCERR && IsWrite(context) &&
                 HandleChunkWrite(reinterpret_cast<uintptr_t>(info->si_addr));
  errno = saved_errno;
  if (!handled) Chain(signo, info, context);
}

}  // namespace

bool Install() {
  std::call_once(g_install_once, [] {
    struct sigaction action;
    std::memset(&action, 0, sizeof(action));
    action.sa_sigaction = OnSegv;
    action.sa_flags = SA_SIGINFO | SA_ONSTACK;
    sigemptyset(&action.sa_mask);
    // Read the previous action before ours is live: a fault on another thread in between
    // must find it, not zeros.
    if (sigaction(SIGSEGV, nullptr, &g_previous) != 0) return;
    g_installed = sigaction(SIGSEGV, &action, nullptr) == 0;
  });
  return g_installed;
}

int Register(uint8_t* address, size_t length, CopyOnWriteCounters* pool, CopyOnWriteCounters* receiver) {
  if (!g_installed || length == 0) return -1;
  size_t start = g_next_hint.load(std::memory_order_relaxed) % kCapacity;
  for (size_t step = 0; step < kCapacity; step++) {
    size_t i = (start + step) % kCapacity;
    Entry& entry = g_table[i];
    uint32_t expected = kFree;
    if (!entry.state.compare_exchange_strong(expected, kClaimed, std::memory_order_acquire)) continue;
    entry.start.store(reinterpret_cast<uintptr_t>(address), std::memory_order_relaxed);
    entry.length.store(length, std::memory_order_relaxed);
    entry.pool.store(pool, std::memory_order_relaxed);
    entry.receiver.store(receiver, std::memory_order_relaxed);
    size_t used = g_used.load(std::memory_order_relaxed);
    while (used < i + 1 && !g_used.compare_exchange_weak(used, i + 1, std::memory_order_release)) {
    }
    entry.state.store(kLive, std::memory_order_release);
    g_next_hint.store(i + 1, std::memory_order_relaxed);
    return static_cast<int>(i);
  }
  return -1;
}

bool Unregister(int ticket) {
  if (ticket < 0 || static_cast<size_t>(ticket) >= kCapacity) return false;
  Entry& entry = g_table[ticket];
  for (;;) {
    uint32_t state = entry.state.load(std::memory_order_acquire);
    if (state == kCopying) {
      sched_yield();  // a store on another thread is being turned into a copy
      continue;
    }
    if (state != kLive && state != kCopied && state != kCopyFailed) return false;
    if (!entry.state.compare_exchange_strong(state, kClosing, std::memory_order_acq_rel)) continue;
    bool copied = state == kCopied;
    if (copied) {
      CopyOnWriteCounters* pool = entry.pool.load(std::memory_order_relaxed);
      pool->live_bytes.fetch_sub(entry.length.load(std::memory_order_relaxed), std::memory_order_relaxed);
      pool->live_chunks.fetch_sub(1, std::memory_order_relaxed);
    }
    entry.state.store(kFree, std::memory_order_release);
    g_next_hint.store(static_cast<size_t>(ticket), std::memory_order_relaxed);
    return copied;
  }
}

}  // namespace write_fault
}  // namespace tcpzc
