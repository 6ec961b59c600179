#pragma once

#include <napi.h>
#include <uv.h>

#include <cstddef>
#include <cstdint>
#include <memory>
#include <string>

#include "copy_blocks.h"
#include "direct_buffer.h"
#include "move_watch.h"
#include "pool.h"

namespace tcpzc {

struct UvHandles;

// Receives from one TCP socket: waits for readability with libuv on the environment's own
// loop (on a dup of the socket's fd), then maps what the kernel can map and copies the rest.
// Each wake-up produces at most one mapped and one copied chunk, delivered in stream order
// by one call of the JS callback: onEvent(first, second, mappedMask, error, eof).
class Receiver : public Napi::ObjectWrap<Receiver>, private PoolWaiter {
 public:
  enum class Mode { kCopy = 0, kAuto = 1, kZerocopy = 2 };
  enum class PoolFull { kCopy = 0, kWait = 1 };

  static Napi::Function Init(Napi::Env env);
  explicit Receiver(const Napi::CallbackInfo& info);
  ~Receiver() override;

 private:
  friend void CloseHandles(UvHandles* handles);
  friend struct ReceiverCallbacks;

  // What one wake-up produced, in stream order.
  struct Batch {
    napi_value chunks[2];
    bool mapped[2];
    int count = 0;
    int error = 0;  // errno to report after the chunks
    const char* syscall = "read";
    bool eof = false;
    bool abandoned = false;  // JS objects could not be made: environment teardown
    size_t bytes = 0;
    bool Empty() const { return count == 0 && error == 0 && !eof; }
    void Add(napi_value buffer, size_t length, bool is_mapped) {
      chunks[count] = buffer;
      mapped[count] = is_mapped;
      count++;
      bytes += length;
    }
  };

  Napi::Value Start(const Napi::CallbackInfo& info);
  Napi::Value Stop(const Napi::CallbackInfo& info);
  Napi::Value Close(const Napi::CallbackInfo& info);
  Napi::Value Drain(const Napi::CallbackInfo& info);
  Napi::Value GetStats(const Napi::CallbackInfo& info);
  Napi::Value SetCopying(const Napi::CallbackInfo& info);

  void OnReadable(int status);
  void OnTimer();
  void RunDrain();
  bool RunCycle(int status);
  void UpdateHold();
  void OnPoolSpace() override;
  int StartPolling();
  void StopPolling();
  void Shutdown();
  void ZerocopyCycle(Batch* batch);
  void CopyCycle(Batch* batch);
  void DrainCycle(Batch* batch);
  int SocketFd() const;  // the dup'd socket the steps read; only while handles_ is set
  void ReadCopied(Batch* batch, size_t recv_len);
  void ReadCopiedIntoOwnBuffer(Batch* batch, size_t recv_len);
  bool ReadCopiedIntoBlock(Batch* batch, size_t recv_len);
  bool AddBlockAsDirectBuffer(Batch* batch, CopyBlock* block, size_t length);
  direct_buffer::Made MakeDirectBuffer(void* data, size_t length, direct_buffer::Deleter deleter, void* hint,
                                       napi_value* buffer);
  bool ConsumerHoldsCopies();
  void RememberLargeCopy(napi_value buffer);
  void AddCopiedFrom(Batch* batch, const uint8_t* data, size_t length);
  void AddMapped(Batch* batch, MappedChunk* chunk);
  void AddMappedBuffer(Batch* batch, napi_value buffer, size_t length);
  void AddCopied(Batch* batch, napi_value buffer, size_t length);
  void SwitchToCopy(const char* syscall, int err);
  void SetLowWater(int bytes);
  void ArmFlushTimer();
  void Deliver(Batch* batch, napi_value receiver, napi_value callback);

  std::unique_ptr<Napi::AsyncContext> async_context_;
  // Weak: the wrapper's onEvent property holds the callback; a strong reference here
  // would root the JS receiver (and its socket) through the callback's closure for ever.
  Napi::FunctionReference on_event_;
  std::shared_ptr<MappingPool> pool_;
  std::shared_ptr<CopyBlocks> copy_blocks_;  // null: no reuse in this environment
  std::shared_ptr<MoveWatch> move_watch_;    // null: chunks' memory cannot be moved out
  // The last large copied chunk's Buffer (weak), to see whether the consumer still holds
  // it when the next one is read; and how many more reads go into blocks since it did.
  napi_ref last_large_copy_ = nullptr;
  unsigned block_reads_left_ = 0;
  UvHandles* handles_ = nullptr;  // null once closing

  Mode mode_;
  PoolFull pool_full_policy_;
  bool zerocopy_;                   // current path; 'auto' may turn it off for good
  bool copying_by_choice_ = false;  // 'auto' measured copying as cheaper (setCopying)
  bool external_buffers_;           // false where the runtime refuses external Buffers
  bool direct_buffers_;             // mapped chunks and blocks as direct Buffers (direct_buffer.h)
  size_t chunk_size_;
  size_t map_size_;  // chunk_size_ rounded down to pages
  uint64_t flush_delay_ms_;
  bool low_water_is_one_ = false;
  size_t high_low_water_ = SIZE_MAX;   // SO_RCVLOWAT in force when raised (kernel-capped)
  size_t bytes_at_low_water_one_ = 0;  // delivered since the mark dropped to 1
  bool wants_data_ = false;            // JS asked for data (start) and has not said stop
  bool held_ = false;                  // wrapper referenced strongly: JS waits for our callback
  bool draining_ = false;              // socket closed by Node: deliver what is queued, then end
  size_t drain_budget_ = 0;            // bytes queued when draining began
  unsigned drain_mark_steps_ = 0;
  bool polling_ = false;
  bool waiting_for_pool_ = false;
  bool ended_ = false;
  int pending_error_ = 0;  // socket error seen while data was still queued
  unsigned zero_map_streak_ = 0;
  unsigned copy_only_cycles_ = 0;

  // Why the bytes copied next could not be mapped; AddCopied counts them under it.
  enum CopyCause { kShortRun, kUrgent, kPoolFull, kFallback, kCopyMode, kDraining, kCopyCauses };
  CopyCause copy_cause_ = kFallback;

  struct Stats {
    double bytes_mapped = 0;
    double bytes_copied = 0;
    double bytes_copied_pool_full = 0;
    double chunks_mapped = 0;
    double chunks_copied = 0;
    double chunks_in_reused_memory = 0;
    double wakeups = 0;
    double zerocopy_calls = 0;
    double recv_calls = 0;
    double pool_waits = 0;
    double bytes_copied_by_cause[kCopyCauses] = {};
  } stats_;
  std::string fallback_reason_;
  // Counted by the write-fault handler on any thread; shared with this receiver's chunks,
  // which may outlive it.
  std::shared_ptr<CopyOnWriteCounters> copy_on_write_ = std::make_shared<CopyOnWriteCounters>();
};

}  // namespace tcpzc
