// ONNX Runtime through its C API, the library loaded with dlopen (never linked): a path the user
// gives, else $MMRT_ORT_LIBRARY, else the onnxruntime wheel found at build time, else a search of
// the usual Python site-packages and the system library path.
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

struct OrtApi;
struct OrtEnv;
struct OrtSession;
struct OrtMemoryInfo;

namespace mmrt {

class OrtLibrary {
 public:
  // One per library path per process (ORT wants one environment). Throws Error(MMRT_ERR_BACKEND).
  static std::shared_ptr<OrtLibrary> load(const std::string& requested_path);
  const OrtApi* api() const { return api_; }
  OrtEnv* env() const { return env_; }
  const std::string& path() const { return path_; }
  const std::string& version() const { return version_; }
  // GetAvailableProviders: the execution providers compiled into this library
  const std::vector<std::string>& providers() const { return providers_; }

  const OrtApi* api_ = nullptr;
  OrtEnv* env_ = nullptr;
  OrtMemoryInfo* cpu_ = nullptr;
  void* handle_ = nullptr;
  std::string path_, version_;
  std::vector<std::string> providers_;
};

// Where an ONNX Runtime session runs: "cpu", "cuda" or "tensorrt" (then CUDA, then CPU), GPU `id`.
struct OrtDevice {
  std::string ep = "cpu";
  int id = 0;
};

// A tensor handed to / returned from a session: row-major, float32 or int64.
struct Tensor {
  std::string name;
  bool is_float = true;
  std::vector<int64_t> shape;
  std::vector<float> f;
  std::vector<int64_t> i;
};

// A tensor in the caller's memory (not copied): float32 or int64, row-major.
struct TensorRef {
  std::string name;
  bool is_float = true;
  std::vector<int64_t> shape;
  void* data = nullptr;
};

// Repeated runs of one graph on the caller's buffers (a decoder's steps): ONNX Runtime binds them
// (IOBinding: outputs written in place), OpenVINO shares the inputs and copies the outputs in.
// One generation's, used by one thread.
class BoundRunner {
 public:
  virtual ~BoundRunner() = default;
  // An input that stays the same for every run (cross K/V); its data must outlive the runner.
  virtual void bind_fixed(const TensorRef& input) = 0;
  // outputs: buffers of exactly the output's shape (a different shape is an error).
  virtual void run(const std::vector<TensorRef>& inputs, const std::vector<TensorRef>& outputs) = 0;
};

// One opened graph of a backend. run() and bind() are thread safe.
class Session {
 public:
  virtual ~Session() = default;
  // Inputs by name; returns the named outputs (float32).
  virtual std::vector<Tensor> run(const std::vector<const Tensor*>& inputs,
                                  const std::vector<std::string>& outputs) const = 0;
  virtual std::unique_ptr<BoundRunner> bind() const = 0;
};

class OrtModel : public Session {
 public:
  // threads: intra-op threads (0: ORT's default), inter-op 1, as runtimes/onnxruntime.py.
  // device: the execution providers appended (a GPU one this library lacks: Error(MMRT_ERR_BACKEND)).
  OrtModel(std::shared_ptr<OrtLibrary> lib, const std::string& onnx_path, int threads, const OrtDevice& device = {});
  ~OrtModel();
  OrtModel(const OrtModel&) = delete;
  OrtModel& operator=(const OrtModel&) = delete;
  // Thread safe (OrtApi::Run is). Inputs by name; returns the named outputs (float32).
  std::vector<Tensor> run(const std::vector<const Tensor*>& inputs, const std::vector<std::string>& outputs) const override;
  std::unique_ptr<BoundRunner> bind() const override;
  const std::vector<std::string>& input_names() const { return inputs_; }

 private:
  std::shared_ptr<OrtLibrary> lib_;
  OrtSession* session_ = nullptr;
  std::string path_;
  std::vector<std::string> inputs_, outputs_;
};

}  // namespace mmrt
