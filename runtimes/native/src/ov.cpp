#include "ov.h"

#include "error.h"

#if MMRT_WITH_OPENVINO
#include <dlfcn.h>
#include <glob.h>
#include <openvino/c/openvino.h>
#include <sys/stat.h>

#include <cstdlib>
#include <cstring>
#include <map>
#include <mutex>

#ifndef MMRT_DEFAULT_OV_LIBRARY
#define MMRT_DEFAULT_OV_LIBRARY ""
#endif

namespace mmrt {

// the C API functions used, listed once: declared in OvApi and resolved with dlsym from this list
#define OV_FUNCTIONS(X) \
  X(ov_core_create) \
  X(ov_core_get_property) \
  X(ov_core_compile_model_from_file_props) \
  X(ov_core_get_available_devices) \
  X(ov_available_devices_free) \
  X(ov_compiled_model_create_infer_request) \
  X(ov_compiled_model_free) \
  X(ov_infer_request_set_tensor) \
  X(ov_infer_request_get_tensor) \
  X(ov_infer_request_infer) \
  X(ov_infer_request_free) \
  X(ov_tensor_create_from_host_ptr) \
  X(ov_tensor_get_shape) \
  X(ov_tensor_get_element_type) \
  X(ov_tensor_get_size) \
  X(ov_tensor_data) \
  X(ov_tensor_free) \
  X(ov_shape_create) \
  X(ov_shape_free) \
  X(ov_get_openvino_version) \
  X(ov_version_free) \
  X(ov_get_last_err_msg) \
  X(ov_free)

// the C API functions used, resolved from the dlopen'd library
struct OvApi {
  void* handle = nullptr;
  ov_core_t* core = nullptr;
#define OV_FN(name) decltype(&::name) name = nullptr;
  OV_FUNCTIONS(OV_FN)
#undef OV_FN
};

namespace {

bool is_file(const std::string& p) {
  struct stat st;
  return !p.empty() && stat(p.c_str(), &st) == 0 && S_ISREG(st.st_mode);
}

void check(const OvApi& api, ov_status_e status, const std::string& what) {
  if (status == OK) return;
  std::string msg = api.ov_get_last_err_msg ? api.ov_get_last_err_msg() : "";
  auto nl = msg.find('\n');
  if (nl != std::string::npos) msg = msg.substr(0, nl);
  fail(MMRT_ERR_BACKEND, what + ": " + (msg.empty() ? "status " + std::to_string((int)status) : msg));
}

std::vector<std::string> search_paths() {
  std::vector<std::string> patterns;
  if (const char* venv = getenv("VIRTUAL_ENV")) patterns.push_back(std::string(venv) + "/lib/python3*/site-packages");
  if (const char* home = getenv("HOME")) patterns.push_back(std::string(home) + "/.local/lib/python3*/site-packages");
  for (const char* p : {"/usr/local/lib/python3*/dist-packages", "/usr/local/lib/python3*/site-packages"}) patterns.push_back(p);
  std::vector<std::string> out;
  for (auto& pat : patterns) {
    glob_t g;
    std::string full = pat + "/openvino/libs/libopenvino_c.so*";
    if (glob(full.c_str(), 0, nullptr, &g) == 0)
      for (size_t i = g.gl_pathc; i-- > 0;) out.push_back(g.gl_pathv[i]);
    globfree(&g);
  }
  return out;
}

class OvModel : public Session {
 public:
  OvModel(std::shared_ptr<OvLibrary> lib, const std::string& path, const json& runtime, int threads,
          const std::string& device)
      : lib_(std::move(lib)), path_(path) {
    const OvApi& api = *lib_->api_;
    std::string hint = "f32";
    if (runtime.contains("INFERENCE_PRECISION_HINT") && runtime["INFERENCE_PRECISION_HINT"].is_string())
      hint = runtime["INFERENCE_PRECISION_HINT"].get<std::string>();
    std::string nthreads = std::to_string(threads);
    std::vector<ov_property_t> props = {{"PERFORMANCE_HINT", "LATENCY"}, {"INFERENCE_PRECISION_HINT", hint.c_str()}};
    if (threads > 0) props.push_back({"INFERENCE_NUM_THREADS", nthreads.c_str()});
    check(api, api.ov_core_compile_model_from_file_props(api.core, path.c_str(), device.c_str(), props.size(), props.data(), &compiled_),
          "openvino cannot load " + path);
  }
  ~OvModel() override {
    if (compiled_) lib_->api_->ov_compiled_model_free(compiled_);
  }

