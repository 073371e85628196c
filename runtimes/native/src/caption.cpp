// Caption (ViT-GPT2, BLIP, GIT) and VQA (BLIP) as runtimes/pipelines/caption.py and vqa.py: the
// encoder graph once per batch (cross K/V, or GIT's image-token past), then the decoder step with
// its KV cache in two buffers allocated once per batch (ping-pong: a step reads past from one and
// the backend writes present into the other), greedy or beam search from generate.cpp.
#include <algorithm>
#include <cstring>
#include <map>

#include "error.h"
#include "model.h"

namespace mmrt {

namespace {

constexpr size_t kBatch = 8;                // CaptionPipeline.caption / VqaPipeline.answer batch_size
constexpr size_t kMaxQuestionChars = 2000;  // vqa.py MAX_QUESTION_CHARS

size_t count_elements(const std::vector<int64_t>& shape) {
  size_t n = 1;
  for (int64_t d : shape) n *= (size_t)d;
  return n;
}

// rows of a (n, ...) tensor, in this order (numpy's v[rows])
Tensor take_rows(const Tensor& t, const std::vector<int64_t>& rows) {
  Tensor out;
  out.name = t.name;
  out.shape = t.shape;
  out.shape[0] = (int64_t)rows.size();
  size_t row = count_elements(t.shape) / (size_t)t.shape[0];
  out.f.resize(rows.size() * row);
  for (size_t i = 0; i < rows.size(); i++) std::copy_n(&t.f[(size_t)rows[i] * row], row, &out.f[i * row]);
  return out;
}

// caption.py SessionDecoder + backends' decoders: the cache in two buffers with room for the whole
// generation; the fixed inputs (cross K/V) bound once per batch.
class CacheDecoder : public StepDecoder {
 public:
  CacheDecoder(const Session& session, const std::vector<Tensor>& encoder_kv, int layers, int heads, int head_dim,
               bool cross, size_t vocab)
      : session_(session), encoder_kv_(encoder_kv), layers_(layers), heads_(heads), head_dim_(head_dim), cross_(cross),
        vocab_(vocab) {
    for (int i = 0; i < layers; i++)
      for (const char* kv : {"key", "value"}) {
        past_names_.push_back("past." + std::to_string(i) + "." + kv);
        present_names_.push_back("present." + std::to_string(i) + "." + kv);
      }
  }

  size_t vocab() const override { return vocab_; }

  void start(const std::vector<int64_t>& rows, size_t room) override {
    rows_ = rows.size();
    fixed_.clear();
    std::vector<Tensor> past;
    for (const Tensor& t : encoder_kv_) (cross_ ? fixed_ : past).push_back(take_rows(t, rows));
    const size_t n = past_names_.size();
    lengths0_.assign(n, 0);
    heads_of_.assign(n, heads_);
    dims_of_.assign(n, head_dim_);
    if (!cross_) {
      // GIT: the image tokens are the first past
      for (size_t i = 0; i < n; i++) {
        auto it = std::find_if(past.begin(), past.end(), [&](const Tensor& t) { return t.name == past_names_[i]; });
        if (it == past.end()) fail(MMRT_ERR_BUNDLE, "the encoder makes no " + past_names_[i] + " for the decoder");
        if (it->shape.size() != 4) fail(MMRT_ERR_BUNDLE, "encoder output " + it->name + " is not (batch, heads, length, head_dim)");
        heads_of_[i] = (int)it->shape[1], lengths0_[i] = (size_t)it->shape[2], dims_of_[i] = (int)it->shape[3];
      }
    }
    length_ = lengths0_.empty() ? 0 : lengths0_[0];
    for (int s = 0; s < 2; s++) buffers_[s].resize(n);
    for (size_t i = 0; i < n; i++) {
      size_t size = rows_ * heads_of_[i] * (lengths0_[i] + room) * dims_of_[i];
      buffers_[0][i].resize(size);  // no-op on reuse of the same size
      buffers_[1][i].resize(size);
      if (!cross_) {
        auto it = std::find_if(past.begin(), past.end(), [&](const Tensor& t) { return t.name == past_names_[i]; });
        std::copy(it->f.begin(), it->f.end(), buffers_[0][i].begin());
      }
    }
    room_ = room;
    side_ = 0;
    logits_.resize(rows_ * vocab_);
    runner_ = session_.bind();
    for (Tensor& t : fixed_) runner_->bind_fixed(TensorRef{t.name, true, t.shape, t.f.data()});
    // the per-step refs: shapes and pointers change, the vectors are reused
    inputs_.assign(2 + n, TensorRef{});
    inputs_[0] = TensorRef{"input_ids", false, {}, nullptr};
    inputs_[1] = TensorRef{"position_ids", false, {}, nullptr};
    outputs_.assign(1 + n, TensorRef{});
    outputs_[0] = TensorRef{"logits", true, {(int64_t)rows_, (int64_t)vocab_}, logits_.data()};
    for (size_t i = 0; i < n; i++) inputs_[2 + i].name = past_names_[i], outputs_[1 + i].name = present_names_[i];
  }

