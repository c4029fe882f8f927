// Memory for large, long-lived arrays (a model's packed or widened weights): 2 MB aligned and
// backed by huge pages where the kernel allows when 2 MB or more (a TinyLlama's 4 GB in 4 KB
// pages would cost a million page faults), 64-byte aligned below that, so a small model does
// not round each matrix up to 2 MB. Contents are zero. Owned by a LargeArray.
#pragma once

#include <sys/mman.h>

#include <algorithm>
#include <cstdlib>
#include <cstring>
#include <memory>

#include "util/error.h"

namespace tinylora {

inline void* AllocateLarge(size_t bytes) {
  constexpr size_t kHuge = size_t{2} << 20;
  const size_t used = std::max<size_t>(bytes, 64);
  const size_t align = used >= kHuge ? kHuge : 64;
  const size_t total = (used + align - 1) / align * align;
  void* p = std::aligned_alloc(align, total);
  if (p == nullptr) FailRuntime("out of memory allocating " + std::to_string(bytes) + " bytes");
  if (align == kHuge) madvise(p, total, MADV_HUGEPAGE);  // a hint: failure is fine
  std::memset(p, 0, bytes);
  return p;
}

struct FreeLarge {
  void operator()(void* p) const { std::free(p); }
};
// n zeroed values of T from AllocateLarge.
template <typename T>
using LargeArray = std::unique_ptr<T[], FreeLarge>;
template <typename T>
LargeArray<T> AllocateLargeArray(int64_t n) {
  return LargeArray<T>(static_cast<T*>(AllocateLarge(sizeof(T) * static_cast<size_t>(n))));
}

}  // namespace tinylora
