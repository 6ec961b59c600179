#pragma once

// Buffers over mapped chunks whose memory V8 hands back directly.
//
// A Node-API external Buffer's finalizer never runs where V8 frees the memory: Node 20
// defers it through SetImmediateThreadsafe, an eventfd write and read plus two more turns
// of the event loop per released chunk, on every release() (which detaches the Buffer).
// At 1 MiB chunks that was 4 of the 7 system calls per chunk and most of what Node added
// to the kernel's own receive loop. A direct Buffer's memory goes to our deleter as soon
// as no ArrayBuffer anywhere holds it: inside the detach for release(), or on whatever
// thread drops it last (a GC thread, another isolate it was moved to, a worker's teardown).
//
// This takes V8's and Node's C++ API, whose ABI is that of one Node major version: used
// only when the running Node has the module version this file was compiled for (the
// addon is built on install, against that Node's headers and build settings such as
// pointer compression; a prebuilt binary would need more than this check), else
// Node-API external Buffers as before.

#include <cstddef>

// Node-API's handle type, as js_native_api_types.h declares it. The header itself is not
// included: direct_buffer.cc includes Node's headers, which bring it with another
// NAPI_VERSION than the rest of the addon.
typedef struct napi_value__* napi_value;

namespace tcpzc {
namespace direct_buffer {

// The module version (process.versions.modules) of the Node this was compiled against.
int BuiltForModuleVersion();

// Keeps this addon's code loaded until the process ends. A deleter (and the shared_ptr
// bookkeeping V8 keeps for the memory) is code of this library, and may run after the
// environment that loaded it is gone (a worker's isolate is torn down after Node unloads
// the addons only it had loaded: that crashed). False if that could not be arranged.
bool KeepLoaded();

enum class Made {
  kYes,
  // Nothing was made (`of` has no context): the memory is still the caller's.
  kNo,
  // The ArrayBuffer was made, so it owns the memory (the deleter runs once it is
  // collected), but no Buffer over it (the environment is stopping).
  kArrayBufferOnly,
};

using Deleter = void (*)(void* data, size_t length, void* hint);

// A Buffer over [data, data + length), in the current handle scope and the context `of`
// (any object of the environment) was made in. `deleter` runs once, on any thread, when
// no ArrayBuffer holds the memory any more; it must not use N-API. Call only on the JS
// thread of an environment that may still run JS.
Made Make(napi_value of, void* data, size_t length, Deleter deleter, void* hint, napi_value* result);

}  // namespace direct_buffer
}  // namespace tcpzc
