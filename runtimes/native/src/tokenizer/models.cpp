// The models of tokenizer.json: BPE, WordPiece, WordLevel and Unigram, ported from HF tokenizers
// 0.23 (same merge order and tie-breaks, same unknown-token and byte-fallback rules).
#include <cstdio>
#include <queue>

#include "internal.h"

namespace mmrt::tok {

namespace {

// token <-> id, with the ids as given (they may be sparse).
struct Vocab {
  std::unordered_map<std::string, int64_t> ids;
  std::vector<std::string> tokens;
  std::vector<bool> present;

  void add(const std::string& token, int64_t id) {
    ids[token] = id;
    if (id < 0) return;
    if (static_cast<size_t>(id) >= tokens.size()) {
      tokens.resize(id + 1);
      present.resize(id + 1, false);
    }
    tokens[id] = token;
    present[id] = true;
  }
  const std::string* token(int64_t id) const {
    return id >= 0 && static_cast<size_t>(id) < tokens.size() && present[id] ? &tokens[id] : nullptr;
  }
  bool find(const std::string& t, int64_t& id) const {
    auto it = ids.find(t);
    if (it == ids.end()) return false;
    id = it->second;
    return true;
  }
};

Vocab read_vocab_map(const json& spec, const std::string& where) {
  const json& v = field(spec, "vocab", where);
  if (!v.is_object()) fail(where, "field \"vocab\" must be an object {token: id}");
  Vocab vocab;
  for (auto it = v.begin(); it != v.end(); ++it) {
    if (!it.value().is_number_integer()) fail(where, "vocab entry " + json(it.key()).dump() + " has no integer id");
    vocab.add(it.key(), it.value().get<int64_t>());
  }
  return vocab;
}

std::optional<std::string> opt_str(const json& spec, const char* name, const std::string& where) {
  if (!spec.contains(name) || spec.at(name).is_null()) return std::nullopt;
  return str_field(spec, name, where);
}

std::string byte_token(unsigned char b) {
  char buf[8];
  std::snprintf(buf, sizeof buf, "<0x%02X>", b);
  return buf;
}

// ---------------------------------------------------------------- BPE

struct BPE : Model {
  Vocab vocab;
  // (left id, right id) -> (rank, merged id)
  std::unordered_map<uint64_t, std::pair<uint32_t, int64_t>> merges;
  std::optional<std::string> unk, prefix, suffix;
  bool fuse_unk = false, byte_fallback = false, ignore_merges = false;

  static uint64_t key(int64_t a, int64_t b) { return (static_cast<uint64_t>(a) << 32) | static_cast<uint32_t>(b); }

  struct Symbol {
    int64_t id;
    int prev, next;
    size_t len;
  };
  struct Merge {
    size_t pos;
    uint32_t rank;
    int64_t new_id;
    bool operator<(const Merge& o) const {  // min-heap on (rank, pos)
      return rank != o.rank ? rank > o.rank : pos > o.pos;
    }
  };

  void tokenize(const std::string& w, std::vector<int64_t>& out) const override {
    if (w.empty()) return;
    int64_t id;
    if (ignore_merges && vocab.find(w, id)) {
      out.push_back(id);
      return;
    }
    std::vector<Symbol> syms;
    auto add = [&](int64_t sid, size_t len) {
      int n = static_cast<int>(syms.size());
      syms.push_back({sid, n - 1, -1, len});
      if (n > 0) syms[n - 1].next = n;
    };
    bool have_unk = false;
    int64_t unk_id = 0;
    size_t unk_len = 0;
    std::string s;
    size_t i = 0;
    while (i < w.size()) {
      size_t b = i;
      i += utf8_len(static_cast<unsigned char>(w[i]));
      bool first = b == 0, last = i >= w.size();
      s.clear();
      if (prefix && !first) s += *prefix;
      s.append(w, b, i - b);
      if (last && suffix) s += *suffix;
      size_t byte_len = i - b;
      if (vocab.find(s, id)) {
        if (have_unk) {
          add(unk_id, unk_len);
          have_unk = false;
        }
        add(id, byte_len);
        continue;
      }
      if (byte_fallback) {
        std::vector<int64_t> bytes_ids;
        bool all = true;
        for (unsigned char c : s) {
          int64_t bid;
          if (!vocab.find(byte_token(c), bid)) {
            all = false;
            break;
          }
          bytes_ids.push_back(bid);
        }
        if (all) {
          for (auto bid : bytes_ids) add(bid, 1);
          continue;
        }
      }
      if (unk) {
        int64_t uid;
        if (!vocab.find(*unk, uid)) throw TokenizerError("BPE: the unk_token " + json(*unk).dump() + " is not in the vocabulary");
        if (have_unk && fuse_unk) {
          unk_len += byte_len;
        } else {
          if (have_unk) add(unk_id, unk_len);
          have_unk = true;
          unk_id = uid;
          unk_len = byte_len;
        }
      }
    }
    if (have_unk) add(unk_id, unk_len);
    merge_all(syms);
    for (auto& sym : syms)
      if (sym.len != 0) out.push_back(sym.id);
  }

