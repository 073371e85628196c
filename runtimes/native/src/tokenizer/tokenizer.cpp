// Tokenizer: tokenizer.json loading, added tokens, the encode / decode pipelines, and the batches
// of runtimes/tokenize.py's TextTokenizer.
#include "tokenizer.h"

#include <fstream>
#include <set>
#include <sstream>
#include <sys/stat.h>

#include "internal.h"

namespace mmrt {

using tok::json;

namespace {

struct AddedToken {
  std::string content;
  bool single_word = false, lstrip = false, rstrip = false, normalized = false, special = false;
  bool operator==(const AddedToken& o) const {
    return content == o.content && single_word == o.single_word && lstrip == o.lstrip && rstrip == o.rstrip &&
           normalized == o.normalized && special == o.special;
  }
};

// Leftmost-longest matcher over a set of strings (HF uses a daachorse automaton with
// MatchKind::LeftmostLongest; a byte trie walked from each position gives the same matches).
class TokenTrie {
 public:
  bool empty() const { return nodes_.size() == 1 && nodes_[0].value < 0; }
  void insert(const std::string& s, int64_t value) {
    int32_t n = 0;
    for (unsigned char c : s) {
      auto it = nodes_[n].next.find(c);
      if (it == nodes_[n].next.end()) {
        nodes_.emplace_back();
        int32_t child = static_cast<int32_t>(nodes_.size() - 1);
        nodes_[n].next[c] = child;
        n = child;
      } else {
        n = it->second;
      }
    }
    if (n != 0) nodes_[n].value = value;
  }
  // The longest match starting at `at`: its end and value, or false.
  bool longest_at(const std::string& s, size_t at, size_t& end, int64_t& value) const {
    int32_t n = 0;
    bool found = false;
    for (size_t k = at; k < s.size(); ++k) {
      auto it = nodes_[n].next.find(static_cast<unsigned char>(s[k]));
      if (it == nodes_[n].next.end()) break;
      n = it->second;
      if (nodes_[n].value >= 0) {
        found = true;
        end = k + 1;
        value = nodes_[n].value;
      }
    }
    return found;
  }

 private:
  struct Node {
    std::unordered_map<unsigned char, int32_t> next;
    int64_t value = -1;
  };
  std::vector<Node> nodes_ = std::vector<Node>(1);
};

void next_cp_end(const std::string& s, size_t& i) {
  if (i < s.size()) tok::next_cp(s, i);
}

// Rust regex \w at the end / start of a string; \s* runs.
bool ends_with_word(const std::string& s, size_t end) {
  if (end == 0) return false;
  size_t b = end - 1;
  while (b > 0 && (static_cast<unsigned char>(s[b]) & 0xC0) == 0x80) --b;
  size_t i = b;
  return tok::is_regex_word(tok::next_cp(s, i));
}
bool starts_with_word(const std::string& s, size_t at) {
  if (at >= s.size()) return false;
  return tok::is_regex_word(tok::next_cp(s, at));
}
size_t space_leftmost_at_end(const std::string& s, size_t end) {
  size_t b = end;
  while (b > 0) {
    size_t p = b - 1;
    while (p > 0 && (static_cast<unsigned char>(s[p]) & 0xC0) == 0x80) --p;
    size_t i = p;
    if (!tok::is_whitespace(tok::next_cp(s, i))) break;
    b = p;
  }
  return b;
}
size_t space_rightmost_at_start(const std::string& s, size_t at) {
  size_t i = at;
  while (i < s.size()) {
    size_t b = i;
    if (!tok::is_whitespace(tok::next_cp(s, i))) return b - at;
  }
  return s.size() - at;
}

std::string read_file(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) throw TokenizerError("tokenizer file not found or unreadable: " + path);
  std::ostringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

bool is_dir(const std::string& p) {
  struct stat st{};
  return ::stat(p.c_str(), &st) == 0 && S_ISDIR(st.st_mode);
}
bool is_file(const std::string& p) {
  struct stat st{};
  return ::stat(p.c_str(), &st) == 0 && S_ISREG(st.st_mode);
}

}  // namespace

struct Tokenizer::Impl {
  std::string origin;
  std::unique_ptr<tok::Normalizer> normalizer;
  std::unique_ptr<tok::PreTokenizer> pre_tokenizer;
  std::unique_ptr<tok::Model> model;
  std::unique_ptr<tok::PostProcessor> post;
  std::unique_ptr<tok::Decoder> decoder;
  std::optional<int64_t> file_pad_id;  // "padding": {"pad_id"} of the file

  std::unordered_map<std::string, int64_t> added_ids;
  std::unordered_map<int64_t, AddedToken> added_by_id;
  std::unordered_map<int64_t, std::string> normalized_content;  // of added tokens with normalized=true
  std::set<std::string> special_contents;
  TokenTrie raw_trie, normalized_trie;

