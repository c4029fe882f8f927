#include "capacity/fact_bits.h"

#include <algorithm>
#include <chrono>
#include <cmath>
#include <nlohmann/json.hpp>
#include <sstream>

#include "ops/loss.h"
#include "util/error.h"
#include "util/file.h"

namespace tinylora {

namespace {

// A probe as tokens: the whole biography (BOS first) and each value's tokens [begin, end).
struct ProbeTokens {
  std::vector<int> ids;
  std::array<std::pair<size_t, size_t>, kNumAttrs> value;  // indexed by attribute
};

bool StartsWith(const std::vector<int>& a, const std::vector<int>& prefix) {
  return prefix.size() <= a.size() && std::equal(prefix.begin(), prefix.end(), a.begin());
}

ProbeTokens Tokenize(const Tokenizer& tok, const Probe& p) {
  ProbeTokens t;
  t.ids = tok.Encode(p.text, /*add_bos=*/true);
  for (const ValueSpan& s : p.spans) {
    // The text before the value's space, and the text through the value's full stop.
    const std::vector<int> before = tok.Encode(p.text.substr(0, s.begin - 1), true);
    const std::vector<int> through = tok.Encode(p.text.substr(0, s.end + 1), true);
    if (!StartsWith(through, before) || !StartsWith(t.ids, through) ||
        through.size() == before.size()) {
      Fail("the tokenizer joins the " + std::string(AttrName(s.attr)) + " of \"" + p.name +
           "\" to the text around it: its tokens are not apart (a tokenizer that splits at spaces "
           "is needed)");
    }
    t.value[static_cast<size_t>(s.attr)] = {before.size(), through.size()};
  }
  return t;
}

}  // namespace

std::vector<Probe> ReadProbes(const std::string& path) {
  std::vector<Probe> probes;
  std::istringstream in(ReadTextFile(path));
  int64_t line_no = 0;
  for (std::string line; std::getline(in, line);) {
    ++line_no;
    const std::string where = path + ":" + std::to_string(line_no) + ": ";
    const nlohmann::json j = nlohmann::json::parse(line, nullptr, /*allow_exceptions=*/false);
    if (!j.is_object() || !j.contains("text") || !j["text"].is_string() || !j.contains("values") ||
        !j["values"].is_array() || j["values"].size() != kNumAttrs) {
      Fail(where + "not a probe (a JSON object with \"text\" and six \"values\")");
    }
    Probe p;
    p.text = j["text"];
    p.name = j.value("name", "");
    std::array<bool, kNumAttrs> seen{};
    for (size_t k = 0; k < kNumAttrs; ++k) {
      const nlohmann::json& v = j["values"][k];
      int attr = -1;
      if (v.is_array() && v.size() == 3 && v[0].is_string()) {
        for (int a = 0; a < kNumAttrs; ++a)
          if (v[0] == AttrName(static_cast<Attr>(a))) attr = a;
      }
      if (attr < 0 || !v[1].is_number_unsigned() || !v[2].is_number_unsigned() ||
          seen[static_cast<size_t>(attr)]) {
        Fail(where + "value " + std::to_string(k + 1) + " is not [attribute, begin, end]");
      }
      seen[static_cast<size_t>(attr)] = true;
      const size_t b = v[1], e = v[2];
      // A value is preceded by a space and followed by its sentence's full stop.
      if (b < 1 || b >= e || e >= p.text.size() || p.text[b - 1] != ' ' || p.text[e] != '.')
        Fail(where + "value " + std::to_string(k + 1) + " does not span a value of the text");
      p.spans[k] = ValueSpan{static_cast<Attr>(attr), b, e};
    }
    probes.push_back(std::move(p));
  }
  if (probes.empty()) Fail(path + ": no probes");
  return probes;
}

FactBits MeasureFactBits(LlamaModel& model, const Tokenizer& tok, const std::vector<Probe>& probes,
                         int batch) {
  const auto t0 = std::chrono::steady_clock::now();
  const LlamaConfig& c = model.config();
  std::vector<ProbeTokens> tokens;
  tokens.reserve(probes.size());
  size_t longest = 0;
  for (const Probe& p : probes) {
    tokens.push_back(Tokenize(tok, p));
    longest = std::max(longest, tokens.back().ids.size());
  }
  if (static_cast<int64_t>(longest) > c.max_pos) {
    Fail("a probe of " + std::to_string(longest) + " tokens is longer than the model's " +
         std::to_string(c.max_pos) + " positions");
  }
  model.SetBatchInvariant(false);  // as eval: whole sequences, the fast kernels
  FactBits r;
  r.people = static_cast<int64_t>(probes.size());
  std::array<double, kNumAttrs> ce{}, right{};
  KvCache cache(c, batch, static_cast<int>(longest));
  Batch b;
  std::vector<float> logits;
  const uint8_t one = 1;
  for (size_t first = 0; first < tokens.size(); first += static_cast<size_t>(batch)) {
    const size_t last = std::min(tokens.size(), first + static_cast<size_t>(batch));
    b.Clear();
    for (size_t i = first; i < last; ++i) {
      const ProbeTokens& t = tokens[i];
      const int seq = static_cast<int>(i - first);
      cache.length[static_cast<size_t>(seq)] = 0;
      // Position k's logits predict token k + 1: wanted where k + 1 is a value's token.
      std::vector<uint8_t> want(t.ids.size(), 0);
      for (const auto& [begin, end] : t.value)
        for (size_t k = begin; k < end; ++k) want[k - 1] = 1;
      for (size_t k = 0; k < t.ids.size(); ++k)
        b.Add(t.ids[k], seq, static_cast<int>(k), want[k] != 0);
    }
    model.Forward(b, cache, &logits);
    // The logits come back in batch order: probe by probe, position by position, and the
    // values of a probe are disjoint ranges, so walk them in the text's order.
    size_t row = 0;
    for (size_t i = first; i < last; ++i) {
      const ProbeTokens& t = tokens[i];
      std::vector<std::pair<size_t, int>> ranges;  // (begin, attribute) in text order
      for (int a = 0; a < kNumAttrs; ++a)
        ranges.emplace_back(t.value[static_cast<size_t>(a)].first, a);
      std::sort(ranges.begin(), ranges.end());
      for (const auto& [begin, a] : ranges) {
        double nats = 0;
        bool all_right = true;
        for (size_t k = begin; k < t.value[static_cast<size_t>(a)].second; ++k, ++row) {
          const float* l = &logits[row * static_cast<size_t>(c.vocab)];
          const int32_t target = t.ids[k];
          nats += CrossEntropyLoss(l, &target, &one, 1, c.vocab);
          all_right = all_right && std::max_element(l, l + c.vocab) - l == target;
        }
        ce[static_cast<size_t>(a)] += nats / std::log(2.0);
        right[static_cast<size_t>(a)] += all_right ? 1 : 0;
      }
    }
  }
  const double n = static_cast<double>(r.people);
  for (int a = 0; a < kNumAttrs; ++a) {
    AttrBits& x = r.attr[static_cast<size_t>(a)];
    x.cross_entropy_bits = ce[static_cast<size_t>(a)] / n;
    x.recall = right[static_cast<size_t>(a)] / n;
    const double h = AttrEntropyBits(static_cast<Attr>(a));
    x.bits = h > 0 ? std::max(0.0, n * (h - x.cross_entropy_bits)) : 0.0;
    if (a < kNumDrawnAttrs) r.bits += x.bits;
  }
  r.seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  return r;
}

}  // namespace tinylora