  const float* step(const std::vector<int64_t>& ids, const std::vector<int64_t>& positions, size_t seq) override {
    const size_t n = past_names_.size(), n_past = length_, n_present = n_past + seq;
    if (n_present - lengths0_[0] > room_)
      fail(MMRT_ERR_INTERNAL, "the decoder ran past the " + std::to_string(room_) + " positions it was given room for");
    std::vector<float>*src = buffers_[side_].data(), *dst = buffers_[1 - side_].data();
    inputs_[0].shape = inputs_[1].shape = {(int64_t)rows_, (int64_t)seq};
    inputs_[0].data = const_cast<int64_t*>(ids.data());
    inputs_[1].data = const_cast<int64_t*>(positions.data());
    for (size_t i = 0; i < n; i++) {
      inputs_[2 + i].shape = {(int64_t)rows_, heads_of_[i], (int64_t)n_past, dims_of_[i]};
      inputs_[2 + i].data = src[i].data();
      outputs_[1 + i].shape = {(int64_t)rows_, heads_of_[i], (int64_t)n_present, dims_of_[i]};
      outputs_[1 + i].data = dst[i].data();
    }
    runner_->run(inputs_, outputs_);
    side_ = 1 - side_;
    length_ = n_present;
    return logits_.data();
  }

  void reorder(const std::vector<int64_t>& rows) override {
    std::vector<float>*src = buffers_[side_].data(), *dst = buffers_[1 - side_].data();
    for (size_t i = 0; i < past_names_.size(); i++) {
      size_t row = (size_t)heads_of_[i] * length_ * dims_of_[i];
      for (size_t r = 0; r < rows.size(); r++) std::copy_n(&src[i][(size_t)rows[r] * row], row, &dst[i][r * row]);
    }
    side_ = 1 - side_;
  }

