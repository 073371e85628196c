// OpenVINO through its C API (libopenvino_c from the openvino wheel), loaded with dlopen like ONNX
// Runtime: a path given, else $MMRT_OPENVINO_LIBRARY, else the wheel found at build time, else a
// search of the usual site-packages. Compiled as runtimes/backends/openvino.py compiles: CPU,
// PERFORMANCE_HINT LATENCY, the artifact's INFERENCE_PRECISION_HINT (f32 unless it says bf16),
// INFERENCE_NUM_THREADS when threads are given.
#pragma once

#include <memory>
#include <string>

#include "bundle.h"
#include "ort.h"

namespace mmrt {

struct OvApi;

class OvLibrary {
 public:
  // Throws Error(MMRT_ERR_BACKEND) when this build has no OpenVINO or the library cannot load.
  static std::shared_ptr<OvLibrary> load(const std::string& requested_path);
  // OPTIMIZATION_CAPABILITIES of the CPU plugin has what this precision needs (bf16: BF16, ...)
  bool cpu_supports(const std::string& precision) const;
  const std::string& path() const { return path_; }
  const std::string& version() const { return version_; }

  std::shared_ptr<OvApi> api_;
  std::string path_, version_, capabilities_;
};

// an OpenVINO IR compiled for the CPU; run() makes an infer request per call (thread safe)
std::unique_ptr<Session> open_openvino(std::shared_ptr<OvLibrary> lib, const std::string& xml_path,
                                       const json& runtime, int threads);

}  // namespace mmrt
