#include "model/param_block.h"

#include <algorithm>
#include <cstring>

#include "util/error.h"

namespace tinylora {

int ParamBlock::Add(const std::string& name, const std::vector<int64_t>& shape, int segments) {
  Tensor t;
  t.name = name;
  t.shape = shape;
  t.numel = 1;
  for (int64_t d : shape) t.numel *= d;
  if (segments < 1 || shape.empty() || shape[0] % segments != 0) {
    FailRuntime("tensor '" + name + "': " + std::to_string(segments) +
                " segments do not divide its first dimension");
  }
  t.segments = segments;
  t.offset = -1;  // assigned by Allocate()
  next_ += t.numel;
  tensors_.push_back(std::move(t));
  return size() - 1;
}

void ParamBlock::Allocate(bool with_grads) {
  with_grads_ = with_grads;
  int64_t owned = 0, dense = 0;
  for (Tensor& t : tensors_) {
    if (t.external == nullptr) {
      t.offset = owned;
      owned += t.numel;
    }
    if (!with_grads) continue;
    if (t.segments == 1) {
      t.grad_offset = dense;
      dense += t.numel;
    } else {
      t.slot.assign(static_cast<size_t>(t.segments), -1);
    }
  }
  values_.assign(static_cast<size_t>(owned), 0.0f);
  grads_.assign(static_cast<size_t>(dense), 0.0f);
}

int ParamBlock::Find(const std::string& name) const {
  for (int i = 0; i < size(); ++i)
    if (at(i).name == name) return i;
  return -1;
}

float* ParamBlock::grad(int i) {
  const Tensor& t = at(i);
  return t.grad_offset < 0 ? nullptr : grads_.data() + t.grad_offset;
}

const float* ParamBlock::grad(int i) const {
  const Tensor& t = at(i);
  return t.grad_offset < 0 ? nullptr : grads_.data() + t.grad_offset;
}

float* ParamBlock::SegmentGrad(int i, int s, bool* fresh) {
  Tensor& t = at(i);
  const int64_t n = t.numel / t.segments;
  if (fresh != nullptr) *fresh = false;
  if (t.grad_offset >= 0) return grads_.data() + t.grad_offset + s * n;
  if (!with_grads_) return nullptr;
  int32_t& slot = t.slot[static_cast<size_t>(s)];
  if (slot < 0) {
    // Buffers are handed out in touch order and all returned by ZeroGrads, so the pool holds
    // as many as the most segments one step touched.
    if (t.used == static_cast<int32_t>(t.pool.size())) {
      t.pool.emplace_back(new float[static_cast<size_t>(n)]);
    }
    slot = t.used++;
    if (fresh != nullptr) {
      *fresh = true;
    } else {
      std::memset(t.pool[static_cast<size_t>(slot)].get(), 0,
                  sizeof(float) * static_cast<size_t>(n));
    }
    touched_.emplace_back(i, s);
    touched_sorted_ = false;
  }
  return t.pool[static_cast<size_t>(slot)].get();
}

const float* ParamBlock::TouchedSegmentGrad(int i, int s) const {
  const Tensor& t = at(i);
  if (t.grad_offset >= 0) return grads_.data() + t.grad_offset + s * (t.numel / t.segments);
  if (t.slot.empty() || t.slot[static_cast<size_t>(s)] < 0) return nullptr;
  return t.pool[static_cast<size_t>(t.slot[static_cast<size_t>(s)])].get();
}

std::vector<float> ParamBlock::DenseGrad(int i) const {
  const Tensor& t = at(i);
  std::vector<float> out(static_cast<size_t>(t.numel), 0.0f);
  const int64_t n = t.numel / t.segments;
  for (int s = 0; s < t.segments; ++s) {
    if (const float* g = TouchedSegmentGrad(i, s)) std::copy(g, g + n, out.begin() + s * n);
  }
  return out;
}

void ParamBlock::SortTouched() const {
  if (touched_sorted_) return;
  std::sort(touched_.begin(), touched_.end());
  touched_sorted_ = true;
}

void ParamBlock::ForEachGrad(const std::function<void(int, int, float*, int64_t)>& fn) {
  const auto& self = *this;
  self.ForEachGrad([&](int i, int s, const float* g, int64_t n) {
    fn(i, s, const_cast<float*>(g), n);  // this block owns every buffer it hands out
  });
}

void ParamBlock::ForEachGrad(const std::function<void(int, int, const float*, int64_t)>& fn) const {
  SortTouched();
  size_t k = 0;
  for (int i = 0; i < size(); ++i) {
    const Tensor& t = at(i);
    if (t.grad_offset >= 0) {
      fn(i, -1, grads_.data() + t.grad_offset, t.numel);
      continue;
    }
    while (k < touched_.size() && touched_[k].first < i) ++k;
    for (; k < touched_.size() && touched_[k].first == i; ++k) {
      const int s = touched_[k].second;
      fn(i, s, TouchedSegmentGrad(i, s), t.numel / t.segments);
    }
  }
}

void ParamBlock::ZeroGrads() {
  std::fill(grads_.begin(), grads_.end(), 0.0f);
  for (const auto& [i, s] : touched_) {
    at(i).slot[static_cast<size_t>(s)] = -1;
    at(i).used = 0;
  }
  touched_.clear();
  touched_sorted_ = true;
}

}  // namespace tinylora
