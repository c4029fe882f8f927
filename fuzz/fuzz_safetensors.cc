// libFuzzer target: the safetensors header parser must refuse any bad input with an Error,
// never crash, hang or read out of bounds; whatever it accepts must be self-consistent.
#include <cstddef>
#include <cstdint>
#include <cstdlib>

#include "formats/safetensors.h"
#include "util/error.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  try {
    tinylora::SafetensorsHeader h = tinylora::ParseSafetensors(data, size, "fuzz");
    for (const auto& t : h.tensors) {
      if (t.offset < h.data_start || t.offset + t.nbytes > size) std::abort();
      if (static_cast<size_t>(t.numel()) * tinylora::DTypeSize(t.dtype) != t.nbytes) std::abort();
    }
  } catch (const tinylora::Error&) {
  }
  return 0;
}
