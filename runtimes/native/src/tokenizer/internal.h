// Internal pieces of the tokenizer (not installed): Unicode helpers with the semantics of the Rust
// crates HF tokenizers is built on, a PCRE2 regex that behaves as its Oniguruma one, and the
// pipeline components read from tokenizer.json.
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <unordered_map>
#include <utility>
#include <vector>

#include <nlohmann/json.hpp>

#include "tokenizer.h"

namespace mmrt::tok {

using json = nlohmann::json;

// ---- Unicode (unicode.cpp; the character classes come from unicode_tables.inc) ----
// Decode one code point at s[i] (s must be valid UTF-8); advances i.
char32_t next_cp(const std::string& s, size_t& i);
void append_utf8(std::string& out, char32_t cp);
size_t utf8_len(unsigned char lead);
// Byte offset of the first invalid UTF-8 sequence, or npos.
size_t invalid_utf8_at(const std::string& s);
// Rust's String::from_utf8_lossy: each maximal invalid subpart becomes U+FFFD.
std::string from_utf8_lossy(const std::string& bytes);

bool is_whitespace(char32_t c);        // Rust char::is_whitespace (White_Space)
bool is_other(char32_t c);             // unicode_categories is_other: Cc Cf Co Cs
bool is_mark_nonspacing(char32_t c);   // Mn (BertNormalizer's strip_accents)
bool is_combining_mark(char32_t c);    // Mn Mc Me (the StripAccents normalizer)
bool is_bert_punctuation(char32_t c);  // ASCII punctuation or P*
bool is_numeric(char32_t c);           // Rust char::is_numeric: Nd Nl No
bool is_regex_word(char32_t c);        // Rust regex \w
bool is_chinese_char(char32_t c);      // BertNormalizer's CJK ranges
// The content of a regex character class for Oniguruma's \p{L} ('L'), \p{N} ('N') or \s ('s').
const std::string& onig_class(char name);
bool is_onig_letter(char32_t c);  // Oniguruma's \p{L}
bool is_onig_number(char32_t c);  // \p{N}
bool is_onig_space(char32_t c);   // \s
void append_lowercase(std::string& out, char32_t c);  // Rust char::to_lowercase
std::string unicode_normalize(const std::string& s, const std::string& form);  // NFC NFD NFKC NFKD

// ---- Regex (regex.cpp): an Oniguruma pattern run by PCRE2 ----
struct Match {
  size_t begin, end;
  bool is_match;
};
class Regex {
 public:
  // Throws TokenizerError naming `where` when the pattern does not compile.
  Regex(const std::string& onig_pattern, const std::string& where);
  ~Regex();
  Regex(const Regex&) = delete;
  Regex& operator=(const Regex&) = delete;
  // The (begin, end) of every match, as onig's find_iter yields them.
  std::vector<std::pair<size_t, size_t>> find_all(const std::string& s) const;

 private:
  enum class Native { None, Gpt2, Clip };
  Native native_ = Native::None;  // a pattern matched by hand-written code, not PCRE2
  void* code_ = nullptr;          // pcre2_code_8*
};
// GPT-2's pre-tokenization pattern (the ByteLevel pre-tokenizer's) and CLIP's Split pattern.
extern const char* const kGpt2Pattern;
extern const char* const kClipPattern;
// An HF `pattern` field: {"String": s} (a literal) or {"Regex": r}.
class Pattern {
 public:
  Pattern(const json& spec, const std::string& where);
  // = tokenizers' Pattern::find_matches: the whole string covered by match / non-match spans.
  std::vector<Match> find_matches(const std::string& s) const;

 private:
  std::string literal_;
  std::unique_ptr<Regex> regex_;
};

// ---- Pipeline components (components.cpp) ----
// A piece of text during pre-tokenization. Its first `origin_len` bytes come from the input's
// first character (HF's offsets_original().0 == 0, which Metaspace's prepend_scheme "first" reads).
struct Piece {
  std::string text;
  size_t origin_len;
};

class Normalizer {
 public:
  virtual ~Normalizer() = default;
  virtual void normalize(std::string& s) const = 0;
};
class PreTokenizer {
 public:
  virtual ~PreTokenizer() = default;
  virtual void pre_tokenize(std::vector<Piece>& pieces) const = 0;
};
class Decoder {
 public:
  virtual ~Decoder() = default;
  virtual void decode_chain(std::vector<std::string>& tokens) const = 0;
};
class PostProcessor {
 public:
  virtual ~PostProcessor() = default;
  virtual size_t added_tokens() const = 0;
  virtual void process(std::vector<int64_t>& ids) const = 0;  // called only with add_special_tokens
};
class Model {
 public:
  virtual ~Model() = default;
  virtual void tokenize(const std::string& word, std::vector<int64_t>& out) const = 0;
  virtual const std::string* id_to_token(int64_t id) const = 0;
  virtual bool token_to_id(const std::string& token, int64_t& id) const = 0;
  virtual size_t vocab_size() const = 0;
};

// `where` names the file for errors; each factory refuses unknown types.
std::unique_ptr<Normalizer> make_normalizer(const json& spec, const std::string& where);
std::unique_ptr<PreTokenizer> make_pre_tokenizer(const json& spec, const std::string& where);
std::unique_ptr<Decoder> make_decoder(const json& spec, const std::string& where);
// `token_id` resolves a token string for post-processors that name tokens.
std::unique_ptr<PostProcessor> make_post_processor(const json& spec, const std::string& where);
std::unique_ptr<Model> make_model(const json& spec, const std::string& where);

// Splits `s` per `matches` and an HF SplitDelimiterBehavior name; empty pieces are dropped.
enum class SplitBehavior { Removed, Isolated, MergedWithPrevious, MergedWithNext, Contiguous };
SplitBehavior parse_behavior(const json& spec, const std::string& where);
void split_by(const Piece& piece, std::vector<Match> matches, SplitBehavior behavior, std::vector<Piece>& out);

// JSON field access with one-line errors naming the file and field.
const json& field(const json& obj, const char* name, const std::string& where);
std::string str_field(const json& obj, const char* name, const std::string& where);
[[noreturn]] void fail(const std::string& where, const std::string& what);

}  // namespace mmrt::tok
