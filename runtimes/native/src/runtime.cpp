// The C ABI: every entry point catches everything and turns it into a status plus a thread-local
// one-line message.
#include "mmdeploy/runtime.h"

#include <cstring>
#include <new>
#include <string>

#include "error.h"
#include "model.h"

struct mmrt_model {
  mmrt::Model impl;
};

namespace {

thread_local std::string g_last_error;

mmrt_status set_error(mmrt_status s, const std::string& message) {
  g_last_error = message;
  for (auto& c : g_last_error)
    if (c == '\n' || c == '\r') c = ' ';
  return s;
}

template <class F>
mmrt_status guard(F&& f) {
  try {
    g_last_error.clear();
    f();
    return MMRT_OK;
  } catch (const mmrt::Error& e) {
    return set_error(e.status(), e.what());
  } catch (const mmrt::TokenizerInputError& e) {
    return set_error(MMRT_ERR_INPUT, e.what());
  } catch (const mmrt::TokenizerError& e) {
    return set_error(MMRT_ERR_BUNDLE, e.what());
  } catch (const std::bad_alloc&) {
    return set_error(MMRT_ERR_OUT_OF_MEMORY, "out of memory");
  } catch (const std::exception& e) {
    return set_error(MMRT_ERR_INTERNAL, std::string("internal error: ") + e.what());
  } catch (...) {
    return set_error(MMRT_ERR_INTERNAL, "internal error: unknown exception");
  }
}

void need(const void* p, const char* what) {
  if (!p) mmrt::fail(MMRT_ERR_INVALID_ARGUMENT, std::string(what) + " is NULL");
}

// how many bytes of a caller's struct this library may read
template <class T>
T read_struct(const T* in, const char* what) {
  T out;
  memset(&out, 0, sizeof out);
  if (!in) return out;
  size_t n = in->struct_size;
  if (n < sizeof(size_t) || n > (1u << 16))
    mmrt::fail(MMRT_ERR_INVALID_ARGUMENT, std::string(what) + ".struct_size " + std::to_string(n) +
                                              " is not a struct size: set it to sizeof(" + what + ")");
  memcpy(&out, in, n < sizeof out ? n : sizeof out);
  return out;
}

}  // namespace

