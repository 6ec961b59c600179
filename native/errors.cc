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

napi_value CreateErrnoError(napi_env env, int err, const char* syscall) {
  std::string code = ErrnoName(err);
  std::string message = std::string(syscall) + " " + code;
  napi_value code_value, message_value, errno_value, syscall_value, error;
  if (napi_create_string_utf8(env, code.c_str(), code.size(), &code_value) != napi_ok ||
      napi_create_string_utf8(env, message.c_str(), message.size(), &message_value) != napi_ok ||
      napi_create_int32(env, -err, &errno_value) != napi_ok ||
      napi_create_string_utf8(env, syscall, NAPI_AUTO_LENGTH, &syscall_value) != napi_ok ||
      napi_create_error(env, nullptr, message_value, &error) != napi_ok ||
      napi_set_named_property(env, error, "code", code_value) != napi_ok ||
      napi_set_named_property(env, error, "errno", errno_value) != napi_ok ||
      napi_set_named_property(env, error, "syscall", syscall_value) != napi_ok) {
    return nullptr;
  }
  return error;
}

Napi::Error ErrnoError(Napi::Env env, int err, const char* syscall) {
  napi_value error = CreateErrnoError(env, err, syscall);
  if (error == nullptr) throw Napi::Error::New(env);
  return Napi::Error(env, error);
}

}  // namespace tcpzc
