#include "data/facts.h"

#include <algorithm>
#include <cmath>
#include <map>
#include <nlohmann/json.hpp>
#include <set>
#include <utility>

#include "ops/dropout.h"
#include "util/error.h"
#include "util/file.h"

namespace tinylora {

namespace {

// A stream of well-mixed 64-bit numbers (SplitMix64) and uniform draws from it.
class Rng {
 public:
  explicit Rng(uint64_t seed) : state_(seed) {}
  uint64_t Next() { return Mix(state_ += 0x9e3779b97f4a7c15ull); }
  // Uniform in [0, n): the high half of a 128-bit product (bias below 2^-40 for n < 2^24).
  int Below(int n) {
    return static_cast<int>((static_cast<unsigned __int128>(Next()) * static_cast<uint64_t>(n)) >>
                            64);
  }
  template <typename T>
  void Shuffle(std::vector<T>& v) {
    for (size_t i = v.size(); i > 1; --i)
      std::swap(v[i - 1], v[static_cast<size_t>(Below(static_cast<int>(i)))]);
  }

 private:
  uint64_t state_;
};

// ---- the pools: pronounceable invented words, fixed for every seed --------------------------
constexpr const char* kOnsets[] = {"b",  "c",  "d",  "f",  "g",  "h",  "j",  "k",  "l",
                                   "m",  "n",  "p",  "r",  "s",  "t",  "v",  "w",  "z",
                                   "br", "ch", "cl", "dr", "gr", "sh", "st", "th", "tr"};
constexpr const char* kVowels[] = {"a", "e", "i", "o", "u", "ai", "ea", "io", "ou"};
constexpr const char* kCodas[] = {"", "", "n", "r", "l", "s", "th", "m", "x"};
constexpr const char* kCitySuffixes[] = {"ton",  "ville", "burg",  "field", "port",
                                         "ford", "dale",  "mouth", "stead", "haven"};
constexpr const char* kCompanySuffixes[] = {"Corporation", "Industries", "Systems",  "Group",
                                            "Labs",        "Holdings",   "Dynamics", "Networks",
                                            "Solutions",   "Partners"};
constexpr const char* kMajorKinds[] = {
    "Applied",     "Computational", "Theoretical", "Environmental", "Molecular",
    "Comparative", "Industrial",    "Clinical",    "Quantitative",  "Structural"};
constexpr const char* kMajorFields[] = {"Physics",     "Biology",     "Chemistry",   "Economics",
                                        "Linguistics", "Mathematics", "Engineering", "Psychology",
                                        "Geology",     "Sociology"};
constexpr const char* kMonths[] = {"January",   "February", "March",    "April",
                                   "May",       "June",     "July",     "August",
                                   "September", "October",  "November", "December"};
constexpr int kDays = 28, kFirstYear = 1900, kYears = 200;
// bioS's sizes: 400 first, 400 middle and 1000 last names; 200 cities, 300 universities,
// 100 majors, 263 companies.
constexpr int kFirst = 400, kMiddle = 400, kLast = 1000, kCities = 200, kUniversities = 300,
              kCompanies = 263;

template <size_t N>
const char* Pick(Rng& r, const char* const (&a)[N]) {
  return a[r.Below(static_cast<int>(N))];
}

// A capitalised word of `syllables` syllables and an optional final consonant.
std::string Word(Rng& r, int syllables) {
  std::string w;
  for (int s = 0; s < syllables; ++s) w += std::string(Pick(r, kOnsets)) + Pick(r, kVowels);
  w += Pick(r, kCodas);
  w[0] = static_cast<char>(w[0] - 'a' + 'A');
  return w;
}

struct Pools {
  std::vector<std::string> first, middle, last, cities, universities, majors, companies;
  std::vector<int> company_city;
};

const Pools& ThePools() {
  static const Pools pools = [] {
    Pools p;
    Rng r(0x62696f53);           // fixed: the pools are part of the format, not of a seed
    std::set<std::string> used;  // every invented word is used once, in one pool
    auto fresh = [&](int syllables) {
      for (;;) {
        std::string w = Word(r, syllables);
        if (used.insert(w).second) return w;
      }
    };
    for (int i = 0; i < kFirst; ++i) p.first.push_back(fresh(2));
    for (int i = 0; i < kMiddle; ++i) p.middle.push_back(fresh(2));
    for (int i = 0; i < kLast; ++i) p.last.push_back(fresh(3));
    for (int i = 0; i < kCities; ++i) p.cities.push_back(fresh(2) + Pick(r, kCitySuffixes));
    for (int i = 0; i < kUniversities; ++i) {
      const std::string stem = fresh(2);
      switch (i % 4) {
        case 0:
          p.universities.push_back("the University of " + stem);
          break;
        case 1:
          p.universities.push_back(stem + " Institute of Technology");
          break;
        case 2:
          p.universities.push_back(stem + " State University");
          break;
        default:
          p.universities.push_back(stem + " College");
          break;
      }
    }
    for (const char* k : kMajorKinds)
      for (const char* f : kMajorFields) p.majors.push_back(std::string(k) + " " + f);
    for (int i = 0; i < kCompanies; ++i) {
      p.companies.push_back(fresh(2) + " " + Pick(r, kCompanySuffixes));
      p.company_city.push_back(r.Below(kCities));
    }
    return p;
  }();
  return pools;
}

// ---- templates: "{N}" the full name, the value last, then the sentence's full stop ----------
const std::vector<std::vector<std::pair<std::string, std::string>>>& Templates() {
  // (text before the value, with the name at its start as "{N}"; text after it)
  static const std::vector<std::vector<std::pair<std::string, std::string>>> t = {
      {{"{N} was born on ", "."},
       {"{N} came into this world on ", "."},
       {"{N}'s birthday is ", "."},
       {"{N}'s date of birth is ", "."}},
      {{"{N} was born in ", "."},
       {"{N} spent the early years in ", "."},
       {"{N}'s birthplace is ", "."},
       {"{N} is a native of ", "."}},
      {{"{N} studied at ", "."},
       {"{N} graduated from ", "."},
       {"{N} received an education at ", "."},
       {"{N} is an alumnus of ", "."}},
      {{"{N} majored in ", "."},
       {"{N} completed a degree in ", "."},
       {"{N} chose the field of ", "."},
       {"{N}'s area of study was ", "."}},
      {{"{N} works for ", "."},
       {"{N} is employed by ", "."},
       {"{N} has a job at ", "."},
       {"{N} earns a living at ", "."}},
      {{"{N} works in the city of ", "."},
       {"{N}'s office is in ", "."},
       {"{N} commutes to work in ", "."},
       {"{N} has a workplace in ", "."}},
  };
  return t;
}

std::string Expand(const std::string& pattern, const std::string& name) {
  std::string s = pattern;
  const size_t at = s.find("{N}");
  return s.replace(at, 3, name);
}

uint64_t FnvHash(const std::string& s) {
  uint64_t h = 0xcbf29ce484222325ull;
  for (unsigned char c : s) h = (h ^ c) * 0x100000001b3ull;
  return h;
}

}  // namespace

const char* AttrName(Attr a) {
  static constexpr const char* kNames[kNumAttrs] = {"birth_date", "birth_city", "university",
                                                    "major",      "employer",   "work_city"};
  return kNames[static_cast<int>(a)];
}

int NumValues(Attr a) {
  switch (a) {
    case Attr::kBirthDate:
      return 12 * kDays * kYears;
    case Attr::kBirthCity:
    case Attr::kWorkCity:
      return kCities;
    case Attr::kUniversity:
      return kUniversities;
    case Attr::kMajor:
      return static_cast<int>(ThePools().majors.size());
    case Attr::kEmployer:
      return kCompanies;
  }
  return 0;
}

std::string ValueText(Attr a, int v) {
  const Pools& p = ThePools();
  switch (a) {
    case Attr::kBirthDate: {
      const int month = v / (kDays * kYears), day = v / kYears % kDays + 1, year = v % kYears;
      return std::string(kMonths[month]) + " " + std::to_string(day) + ", " +
             std::to_string(kFirstYear + year);
    }
    case Attr::kBirthCity:
    case Attr::kWorkCity:
      return p.cities[static_cast<size_t>(v)];
    case Attr::kUniversity:
      return p.universities[static_cast<size_t>(v)];
    case Attr::kMajor:
      return p.majors[static_cast<size_t>(v)];
    case Attr::kEmployer:
      return p.companies[static_cast<size_t>(v)];
  }
  return "";
}

double AttrEntropyBits(Attr a) {
  return a == Attr::kWorkCity ? 0.0 : std::log2(static_cast<double>(NumValues(a)));
}

double PersonEntropyBits() {
  double h = 0;
  for (int a = 0; a < kNumAttrs; ++a) h += AttrEntropyBits(static_cast<Attr>(a));
  return h;
}

double WorkCityMarginalBits() {
  std::map<int, int> count;
  for (int c : ThePools().company_city) ++count[c];
  double h = 0;
  for (const auto& [city, n] : count) {
    const double q = static_cast<double>(n) / kCompanies;
    h -= q * std::log2(q);
  }
  return h;
}

int NumTemplates(Attr a) { return static_cast<int>(Templates()[static_cast<size_t>(a)].size()); }

std::vector<Person> DrawPeople(int64_t n, uint64_t seed, Population population) {
  if (n < 0 || n > 10'000'000) Fail("--people: between 0 and 10000000, not " + std::to_string(n));
  const Pools& pools = ThePools();
  const uint64_t side = population == Population::kTarget ? 0 : 1;
  Rng r(Mix(seed) ^ (side ? 0x62617365ull : 0x74617267ull));
  std::set<std::string> used;
  std::vector<Person> people;
  people.reserve(static_cast<size_t>(n));
  while (static_cast<int64_t>(people.size()) < n) {
    Person p;
    p.name = pools.first[static_cast<size_t>(r.Below(kFirst))] + " " +
             pools.middle[static_cast<size_t>(r.Below(kMiddle))] + " " +
             pools.last[static_cast<size_t>(r.Below(kLast))];
    // The name's population is a property of the name alone, so no seed makes them overlap.
    if ((FnvHash(p.name) >> 17 & 1) != side || !used.insert(p.name).second) continue;
    for (int a = 0; a < kNumDrawnAttrs; ++a)
      p.value[static_cast<size_t>(a)] = r.Below(NumValues(static_cast<Attr>(a)));
    p.value[static_cast<size_t>(Attr::kWorkCity)] =
        pools.company_city[static_cast<size_t>(p.value[static_cast<size_t>(Attr::kEmployer)])];
    people.push_back(std::move(p));
  }
  return people;
}

Biography Render(const Person& p, uint64_t key) {
  Rng r(key);
  std::vector<int> order(kNumAttrs);
  for (int a = 0; a < kNumAttrs; ++a) order[static_cast<size_t>(a)] = a;
  r.Shuffle(order);
  Biography b;
  for (size_t k = 0; k < order.size(); ++k) {
    const auto attr = static_cast<Attr>(order[k]);
    const auto& choices = Templates()[static_cast<size_t>(order[k])];
    const auto& [before, after] =
        choices[static_cast<size_t>(r.Below(static_cast<int>(choices.size())))];
    if (k > 0) b.text += " ";
    b.text += Expand(before, p.name);
    const size_t begin = b.text.size();
    b.text += ValueText(attr, p.value[static_cast<size_t>(order[k])]);
    b.spans[k] = ValueSpan{attr, begin, b.text.size()};
    b.text += after;
  }
  return b;
}

bool ParseBiography(const std::string& text, const std::string& name, Person* out,
                    std::string* why) {
  // Each value's text back to its index, per attribute (built once).
  static const std::vector<std::map<std::string, int>> index = [] {
    std::vector<std::map<std::string, int>> m(kNumAttrs);
    for (int a = 0; a < kNumAttrs; ++a)
      for (int v = 0; v < NumValues(static_cast<Attr>(a)); ++v)
        m[static_cast<size_t>(a)][ValueText(static_cast<Attr>(a), v)] = v;
    return m;
  }();
  Person p;
  p.name = name;
  std::array<bool, kNumAttrs> seen{};
  size_t pos = 0;
  for (int k = 0; k < kNumAttrs; ++k) {
    if (k > 0) {
      if (text.compare(pos, 1, " ") != 0)
        return *why = "no space after sentence " + std::to_string(k), false;
      ++pos;
    }
    bool matched = false;
    for (int a = 0; a < kNumAttrs && !matched; ++a) {
      for (const auto& [before, after] : Templates()[static_cast<size_t>(a)]) {
        const std::string head = Expand(before, name);
        if (text.compare(pos, head.size(), head) != 0) continue;
        const size_t stop = text.find(after + (k + 1 < kNumAttrs ? " " : ""), pos + head.size());
        if (stop == std::string::npos) continue;
        const std::string value = text.substr(pos + head.size(), stop - pos - head.size());
        const auto& m = index[static_cast<size_t>(a)];
        const auto it = m.find(value);
        if (it == m.end()) continue;
        if (seen[static_cast<size_t>(a)])
          return *why = std::string(AttrName(static_cast<Attr>(a))) + " twice", false;
        seen[static_cast<size_t>(a)] = true;
        p.value[static_cast<size_t>(a)] = it->second;
        pos = stop + after.size();
        matched = true;
        break;
      }
    }
    if (!matched) return *why = "sentence " + std::to_string(k + 1) + " fits no template", false;
  }
  if (pos != text.size()) return *why = "text after the sixth sentence", false;
  *out = p;
  return true;
}

uint64_t ProbeKey(uint64_t seed, int64_t person) {
  return Mix(Mix(seed ^ 0x70726f6265ull) + static_cast<uint64_t>(person));
}

namespace {
uint64_t ExposureKey(uint64_t seed, Population pop, int64_t person, int exposure) {
  const uint64_t side = pop == Population::kTarget ? 0x7472ull : 0x6261ull;
  return Mix(Mix(Mix(seed ^ side) + static_cast<uint64_t>(person)) +
             static_cast<uint64_t>(exposure));
}

// Every (person, exposure) rendering of a population, in a shuffled order, as JSONL text.
std::string Exposures(const std::vector<Person>& people, int exposures, uint64_t seed,
                      Population pop, int64_t* docs) {
  std::vector<std::pair<int64_t, int>> order;
  order.reserve(people.size() * static_cast<size_t>(exposures));
  for (size_t i = 0; i < people.size(); ++i)
    for (int e = 0; e < exposures; ++e) order.emplace_back(static_cast<int64_t>(i), e);
  Rng r(Mix(seed ^ 0x6f72646572ull) + (pop == Population::kTarget ? 0 : 1));
  r.Shuffle(order);
  std::string out;
  for (const auto& [i, e] : order) {
    out +=
        nlohmann::json{
            {"text", Render(people[static_cast<size_t>(i)], ExposureKey(seed, pop, i, e)).text}}
            .dump();
    out += "\n";
  }
  *docs = static_cast<int64_t>(order.size());
  return out;
}
}  // namespace

FactsResult WriteFacts(const FactsOptions& o) {
  if (o.exposures < 1 || o.exposures > 100000) Fail("--exposures: between 1 and 100000");
  if (o.base_exposures < 0 || o.base_exposures > 100000)
    Fail("--base-exposures: between 0 and 100000");
  if (o.people < 1) Fail("--people: at least 1");
  const int64_t base_n = o.base_people > 0 ? o.base_people : o.people;
  const int base_e = o.base_exposures > 0 ? o.base_exposures : o.exposures;
  if (static_cast<double>(o.people) * o.exposures > 5e7 ||
      static_cast<double>(base_n) * base_e > 5e7)
    Fail("--people × --exposures: at most 50 000 000 biographies per population");
  const std::vector<Person> people = DrawPeople(o.people, o.seed, Population::kTarget);
  const std::vector<Person> base =
      o.write_base ? DrawPeople(base_n, o.seed, Population::kBase) : std::vector<Person>{};
  MakeDirectories(o.out);
  FactsResult res;
  res.people = o.people;
  res.base_people = base_n;

  std::string facts, probes;
  for (size_t i = 0; i < people.size(); ++i) {
    const Person& p = people[i];
    nlohmann::json j = {{"name", p.name}};
    for (int a = 0; a < kNumAttrs; ++a)
      j[AttrName(static_cast<Attr>(a))] =
          ValueText(static_cast<Attr>(a), p.value[static_cast<size_t>(a)]);
    facts += j.dump() + "\n";
    const Biography b = Render(p, ProbeKey(o.seed, static_cast<int64_t>(i)));
    nlohmann::json spans = nlohmann::json::array();
    for (const ValueSpan& s : b.spans) spans.push_back({AttrName(s.attr), s.begin, s.end});
    probes += nlohmann::json{{"text", b.text}, {"name", p.name}, {"values", spans}}.dump() + "\n";
  }
  WriteFileAtomic(JoinPath(o.out, "people.jsonl"), facts);
  WriteFileAtomic(JoinPath(o.out, "probe.jsonl"), probes);
  WriteFileAtomic(JoinPath(o.out, "train.jsonl"),
                  Exposures(people, o.exposures, o.seed, Population::kTarget, &res.train_docs));
  if (o.write_base) {
    WriteFileAtomic(JoinPath(o.out, "base.jsonl"),
                    Exposures(base, base_e, o.seed, Population::kBase, &res.base_docs));
  }

  nlohmann::json attrs = nlohmann::json::object();
  for (int a = 0; a < kNumAttrs; ++a) {
    const auto attr = static_cast<Attr>(a);
    attrs[AttrName(attr)] = {{"values", NumValues(attr)},
                             {"bits", AttrEntropyBits(attr)},
                             {"templates", NumTemplates(attr)}};
  }
  res.bits_per_person = PersonEntropyBits();
  attrs["work_city"]["marginal_bits"] = WorkCityMarginalBits();
  attrs["work_city"]["follows"] = "employer";
  const nlohmann::json entropy = {
      {"people", o.people},
      {"exposures", o.exposures},
      {"base_people", base_n},
      {"base_exposures", base_e},
      {"seed", o.seed},
      {"bits_per_person", res.bits_per_person},
      {"bits_total", res.bits_per_person * static_cast<double>(o.people)},
      {"attributes", attrs}};
  WriteFileAtomic(JoinPath(o.out, "entropy.json"), entropy.dump(2) + "\n");
  return res;
}

}  // namespace tinylora
