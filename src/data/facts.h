// Synthetic biographies in the manner of bioS (Allen-Zhu & Li, "Physics of Language Models",
// parts 3.1 and 3.3): people with unique names and six facts each, five drawn uniformly and
// independently (birth date, birth city, university, major, employer) and a sixth that follows
// the employer (the company's city). Because the facts are random, the information a model can
// store about a population is known exactly: log2 of each attribute's number of values.
//
// A biography is one sentence per attribute, each sentence from one of that attribute's
// templates, every sentence starting with the full name and ending with the value, the sentences
// in a shuffled order; every exposure renders a person afresh. Everything is deterministic for a
// seed: the pools of names and values are fixed (no seed), a population is drawn from its seed.
// Two populations never share a full name (a name belongs to one of them by a hash), so a base
// trained on one learns the format and the value distributions but none of the other's facts.
#pragma once

#include <array>
#include <cstdint>
#include <string>
#include <vector>

namespace tinylora {

enum class Attr : int { kBirthDate, kBirthCity, kUniversity, kMajor, kEmployer, kWorkCity };
constexpr int kNumAttrs = 6;
// The attributes drawn independently (the work city is the employer's, so it carries no
// information of its own and is left out of every total).
constexpr int kNumDrawnAttrs = 5;

const char* AttrName(Attr a);  // birth_date, birth_city, university, major, employer, work_city
// The number of values an attribute is drawn from (the work city: the cities).
int NumValues(Attr a);
std::string ValueText(Attr a, int value);  // "March 3, 1987", "Velmaton", ...
// Bits of information in the attribute of one person: log2 NumValues for the five drawn
// uniformly; 0 for the work city (given the employer it is determined).
double AttrEntropyBits(Attr a);
// One person's bits: the sum over the attributes (46.59).
double PersonEntropyBits();
// The work city's entropy before the employer is known: that of the companies' cities.
double WorkCityMarginalBits();
int NumTemplates(Attr a);

struct Person {
  std::string name;                    // "First Middle Last"
  std::array<int, kNumAttrs> value{};  // per attribute, an index below NumValues
};

enum class Population { kTarget, kBase };
// The first n people of a population for a seed (a prefix: n + 1 people start with these n).
std::vector<Person> DrawPeople(int64_t n, uint64_t seed, Population population);

// Where a value lies in a biography: [begin, end) bytes of the value itself.
struct ValueSpan {
  Attr attr;
  size_t begin, end;
};
struct Biography {
  std::string text;
  std::array<ValueSpan, kNumAttrs> spans;  // in the order of the text
};
// One rendering of a person; `key` chooses the templates and the order (one key per exposure).
Biography Render(const Person& p, uint64_t key);
// The facts read back from a biography of the person named `name`; false (and `why` set) when
// a sentence fits no template or a value is not in its attribute's pool.
bool ParseBiography(const std::string& text, const std::string& name, Person* out,
                    std::string* why);

// ---- data facts ---------------------------------------------------------------------------
struct FactsOptions {
  int64_t people = 1000;    // the target population
  int exposures = 100;      // renderings of each target person in train.jsonl
  int64_t base_people = 0;  // the disjoint population for the base (0: as many as `people`)
  int base_exposures = 0;   // renderings of each base person (0: as `exposures`)
  uint64_t seed = 1;
  std::string out;
  bool write_base = true;  // false: no base.jsonl (a pipeline that keeps the base's apart)
};
struct FactsResult {
  int64_t people = 0, base_people = 0, train_docs = 0, base_docs = 0;
  double bits_per_person = 0;  // the five drawn attributes' entropy
};
// Writes OUT/people.jsonl (the target people's facts), OUT/train.jsonl (people × exposures
// biographies, shuffled), OUT/probe.jsonl (one more rendering per target person, with its
// value spans: what the bits are measured on), OUT/base.jsonl (the base population's
// biographies, unless !write_base) and OUT/entropy.json (every attribute's values and bits). Each
// file is written whole or not at all.
FactsResult WriteFacts(const FactsOptions& o);

// The key of person i's probe rendering (never one of the training exposures' keys).
uint64_t ProbeKey(uint64_t seed, int64_t person);

}  // namespace tinylora
