// Byte-level BPE (see the header). The merge loop keeps the symbols of a piece in a linked list and
// the candidate pairs in a heap ordered by (rank, position), so that a long piece costs n log n, not
// n^2; a popped pair that no longer holds the symbols it was made from is stale and skipped.
#define PCRE2_CODE_UNIT_WIDTH 8
#include "data/bpe_tokenizer.hpp"

#include <fmt/format.h>
#include <pcre2.h>

#include <algorithm>
#include <queue>
#include <stdexcept>
#include <unordered_map>

#include "core/error.hpp"

namespace bitqat::data {
namespace {

// GPT-2's pre-tokenizer regex as `tokenizers` writes it (byte_level.rs): contractions, letters, numbers,
// other symbols each with an optional leading space, and whitespace (a run before a non-space keeps its
// last space for the next word).
constexpr const char* kGpt2Regex = R"('s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+)";
constexpr const char* kDigitRegex = R"(\p{N})";

std::string utf8(uint32_t cp) {
  std::string s;
  if (cp < 0x80) {
    s.push_back(static_cast<char>(cp));
  } else if (cp < 0x800) {
    s.push_back(static_cast<char>(0xc0 | (cp >> 6)));
    s.push_back(static_cast<char>(0x80 | (cp & 0x3f)));
  } else {
    s.push_back(static_cast<char>(0xe0 | (cp >> 12)));
    s.push_back(static_cast<char>(0x80 | ((cp >> 6) & 0x3f)));
    s.push_back(static_cast<char>(0x80 | (cp & 0x3f)));
  }
  return s;
}

// The length of the valid UTF-8 sequence at s[i], 0 if none; *truncated when the text ends inside
// what would be a valid sequence.
size_t utf8_length(const std::string& s, size_t i, bool* truncated) {
  *truncated = false;
  const auto b = [&](size_t k) { return static_cast<unsigned char>(s[k]); };
  const unsigned char c = b(i);
  if (c < 0x80) return 1;
  size_t n = 0;
  unsigned char lo = 0x80, hi = 0xbf;  // the range of the second byte
  if (c >= 0xc2 && c <= 0xdf) {
    n = 2;
  } else if (c >= 0xe0 && c <= 0xef) {
    n = 3;
    if (c == 0xe0) lo = 0xa0;  // overlong
    if (c == 0xed) hi = 0x9f;  // surrogates
  } else if (c >= 0xf0 && c <= 0xf4) {
    n = 4;
    if (c == 0xf0) lo = 0x90;  // overlong
    if (c == 0xf4) hi = 0x8f;  // above U+10FFFF
  } else {
    return 0;
  }
  for (size_t k = 1; k < n; ++k) {
    if (i + k >= s.size()) {
      *truncated = true;
      return 0;
    }
    const unsigned char lo_k = k == 1 ? lo : 0x80, hi_k = k == 1 ? hi : 0xbf;
    if (b(i + k) < lo_k || b(i + k) > hi_k) return 0;
  }
  return n;
}

struct CodeDeleter {
  void operator()(pcre2_code* c) const { pcre2_code_free(c); }
};
using Code = std::unique_ptr<pcre2_code, CodeDeleter>;

Code compile(const char* pattern) {
  int err = 0;
  PCRE2_SIZE at = 0;
  pcre2_code* c = pcre2_compile(reinterpret_cast<PCRE2_SPTR>(pattern), PCRE2_ZERO_TERMINATED, PCRE2_UTF | PCRE2_UCP,
                                &err, &at, nullptr);
  if (!c) {
    PCRE2_UCHAR msg[256];
    pcre2_get_error_message(err, msg, sizeof(msg));
    throw std::logic_error(fmt::format("PCRE2 cannot compile {} at {}: {}", pattern, at, reinterpret_cast<char*>(msg)));
  }
  pcre2_jit_compile(c, PCRE2_JIT_COMPLETE);  // where JIT is unavailable, pcre2_match interprets
  return Code(c);
}

// Appends to `out` the pieces of text[begin, end) that `re` splits it into: every match and every
// stretch between matches (tokenizers' SplitDelimiterBehavior::Isolated).
void split(const pcre2_code* re, const std::string& text, size_t begin, size_t end,
           std::vector<std::pair<size_t, size_t>>* out) {
  struct DataDeleter {
    void operator()(pcre2_match_data* d) const { pcre2_match_data_free(d); }
  };
  std::unique_ptr<pcre2_match_data, DataDeleter> md(pcre2_match_data_create_from_pattern(re, nullptr));
  const auto* subject = reinterpret_cast<PCRE2_SPTR>(text.data());
  size_t pos = begin;
  while (pos < end) {
    // The piece is matched alone (its end is the subject's end), so that a lookahead cannot see past it.
    const int rc = pcre2_match(re, subject, end, pos, PCRE2_NO_UTF_CHECK, md.get(), nullptr);
    if (rc == PCRE2_ERROR_NOMATCH) break;
    if (rc < 0) throw std::runtime_error(fmt::format("PCRE2 match failed with code {}", rc));
    const PCRE2_SIZE* ov = pcre2_get_ovector_pointer(md.get());
    if (ov[1] == ov[0]) {  // the regexes never match empty; guard against a loop all the same
      ++pos;
      continue;
    }
    if (ov[0] > pos) out->emplace_back(pos, ov[0]);
    out->emplace_back(ov[0], ov[1]);
    pos = ov[1];
  }
  if (pos < end) out->emplace_back(pos, end);
}

uint64_t pair_key(int32_t a, int32_t b) {
  return (static_cast<uint64_t>(static_cast<uint32_t>(a)) << 32) | static_cast<uint32_t>(b);
}

}  // namespace

const std::vector<std::string>& bpe_pre_types() {
  static const std::vector<std::string> types = {"gpt-2", "smollm"};
  return types;
}

std::vector<std::string> gpt2_byte_tokens() {
  std::vector<std::string> out(256);
  uint32_t next = 256;
  for (uint32_t b = 0; b < 256; ++b) {
    const bool printable = (b >= '!' && b <= '~') || (b >= 0xa1 && b <= 0xac) || (b >= 0xae && b <= 0xff);
    out[b] = utf8(printable ? b : next++);
  }
  return out;
}

std::optional<size_t> invalid_utf8_offset(const std::string& text, bool allow_truncated_end) {
  for (size_t i = 0; i < text.size();) {
    bool truncated = false;
    const size_t n = utf8_length(text, i, &truncated);
    if (n == 0) {
      if (truncated && allow_truncated_end) return std::nullopt;
      return i;
    }
    i += n;
  }
  return std::nullopt;
}

std::string printable_utf8(const std::string& bytes) {
  std::string out;
  out.reserve(bytes.size());
  for (size_t i = 0; i < bytes.size();) {
    bool truncated = false;
    const size_t n = utf8_length(bytes, i, &truncated);
    if (truncated) break;
    if (n == 0) {
      out += "\xef\xbf\xbd";  // U+FFFD
      ++i;
    } else {
      out.append(bytes, i, n);
      i += n;
    }
  }
  return out;
}

struct BpeTokenizer::Impl {
  BpeVocab vocab;
  int32_t byte_id[256] = {};
  std::unordered_map<uint64_t, std::pair<int32_t, int32_t>> merges;  // (left, right) -> (rank, merged id)
  std::vector<std::pair<std::string, int32_t>> added;                // added tokens, longest first
  std::vector<std::string> bytes_of;                                 // id -> the bytes it decodes to
  Code gpt2 = compile(kGpt2Regex);
  Code digit;

