#pragma once
#include <string>

namespace mmrt {
// Lower-case hex sha256 of a file's bytes; throws Error(MMRT_ERR_BUNDLE) when it cannot be read.
std::string sha256_file(const std::string& path);
std::string sha256_hex(const void* data, size_t size);
}  // namespace mmrt
