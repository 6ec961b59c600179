#pragma once

#include <napi.h>

#include <memory>

#include "copy_blocks.h"
#include "move_watch.h"
#include "pool.h"

namespace tcpzc {

// Per-environment state (main thread and each worker get their own).
class Addon : public Napi::Addon<Addon> {
 public:
  Addon(Napi::Env env, Napi::Object exports);
  ~Addon();

  const std::shared_ptr<MappingPool>& pool() const { return pool_; }
  // Null where copied chunks keep memory of their own.
  const std::shared_ptr<CopyBlocks>& copy_blocks() const { return copy_blocks_; }
  bool external_buffers_allowed() const { return external_buffers_allowed_; }
  // Null where a mapped chunk's memory cannot be moved out of its Buffer (no transfer()),
  // and where mapped chunks are direct Buffers (their memory may go anywhere).
  const std::shared_ptr<MoveWatch>& move_watch() const { return move_watch_; }
  // Mapped chunks, and copied ones in reused memory, are direct Buffers (see
  // direct_buffer.h), not Node-API external ones.
  bool direct_buffers() const { return direct_buffers_; }

 private:
  Napi::Value Probe(const Napi::CallbackInfo& info);
  Napi::Value ReleaseChunk(const Napi::CallbackInfo& info);
  Napi::Value DetachBuffer(const Napi::CallbackInfo& info);
  Napi::Value PoolStats(const Napi::CallbackInfo& info);
  Napi::Value Configure(const Napi::CallbackInfo& info);
  Napi::Value BreakPoolForTesting(const Napi::CallbackInfo& info);
  Napi::Value WriteReadOnlyForTesting(const Napi::CallbackInfo& info);

  // Shared with every mapped chunk, so the mappings outlive receivers and this object
  // until the last Buffer over them is released or collected.
  std::shared_ptr<MappingPool> pool_;
  // Shared with every copied chunk received into one of its blocks, likewise. Null where
  // copied chunks cannot safely reuse memory (see ArrayBufferTransferExists).
  std::shared_ptr<CopyBlocks> copy_blocks_;
  bool external_buffers_allowed_;
  bool direct_buffers_ = false;
  std::shared_ptr<MoveWatch> move_watch_;
};

}  // namespace tcpzc