  void merge_all(std::vector<Symbol>& syms) const {
    std::priority_queue<Merge> queue;
    for (size_t k = 0; k + 1 < syms.size(); ++k) {
      auto it = merges.find(key(syms[k].id, syms[k + 1].id));
      if (it != merges.end()) queue.push({k, it->second.first, it->second.second});
    }
    while (!queue.empty()) {
      Merge top = queue.top();
      queue.pop();
      Symbol& cur = syms[top.pos];
      if (cur.len == 0 || cur.next == -1) continue;
      size_t next_pos = static_cast<size_t>(cur.next);
      Symbol right = syms[next_pos];
      auto it = merges.find(key(cur.id, right.id));
      if (it == merges.end() || it->second.second != top.new_id) continue;  // stale entry
      cur.id = top.new_id;
      cur.len += right.len;
      cur.next = right.next;
      syms[next_pos].len = 0;
      if (right.next > -1 && static_cast<size_t>(right.next) < syms.size()) syms[right.next].prev = static_cast<int>(top.pos);
      if (cur.prev >= 0) {
        auto p = merges.find(key(syms[cur.prev].id, cur.id));
        if (p != merges.end()) queue.push({static_cast<size_t>(cur.prev), p->second.first, p->second.second});
      }
      if (cur.next >= 0 && static_cast<size_t>(cur.next) < syms.size()) {
        auto n = merges.find(key(cur.id, syms[cur.next].id));
        if (n != merges.end()) queue.push({top.pos, n->second.first, n->second.second});
      }
    }
  }

  const std::string* id_to_token(int64_t id) const override { return vocab.token(id); }
  bool token_to_id(const std::string& t, int64_t& id) const override { return vocab.find(t, id); }
  size_t vocab_size() const override { return vocab.ids.size(); }
};

std::unique_ptr<Model> make_bpe(const json& spec, const std::string& where) {
  auto m = std::make_unique<BPE>();
  m->vocab = read_vocab_map(spec, where);
  if (spec.contains("dropout") && !spec.at("dropout").is_null() && spec.at("dropout").get<double>() > 0.0)
    fail(where, "BPE dropout is random at inference; set it to null");
  m->unk = opt_str(spec, "unk_token", where);
  m->prefix = opt_str(spec, "continuing_subword_prefix", where);
  m->suffix = opt_str(spec, "end_of_word_suffix", where);
  auto flag = [&](const char* name) { return spec.contains(name) && spec.at(name).is_boolean() && spec.at(name).get<bool>(); };
  m->fuse_unk = flag("fuse_unk");
  m->byte_fallback = flag("byte_fallback");
  m->ignore_merges = flag("ignore_merges");
  const json& merges = field(spec, "merges", where);
  if (!merges.is_array()) fail(where, "field \"merges\" must be a list");
  size_t prefix_len = m->prefix ? m->prefix->size() : 0;
  uint32_t rank = 0;
  for (const json& entry : merges) {
    std::string a, b;
    if (entry.is_string()) {
      const std::string& line = entry.get_ref<const std::string&>();
      if (line.rfind("#version", 0) == 0) continue;
      size_t sp = line.find(' ');
      if (sp == std::string::npos || line.find(' ', sp + 1) != std::string::npos)
        fail(where, "merge " + entry.dump() + " is not two tokens separated by one space");
      a = line.substr(0, sp);
      b = line.substr(sp + 1);
    } else if (entry.is_array() && entry.size() == 2 && entry[0].is_string() && entry[1].is_string()) {
      a = entry[0].get<std::string>();
      b = entry[1].get<std::string>();
    } else {
      fail(where, "merge " + entry.dump() + " is neither \"a b\" nor [a, b]");
    }
    int64_t a_id, b_id, new_id;
    if (!m->vocab.find(a, a_id)) fail(where, "merge token " + json(a).dump() + " is not in the vocabulary");
    if (!m->vocab.find(b, b_id)) fail(where, "merge token " + json(b).dump() + " is not in the vocabulary");
    std::string merged = a + (b.size() >= prefix_len ? b.substr(prefix_len) : std::string());
    if (!m->vocab.find(merged, new_id)) fail(where, "merged token " + json(merged).dump() + " is not in the vocabulary");
    m->merges[BPE::key(a_id, b_id)] = {rank++, new_id};  // a repeated pair: the last one wins, as in HF's map
  }
  return m;
}

// ---------------------------------------------------------------- WordPiece

struct WordPiece : Model {
  Vocab vocab;
  std::string unk, prefix;
  size_t max_chars = 100;

