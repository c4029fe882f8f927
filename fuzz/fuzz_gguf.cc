// libFuzzer target: the GGUF parser must refuse any bad input with an Error, never crash, hang
// or read out of bounds; whatever it accepts must be self-consistent.
#include <cstddef>
#include <cstdint>
#include <cstdlib>

#include "formats/gguf.h"
#include "util/error.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  try {
    const tinylora::GgufHeader h = tinylora::ParseGguf(data, size, "fuzz");
    if (h.data_start % h.alignment != 0) std::abort();
    for (const auto& t : h.tensors) {
      if (t.offset < h.data_start || t.offset + t.nbytes > size) std::abort();
      if (t.offset % h.alignment != 0) std::abort();
      if (static_cast<int64_t>(t.nbytes) != tinylora::GgmlTypeBytes(t.type, t.numel()))
        std::abort();
    }
    for (const auto& [key, v] : h.kv) {  // every accessor stays inside what was read
      if (v.type == tinylora::GgufType::kArray && v.elem != tinylora::GgufType::kString) {
        for (uint64_t i = 0; i < v.count && i < 64; ++i) (void)v.At(i);
      } else if (v.is_number()) {
        (void)v.AsInt();
        (void)v.AsDouble();
      }
    }
  } catch (const tinylora::Error&) {
  }
  return 0;
}