  std::vector<std::pair<size_t, size_t>> pieces(const std::string& text, size_t begin, size_t end) const {
    std::vector<std::pair<size_t, size_t>> out;
    if (!digit) {
      split(gpt2.get(), text, begin, end, &out);
      return out;
    }
    std::vector<std::pair<size_t, size_t>> parts;
    split(digit.get(), text, begin, end, &parts);
    for (const auto& [b, e] : parts) split(gpt2.get(), text, b, e, &out);
    return out;
  }

  void merge_piece(const std::string& text, size_t begin, size_t end, std::vector<int64_t>* out) const {
    struct Sym {
      int32_t id;
      int32_t prev, next;
    };
    struct Pair {
      int32_t rank, left, right, left_id, right_id, merged;
      bool operator>(const Pair& o) const { return rank != o.rank ? rank > o.rank : left > o.left; }
    };
    // A byte the vocabulary has no token for is left out, as `tokenizers` leaves out a character of
    // a BPE without unk_token (SmolLM2 has none for 21 bytes, among them the controls 0x04, 0x06,
    // 0x13, 0x14, 0x16 and 0x1d); the bytes around it still merge.
    std::vector<Sym> sym;
    sym.reserve(end - begin);
    for (size_t k = begin; k < end; ++k) {
      const int32_t id = byte_id[static_cast<unsigned char>(text[k])];
      if (id < 0) continue;
      const auto i = static_cast<int32_t>(sym.size());
      sym.push_back({id, i - 1, -1});
      if (i > 0) sym[i - 1].next = i;
    }
    const auto n = static_cast<int32_t>(sym.size());
    std::priority_queue<Pair, std::vector<Pair>, std::greater<Pair>> heap;
    auto push = [&](int32_t l, int32_t r) {
      if (l < 0 || r < 0) return;
      const auto it = merges.find(pair_key(sym[l].id, sym[r].id));
      if (it != merges.end()) heap.push({it->second.first, l, r, sym[l].id, sym[r].id, it->second.second});
    };
    for (int32_t i = 0; i + 1 < n; ++i) push(i, i + 1);
    while (!heap.empty()) {
      const Pair p = heap.top();
      heap.pop();
      // Stale: one side was merged since (a merge only lengthens a symbol, so ids never recur).
      if (sym[p.left].id != p.left_id || sym[p.right].id != p.right_id || sym[p.left].next != p.right) continue;
      sym[p.left].id = p.merged;
      sym[p.right].id = -1;
      sym[p.left].next = sym[p.right].next;
      if (sym[p.right].next >= 0) sym[sym[p.right].next].prev = p.left;
      push(sym[p.left].prev, p.left);
      push(p.left, sym[p.left].next);
    }
    for (int32_t i = 0; i >= 0 && i < n; i = sym[i].next) out->push_back(sym[i].id);
  }
};

BpeTokenizer::BpeTokenizer(BpeVocab vocab, const std::string& origin) : impl_(std::make_unique<Impl>()) {
  auto& m = *impl_;
  auto fail = [&](const std::string& what) { throw core::UserError(fmt::format("{}: {}", origin, what)); };
  const auto& pres = bpe_pre_types();
  if (std::find(pres.begin(), pres.end(), vocab.pre) == pres.end()) {
    fail(fmt::format("tokenizer.ggml.pre = {}: bitqat's byte-level BPE runs the pre-tokenizers {}", vocab.pre,
                     fmt::join(pres, ", ")));
  }
  if (vocab.pre == "smollm") m.digit = compile(kDigitRegex);
  const auto size = static_cast<int64_t>(vocab.tokens.size());
  if (vocab.types.empty()) vocab.types.assign(vocab.tokens.size(), TokenType::kNormal);
  if (vocab.types.size() != vocab.tokens.size()) {
    fail(fmt::format("tokenizer.ggml.token_type has {} entries; tokenizer.ggml.tokens has {}", vocab.types.size(),
                     vocab.tokens.size()));
  }
  if (size >= (int64_t{1} << 31)) fail(fmt::format("{} tokens: expected fewer than 2^31", size));
  for (const char* which : {"bos", "eos"}) {
    const auto& id = std::string(which) == "bos" ? vocab.bos : vocab.eos;
    if (id && (*id < 0 || *id >= size)) {
      fail(fmt::format("tokenizer.ggml.{}_token_id = {}: expected an id below {}", which, *id, size));
    }
  }
  std::unordered_map<std::string, int32_t> id_of;
  for (int64_t i = 0; i < size; ++i) id_of.emplace(vocab.tokens[i], static_cast<int32_t>(i));
  const auto bytes = gpt2_byte_tokens();
  for (int b = 0; b < 256; ++b) {
    const auto it = id_of.find(bytes[b]);
    // Every byte of plain ASCII text must have a token; others may lack one (see merge_piece).
    const bool required = b == ' ' || b == '\n' || (b >= '!' && b <= '~');
    if (it == id_of.end() && required) {
      fail(
          fmt::format("tokenizer.ggml.tokens lacks the byte token {:?} (byte 0x{:02x}): expected a byte-level BPE "
                      "vocabulary, which holds a token for every printable ASCII byte, space and newline",
                      bytes[b], b));
    }
    m.byte_id[b] = it == id_of.end() ? -1 : it->second;
  }
  for (size_t r = 0; r < vocab.merges.size(); ++r) {
    const auto& s = vocab.merges[r];
    const auto sp = s.find(' ', 1);
    if (sp == std::string::npos || s.find(' ', sp + 1) != std::string::npos) {
      fail(fmt::format("tokenizer.ggml.merges[{}] = {:?}: expected two tokens separated by one space", r, s));
    }
    const auto left = id_of.find(s.substr(0, sp)), right = id_of.find(s.substr(sp + 1)),
               merged = id_of.find(s.substr(0, sp) + s.substr(sp + 1));
    if (left == id_of.end() || right == id_of.end() || merged == id_of.end()) {
      fail(fmt::format("tokenizer.ggml.merges[{}] = {:?}: its parts and their concatenation must be tokens", r, s));
    }
    m.merges.emplace(pair_key(left->second, right->second),
                     std::make_pair(static_cast<int32_t>(r), merged->second));  // the first rank wins
  }
  // Decoding: a normal token's characters through the byte alphabet back to bytes; other tokens (and
  // a normal one spelled outside the alphabet) as their text.
  std::unordered_map<std::string, char> byte_of;
  for (int b = 0; b < 256; ++b) byte_of.emplace(bytes[b], static_cast<char>(b));
  m.bytes_of.resize(vocab.tokens.size());
  for (int64_t i = 0; i < size; ++i) {
    const auto& t = vocab.tokens[i];
    const auto type = vocab.types[i];
    if (type == TokenType::kControl || type == TokenType::kUserDefined) {
      if (!t.empty()) m.added.emplace_back(t, static_cast<int32_t>(i));
      m.bytes_of[i] = t;
      continue;
    }
    std::string out;
    bool ok = type != TokenType::kUnused && !invalid_utf8_offset(t);
    for (size_t k = 0; ok && k < t.size();) {
      bool truncated = false;
      const size_t n = utf8_length(t, k, &truncated);
      const auto it = byte_of.find(t.substr(k, n));
      if (it == byte_of.end())
        ok = false;
      else
        out.push_back(it->second);
      k += n;
    }
    m.bytes_of[i] = ok ? out : t;
  }
  std::stable_sort(m.added.begin(), m.added.end(),
                   [](const auto& a, const auto& b) { return a.first.size() > b.first.size(); });
  m.vocab = std::move(vocab);
}

BpeTokenizer::~BpeTokenizer() = default;
BpeTokenizer::BpeTokenizer(BpeTokenizer&&) noexcept = default;
BpeTokenizer& BpeTokenizer::operator=(BpeTokenizer&&) noexcept = default;

const BpeVocab& BpeTokenizer::vocab() const { return impl_->vocab; }
int64_t BpeTokenizer::size() const { return static_cast<int64_t>(impl_->vocab.tokens.size()); }

std::vector<int64_t> BpeTokenizer::encode(const std::string& text) const {
  if (const auto bad = invalid_utf8_offset(text)) {
    throw core::UserError(
        fmt::format("the text is not valid UTF-8: byte 0x{:02x} at offset {} starts no valid UTF-8 "
                    "sequence; the tokenizer encodes UTF-8 text",
                    static_cast<unsigned char>(text[*bad]), *bad));
  }
  const auto& m = *impl_;
  std::vector<int64_t> out;
  auto plain = [&](size_t begin, size_t end) {
    if (begin >= end) return;
    for (const auto& [b, e] : m.pieces(text, begin, end)) m.merge_piece(text, b, e, &out);
  };
  size_t start = 0;  // of the text not yet encoded
  for (size_t i = 0; i < text.size() && !m.added.empty();) {
    const auto hit = std::find_if(m.added.begin(), m.added.end(),
                                  [&](const auto& a) { return text.compare(i, a.first.size(), a.first) == 0; });
    if (hit == m.added.end()) {
      ++i;
      continue;
    }
    plain(start, i);
    out.push_back(hit->second);
    i += hit->first.size();
    start = i;
  }
  plain(start, text.size());
  return out;
}

std::string BpeTokenizer::decode(const std::vector<int64_t>& ids) const {
  std::string out;
  for (const auto id : ids) {
    if (id < 0 || id >= size()) {
      throw std::out_of_range(fmt::format("token id {} outside the vocabulary of {}", id, size()));
    }
    out += impl_->bytes_of[static_cast<size_t>(id)];
  }
  return out;
}

}  // namespace bitqat::data