extern "C" {

const char* mmrt_last_error(void) { return g_last_error.c_str(); }

const char* mmrt_status_name(mmrt_status status) {
  int s = 0;  // any int from C: compared as an int (an out-of-range C++ enum is UB)
  memcpy(&s, &status, sizeof s);
  switch (s) {
    case MMRT_OK: return "MMRT_OK";
    case MMRT_ERR_INVALID_ARGUMENT: return "MMRT_ERR_INVALID_ARGUMENT";
    case MMRT_ERR_INPUT: return "MMRT_ERR_INPUT";
    case MMRT_ERR_BUNDLE: return "MMRT_ERR_BUNDLE";
    case MMRT_ERR_BACKEND: return "MMRT_ERR_BACKEND";
    case MMRT_ERR_UNSUPPORTED: return "MMRT_ERR_UNSUPPORTED";
    case MMRT_ERR_BUFFER_TOO_SMALL: return "MMRT_ERR_BUFFER_TOO_SMALL";
    case MMRT_ERR_OUT_OF_MEMORY: return "MMRT_ERR_OUT_OF_MEMORY";
    case MMRT_ERR_NOT_IMPLEMENTED: return "MMRT_ERR_NOT_IMPLEMENTED";
    case MMRT_ERR_CANCELLED: return "MMRT_ERR_CANCELLED";
    case MMRT_ERR_INTERNAL: return "MMRT_ERR_INTERNAL";
  }
  return "MMRT_ERR_UNKNOWN";
}

const char* mmrt_version(void) { return MMRT_VERSION; }

void mmrt_open_options_init(mmrt_open_options* o) {
  if (!o) return;
  memset(o, 0, sizeof *o);
  o->struct_size = sizeof *o;
}

void mmrt_image_init(mmrt_image* im) {
  if (!im) return;
  memset(im, 0, sizeof *im);
  im->struct_size = sizeof *im;
}

void mmrt_generate_options_init(mmrt_generate_options* o) {
  if (!o) return;
  memset(o, 0, sizeof *o);
  o->struct_size = sizeof *o;
}

mmrt_status mmrt_model_open(const char* bundle_dir, const mmrt_open_options* options, mmrt_model** model) {
  if (model) *model = nullptr;
  return guard([&] {
    need(model, "model (the out pointer)");
    need(bundle_dir, "bundle_dir");
    mmrt_open_options o = read_struct(options, "mmrt_open_options");
    mmrt::OpenOptions opts;
    if (o.backend) opts.backend = o.backend;
    if (o.precision) opts.precision = o.precision;
    if (o.ort_library) opts.ort_library = o.ort_library;
    if (o.device) opts.device = o.device;
    if (o.threads < 0 || o.threads > 1024)
      mmrt::fail(MMRT_ERR_INVALID_ARGUMENT, "threads " + std::to_string(o.threads) + " must be between 0 and 1024");
    opts.threads = o.threads;
    opts.verify = o.verify != 0;
    *model = new mmrt_model{mmrt::Model(bundle_dir, opts)};
  });
}

void mmrt_model_close(mmrt_model* model) {
  try {
    delete model;
  } catch (...) {
  }
}

mmrt_status mmrt_model_info_json(const mmrt_model* model, char* buffer, size_t capacity, size_t* needed) {
  return guard([&] {
    need(model, "model");
    std::string s = model->impl.info_json();
    if (needed) *needed = s.size() + 1;
    if (!buffer && capacity == 0 && needed) return;
    need(buffer, "buffer");
    if (capacity < s.size() + 1)
      mmrt::fail(MMRT_ERR_BUFFER_TOO_SMALL, "info buffer holds " + std::to_string(capacity) + " bytes, " +
                                                std::to_string(s.size() + 1) + " needed");
    memcpy(buffer, s.c_str(), s.size() + 1);
  });
}

mmrt_status mmrt_model_embed_dim(const mmrt_model* model, size_t* dim) {
  return guard([&] {
    need(model, "model");
    need(dim, "dim");
    *dim = model->impl.embed_dim();
  });
}

static void check_capacity(size_t count, size_t dim, size_t capacity, const char* what) {
  if (count * dim > capacity)
    mmrt::fail(MMRT_ERR_BUFFER_TOO_SMALL, std::string(what) + ": out holds " + std::to_string(capacity) + " floats, " +
                                              std::to_string(count) + " x " + std::to_string(dim) + " = " +
                                              std::to_string(count * dim) + " needed");
}

mmrt_status mmrt_embed_images(mmrt_model* model, const mmrt_image* images, size_t count, float* out, size_t capacity) {
  return guard([&] {
    need(model, "model");
    model->impl.require_image_encoder("embed images");  // before the buffers: embed_dim is 0 there
    need(images, "images");
    need(out, "out");
    if (count == 0) mmrt::fail(MMRT_ERR_INVALID_ARGUMENT, "no images given (count is 0)");
    check_capacity(count, model->impl.embed_dim(), capacity, "embed images");
    std::vector<mmrt_image> copies;
    for (size_t i = 0; i < count; i++)
      copies.push_back(read_struct(&images[i], ("images[" + std::to_string(i) + "]").c_str()));
    model->impl.embed_images(copies.data(), count, out);
  });
}

mmrt_status mmrt_embed_texts(mmrt_model* model, const char* const* texts, size_t count, float* out, size_t capacity) {
  return guard([&] {
    need(model, "model");
    model->impl.require_text_encoder("embed texts");
    need(texts, "texts");
    need(out, "out");
    if (count == 0) mmrt::fail(MMRT_ERR_INVALID_ARGUMENT, "no texts given (count is 0)");
    check_capacity(count, model->impl.embed_dim(), capacity, "embed texts");
    std::vector<std::string> v;
    for (size_t i = 0; i < count; i++) {
      if (!texts[i]) mmrt::fail(MMRT_ERR_INVALID_ARGUMENT, "texts[" + std::to_string(i) + "] is NULL");
      v.emplace_back(texts[i]);
    }
    model->impl.embed_texts(v, out);
  });
}

mmrt_status mmrt_classify(mmrt_model* model, const mmrt_image* image, const char* const* labels, size_t count,
                          const char* prompt_template, float* scores, size_t capacity) {
  return guard([&] {
    need(model, "model");
    need(image, "image");
    need(labels, "labels");
    need(scores, "scores");
    if (capacity < count)
      mmrt::fail(MMRT_ERR_BUFFER_TOO_SMALL, "scores holds " + std::to_string(capacity) + " floats, " +
                                                std::to_string(count) + " labels given");
    std::vector<std::string> v;
    for (size_t i = 0; i < count; i++) {
      if (!labels[i]) mmrt::fail(MMRT_ERR_INVALID_ARGUMENT, "labels[" + std::to_string(i) + "] is NULL");
      v.emplace_back(labels[i]);
    }
    mmrt_image im = read_struct(image, "image");
    auto s = model->impl.classify(im, v, prompt_template ? prompt_template : "{}");
    std::copy(s.begin(), s.end(), scores);
  });
}

}  // extern "C"

