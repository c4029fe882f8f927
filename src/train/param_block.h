// Named F32 tensors in one allocation, gradients in a second of the same layout: what the
// optimiser updates and a checkpoint saves (llm.c's parameter block).
#pragma once

#include <cstdint>
#include <string>
#include <vector>

namespace tinylora {

class ParamBlock {
 public:
  // Adds a tensor; returns its index. Call Allocate() after the last Add().
  int Add(const std::string& name, const std::vector<int64_t>& shape);
  void Allocate(bool with_grads);

  int size() const { return static_cast<int>(names_.size()); }
  const std::string& name(int i) const { return names_[static_cast<size_t>(i)]; }
  const std::vector<int64_t>& shape(int i) const { return shapes_[static_cast<size_t>(i)]; }
  int64_t numel(int i) const;
  int Find(const std::string& name) const;  // -1 when absent
  float* value(int i) { return values_.data() + offsets_[static_cast<size_t>(i)]; }
  const float* value(int i) const { return values_.data() + offsets_[static_cast<size_t>(i)]; }
  float* grad(int i) {
    return grads_.empty() ? nullptr : grads_.data() + offsets_[static_cast<size_t>(i)];
  }
  const float* grad(int i) const {
    return grads_.empty() ? nullptr : grads_.data() + offsets_[static_cast<size_t>(i)];
  }
  std::vector<float>& values() { return values_; }
  std::vector<float>& grads() { return grads_; }
  const std::vector<float>& grads() const { return grads_; }
  const std::vector<float>& values() const { return values_; }
  int64_t total() const { return static_cast<int64_t>(values_.size()); }
  void ZeroGrads();

 private:
  std::vector<std::string> names_;
  std::vector<std::vector<int64_t>> shapes_;
  std::vector<int64_t> offsets_;
  int64_t next_ = 0;
  std::vector<float> values_, grads_;
};

}  // namespace tinylora