  std::vector<Tensor> run(const std::vector<const Tensor*>& inputs, const std::vector<std::string>& outputs) const override {
    const OvApi& api = *lib_->api_;
    ov_infer_request_t* req = nullptr;
    check(api, api.ov_compiled_model_create_infer_request(compiled_, &req), "openvino infer request");
    std::vector<ov_tensor_t*> tensors;
    struct Free {
      const OvApi& api;
      ov_infer_request_t* req;
      std::vector<ov_tensor_t*>& t;
      ~Free() {
        for (auto* x : t) api.ov_tensor_free(x);
        api.ov_infer_request_free(req);
      }
    } release{api, req, tensors};
    for (const Tensor* t : inputs) {
      ov_shape_t shape;
      check(api, api.ov_shape_create((int64_t)t->shape.size(), t->shape.data(), &shape), "openvino shape");
      ov_tensor_t* tensor = nullptr;
      void* data = t->is_float ? (void*)t->f.data() : (void*)t->i.data();
      ov_status_e s = api.ov_tensor_create_from_host_ptr(t->is_float ? F32 : I64, shape, data, &tensor);
      api.ov_shape_free(&shape);
      check(api, s, "openvino input " + t->name);
      tensors.push_back(tensor);
      check(api, api.ov_infer_request_set_tensor(req, t->name.c_str(), tensor), "openvino input " + t->name);
    }
    check(api, api.ov_infer_request_infer(req), "openvino run of " + path_);
    std::vector<Tensor> result;
    for (auto& name : outputs) {
      ov_tensor_t* out = nullptr;
      check(api, api.ov_infer_request_get_tensor(req, name.c_str(), &out), "openvino output " + name);
      tensors.push_back(out);
      ov_element_type_e type;
      check(api, api.ov_tensor_get_element_type(out, &type), "openvino output " + name);
      if (type != F32) fail(MMRT_ERR_BACKEND, path_ + ": output " + name + " is not float32");
      ov_shape_t shape;
      check(api, api.ov_tensor_get_shape(out, &shape), "openvino output " + name);
      Tensor t;
      t.name = name;
      t.shape.assign(shape.dims, shape.dims + shape.rank);
      api.ov_shape_free(&shape);
      size_t n = 0;
      void* data = nullptr;
      check(api, api.ov_tensor_get_size(out, &n), "openvino output " + name);
      check(api, api.ov_tensor_data(out, &data), "openvino output " + name);
      t.f.assign((float*)data, (float*)data + n);  // copied: the request is freed with its buffers
      result.push_back(std::move(t));
    }
    return result;
  }

  std::unique_ptr<BoundRunner> bind() const override;

