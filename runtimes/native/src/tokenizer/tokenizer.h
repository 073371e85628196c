// Tokenizers read from a HF `tokenizer.json`, equal to the `tokenizers` library (0.23) id for id.
//
// Implemented components (anything else is refused at load with a TokenizerError naming it):
//   normalizers     BertNormalizer, NFC, NFD, NFKC, NFKD, Lowercase, Replace, Strip, Prepend, Sequence
//   pre-tokenizers  ByteLevel, BertPreTokenizer, Whitespace, WhitespaceSplit, Split, Metaspace,
//                   Digits, Punctuation, Sequence
//   models          BPE, WordPiece, WordLevel, Unigram
//   post-processors TemplateProcessing, BertProcessing, RobertaProcessing, ByteLevel, Sequence
//   decoders        ByteLevel, WordPiece, Metaspace, BPEDecoder, Replace, ByteFallback, Fuse, Strip,
//                   Sequence
// plus added tokens (special or not) matched in the raw text before normalisation, as HF does.
//
// Unicode: the character classes are the ones tokenizers' Rust crates really have (tables read
// from the library by gen_unicode_tables.py into unicode_tables.inc), normalization is utf8proc's
// less the code points tokenizers' older tables do not decompose, and regexes are Oniguruma
// patterns run by PCRE2 with Onig's \s, \p{L}, \p{N} (GPT-2's and CLIP's by hand-written code).
// Not reproduced: Metaspace prepend_scheme "first" reads the original offset of a piece only
// through the first input character's normalized length; NFC composes pairs whose composite is
// newer than tokenizers' tables (one known: U+11938).
//
// All const methods are thread safe: a loaded tokenizer is immutable.
#pragma once

#include <cstddef>
#include <cstdint>
#include <memory>
#include <optional>
#include <stdexcept>
#include <string>
#include <vector>

namespace mmrt {

// A file that cannot be read, or a field / component this code does not implement; one line that
// names the file and the field.
class TokenizerError : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};

// The caller's text is at fault (not valid UTF-8, an empty batch): map to an input-error status.
class TokenizerInputError : public TokenizerError {
 public:
  using TokenizerError::TokenizerError;
};

class Tokenizer {
 public:
  // `path` is a tokenizer.json, or a directory holding one.
  static std::unique_ptr<Tokenizer> from_file(const std::string& path);
  // `origin` names the source in error messages.
  static std::unique_ptr<Tokenizer> from_json(const std::string& json_text, const std::string& origin = "<json>");
  ~Tokenizer();
  Tokenizer(const Tokenizer&) = delete;
  Tokenizer& operator=(const Tokenizer&) = delete;

  // = tokenizers.Tokenizer.encode(text, add_special_tokens).ids with no truncation and no padding
  // (a truncation / padding section in the file is ignored, as runtimes/tokenize.py overrides it).
  // Throws TokenizerInputError when `utf8` is not valid UTF-8.
  std::vector<int64_t> encode(const std::string& utf8, bool add_special_tokens = true) const;
  // = tokenizers.Tokenizer.decode(ids, skip_special_tokens); unknown ids are skipped, as HF does.
  std::string decode(const std::vector<int64_t>& ids, bool skip_special_tokens = true) const;

  std::optional<int64_t> token_to_id(const std::string& token) const;
  std::optional<std::string> id_to_token(int64_t id) const;
  // = get_vocab_size(with_added_tokens=True)
  size_t vocab_size() const;
  // How many tokens the post-processor adds to one sequence (CLIP, BERT: 2; SigLIP: 1; GPT-2: 0).
  size_t num_special_tokens_to_add() const;

  struct Impl;

 private:
  friend class TextTokenizer;
  explicit Tokenizer(std::unique_ptr<Impl> impl);
  std::unique_ptr<Impl> impl_;
};

// Row-major (rows, cols) int64 arrays, as runtimes/tokenize.py's {"input_ids", "attention_mask"}.
struct Batch {
  std::vector<int64_t> input_ids, attention_mask;
  size_t rows = 0, cols = 0;
};

enum class Padding {
  Longest,    // pad to the longest row of the batch (CLIP, BERT-style)
  MaxLength,  // every row padded to max_length (SigLIP)
};

// = runtimes/tokenize.py TextTokenizer: special tokens from the post-processor, truncation of the
// text's tokens to max_length - num_special_tokens_to_add() (so the end token stays last), right
// padding with pad_id, attention mask 1 on tokens and 0 on padding.
class TextTokenizer {
 public:
  // `pad_id` unset: the pad token of tokenizer_config.json / special_tokens_map.json beside the
  // file, else the file's padding.pad_id, else the first of <|endoftext|>, <pad>, [PAD], </s> in
  // the vocabulary (as tokenize.py's _find_pad_id). Throws TokenizerError when none is found, when
  // max_length < 2 or < num_special_tokens_to_add(), or when pad_id is not in the vocabulary.
  static TextTokenizer from_file(const std::string& path, size_t max_length,
                                 std::optional<int64_t> pad_id = std::nullopt, Padding padding = Padding::Longest);
  TextTokenizer(std::shared_ptr<const Tokenizer> tokenizer, size_t max_length, int64_t pad_id,
                Padding padding = Padding::Longest);

  // Throws TokenizerInputError on an empty batch or text that is not valid UTF-8 (naming texts[i]).
  Batch operator()(const std::vector<std::string>& texts) const;
  // Tokens per text with special tokens, before truncation (= TextTokenizer.count_tokens).
  std::vector<size_t> count_tokens(const std::vector<std::string>& texts) const;

  const Tokenizer& tokenizer() const { return *tokenizer_; }
  size_t max_length() const { return max_length_; }
  int64_t pad_id() const { return pad_id_; }
  Padding padding() const { return padding_; }

 private:
  std::shared_ptr<const Tokenizer> tokenizer_;
  size_t max_length_;
  int64_t pad_id_;
  Padding padding_;
};

}  // namespace mmrt
