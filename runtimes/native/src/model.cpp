#include "model.h"

#include <algorithm>
#include <cctype>
#include <cmath>
#include <functional>
#include <numeric>

#include "error.h"

namespace mmrt {

namespace {

constexpr size_t kImageBatch = 32;  // ClipPipeline.embed_images
constexpr size_t kTextBatch = 64;   // embed_texts

void l2_normalize(float* row, size_t d) {
  // scoring.py: x / max(||x||, 1e-12), in float32 as numpy does
  double sum = 0;
  for (size_t i = 0; i < d; i++) sum += (double)row[i] * row[i];
  float norm = std::max((float)std::sqrt(sum), 1e-12f);
  for (size_t i = 0; i < d; i++) row[i] /= norm;
}

size_t utf8_length(const std::string& s) {
  size_t n = 0;
  for (unsigned char c : s) n += (c & 0xC0) != 0x80;
  return n;
}

std::string strip(const std::string& s) {
  // str.strip(): ASCII whitespace is what labels carry in practice
  const char* ws = " \t\n\r\v\f";
  size_t a = s.find_first_not_of(ws), b = s.find_last_not_of(ws);
  return a == std::string::npos ? "" : s.substr(a, b - a + 1);
}

long long output_dim(const json& component) {
  const json& shape = component["outputs"][0]["shape"];
  if (!shape.empty() && shape.back().is_number_integer()) return shape.back().get<long long>();
  return 0;
}

// --device: "cpu" runs on both backends; cuda / tensorrt[:N] are ONNX Runtime's GPU providers;
// other names are OpenVINO devices (GPU, GPU.1, NPU, AUTO, ...), upper-cased as the Python runtime does.
struct DeviceChoice {
  OrtDevice ort;
  std::string ov = "CPU";
  bool on_ort = true, on_ov = true;
};

DeviceChoice parse_device(const std::string& name) {
  DeviceChoice d;
  std::string lower, upper;
  for (unsigned char c : name) lower += (char)std::tolower(c), upper += (char)std::toupper(c);
  if (lower.empty() || lower == "cpu") return d;
  const std::string known =
      "give cpu (the default), cuda or tensorrt (ONNX Runtime GPU builds; cuda:1 picks a GPU) or an OpenVINO "
      "device (GPU, GPU.1, NPU, AUTO)";
  bool printable = name.size() <= 64;
  for (unsigned char c : name) printable &= std::isalnum(c) || c == '.' || c == ':' || c == ',' || c == '_' || c == '-';
  if (!printable) fail(MMRT_ERR_INVALID_ARGUMENT, "device " + short_repr(name.substr(0, 64)) + " is not a device name: " + known);
  for (const char* ep : {"cuda", "tensorrt"}) {
    std::string e = ep;
    if (lower.compare(0, e.size(), e) != 0) continue;
    std::string rest = lower.substr(e.size());
    if (!rest.empty() && (rest[0] != ':' || rest.size() < 2 || rest.size() > 4 ||
                          rest.find_first_not_of("0123456789", 1) != std::string::npos))
      fail(MMRT_ERR_INVALID_ARGUMENT, "device " + short_repr(name) + ": write " + e + " or " + e + ":N (N: the GPU index)");
    d.ort.ep = e;
    d.ort.id = rest.empty() ? 0 : std::stoi(rest.substr(1));
    d.on_ov = false;
    return d;
  }
  std::string base = upper.substr(0, upper.find_first_of(".:"));
  for (const char* ov : {"CPU", "GPU", "NPU", "AUTO", "HETERO", "MULTI"})
    if (base == ov) {
      d.ov = upper;
      d.on_ort = false;  // ONNX Runtime has no such device here (its GPU is "cuda")
      return d;
    }
  fail(MMRT_ERR_INVALID_ARGUMENT, "unknown device " + short_repr(name) + ": " + known);
}

}  // namespace

std::string fill_template(const std::string& t, const std::string& label) {
  if (t.size() > 1000) fail(MMRT_ERR_INVALID_ARGUMENT, "template must be text of at most 1000 characters");
  std::string out, shown = "template " + short_repr(t.substr(0, 100));
  int slots = 0;
  for (size_t i = 0; i < t.size(); i++) {
    char c = t[i];
    if (c == '{' && i + 1 < t.size() && t[i + 1] == '{') out += '{', i++;
    else if (c == '}' && i + 1 < t.size() && t[i + 1] == '}') out += '}', i++;
    else if (c == '{') {
      size_t close = t.find('}', i);
      std::string field = close == std::string::npos ? "" : t.substr(i + 1, close - i - 1);
      if (close == std::string::npos || (field != "" && field != "0"))
        fail(MMRT_ERR_INVALID_ARGUMENT, shown + " has braces other than one '{}'");
      out += label, slots++, i = close;
    } else if (c == '}') {
      fail(MMRT_ERR_INVALID_ARGUMENT, shown + " has braces other than one '{}'");
    } else out += c;
  }
  if (slots != 1) fail(MMRT_ERR_INVALID_ARGUMENT, shown + " must contain '{}' where the label goes");
  return out;
}

Model::Model(const std::string& dir, const OpenOptions& o) : bundle_(Bundle::open(dir)) {
  family_ = bundle_.family();
  static const std::vector<std::string> families = {"clip", "siglip", "align", "text-embedding", "caption", "vqa"};
  if (std::find(families.begin(), families.end(), family_) == families.end())
    fail(MMRT_ERR_UNSUPPORTED, dir + ": family " + short_repr(family_) +
                                   " is not supported by the native runtime yet (it runs clip, siglip, align, "
                                   "text-embedding, caption, vqa); use the Python runtime");
  const bool generative = family_ == "caption" || family_ == "vqa";
  if (o.verify) bundle_.verify_all(true);
  for (auto [flag, v] : {std::pair<const char*, const std::string*>{"--backend", &o.backend}, {"--precision", &o.precision}})
    if (!v->empty() && v->find_first_not_of(" \t") == std::string::npos)
      fail(MMRT_ERR_INVALID_ARGUMENT, std::string(flag) + " is empty: give a name, or leave the flag out for the default variant");
  const DeviceChoice device = parse_device(o.device);
  if (o.backend == "onnxruntime" && !device.on_ort)
    fail(MMRT_ERR_INVALID_ARGUMENT, "device " + short_repr(o.device) +
                                        " is an OpenVINO device; ONNX Runtime takes cpu, cuda or tensorrt");
  if (o.backend == "openvino" && !device.on_ov)
    fail(MMRT_ERR_INVALID_ARGUMENT, "device " + short_repr(o.device) +
                                        " is an ONNX Runtime execution provider; OpenVINO takes CPU, GPU, NPU, AUTO");
  // select.py runs_here: the backend loads here and the CPU has the precision natively; a GPU-only
  // device narrows the default variant to the backend that has it
  std::string ov_error;
  auto openvino = [&]() -> std::shared_ptr<OvLibrary> {
    if (!ov_ && ov_error.empty()) {
      try {
        ov_ = OvLibrary::load("");
      } catch (const Error& e) {
        ov_error = e.what();
      }
    }
    return ov_;
  };
  auto runs_here = [&](const Artifact& a) {  // backends/*.py Capabilities.runs
    const std::string& p = a.precision;
    if (a.backend == "onnxruntime") return device.on_ort && (p == "fp32" || p == "fp16" || p == "int8" || p == "int4");
    if (a.backend == "openvino") return device.on_ov && openvino() && (device.ov != "CPU" || ov_->cpu_supports(p));
    return false;
  };
  std::string backend = o.backend;
  if (backend.empty() && device.on_ort != device.on_ov) backend = device.on_ort ? "onnxruntime" : "openvino";
  std::tie(backend_, precision_) = bundle_.select_variant(backend, o.precision, runs_here);
  if (backend_ == "openvino" && !openvino()) fail(MMRT_ERR_BACKEND, ov_error);
  if (backend_ != "onnxruntime" && backend_ != "openvino")
    fail(MMRT_ERR_BACKEND, "backend " + backend_ + " is not in the native runtime (it runs onnxruntime and openvino)");
  if ((backend_ == "onnxruntime" && !device.on_ort) || (backend_ == "openvino" && !device.on_ov))
    fail(MMRT_ERR_BACKEND, dir + ": the variant " + backend_ + "/" + precision_ + " does not run on device " + short_repr(o.device) +
                               " and the bundle has no other that does");
  device_ = backend_ == "openvino" ? device.ov : device.ort.ep + (device.ort.id ? ":" + std::to_string(device.ort.id) : "");
  const json& m = bundle_.manifest();
  std::vector<std::string> files;
  bool dual = family_ != "text-embedding";
  if (dual) files.push_back(m["preprocess"]["file"]);
  if (!m.contains("tokenizer")) fail(MMRT_ERR_BUNDLE, dir + ": manifest has no tokenizer block");
  files.push_back(m["tokenizer"]["file"]);
  bundle_.verify(files);
  if (dual) preprocess_ = Preprocessor::from_config(m["preprocess"]["config"], dir + ": manifest preprocess.config");
  const json& tb = m["tokenizer"];
  std::optional<int64_t> pad;
  if (tb.contains("pad_id")) pad = tb["pad_id"].get<int64_t>();
  try {
    tokenizer_ = TextTokenizer::from_file(bundle_.path(tb["file"]), tb["max_length"].get<size_t>(), pad,
                                          tb.value("padding", std::string("longest")) == "max_length" ? Padding::MaxLength
                                                                                                       : Padding::Longest);
  } catch (const TokenizerError& e) {
    fail(MMRT_ERR_BUNDLE, e.what());
  }
  if (generative && !m.contains("generation"))
    fail(MMRT_ERR_BUNDLE, dir + ": manifest has no 'generation': not a " + family_ + " bundle of this mmdeploy");
  if (family_ == "clip") logit_scale_ = m["clip"]["logit_scale"].get<double>();
  if (family_ == "siglip") logit_scale_ = m["siglip"]["logit_scale"].get<double>(), logit_bias_ = m["siglip"]["logit_bias"].get<double>();
  if (family_ == "align") temperature_ = m["align"]["temperature"].get<double>();
  if (backend_ == "onnxruntime") ort_ = OrtLibrary::load(o.ort_library);
  // a component's artifact, its files verified (hashing and stamps stay in this thread)
  auto artifact_of = [&](const std::string& comp) {
    if (!m["components"].contains(comp)) fail(MMRT_ERR_BUNDLE, dir + ": family " + family_ + " needs a " + comp + " component");
    auto arts = bundle_.find(comp, backend_, precision_);
    if (arts.empty()) fail(MMRT_ERR_BUNDLE, dir + ": no " + backend_ + "/" + precision_ + " artifact for " + comp);
    bundle_.verify(arts[0].files);
    return arts[0];
  };
  auto session_of = [&](const Artifact& a) -> std::unique_ptr<Session> {
    if (ort_) return std::make_unique<OrtModel>(ort_, bundle_.path(a.path), o.threads, device.ort);
    return open_openvino(ov_, bundle_.path(a.path), a.runtime, o.threads, device.ov);
  };
  auto open_component = [&](const std::string& comp) { return session_of(artifact_of(comp)); };
  if (generative) {
    open_generative(open_component);
    return;
  }
  Artifact text = artifact_of("text");
  for (auto& i : m["components"]["text"]["inputs"]) text_inputs_.push_back(i["name"]);
  long long dim = output_dim(m["components"]["text"]);
  if (dual) {
    // one after the other: opened from two threads, ONNX Runtime's session creation spins forever under
    // qemu-aarch64 (the slow tier's aarch64 tests hung 8+ min at 100% CPU)
    text_ = session_of(text);
    vision_ = session_of(artifact_of("vision"));
    if (!dim) dim = output_dim(m["components"]["vision"]);
  } else {
    text_ = session_of(text);
  }
  if (!dim && m.contains(family_ == "text-embedding" ? "text_embedding" : family_)) {
    const json& block = m[family_ == "text-embedding" ? "text_embedding" : family_];
    if (block.contains("embed_dim") && block["embed_dim"].is_number_integer()) dim = block["embed_dim"].get<long long>();
  }
  if (dim <= 0) fail(MMRT_ERR_BUNDLE, dir + ": the embedding width is not in the manifest (components.text.outputs[0].shape)");
  embed_dim_ = (size_t)dim;
}

std::string Model::info_json() const {
  json j;
  j["family"] = family_;
  j["model"] = bundle_.name();
  j["bundle"] = bundle_.root();
  j["variant"] = backend_ + "/" + precision_;
  j["backend"] = backend_;
  j["precision"] = precision_;
  j["device"] = device_;
  j["components"] = bundle_.components();
  j["embed_dim"] = embed_dim_;
  j["verified"] = bundle_.verified();
  j["library"] = ort_ ? ort_->path() : ov_->path();
  j["library_version"] = ort_ ? ort_->version() : ov_->version();
  return j.dump();
}

void Model::need(bool ok, const std::string& call, const std::string& which) const {
  if (!ok)
    fail(MMRT_ERR_UNSUPPORTED, call + " needs " + which + "; " + bundle_.root() + " is a " + family_ + " bundle");
}

std::vector<float> Model::run_vision(const std::vector<float>& pixels, size_t n, int h, int w) {
  Tensor t;
  t.name = "pixel_values";
  t.shape = {(int64_t)n, 3, h, w};
  t.f = pixels;
  auto out = vision_->run({&t}, {"image_embeds"});
  if (out[0].f.size() != n * embed_dim_)
    fail(MMRT_ERR_BACKEND, bundle_.root() + ": image_embeds has " + std::to_string(out[0].f.size()) + " values, expected " +
                               std::to_string(n * embed_dim_));
  return std::move(out[0].f);
}

void Model::require_image_encoder(const std::string& call) const {
  need(vision_ != nullptr, call, "an image encoder (clip, siglip, align)");
}

void Model::require_text_encoder(const std::string& call) const {
  need(text_ != nullptr, call, "a text encoder (clip, siglip, align, text-embedding)");
}

void Model::embed_images(const mmrt_image* images, size_t n, float* out) {
  require_image_encoder("embed images");
  for (size_t start = 0; start < n; start += kImageBatch) {
    size_t count = std::min(kImageBatch, n - start);
    std::vector<float> pixels;
    int h0 = -1, w0 = -1;
    for (size_t i = 0; i < count; i++) {
      RgbImage im = load_image(images[start + i], start + i);
      int h, w;
      preprocess_->process(im, pixels, h, w);
      if (h0 >= 0 && (h != h0 || w != w0))
        fail(MMRT_ERR_INPUT, "images came out in different sizes: this preprocessing has no center crop or fixed size, so "
                             "send them one at a time");
      h0 = h, w0 = w;
    }
    std::vector<float> emb = run_vision(pixels, count, h0, w0);
    for (size_t i = 0; i < count; i++) l2_normalize(&emb[i * embed_dim_], embed_dim_);
    std::copy(emb.begin(), emb.end(), out + start * embed_dim_);
  }
}

std::vector<float> Model::run_text_batch(const std::vector<std::string>& texts) {
  Batch b;
  try {
    b = (*tokenizer_)(texts);
  } catch (const TokenizerInputError& e) {
    fail(MMRT_ERR_INPUT, e.what());
  } catch (const TokenizerError& e) {
    fail(MMRT_ERR_BUNDLE, e.what());
  }
  Tensor ids, mask;
  ids.name = "input_ids", ids.is_float = false, ids.shape = {(int64_t)b.rows, (int64_t)b.cols}, ids.i = std::move(b.input_ids);
  mask.name = "attention_mask", mask.is_float = false, mask.shape = ids.shape, mask.i = std::move(b.attention_mask);
  std::vector<const Tensor*> feeds;
  for (auto& name : text_inputs_) {
    if (name == "input_ids") feeds.push_back(&ids);
    else if (name == "attention_mask") feeds.push_back(&mask);
    else fail(MMRT_ERR_BUNDLE, bundle_.root() + ": the text component takes " + short_repr(name) + ", which the tokenizer does not make");
  }
  auto out = text_->run(feeds, {"text_embeds"});
  if (out[0].f.size() != texts.size() * embed_dim_)
    fail(MMRT_ERR_BACKEND, bundle_.root() + ": text_embeds has " + std::to_string(out[0].f.size()) + " values, expected " +
                               std::to_string(texts.size() * embed_dim_));
  return std::move(out[0].f);
}

void Model::embed_texts(const std::vector<std::string>& texts, float* out) {
  require_text_encoder("embed texts");
  const size_t n = texts.size(), d = embed_dim_;
  std::vector<size_t> order(n);
  std::iota(order.begin(), order.end(), 0);
  // text_embedding.py batches by length, longest first (stable); the dual encoders keep the order
  if (family_ == "text-embedding")
    std::stable_sort(order.begin(), order.end(), [&](size_t a, size_t b) { return utf8_length(texts[a]) > utf8_length(texts[b]); });
  for (size_t start = 0; start < n; start += kTextBatch) {
    size_t count = std::min(kTextBatch, n - start);
    std::vector<std::string> batch;
    for (size_t i = 0; i < count; i++) batch.push_back(texts[order[start + i]]);
    std::vector<float> emb = run_text_batch(batch);
    for (size_t i = 0; i < count; i++) std::copy(&emb[i * d], &emb[i * d] + d, out + order[start + i] * d);
  }
  for (size_t i = 0; i < n; i++) l2_normalize(out + i * d, d);
}

std::vector<float> Model::classify(const mmrt_image& image, const std::vector<std::string>& labels_in,
                                   const std::string& tmpl) {
  need(vision_ != nullptr, "classify", "a dual-encoder bundle (clip, siglip, align)");
  std::vector<std::string> prompts;
  for (size_t i = 0; i < labels_in.size(); i++) {
    std::string l = strip(labels_in[i]);
    if (l.empty()) fail(MMRT_ERR_INVALID_ARGUMENT, "labels[" + std::to_string(i) + "] is blank");
    prompts.push_back(fill_template(tmpl, l));
  }
  if (prompts.size() < 2) fail(MMRT_ERR_INVALID_ARGUMENT, "give at least two labels to choose between");
  const size_t d = embed_dim_, n = prompts.size();
  std::vector<float> text(n * d), img(d);
  embed_texts(prompts, text.data());
  embed_images(&image, 1, img.data());
  std::vector<double> logits(n);
  for (size_t j = 0; j < n; j++) {
    float dot = 0;  // float32 matmul, as numpy
    for (size_t k = 0; k < d; k++) dot += img[k] * text[j * d + k];
    logits[j] = family_ == "align" ? (float)(dot / temperature_) : (float)(logit_scale_ * dot + logit_bias_);
  }
  std::vector<float> scores(n);
  if (family_ == "siglip") {
    for (size_t j = 0; j < n; j++) scores[j] = (float)(1.0 / (1.0 + std::exp(-logits[j])));
  } else {
    double mx = *std::max_element(logits.begin(), logits.end()), sum = 0;
    for (size_t j = 0; j < n; j++) sum += std::exp(logits[j] - mx);
    for (size_t j = 0; j < n; j++) scores[j] = (float)(std::exp(logits[j] - mx) / sum);
  }
  return scores;
}

}  // namespace mmrt