 private:
  std::shared_ptr<OvLibrary> lib_;
  std::string path_;
  ov_compiled_model_t* compiled_ = nullptr;
};

// The decode path on OpenVINO: an own infer request per generation; inputs shared (zero copy),
// outputs copied into the caller's buffers (runtimes/backends/openvino.py OvDecoder: output tensors
// bound to caller memory were measured to be overwritten when another request ran between steps).
class OvBound : public BoundRunner {
 public:
  OvBound(std::shared_ptr<OvLibrary> lib, ov_compiled_model_t* compiled, std::string path)
      : lib_(std::move(lib)), api_(*lib_->api_), path_(std::move(path)) {
    check(api_, api_.ov_compiled_model_create_infer_request(compiled, &req_), "openvino infer request");
  }
  ~OvBound() override {
    for (auto* t : fixed_) api_.ov_tensor_free(t);
    if (req_) api_.ov_infer_request_free(req_);
  }
  void bind_fixed(const TensorRef& t) override { fixed_.push_back(set(t)); }
  void run(const std::vector<TensorRef>& inputs, const std::vector<TensorRef>& outputs) override {
    std::vector<ov_tensor_t*> step;
    struct Free {
      const OvApi& api;
      std::vector<ov_tensor_t*>& t;
      ~Free() {
        for (auto* x : t) api.ov_tensor_free(x);
      }
    } release{api_, step};
    for (auto& t : inputs) step.push_back(set(t));
    check(api_, api_.ov_infer_request_infer(req_), "openvino run of " + path_);
    for (auto& t : outputs) {
      ov_tensor_t* out = nullptr;
      check(api_, api_.ov_infer_request_get_tensor(req_, t.name.c_str(), &out), "openvino output " + t.name);
      step.push_back(out);
      ov_element_type_e type;
      check(api_, api_.ov_tensor_get_element_type(out, &type), "openvino output " + t.name);
      if (type != F32) fail(MMRT_ERR_BACKEND, path_ + ": output " + t.name + " is not float32");
      size_t n = 0, want = 1;
      void* data = nullptr;
      for (int64_t d : t.shape) want *= (size_t)d;
      check(api_, api_.ov_tensor_get_size(out, &n), "openvino output " + t.name);
      if (n != want)
        fail(MMRT_ERR_BACKEND, path_ + ": output " + t.name + " has " + std::to_string(n) + " values, expected " + std::to_string(want));
      check(api_, api_.ov_tensor_data(out, &data), "openvino output " + t.name);
      if (n) memcpy(t.data, data, n * sizeof(float));
    }
  }

