#include "train/param_block.h"

#include <algorithm>

namespace tinylora {

int ParamBlock::Add(const std::string& name, const std::vector<int64_t>& shape) {
  names_.push_back(name);
  shapes_.push_back(shape);
  offsets_.push_back(next_);
  int64_t n = 1;
  for (int64_t d : shape) n *= d;
  next_ += n;
  return size() - 1;
}

void ParamBlock::Allocate(bool with_grads) {
  values_.assign(static_cast<size_t>(next_), 0.0f);
  if (with_grads) grads_.assign(static_cast<size_t>(next_), 0.0f);
}

int64_t ParamBlock::numel(int i) const {
  int64_t n = 1;
  for (int64_t d : shapes_[static_cast<size_t>(i)]) n *= d;
  return n;
}

int ParamBlock::Find(const std::string& name) const {
  for (int i = 0; i < size(); ++i)
    if (names_[static_cast<size_t>(i)] == name) return i;
  return -1;
}

void ParamBlock::ZeroGrads() { std::fill(grads_.begin(), grads_.end(), 0.0f); }

}  // namespace tinylora
