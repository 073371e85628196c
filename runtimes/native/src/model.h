// One opened bundle on one (backend, precision): the dual-encoder families (clip, siglip, align)
// and text-embedding, as runtimes/pipelines/{clip,siglip,align,text_embedding}.py.
#pragma once

#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "bundle.h"
#include "image.h"
#include "ort.h"
#include "ov.h"
#include "tokenizer/tokenizer.h"

namespace mmrt {

struct OpenOptions {
  std::string backend, precision, ort_library;
  int threads = 0;
  bool verify = false;
};

class Model {
 public:
  Model(const std::string& bundle_dir, const OpenOptions& options);

  const std::string& family() const { return family_; }
  size_t embed_dim() const { return embed_dim_; }
  std::string info_json() const;

  // L2-normalised (n, embed_dim) into out. Thread safe.
  void embed_images(const mmrt_image* images, size_t n, float* out);
  void embed_texts(const std::vector<std::string>& texts, float* out);
  // scores in label order. Thread safe.
  std::vector<float> classify(const mmrt_image& image, const std::vector<std::string>& labels,
                              const std::string& prompt_template);

 private:
  void need(bool ok, const std::string& call, const std::string& which) const;
  std::vector<float> run_text_batch(const std::vector<std::string>& texts);
  std::vector<float> run_vision(const std::vector<float>& pixels, size_t n, int h, int w);

  Bundle bundle_;
  std::string family_, backend_, precision_;
  std::shared_ptr<OrtLibrary> ort_;
  std::shared_ptr<OvLibrary> ov_;
  std::unique_ptr<Session> vision_, text_;
  std::optional<Preprocessor> preprocess_;
  std::optional<TextTokenizer> tokenizer_;
  std::vector<std::string> text_inputs_;
  size_t embed_dim_ = 0;
  double logit_scale_ = 1, logit_bias_ = 0, temperature_ = 1;
};

// scoring.py check_template + str.format(label): exactly one "{}" ("{{" / "}}" are literal braces).
std::string fill_template(const std::string& tmpl, const std::string& label);

}  // namespace mmrt
