#include "errors.h"

#include <uv.h>

#include <string>

namespace tcpzc {

std::string ErrnoName(int err) {
  // The _r variant: plain uv_err_name leaks a heap string for codes it does not know.
  char name[64];
  uv_err_name_r(-err, name, sizeof(name));
  return name;
}

Napi::Error ErrnoError(Napi::Env env, int err, const char* syscall) {
  std::string code = ErrnoName(err);
  std::string message = std::string(syscall) + " " + code;
  Napi::Error error = Napi::Error::New(env, message);
  error.Set("code", Napi::String::New(env, code));
  error.Set("errno", Napi::Number::New(env, -err));
  error.Set("syscall", Napi::String::New(env, syscall));
  return error;
}

}  // namespace tcpzc
