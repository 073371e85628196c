#include "generate.h"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <limits>
#include <numeric>

#include "error.h"

namespace mmrt {

namespace {

constexpr float kNeg = -1.0e9f;  // generate.py NEG
constexpr float kInf = std::numeric_limits<float>::infinity();

bool contains(const std::vector<int64_t>& v, int64_t x) { return std::find(v.begin(), v.end(), x) != v.end(); }

// generate._process on one row: scores of the next token after seq[0:cur]
void process_row(float* scores, size_t vocab, const int64_t* seq, size_t cur, size_t prompt_len, const GenerationConfig& cfg,
                 std::vector<char>& seen) {
  if (cfg.repetition_penalty != 1.0) {
    // numpy's fancy assignment: every distinct previous id penalised once, from its original score
    const float pen = (float)cfg.repetition_penalty;  // a Python float meets float32 as float32 (NEP 50)
    seen.assign(vocab, 0);
    for (size_t i = 0; i < cur; i++) {
      int64_t t = seq[i];
      if (t < 0 || (size_t)t >= vocab) fail(MMRT_ERR_INPUT, "token id " + std::to_string(t) + " is outside the model's vocabulary of " + std::to_string(vocab));
      if (seen[t]) continue;
      seen[t] = 1;
      float s = scores[t];
      scores[t] = s < 0 ? s * pen : s / pen;
    }
  }
  const size_t n = (size_t)cfg.no_repeat_ngram_size;
  if (n && cur + 1 >= n) {
    const int64_t* prefix = seq + cur - n + 1;  // the last n-1 ids
    for (size_t i = 0; i + n <= cur; i++) {
      if (std::equal(seq + i, seq + i + n - 1, prefix)) {
        int64_t t = seq[i + n - 1];
        if (t >= 0 && (size_t)t < vocab) scores[t] = -kInf;
      }
    }
  }
  if (!cfg.eos_token_id.empty()) {
    bool need = (long long)cur < cfg.min_length || (cfg.min_new_tokens && (long long)(cur - prompt_len) < *cfg.min_new_tokens);
    if (need)
      for (int64_t e : cfg.eos_token_id)
        if (e >= 0 && (size_t)e < vocab) scores[e] = -kInf;
  }
}

// numpy's pairwise summation of float32 (loops_utils.h: 8 accumulators, blocks of 128)
float pairwise_sum(const float* a, size_t n) {
  if (n < 8) {
    float res = 0.f;
    for (size_t i = 0; i < n; i++) res += a[i];
    return res;
  }
  if (n <= 128) {
    float r[8];
    for (int j = 0; j < 8; j++) r[j] = a[j];
    size_t i = 8;
    for (; i < n - (n % 8); i += 8)
      for (int j = 0; j < 8; j++) r[j] += a[i + j];
    float res = ((r[0] + r[1]) + (r[2] + r[3])) + ((r[4] + r[5]) + (r[6] + r[7]));
    for (; i < n; i++) res += a[i];
    return res;
  }
  size_t n2 = n / 2;
  n2 -= n2 % 8;
  return pairwise_sum(a, n2) + pairwise_sum(a + n2, n - n2);
}

// numpy's float32 exp and log are its own SIMD approximations (AVX2 / AVX-512: Cody-Waite range
// reduction, then a ratio of minimax polynomials), not libm's: a few ulps apart from expf / logf,
// enough to reorder near-tied beams. These are the same steps and constants, one lane at a time
// (checked bit for bit against numpy 2.4 on millions of inputs; a CPU without AVX2 + FMA makes
// numpy fall back to libm).
float numpy_expf(float x) {
  if (x != x) return x;
  if (x >= 88.72283935546875f) return std::numeric_limits<float>::infinity();
  if (x <= -103.97208404541015625f) return 0.f;
  float q = x * 1.442695040888963407359924681001892137f;  // log2(e)
  q = (q + 0x1.8p23f) - 0x1.8p23f;                         // rint
  float r = std::fmaf(q, -6.93145752e-1f, x);              // x - q ln2, ln2 split in two
  r = std::fmaf(q, -1.42860677e-6f, r);
  float num = std::fmaf(5.082762527590693718096e-04f, r, 6.757896990527504603057e-03f);
  num = std::fmaf(num, r, 5.114512081637298353406e-02f);
  num = std::fmaf(num, r, 2.473615434895520810817e-01f);
  num = std::fmaf(num, r, 7.257664613233124478488e-01f);
  num = std::fmaf(num, r, 9.999999999980870924916e-01f);
  float den = std::fmaf(2.159509375685829852307e-02f, r, -2.742335390411667452936e-01f);
  den = std::fmaf(den, r, 1.0f);
  float poly = num / den;
  int32_t bits;
  memcpy(&bits, &poly, 4);
  if (q <= -125.f) {  // the result is denormal: scale to 2^-125, then divide the rest in
    int shift = (int)(-(q + 125.f));
    bits += -125 * (1 << 23);
    memcpy(&poly, &bits, 4);
    return poly / (float)(1 << shift);
  }
  bits += (int32_t)q * (1 << 23);
  memcpy(&poly, &bits, 4);
  return poly;
}

float numpy_logf(float x) {
  if (!(x >= 1.175494351e-38f) || x == std::numeric_limits<float>::infinity()) return std::log(x);  // not from softmax
  uint32_t bits;
  memcpy(&bits, &x, 4);
  float e = (float)((int32_t)(bits >> 23) - 126);  // x = m 2^e, m in [0.5, 1)
  bits = (bits & 0x7fffffu) | (126u << 23);
  float m;
  memcpy(&m, &bits, 4);
  if (m <= 0.707106781186547524400844362104849039f) m = m + m, e = e - 1.f;
  m = m - 1.f;
  float num = std::fmaf(2.589979117907922693523e-02f, m, 3.808837741388407920751e-01f);
  num = std::fmaf(num, m, 1.480000633576506585156e+00f);
  num = std::fmaf(num, m, 2.112677543073053063722e+00f);
  num = std::fmaf(num, m, 9.999999999999998702752e-01f);
  num = std::fmaf(num, m, 0.f);
  float den = std::fmaf(5.875095403124574342950e-03f, m, 1.546476374983906719538e-01f);
  den = std::fmaf(den, m, 9.864942958519418960339e-01f);
  den = std::fmaf(den, m, 2.453006071784736363091e+00f);
  den = std::fmaf(den, m, 2.612677543073109236779e+00f);
  den = std::fmaf(den, m, 1.f);
  return std::fmaf(e, 0.693147180559945309417232121458176568f, num / den);
}

// _topk: the k largest, sorted descending, ties by lowest index
void topk(const float* x, size_t n, size_t k, std::vector<size_t>& idx) {
  idx.resize(n);
  std::iota(idx.begin(), idx.end(), 0);
  auto better = [x](size_t a, size_t b) { return x[a] > x[b] || (x[a] == x[b] && a < b); };
  k = std::min(k, n);
  std::partial_sort(idx.begin(), idx.begin() + k, idx.end(), better);
  idx.resize(k);
}

std::vector<int64_t> arange_rows(size_t rows, size_t p) {
  std::vector<int64_t> pos(rows * p);
  for (size_t r = 0; r < rows; r++)
    for (size_t j = 0; j < p; j++) pos[r * p + j] = (int64_t)j;
  return pos;
}

}  // namespace

GenerationConfig GenerationConfig::from_json(const json& g) {
  GenerationConfig c;
  auto opt = [&](const char* k) { return g.contains(k) && !g[k].is_null(); };
  for (auto& v : g["start_ids"]) c.start_ids.push_back(v.get<int64_t>());
  if (opt("eos_token_id")) {
    if (g["eos_token_id"].is_array())
      for (auto& v : g["eos_token_id"]) c.eos_token_id.push_back(v.get<int64_t>());
    else c.eos_token_id.push_back(g["eos_token_id"].get<int64_t>());
  }
  if (opt("pad_token_id")) c.pad_token_id = g["pad_token_id"].get<int64_t>();
  if (opt("max_length")) c.max_length = g["max_length"].get<long long>();
  if (opt("max_new_tokens")) c.max_new_tokens = g["max_new_tokens"].get<long long>();
  if (opt("default_new_tokens")) c.default_new_tokens = g["default_new_tokens"].get<long long>();
  if (opt("max_positions")) c.max_positions = g["max_positions"].get<long long>();
  if (opt("min_length")) c.min_length = g["min_length"].get<long long>();
  if (opt("min_new_tokens")) c.min_new_tokens = g["min_new_tokens"].get<long long>();
  if (opt("num_beams")) c.num_beams = g["num_beams"].get<int>();
  if (opt("length_penalty")) c.length_penalty = g["length_penalty"].get<double>();
  if (opt("repetition_penalty")) c.repetition_penalty = g["repetition_penalty"].get<double>();
  if (opt("no_repeat_ngram_size")) c.no_repeat_ngram_size = g["no_repeat_ngram_size"].get<int>();
  if (opt("early_stopping")) {
    const json& e = g["early_stopping"];
    c.early_stopping = e.is_string() ? kNever : e.get<bool>() ? kTrue : kFalse;
  }
  return c;
}

size_t GenerationConfig::checked_length() const {
  if (num_beams < 1 || num_beams > kMaxBeams)
    fail(MMRT_ERR_INVALID_ARGUMENT, "num_beams must be between 1 and " + std::to_string(kMaxBeams) + ", got " + std::to_string(num_beams));
  if (max_new_tokens && *max_new_tokens < 1)
    fail(MMRT_ERR_INVALID_ARGUMENT, "max_new_tokens must be >= 1, got " + std::to_string(*max_new_tokens));
  if (start_ids.empty()) fail(MMRT_ERR_BUNDLE, "generation needs at least one start id");
  long long p = (long long)start_ids.size(), total;
  if (max_new_tokens) {
    total = p + *max_new_tokens;
  } else {
    total = max_length ? *max_length : p + default_new_tokens;
    if (max_positions && *max_positions) total = std::min(total, *max_positions);
  }
  if (total <= p)
    fail(MMRT_ERR_INVALID_ARGUMENT, "max_length " + std::to_string(total) + " leaves no room after the " + std::to_string(p) +
                                        " prompt ids: raise it or set max_new_tokens");
  if (max_positions && *max_positions && total > *max_positions)
    fail(MMRT_ERR_INVALID_ARGUMENT, "max_new_tokens " + std::to_string(max_new_tokens.value_or(0)) + " runs past the model's " +
                                        std::to_string(*max_positions) + " positions: with the " + std::to_string(p) +
                                        "-token prompt at most " + std::to_string(*max_positions - p) + " new tokens");
  return (size_t)total;
}

void log_softmax(const float* x, float* out, size_t n) {
  float m = x[0];
  for (size_t i = 1; i < n; i++) m = std::max(m, x[i]);  // NaN-free logits assumed, as numpy's max
  for (size_t i = 0; i < n; i++) out[i] = numpy_expf(x[i] - m);
  float s = pairwise_sum(out, n);
  float l = numpy_logf(s);
  for (size_t i = 0; i < n; i++) out[i] = (x[i] - m) - l;
}

std::vector<std::vector<int64_t>> greedy(StepDecoder& decoder, size_t batch, const GenerationConfig& cfg,
                                         const OnStep& on_step) {
  const size_t max_len = cfg.checked_length(), p = cfg.start_ids.size();
  std::vector<int64_t> seqs(batch * max_len, cfg.pad_token_id);
  for (size_t r = 0; r < batch; r++) std::copy(cfg.start_ids.begin(), cfg.start_ids.end(), &seqs[r * max_len]);
  std::vector<int64_t> rows(batch);
  std::iota(rows.begin(), rows.end(), 0);
  decoder.start(rows, max_len);
  const size_t vocab = decoder.vocab();
  const bool has_eos = !cfg.eos_token_id.empty();
  std::vector<char> unfinished(batch, 1), stop(batch, 0), seen;
  std::vector<float> scores(vocab);
  std::vector<int64_t> ids(batch * p), pos = arange_rows(batch, p), nxt(batch), streamed;
  for (size_t r = 0; r < batch; r++) std::copy(cfg.start_ids.begin(), cfg.start_ids.end(), &ids[r * p]);
  size_t cur = p, seq = p;
  while (cur < max_len) {
    const float* logits = decoder.step(ids, pos, seq);
    for (size_t r = 0; r < batch; r++) {
      std::copy(logits + r * vocab, logits + (r + 1) * vocab, scores.begin());
      process_row(scores.data(), vocab, &seqs[r * max_len], cur, p, cfg, seen);
      // argmax: the first maximum, as numpy
      size_t best = 0;
      for (size_t v = 1; v < vocab; v++)
        if (scores[v] > scores[best]) best = v;
      nxt[r] = has_eos && !unfinished[r] ? cfg.pad_token_id : (int64_t)best;
      seqs[r * max_len + cur] = nxt[r];
    }
    cur++;
    if (has_eos)
      for (size_t r = 0; r < batch; r++) unfinished[r] = unfinished[r] && !contains(cfg.eos_token_id, nxt[r]);
    if (on_step) {
      std::fill(stop.begin(), stop.end(), 0);
      on_step(seqs, max_len, cur, stop);
      for (size_t r = 0; r < batch; r++) unfinished[r] = unfinished[r] && !stop[r];
    }
    if (std::none_of(unfinished.begin(), unfinished.end(), [](char u) { return u; })) break;
    ids.assign(nxt.begin(), nxt.end());
    pos.assign(batch, (int64_t)cur - 1);
    seq = 1;
  }
  std::vector<std::vector<int64_t>> out(batch);
  for (size_t r = 0; r < batch; r++) out[r].assign(&seqs[r * max_len], &seqs[r * max_len] + cur);
  return out;
}

std::vector<std::vector<int64_t>> beam_search(StepDecoder& decoder, size_t batch, const GenerationConfig& cfg) {
  const size_t K = (size_t)cfg.num_beams, L = cfg.checked_length(), p = cfg.start_ids.size();
  const std::vector<int64_t>& eos = cfg.eos_token_id;
  const size_t n_eos = eos.size(), keep = std::max<size_t>(2, 1 + n_eos) * K, G = L - p;
  const int64_t fill = cfg.pad_token_id ? cfg.pad_token_id : (n_eos ? eos[0] : -1);  // transformers: `pad or eos[0]`
  const bool stop_early = cfg.early_stopping == GenerationConfig::kTrue;
  // (batch, K, L) sequences, (batch, K, G) beam indices, (batch, K) scores and flags
  std::vector<int64_t> running(batch * K * L, fill), running_idx(batch * K * G, -1);
  for (size_t i = 0; i < batch * K; i++) std::copy(cfg.start_ids.begin(), cfg.start_ids.end(), &running[i * L]);
  std::vector<int64_t> sequences = running, beam_idx = running_idx;
  std::vector<float> running_scores(batch * K, 0.f), beam_scores(batch * K, kNeg);
  for (size_t b = 0; b < batch; b++)
    for (size_t k = 1; k < K; k++) running_scores[b * K + k] = kNeg;
  std::vector<char> finished(batch * K, 0), heuristic(batch, 1), hits(batch * keep, 0);
  std::vector<int64_t> rows(batch * K);
  for (size_t i = 0; i < batch * K; i++) rows[i] = (int64_t)(i / K);
  decoder.start(rows, L);
  const size_t V = decoder.vocab();
  std::vector<int64_t> ids(batch * K * p), pos = arange_rows(batch * K, p);
  for (size_t i = 0; i < batch * K; i++) std::copy(cfg.start_ids.begin(), cfg.start_ids.end(), &ids[i * p]);
  std::vector<float> logp(batch * K * V), topk_lp(batch * keep), run_lp(keep), fin_lp(keep), m_scores(K + keep);
  std::vector<int64_t> topk_seqs(batch * keep * L), topk_bidx(batch * keep * G), new_running(batch * K * L),
      new_idx(batch * K * G), new_seqs(batch * K * L), new_bidx(batch * K * G);
  std::vector<float> new_scores(batch * K), new_beam_scores(batch * K);
  std::vector<char> new_finished(batch * K), seen;
  std::vector<size_t> sel, best;
  size_t cur = p, seq = p;
  while (cur < L) {
    const float* logits = decoder.step(ids, pos, seq);
    for (size_t i = 0; i < batch * K; i++) {
      float* row = &logp[i * V];
      log_softmax(logits + i * V, row, V);
      process_row(row, V, &running[i * L], cur, p, cfg, seen);
      for (size_t v = 0; v < V; v++) row[v] += running_scores[i];
    }
    bool all_hits = true;
    for (size_t b = 0; b < batch; b++) {
      // c. top 2K continuations over all beams
      topk(&logp[b * K * V], K * V, keep, sel);
      for (size_t j = 0; j < keep; j++) {
        size_t src = sel[j] / V;
        int64_t tok = (int64_t)(sel[j] % V);
        topk_lp[b * keep + j] = logp[b * K * V + sel[j]];
        int64_t* s = &topk_seqs[(b * keep + j) * L];
        std::copy(&running[(b * K + src) * L], &running[(b * K + src) * L] + L, s);
        s[cur] = tok;
        int64_t* bi = &topk_bidx[(b * keep + j) * G];
        std::copy(&running_idx[(b * K + src) * G], &running_idx[(b * K + src) * G] + G, bi);
        bi[cur - p] = (int64_t)(src + b * K);
        // d. which continuations stop here (eos or max_length)
        hits[b * keep + j] = cur + 1 >= L || (n_eos && contains(eos, tok));
        all_hits = all_hits && hits[b * keep + j];
      }
      // e. next running beams: the best K that did not stop
      for (size_t j = 0; j < keep; j++) run_lp[j] = topk_lp[b * keep + j] + (hits[b * keep + j] ? kNeg : 0.f);
      topk(run_lp.data(), keep, K, sel);
      for (size_t k = 0; k < K; k++) {
        std::copy(&topk_seqs[(b * keep + sel[k]) * L], &topk_seqs[(b * keep + sel[k]) * L] + L, &new_running[(b * K + k) * L]);
        std::copy(&topk_bidx[(b * keep + sel[k]) * G], &topk_bidx[(b * keep + sel[k]) * G] + G, &new_idx[(b * K + k) * G]);
        new_scores[b * K + k] = run_lp[sel[k]];
      }
      // f. finished hypotheses
      const float denom = (float)std::pow((double)(cur + 1 - p), cfg.length_penalty);
      bool all_fin = true;
      for (size_t k = 0; k < K; k++) all_fin = all_fin && finished[b * K + k];
      const bool full = all_fin && stop_early;
      for (size_t j = 0; j < keep; j++) {
        bool just = hits[b * keep + j] && j < K;
        float v = topk_lp[b * keep + j] / denom;
        if (full) v += kNeg;
        if (!heuristic[b]) v += kNeg;
        if (!just) v += kNeg;
        fin_lp[j] = v;
      }
      for (size_t k = 0; k < K; k++) m_scores[k] = beam_scores[b * K + k];
      for (size_t j = 0; j < keep; j++) m_scores[K + j] = fin_lp[j];
      topk(m_scores.data(), K + keep, K, best);
      for (size_t k = 0; k < K; k++) {
        size_t m = best[k];
        const int64_t* s = m < K ? &sequences[(b * K + m) * L] : &topk_seqs[(b * keep + m - K) * L];
        const int64_t* bi = m < K ? &beam_idx[(b * K + m) * G] : &topk_bidx[(b * keep + m - K) * G];
        std::copy(s, s + L, &new_seqs[(b * K + k) * L]);
        std::copy(bi, bi + G, &new_bidx[(b * K + k) * G]);
        new_beam_scores[b * K + k] = m_scores[m];
        new_finished[b * K + k] = m < K ? finished[b * K + m] : (hits[b * keep + m - K] && m - K < K);
      }
    }
    running.swap(new_running), running_idx.swap(new_idx), running_scores.swap(new_scores);
    sequences.swap(new_seqs), beam_idx.swap(new_bidx), beam_scores.swap(new_beam_scores), finished.swap(new_finished);
    // g. next iteration: the surviving beams' parents
    for (size_t i = 0; i < batch * K; i++) rows[i] = running_idx[i * G + (cur - p)];
    cur++;
    const size_t best_len = cfg.early_stopping == GenerationConfig::kNever && cfg.length_penalty > 0.0 ? L - p : cur - p;
    const float best_denom = (float)std::pow((double)best_len, cfg.length_penalty);
    bool improvement = false, all_finished = true;
    for (size_t b = 0; b < batch; b++) {
      float best_running = running_scores[b * K] / best_denom;
      float min_score = *std::min_element(&beam_scores[b * K], &beam_scores[b * K] + K);
      bool any = false;
      for (size_t k = 0; k < K; k++) {
        float worst_fin = finished[b * K + k] ? min_score : kNeg;
        any = any || best_running > worst_fin;
        all_finished = all_finished && finished[b * K + k];
      }
      heuristic[b] = heuristic[b] && any;
      improvement = improvement || heuristic[b];
    }
    const bool open_beam = !(all_finished && stop_early);
    if (!(improvement && open_beam && !all_hits)) break;
    decoder.reorder(rows);
    ids.resize(batch * K);
    for (size_t i = 0; i < batch * K; i++) ids[i] = running[i * L + cur - 1];
    pos.assign(batch * K, (int64_t)cur - 1);
    seq = 1;
  }
  size_t gen = 0;
  for (size_t b = 0; b < batch; b++) {
    size_t n = 0;
    for (size_t g = 0; g < G; g++) n += beam_idx[b * K * G + g] != -1;
    gen = std::max(gen, n);
  }
  std::vector<std::vector<int64_t>> out(batch);
  for (size_t b = 0; b < batch; b++) out[b].assign(&sequences[b * K * L], &sequences[b * K * L] + p + gen);
  return out;
}

}  // namespace mmrt
