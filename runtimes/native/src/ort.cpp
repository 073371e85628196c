#include "ort.h"

#include <dlfcn.h>
#include <glob.h>
#include <sys/stat.h>

#include <cstdlib>
#ifdef __GLIBC__
#include <malloc.h>
#endif
#include <map>
#include <mutex>

#include "error.h"
#include "onnxruntime_c_api.h"

#ifndef MMRT_DEFAULT_ORT_LIBRARY
#define MMRT_DEFAULT_ORT_LIBRARY ""
#endif

namespace mmrt {
namespace {

std::string first_line(const char* s) {
  std::string m = s ? s : "unknown error";
  auto nl = m.find('\n');
  return nl == std::string::npos ? m : m.substr(0, nl);
}

void check(const OrtApi* api, OrtStatus* status, const std::string& what) {
  if (!status) return;
  std::string msg = first_line(api->GetErrorMessage(status));
  api->ReleaseStatus(status);
  fail(MMRT_ERR_BACKEND, what + ": " + msg);
}

bool is_file(const std::string& p) {
  struct stat st;
  return !p.empty() && stat(p.c_str(), &st) == 0 && S_ISREG(st.st_mode);
}

// The onnxruntime wheels of the usual Python environments (newest name last in each glob).
std::vector<std::string> search_paths() {
  std::vector<std::string> patterns;
  if (const char* venv = getenv("VIRTUAL_ENV")) patterns.push_back(std::string(venv) + "/lib/python3*/site-packages");
  if (const char* home = getenv("HOME")) patterns.push_back(std::string(home) + "/.local/lib/python3*/site-packages");
  for (const char* p : {"/usr/local/lib/python3*/dist-packages", "/usr/local/lib/python3*/site-packages",
                        "/usr/lib/python3/dist-packages", "/opt/conda/lib/python3*/site-packages"})
    patterns.push_back(p);
  std::vector<std::string> out;
  for (auto& pat : patterns) {
    glob_t g;
    std::string full = pat + "/onnxruntime/capi/libonnxruntime.so*";
    if (glob(full.c_str(), 0, nullptr, &g) == 0) {
      for (size_t i = g.gl_pathc; i-- > 0;) out.push_back(g.gl_pathv[i]);
    }
    globfree(&g);
  }
  return out;
}

// Append the GPU execution providers a device asks for (runtimes/backends/onnxruntime.py DEVICES:
// tensorrt -> TensorRT, CUDA, CPU; cuda -> CUDA, CPU; CPU is always last, implicitly). A provider
// this library was not built with is an error naming the library, never a silent CPU run. The
// calls used (Create*ProviderOptions, Update*, *_V2) are older than C API 13; load() already
// refused a library without API 21.
void append_providers(const OrtLibrary& lib, OrtSessionOptions* so, const OrtDevice& device) {
  if (device.ep == "cpu") return;
  const OrtApi* api = lib.api();
  auto has = [&](const char* name) {
    for (auto& p : lib.providers())
      if (p == name) return true;
    return false;
  };
  const char* wanted = device.ep == "tensorrt" ? "TensorrtExecutionProvider" : "CUDAExecutionProvider";
  if (!has(wanted)) {
    std::string have;
    for (auto& p : lib.providers()) have += (have.empty() ? "" : ", ") + p;
    fail(MMRT_ERR_BACKEND, "this ONNX Runtime (" + lib.path() + ", " + lib.version() + ") has no " +
                               (device.ep == "tensorrt" ? "TensorRT" : "CUDA") + " execution provider (it has: " + have +
                               "): use an onnxruntime-gpu build (on Jetson, JetPack's) and give its libonnxruntime.so "
                               "with --ort-library / MMRT_ORT_LIBRARY");
  }
  std::string id = std::to_string(device.id);
  const char* keys[] = {"device_id"};
  const char* values[] = {id.c_str()};
  if (device.ep == "tensorrt") {
    OrtTensorRTProviderOptionsV2* trt = nullptr;
    check(api, api->CreateTensorRTProviderOptions(&trt), "onnxruntime TensorRT options");
    OrtStatus* s = api->UpdateTensorRTProviderOptions(trt, keys, values, 1);
    if (!s) s = api->SessionOptionsAppendExecutionProvider_TensorRT_V2(so, trt);
    api->ReleaseTensorRTProviderOptions(trt);
    check(api, s, "onnxruntime TensorRT execution provider (" + lib.path() + ")");
  }
  if (!has("CUDAExecutionProvider")) return;  // a TensorRT-only build: TensorRT, then CPU
  OrtCUDAProviderOptionsV2* cuda = nullptr;
  check(api, api->CreateCUDAProviderOptions(&cuda), "onnxruntime CUDA options");
  OrtStatus* s = api->UpdateCUDAProviderOptions(cuda, keys, values, 1);
  if (!s) s = api->SessionOptionsAppendExecutionProvider_CUDA_V2(so, cuda);
  api->ReleaseCUDAProviderOptions(cuda);
  check(api, s, "onnxruntime CUDA execution provider (" + lib.path() + ")");
}

}  // namespace

std::shared_ptr<OrtLibrary> OrtLibrary::load(const std::string& requested) {
  static std::mutex mu;
  static std::map<std::string, std::shared_ptr<OrtLibrary>> loaded;
  std::lock_guard<std::mutex> lock(mu);

  std::vector<std::string> tried;
  std::string chosen;
  const char* env_path = getenv("MMRT_ORT_LIBRARY");
  if (!requested.empty() || (env_path && *env_path)) {
    // an explicit choice is used or fails: never a silent fall back to another library
    chosen = !requested.empty() ? requested : env_path;
    const char* origin = !requested.empty() ? "onnxruntime library" : "MMRT_ORT_LIBRARY";
    if (!is_file(chosen)) fail(MMRT_ERR_BACKEND, std::string(origin) + " " + chosen + " is not a file");
  } else {
    std::vector<std::string> candidates = {MMRT_DEFAULT_ORT_LIBRARY};
    for (auto& p : search_paths()) candidates.push_back(p);
    for (auto& c : candidates) {
      if (is_file(c)) {
        chosen = c;
        break;
      }
      if (!c.empty()) tried.push_back(c);
    }
    if (chosen.empty()) chosen = "libonnxruntime.so";  // the system's (Debian 13: libonnxruntime1.21)
  }
  auto it = loaded.find(chosen);
  if (it != loaded.end()) return it->second;

  void* handle = dlopen(chosen.c_str(), RTLD_NOW | RTLD_LOCAL);
  if (!handle) {
    std::string why = first_line(dlerror());
    fail(MMRT_ERR_BACKEND, "cannot load onnxruntime (" + why +
                               "): pip install onnxruntime, or give its libonnxruntime.so with --ort-library / "
                               "MMRT_ORT_LIBRARY");
  }
  using GetApiBase = const OrtApiBase* (*)();
  auto get_base = reinterpret_cast<GetApiBase>(dlsym(handle, "OrtGetApiBase"));
  if (!get_base) {
    dlclose(handle);
    fail(MMRT_ERR_BACKEND, chosen + " is not an onnxruntime library (no OrtGetApiBase)");
  }
  const OrtApiBase* base = get_base();
  std::string version = base->GetVersionString ? base->GetVersionString() : "?";
  const OrtApi* api = base->GetApi(ORT_API_VERSION);
  if (!api) {
    dlclose(handle);
    fail(MMRT_ERR_BACKEND, "onnxruntime " + version + " at " + chosen + " is too old: this runtime needs API version " +
                               std::to_string(ORT_API_VERSION) + " (onnxruntime 1." + std::to_string(ORT_API_VERSION) +
                               " or newer); pip install -U onnxruntime or give a newer library");
  }
  auto lib = std::make_shared<OrtLibrary>();
  lib->api_ = api;
  lib->handle_ = handle;
  lib->path_ = chosen;
  lib->version_ = version;
  check(api, api->CreateEnv(ORT_LOGGING_LEVEL_ERROR, "mmrt", &lib->env_), "onnxruntime CreateEnv");
  check(api, api->CreateCpuMemoryInfo(OrtArenaAllocator, OrtMemTypeDefault, &lib->cpu_), "onnxruntime memory info");
  char** names = nullptr;
  int count = 0;
  check(api, api->GetAvailableProviders(&names, &count), "onnxruntime providers");
  for (int i = 0; i < count; i++) lib->providers_.push_back(names[i]);
  if (OrtStatus* s = api->ReleaseAvailableProviders(names, count)) api->ReleaseStatus(s);
  // never unloaded: sessions of other models may still use it, and ORT dislikes dlclose
  loaded[chosen] = lib;
  return lib;
}

OrtModel::OrtModel(std::shared_ptr<OrtLibrary> lib, const std::string& onnx_path, int threads, const OrtDevice& device)
    : lib_(std::move(lib)), path_(onnx_path) {
  const OrtApi* api = lib_->api();
  OrtSessionOptions* so = nullptr;
  check(api, api->CreateSessionOptions(&so), "onnxruntime session options");
  struct Release {
    const OrtApi* api;
    OrtSessionOptions* so;
    ~Release() { api->ReleaseSessionOptions(so); }
  } release{api, so};
  check(api, api->SetSessionGraphOptimizationLevel(so, ORT_ENABLE_ALL), "onnxruntime options");
  if (threads > 0) {
    check(api, api->SetIntraOpNumThreads(so, threads), "onnxruntime threads");
    check(api, api->SetInterOpNumThreads(so, 1), "onnxruntime threads");
  }
  check(api, api->SetSessionLogSeverityLevel(so, 3), "onnxruntime options");
  append_providers(*lib_, so, device);
  check(api, api->CreateSession(lib_->env(), onnx_path.c_str(), so, &session_), "onnxruntime cannot load " + onnx_path);
#ifdef __GLIBC__
  // creation leaves MBs of freed heap (the model proto, graph rewrites) that glibc would keep:
  // give it back now, before the next session or the first run grows the heap again
  malloc_trim(0);
#endif
  OrtAllocator* alloc = nullptr;
  check(api, api->GetAllocatorWithDefaultOptions(&alloc), "onnxruntime allocator");
  size_t n = 0;
  check(api, api->SessionGetInputCount(session_, &n), "onnxruntime inputs");
  for (size_t i = 0; i < n; i++) {
    char* name = nullptr;
    check(api, api->SessionGetInputName(session_, i, alloc, &name), "onnxruntime input name");
    inputs_.push_back(name);
    alloc->Free(alloc, name);
  }
  check(api, api->SessionGetOutputCount(session_, &n), "onnxruntime outputs");
  for (size_t i = 0; i < n; i++) {
    char* name = nullptr;
    check(api, api->SessionGetOutputName(session_, i, alloc, &name), "onnxruntime output name");
    outputs_.push_back(name);
    alloc->Free(alloc, name);
  }
}

OrtModel::~OrtModel() {
  if (session_) lib_->api()->ReleaseSession(session_);
}

std::vector<Tensor> OrtModel::run(const std::vector<const Tensor*>& inputs, const std::vector<std::string>& outputs) const {
  const OrtApi* api = lib_->api();
  std::vector<OrtValue*> in_values, out_values(outputs.size(), nullptr);
  struct Values {
    const OrtApi* api;
    std::vector<OrtValue*>* a;
    std::vector<OrtValue*>* b;
    ~Values() {
      for (auto* v : *a)
        if (v) api->ReleaseValue(v);
      for (auto* v : *b)
        if (v) api->ReleaseValue(v);
    }
  } release{api, &in_values, &out_values};
  std::vector<const char*> in_names, out_names;
  for (const Tensor* t : inputs) {
    OrtValue* v = nullptr;
    void* data = t->is_float ? (void*)t->f.data() : (void*)t->i.data();
    size_t bytes = t->is_float ? t->f.size() * sizeof(float) : t->i.size() * sizeof(int64_t);
    check(api,
          api->CreateTensorWithDataAsOrtValue(lib_->cpu_, data, bytes, t->shape.data(), t->shape.size(),
                                              t->is_float ? ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT
                                                          : ONNX_TENSOR_ELEMENT_DATA_TYPE_INT64,
                                              &v),
          "onnxruntime input " + t->name);
    in_values.push_back(v);
    in_names.push_back(t->name.c_str());
  }
  for (auto& o : outputs) out_names.push_back(o.c_str());
  check(api,
        api->Run(session_, nullptr, in_names.data(), in_values.data(), in_values.size(), out_names.data(),
                 out_names.size(), out_values.data()),
        "onnxruntime run of " + path_);
  std::vector<Tensor> result;
  for (size_t k = 0; k < outputs.size(); k++) {
    OrtTensorTypeAndShapeInfo* info = nullptr;
    check(api, api->GetTensorTypeAndShape(out_values[k], &info), "onnxruntime output " + outputs[k]);
    size_t nd = 0, count = 0;
    ONNXTensorElementDataType type;
    Tensor t;
    t.name = outputs[k];
    OrtStatus* s = api->GetDimensionsCount(info, &nd);
    if (!s) t.shape.resize(nd), s = api->GetDimensions(info, t.shape.data(), nd);
    if (!s) s = api->GetTensorShapeElementCount(info, &count);
    if (!s) s = api->GetTensorElementType(info, &type);
    api->ReleaseTensorTypeAndShapeInfo(info);
    check(api, s, "onnxruntime output " + outputs[k]);
    if (type != ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT)
      fail(MMRT_ERR_BACKEND, path_ + ": output " + outputs[k] + " is not float32");
    float* data = nullptr;
    check(api, api->GetTensorMutableData(out_values[k], (void**)&data), "onnxruntime output " + outputs[k]);
    t.f.assign(data, data + count);
    result.push_back(std::move(t));
  }
  return result;
}

namespace {

// IOBinding on the caller's buffers: the OrtValues only wrap them (the binding keeps its own
// references, so each wrapper is released once bound).
class OrtBound : public BoundRunner {
 public:
  OrtBound(const OrtApi* api, OrtSession* session, OrtMemoryInfo* cpu, std::string path)
      : api_(api), session_(session), cpu_(cpu), path_(std::move(path)) {
    check(api_, api_->CreateIoBinding(session_, &io_), "onnxruntime io binding");
  }
  ~OrtBound() override {
    if (io_) api_->ReleaseIoBinding(io_);
  }
  void bind_fixed(const TensorRef& t) override { bind(t, true); }
  void run(const std::vector<TensorRef>& inputs, const std::vector<TensorRef>& outputs) override {
    for (auto& t : inputs) bind(t, true);
    for (auto& t : outputs) bind(t, false);
    check(api_, api_->RunWithBinding(session_, nullptr, io_), "onnxruntime run of " + path_);
  }

 private:
  void bind(const TensorRef& t, bool input) {
    size_t count = 1;
    for (int64_t d : t.shape) count *= (size_t)d;
    OrtValue* v = nullptr;
    check(api_,
          api_->CreateTensorWithDataAsOrtValue(cpu_, t.data, count * (t.is_float ? sizeof(float) : sizeof(int64_t)),
                                               t.shape.data(), t.shape.size(),
                                               t.is_float ? ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT : ONNX_TENSOR_ELEMENT_DATA_TYPE_INT64,
                                               &v),
          "onnxruntime tensor " + t.name);
    OrtStatus* s = input ? api_->BindInput(io_, t.name.c_str(), v) : api_->BindOutput(io_, t.name.c_str(), v);
    api_->ReleaseValue(v);
    check(api_, s, "onnxruntime bind " + t.name);
  }
  const OrtApi* api_;
  OrtSession* session_;
  OrtMemoryInfo* cpu_;
  std::string path_;
  OrtIoBinding* io_ = nullptr;
};

}  // namespace

std::unique_ptr<BoundRunner> OrtModel::bind() const {
  return std::make_unique<OrtBound>(lib_->api(), session_, lib_->cpu_, path_);
}

}  // namespace mmrt