 private:
  const Session& session_;
  const std::vector<Tensor>& encoder_kv_;
  int layers_, heads_, head_dim_;
  bool cross_;
  size_t vocab_, rows_ = 0, length_ = 0, room_ = 0;
  int side_ = 0;
  std::vector<std::string> past_names_, present_names_;
  std::vector<size_t> lengths0_;
  std::vector<int> heads_of_, dims_of_;
  std::vector<Tensor> fixed_;
  std::vector<std::vector<float>> buffers_[2];
  std::vector<float> logits_;
  std::unique_ptr<BoundRunner> runner_;
  std::vector<TensorRef> inputs_, outputs_;
};

// Python's str.strip(): Unicode whitespace (str.isspace) at both ends
bool space_at(const std::string& s, size_t i, size_t& len) {
  unsigned char c = (unsigned char)s[i];
  if (c == ' ' || (c >= 0x09 && c <= 0x0d) || (c >= 0x1c && c <= 0x1f)) return len = 1, true;
  auto cp = [&](size_t n) -> uint32_t {
    if (i + n > s.size()) return 0;
    uint32_t v = c & (0xff >> (n + 1));
    for (size_t k = 1; k < n; k++) v = (v << 6) | ((unsigned char)s[i + k] & 0x3f);
    return v;
  };
  uint32_t u = (c & 0xe0) == 0xc0 ? (len = 2, cp(2)) : (c & 0xf0) == 0xe0 ? (len = 3, cp(3)) : 0;
  return u == 0x85 || u == 0xa0 || u == 0x1680 || (u >= 0x2000 && u <= 0x200a) || u == 0x2028 || u == 0x2029 ||
         u == 0x202f || u == 0x205f || u == 0x3000;
}

std::string py_strip(const std::string& s) {
  size_t a = 0, len = 0;
  while (a < s.size() && space_at(s, a, len)) a += len;
  size_t b = s.size();
  while (b > a) {
    size_t start = b - 1;
    while (start > a && ((unsigned char)s[start] & 0xc0) == 0x80) start--;
    if (!space_at(s, start, len) || start + len != b) break;
    b = start;
  }
  return s.substr(a, b - a);
}

size_t utf8_chars(const std::string& s) {
  size_t n = 0;
  for (unsigned char c : s) n += (c & 0xC0) != 0x80;
  return n;
}

bool same_image(const mmrt_image& a, const mmrt_image& b) {
  if ((int)a.kind != (int)b.kind) return false;
  if ((int)a.kind == MMRT_IMAGE_FILE) return a.path && b.path && strcmp(a.path, b.path) == 0;
  if ((int)a.kind == MMRT_IMAGE_ENCODED) return a.data == b.data && a.size == b.size;
  return a.pixels == b.pixels && a.width == b.width && a.height == b.height && a.stride == b.stride &&
         (int)a.format == (int)b.format;
}

}  // namespace

void Model::open_generative(const std::function<std::unique_ptr<Session>(const std::string&)>& open_component) {
  const json& m = bundle_.manifest();
  const std::string key = family_ == "vqa" ? "vqa" : "caption";
  for (const char* block : {"preprocess", "tokenizer", "generation"})
    if (!m.contains(block))
      fail(MMRT_ERR_BUNDLE, bundle_.root() + ": manifest has no '" + block + "': not a " + family_ + " bundle of this mmdeploy");
  if (!m.contains(key))
    fail(MMRT_ERR_BUNDLE, bundle_.root() + ": manifest has no '" + key + "': not a " + family_ + " bundle of this mmdeploy");
  const json& info = m[key];
  try {
    num_layers_ = info["num_layers"].get<int>();
    num_heads_ = info["num_heads"].get<int>();
    head_dim_ = info["head_dim"].get<int>();
    vocab_ = info["vocab_size"].get<size_t>();
    cross_ = info["cross_attention"].get<bool>();
    for (auto& o : info["encoder_outputs"]) encoder_outputs_.push_back(o.get<std::string>());
    if (info.contains("max_question_tokens")) max_question_tokens_ = info["max_question_tokens"].get<size_t>();
    generation_ = GenerationConfig::from_json(m["generation"]);
  } catch (const json::exception& e) {
    fail(MMRT_ERR_BUNDLE, bundle_.root() + ": manifest " + key + " / generation: " + e.what());
  }
  if (family_ == "vqa") {
    encoder_ = open_component("vision");
    question_ = open_component("question");
  } else {
    encoder_ = open_component("encoder");
  }
  decoder_ = open_component("decoder");
}

GenerationConfig Model::generation_for(const GenerateRequest& r, bool with_prompt) const {
  GenerationConfig cfg = *generation_;
  if (r.max_new_tokens < 0) fail(MMRT_ERR_INVALID_ARGUMENT, "max_new_tokens must be >= 1, got " + std::to_string(r.max_new_tokens));
  if (r.num_beams < 0) fail(MMRT_ERR_INVALID_ARGUMENT, "num_beams must be between 1 and 16, got " + std::to_string(r.num_beams));
  if (r.max_new_tokens) cfg.max_new_tokens = r.max_new_tokens;
  if (r.num_beams) cfg.num_beams = r.num_beams;
  if (!r.prompt.empty()) {
    if (!with_prompt) fail(MMRT_ERR_INVALID_ARGUMENT, "a prompt continues captions; vqa takes questions, not a prompt");
    try {
      auto ids = tokenizer_->tokenizer().encode(r.prompt, false);
      cfg.start_ids.insert(cfg.start_ids.end(), ids.begin(), ids.end());
    } catch (const TokenizerInputError&) {
      fail(MMRT_ERR_INPUT, "the prompt is not valid UTF-8 text");
    }
  }
  cfg.checked_length();
  return cfg;
}

std::string Model::decode(const int64_t* ids, size_t n) const {
  return py_strip(tokenizer_->tokenizer().decode(std::vector<int64_t>(ids, ids + n), true));
}

std::vector<float> Model::pixels_of(const mmrt_image* images, size_t n, size_t first, int& h0, int& w0) const {
  std::vector<float> pixels;
  h0 = w0 = -1;
  for (size_t i = 0; i < n; i++) {
    RgbImage im = load_image(images[i], first + i);
    int h, w;
    preprocess_->process(im, pixels, h, w);
    if (h0 >= 0 && (h != h0 || w != w0))
      fail(MMRT_ERR_INPUT, "images came out in different sizes: this preprocessing has no center crop or fixed size, so "
                           "send them one at a time");
    h0 = h, w0 = w;
  }
  return pixels;
}

std::vector<Generated> Model::run_generation(const std::vector<Tensor>& kv, size_t rows, const GenerationConfig& cfg,
                                             const GenerateRequest& request, const std::vector<size_t>& index) {
  for (const Tensor& t : kv)
    if (t.shape.empty() || (size_t)t.shape[0] != rows || t.f.size() != count_elements(t.shape))
      fail(MMRT_ERR_BACKEND, bundle_.root() + ": encoder output " + t.name + " does not have one row per input");
  CacheDecoder dec(*decoder_, kv, num_layers_, num_heads_, head_dim_, cross_, vocab_);
  std::vector<std::vector<int64_t>> ids;
  std::vector<std::string> last(rows);
  std::vector<char> done(rows, 0);
  // CaptionPipeline._streamer: a row's callback sees its text whenever it changes; false ends the row
  auto stream = [&](const std::vector<int64_t>& seqs, size_t stride, size_t length, std::vector<char>& stop) {
    for (size_t r = 0; r < rows; r++) {
      if (done[r]) continue;
      const int64_t* row = &seqs[r * stride];
      std::string text = decode(row, length);
      int64_t id = row[length - 1];
      if (std::find(cfg.eos_token_id.begin(), cfg.eos_token_id.end(), id) != cfg.eos_token_id.end()) done[r] = 1;
      if (text != last[r]) {
        last[r] = text;
        if (!request.on_text(index[r], id, text)) done[r] = 1;
      }
    }
    std::copy(done.begin(), done.end(), stop.begin());
  };
  if (cfg.num_beams > 1) {
    ids = beam_search(dec, rows, cfg);
    if (request.on_text) {  // generate(): beam search streams once, the result
      std::vector<char> stop(rows);
      size_t len = ids.empty() ? 0 : ids[0].size();
      std::vector<int64_t> flat(rows * len);
      for (size_t r = 0; r < rows; r++) std::copy(ids[r].begin(), ids[r].end(), &flat[r * len]);
      stream(flat, len, len, stop);
    }
  } else {
    ids = greedy(dec, rows, cfg, request.on_text ? OnStep(stream) : OnStep());
  }
  std::vector<Generated> out(rows);
  for (size_t r = 0; r < rows; r++) out[r].text = decode(ids[r].data(), ids[r].size()), out[r].ids = std::move(ids[r]);
  return out;
}

std::vector<Generated> Model::caption(const mmrt_image* images, size_t n, const GenerateRequest& request) {
  need(family_ == "caption", "caption", "a caption bundle (ViT-GPT2, BLIP, GIT)");
  GenerationConfig cfg = generation_for(request, true);
  std::vector<Generated> out;
  for (size_t start = 0; start < n; start += kBatch) {
    size_t count = std::min(kBatch, n - start);
    int h, w;
    Tensor px;
    px.name = "pixel_values";
    px.f = pixels_of(images + start, count, start, h, w);
    px.shape = {(int64_t)count, 3, h, w};
    std::vector<Tensor> kv = encoder_->run({&px}, encoder_outputs_);
    std::vector<size_t> index(count);
    for (size_t i = 0; i < count; i++) index[i] = start + i;
    for (auto& g : run_generation(kv, count, cfg, request, index)) out.push_back(std::move(g));
  }
  return out;
}

std::vector<Generated> Model::answer(const mmrt_image* images, const std::vector<std::string>& questions,
                                     const GenerateRequest& request) {
  need(family_ == "vqa", "answer questions", "a vqa bundle (BLIP VQA)");
  const size_t n = questions.size();
  GenerationConfig cfg = generation_for(request, false);
  // VqaPipeline.question_ids: [CLS] question [SEP]
  std::vector<std::vector<int64_t>> qids(n);
  for (size_t i = 0; i < n; i++) {
    const std::string& q = questions[i];
    std::string at = "questions[" + std::to_string(i) + "]";
    if (py_strip(q).empty()) fail(MMRT_ERR_INPUT, at + ": a question must be non-empty text");
    if (utf8_chars(q) > kMaxQuestionChars)
      fail(MMRT_ERR_INPUT, at + ": a question is at most " + std::to_string(kMaxQuestionChars) + " characters, got " +
                               std::to_string(utf8_chars(q)));
    try {
      qids[i] = tokenizer_->tokenizer().encode(q, true);
    } catch (const TokenizerInputError&) {
      fail(MMRT_ERR_INPUT, at + " is not valid UTF-8 text");
    }
    if (qids[i].size() > max_question_tokens_)
      fail(MMRT_ERR_INPUT, at + ": the question is " + std::to_string(qids[i].size()) + " tokens; this model reads at most " +
                               std::to_string(max_question_tokens_));
  }
  // each distinct image through the vision graph once, in batches
  std::vector<size_t> row_of(n);
  std::vector<mmrt_image> distinct;
  std::vector<size_t> first_index;
  for (size_t i = 0; i < n; i++) {
    size_t k = 0;
    while (k < distinct.size() && !same_image(distinct[k], images[i])) k++;
    if (k == distinct.size()) distinct.push_back(images[i]), first_index.push_back(i);
    row_of[i] = k;
  }
  Tensor emb;
  for (size_t start = 0; start < distinct.size(); start += kBatch) {
    size_t count = std::min(kBatch, distinct.size() - start);
    int h = 0, w = 0;
    Tensor px;
    px.name = "pixel_values";
    for (size_t i = 0; i < count; i++) {  // errors name the caller's index
      int hi, wi;
      auto p = pixels_of(&distinct[start + i], 1, first_index[start + i], hi, wi);
      if (i && (hi != h || wi != w))
        fail(MMRT_ERR_INPUT, "images came out in different sizes: this preprocessing has no center crop or fixed size, so "
                             "send them one at a time");
      h = hi, w = wi;
      px.f.insert(px.f.end(), p.begin(), p.end());
    }
    px.shape = {(int64_t)count, 3, h, w};
    Tensor e = std::move(encoder_->run({&px}, {"image_embeds"})[0]);
    if (emb.shape.empty()) emb.name = e.name, emb.shape = e.shape, emb.shape[0] = 0;
    emb.shape[0] += e.shape[0];
    emb.f.insert(emb.f.end(), e.f.begin(), e.f.end());
  }
  // questions of equal token length batch without padding (groups in order of first appearance)
  std::vector<size_t> lengths;
  std::map<size_t, std::vector<size_t>> groups;
  for (size_t r = 0; r < n; r++) {
    if (!groups.count(qids[r].size())) lengths.push_back(qids[r].size());
    groups[qids[r].size()].push_back(r);
  }
  std::vector<Generated> out(n);
  for (size_t len : lengths) {
    const auto& rows = groups[len];
    for (size_t k = 0; k < rows.size(); k += kBatch) {
      std::vector<size_t> chunk(rows.begin() + k, rows.begin() + std::min(rows.size(), k + kBatch));
      Tensor ids, image;
      ids.name = "input_ids", ids.is_float = false, ids.shape = {(int64_t)chunk.size(), (int64_t)len};
      std::vector<int64_t> sel;
      for (size_t r : chunk) ids.i.insert(ids.i.end(), qids[r].begin(), qids[r].end()), sel.push_back((int64_t)row_of[r]);
      image = take_rows(emb, sel);
      image.name = "image_embeds";
      std::vector<Tensor> kv = question_->run({&ids, &image}, encoder_outputs_);
      auto got = run_generation(kv, chunk.size(), cfg, request, chunk);
      for (size_t j = 0; j < chunk.size(); j++) out[chunk[j]] = std::move(got[j]);
    }
  }
  return out;
}

}  // namespace mmrt