  void push_unk(std::vector<int64_t>& out) const {
    int64_t id;
    if (!vocab.find(unk, id)) throw TokenizerError("WordPiece: the unk_token " + json(unk).dump() + " is not in the vocabulary");
    out.push_back(id);
  }

  void tokenize(const std::string& w, std::vector<int64_t>& out) const override {
    size_t chars = 0;
    for (unsigned char c : w) chars += (c & 0xC0) != 0x80;
    if (chars > max_chars) return push_unk(out);
    size_t mark = out.size();
    size_t start = 0;
    std::string sub;
    while (start < w.size()) {
      size_t end = w.size();
      bool found = false;
      while (start < end) {
        sub.clear();
        if (start > 0) sub += prefix;
        sub.append(w, start, end - start);
        int64_t id;
        if (vocab.find(sub, id)) {
          out.push_back(id);
          found = true;
          break;
        }
        // drop the last character
        do {
          --end;
        } while (end > start && (static_cast<unsigned char>(w[end]) & 0xC0) == 0x80);
      }
      if (!found) {
        out.resize(mark);
        return push_unk(out);
      }
      start = end;
    }
  }
  const std::string* id_to_token(int64_t id) const override { return vocab.token(id); }
  bool token_to_id(const std::string& t, int64_t& id) const override { return vocab.find(t, id); }
  size_t vocab_size() const override { return vocab.ids.size(); }
};

// ---------------------------------------------------------------- WordLevel

struct WordLevel : Model {
  Vocab vocab;
  std::string unk;
  void tokenize(const std::string& w, std::vector<int64_t>& out) const override {
    int64_t id;
    if (vocab.find(w, id) || vocab.find(unk, id)) {
      out.push_back(id);
      return;
    }
    throw TokenizerError("WordLevel: the unk_token " + json(unk).dump() + " is not in the vocabulary");
  }
  const std::string* id_to_token(int64_t id) const override { return vocab.token(id); }
  bool token_to_id(const std::string& t, int64_t& id) const override { return vocab.find(t, id); }
  size_t vocab_size() const override { return vocab.ids.size(); }
};

// ---------------------------------------------------------------- Unigram

struct Unigram : Model {
  Vocab vocab;
  std::vector<double> scores;
  std::optional<int64_t> unk_id;
  bool byte_fallback = false;
  double min_score = 0;
  // Byte trie: node -> (byte -> child); token_at[node] = id of the token ending there, or -1.
  std::vector<std::unordered_map<unsigned char, int32_t>> children;
  std::vector<int64_t> token_at;

  void insert(const std::string& t, int64_t id) {
    int32_t node = 0;
    for (unsigned char c : t) {
      auto it = children[node].find(c);
      if (it == children[node].end()) {
        children.emplace_back();
        token_at.push_back(-1);
        int32_t child = static_cast<int32_t>(children.size() - 1);
        children[node][c] = child;
        node = child;
      } else {
        node = it->second;
      }
    }
    token_at[node] = id;
  }

