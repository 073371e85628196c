// One exception type inside the library: a status and a one-line message. The C entry points
// (runtime.cpp) turn it, and anything else thrown, into a status + mmrt_last_error().
#pragma once

#include <stdexcept>
#include <string>

#include "mmdeploy/runtime.h"

namespace mmrt {

class Error : public std::runtime_error {
 public:
  Error(mmrt_status status, const std::string& message) : std::runtime_error(message), status_(status) {}
  mmrt_status status() const { return status_; }

 private:
  mmrt_status status_;
};

[[noreturn]] inline void fail(mmrt_status status, const std::string& message) { throw Error(status, message); }

// A value shown in a message: quoted, cut to 60 characters, control characters escaped.
std::string short_repr(const std::string& s);

}  // namespace mmrt