 private:
  ov_tensor_t* set(const TensorRef& t) {
    ov_shape_t shape;
    check(api_, api_.ov_shape_create((int64_t)t.shape.size(), t.shape.data(), &shape), "openvino shape");
    ov_tensor_t* tensor = nullptr;
    ov_status_e s = api_.ov_tensor_create_from_host_ptr(t.is_float ? F32 : I64, shape, t.data, &tensor);
    api_.ov_shape_free(&shape);
    check(api_, s, "openvino input " + t.name);
    s = api_.ov_infer_request_set_tensor(req_, t.name.c_str(), tensor);
    if (s != OK) api_.ov_tensor_free(tensor);
    check(api_, s, "openvino input " + t.name);
    return tensor;
  }
  std::shared_ptr<OvLibrary> lib_;
  const OvApi& api_;
  std::string path_;
  ov_infer_request_t* req_ = nullptr;
  std::vector<ov_tensor_t*> fixed_;
};

std::unique_ptr<BoundRunner> OvModel::bind() const { return std::make_unique<OvBound>(lib_, compiled_, path_); }

}  // namespace

std::shared_ptr<OvLibrary> OvLibrary::load(const std::string& requested) {
  static std::mutex mu;
  static std::map<std::string, std::shared_ptr<OvLibrary>> loaded;
  std::lock_guard<std::mutex> lock(mu);
  std::string chosen;
  const char* env_path = getenv("MMRT_OPENVINO_LIBRARY");
  if (!requested.empty() || (env_path && *env_path)) {
    chosen = !requested.empty() ? requested : env_path;
    if (!is_file(chosen)) fail(MMRT_ERR_BACKEND, "openvino library " + chosen + " is not a file");
  } else {
    std::vector<std::string> candidates = {MMRT_DEFAULT_OV_LIBRARY};
    for (auto& p : search_paths()) candidates.push_back(p);
    for (auto& c : candidates)
      if (is_file(c)) {
        chosen = c;
        break;
      }
    if (chosen.empty()) chosen = "libopenvino_c.so";
  }
  auto it = loaded.find(chosen);
  if (it != loaded.end()) return it->second;
  void* handle = dlopen(chosen.c_str(), RTLD_NOW | RTLD_LOCAL);
  if (!handle) {
    std::string why = dlerror();
    fail(MMRT_ERR_BACKEND, "cannot load openvino (" + why.substr(0, why.find('\n')) +
                               "): pip install openvino, or give libopenvino_c.so with $MMRT_OPENVINO_LIBRARY");
  }
  auto api = std::make_shared<OvApi>();
  api->handle = handle;
  bool missing = false;
  std::string first_missing;
#define OV_FN(name)                                                     \
  api->name = reinterpret_cast<decltype(api->name)>(dlsym(handle, #name)); \
  if (!api->name && !missing) missing = true, first_missing = #name;
  OV_FUNCTIONS(OV_FN)
#undef OV_FN
  if (missing) {
    dlclose(handle);
    fail(MMRT_ERR_BACKEND, chosen + " lacks " + first_missing + ": an OpenVINO older than this runtime needs (2025.x or newer)");
  }
  auto lib = std::make_shared<OvLibrary>();
  lib->api_ = api;
  lib->path_ = chosen;
  ov_version_t v;
  if (api->ov_get_openvino_version(&v) == OK) {
    lib->version_ = v.buildNumber ? v.buildNumber : "?";
    api->ov_version_free(&v);
  }
  check(*api, api->ov_core_create(&api->core), "openvino core");
  char* caps = nullptr;
  if (api->ov_core_get_property(api->core, "CPU", "OPTIMIZATION_CAPABILITIES", &caps) == OK && caps) {
    lib->capabilities_ = caps;
    api->ov_free(caps);
  }
  loaded[chosen] = lib;  // never unloaded, as ONNX Runtime
  return lib;
}

bool OvLibrary::cpu_supports(const std::string& precision) const {
  std::string need = precision == "bf16" ? "BF16" : precision == "fp16" ? "FP16" : precision == "int8" ? "INT8" : "";
  if (need.empty()) return true;
  // a space-separated list: match whole words
  std::string caps = " " + capabilities_ + " ";
  return caps.find(" " + need + " ") != std::string::npos;
}

std::vector<std::string> OvLibrary::available_devices() const {
  ov_available_devices_t d{};
  check(*api_, api_->ov_core_get_available_devices(api_->core, &d), "openvino devices");
  std::vector<std::string> out(d.devices, d.devices + d.size);
  api_->ov_available_devices_free(&d);
  return out;
}

std::unique_ptr<Session> open_openvino(std::shared_ptr<OvLibrary> lib, const std::string& xml_path, const json& runtime,
                                       int threads, const std::string& device) {
  // as runtimes/backends/openvino.py: a device this machine lacks is named with those it has
  // (AUTO / HETERO / MULTI pick among them: OpenVINO judges those at compile)
  std::string base = device.substr(0, device.find_first_of(".:"));
  if (device != "CPU" && base != "AUTO" && base != "HETERO" && base != "MULTI") {
    auto have = lib->available_devices();
    bool found = false;
    std::string list;
    for (auto& d : have) {
      found |= d == device || (device == base && d.substr(0, d.find('.')) == base);
      list += (list.empty() ? "" : ", ") + d;
    }
    if (!found)
      fail(MMRT_ERR_BACKEND, "OpenVINO device " + device + " is not available here (have: " + list + "; OpenVINO " +
                                 lib->version() + ", " + lib->path() + ")");
  }
  return std::make_unique<OvModel>(std::move(lib), xml_path, runtime, threads, device);
}

}  // namespace mmrt

#else  // built without the OpenVINO headers

namespace mmrt {
struct OvApi {};
std::shared_ptr<OvLibrary> OvLibrary::load(const std::string&) {
  fail(MMRT_ERR_BACKEND, "this native build has no OpenVINO (the openvino wheel's headers were not found at build time)");
}
bool OvLibrary::cpu_supports(const std::string&) const { return false; }
std::vector<std::string> OvLibrary::available_devices() const { return {}; }
std::unique_ptr<Session> open_openvino(std::shared_ptr<OvLibrary>, const std::string&, const json&, int, const std::string&) {
  fail(MMRT_ERR_BACKEND, "this native build has no OpenVINO");
}
}  // namespace mmrt
#endif
