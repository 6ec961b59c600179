#pragma once

// Socket reads the receive steps share (native/receiver.cc, native/receiver_copy.cc): plain
// syscalls, no Node-API.

#include <sys/ioctl.h>
#include <sys/socket.h>
#include <sys/types.h>

#include <cerrno>
#include <cstddef>
#include <cstdint>

namespace tcpzc {

// Reads up to `length` bytes without blocking: bytes read, 0 at end of stream, or -errno
// (-EAGAIN when nothing is queued).
inline ssize_t RecvSome(int fd, uint8_t* data, size_t length) {
  for (;;) {
    ssize_t n = recv(fd, data, length, MSG_DONTWAIT);
    if (n >= 0) return n;
    if (errno != EINTR) return -errno;
  }
}

inline size_t QueuedBytes(int fd) {
  int queued = 0;
  if (ioctl(fd, FIONREAD, &queued) != 0 || queued < 0) return 0;
  return static_cast<size_t>(queued);
}

}  // namespace tcpzc
