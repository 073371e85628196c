// Normalizers, pre-tokenizers, post-processors and decoders of tokenizer.json, each the port of
// its HF tokenizers (0.23) namesake on plain strings (offsets are not tracked: ids and decoded
// text do not depend on them).
#include <array>
#include <unordered_map>

#include "internal.h"

namespace mmrt::tok {

[[noreturn]] void fail(const std::string& where, const std::string& what) { throw TokenizerError(where + ": " + what); }

const json& field(const json& obj, const char* name, const std::string& where) {
  if (!obj.is_object() || !obj.contains(name)) fail(where, std::string("missing field \"") + name + "\"");
  return obj.at(name);
}

std::string str_field(const json& obj, const char* name, const std::string& where) {
  const json& v = field(obj, name, where);
  if (!v.is_string()) fail(where, std::string("field \"") + name + "\" must be a string");
  return v.get<std::string>();
}

static bool bool_field(const json& obj, const char* name, bool fallback, const std::string& where) {
  if (!obj.contains(name) || obj.at(name).is_null()) return fallback;
  if (!obj.at(name).is_boolean()) fail(where, std::string("field \"") + name + "\" must be true or false");
  return obj.at(name).get<bool>();
}

static std::string type_of(const json& spec, const std::string& where) {
  if (!spec.is_object()) fail(where, "must be an object with a \"type\"");
  return str_field(spec, "type", where);
}

[[noreturn]] static void unsupported(const std::string& where, const std::string& type) {
  fail(where, "type \"" + type + "\" is not supported by the native tokenizer");
}

// A Fn(char) -> bool pattern: every matching character is its own match.
template <typename Pred>
static std::vector<Match> char_matches(const std::string& s, Pred pred) {
  if (s.empty()) return {{0, 0, false}};
  std::vector<Match> out;
  size_t last = 0, i = 0;
  while (i < s.size()) {
    size_t b = i;
    char32_t c = next_cp(s, i);
    if (pred(c)) {
      if (last < b) out.push_back({last, b, false});
      out.push_back({b, i, true});
      last = i;
    }
  }
  if (last < s.size()) out.push_back({last, s.size(), false});
  return out;
}

SplitBehavior parse_behavior(const json& spec, const std::string& where) {
  std::string b = spec.is_string() ? spec.get<std::string>() : "";
  if (b == "Removed") return SplitBehavior::Removed;
  if (b == "Isolated") return SplitBehavior::Isolated;
  if (b == "MergedWithPrevious") return SplitBehavior::MergedWithPrevious;
  if (b == "MergedWithNext") return SplitBehavior::MergedWithNext;
  if (b == "Contiguous") return SplitBehavior::Contiguous;
  fail(where, "unknown split behavior " + spec.dump());
}

void split_by(const Piece& piece, std::vector<Match> m, SplitBehavior behavior, std::vector<Piece>& out) {
  // (begin, end, remove)
  std::vector<Match> spans;
  switch (behavior) {
    case SplitBehavior::Isolated:
      for (auto& x : m) spans.push_back({x.begin, x.end, false});
      break;
    case SplitBehavior::Removed:
      spans = m;
      break;
    case SplitBehavior::Contiguous: {
      int previous = -1;
      for (auto& x : m) {
        if (previous == static_cast<int>(x.is_match) && !spans.empty()) spans.back().end = x.end;
        else spans.push_back({x.begin, x.end, false});
        previous = x.is_match;
      }
      break;
    }
    case SplitBehavior::MergedWithPrevious: {
      bool previous = false;
      for (auto& x : m) {
        if (x.is_match && !previous && !spans.empty()) spans.back().end = x.end;
        else spans.push_back({x.begin, x.end, false});
        previous = x.is_match;
      }
      break;
    }
    case SplitBehavior::MergedWithNext: {
      bool previous = false;
      for (size_t k = m.size(); k-- > 0;) {
        auto& x = m[k];
        if (x.is_match && !previous && !spans.empty()) spans.back().begin = x.begin;
        else spans.push_back({x.begin, x.end, false});
        previous = x.is_match;
      }
      std::reverse(spans.begin(), spans.end());
      break;
    }
  }
  for (auto& s : spans) {
    if (s.is_match || s.end == s.begin) continue;  // is_match here means "remove"
    size_t origin = s.begin < piece.origin_len ? piece.origin_len - s.begin : 0;
    out.push_back({piece.text.substr(s.begin, s.end - s.begin), std::min(origin, s.end - s.begin)});
  }
}

// Replace every match of `pattern` in `s` with `content` (NormalizedString::replace).
static std::string replace_all(const Pattern& pattern, const std::string& content, const std::string& s) {
  std::string out;
  for (auto& m : pattern.find_matches(s)) {
    if (m.is_match) out += content;
    else out.append(s, m.begin, m.end - m.begin);
  }
  return out;
}

// ---------------------------------------------------------------- normalizers

namespace {

struct BertNormalizer : Normalizer {
  bool clean_text, chinese, strip_accents, lowercase;
  void normalize(std::string& s) const override {
    std::string out;
    out.reserve(s.size() + 8);
    size_t i = 0;
    while (i < s.size()) {
      char32_t c = next_cp(s, i);
      if (clean_text) {
        if (c == 0 || c == 0xFFFD || (c != '\t' && c != '\n' && c != '\r' && is_other(c))) continue;
        if (is_whitespace(c)) c = ' ';
      }
      if (chinese && is_chinese_char(c)) {
        out += ' ';
        append_utf8(out, c);
        out += ' ';
      } else {
        append_utf8(out, c);
      }
    }
    if (strip_accents) {
      std::string nfd = unicode_normalize(out, "NFD");
      out.clear();
      size_t k = 0;
      while (k < nfd.size()) {
        char32_t c = next_cp(nfd, k);
        if (!is_mark_nonspacing(c)) append_utf8(out, c);
      }
    }
    if (lowercase) {
      std::string low;
      low.reserve(out.size());
      size_t k = 0;
      while (k < out.size()) append_lowercase(low, next_cp(out, k));
      out.swap(low);
    }
    s.swap(out);
  }
};

struct UnicodeNormalizer : Normalizer {
  std::string form;
  void normalize(std::string& s) const override { s = unicode_normalize(s, form); }
};

struct Lowercase : Normalizer {
  void normalize(std::string& s) const override {
    std::string out;
    out.reserve(s.size());
    size_t i = 0;
    while (i < s.size()) append_lowercase(out, next_cp(s, i));
    s.swap(out);
  }
};

struct StripAccents : Normalizer {
  void normalize(std::string& s) const override {
    std::string out;
    size_t i = 0;
    while (i < s.size()) {
      char32_t c = next_cp(s, i);
      if (!is_combining_mark(c)) append_utf8(out, c);
    }
    s.swap(out);
  }
};

struct ReplaceNormalizer : Normalizer {
  std::unique_ptr<Pattern> pattern;
  std::string content;
  void normalize(std::string& s) const override { s = replace_all(*pattern, content, s); }
};

struct Strip : Normalizer {
  bool left, right;
  void normalize(std::string& s) const override {
    size_t b = 0, e = s.size();
    if (left) {
      size_t i = 0;
      while (i < s.size()) {
        size_t at = i;
        if (!is_whitespace(next_cp(s, i))) {
          b = at;
          break;
        }
        b = i;
      }
    }
    if (right) {
      size_t i = b, last_non_space_end = b;
      while (i < s.size()) {
        char32_t c = next_cp(s, i);
        if (!is_whitespace(c)) last_non_space_end = i;
      }
      e = last_non_space_end;
    }
    s = s.substr(b, e - b);
  }
};

struct Prepend : Normalizer {
  std::string prefix;
  void normalize(std::string& s) const override {
    if (!s.empty()) s = prefix + s;
  }
};

struct NormalizerSequence : Normalizer {
  std::vector<std::unique_ptr<Normalizer>> parts;
  void normalize(std::string& s) const override {
    for (auto& p : parts) p->normalize(s);
  }
};

}  // namespace

std::unique_ptr<Normalizer> make_normalizer(const json& spec, const std::string& where) {
  std::string type = type_of(spec, where);
  if (type == "BertNormalizer") {
    auto n = std::make_unique<BertNormalizer>();
    n->clean_text = bool_field(spec, "clean_text", true, where);
    n->chinese = bool_field(spec, "handle_chinese_chars", true, where);
    n->lowercase = bool_field(spec, "lowercase", true, where);
    n->strip_accents = bool_field(spec, "strip_accents", n->lowercase, where);  // null: follows lowercase
    return n;
  }
  if (type == "NFC" || type == "NFD" || type == "NFKC" || type == "NFKD") {
    auto n = std::make_unique<UnicodeNormalizer>();
    n->form = type;
    return n;
  }
  if (type == "Lowercase") return std::make_unique<Lowercase>();
  if (type == "StripAccents") return std::make_unique<StripAccents>();
  if (type == "Replace") {
    auto n = std::make_unique<ReplaceNormalizer>();
    n->pattern = std::make_unique<Pattern>(field(spec, "pattern", where), where + ".pattern");
    n->content = str_field(spec, "content", where);
    return n;
  }
  if (type == "Strip") {
    auto n = std::make_unique<Strip>();
    n->left = bool_field(spec, "strip_left", true, where);
    n->right = bool_field(spec, "strip_right", true, where);
    return n;
  }
  if (type == "Prepend") {
    auto n = std::make_unique<Prepend>();
    n->prefix = str_field(spec, "prepend", where);
    return n;
  }
  if (type == "Sequence") {
    auto n = std::make_unique<NormalizerSequence>();
    const json& list = field(spec, "normalizers", where);
    if (!list.is_array()) fail(where, "field \"normalizers\" must be a list");
    for (size_t k = 0; k < list.size(); ++k)
      n->parts.push_back(make_normalizer(list[k], where + ".normalizers[" + std::to_string(k) + "]"));
    return n;
  }
  unsupported(where, type);
}

// ---------------------------------------------------------------- pre-tokenizers

namespace {

// GPT-2's bytes_to_unicode: printable bytes stand for themselves, the rest map to U+0100...
std::array<std::string, 256> byte_chars() {
  std::array<std::string, 256> table;
  int n = 0;
  for (int b = 0; b < 256; ++b) {
    bool printable = (b >= '!' && b <= '~') || (b >= 0xA1 && b <= 0xAC) || (b >= 0xAE && b <= 0xFF);
    char32_t cp = printable ? static_cast<char32_t>(b) : static_cast<char32_t>(256 + n++);
    append_utf8(table[b], cp);
  }
  return table;
}
const std::array<std::string, 256>& kByteChars = *new std::array<std::string, 256>(byte_chars());


struct ByteLevelPre : PreTokenizer {
  bool add_prefix_space, use_regex;
  std::unique_ptr<Regex> regex;
  void pre_tokenize(std::vector<Piece>& pieces) const override {
    std::vector<Piece> out;
    for (auto& p : pieces) {
      Piece q = p;
      if (add_prefix_space && (q.text.empty() || q.text[0] != ' ')) {
        q.text.insert(0, " ");
        if (q.origin_len) ++q.origin_len;
      }
      if (use_regex) {
        std::vector<Match> m;
        size_t prev = 0;
        for (auto [b, e] : regex->find_all(q.text)) {
          if (prev != b) m.push_back({prev, b, false});
          m.push_back({b, e, true});
          prev = e;
        }
        if (prev != q.text.size() || q.text.empty()) m.push_back({prev, q.text.size(), false});
        split_by(q, m, SplitBehavior::Isolated, out);
      } else if (!q.text.empty()) {
        out.push_back(q);
      }
    }
    for (auto& p : out) {
      std::string mapped;
      mapped.reserve(p.text.size() * 2);
      for (unsigned char b : p.text) mapped += kByteChars[b];
      p.text.swap(mapped);
    }
    pieces.swap(out);
  }
};

template <typename Pred>
struct CharSplit : PreTokenizer {
  Pred pred;
  SplitBehavior behavior;
  CharSplit(Pred p, SplitBehavior b) : pred(p), behavior(b) {}
  void pre_tokenize(std::vector<Piece>& pieces) const override {
    std::vector<Piece> out;
    for (auto& p : pieces) split_by(p, char_matches(p.text, pred), behavior, out);
    pieces.swap(out);
  }
};

struct BertPre : PreTokenizer {
  void pre_tokenize(std::vector<Piece>& pieces) const override {
    std::vector<Piece> words, out;
    for (auto& p : pieces) split_by(p, char_matches(p.text, is_whitespace), SplitBehavior::Removed, words);
    for (auto& w : words) split_by(w, char_matches(w.text, is_bert_punctuation), SplitBehavior::Isolated, out);
    pieces.swap(out);
  }
};

// Rust regex \w+|[^\w\s]+, inverted and removed: runs of word characters and runs of other
// non-space characters.
struct WhitespacePre : PreTokenizer {
  void pre_tokenize(std::vector<Piece>& pieces) const override {
    std::vector<Piece> out;
    for (auto& p : pieces) {
      const std::string& s = p.text;
      size_t i = 0;
      int run = 0;  // 0 none, 1 word, 2 other
      size_t run_begin = 0;
      while (i <= s.size()) {
        size_t at = i;
        int kind = 0;
        if (i < s.size()) {
          char32_t c = next_cp(s, i);
          kind = is_regex_word(c) ? 1 : is_whitespace(c) ? 0 : 2;
        } else {
          ++i;
        }
        if (kind != run) {
          if (run != 0) out.push_back({s.substr(run_begin, at - run_begin), run_begin < p.origin_len ? std::min(p.origin_len - run_begin, at - run_begin) : 0});
          run = kind;
          run_begin = at;
        }
      }
    }
    pieces.swap(out);
  }
};

struct SplitPre : PreTokenizer {
  std::unique_ptr<Pattern> pattern;
  SplitBehavior behavior;
  bool invert;
  void pre_tokenize(std::vector<Piece>& pieces) const override {
    std::vector<Piece> out;
    for (auto& p : pieces) {
      auto m = pattern->find_matches(p.text);
      if (invert)
        for (auto& x : m) x.is_match = !x.is_match;
      split_by(p, m, behavior, out);
    }
    pieces.swap(out);
  }
};

enum class PrependScheme { Always, Never, First };

PrependScheme parse_prepend(const json& spec, const std::string& where) {
  if (spec.contains("prepend_scheme")) {
    std::string s = str_field(spec, "prepend_scheme", where);
    if (s == "always") return PrependScheme::Always;
    if (s == "never") return PrependScheme::Never;
    if (s == "first") return PrependScheme::First;
    fail(where, "unknown prepend_scheme \"" + s + "\"");
  }
  return bool_field(spec, "add_prefix_space", true, where) ? PrependScheme::Always : PrependScheme::Never;
}

char32_t single_char(const json& spec, const char* name, const std::string& where) {
  std::string s = str_field(spec, name, where);
  size_t i = 0;
  if (s.empty() || invalid_utf8_at(s) != std::string::npos) fail(where, std::string("field \"") + name + "\" must be one character");
  char32_t c = next_cp(s, i);
  if (i != s.size()) fail(where, std::string("field \"") + name + "\" must be one character");
  return c;
}

struct MetaspacePre : PreTokenizer {
  char32_t replacement;
  std::string rep;
  PrependScheme scheme;
  bool split;
  void pre_tokenize(std::vector<Piece>& pieces) const override {
    std::vector<Piece> out;
    for (auto& p : pieces) {
      Piece q{std::string(), 0};
      for (char ch : p.text) {
        if (ch == ' ') q.text += rep;
        else q.text += ch;
      }
      bool starts = q.text.compare(0, rep.size(), rep) == 0;
      if (!starts && (scheme == PrependScheme::Always || (scheme == PrependScheme::First && p.origin_len > 0))) q.text.insert(0, rep);
      if (split) {
        char32_t r = replacement;
        split_by(q, char_matches(q.text, [r](char32_t c) { return c == r; }), SplitBehavior::MergedWithNext, out);
      } else if (!q.text.empty()) {
        out.push_back(q);
      }
    }
    pieces.swap(out);
  }
};

struct PreTokenizerSequence : PreTokenizer {
  std::vector<std::unique_ptr<PreTokenizer>> parts;
  void pre_tokenize(std::vector<Piece>& pieces) const override {
    for (auto& p : parts) p->pre_tokenize(pieces);
  }
};

template <typename Pred>
std::unique_ptr<PreTokenizer> char_split(Pred pred, SplitBehavior b) {
  return std::make_unique<CharSplit<Pred>>(pred, b);
}

}  // namespace

std::unique_ptr<PreTokenizer> make_pre_tokenizer(const json& spec, const std::string& where) {
  std::string type = type_of(spec, where);
  if (type == "ByteLevel") {
    auto p = std::make_unique<ByteLevelPre>();
    p->add_prefix_space = bool_field(spec, "add_prefix_space", true, where);
    p->use_regex = bool_field(spec, "use_regex", true, where);
    p->regex = std::make_unique<Regex>(kGpt2Pattern, where);
    return p;
  }
  if (type == "BertPreTokenizer") return std::make_unique<BertPre>();
  if (type == "Whitespace") return std::make_unique<WhitespacePre>();
  if (type == "WhitespaceSplit") return char_split(is_whitespace, SplitBehavior::Removed);
  if (type == "Punctuation") {
    SplitBehavior b = spec.contains("behavior") ? parse_behavior(spec.at("behavior"), where) : SplitBehavior::Isolated;
    return char_split(is_bert_punctuation, b);
  }
  if (type == "Digits") {
    bool individual = bool_field(spec, "individual_digits", false, where);
    return char_split(is_numeric, individual ? SplitBehavior::Isolated : SplitBehavior::Contiguous);
  }
  if (type == "CharDelimiterSplit") {
    char32_t d = single_char(spec, "delimiter", where);
    return char_split([d](char32_t c) { return c == d; }, SplitBehavior::Removed);
  }
  if (type == "Split") {
    auto p = std::make_unique<SplitPre>();
    p->pattern = std::make_unique<Pattern>(field(spec, "pattern", where), where + ".pattern");
    p->behavior = parse_behavior(field(spec, "behavior", where), where);
    p->invert = bool_field(spec, "invert", false, where);
    return p;
  }
  if (type == "Metaspace") {
    auto p = std::make_unique<MetaspacePre>();
    p->replacement = single_char(spec, "replacement", where);
    append_utf8(p->rep, p->replacement);
    p->scheme = parse_prepend(spec, where);
    p->split = bool_field(spec, "split", true, where);
    return p;
  }
  if (type == "Sequence") {
    auto p = std::make_unique<PreTokenizerSequence>();
    const json& list = field(spec, "pretokenizers", where);
    if (!list.is_array()) fail(where, "field \"pretokenizers\" must be a list");
    for (size_t k = 0; k < list.size(); ++k)
      p->parts.push_back(make_pre_tokenizer(list[k], where + ".pretokenizers[" + std::to_string(k) + "]"));
    return p;
  }
  unsupported(where, type);
}

// ---------------------------------------------------------------- post-processors

namespace {

struct Template : PostProcessor {
  // Each item: the ids of a special token, or empty for the sequence itself.
  std::vector<std::vector<int64_t>> items;
  size_t added = 0;
  size_t added_tokens() const override { return added; }
  void process(std::vector<int64_t>& ids) const override {
    std::vector<int64_t> out;
    out.reserve(ids.size() + added);
    for (auto& it : items) {
      if (it.empty()) out.insert(out.end(), ids.begin(), ids.end());
      else out.insert(out.end(), it.begin(), it.end());
    }
    ids.swap(out);
  }
};

struct NoAdd : PostProcessor {  // ByteLevel: trims offsets only
  size_t added_tokens() const override { return 0; }
  void process(std::vector<int64_t>&) const override {}
};

struct PostSequence : PostProcessor {
  std::vector<std::unique_ptr<PostProcessor>> parts;
  size_t added_tokens() const override {
    size_t n = 0;
    for (auto& p : parts) n += p->added_tokens();
    return n;
  }
  void process(std::vector<int64_t>& ids) const override {
    for (auto& p : parts) p->process(ids);
  }
};

int64_t pair_id(const json& spec, const char* name, const std::string& where) {
  const json& v = field(spec, name, where);
  if (!v.is_array() || v.size() != 2 || !v[1].is_number_integer())
    fail(where, std::string("field \"") + name + "\" must be [token, id]");
  return v[1].get<int64_t>();
}

}  // namespace

std::unique_ptr<PostProcessor> make_post_processor(const json& spec, const std::string& where) {
  std::string type = type_of(spec, where);
  if (type == "BertProcessing" || type == "RobertaProcessing") {
    auto p = std::make_unique<Template>();
    p->items = {{pair_id(spec, "cls", where)}, {}, {pair_id(spec, "sep", where)}};
    p->added = 2;
    return p;
  }
  if (type == "TemplateProcessing") {
    auto p = std::make_unique<Template>();
    const json& single = field(spec, "single", where);
    const json& specials = field(spec, "special_tokens", where);
    if (!single.is_array()) fail(where, "field \"single\" must be a list");
    for (auto& item : single) {
      if (item.contains("Sequence")) {
        p->items.emplace_back();
      } else if (item.contains("SpecialToken")) {
        std::string name = str_field(item.at("SpecialToken"), "id", where + ".single");
        if (!specials.contains(name)) fail(where, "special token \"" + name + "\" of \"single\" is not in special_tokens");
        const json& ids = field(specials.at(name), "ids", where + ".special_tokens");
        std::vector<int64_t> v;
        for (auto& id : ids) v.push_back(id.get<int64_t>());
        p->added += v.size();
        if (!v.empty()) p->items.push_back(v);
      } else {
        fail(where, "an item of \"single\" is neither Sequence nor SpecialToken: " + item.dump());
      }
    }
    return p;
  }
  if (type == "ByteLevel") return std::make_unique<NoAdd>();
  if (type == "Sequence") {
    auto p = std::make_unique<PostSequence>();
    const json& list = field(spec, "processors", where);
    for (size_t k = 0; k < list.size(); ++k)
      p->parts.push_back(make_post_processor(list[k], where + ".processors[" + std::to_string(k) + "]"));
    return p;
  }
  unsupported(where, type);
}

// ---------------------------------------------------------------- decoders

namespace {

struct ByteLevelDec : Decoder {
  std::unordered_map<char32_t, unsigned char> char_bytes;
  ByteLevelDec() {
    for (int b = 0; b < 256; ++b) {
      size_t i = 0;
      char_bytes[next_cp(kByteChars[b], i)] = static_cast<unsigned char>(b);
    }
  }
  void decode_chain(std::vector<std::string>& tokens) const override {
    std::string bytes;
    for (auto& t : tokens) {
      std::string mapped;
      bool all = true;
      size_t i = 0;
      while (i < t.size()) {
        auto it = char_bytes.find(next_cp(t, i));
        if (it == char_bytes.end()) {
          all = false;
          break;
        }
        mapped += static_cast<char>(it->second);
      }
      bytes += all ? mapped : t;
    }
    tokens = {from_utf8_lossy(bytes)};
  }
};

std::string replace_str(std::string s, const std::string& from, const std::string& to) {
  if (from.empty()) return s;
  std::string out;
  size_t at = 0;
  for (size_t f = s.find(from); f != std::string::npos; f = s.find(from, at)) {
    out.append(s, at, f - at);
    out += to;
    at = f + from.size();
  }
  out.append(s, at, std::string::npos);
  return out;
}

std::string cleanup(const std::string& s) {
  static const std::pair<const char*, const char*> kRules[] = {
      {" .", "."},      {" ?", "?"},     {" !", "!"},     {" ,", ","},     {" ' ", "'"},    {" n't", "n't"},
      {" 'm", "'m"},    {" do not", " don't"}, {" 's", "'s"}, {" 've", "'ve"}, {" 're", "'re"}};
  std::string out = s;
  for (auto& [a, b] : kRules) out = replace_str(out, a, b);
  return out;
}

struct WordPieceDec : Decoder {
  std::string prefix;
  bool clean;
  void decode_chain(std::vector<std::string>& tokens) const override {
    for (size_t i = 0; i < tokens.size(); ++i) {
      std::string& t = tokens[i];
      if (i != 0) {
        if (t.compare(0, prefix.size(), prefix) == 0) {
          size_t at = t.find(prefix);  // replacen(prefix, "", 1): the first occurrence
          t.erase(at, prefix.size());
        } else {
          t.insert(0, " ");
        }
      }
      if (clean) t = cleanup(t);
    }
  }
};

struct MetaspaceDec : Decoder {
  char32_t replacement;
  PrependScheme scheme;
  void decode_chain(std::vector<std::string>& tokens) const override {
    for (size_t k = 0; k < tokens.size(); ++k) {
      std::string out;
      const std::string& t = tokens[k];
      size_t i = 0;
      while (i < t.size()) {
        char32_t c = next_cp(t, i);
        if (c == replacement) {
          if (!(k == 0 && scheme != PrependScheme::Never)) out += ' ';
        } else {
          append_utf8(out, c);
        }
      }
      tokens[k].swap(out);
    }
  }
};

struct BPEDec : Decoder {
  std::string suffix;
  void decode_chain(std::vector<std::string>& tokens) const override {
    for (size_t i = 0; i < tokens.size(); ++i) tokens[i] = replace_str(tokens[i], suffix, i + 1 == tokens.size() ? "" : " ");
  }
};

struct ReplaceDec : Decoder {
  std::unique_ptr<Pattern> pattern;
  std::string content;
  void decode_chain(std::vector<std::string>& tokens) const override {
    for (auto& t : tokens) t = replace_all(*pattern, content, t);
  }
};

struct ByteFallbackDec : Decoder {
  void decode_chain(std::vector<std::string>& tokens) const override {
    std::vector<std::string> out;
    std::string pending;
    auto flush = [&] {
      if (pending.empty()) return;
      if (invalid_utf8_at(pending) == std::string::npos) out.push_back(pending);
      else
        for (size_t k = 0; k < pending.size(); ++k) out.push_back("\xEF\xBF\xBD");
      pending.clear();
    };
    auto hex = [](char c) -> int {
      if (c >= '0' && c <= '9') return c - '0';
      if (c >= 'a' && c <= 'f') return c - 'a' + 10;
      if (c >= 'A' && c <= 'F') return c - 'A' + 10;
      return -1;
    };
    for (auto& t : tokens) {
      if (t.size() == 6 && t.compare(0, 3, "<0x") == 0 && t[5] == '>' && hex(t[3]) >= 0 && hex(t[4]) >= 0) {
        pending += static_cast<char>(hex(t[3]) * 16 + hex(t[4]));
      } else {
        flush();
        out.push_back(t);
      }
    }
    flush();
    tokens.swap(out);
  }
};

struct FuseDec : Decoder {
  void decode_chain(std::vector<std::string>& tokens) const override {
    std::string all;
    for (auto& t : tokens) all += t;
    tokens = {all};
  }
};

struct StripDec : Decoder {
  char32_t content;
  size_t start, stop;
  void decode_chain(std::vector<std::string>& tokens) const override {
    for (auto& t : tokens) {
      std::vector<char32_t> chars;
      size_t i = 0;
      while (i < t.size()) chars.push_back(next_cp(t, i));
      size_t start_cut = 0;
      for (size_t k = 0; k < start && k < chars.size(); ++k) {
        if (chars[k] != content) break;
        start_cut = k + 1;
      }
      size_t stop_cut = chars.size();
      for (size_t k = 0; k < stop && k < chars.size(); ++k) {
        size_t index = chars.size() - k - 1;
        if (chars[index] != content) break;
        stop_cut = index;
      }
      std::string out;
      for (size_t k = start_cut; k < stop_cut; ++k) append_utf8(out, chars[k]);
      t.swap(out);
    }
  }
};

struct DecoderSequence : Decoder {
  std::vector<std::unique_ptr<Decoder>> parts;
  void decode_chain(std::vector<std::string>& tokens) const override {
    for (auto& p : parts) p->decode_chain(tokens);
  }
};

size_t count_field(const json& spec, const char* name, const std::string& where) {
  const json& v = field(spec, name, where);
  if (!v.is_number_unsigned() && !(v.is_number_integer() && v.get<int64_t>() >= 0))
    fail(where, std::string("field \"") + name + "\" must be a count");
  return v.get<size_t>();
}

}  // namespace

std::unique_ptr<Decoder> make_decoder(const json& spec, const std::string& where) {
  std::string type = type_of(spec, where);
  if (type == "ByteLevel") return std::make_unique<ByteLevelDec>();
  if (type == "WordPiece") {
    auto d = std::make_unique<WordPieceDec>();
    d->prefix = spec.contains("prefix") ? str_field(spec, "prefix", where) : "##";
    d->clean = bool_field(spec, "cleanup", true, where);
    return d;
  }
  if (type == "Metaspace") {
    auto d = std::make_unique<MetaspaceDec>();
    d->replacement = single_char(spec, "replacement", where);
    d->scheme = parse_prepend(spec, where);
    return d;
  }
  if (type == "BPEDecoder") {
    auto d = std::make_unique<BPEDec>();
    d->suffix = spec.contains("suffix") ? str_field(spec, "suffix", where) : "</w>";
    return d;
  }
  if (type == "Replace") {
    auto d = std::make_unique<ReplaceDec>();
    d->pattern = std::make_unique<Pattern>(field(spec, "pattern", where), where + ".pattern");
    d->content = str_field(spec, "content", where);
    return d;
  }
  if (type == "ByteFallback") return std::make_unique<ByteFallbackDec>();
  if (type == "Fuse") return std::make_unique<FuseDec>();
  if (type == "Strip") {
    auto d = std::make_unique<StripDec>();
    d->content = single_char(spec, "content", where);
    d->start = count_field(spec, "start", where);
    d->stop = count_field(spec, "stop", where);
    return d;
  }
  if (type == "Sequence") {
    auto d = std::make_unique<DecoderSequence>();
    const json& list = field(spec, "decoders", where);
    if (!list.is_array()) fail(where, "field \"decoders\" must be a list");
    for (size_t k = 0; k < list.size(); ++k)
      d->parts.push_back(make_decoder(list[k], where + ".decoders[" + std::to_string(k) + "]"));
    return d;
  }
  unsupported(where, type);
}

}  // namespace mmrt::tok
