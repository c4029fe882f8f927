// Bits of knowledge a model stores about a population of synthetic people (data/facts), in
// Allen-Zhu & Li's sense ("Physics of Language Models 3.3", definition 4.3): for an attribute
// with V values, over the N people,
//   bits = max(0, N · (log2 V − mean over the people of the cross-entropy, in bits, of the
//                      value's tokens given the biography before it))
// floored after averaging, not per person. A model that knows only the distribution of values
// pays log2 V per value and stores 0 bits; one that is certain of every value stores N log2 V.
// The value's tokens are those from the value's first word through its sentence's full stop
// (a token may join a word and the full stop); each probe is one rendering that training never
// saw, scored whole, so every attribute has the rest of the biography before it as context.
//
// Recall is greedy completion of the value from the same prefix, which is exactly: at every one
// of the value's tokens, the most likely next token is the right one (teacher forcing along the
// true path is the greedy path whenever every step agrees).
#pragma once

#include <array>
#include <string>
#include <vector>

#include "data/facts.h"
#include "model/llama.h"
#include "model/tokenizer.h"

namespace tinylora {

// One line of probe.jsonl: a biography and where each value lies in it.
struct Probe {
  std::string text, name;
  std::array<ValueSpan, kNumAttrs> spans;
};
std::vector<Probe> ReadProbes(const std::string& path);  // Error (exit 2) on a bad line

struct AttrBits {
  double cross_entropy_bits = 0;  // mean over the people of −log2 p(value | prefix)
  double bits = 0;                // N · (entropy − cross-entropy), floored at 0 (0: work city)
  double recall = 0;              // share of people whose value greedy completion gives exactly
};
struct FactBits {
  int64_t people = 0;
  std::array<AttrBits, kNumAttrs> attr;
  double bits = 0;  // the five drawn attributes' sum
  double seconds = 0;
};

// Scores every probe through `model` (its slot-0 adapter, if any), `batch` probes per forward.
// Error (exit 2) when the tokenizer does not keep a value's tokens apart from the text before
// it (the value must start a new token).
FactBits MeasureFactBits(LlamaModel& model, const Tokenizer& tok, const std::vector<Probe>& probes,
                         int batch = 16);

}  // namespace tinylora
