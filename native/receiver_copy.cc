// The receive steps that copy: reading what cannot be mapped (or everything, in copy
// mode or while draining) into Buffers of its own or into reused blocks (CopyBlocks).

#include <sys/ioctl.h>
#include <sys/socket.h>

#include <algorithm>
#include <cerrno>

#include "chunk_tag.h"
#include "copy_blocks.h"
#include "receiver.h"
#include "socket_io.h"

namespace tcpzc {
namespace {

constexpr unsigned kMaxDrainMarkSteps = 16;
// Reads into reused memory after the consumer was last seen holding a copied chunk.
constexpr unsigned kBlockReadsAfterHeld = 64;

}  // namespace

// One copied chunk: up to `recv_len` (> 0) bytes read from the socket. Large reads go
// into reused memory (CopyBlocks) while the consumer holds chunks past the next read
// (writes to a socket or a file): then malloc gives freed chunks back to the kernel and
// the next ones fault their pages in again. A consumer that releases each chunk before
// the next read gets memory malloc reuses by itself, without the event-loop wake-up a
// Node-API external Buffer's release costs (side by side, with those: forwarding at 4 MiB
// 563 against 1,414 ms/GB with blocks; reading lines at 1 MiB 204 against 178 when every
// chunk went into a block; not measured again with direct Buffers, which cost no wake-up).
void Receiver::ReadCopied(Batch* batch, size_t recv_len) {
  if (recv_len < CopyBlocks::kMinBlockBytes) {
    ReadCopiedIntoOwnBuffer(batch, recv_len);
    return;
  }
  int before = batch->count;
  if (!ConsumerHoldsCopies() || !ReadCopiedIntoBlock(batch, recv_len)) ReadCopiedIntoOwnBuffer(batch, recv_len);
  if (batch->count > before && copy_blocks_ != nullptr && external_buffers_) {
    RememberLargeCopy(batch->chunks[batch->count - 1]);
  }
}

// Whether the consumer still held the last large copied chunk (not released) when this
// read came; once it did, the next kBlockReadsAfterHeld reads use blocks.
bool Receiver::ConsumerHoldsCopies() {
  if (copy_blocks_ == nullptr || !external_buffers_) return false;
  bool held = false;
  napi_env env = Env();
  napi_value buffer = nullptr;
  if (last_large_copy_ != nullptr && napi_get_reference_value(env, last_large_copy_, &buffer) == napi_ok &&
      buffer != nullptr) {
    napi_value array_buffer = nullptr;
    bool detached = true;
    held = napi_get_typedarray_info(env, buffer, nullptr, nullptr, nullptr, &array_buffer, nullptr) == napi_ok &&
           napi_is_detached_arraybuffer(env, array_buffer, &detached) == napi_ok && !detached;
  }
  if (held) {
    block_reads_left_ = kBlockReadsAfterHeld;
  } else if (block_reads_left_ > 0) {
    block_reads_left_--;
  }
  return block_reads_left_ > 0;
}

void Receiver::RememberLargeCopy(napi_value buffer) {
  napi_env env = Env();
  if (last_large_copy_ != nullptr) napi_delete_reference(env, last_large_copy_);
  last_large_copy_ = nullptr;
  napi_create_reference(env, buffer, 0, &last_large_copy_);  // weak: failing only costs the heuristic
}

// ReadCopied into a Buffer of its own (malloc'd by Node).
void Receiver::ReadCopiedIntoOwnBuffer(Batch* batch, size_t recv_len) {
  napi_env env = Env();
  void* raw = nullptr;
  napi_value buffer;
  if (napi_create_buffer(env, recv_len, &raw, &buffer) != napi_ok) {
    batch->abandoned = true;  // the environment is going away, or no memory
    return;
  }
  auto* data = static_cast<uint8_t*>(raw);
  size_t length = 0;
  stats_.recv_calls++;
  ssize_t n = RecvSome(SocketFd(), data, recv_len);
  if (n > 0) {
    length = static_cast<size_t>(n);
  } else if (n == 0) {
    batch->eof = true;
  } else if (n != -EAGAIN && n != -EWOULDBLOCK) {
    batch->error = static_cast<int>(-n);
  }
  if (length == 0) return;
  if (length < recv_len) {
    // Short read (urgent mark, reset): keep only what arrived.
    AddCopiedFrom(batch, data, length);
    return;
  }
  // Tagged once, the Buffer that JS gets.
  if (!TagChunk(env, buffer)) {
    batch->abandoned = true;
    return;
  }
  AddCopied(batch, buffer, length);
}

// ReadCopied into a block from copy_blocks_: the read's size rounded up to a power of
// two, at most chunk_size_, so a Buffer always covers over half its block. (Reads are
// often under half a chunk: at the start of a connection, while the kernel still grows the
// receive buffer, and with chunks over half of it.) False when no block could be had (no
// reuse here, no memory) and nothing was read: the caller reads into a Buffer of its own.
bool Receiver::ReadCopiedIntoBlock(Batch* batch, size_t recv_len) {
  if (copy_blocks_ == nullptr || !external_buffers_) return false;
  size_t size = CopyBlocks::kMinBlockBytes;
  while (size < recv_len) size *= 2;
  size = std::min(size, chunk_size_);
  if (size < recv_len || size > CopyBlocks::kMaxIdleBytes) return false;  // callers cap reads at chunk_size_
  CopyBlock* block = copy_blocks_->Take(size);
  if (block == nullptr) return false;
  stats_.recv_calls++;
  ssize_t n = RecvSome(SocketFd(), block->data, recv_len);
  if (n <= 0) {
    copy_blocks_->Give(block);
    if (n == 0) {
      batch->eof = true;
    } else if (n != -EAGAIN && n != -EWOULDBLOCK) {
      batch->error = static_cast<int>(-n);
    }
    return true;
  }
  auto length = static_cast<size_t>(n);
  if (length * 2 < block->size) {
    // Short read (urgent mark, reset): a few bytes must not hold a whole block.
    AddCopiedFrom(batch, block->data, length);
    copy_blocks_->Give(block);
    return true;
  }
  if (direct_buffers_) return AddBlockAsDirectBuffer(batch, block, length);
  napi_env env = Env();
  napi_value buffer = nullptr;
  // No napi_adjust_external_memory: V8 counts an external Buffer's length itself.
  napi_status status = napi_create_external_buffer(
      env, length, block->data,
      [](napi_env, void*, void* hint) {
        // Released (detached) or collected: the memory goes back for the next chunk.
        auto* returned = static_cast<CopyBlock*>(hint);
        returned->home->Give(returned);
      },
      block, &buffer);
  if (status == napi_ok) {
    if (!TagChunk(env, buffer)) {
      batch->abandoned = true;  // the environment is going away; the finalizer frees the block
      return true;
    }
    AddCopied(batch, buffer, length);
    stats_.chunks_in_reused_memory++;
    return true;
  }
  if (status == napi_no_external_buffers_allowed) {
    // Refused before any finalizer was made: the block is ours. Copy what was read.
    external_buffers_ = false;
    AddCopiedFrom(batch, block->data, length);
    copy_blocks_->Give(block);
    return true;
  }
  // The environment is stopping. Refused at the entry check (JS cannot run), the block is
  // still ours; any later failure may leave Node owning the finalizer, as in AddMapped.
  if (status == napi_pending_exception || status == napi_cannot_run_js) copy_blocks_->Give(block);
  batch->abandoned = true;
  return true;
}

// A block's memory is no longer held anywhere (any thread, see direct_buffer.h): it goes
// back for the next chunk. Moved to another thread with transfer(), it comes back only
// once that thread drops it, so reusing it cannot pull it from under anyone.
namespace {
void GiveBackDirectBlock(void*, size_t, void* hint) {
  auto* block = static_cast<CopyBlock*>(hint);
  block->home->Give(block);
}
}  // namespace

// The block holding `length` bytes just read, as a direct Buffer. True: it is in the
// batch, or the batch is abandoned (the environment is stopping).
bool Receiver::AddBlockAsDirectBuffer(Batch* batch, CopyBlock* block, size_t length) {
  napi_env env = Env();
  napi_value buffer = nullptr;
  switch (MakeDirectBuffer(block->data, length, GiveBackDirectBlock, block, &buffer)) {
    case direct_buffer::Made::kYes:
      if (!TagChunk(env, buffer)) {
        batch->abandoned = true;  // the environment is going away; the deleter gives the block back
        return true;
      }
      AddCopied(batch, buffer, length);
      stats_.chunks_in_reused_memory++;
      return true;
    case direct_buffer::Made::kArrayBufferOnly:
      batch->abandoned = true;  // the environment is stopping; the block is V8's now
      return true;
    case direct_buffer::Made::kNo:
      // No context to make it in: not while JS can run (RunCycle checked). Still ours.
      copy_blocks_->Give(block);
      batch->abandoned = true;
      return true;
  }
  return true;
}

// A copied chunk in a Buffer of its own, from bytes already read.
void Receiver::AddCopiedFrom(Batch* batch, const uint8_t* data, size_t length) {
  napi_value buffer = nullptr;
  if (napi_create_buffer_copy(Env(), length, data, nullptr, &buffer) != napi_ok || !TagChunk(Env(), buffer)) {
    batch->abandoned = true;  // the environment is going away
    return;
  }
  AddCopied(batch, buffer, length);
}

// While draining: copy out at most what was queued when Node closed the socket, then end
// with the socket's pending error, if any.
void Receiver::DrainCycle(Batch* batch) {
  // The queue count stops at a pending urgent mark: step over the urgent byte (recv does)
  // and count again. Bounded, so a peer sending urgent bytes cannot keep us draining.
  int at_mark = 0;
  if (drain_budget_ == 0 && drain_mark_steps_ < kMaxDrainMarkSteps && ioctl(SocketFd(), SIOCATMARK, &at_mark) == 0 &&
      at_mark != 0) {
    drain_mark_steps_++;
    ReadCopied(batch, chunk_size_);
    drain_budget_ = QueuedBytes(SocketFd());
    if (batch->count > 0 || batch->error != 0 || batch->abandoned) return;
  }
  if (drain_budget_ > 0) {
    size_t before = batch->bytes;
    ReadCopied(batch, std::min(drain_budget_, chunk_size_));
    size_t got = batch->bytes - before;
    drain_budget_ = got > 0 ? drain_budget_ - std::min(got, drain_budget_) : 0;
    if (got > 0 || batch->error != 0 || batch->abandoned) return;
  }
  int err = 0;
  socklen_t len = sizeof(err);
  if (getsockopt(SocketFd(), SOL_SOCKET, SO_ERROR, &err, &len) == 0 && err != 0) {
    batch->error = err;
  } else {
    batch->eof = true;
  }
}

void Receiver::CopyCycle(Batch* batch) {
  size_t queued = QueuedBytes(SocketFd());
  if (queued == 0) {
    // Readable with nothing queued: end of stream, an error, or a byte that arrived
    // after the ioctl. Peek so no byte is taken out of order.
    uint8_t byte;
    stats_.recv_calls++;
    ssize_t n;
    do {
      n = recv(SocketFd(), &byte, 1, MSG_DONTWAIT | MSG_PEEK);
    } while (n < 0 && errno == EINTR);
    if (n == 0) {
      batch->eof = true;
      return;
    }
    if (n < 0) {
      if (errno != EAGAIN && errno != EWOULDBLOCK) batch->error = errno;
      return;
    }
    queued = QueuedBytes(SocketFd());
    if (queued == 0) queued = 1;
  }
  ReadCopied(batch, std::min(queued, chunk_size_));
}

}  // namespace tcpzc
