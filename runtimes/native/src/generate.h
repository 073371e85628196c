// Greedy and beam search over a KV-cached decoder step, as runtimes/generate.py (transformers 5's
// generate(do_sample=False)): the same logits processors, float32 arithmetic in the same order,
// the same top-k tie-breaking (lowest index first) and early-stopping heuristic, so the ids are
// the Python runtime's token for token when the logits are.
#pragma once

#include <cstdint>
#include <functional>
#include <optional>
#include <string>
#include <vector>

#include "bundle.h"

namespace mmrt {

constexpr int kMaxBeams = 16;  // generate.py MAX_BEAMS

struct GenerationConfig {
  std::vector<int64_t> start_ids, eos_token_id;
  int64_t pad_token_id = 0;
  std::optional<long long> max_length, max_new_tokens, max_positions, min_new_tokens;
  long long default_new_tokens = 20, min_length = 0;
  int num_beams = 1;
  double length_penalty = 1.0, repetition_penalty = 1.0;
  enum { kFalse, kTrue, kNever } early_stopping = kFalse;
  int no_repeat_ngram_size = 0;

  // GenerationConfig.from_dict on the manifest's generation block (validated by the manifest checks).
  static GenerationConfig from_json(const json& g);
  // total_length + check + check_length: the length ids grow to, or Error(MMRT_ERR_INVALID_ARGUMENT).
  size_t checked_length() const;
};

// One decoder-step graph run step by step, its KV cache kept between steps (runtimes/session.py's
// Decoder, as SessionDecoder drives it).
class StepDecoder {
 public:
  virtual ~StepDecoder() = default;
  // A batch of these encoder rows (repeated for beams) begins; room: positions the steps add at most.
  virtual void start(const std::vector<int64_t>& rows, size_t room) = 0;
  // One step over ids / positions (rows x seq, row-major); returns the last position's logits (rows x vocab).
  virtual const float* step(const std::vector<int64_t>& ids, const std::vector<int64_t>& positions, size_t seq) = 0;
  // The cache of these rows, in this order (beam search).
  virtual void reorder(const std::vector<int64_t>& rows) = 0;
  virtual size_t vocab() const = 0;
};

// After each greedy step: the ids so far (row r is seqs[r * stride, r * stride + length)); set
// stop[r] to end row r now (streaming: its reader left).
using OnStep = std::function<void(const std::vector<int64_t>& seqs, size_t stride, size_t length, std::vector<char>& stop)>;

// (batch, L) ids incl. the start ids, padding after eos kept, as generate.greedy / beam_search.
std::vector<std::vector<int64_t>> greedy(StepDecoder& decoder, size_t batch, const GenerationConfig& cfg,
                                         const OnStep& on_step = nullptr);
std::vector<std::vector<int64_t>> beam_search(StepDecoder& decoder, size_t batch, const GenerationConfig& cfg);

// numpy's float32 log_softmax of one row (max, exp, pairwise sum, log), as generate.log_softmax.
void log_softmax(const float* x, float* out, size_t n);

}  // namespace mmrt
