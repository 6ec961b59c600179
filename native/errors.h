#pragma once

#include <napi.h>

#include <string>

namespace tcpzc {

// An Error shaped like Node's own system errors: message "<syscall> <CODE>",
// with .code ("ECONNRESET"), .errno (negative, as in libuv) and .syscall.
Napi::Error ErrnoError(Napi::Env env, int err, const char* syscall);

// The same with the plain C API, for paths that must not throw; null on failure.
napi_value CreateErrnoError(napi_env env, int err, const char* syscall);

// Name of an errno as libuv spells it ("ECONNRESET").
std::string ErrnoName(int err);

}  // namespace tcpzc
