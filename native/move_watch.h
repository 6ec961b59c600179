#pragma once

#include <node_api.h>

#include <memory>

#include "pool.h"

namespace tcpzc {

struct MoveWatchState;

// Where ArrayBuffer.prototype.transfer exists (Node 21+, a flag on 20), a mapped chunk's
// memory can be moved out of its Buffer into another ArrayBuffer, which postMessage can
// send to another thread. A mapped chunk's finalizer normally runs once no ArrayBuffer
// holds its memory; but a stopping environment finalizes all of its external Buffers,
// newest first, each right after detaching its ArrayBuffer, whoever holds the memory.
// Releasing a moved chunk then would drop its pages (or unmap the pool) under the other
// thread. So each mapped chunk's ArrayBuffer is watched (a weak reference), and a sentinel
// external Buffer, made again after every batch of mapped chunks, is finalized before any
// of them: while the environment stops, it marks the live chunks whose ArrayBuffer is
// already gone or detached (their memory was moved), and their finalizers leave them, and
// so the pool, mapped until the process ends. One per environment, on its thread only.
class MoveWatch {
 public:
  MoveWatch(napi_env env, std::shared_ptr<MappingPool> pool);
  MoveWatch(const MoveWatch&) = delete;
  MoveWatch& operator=(const MoveWatch&) = delete;

  // Watches the ArrayBuffer of a mapped chunk just made (best effort: an unwatched chunk
  // is released by its finalizer as before).
  void Watch(napi_value buffer, MappedChunk* chunk);
  // After a batch: a new sentinel if chunks were watched since the last one.
  void RenewSentinel();

 private:
  napi_env env_;
  std::shared_ptr<MoveWatchState> state_;
  // Strong, so the sentinel lives until the environment stops (never deleted then: the
  // sentinel must be finalized with the chunks, and the environment is going anyway).
  napi_ref sentinel_ = nullptr;
  bool sentinel_stale_ = false;
};

// The chunk's watch reference, if any, is dropped (it was released, or is being finalized).
void ForgetWatch(napi_env env, MappedChunk* chunk);

}  // namespace tcpzc
