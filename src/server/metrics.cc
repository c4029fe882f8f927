#include "server/metrics.h"

#include <cstdio>

namespace tinylora {
namespace {

std::string Num(double v) {
  char buf[32];
  std::snprintf(buf, sizeof buf, "%.9g", v);
  return buf;
}

void Header(const std::string& name, const std::string& type, const std::string& help,
            std::string* out) {
  *out += "# HELP " + name + " " + help + "\n# TYPE " + name + " " + type + "\n";
}

void Sample(const std::string& name, const std::string& labels, double v, std::string* out) {
  *out += name + (labels.empty() ? "" : "{" + labels + "}") + " " + Num(v) + "\n";
}

// A label value with Prometheus's escapes (backslash, quote, newline).
std::string Quoted(const std::string& s) {
  std::string q = "\"";
  for (char c : s) {
    if (c == '\\' || c == '"') q += '\\';
    q += c == '\n' ? 'n' : c;
  }
  return q + "\"";
}

}  // namespace

void Histogram::Observe(double v) {
  size_t i = 0;
  while (i < bounds_.size() && v > bounds_[i]) ++i;
  ++counts_[i];
  sum_ += v;
  ++total_;
}

void Histogram::Write(const std::string& name, const std::string& help, std::string* out) const {
  Header(name, "histogram", help, out);
  int64_t cumulative = 0;
  for (size_t i = 0; i < bounds_.size(); ++i) {
    cumulative += counts_[i];
    Sample(name + "_bucket", "le=\"" + Num(bounds_[i]) + "\"", static_cast<double>(cumulative),
           out);
  }
  Sample(name + "_bucket", "le=\"+Inf\"", static_cast<double>(total_), out);
  Sample(name + "_sum", "", sum_, out);
  Sample(name + "_count", "", static_cast<double>(total_), out);
}

ServerMetrics::ServerMetrics()
    : ttft_({0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30}),
      per_token_({0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5}),
      batch_tokens_({1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 2048}),
      batch_sequences_({1, 2, 4, 8, 16, 32, 64, 128}) {}

void ServerMetrics::Request(const std::string& model) {
  std::lock_guard<std::mutex> lk(mu_);
  ++models_[model].requests;
}

void ServerMetrics::Refused(int status) {
  std::lock_guard<std::mutex> lk(mu_);
  ++refused_[status];
}

void ServerMetrics::Finished(const std::string& model, int64_t prompt_tokens,
                             int64_t generated_tokens) {
  std::lock_guard<std::mutex> lk(mu_);
  PerModel& m = models_[model];
  m.prompt_tokens += prompt_tokens;
  m.generated_tokens += generated_tokens;
}

void ServerMetrics::FirstToken(double seconds) {
  std::lock_guard<std::mutex> lk(mu_);
  ttft_.Observe(seconds);
}

void ServerMetrics::NextToken(double seconds) {
  std::lock_guard<std::mutex> lk(mu_);
  per_token_.Observe(seconds);
}

void ServerMetrics::Step(int64_t batch_tokens, int64_t sequences) {
  std::lock_guard<std::mutex> lk(mu_);
  ++steps_;
  batch_tokens_.Observe(static_cast<double>(batch_tokens));
  batch_sequences_.Observe(static_cast<double>(sequences));
}

void ServerMetrics::SetState(int64_t waiting, int64_t running, int64_t kv_reserved,
                             int64_t kv_used) {
  std::lock_guard<std::mutex> lk(mu_);
  waiting_ = waiting, running_ = running, kv_reserved_ = kv_reserved, kv_used_ = kv_used;
}

std::string ServerMetrics::Text(int64_t kv_budget) const {
  std::lock_guard<std::mutex> lk(mu_);
  std::string out;
  const std::pair<const char*, int64_t PerModel::*> counters[] = {
      {"requests", &PerModel::requests},
      {"prompt_tokens", &PerModel::prompt_tokens},
      {"generated_tokens", &PerModel::generated_tokens}};
  const char* helps[] = {"requests admitted, by model (base or adapter)",
                         "prompt tokens of finished requests, by model",
                         "generated tokens of finished requests, by model"};
  for (size_t k = 0; k < 3; ++k) {
    const std::string name = std::string("tinylora_") + counters[k].first + "_total";
    Header(name, "counter", helps[k], &out);
    for (const auto& [model, m] : models_)
      Sample(name, "model=" + Quoted(model), static_cast<double>(m.*counters[k].second), &out);
  }
  Header("tinylora_requests_refused_total", "counter", "requests refused, by HTTP status", &out);
  for (const auto& [status, n] : refused_)
    Sample("tinylora_requests_refused_total", "status=\"" + std::to_string(status) + "\"",
           static_cast<double>(n), &out);
  const std::pair<const char*, int64_t> gauges[] = {
      {"tinylora_queue_length", waiting_},
      {"tinylora_running_sequences", running_},
      {"tinylora_kv_cache_reserved_positions", kv_reserved_},
      {"tinylora_kv_cache_used_positions", kv_used_},
      {"tinylora_kv_cache_budget_positions", kv_budget}};
  const char* gauge_helps[] = {"requests waiting for admission", "sequences in the running batch",
                               "KV positions reserved by running sequences (prompt + max_tokens)",
                               "KV positions holding keys and values",
                               "the KV budget over all sequences (--kv-budget)"};
  for (size_t k = 0; k < 5; ++k) {
    Header(gauges[k].first, "gauge", gauge_helps[k], &out);
    Sample(gauges[k].first, "", static_cast<double>(gauges[k].second), &out);
  }
  Header("tinylora_steps_total", "counter", "forwards run by the scheduler", &out);
  Sample("tinylora_steps_total", "", static_cast<double>(steps_), &out);
  ttft_.Write("tinylora_time_to_first_token_seconds",
              "from admission to the queue to the first token", &out);
  per_token_.Write("tinylora_time_per_output_token_seconds",
                   "between two consecutive tokens of one sequence", &out);
  batch_tokens_.Write("tinylora_batch_tokens", "tokens per forward", &out);
  batch_sequences_.Write("tinylora_batch_sequences", "sequences per forward", &out);
  return out;
}

}  // namespace tinylora
