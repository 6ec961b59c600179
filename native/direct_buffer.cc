// The addon's only use of V8's and Node's C++ API (see direct_buffer.h). node.h defines
// NAPI_VERSION as the runtime's and includes Node-API's headers with it: binding.gyp's
// value is dropped here (this file calls no Node-API function; it only passes napi_value
// through).
#undef NAPI_VERSION
#include "direct_buffer.h"

#include <dlfcn.h>
#include <node_buffer.h>
#include <node_version.h>
#include <v8.h>

#include <cstring>
#include <memory>

namespace tcpzc {
namespace direct_buffer {

int BuiltForModuleVersion() { return NODE_MODULE_VERSION; }

bool KeepLoaded() {
  static const bool kept = [] {
    Dl_info self;
    if (dladdr(reinterpret_cast<void*>(&BuiltForModuleVersion), &self) == 0 || self.dli_fname == nullptr) return false;
    // One more reference, never dropped, and RTLD_NODELETE: no dlclose() unloads it.
    return dlopen(self.dli_fname, RTLD_LAZY | RTLD_NOLOAD | RTLD_NODELETE) != nullptr;
  }();
  return kept;
}

namespace {

// As Node's own Node-API implementation converts (v8impl::JsValueFromV8LocalValue and
// V8LocalValueFromJsValue): a napi_value is a Local's bits, valid in its handle scope.
static_assert(sizeof(v8::Local<v8::Value>) == sizeof(napi_value), "a napi_value is a Local's bits");

napi_value ToNapiValue(v8::Local<v8::Value> local) {
  napi_value value;
  std::memcpy(static_cast<void*>(&value), &local, sizeof(value));
  return value;
}

v8::Local<v8::Value> ToLocal(napi_value value) {
  v8::Local<v8::Value> local;
  std::memcpy(static_cast<void*>(&local), &value, sizeof(value));
  return local;
}

// The context `object` was made in. V8 13 (Node 24) takes the isolate and deprecates the
// overload without it.
bool CreationContext(v8::Isolate* isolate, v8::Local<v8::Object> object, v8::Local<v8::Context>* context) {
#if V8_MAJOR_VERSION >= 13
  return object->GetCreationContext(isolate).ToLocal(context);
#else
  static_cast<void>(isolate);
  return object->GetCreationContext().ToLocal(context);
#endif
}

}  // namespace

Made Make(napi_value of, void* data, size_t length, Deleter deleter, void* hint, napi_value* result) {
  v8::Isolate* isolate = v8::Isolate::GetCurrent();
  v8::Local<v8::Value> object = ToLocal(of);
  v8::Local<v8::Context> context;
  if (isolate == nullptr || object.IsEmpty() || !object->IsObject() ||
      !CreationContext(isolate, object.As<v8::Object>(), &context)) {
    return Made::kNo;
  }
  // node::Buffer::New finds the environment (and its Buffer prototype) by this context.
  v8::Context::Scope context_scope(context);
  std::unique_ptr<v8::BackingStore> store = v8::ArrayBuffer::NewBackingStore(data, length, deleter, hint);
  v8::Local<v8::ArrayBuffer> array_buffer = v8::ArrayBuffer::New(isolate, std::move(store));
  // Node's Buffer prototype on a Uint8Array over it. Fails (an exception, swallowed here:
  // the caller reports the batch as lost) only while the environment stops.
  v8::TryCatch try_catch(isolate);
  v8::Local<v8::Uint8Array> buffer;
  if (!node::Buffer::New(isolate, array_buffer, 0, length).ToLocal(&buffer)) return Made::kArrayBufferOnly;
  *result = ToNapiValue(buffer);
  return Made::kYes;
}

}  // namespace direct_buffer
}  // namespace tcpzc
