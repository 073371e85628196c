// OpenVINO through its C API (libopenvino_c from the openvino wheel), loaded with dlopen like ONNX
// Runtime: a path given, else $MMRT_OPENVINO_LIBRARY, else the wheel found at build time, else a
// search of the usual site-packages. Compiled as runtimes/backends/openvino.py compiles: CPU (or the device asked),
// PERFORMANCE_HINT LATENCY, the artifact's INFERENCE_PRECISION_HINT (f32 unless it says bf16),
// INFERENCE_NUM_THREADS when threads are given.
#pragma once

#include <memory>
#include <string>
#include <vector>

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
  // ov_core_get_available_devices ("CPU", "GPU", "GPU.1", "NPU"); asked only for a device other
  // than the CPU (it loads every plugin: time and memory a CPU run does not need)
  std::vector<std::string> available_devices() const;
  const std::string& path() const { return path_; }
  const std::string& version() const { return version_; }

  std::shared_ptr<OvApi> api_;
  std::string path_, version_, capabilities_;
};

// an OpenVINO IR compiled for `device` ("CPU", "GPU", ...: one this machine has, else
// Error(MMRT_ERR_BACKEND) naming those it has); run() makes an infer request per call (thread safe)
std::unique_ptr<Session> open_openvino(std::shared_ptr<OvLibrary> lib, const std::string& xml_path,
                                       const json& runtime, int threads, const std::string& device = "CPU");

}  // namespace mmrt
