#pragma once

// Copy-on-write for mapped chunks. The kernel refuses writable TCP mappings, so a store into
// a mapped Buffer faults (SIGSEGV). A process-wide handler turns such a fault, and only
// such a fault, into a private writable copy of that chunk put in place atomically
// (anonymous copy, then mremap over the range); the store then completes. Every other
// fault goes to the handler that was installed before, with its own flags.
//
// The handler reads a fixed-size table of live ranges with atomics only: no locks, no
// allocation, no N-API, safe on any thread (main, workers, libuv's threadpool).

#include <atomic>
#include <cstddef>
#include <cstdint>

namespace tcpzc {

// Counted by the handler, read on the JS thread.
struct CopyOnWriteCounters {
  std::atomic<uint64_t> chunks{0};       // chunks turned into private copies, ever
  std::atomic<uint64_t> live_bytes{0};   // bytes of those chunks not yet released
  std::atomic<uint64_t> live_chunks{0};  // those chunks not yet released
};

namespace write_fault {

// Installs the handler once per process. False if sigaction() failed (writes then crash
// as before).
bool Install();

// Starts copy-on-write for [address, address + length): a live chunk's whole range.
// `pool` and `receiver` must stay valid until Unregister(). Returns a ticket, or -1 when
// the table is full (the chunk then stays read-only: a write crashes as without this).
int Register(uint8_t* address, size_t length, CopyOnWriteCounters* pool, CopyOnWriteCounters* receiver);

// Ends it before the range is released. Waits for a copy in progress on another thread.
// True when the range was copied: it no longer is a TCP mapping.
bool Unregister(int ticket);

// Slots of the table, for tests and the README.
constexpr size_t kCapacity = 1u << 16;

}  // namespace write_fault
}  // namespace tcpzc
