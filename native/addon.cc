#include "addon.h"

#include <sys/mman.h>

#include <cmath>
#include <cstdlib>
#include <cstring>
#include <string>

#include "chunk_tag.h"
#include "direct_buffer.h"
#include "probe.h"
#include "receiver.h"

namespace tcpzc {
namespace {

constexpr double kDefaultMaxPinnedBytes = 64.0 * 1024 * 1024;
constexpr double kMaxPinnedBytesLimit = 64.0 * 1024 * 1024 * 1024;

// Electron and other V8-sandbox builds refuse Buffers over foreign memory; ask once.
// Only that answer means no: any other failure comes from an environment that is
// stopping (a load inside a terminating worker), where the answer no longer matters.
bool ProbeExternalBuffers(Napi::Env env) {
  static char probe_byte = 0;
  napi_value buffer;
  napi_status status = napi_create_external_buffer(env, 1, &probe_byte, nullptr, nullptr, &buffer);
  return status != napi_no_external_buffers_allowed;
}

// A Uint8Array at byte offset 0: gives its ArrayBuffer, data and length. Plain C API with
// every status checked: in a stopping environment the checks fail and the answer is no.
bool WholeView(napi_env env, napi_value value, napi_value* array_buffer, void** data, size_t* length) {
  napi_typedarray_type type;
  size_t byte_offset = 0;
  if (napi_get_typedarray_info(env, value, &type, length, data, array_buffer, &byte_offset) != napi_ok) {
    return false;
  }
  return type == napi_uint8_array && byte_offset == 0;
}

// ArrayBuffer.prototype.transfer (Node 21+, a flag on 20) moves an external Buffer's memory
// into a plain ArrayBuffer that postMessage can send to another thread, out of reach of
// the finalizer Node runs when this environment stops. Memory reused by copied chunks
// (CopyBlocks) would then be freed or reused under that thread: with transfer() about,
// copied chunks in Node-API Buffers keep memory of their own. Any failure to look counts
// as present.
bool ArrayBufferTransferExists(napi_env env) {
  napi_value global;
  napi_value array_buffer;
  napi_value prototype;
  napi_value transfer;
  napi_valuetype type = napi_undefined;
  return napi_get_global(env, &global) != napi_ok ||
         napi_get_named_property(env, global, "ArrayBuffer", &array_buffer) != napi_ok ||
         napi_get_named_property(env, array_buffer, "prototype", &prototype) != napi_ok ||
         napi_get_named_property(env, prototype, "transfer", &transfer) != napi_ok ||
         napi_typeof(env, transfer, &type) != napi_ok || type != napi_undefined;
}

// Direct Buffers need the Node this addon was compiled for (one V8 ABI), and a runtime
// that allows Buffers over foreign memory at all. TCP_ZEROCOPY_NODE_API_BUFFERS=1 keeps
// Node-API external Buffers (for comparison, and for the tests of that path).
bool DirectBuffersUsable(napi_env env) {
  const char* forced = std::getenv("TCP_ZEROCOPY_NODE_API_BUFFERS");
  if (forced != nullptr && std::strcmp(forced, "1") == 0) return false;
  napi_value global;
  napi_value process;
  napi_value versions;
  napi_value modules;
  char running[16] = {0};
  size_t length = 0;
  if (napi_get_global(env, &global) != napi_ok ||
      napi_get_named_property(env, global, "process", &process) != napi_ok ||
      napi_get_named_property(env, process, "versions", &versions) != napi_ok ||
      napi_get_named_property(env, versions, "modules", &modules) != napi_ok ||
      napi_get_value_string_utf8(env, modules, running, sizeof(running), &length) != napi_ok) {
    napi_value ignored;
    napi_get_and_clear_last_exception(env, &ignored);
    return false;
  }
  return std::to_string(direct_buffer::BuiltForModuleVersion()) == running && direct_buffer::KeepLoaded();
}

// Another thread's release made room: tell the waiting receivers on this environment's
// thread. The context is the pool (weakly: the function may outlive it).
void WakeWaitersOnJsThread(napi_env env, napi_value, void* context, void*) {
  if (env == nullptr) return;  // the function is being torn down
  if (auto pool = static_cast<std::weak_ptr<MappingPool>*>(context)->lock()) pool->NotifyWaiters();
}

void ForgetWakeUp(napi_env, void* data, void*) {
  auto* pool = static_cast<std::weak_ptr<MappingPool>*>(data);
  if (auto live = pool->lock()) live->SetWakeUp(nullptr, nullptr);
  delete pool;
}

void CallWakeUp(void* function) {
  napi_call_threadsafe_function(static_cast<napi_threadsafe_function>(function), nullptr, napi_tsfn_nonblocking);
}

// For direct Buffers, whose memory may be freed on another thread: a thread-safe function
// that does not keep the loop alive. False if it could not be made.
bool SetUpWakeUp(napi_env env, const std::shared_ptr<MappingPool>& pool) {
  napi_value name;
  if (napi_create_string_utf8(env, "tcp-zerocopy pool wake-up", NAPI_AUTO_LENGTH, &name) != napi_ok) return false;
  auto* weak = new std::weak_ptr<MappingPool>(pool);
  napi_threadsafe_function function;
  if (napi_create_threadsafe_function(env, nullptr, nullptr, name, 0, 1, weak, ForgetWakeUp, weak,
                                      WakeWaitersOnJsThread, &function) != napi_ok) {
    delete weak;
    return false;
  }
  napi_unref_threadsafe_function(env, function);
  pool->SetWakeUp(CallWakeUp, function);
  return true;
}

}  // namespace

Addon::Addon(Napi::Env env, Napi::Object exports)
    : pool_(std::make_shared<MappingPool>(static_cast<size_t>(kDefaultMaxPinnedBytes))),
      external_buffers_allowed_(ProbeExternalBuffers(env)) {
  if (external_buffers_allowed_) {
    direct_buffers_ = DirectBuffersUsable(env) && SetUpWakeUp(env, pool_);
    bool transfer_exists = ArrayBufferTransferExists(env);
    // A direct Buffer's memory is freed wherever it was moved to: nothing to watch.
    if (transfer_exists && !direct_buffers_) move_watch_ = std::make_shared<MoveWatch>(env, pool_);
    // Copied chunks in reused memory are direct Buffers where those work, so the memory
    // comes back only once nothing anywhere holds it; as Node-API Buffers it would be
    // freed under a thread it was moved to, so not where transfer() exists.
    if (direct_buffers_ || !transfer_exists) copy_blocks_ = std::make_shared<CopyBlocks>();
  }
  DefineAddon(exports, {
                           InstanceMethod<&Addon::Probe>("probe"),
                           InstanceMethod<&Addon::ReleaseChunk>("releaseChunk"),
                           InstanceMethod<&Addon::DetachBuffer>("detachBuffer"),
                           InstanceMethod<&Addon::PoolStats>("poolStats"),
                           InstanceMethod<&Addon::Configure>("configure"),
                           InstanceMethod<&Addon::BreakPoolForTesting>("_breakPoolForTesting"),
                           InstanceMethod<&Addon::WriteReadOnlyForTesting>("_writeReadOnlyForTesting"),
                           InstanceValue("Receiver", Receiver::Init(env), napi_enumerable),
                       });
}

// The environment is gone. Its idle copy blocks go now: the blocks still out (memory moved
// to another thread) keep the cache alive, and would otherwise keep the idle ones too.
Addon::~Addon() {
  if (copy_blocks_ != nullptr) copy_blocks_->Close();
}

Napi::Value Addon::Probe(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  const KernelFeatures& kernel = ProbeKernel();
  Napi::Object result = Napi::Object::New(env);
  result.Set("kernelSupported", kernel.supported);
  result.Set("reason", kernel.reason.empty() ? env.Null() : Napi::String::New(env, kernel.reason));
  result.Set("kernel", kernel.kernel);
  result.Set("structSize", kernel.struct_size);
  result.Set("inqAndErr", kernel.inq_and_err);
  result.Set("copybuf", kernel.copybuf);
  result.Set("tlbCleanHint", kernel.tlb_clean_hint);
  result.Set("rxTimestamps", kernel.rx_timestamps);
  result.Set("externalBuffers", external_buffers_allowed_);
  result.Set("directBuffers", direct_buffers_);
  return result;
}

// releaseChunk(buffer): drops the pages under a mapped chunk's Buffer and detaches it so
// JS sees length 0 (reading unmapped pages would raise SIGBUS). Returns whether the
// Buffer was a live mapped chunk: its address and length must be those of one of the
// pool's live chunks (no other memory is there: the pool's arenas are its own mappings,
// which JS cannot otherwise reach). Anything else (a Buffer the package did not create,
// a part of one, a copied or already released chunk) is left alone.
Napi::Value Addon::ReleaseChunk(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  if (info.Length() < 1 || !info[0].IsBuffer()) {
    throw Napi::TypeError::New(env, "releaseChunk(buffer): buffer must be a Buffer");
  }
  napi_value array_buffer;
  void* data = nullptr;
  size_t length = 0;
  bool released = false;
  if (WholeView(env, info[0], &array_buffer, &data, &length)) {
    MappedChunk* chunk = pool_->Find(static_cast<uint8_t*>(data), length);
    // Detach first: from here on no JS view can reach the pages. If that fails, the
    // pages stay mapped (a later release or the finalizer frees them).
    bool direct = chunk != nullptr && chunk->direct;  // read now: the detach may free it
    bool detached = false;
    if (chunk != nullptr) {
      // A direct Buffer's detach drops its hold on the memory: the deleter releases the
      // chunk and frees it right there (or once whatever else still holds the memory lets
      // go), and the waiters are told as this scope ends.
      MappingPool::JsRelease telling_waiters_here(pool_.get());
      detached = napi_detach_arraybuffer(env, array_buffer) == napi_ok;
    }
    if (detached && !direct) {
      pool_->Release(chunk);
      ForgetWatch(env, chunk);
    }
    released = detached;
  }
  return Napi::Boolean::New(env, released);
}

// detachBuffer(buffer): empties a copied chunk's Buffer, so a released chunk reads as
// length 0 whichever way it arrived. Only the package's own copied-chunk Buffers (type-
// tagged, see chunk_tag.h) are detached, and only while they cover their whole
// ArrayBuffer; anything else (Node's shared pool slices, a user's ArrayBuffer, a mapped
// chunk, whose pages only releaseChunk gives back) is left alone and gives false.
Napi::Value Addon::DetachBuffer(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  if (info.Length() < 1 || !info[0].IsBuffer()) {
    throw Napi::TypeError::New(env, "detachBuffer(buffer): buffer must be a Buffer");
  }
  napi_value array_buffer;
  void* data = nullptr;
  size_t length = 0;
  size_t array_buffer_length = 0;
  bool detached = IsTaggedChunk(env, info[0]) && WholeView(env, info[0], &array_buffer, &data, &length) &&
                  napi_get_arraybuffer_info(env, array_buffer, nullptr, &array_buffer_length) == napi_ok &&
                  array_buffer_length == length && napi_detach_arraybuffer(env, array_buffer) == napi_ok;
  return Napi::Boolean::New(env, detached);
}

Napi::Value Addon::PoolStats(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  Napi::Object stats = Napi::Object::New(env);
  stats.Set("pinnedBytes", static_cast<double>(pool_->pinned_bytes()));
  stats.Set("maxPinnedBytes", static_cast<double>(pool_->max_pinned_bytes()));
  stats.Set("chunksCopiedOnWrite", pool_->chunks_copied_on_write());
  stats.Set("retiredBytes", static_cast<double>(pool_->retired_bytes()));
  stats.Set("idleCopyBytes", static_cast<double>(copy_blocks_ != nullptr ? copy_blocks_->idle_bytes() : 0));
  stats.Set("mappings", static_cast<double>(pool_->mapping_count()));
  stats.Set("mappedAddressSpace", static_cast<double>(pool_->mapped_bytes()));
  stats.Set("liveChunks", static_cast<double>(pool_->live_chunks()));
  stats.Set("bytesCopiedPoolFull", pool_->copied_pool_full_bytes());
  return stats;
}

// configure({ maxPinnedBytes, copyOnWrite }): the cap applies to future receives; chunks
// already out stay valid.
Napi::Value Addon::Configure(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  if (info.Length() < 1 || !info[0].IsObject()) {
    throw Napi::TypeError::New(env, "configure(options): options must be an object");
  }
  Napi::Value value = info[0].As<Napi::Object>().Get("maxPinnedBytes");
  if (!value.IsUndefined()) {
    double bytes = value.IsNumber() ? value.As<Napi::Number>().DoubleValue() : NAN;
    if (!(bytes >= 0 && bytes <= kMaxPinnedBytesLimit) || std::floor(bytes) != bytes) {
      throw Napi::RangeError::New(env, "maxPinnedBytes must be an integer from 0 to 64 GiB");
    }
    pool_->set_max_pinned_bytes(static_cast<size_t>(bytes));
  }
  // copyOnWrite: later chunks only; chunks already out keep what they were given.
  Napi::Value copy_on_write = info[0].As<Napi::Object>().Get("copyOnWrite");
  if (!copy_on_write.IsUndefined()) {
    if (!copy_on_write.IsBoolean()) throw Napi::TypeError::New(env, "copyOnWrite must be a boolean");
    pool_->set_copy_on_write(copy_on_write.As<Napi::Boolean>().Value());
  }
  return env.Undefined();
}

// _writeReadOnlyForTesting(): a real store into a read-only page outside the pool, which
// must still end the process with SIGSEGV once the write-fault handler is installed.
Napi::Value Addon::WriteReadOnlyForTesting(const Napi::CallbackInfo& info) {
  void* page = mmap(nullptr, 4096, PROT_READ, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
  if (page == MAP_FAILED) return Napi::Boolean::New(info.Env(), false);
  *static_cast<volatile uint8_t*>(page) = 1;
  munmap(page, 4096);
  return Napi::Boolean::New(info.Env(), true);
}

// _breakPoolForTesting(): see MappingPool::BreakArenasForTesting. For the fallback tests.
Napi::Value Addon::BreakPoolForTesting(const Napi::CallbackInfo& info) {
  return Napi::Boolean::New(info.Env(), pool_->BreakArenasForTesting());
}

}  // namespace tcpzc

using TcpZeroCopyAddon = tcpzc::Addon;
NODE_API_ADDON(TcpZeroCopyAddon)
