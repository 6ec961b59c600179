#pragma once

#include <node_api.h>

namespace tcpzc {

// Every copied chunk's Buffer carries this type tag (napi_type_tag_object, N-API 8: a
// private property on the Buffer object itself). detachBuffer() touches only Buffers that
// carry it, so no other memory can be detached through it: not Node's shared Buffer
// pool, not a user's ArrayBuffer. JS cannot read or forge the tag, and a subarray, a
// clone or Buffer.from(chunk) is a new object without it. Mapped chunks go without (a
// private property per Buffer is a map transition per chunk on the hot path): release-
// Chunk() finds them by address among the pool's live chunks instead.
inline constexpr napi_type_tag kChunkTag = {0xb5dc7c683a928910ULL, 0x0ea849636e048b73ULL};

// Status-checked plain C API: false when the tag could not be set (the environment is
// stopping: the call needs JS to be runnable).
inline bool TagChunk(napi_env env, napi_value buffer) {
  return napi_type_tag_object(env, buffer, &kChunkTag) == napi_ok;
}

// False for untagged values and whenever the check itself fails.
inline bool IsTaggedChunk(napi_env env, napi_value value) {
  bool tagged = false;
  return napi_check_object_type_tag(env, value, &kChunkTag, &tagged) == napi_ok && tagged;
}

}  // namespace tcpzc