  std::optional<int64_t> token_to_id(const std::string& t) const {
    auto it = added_ids.find(t);
    if (it != added_ids.end()) return it->second;
    int64_t id;
    if (model->token_to_id(t, id)) return id;
    return std::nullopt;
  }

  void add_tokens(const std::vector<AddedToken>& tokens) {
    int64_t next_id = static_cast<int64_t>(model->vocab_size());
    for (const AddedToken& t : tokens) {
      if (t.content.empty()) continue;
      auto have = added_ids.find(t.content);
      if (have != added_ids.end() && added_by_id.count(have->second) && added_by_id[have->second] == t) continue;
      int64_t id;
      if (auto known = token_to_id(t.content)) id = *known;
      else id = next_id++;
      if (t.normalized && normalizer) {
        std::string normed = t.content;
        normalizer->normalize(normed);
        if (normed != t.content) normalized_content[id] = normed;
      }
      added_ids[t.content] = id;
      if (t.special) special_contents.insert(t.content);
      added_by_id[id] = t;
    }
    // The matchers hold each id's token (a re-added content keeps its last properties).
    for (auto& [id, t] : added_by_id) {
      if (t.normalized) {
        auto normed = normalized_content.find(id);
        normalized_trie.insert(normed == normalized_content.end() ? t.content : normed->second, id);
      } else {
        raw_trie.insert(t.content, id);
      }
    }
  }

  // An added token's string as decode and id_to_token give it: its normalized form if it has one.
  const std::string* added_token_string(int64_t id) const {
    auto normed = normalized_content.find(id);
    if (normed != normalized_content.end()) return &normed->second;
    auto it = added_by_id.find(id);
    return it == added_by_id.end() ? nullptr : &it->second.content;
  }

  // tokenizers' AddedVocabulary::find_matches: (id or -1, begin, end) covering `s`.
  struct Span {
    int64_t id;
    size_t begin, end;
  };
  std::vector<Span> find_matches(const std::string& s, const TokenTrie& trie) const {
    if (s.empty() || trie.empty()) return {{-1, 0, s.size()}};
    std::vector<Span> out;
    size_t start_offset = 0, pos = 0;
    while (pos < s.size()) {
      size_t end;
      int64_t id;
      if (!trie.longest_at(s, pos, end, id)) {
        ++pos;
        continue;
      }
      size_t start = pos, stop = end;
      pos = end;  // matches never overlap, skipped ones included
      const AddedToken& t = added_by_id.at(id);
      if (t.single_word) {
        bool start_space = start == 0 || !ends_with_word(s, start);
        bool stop_space = stop == s.size() || !starts_with_word(s, stop);
        if (!start_space || !stop_space) continue;
      }
      if (t.lstrip) start = std::max(space_leftmost_at_end(s, start), start_offset);
      if (t.rstrip) stop += space_rightmost_at_start(s, stop);
      if (start_offset < start) out.push_back({-1, start_offset, start});
      out.push_back({id, start, stop});
      start_offset = stop;
    }
    if (start_offset != s.size()) out.push_back({-1, start_offset, s.size()});
    return out;
  }

