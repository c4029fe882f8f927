// The server's counters, gauges and histograms, written as Prometheus text (GET /metrics).
// Thread-safe: the engine and the HTTP handlers update them.
#pragma once

#include <cstdint>
#include <map>
#include <mutex>
#include <string>
#include <vector>

namespace tinylora {

// Cumulative buckets with fixed upper bounds, as Prometheus histograms are.
class Histogram {
 public:
  explicit Histogram(std::vector<double> bounds)
      : bounds_(std::move(bounds)), counts_(bounds_.size() + 1, 0) {}
  void Observe(double v);
  // name_bucket{le=...}, name_sum, name_count lines.
  void Write(const std::string& name, const std::string& help, std::string* out) const;
  int64_t count() const { return total_; }

 private:
  std::vector<double> bounds_;
  std::vector<int64_t> counts_;  // per bucket (the last: above every bound)
  double sum_ = 0;
  int64_t total_ = 0;
};

class ServerMetrics {
 public:
  ServerMetrics();
  // A request admitted to the queue for `model`, one refused with an HTTP status.
  void Request(const std::string& model);
  void Refused(int status);
  void Finished(const std::string& model, int64_t prompt_tokens, int64_t generated_tokens);
  void FirstToken(double seconds);
  void NextToken(double seconds);  // the time between two tokens of one sequence
  void Step(int64_t batch_tokens, int64_t sequences);
  // Gauges, set by the engine after each step.
  void SetState(int64_t waiting, int64_t running, int64_t kv_reserved, int64_t kv_used);
  std::string Text(int64_t kv_budget) const;

 private:
  mutable std::mutex mu_;
  struct PerModel {
    int64_t requests = 0, prompt_tokens = 0, generated_tokens = 0;
  };
  std::map<std::string, PerModel> models_;
  std::map<int, int64_t> refused_;
  int64_t steps_ = 0, waiting_ = 0, running_ = 0, kv_reserved_ = 0, kv_used_ = 0;
  Histogram ttft_, per_token_, batch_tokens_, batch_sequences_;
};

}  // namespace tinylora
