// One opened bundle on one (backend, precision): the dual-encoder families (clip, siglip, align),
// text-embedding, caption and vqa, as runtimes/pipelines/{clip,siglip,align,text_embedding,caption,vqa}.py.
#pragma once

#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "bundle.h"
#include "generate.h"
#include "image.h"
#include "ort.h"
#include "ov.h"
#include "tokenizer/tokenizer.h"

namespace mmrt {

// What a caption / answer call asks beyond the bundle's generation defaults.
struct GenerateRequest {
  int max_new_tokens = 0, num_beams = 0;  // 0: the checkpoint's
  std::string prompt;                     // caption only; empty: none
  // (row, its last id, its text so far) whenever a row's text changes (greedy: each step; beam
  // search: once at the end) -> false to end that row now (CaptionPipeline._streamer)
  std::function<bool(size_t, int64_t, const std::string&)> on_text;
};

struct Generated {
  std::vector<int64_t> ids;  // start ids included, padding after eos kept (generate_ids)
  std::string text;          // decode(skip_special_tokens=True).strip()
};

struct OpenOptions {
  std::string backend, precision, ort_library, device;  // device: "" = cpu
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
  // caption.py CaptionPipeline.caption / vqa.py VqaPipeline.answer (one question per image). Thread safe.
  std::vector<Generated> caption(const mmrt_image* images, size_t n, const GenerateRequest& request);
  std::vector<Generated> answer(const mmrt_image* images, const std::vector<std::string>& questions,
                                const GenerateRequest& request);
  bool generative() const { return decoder_ != nullptr; }
  // Error(MMRT_ERR_UNSUPPORTED) naming the family when this bundle has no such encoder
  void require_image_encoder(const std::string& call) const;
  void require_text_encoder(const std::string& call) const;

 private:
  void need(bool ok, const std::string& call, const std::string& which) const;
  std::vector<float> run_text_batch(const std::vector<std::string>& texts);
  std::vector<float> run_vision(const std::vector<float>& pixels, size_t n, int h, int w);
  void open_generative(const std::function<std::unique_ptr<Session>(const std::string&)>& open_component);
  GenerationConfig generation_for(const GenerateRequest& request, bool with_prompt) const;
  std::vector<float> pixels_of(const mmrt_image* images, size_t n, size_t first, int& h, int& w) const;
  // the decoder over one batch's encoder K/V (rows of kv); index: the caller's index of each row
  std::vector<Generated> run_generation(const std::vector<Tensor>& kv, size_t rows, const GenerationConfig& cfg,
                                        const GenerateRequest& request, const std::vector<size_t>& index);
  std::string decode(const int64_t* ids, size_t n) const;

  Bundle bundle_;
  std::string family_, backend_, precision_, device_;
  std::shared_ptr<OrtLibrary> ort_;
  std::shared_ptr<OvLibrary> ov_;
  std::unique_ptr<Session> vision_, text_;
  std::optional<Preprocessor> preprocess_;
  std::optional<TextTokenizer> tokenizer_;
  std::vector<std::string> text_inputs_;
  size_t embed_dim_ = 0;
  // caption (encoder, decoder) and vqa (vision, question, decoder)
  std::unique_ptr<Session> encoder_, question_, decoder_;
  std::optional<GenerationConfig> generation_;
  std::vector<std::string> encoder_outputs_;
  int num_layers_ = 0, num_heads_ = 0, head_dim_ = 0;
  size_t vocab_ = 0, max_question_tokens_ = 512;
  bool cross_ = true;
  double logit_scale_ = 1, logit_bias_ = 0, temperature_ = 1;
};

// scoring.py check_template + str.format(label): exactly one "{}" ("{{" / "}}" are literal braces).
std::string fill_template(const std::string& tmpl, const std::string& label);

}  // namespace mmrt