  void encode(const std::string& text, std::vector<int64_t>& ids) const {
    for (const Span& raw : find_matches(text, raw_trie)) {
      if (raw.id >= 0) {
        ids.push_back(raw.id);
        continue;
      }
      if (raw.end == raw.begin) continue;
      std::string piece = text.substr(raw.begin, raw.end - raw.begin);
      // How many normalized bytes the input's first character became (0: not this piece).
      size_t origin_len = 0;
      if (raw.begin == 0) {
        size_t first_end = 0;
        next_cp_end(text, first_end);
        std::string first = text.substr(0, first_end);
        if (normalizer) normalizer->normalize(first);
        origin_len = first.size();
      }
      if (normalizer) normalizer->normalize(piece);
      if (piece.empty()) continue;
      for (const Span& sub : find_matches(piece, normalized_trie)) {
        if (sub.id >= 0) {
          ids.push_back(sub.id);
          continue;
        }
        if (sub.end == sub.begin) continue;
        size_t origin = sub.begin < origin_len ? std::min(origin_len - sub.begin, sub.end - sub.begin) : 0;
        std::vector<tok::Piece> pieces{{piece.substr(sub.begin, sub.end - sub.begin), origin}};
        if (pre_tokenizer) pre_tokenizer->pre_tokenize(pieces);
        for (auto& p : pieces) model->tokenize(p.text, ids);
      }
    }
  }
};

Tokenizer::Tokenizer(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}
Tokenizer::~Tokenizer() = default;

std::unique_ptr<Tokenizer> Tokenizer::from_file(const std::string& path) {
  std::string file = is_dir(path) ? path + "/tokenizer.json" : path;
  if (!is_file(file)) throw TokenizerError("tokenizer file not found: " + file);
  return from_json(read_file(file), file);
}

std::unique_ptr<Tokenizer> Tokenizer::from_json(const std::string& json_text, const std::string& origin) {
  json j;
  try {
    j = json::parse(json_text);
  } catch (const json::exception& e) {
    throw TokenizerError("cannot read tokenizer file " + origin + ": " + e.what());
  }
  if (!j.is_object()) throw TokenizerError("cannot read tokenizer file " + origin + ": not a JSON object");
  auto impl = std::make_unique<Impl>();
  impl->origin = origin;
  auto part = [&](const char* name) -> const json* {
    return j.contains(name) && !j.at(name).is_null() ? &j.at(name) : nullptr;
  };
  if (!part("model")) throw TokenizerError("tokenizer file " + origin + ": missing field \"model\"");
  impl->model = tok::make_model(j.at("model"), origin + ": model");
  if (auto n = part("normalizer")) impl->normalizer = tok::make_normalizer(*n, origin + ": normalizer");
  if (auto p = part("pre_tokenizer")) impl->pre_tokenizer = tok::make_pre_tokenizer(*p, origin + ": pre_tokenizer");
  if (auto p = part("post_processor")) impl->post = tok::make_post_processor(*p, origin + ": post_processor");
  if (auto d = part("decoder")) impl->decoder = tok::make_decoder(*d, origin + ": decoder");
  if (auto p = part("padding"); p && p->contains("pad_id") && p->at("pad_id").is_number_integer())
    impl->file_pad_id = p->at("pad_id").get<int64_t>();
  std::vector<AddedToken> added;
  if (auto a = part("added_tokens")) {
    if (!a->is_array()) throw TokenizerError("tokenizer file " + origin + ": added_tokens must be a list");
    for (size_t k = 0; k < a->size(); ++k) {
      const json& t = (*a)[k];
      std::string where = origin + ": added_tokens[" + std::to_string(k) + "]";
      AddedToken x;
      x.content = tok::str_field(t, "content", where);
      auto flag = [&](const char* name, bool fallback) {
        return t.contains(name) && t.at(name).is_boolean() ? t.at(name).get<bool>() : fallback;
      };
      x.special = flag("special", false);
      x.single_word = flag("single_word", false);
      x.lstrip = flag("lstrip", false);
      x.rstrip = flag("rstrip", false);
      x.normalized = flag("normalized", !x.special);
      added.push_back(x);
    }
  }
  impl->add_tokens(added);
  return std::unique_ptr<Tokenizer>(new Tokenizer(std::move(impl)));
}

static void check_utf8(const std::string& s, const std::string& what) {
  size_t bad = tok::invalid_utf8_at(s);
  if (bad != std::string::npos)
    throw TokenizerInputError(what + " is not valid UTF-8 (at byte " + std::to_string(bad) + ")");
}

std::vector<int64_t> Tokenizer::encode(const std::string& utf8, bool add_special_tokens) const {
  check_utf8(utf8, "the text");
  std::vector<int64_t> ids;
  impl_->encode(utf8, ids);
  if (add_special_tokens && impl_->post) impl_->post->process(ids);
  return ids;
}

std::string Tokenizer::decode(const std::vector<int64_t>& ids, bool skip_special_tokens) const {
  std::vector<std::string> tokens;
  tokens.reserve(ids.size());
  for (int64_t id : ids) {
    const std::string* t = impl_->added_token_string(id);
    if (!t) t = impl_->model->id_to_token(id);
    if (!t) continue;
    if (skip_special_tokens && impl_->special_contents.count(*t)) continue;
    tokens.push_back(*t);
  }
  if (!impl_->decoder) {
    std::string out;
    for (size_t k = 0; k < tokens.size(); ++k) out += (k ? " " : "") + tokens[k];
    return out;
  }
  impl_->decoder->decode_chain(tokens);
  std::string out;
  for (auto& t : tokens) out += t;
  return out;
}

std::optional<int64_t> Tokenizer::token_to_id(const std::string& token) const { return impl_->token_to_id(token); }

std::optional<std::string> Tokenizer::id_to_token(int64_t id) const {
  if (auto t = impl_->added_token_string(id)) return *t;
  if (auto t = impl_->model->id_to_token(id)) return *t;
  return std::nullopt;
}

size_t Tokenizer::vocab_size() const {
  // = get_vocab_size(with_added_tokens=True): the model's plus the added ids it lacks
  size_t n = impl_->model->vocab_size();
  for (auto& [id, t] : impl_->added_by_id)
    if (!impl_->model->id_to_token(id)) ++n;
  return n;
}

size_t Tokenizer::num_special_tokens_to_add() const { return impl_->post ? impl_->post->added_tokens() : 0; }

// ---------------------------------------------------------------- TextTokenizer

namespace {

std::optional<std::string> pad_token_in(const std::string& cfg_path) {
  if (!is_file(cfg_path)) return std::nullopt;
  json cfg;
  try {
    cfg = json::parse(read_file(cfg_path));
  } catch (const std::exception&) {
    return std::nullopt;  // as tokenize.py: an unreadable config is skipped
  }
  if (!cfg.is_object() || !cfg.contains("pad_token")) return std::nullopt;
  const json& v = cfg.at("pad_token");
  if (v.is_string()) return v.get<std::string>();
  if (v.is_object() && v.contains("content") && v.at("content").is_string()) return v.at("content").get<std::string>();
  return std::nullopt;
}

}  // namespace

TextTokenizer TextTokenizer::from_file(const std::string& path, size_t max_length, std::optional<int64_t> pad_id,
                                       Padding padding) {
  std::string file = is_dir(path) ? path + "/tokenizer.json" : path;
  std::shared_ptr<const Tokenizer> t = Tokenizer::from_file(file);
  if (!pad_id) {
    std::string dir = file.find('/') == std::string::npos ? "." : file.substr(0, file.rfind('/'));
    for (const char* name : {"tokenizer_config.json", "special_tokens_map.json"}) {
      if (auto token = pad_token_in(dir + "/" + name)) {
        if (auto id = t->token_to_id(*token)) {
          pad_id = id;
          break;
        }
      }
    }
  }
  if (!pad_id) pad_id = t->impl_->file_pad_id;
  if (!pad_id) {
    for (const char* token : {"<|endoftext|>", "<pad>", "[PAD]", "</s>"}) {
      if (auto id = t->token_to_id(token)) {
        pad_id = id;
        break;
      }
    }
  }
  if (!pad_id) throw TokenizerError("tokenizer " + file + " names no pad token: pass pad_id");
  try {
    return TextTokenizer(t, max_length, *pad_id, padding);
  } catch (const TokenizerError& e) {
    throw TokenizerError("tokenizer " + file + ": " + e.what());
  }
}

TextTokenizer::TextTokenizer(std::shared_ptr<const Tokenizer> tokenizer, size_t max_length, int64_t pad_id,
                             Padding padding)
    : tokenizer_(std::move(tokenizer)), max_length_(max_length), pad_id_(pad_id), padding_(padding) {
  if (max_length < 2) throw TokenizerError("max_length must be an int >= 2, got " + std::to_string(max_length));
  if (max_length < tokenizer_->num_special_tokens_to_add())
    throw TokenizerError("max_length " + std::to_string(max_length) + " is shorter than the " +
                         std::to_string(tokenizer_->num_special_tokens_to_add()) + " special tokens added to each text");
  if (!tokenizer_->id_to_token(pad_id))
    throw TokenizerError("pad id " + std::to_string(pad_id) + " is not in the tokenizer's vocabulary");
}

static void check_texts(const std::vector<std::string>& texts) {
  if (texts.empty()) throw TokenizerInputError("no texts given: the list is empty");
  for (size_t i = 0; i < texts.size(); ++i) check_utf8(texts[i], "texts[" + std::to_string(i) + "]");
}

Batch TextTokenizer::operator()(const std::vector<std::string>& texts) const {
  check_texts(texts);
  const auto& impl = *tokenizer_->impl_;
  size_t added = tokenizer_->num_special_tokens_to_add();
  size_t keep = max_length_ - added;  // HF truncates the text's tokens so the specials fit
  std::vector<std::vector<int64_t>> rows(texts.size());
  size_t longest = 0;
  for (size_t r = 0; r < texts.size(); ++r) {
    impl.encode(texts[r], rows[r]);
    if (rows[r].size() > keep) rows[r].resize(keep);
    if (impl.post) impl.post->process(rows[r]);
    longest = std::max(longest, rows[r].size());
  }
  Batch b;
  b.rows = texts.size();
  b.cols = padding_ == Padding::MaxLength ? max_length_ : longest;
  b.input_ids.assign(b.rows * b.cols, pad_id_);
  b.attention_mask.assign(b.rows * b.cols, 0);
  for (size_t r = 0; r < b.rows; ++r) {
    std::copy(rows[r].begin(), rows[r].end(), b.input_ids.begin() + static_cast<std::ptrdiff_t>(r * b.cols));
    std::fill_n(b.attention_mask.begin() + static_cast<std::ptrdiff_t>(r * b.cols), rows[r].size(), 1);
  }
  return b;
}

std::vector<size_t> TextTokenizer::count_tokens(const std::vector<std::string>& texts) const {
  check_texts(texts);
  std::vector<size_t> counts;
  for (auto& t : texts) counts.push_back(tokenizer_->encode(t, true).size());
  return counts;
}

}  // namespace mmrt
