#include "receiver.h"

#include <fcntl.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <climits>
#include <cstring>

#include "addon.h"
#include "chunk_tag.h"
#include "direct_buffer.h"
#include "errors.h"
#include "kernel.h"
#include "probe.h"
#include "socket_io.h"

namespace tcpzc {

// libuv handles outlive the Receiver when it is collected mid-close, so they live apart
// and free themselves once both are closed.
struct UvHandles {
  uv_poll_t poll;
  uv_timer_t timer;
  int fd = -1;
  int open_handles = 2;
  bool closing = false;
  Receiver* owner = nullptr;
  napi_async_cleanup_hook_handle cleanup_hook = nullptr;
};

void CloseHandles(UvHandles* handles);

namespace {

constexpr size_t kMinChunkSize = kPageSize;
constexpr size_t kMaxChunkSize = 64u << 20;
// When this many wake-ups in a row map nothing, the stream is not mappable (plain sender,
// NIC without header split): copy for a while instead of asking the kernel each time.
constexpr unsigned kZeroMapStreakLimit = 8;
constexpr unsigned kCopyOnlyCycles = 256;

void OnHandleClosed(uv_handle_t* handle) {
  auto* handles = static_cast<UvHandles*>(handle->data);
  if (--handles->open_handles > 0) return;
  close(handles->fd);
  if (handles->cleanup_hook != nullptr) napi_remove_async_cleanup_hook(handles->cleanup_hook);
  delete handles;
}

// Environment teardown (process exit, worker termination): close on the env's own loop.
void OnEnvCleanup(napi_async_cleanup_hook_handle, void* arg) { CloseHandles(static_cast<UvHandles*>(arg)); }

double ToDouble(size_t value) { return static_cast<double>(value); }

}  // namespace

void CloseHandles(UvHandles* handles) {
  if (handles->closing) return;
  handles->closing = true;
  if (handles->owner != nullptr) {
    handles->owner->handles_ = nullptr;
    handles->owner = nullptr;
  }
  uv_close(reinterpret_cast<uv_handle_t*>(&handles->poll), OnHandleClosed);
  uv_close(reinterpret_cast<uv_handle_t*>(&handles->timer), OnHandleClosed);
}

struct ReceiverCallbacks {
  static void OnPoll(uv_poll_t* handle, int status, int /*events*/) {
    auto* handles = static_cast<UvHandles*>(handle->data);
    if (handles->owner != nullptr) handles->owner->OnReadable(status);
  }
  static void OnTimer(uv_timer_t* handle) {
    auto* handles = static_cast<UvHandles*>(handle->data);
    if (handles->owner != nullptr) handles->owner->OnTimer();
  }
};

Napi::Function Receiver::Init(Napi::Env env) {
  return DefineClass(env, "Receiver",
                     {
                         InstanceMethod<&Receiver::Start>("start"),
                         InstanceMethod<&Receiver::Stop>("stop"),
                         InstanceMethod<&Receiver::Close>("close"),
                         InstanceMethod<&Receiver::Drain>("drain"),
                         InstanceMethod<&Receiver::GetStats>("stats"),
                         InstanceMethod<&Receiver::SetCopying>("setCopying"),
                     });
}

// new Receiver(fd, { chunkSize, mode, poolFull, flushDelayMs }, onEvent)
Receiver::Receiver(const Napi::CallbackInfo& info) : Napi::ObjectWrap<Receiver>(info) {
  Napi::Env env = info.Env();
  if (info.Length() < 3 || !info[0].IsNumber() || !info[1].IsObject() || !info[2].IsFunction()) {
    throw Napi::TypeError::New(env, "Receiver(fd, options, onEvent): bad arguments");
  }
  double fd_number = info[0].As<Napi::Number>().DoubleValue();
  if (!(fd_number >= 0 && fd_number <= INT_MAX) || fd_number != static_cast<int>(fd_number)) {
    throw Napi::RangeError::New(env, "fd must be a non-negative integer");
  }
  int fd = static_cast<int>(fd_number);
  Napi::Object options = info[1].As<Napi::Object>();
  auto number_option = [&](const char* name, double min, double max) {
    Napi::Value value = options.Get(name);
    double number = value.IsNumber() ? value.As<Napi::Number>().DoubleValue() : -1;
    if (!(number >= min && number <= max) || number != static_cast<double>(static_cast<int64_t>(number))) {
      throw Napi::RangeError::New(env, std::string(name) + " is out of range");
    }
    return number;
  };
  chunk_size_ = static_cast<size_t>(number_option("chunkSize", kMinChunkSize, kMaxChunkSize));
  map_size_ = chunk_size_ & ~(kPageSize - 1);
  mode_ = static_cast<Mode>(number_option("mode", 0, 2));
  pool_full_policy_ = static_cast<PoolFull>(number_option("poolFull", 0, 1));
  flush_delay_ms_ = static_cast<uint64_t>(number_option("flushDelayMs", 0, 3600000));

  // The fd must be a connected TCP stream socket: checked here so that a wrong fd gives
  // a clear error, not a stream of EINVAL/ENOTSOCK later.
  struct stat st;
  if (fstat(fd, &st) != 0) throw ErrnoError(env, errno, "fstat");
  if (!S_ISSOCK(st.st_mode)) throw ErrnoError(env, ENOTSOCK, "attach");
  int type = 0;
  int protocol = 0;
  socklen_t len = sizeof(type);
  if (getsockopt(fd, SOL_SOCKET, SO_TYPE, &type, &len) != 0) throw ErrnoError(env, errno, "getsockopt");
  len = sizeof(protocol);
  if (getsockopt(fd, SOL_SOCKET, SO_PROTOCOL, &protocol, &len) != 0) throw ErrnoError(env, errno, "getsockopt");
  if (type != SOCK_STREAM || protocol != IPPROTO_TCP) throw ErrnoError(env, EPROTOTYPE, "attach");
  struct sockaddr_storage peer;
  socklen_t peer_len = sizeof(peer);
  if (getpeername(fd, reinterpret_cast<sockaddr*>(&peer), &peer_len) != 0) {
    throw ErrnoError(env, errno, "getpeername");
  }

  Addon* addon = env.GetInstanceData<Addon>();
  if (addon == nullptr) throw Napi::Error::New(env, "tcp-zerocopy: addon not initialized in this environment");
  const KernelFeatures& features = ProbeKernel();
  external_buffers_ = addon->external_buffers_allowed();
  zerocopy_ = mode_ != Mode::kCopy && features.supported && external_buffers_;
  if (mode_ != Mode::kCopy && !zerocopy_) {
    fallback_reason_ = !features.supported ? features.reason : "external buffers refused by the runtime";
    if (mode_ == Mode::kZerocopy) throw Napi::Error::New(env, "zero-copy receive unavailable: " + fallback_reason_);
  }
  pool_ = addon->pool();
  move_watch_ = addon->move_watch();
  direct_buffers_ = addon->direct_buffers();

  // The callback lives on the wrapper; on_event_ only finds it again without a property
  // lookup by name on every wake-up.
  napi_property_descriptor on_event = {"onEvent", nullptr, nullptr, nullptr, nullptr, info[2], napi_default, nullptr};
  if (napi_define_properties(env, info.This(), 1, &on_event) != napi_ok) throw Napi::Error::New(env);
  on_event_ = Napi::Weak(info[2].As<Napi::Function>());
  async_context_ = std::make_unique<Napi::AsyncContext>(env, "TcpZeroCopyReceiver");
  uv_loop_t* loop = nullptr;
  if (napi_get_uv_event_loop(env, &loop) != napi_ok || loop == nullptr) {
    throw Napi::Error::New(env, "no libuv loop for this environment");
  }

  // Our own descriptor: libuv allows one watcher per fd per loop, and Node's TCP handle
  // watches the original whenever a write has to wait. Nothing below may throw once the
  // handles exist (they point back at this object), unless they are closed first.
  int dup_fd = fcntl(fd, F_DUPFD_CLOEXEC, 0);
  if (dup_fd < 0) throw ErrnoError(env, errno, "dup");
  auto* handles = new UvHandles;
  handles->fd = dup_fd;
  int rc = uv_poll_init_socket(loop, &handles->poll, dup_fd);
  if (rc != 0) {
    close(dup_fd);
    delete handles;
    throw ErrnoError(env, -rc, "uv_poll_init");
  }
  uv_timer_init(loop, &handles->timer);
  uv_unref(reinterpret_cast<uv_handle_t*>(&handles->timer));
  handles->poll.data = handles;
  handles->timer.data = handles;
  handles->owner = this;
  handles_ = handles;
  // Without the hook an environment stopping with the handles open would abort the
  // process ("uv_loop_close() while having open handles"): no hook, no receiver.
  if (napi_add_async_cleanup_hook(env, OnEnvCleanup, handles, &handles->cleanup_hook) != napi_ok) {
    handles->cleanup_hook = nullptr;
    CloseHandles(handles);  // detaches this object first
    throw Napi::Error::New(env, "tcp-zerocopy: napi_add_async_cleanup_hook failed");
  }
  // Batch wake-ups to a chunk while data flows; the flush timer lowers it when it stalls.
  SetLowWater(flush_delay_ms_ > 0 ? static_cast<int>(chunk_size_) : 1);
  copy_blocks_ = addon->copy_blocks();
}

Receiver::~Receiver() {
  // The wrapper is being collected (or the environment torn down): its reference is gone.
  held_ = false;
  Shutdown();
  if (last_large_copy_ != nullptr) napi_delete_reference(Env(), last_large_copy_);
}

void Receiver::Shutdown() {
  ended_ = true;
  wants_data_ = false;
  draining_ = false;
  polling_ = false;
  if (waiting_for_pool_) {
    pool_->CancelWait(this);
    waiting_for_pool_ = false;
  }
  UpdateHold();
  if (handles_ != nullptr) CloseHandles(handles_);
}

// While JS waits for data (a read or the read-ahead), the wrapper, and through its
// callback the JS receiver, must survive even if the caller keeps no reference.
void Receiver::UpdateHold() {
  bool hold = wants_data_ && !ended_;
  if (hold && !held_) Ref();
  if (!hold && held_) Unref();
  held_ = hold;
}

Napi::Value Receiver::Start(const Napi::CallbackInfo& info) {
  wants_data_ = true;
  UpdateHold();
  if (!ended_ && !waiting_for_pool_ && !draining_) {
    int rc = StartPolling();
    if (rc != 0) throw ErrnoError(info.Env(), -rc, "uv_poll_start");
  }
  return info.Env().Undefined();
}

Napi::Value Receiver::Stop(const Napi::CallbackInfo& info) {
  if (!draining_) {
    wants_data_ = false;
    UpdateHold();
    StopPolling();
  }
  return info.Env().Undefined();
}

Napi::Value Receiver::Close(const Napi::CallbackInfo& info) {
  Shutdown();
  return info.Env().Undefined();
}

// drain(): Node closed the socket (destroy(), or a failed write). Our dup keeps the
// kernel socket open, so no end of stream will come: deliver what is queued now, then end.
Napi::Value Receiver::Drain(const Napi::CallbackInfo& info) {
  if (ended_ || handles_ == nullptr || draining_) return info.Env().Undefined();
  draining_ = true;
  // Only what is queued now: the peer does not know the socket is gone (our dup keeps it
  // open) and may go on sending for ever.
  drain_budget_ = QueuedBytes(handles_->fd);
  wants_data_ = true;
  UpdateHold();
  StopPolling();
  if (waiting_for_pool_) {
    pool_->CancelWait(this);
    waiting_for_pool_ = false;
  }
  // The drain runs on the timer, which must now keep the loop alive (libuv >= 1.48 runs a
  // timer re-armed from its own callback on the next turn of the loop).
  uv_ref(reinterpret_cast<uv_handle_t*>(&handles_->timer));
  uv_timer_start(&handles_->timer, ReceiverCallbacks::OnTimer, 0, 0);
  return info.Env().Undefined();
}

int Receiver::StartPolling() {
  if (polling_ || handles_ == nullptr) return 0;
  int rc = uv_poll_start(&handles_->poll, UV_READABLE, ReceiverCallbacks::OnPoll);
  if (rc != 0) return rc;
  polling_ = true;
  ArmFlushTimer();
  return 0;
}

void Receiver::StopPolling() {
  if (!polling_) return;
  polling_ = false;
  if (handles_ != nullptr) {
    uv_poll_stop(&handles_->poll);
    uv_timer_stop(&handles_->timer);
  }
}

void Receiver::OnPoolSpace() {
  waiting_for_pool_ = false;
  // Only fails for a closed handle, which ended_ already excludes.
  if (wants_data_ && !ended_) StartPolling();
}

void Receiver::SetLowWater(int bytes) {
  if (handles_ == nullptr) return;
  // The kernel caps the value at half the receive buffer limit; failures only cost
  // batching. The value in force is read back: it, not chunkSize, is what a wake-up can
  // bring, so it decides when the mark goes up again after a stall.
  setsockopt(handles_->fd, SOL_SOCKET, SO_RCVLOWAT, &bytes, sizeof(bytes));
  low_water_is_one_ = bytes == 1;
  bytes_at_low_water_one_ = 0;
  if (!low_water_is_one_) {
    int in_force = 0;
    socklen_t len = sizeof(in_force);
    if (getsockopt(handles_->fd, SOL_SOCKET, SO_RCVLOWAT, &in_force, &len) == 0 && in_force > 0) {
      high_low_water_ = static_cast<size_t>(in_force);
    }
  }
}

void Receiver::ArmFlushTimer() {
  if (handles_ == nullptr || flush_delay_ms_ == 0 || low_water_is_one_) return;
  uv_timer_start(&handles_->timer, ReceiverCallbacks::OnTimer, flush_delay_ms_, 0);
}

void Receiver::OnTimer() {
  if (draining_) {
    RunDrain();
  } else {
    // No chunk's worth arrived in time: wake up for any byte until data flows again.
    SetLowWater(1);
  }
}

void Receiver::RunDrain() {
  // Bounded per turn of the loop; the timer comes back for the rest.
  for (int cycles = 0; cycles < 16; cycles++) {
    if (ended_ || handles_ == nullptr) return;
    if (!RunCycle(0)) return;
  }
  if (!ended_ && handles_ != nullptr) uv_timer_start(&handles_->timer, ReceiverCallbacks::OnTimer, 0, 0);
}

void Receiver::OnReadable(int status) { RunCycle(status); }

int Receiver::SocketFd() const { return handles_->fd; }

// One wake-up: receive, then deliver. Returns false when nothing could be done (the
// environment is stopping).
bool Receiver::RunCycle(int status) {
  napi_env env = Env();
  napi_handle_scope scope;
  if (napi_open_handle_scope(env, &scope) != napi_ok) return false;
  // The wrapper and its callback first: after Shutdown() (a final batch) the wrapper is
  // only weakly held, and the allocations that follow could let a collection take it.
  // napi_unwrap is also the check that JS may still run: between a worker's terminate()
  // and its cleanup hooks the loop still runs but Node refuses calls that may run JS, so
  // leave the socket alone then (the cleanup hook closes everything).
  napi_value receiver = nullptr;
  napi_value callback = nullptr;
  void* unwrapped = nullptr;
  if (napi_get_reference_value(env, Napi::Reference<Napi::Object>::operator napi_ref(), &receiver) != napi_ok ||
      receiver == nullptr || napi_unwrap(env, receiver, &unwrapped) != napi_ok || unwrapped != this ||
      napi_get_reference_value(env, on_event_, &callback) != napi_ok || callback == nullptr) {
    napi_value ignored;
    napi_get_and_clear_last_exception(env, &ignored);
    napi_close_handle_scope(env, scope);
    return false;
  }
  Batch batch;
  stats_.wakeups++;
  // libuv turns POLLERR into UV_EBADF and stops the watcher. The fd is our own dup, so
  // this only means the socket has an error pending: read on (data first, then the
  // error) and watch again afterwards.
  bool pollerr = status == UV_EBADF;
  copy_cause_ = draining_ ? kDraining : mode_ == Mode::kCopy ? kCopyMode : kFallback;
  if (status < 0 && !pollerr) {
    batch.error = -status;
    batch.syscall = "poll";
  } else if (draining_) {
    DrainCycle(&batch);
  } else if (zerocopy_ && !copying_by_choice_) {
    ZerocopyCycle(&batch);
  } else {
    CopyCycle(&batch);
  }

  // Newer than the chunks just made, so finalized before them (see MoveWatch).
  if (move_watch_ != nullptr) move_watch_->RenewSentinel();

  if (batch.eof && pending_error_ != 0) {
    // A reset seen while data was still queued is reported once that data is delivered.
    batch.eof = false;
    batch.error = pending_error_;
  }
  if (batch.abandoned) {
    // A Buffer could not be made. If JS still runs, that was no teardown but a failed
    // allocation (out of memory): end the stream with the chunks made so far and ENOMEM,
    // rather than leave the exception pending and every later wake-up refused.
    napi_value ignored;
    napi_get_and_clear_last_exception(env, &ignored);
    void* still_wrapped = nullptr;
    if (napi_unwrap(env, receiver, &still_wrapped) == napi_ok) {
      batch.abandoned = false;
      batch.eof = false;
      batch.error = ENOMEM;
      batch.syscall = "napi_create_buffer";
    }
  }
  if (!batch.Empty() && !batch.abandoned) {
    if (flush_delay_ms_ > 0 && !draining_) {
      if (low_water_is_one_) {
        // Data flows again once a wake-up brings half of what the high mark would wait
        // for, or a high mark's worth arrived in small wake-ups (a receiver that keeps
        // up sees only small ones, and the kernel's cap can keep even the first from
        // reaching half a large chunk).
        size_t high = std::min(chunk_size_, high_low_water_);
        bytes_at_low_water_one_ += batch.bytes;
        if (batch.bytes >= high / 2 || bytes_at_low_water_one_ >= high) SetLowWater(static_cast<int>(chunk_size_));
      }
      ArmFlushTimer();
    }
    Deliver(&batch, receiver, callback);
  }
  if (pollerr && polling_ && handles_ != nullptr) {
    uv_poll_start(&handles_->poll, UV_READABLE, ReceiverCallbacks::OnPoll);
  }
  napi_close_handle_scope(env, scope);
  return !batch.abandoned;
}

// Everything on the libuv-callback path uses the plain C API and checks its status:
// node-addon-api aborts the process when a call fails while a worker is terminating.
void Receiver::Deliver(Batch* batch, napi_value receiver, napi_value callback) {
  napi_env env = Env();
  bool final = batch->eof || batch->error != 0;
  if (final) Shutdown();

  napi_value argv[5];
  uint32_t mapped_mask = 0;
  napi_value undefined;
  if (napi_get_undefined(env, &undefined) != napi_ok) return;
  for (int i = 0; i < 2; i++) {
    argv[i] = i < batch->count ? batch->chunks[i] : undefined;
    if (i < batch->count && batch->mapped[i]) mapped_mask |= 1u << i;
  }
  if (napi_create_uint32(env, mapped_mask, &argv[2]) != napi_ok) return;
  argv[3] = batch->error != 0 ? CreateErrnoError(env, batch->error, batch->syscall) : nullptr;
  if (argv[3] == nullptr && napi_get_null(env, &argv[3]) != napi_ok) return;
  if (napi_get_boolean(env, batch->eof, &argv[4]) != napi_ok) return;
  napi_value result;
  napi_status status = napi_make_callback(env, *async_context_, receiver, callback, 5, argv, &result);
  if (status == napi_pending_exception) {
    napi_value exception;
    napi_get_and_clear_last_exception(env, &exception);
    // Nothing on the stack can catch it: report it as Node does for any callback (if
    // this environment still runs JS at all).
    void* unwrapped = nullptr;
    if (napi_unwrap(env, receiver, &unwrapped) == napi_ok) napi_fatal_exception(env, exception);
  }
}

namespace {

// A direct Buffer's memory is no longer held anywhere (any thread, see direct_buffer.h).
void FreeDirectChunk(void*, size_t, void* hint) {
  auto* chunk = static_cast<MappedChunk*>(hint);
  // Kept to the end: if this was the last chunk of a pool whose environment is gone, the
  // pool unmaps here, once its lock is no longer held.
  std::shared_ptr<MappingPool> pool = chunk->pool;
  pool->ReleaseFromAnyThread(chunk);
  delete chunk;
}

}  // namespace

// A direct Buffer over [data, data + length) in this environment's context.
direct_buffer::Made Receiver::MakeDirectBuffer(void* data, size_t length, direct_buffer::Deleter deleter, void* hint,
                                               napi_value* buffer) {
  napi_value global = nullptr;
  if (napi_get_global(Env(), &global) != napi_ok) return direct_buffer::Made::kNo;
  return direct_buffer::Make(global, data, length, deleter, hint, buffer);
}

void Receiver::AddMapped(Batch* batch, MappedChunk* chunk) {
  napi_env env = Env();
  napi_value buffer = nullptr;
  if (direct_buffers_) {
    chunk->direct = true;
    switch (MakeDirectBuffer(chunk->address, chunk->length, FreeDirectChunk, chunk, &buffer)) {
      case direct_buffer::Made::kYes: AddMappedBuffer(batch, buffer, chunk->length); return;
      case direct_buffer::Made::kArrayBufferOnly:
        batch->abandoned = true;  // the environment is stopping; the chunk is V8's now
        return;
      case direct_buffer::Made::kNo:
        // No context to make it in: not while JS can run (RunCycle checked). Still ours.
        pool_->Release(chunk);
        delete chunk;
        batch->abandoned = true;
        return;
    }
  }
  napi_status status = napi_create_external_buffer(
      env, chunk->length, chunk->address,
      [](napi_env env, void*, void* hint) {
        auto* mapped = static_cast<MappedChunk*>(hint);
        // Moved to another ArrayBuffer, perhaps another thread's (see MoveWatch): left
        // mapped for good, with its pool; releasing it could crash that thread.
        if (mapped->moved) return;
        ForgetWatch(env, mapped);
        // Collected without release(): give the pages back now.
        mapped->pool->Release(mapped);
        delete mapped;
      },
      chunk, &buffer);
  if (status == napi_ok) {
    if (move_watch_ != nullptr) move_watch_->Watch(buffer, chunk);
    AddMappedBuffer(batch, buffer, chunk->length);
    return;
  }
  if (status == napi_pending_exception || status == napi_cannot_run_js) {
    // The environment is stopping, refused at the entry check, before any finalizer
    // existed: the chunk is still ours (a worker stopped mid-receive leaked it, with its
    // pool, before this).
    pool_->Release(chunk);
    delete chunk;
    batch->abandoned = true;
    return;
  }
  if (status != napi_no_external_buffers_allowed) {
    // The environment is going away. Do not touch the chunk: Node 20 creates the
    // finalizer (whose hint is the chunk) before the later steps that can fail during
    // teardown, so Node may already own it and will free it itself. Freeing it here too
    // would free it twice. If Node did not take it, it leaks (with its pool's mappings)
    // until the process ends: rare, and only in an environment that is being torn down.
    batch->abandoned = true;
    return;
  }
  // The runtime refuses external Buffers (V8 sandbox). It says so before creating any
  // finalizer, so the chunk is certainly still ours: copy it, free it, and stop mapping.
  napi_value copy = nullptr;
  size_t length = chunk->length;
  status = napi_create_buffer_copy(env, length, chunk->address, nullptr, &copy);
  pool_->Release(chunk);
  delete chunk;
  if (status != napi_ok || !TagChunk(env, copy)) {
    batch->abandoned = true;  // the environment is going away
    return;
  }
  external_buffers_ = false;
  zerocopy_ = false;
  fallback_reason_ = "external buffers refused by the runtime";
  copy_cause_ = kFallback;
  AddCopied(batch, copy, length);
}

// Not type-tagged (a private property per Buffer costs a map transition per chunk):
// releaseChunk() finds a mapped chunk by its address among the pool's live chunks.
void Receiver::AddMappedBuffer(Batch* batch, napi_value buffer, size_t length) {
  batch->Add(buffer, length, true);
  stats_.bytes_mapped += ToDouble(length);
  stats_.chunks_mapped++;
}

void Receiver::AddCopied(Batch* batch, napi_value buffer, size_t length) {
  batch->Add(buffer, length, false);
  stats_.bytes_copied += ToDouble(length);
  stats_.bytes_copied_by_cause[copy_cause_] += ToDouble(length);
  stats_.chunks_copied++;
}

void Receiver::SwitchToCopy(const char* syscall, int err) {
  zerocopy_ = false;
  fallback_reason_ = std::string(syscall) + " " + ErrnoName(err);
}

void Receiver::ZerocopyCycle(Batch* batch) {
  if (copy_only_cycles_ > 0) {
    copy_only_cycles_--;
    copy_cause_ = kShortRun;  // the stream was found unmappable
    CopyCycle(batch);
    return;
  }
  const KernelFeatures& features = ProbeKernel();
  MappingPool::Slot slot;
  int err = pool_->Reserve(map_size_, &slot);
  if (err != 0) {
    if (mode_ == Mode::kZerocopy) {
      batch->error = err;
      batch->syscall = "mmap";
      return;
    }
    SwitchToCopy("mmap", err);
    CopyCycle(batch);
    return;
  }
  if (slot.length == 0) {
    // Every pinned byte the cap allows is still held by JS. Waiting only makes sense if
    // a release can come; a drain must finish now.
    if (pool_full_policy_ == PoolFull::kWait && !draining_) {
      MappingPool::WaitResult wait = pool_->WaitForRoom(this, slot);
      if (wait == MappingPool::WaitResult::kWaiting) {
        stats_.pool_waits++;
        waiting_for_pool_ = true;
        StopPolling();
        return;
      }
      // Room was made on another thread just now: the socket is still readable, so the
      // next turn of the loop tries again.
      if (wait == MappingPool::WaitResult::kRoomNow) return;
    }
    double before = stats_.bytes_copied;
    copy_cause_ = kPoolFull;
    CopyCycle(batch);
    stats_.bytes_copied_pool_full += stats_.bytes_copied - before;
    pool_->CountCopiedPoolFull(stats_.bytes_copied - before);
    return;
  }

  ZerocopyReceive zc;
  std::memset(&zc, 0, sizeof(zc));
  zc.address = reinterpret_cast<uintptr_t>(slot.address);
  zc.length = static_cast<uint32_t>(slot.length);
  if (features.tlb_clean_hint) {
    zc.flags = kTlbCleanHint;  // pool slots never hold pages
    // No copybuf, although it would save a recv() for short runs: the kernel copies its
    // leftovers without looking for an urgent mark (tcp_copy_straggler_data), so an OOB
    // byte lands in the stream (seen here in 1 of 6 runs of the urgent-data test); and
    // when the slot fills first it copies mappable bytes and misaligns the stream.
    // recv() steps over the mark as Node would.
  }
  socklen_t optlen = features.struct_size;
  stats_.zerocopy_calls++;
  int rc = getsockopt(handles_->fd, IPPROTO_TCP, kTcpZerocopyReceive, &zc, &optlen);
  if (rc != 0) {
    err = errno;
    pool_->Commit(slot, 0, nullptr);
    if (err == EIO) {
      // FIN received and nothing queued, as the kernel counts it: but it counts only up
      // to a pending urgent mark, so bytes may still follow the urgent byte. recv() steps
      // over it and tells data from the real end.
      copy_cause_ = kUrgent;
      CopyCycle(batch);
    } else if (mode_ == Mode::kZerocopy) {
      batch->error = err;
      batch->syscall = "getsockopt";
    } else {
      SwitchToCopy("getsockopt(TCP_ZEROCOPY_RECEIVE)", err);
      CopyCycle(batch);
    }
    return;
  }

  // Trust nothing the kernel wrote beyond what we asked for.
  size_t mapped = std::min<size_t>(zc.length, slot.length) & ~(kPageSize - 1);
  MappedChunk* chunk = pool_->Commit(slot, mapped, copy_on_write_);
  if (features.inq_and_err && zc.err < 0 && pending_error_ == 0) pending_error_ = -zc.err;
  // Exactly the unmappable run, so the stream lines up with pages again after it. When
  // the slot filled up, the hint is only the rest of the current packet, which may well
  // be mappable: leave it queued for the next call (copying it cost up to 3% of the
  // mapped share at 64 KiB chunks).
  size_t to_recv = mapped < slot.length ? std::min<size_t>(zc.recv_skip_hint, chunk_size_) : 0;
  if (chunk != nullptr) AddMapped(batch, chunk);

  if (mapped == 0) {
    if (++zero_map_streak_ >= kZeroMapStreakLimit) {
      zero_map_streak_ = 0;
      copy_only_cycles_ = kCopyOnlyCycles;
    }
  } else {
    zero_map_streak_ = 0;
  }

  if (mapped == 0 && to_recv == 0) {
    // Nothing mappable or skippable: the urgent mark (recv steps over it), a stream
    // drained after a reset or FIN, or a spurious wake-up. recv() tells which.
    copy_cause_ = kUrgent;
    CopyCycle(batch);
    return;
  }
  // Bytes the kernel could not map come next: the rest of the unmappable run
  // (recv_skip_hint).
  copy_cause_ = kShortRun;
  if (to_recv > 0) ReadCopied(batch, to_recv);
}

// setCopying(bool): auto mode's choice (src/auto-path.ts), from the next wake-up on.
// Only 'auto' takes it: 'zerocopy' maps whatever it can, always, and 'copy' never maps.
Napi::Value Receiver::SetCopying(const Napi::CallbackInfo& info) {
  bool applied = mode_ == Mode::kAuto && info.Length() > 0 && info[0].IsBoolean();
  if (applied) copying_by_choice_ = info[0].As<Napi::Boolean>().Value();
  return Napi::Boolean::New(info.Env(), applied);
}

Napi::Value Receiver::GetStats(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  Napi::Object stats = Napi::Object::New(env);
  stats.Set("bytesMapped", stats_.bytes_mapped);
  stats.Set("bytesCopied", stats_.bytes_copied);
  stats.Set("bytesCopiedPoolFull", stats_.bytes_copied_pool_full);
  stats.Set("chunksMapped", stats_.chunks_mapped);
  stats.Set("chunksCopied", stats_.chunks_copied);
  stats.Set("chunksInReusedMemory", stats_.chunks_in_reused_memory);
  stats.Set("wakeups", stats_.wakeups);
  stats.Set("zerocopyCalls", stats_.zerocopy_calls);
  stats.Set("recvCalls", stats_.recv_calls);
  stats.Set("poolWaits", stats_.pool_waits);
  stats.Set("bytesCopiedShortRuns", stats_.bytes_copied_by_cause[kShortRun]);
  stats.Set("bytesCopiedUrgent", stats_.bytes_copied_by_cause[kUrgent]);
  stats.Set("bytesCopiedFallback", stats_.bytes_copied_by_cause[kFallback]);
  stats.Set("bytesCopiedCopyMode", stats_.bytes_copied_by_cause[kCopyMode]);
  stats.Set("bytesCopiedDraining", stats_.bytes_copied_by_cause[kDraining]);
  stats.Set("chunksCopiedOnWrite", static_cast<double>(copy_on_write_->chunks.load(std::memory_order_relaxed)));
  stats.Set("zerocopy", zerocopy_ && !copying_by_choice_);
  stats.Set("fallbackReason", fallback_reason_.empty() ? env.Null() : Napi::String::New(env, fallback_reason_));
  return stats;
}

}  // namespace tcpzc
