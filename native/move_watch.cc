#include "move_watch.h"

namespace tcpzc {

struct MoveWatchState {
  std::shared_ptr<MappingPool> pool;
  // The hint of the sentinel now held: only it marks. It is held until the environment
  // stops, so it is finalized from Node's queue of external Buffers, after the finalizers
  // still pending from collections have run (an older sentinel finalized then would take
  // the chunks collected with it, whose finalizers have not run yet, for moved).
  const void* current = nullptr;
};

namespace {

// Finalizers of a stopping environment run with JS no longer allowed: Node refuses any
// call that may run it (a property read here).
bool EnvironmentStopping(napi_env env) {
  napi_value global = nullptr;
  napi_value ignored = nullptr;
  return napi_get_global(env, &global) != napi_ok ||
         napi_get_named_property(env, global, "undefined", &ignored) != napi_ok;
}

// A live chunk whose ArrayBuffer is gone or detached, before Node detached anything:
// release() was not called (it would have made the chunk not live), so transfer() took
// the memory. In doubt, moved (a leak, not a crash).
bool MovedOut(napi_env env, const MappedChunk* chunk) {
  napi_value array_buffer = nullptr;
  bool detached = true;
  return napi_get_reference_value(env, static_cast<napi_ref>(chunk->array_buffer_ref), &array_buffer) != napi_ok ||
         array_buffer == nullptr || napi_is_detached_arraybuffer(env, array_buffer, &detached) != napi_ok || detached;
}

void FinalizeSentinel(napi_env env, void* /*data*/, void* hint) {
  auto* state = static_cast<std::shared_ptr<MoveWatchState>*>(hint);
  MoveWatchState& watch = **state;
  // Newer than every mapped chunk, it is finalized before them, while their ArrayBuffers
  // are still as JS left them.
  if (watch.current == hint && EnvironmentStopping(env)) {
    watch.current = nullptr;
    napi_handle_scope scope;
    bool scoped = napi_open_handle_scope(env, &scope) == napi_ok;
    watch.pool->ForEachLive([&](MappedChunk* chunk) {
      if (chunk->array_buffer_ref != nullptr && (!scoped || MovedOut(env, chunk))) chunk->moved = true;
    });
    if (scoped) napi_close_handle_scope(env, scope);
  }
  delete state;
}

}  // namespace

MoveWatch::MoveWatch(napi_env env, std::shared_ptr<MappingPool> pool)
    : env_(env), state_(std::make_shared<MoveWatchState>(MoveWatchState{std::move(pool), nullptr})) {}

void MoveWatch::Watch(napi_value buffer, MappedChunk* chunk) {
  napi_value array_buffer = nullptr;
  napi_ref weak = nullptr;
  if (napi_get_typedarray_info(env_, buffer, nullptr, nullptr, nullptr, &array_buffer, nullptr) != napi_ok ||
      napi_create_reference(env_, array_buffer, 0, &weak) != napi_ok) {
    return;
  }
  chunk->array_buffer_ref = weak;
  sentinel_stale_ = true;
}

void MoveWatch::RenewSentinel() {
  if (!sentinel_stale_) return;
  static char sentinel_byte = 0;
  auto* hint = new std::shared_ptr<MoveWatchState>(state_);
  napi_value buffer = nullptr;
  napi_ref strong = nullptr;
  napi_status status = napi_create_external_buffer(env_, 1, &sentinel_byte, FinalizeSentinel, hint, &buffer);
  if (status != napi_ok) {
    // Refused at the entry check (no finalizer was made): ours to free. Otherwise Node
    // owns the hint (see Receiver::AddMapped).
    if (status == napi_pending_exception || status == napi_cannot_run_js ||
        status == napi_no_external_buffers_allowed) {
      delete hint;
    }
    return;
  }
  if (napi_create_reference(env_, buffer, 1, &strong) != napi_ok) return;
  if (sentinel_ != nullptr) napi_delete_reference(env_, sentinel_);
  sentinel_ = strong;
  state_->current = hint;
  sentinel_stale_ = false;
}

void ForgetWatch(napi_env env, MappedChunk* chunk) {
  if (chunk->array_buffer_ref == nullptr) return;
  napi_delete_reference(env, static_cast<napi_ref>(chunk->array_buffer_ref));
  chunk->array_buffer_ref = nullptr;
}

}  // namespace tcpzc