namespace {

mmrt::GenerateRequest request_of(const mmrt_generate_options* options, bool* has_result, mmrt_generate_options* o) {
  *o = read_struct(options, "mmrt_generate_options");
  mmrt::GenerateRequest r;
  r.max_new_tokens = o->max_new_tokens;
  r.num_beams = o->num_beams;
  if (o->prompt) r.prompt = o->prompt;
  if (o->on_token) {
    mmrt_token_callback cb = o->on_token;
    void* user = o->user;
    r.on_text = [cb, user](size_t index, int64_t id, const std::string& text) { return cb(user, index, id, text.c_str()) == 0; };
  }
  *has_result = o->on_result != nullptr;
  return r;
}

// results into the caller's buffers (and its on_result); a text that does not fit is named
void deliver(const std::vector<mmrt::Generated>& got, const mmrt_generate_options& o, char** texts, size_t capacity,
             const char* what) {
  if (o.on_result)
    for (size_t i = 0; i < got.size(); i++) o.on_result(o.user, i, got[i].ids.data(), got[i].ids.size(), got[i].text.c_str());
  if (!texts) return;
  std::string too_small;
  for (size_t i = 0; i < got.size(); i++) {
    const std::string& t = got[i].text;
    if (!texts[i]) continue;  // checked before generation; kept safe
    if (t.size() + 1 <= capacity) {
      memcpy(texts[i], t.c_str(), t.size() + 1);
    } else {
      if (capacity) texts[i][0] = '\0';
      if (too_small.empty())
        too_small = std::string(what) + "[" + std::to_string(i) + "] needs " + std::to_string(t.size() + 1) +
                    " bytes, capacity is " + std::to_string(capacity);
    }
  }
  if (!too_small.empty()) mmrt::fail(MMRT_ERR_BUFFER_TOO_SMALL, too_small);
}

void check_outputs(char** texts, size_t capacity, size_t count, bool has_result, const char* what) {
  if (!texts) {
    if (!has_result) mmrt::fail(MMRT_ERR_INVALID_ARGUMENT, std::string(what) + " is NULL (and no on_result callback takes the results)");
    if (capacity) mmrt::fail(MMRT_ERR_INVALID_ARGUMENT, std::string(what) + " is NULL with capacity " + std::to_string(capacity));
    return;
  }
  if (capacity == 0) mmrt::fail(MMRT_ERR_INVALID_ARGUMENT, "capacity is 0: each of " + std::string(what) + " needs room for a text and its NUL");
  for (size_t i = 0; i < count; i++)
    if (!texts[i]) mmrt::fail(MMRT_ERR_INVALID_ARGUMENT, std::string(what) + "[" + std::to_string(i) + "] is NULL");
}

std::vector<mmrt_image> image_copies(const mmrt_image* images, size_t count) {
  std::vector<mmrt_image> copies;
  for (size_t i = 0; i < count; i++) copies.push_back(read_struct(&images[i], ("images[" + std::to_string(i) + "]").c_str()));
  return copies;
}

}  // namespace

extern "C" {

mmrt_status mmrt_caption(mmrt_model* model, const mmrt_image* images, size_t count, const mmrt_generate_options* options,
                         char** texts, size_t capacity) {
  return guard([&] {
    need(model, "model");
    need(images, "images");
    if (count == 0) mmrt::fail(MMRT_ERR_INVALID_ARGUMENT, "no images given (count is 0)");
    mmrt_generate_options o;
    bool has_result = false;
    mmrt::GenerateRequest r = request_of(options, &has_result, &o);
    check_outputs(texts, capacity, count, has_result, "texts");
    auto copies = image_copies(images, count);
    deliver(model->impl.caption(copies.data(), count, r), o, texts, capacity, "texts");
  });
}

mmrt_status mmrt_vqa(mmrt_model* model, const mmrt_image* images, const char* const* questions, size_t count,
                     const mmrt_generate_options* options, char** answers, size_t capacity) {
  return guard([&] {
    need(model, "model");
    need(images, "images");
    need(questions, "questions");
    if (count == 0) mmrt::fail(MMRT_ERR_INVALID_ARGUMENT, "no questions given (count is 0)");
    mmrt_generate_options o;
    bool has_result = false;
    mmrt::GenerateRequest r = request_of(options, &has_result, &o);
    check_outputs(answers, capacity, count, has_result, "answers");
    std::vector<std::string> qs;
    for (size_t i = 0; i < count; i++) {
      if (!questions[i]) mmrt::fail(MMRT_ERR_INVALID_ARGUMENT, "questions[" + std::to_string(i) + "] is NULL");
      qs.emplace_back(questions[i]);
    }
    auto copies = image_copies(images, count);
    deliver(model->impl.answer(copies.data(), qs, r), o, answers, capacity, "answers");
  });
}

}  // extern "C"
