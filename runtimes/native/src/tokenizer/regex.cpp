// HF tokenizers runs its patterns with Oniguruma (Ruby syntax); here PCRE2 runs them, with the
// few differences that matter rewritten: \s, \p{L} and \p{N} use Oniguruma's own tables (PCRE2's
// Unicode version differs, and its \s also takes U+180E), ^ and $ are line anchors as in Ruby,
// and the iteration over matches skips an empty match right after the previous one as the onig
// crate's find_iter does. GPT-2's and CLIP's patterns are matched by hand-written code.
#define PCRE2_CODE_UNIT_WIDTH 8
#include <pcre2.h>

#include "internal.h"

namespace mmrt::tok {

namespace {

// \s, \S, \p{L}, \pL, \p{N}, \pN become explicit classes with Oniguruma's tables.
std::string translate(const std::string& p) {
  std::string out;
  bool in_class = false;
  for (size_t i = 0; i < p.size(); ++i) {
    char c = p[i];
    if (c == '\\' && i + 1 < p.size()) {
      char n = p[i + 1];
      char name = 0;
      size_t len = 2;
      bool negate = false;
      if (n == 's' || n == 'S') {
        name = 's';
        negate = n == 'S';
      } else if ((n == 'p' || n == 'P') && i + 2 < p.size()) {
        negate = n == 'P';
        if ((p[i + 2] == 'L' || p[i + 2] == 'N')) {
          name = p[i + 2];
          len = 3;
        } else if (p.compare(i + 2, 3, "{L}") == 0 || p.compare(i + 2, 3, "{N}") == 0) {
          name = p[i + 3];
          len = 5;
        }
      }
      if (name && !(negate && in_class)) {
        const std::string& cls = onig_class(name);
        out += in_class ? cls : (negate ? "[^" : "[") + cls + "]";
      } else {
        out.append(p, i, len);
      }
      i += len - 1;
      continue;
    }
    if (c == '[' && !in_class) {
      in_class = true;
      out += c;
      // a ']' right after '[' or '[^' is a literal
      if (i + 1 < p.size() && p[i + 1] == '^') out += p[++i];
      if (i + 1 < p.size() && p[i + 1] == ']') out += p[++i];
      continue;
    }
    if (c == ']' && in_class) in_class = false;
    out += c;
  }
  return out;
}

// The two patterns every byte-level tokenizer runs, matched by hand: PCRE2 walks a class of
// hundreds of ranges for each non-ASCII character, which makes CJK text crawl.
class Cursor {
 public:
  explicit Cursor(const std::string& s) : s_(s) {}
  char32_t at(size_t i) const {
    size_t k = i;
    return next_cp(s_, k);
  }
  size_t after(size_t i) const { return i + utf8_len(static_cast<unsigned char>(s_[i])); }
  template <typename Pred>
  size_t run(size_t i, Pred pred) const {  // end of the run of `pred` characters from i
    while (i < s_.size() && pred(at(i))) i = after(i);
    return i;
  }

