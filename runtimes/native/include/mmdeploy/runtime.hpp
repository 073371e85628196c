// Header-only C++ wrapper of runtime.h: RAII handles, std types, and mmdeploy::Error{status, message}
// thrown for every failed status.
#pragma once

#include <mmdeploy/runtime.h>

#include <algorithm>
#include <cstdint>
#include <functional>
#include <stdexcept>
#include <string>
#include <utility>
#include <vector>

namespace mmdeploy {

class Error : public std::runtime_error {
 public:
  Error(mmrt_status status, const std::string& message) : std::runtime_error(message), status(status) {}
  mmrt_status status;
  // A mistake of the caller or its inputs (the mmrt CLI exits 2 on these), not a bug.
  bool user_error() const {
    return status != MMRT_ERR_INTERNAL && status != MMRT_ERR_OUT_OF_MEMORY;
  }
};

inline void check(mmrt_status s) {
  if (s != MMRT_OK) throw Error(s, mmrt_last_error());
}

struct OpenOptions {
  std::string backend, precision, ort_library;
  std::string device;  // "" / "cpu", "cuda", "tensorrt", or an OpenVINO device ("GPU")
  int threads = 0;
  bool verify = false;
};

// An image for embed / classify: a file, encoded bytes, or pixels in memory (not copied: keep the
// buffer alive during the call).
class Image {
 public:
  static Image file(std::string path) {
    Image im;
    im.path_ = std::move(path);
    im.raw_.kind = MMRT_IMAGE_FILE;
    return im;
  }
  static Image encoded(const void* data, size_t size) {
    Image im;
    im.raw_.kind = MMRT_IMAGE_ENCODED, im.raw_.data = data, im.raw_.size = size;
    return im;
  }
  static Image pixels(const uint8_t* data, int width, int height, mmrt_pixel_format format, size_t stride = 0) {
    Image im;
    im.raw_.kind = MMRT_IMAGE_PIXELS, im.raw_.pixels = data, im.raw_.width = width, im.raw_.height = height;
    im.raw_.format = format, im.raw_.stride = stride;
    return im;
  }
  mmrt_image raw() const {
    mmrt_image r = raw_;
    if (r.kind == MMRT_IMAGE_FILE) r.path = path_.c_str();
    return r;
  }

 private:
  Image() { mmrt_image_init(&raw_); }
  mmrt_image raw_;
  std::string path_;
};

struct Score {
  std::string label;
  float score;
};

// One caption / answer: its text and token ids (start ids included, as the Python runtime's).
struct Generated {
  std::string text;
  std::vector<int64_t> ids;
};

struct GenerateOptions {
  int max_new_tokens = 0;  // 0: the checkpoint's
  int num_beams = 0;       // 0: the checkpoint's; 1: greedy
  std::string prompt;      // caption only
  // (row, newest id, text so far) whenever a row's text changes; return false to end that row
  std::function<bool(size_t, int64_t, const std::string&)> on_text;
};

class Model {
 public:
  explicit Model(const std::string& bundle_dir, const OpenOptions& o = {}) {
    mmrt_open_options opts;
    mmrt_open_options_init(&opts);
    opts.backend = o.backend.empty() ? nullptr : o.backend.c_str();
    opts.precision = o.precision.empty() ? nullptr : o.precision.c_str();
    opts.ort_library = o.ort_library.empty() ? nullptr : o.ort_library.c_str();
    opts.device = o.device.empty() ? nullptr : o.device.c_str();
    opts.threads = o.threads;
    opts.verify = o.verify ? 1 : 0;
    check(mmrt_model_open(bundle_dir.c_str(), &opts, &m_));
  }
  ~Model() { mmrt_model_close(m_); }
  Model(const Model&) = delete;
  Model& operator=(const Model&) = delete;
  Model(Model&& o) noexcept : m_(std::exchange(o.m_, nullptr)) {}
  Model& operator=(Model&& o) noexcept {
    std::swap(m_, o.m_);
    return *this;
  }

  mmrt_model* get() const { return m_; }