  void tokenize(const std::string& s, std::vector<int64_t>& out) const override {
    if (s.empty()) return;
    struct Node {
      int64_t id = 0;
      double score = 0;
      long starts_at = -1;
    };
    const double unk_score = min_score - 10.0;
    std::vector<Node> best(s.size() + 1);
    size_t starts_at = 0;
    while (starts_at < s.size()) {
      double till_here = best[starts_at].score;
      bool has_single_node = false;
      size_t mblen = utf8_len(static_cast<unsigned char>(s[starts_at]));
      int32_t node = 0;
      for (size_t k = starts_at; k < s.size(); ++k) {
        auto it = children[node].find(static_cast<unsigned char>(s[k]));
        if (it == children[node].end()) break;
        node = it->second;
        int64_t id = token_at[node];
        if (id < 0) continue;
        size_t key_pos = k + 1;
        double cand = scores[id] + till_here;
        Node& target = best[key_pos];
        if (target.starts_at < 0 || cand > target.score) {
          target.score = cand;
          target.starts_at = static_cast<long>(starts_at);
          target.id = id;
        }
        if (!has_single_node && key_pos - starts_at == mblen) has_single_node = true;
      }
      if (!has_single_node) {
        if (!unk_id) throw TokenizerError("Unigram: no unk_id and a character has no piece");
        Node& target = best[starts_at + mblen];
        double cand = unk_score + till_here;
        if (target.starts_at < 0 || cand > target.score) {
          target.score = cand;
          target.starts_at = static_cast<long>(starts_at);
          target.id = *unk_id;
        }
      }
      starts_at += mblen;
    }
    // Walk back; consecutive unknown pieces are fused into one string.
    std::vector<std::string> pieces;
    std::string fused;
    bool fusing = false;
    size_t ends_at = s.size();
    while (ends_at > 0) {
      const Node& n = best[ends_at];
      size_t b = static_cast<size_t>(n.starts_at);
      if (unk_id && n.id == *unk_id) {
        fused.insert(0, s, b, ends_at - b);
        fusing = true;
      } else {
        if (fusing) {
          pieces.push_back(fused);
          fused.clear();
          fusing = false;
        }
        pieces.push_back(s.substr(b, ends_at - b));
      }
      ends_at = b;
    }
    if (fusing) pieces.push_back(fused);
    for (size_t k = pieces.size(); k-- > 0;) {
      const std::string& p = pieces[k];
      int64_t id;
      if (vocab.find(p, id)) {
        out.push_back(id);
        continue;
      }
      if (byte_fallback) {
        std::vector<int64_t> ids;
        bool all = true;
        for (unsigned char c : p) {
          int64_t bid;
          if (!vocab.find(byte_token(c), bid)) {
            all = false;
            break;
          }
          ids.push_back(bid);
        }
        if (all) {
          out.insert(out.end(), ids.begin(), ids.end());
          continue;
        }
      }
      if (!unk_id) throw TokenizerError("Unigram: no unk_id for an unknown piece");
      out.push_back(*unk_id);
    }
  }
  const std::string* id_to_token(int64_t id) const override { return vocab.token(id); }
  bool token_to_id(const std::string& t, int64_t& id) const override { return vocab.find(t, id); }
  size_t vocab_size() const override { return scores.size(); }
};

std::unique_ptr<Model> make_unigram(const json& spec, const std::string& where) {
  auto m = std::make_unique<Unigram>();
  const json& v = field(spec, "vocab", where);
  if (!v.is_array()) fail(where, "field \"vocab\" must be a list of [piece, score]");
  m->children.emplace_back();
  m->token_at.push_back(-1);
  m->min_score = std::numeric_limits<double>::infinity();
  for (size_t id = 0; id < v.size(); ++id) {
    const json& e = v[id];
    if (!e.is_array() || e.size() != 2 || !e[0].is_string() || !e[1].is_number())
      fail(where, "vocab[" + std::to_string(id) + "] is not [piece, score]");
    std::string piece = e[0].get<std::string>();
    double score = e[1].get<double>();
    m->vocab.add(piece, static_cast<int64_t>(id));
    m->scores.push_back(score);
    if (score < m->min_score) m->min_score = score;
  }
  // The trie holds each piece once, with the id the token map gives it (the last duplicate).
  for (auto& [piece, id] : m->vocab.ids)
    if (!piece.empty()) m->insert(piece, id);
  if (spec.contains("unk_id") && !spec.at("unk_id").is_null()) {
    int64_t unk = spec.at("unk_id").get<int64_t>();
    if (unk < 0 || static_cast<size_t>(unk) >= v.size()) fail(where, "unk_id " + std::to_string(unk) + " is outside the vocabulary");
    m->unk_id = unk;
  }
  m->byte_fallback = spec.contains("byte_fallback") && spec.at("byte_fallback").is_boolean() && spec.at("byte_fallback").get<bool>();
  return m;
}

}  // namespace

std::unique_ptr<Model> make_model(const json& spec, const std::string& where) {
  if (!spec.is_object()) fail(where, "must be an object");
  std::string type;
  if (spec.contains("type")) {
    type = str_field(spec, "type", where);
  } else if (spec.contains("merges")) {  // files written before the model had a "type"
    type = "BPE";
  } else if (spec.contains("vocab") && spec.at("vocab").is_array()) {
    type = "Unigram";
  } else if (spec.contains("continuing_subword_prefix")) {
    type = "WordPiece";
  } else {
    type = "WordLevel";
  }
  if (type == "BPE") return make_bpe(spec, where);
  if (type == "WordPiece") {
    auto m = std::make_unique<WordPiece>();
    m->vocab = read_vocab_map(spec, where);
    m->unk = spec.contains("unk_token") ? str_field(spec, "unk_token", where) : "[UNK]";
    m->prefix = spec.contains("continuing_subword_prefix") ? str_field(spec, "continuing_subword_prefix", where) : "##";
    if (spec.contains("max_input_chars_per_word")) m->max_chars = spec.at("max_input_chars_per_word").get<size_t>();
    return m;
  }
  if (type == "WordLevel") {
    auto m = std::make_unique<WordLevel>();
    m->vocab = read_vocab_map(spec, where);
    m->unk = spec.contains("unk_token") ? str_field(spec, "unk_token", where) : "<unk>";
    return m;
  }
  if (type == "Unigram") return make_unigram(spec, where);
  fail(where, "type \"" + type + "\" is not supported by the native tokenizer");
}

}  // namespace mmrt::tok