 private:
  const std::string& s_;
};

bool is_other_char(char32_t c) { return !is_onig_space(c) && !is_onig_letter(c) && !is_onig_number(c); }

// 's 't 're 've 'm 'll 'd at i: the match's length, or 0.
size_t contraction(const std::string& s, size_t i) {
  if (s[i] != '\'' || i + 1 >= s.size()) return 0;
  char a = s[i + 1];
  if (a == 's' || a == 't' || a == 'm' || a == 'd') return 2;
  if (i + 2 < s.size()) {
    char b = s[i + 2];
    if ((a == 'r' && b == 'e') || (a == 'v' && b == 'e') || (a == 'l' && b == 'l')) return 3;
  }
  return 0;
}

// 's|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+ : every position
// starts a match, so the matches tile the string.
std::vector<std::pair<size_t, size_t>> gpt2_matches(const std::string& s) {
  std::vector<std::pair<size_t, size_t>> out;
  Cursor cur(s);
  size_t i = 0;
  while (i < s.size()) {
    size_t end = 0;
    if (size_t n = contraction(s, i)) {
      end = i + n;
    } else {
      size_t from = i;
      if (s[i] == ' ' && i + 1 < s.size()) from = i + 1;  // the optional leading space
      char32_t c = cur.at(from);
      bool (*klass)(char32_t) = is_onig_letter(c) ? is_onig_letter : is_onig_number(c) ? is_onig_number
                                                                  : is_other_char(c)  ? is_other_char
                                                                                      : nullptr;
      if (klass) end = cur.run(from, klass);
      if (!end) {
        // whitespace: the run, less its last character when a non-space follows it
        size_t k = cur.run(i, is_onig_space);
        end = k;
        if (k < s.size()) {
          size_t last = i;
          for (size_t p = i; p < k; p = cur.after(p)) last = p;
          if (last > i) end = last;
        }
      }
    }
    out.emplace_back(i, end);
    i = end;
  }
  return out;
}

// <\|startoftext\|>|<\|endoftext\|>|'s|'t|'re|'ve|'m|'ll|'d|[\p{L}]+|[\p{N}]|[^\s\p{L}\p{N}]+
std::vector<std::pair<size_t, size_t>> clip_matches(const std::string& s) {
  static const std::string kStart = "<|startoftext|>", kEnd = "<|endoftext|>";
  std::vector<std::pair<size_t, size_t>> out;
  Cursor cur(s);
  size_t i = 0;
  while (i < s.size()) {
    size_t end = 0;
    if (s.compare(i, kStart.size(), kStart) == 0) end = i + kStart.size();
    else if (s.compare(i, kEnd.size(), kEnd) == 0) end = i + kEnd.size();
    else if (size_t n = contraction(s, i)) end = i + n;
    else {
      char32_t c = cur.at(i);
      if (is_onig_letter(c)) end = cur.run(i, is_onig_letter);
      else if (is_onig_number(c)) end = cur.after(i);
      else if (!is_onig_space(c)) end = cur.run(i, is_other_char);
    }
    if (end) {
      out.emplace_back(i, end);
      i = end;
    } else {
      i = cur.after(i);
    }
  }
  return out;
}

}  // namespace

const char* const kGpt2Pattern = R"('s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+)";
const char* const kClipPattern =
    R"(<\|startoftext\|>|<\|endoftext\|>|'s|'t|'re|'ve|'m|'ll|'d|[\p{L}]+|[\p{N}]|[^\s\p{L}\p{N}]+)";

Regex::Regex(const std::string& onig_pattern, const std::string& where) {
  if (onig_pattern == kGpt2Pattern) native_ = Native::Gpt2;
  if (onig_pattern == kClipPattern) native_ = Native::Clip;
  if (native_ != Native::None) return;
  std::string pattern = translate(onig_pattern);
  int err = 0;
  PCRE2_SIZE err_at = 0;
  pcre2_code* code = pcre2_compile(reinterpret_cast<PCRE2_SPTR>(pattern.data()), pattern.size(),
                                   PCRE2_UTF | PCRE2_UCP | PCRE2_MULTILINE | PCRE2_NO_UTF_CHECK, &err, &err_at, nullptr);
  if (!code) {
    PCRE2_UCHAR msg[256];
    pcre2_get_error_message(err, msg, sizeof msg);
    fail(where, "regex " + json(onig_pattern).dump() + " does not compile: " + reinterpret_cast<char*>(msg));
  }
  pcre2_jit_compile(code, PCRE2_JIT_COMPLETE);  // best effort: the interpreter gives the same matches
  code_ = code;
}

Regex::~Regex() {
  if (code_) pcre2_code_free(static_cast<pcre2_code*>(code_));
}

std::vector<std::pair<size_t, size_t>> Regex::find_all(const std::string& s) const {
  if (native_ == Native::Gpt2) return gpt2_matches(s);
  if (native_ == Native::Clip) return clip_matches(s);
  auto* code = static_cast<pcre2_code*>(code_);
  // One match block per call keeps a shared Regex thread safe.
  pcre2_match_data* md = pcre2_match_data_create_from_pattern(code, nullptr);
  std::vector<std::pair<size_t, size_t>> found;
  size_t last_end = 0;
  bool have_last = false;
  size_t last_match_end = 0;
  auto subject = reinterpret_cast<PCRE2_SPTR>(s.data());
  while (last_end <= s.size()) {
    int rc = pcre2_match(code, subject, s.size(), last_end, PCRE2_NO_UTF_CHECK, md, nullptr);
    if (rc < 0) break;
    PCRE2_SIZE* ov = pcre2_get_ovector_pointer(md);
    size_t b = ov[0], e = ov[1];
    if (b == e && have_last && last_match_end == e) {
      last_end += last_end < s.size() ? utf8_len(static_cast<unsigned char>(s[last_end])) : 1;
      continue;
    }
    last_end = e;
    have_last = true;
    last_match_end = e;
    found.emplace_back(b, e);
  }
  pcre2_match_data_free(md);
  return found;
}

Pattern::Pattern(const json& spec, const std::string& where) {
  if (!spec.is_object() || spec.size() != 1) fail(where, "pattern must be {\"String\": ...} or {\"Regex\": ...}");
  if (spec.contains("String")) {
    literal_ = str_field(spec, "String", where);
  } else if (spec.contains("Regex")) {
    regex_ = std::make_unique<Regex>(str_field(spec, "Regex", where), where);
  } else {
    fail(where, "pattern must be {\"String\": ...} or {\"Regex\": ...}");
  }
}

std::vector<Match> Pattern::find_matches(const std::string& s) const {
  if (s.empty()) return {{0, 0, false}};
  std::vector<std::pair<size_t, size_t>> spans;
  if (regex_) {
    spans = regex_->find_all(s);
  } else if (literal_.empty()) {
    return {{0, s.size(), false}};
  } else {
    for (size_t at = s.find(literal_); at != std::string::npos; at = s.find(literal_, at + literal_.size()))
      spans.emplace_back(at, at + literal_.size());
  }
  std::vector<Match> out;
  size_t prev = 0;
  for (auto [b, e] : spans) {
    if (prev != b) out.push_back({prev, b, false});
    out.push_back({b, e, true});
    prev = e;
  }
  if (prev != s.size()) out.push_back({prev, s.size(), false});
  return out;
}

}  // namespace mmrt::tok