  std::string info_json() const {
    size_t n = 0;
    check(mmrt_model_info_json(m_, nullptr, 0, &n));
    std::string s(n, '\0');
    check(mmrt_model_info_json(m_, &s[0], n, &n));
    s.resize(n - 1);
    return s;
  }
  size_t embed_dim() const {
    size_t d = 0;
    check(mmrt_model_embed_dim(m_, &d));
    return d;
  }
  // one row of embed_dim() floats per image
  std::vector<std::vector<float>> embed_images(const std::vector<Image>& images) {
    std::vector<mmrt_image> raw;
    for (auto& im : images) raw.push_back(im.raw());
    return rows(embed_dim(), images.size(), [&](float* out, size_t cap) {
      return mmrt_embed_images(m_, raw.data(), raw.size(), out, cap);
    });
  }
  std::vector<std::vector<float>> embed_texts(const std::vector<std::string>& texts) {
    std::vector<const char*> raw;
    for (auto& t : texts) raw.push_back(t.c_str());
    return rows(embed_dim(), texts.size(), [&](float* out, size_t cap) {
      return mmrt_embed_texts(m_, raw.data(), raw.size(), out, cap);
    });
  }
  // best first, as the Python runtime's classify
  std::vector<Score> classify(const Image& image, const std::vector<std::string>& labels,
                              const std::string& prompt_template = "{}") {
    std::vector<const char*> raw;
    for (auto& l : labels) raw.push_back(l.c_str());
    std::vector<float> scores(labels.size());
    mmrt_image im = image.raw();
    check(mmrt_classify(m_, &im, raw.data(), raw.size(), prompt_template.c_str(), scores.data(), scores.size()));
    std::vector<Score> out;
    for (size_t i = 0; i < labels.size(); i++) out.push_back({labels[i], scores[i]});
    std::stable_sort(out.begin(), out.end(), [](const Score& a, const Score& b) { return a.score > b.score; });
    return out;
  }
  // one per image
  std::vector<Generated> caption(const std::vector<Image>& images, const GenerateOptions& o = {}) {
    std::vector<mmrt_image> raw;
    for (auto& im : images) raw.push_back(im.raw());
    return generate(o, raw.size(), [&](const mmrt_generate_options* opts) {
      return mmrt_caption(m_, raw.data(), raw.size(), opts, nullptr, 0);
    });
  }
  // one per (images[i], questions[i])
  std::vector<Generated> answer(const std::vector<Image>& images, const std::vector<std::string>& questions,
                                const GenerateOptions& o = {}) {
    if (images.size() != questions.size())
      throw Error(MMRT_ERR_INVALID_ARGUMENT, "give one image per question");
    std::vector<mmrt_image> raw;
    for (auto& im : images) raw.push_back(im.raw());
    std::vector<const char*> qs;
    for (auto& q : questions) qs.push_back(q.c_str());
    return generate(o, raw.size(), [&](const mmrt_generate_options* opts) {
      return mmrt_vqa(m_, raw.data(), qs.data(), qs.size(), opts, nullptr, 0);
    });
  }

 private:
  template <class F>
  static std::vector<std::vector<float>> rows(size_t dim, size_t n, F&& call) {
    std::vector<float> flat(dim * n);
    check(call(flat.data(), flat.size()));
    std::vector<std::vector<float>> out;
    for (size_t i = 0; i < n; i++) out.emplace_back(flat.begin() + i * dim, flat.begin() + (i + 1) * dim);
    return out;
  }
  template <class F>
  static std::vector<Generated> generate(const GenerateOptions& o, size_t n, F&& call) {
    struct State {
      const GenerateOptions* o;
      std::vector<Generated> out;
    } state{&o, std::vector<Generated>(n)};
    mmrt_generate_options opts;
    mmrt_generate_options_init(&opts);
    opts.max_new_tokens = o.max_new_tokens;
    opts.num_beams = o.num_beams;
    opts.prompt = o.prompt.empty() ? nullptr : o.prompt.c_str();
    opts.user = &state;
    opts.on_result = [](void* user, size_t i, const int64_t* ids, size_t count, const char* text) {
      auto* s = static_cast<State*>(user);
      s->out[i].text = text;
      s->out[i].ids.assign(ids, ids + count);
    };
    if (o.on_text)
      opts.on_token = [](void* user, size_t i, int64_t id, const char* text) -> int {
        try {  // nothing may be thrown through the C library
          return static_cast<State*>(user)->o->on_text(i, id, text) ? 0 : 1;
        } catch (...) {
          return 1;
        }
      };
    check(call(&opts));
    return std::move(state.out);
  }
  mmrt_model* m_ = nullptr;
};

}  // namespace mmdeploy
