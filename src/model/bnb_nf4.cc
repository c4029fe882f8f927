#include "model/bnb_nf4.h"

#include <cstring>
#include <nlohmann/json.hpp>

#include "model/weights.h"
#include "ops/format.h"
#include "ops/quantize.h"
#include "util/error.h"
#include "util/file.h"

namespace tinylora {

namespace {

constexpr const char* kStateSuffix = ".quant_state.bitsandbytes__nf4";

// The tensor NAME, of dtype `dtype` and `numel` elements; Error naming it otherwise.
RawTensor Need(const RawLookup& find, const std::string& weight, const std::string& name,
               DType dtype, int64_t numel) {
  RawTensor t;
  if (!find(name, &t)) Fail(weight + ": the bitsandbytes state has no tensor '" + name + "'");
  if (t.info->dtype != dtype || t.info->numel() != numel) {
    Fail(t.where + " is " + DTypeName(t.info->dtype) + " of " + std::to_string(t.info->numel()) +
         " elements; bitsandbytes' NF4 state needs " + DTypeName(dtype) + " of " +
         std::to_string(numel));
  }
  return t;
}

std::vector<float> Floats(const RawTensor& t) {
  std::vector<float> v(static_cast<size_t>(t.info->numel()));
  std::memcpy(v.data(), t.data, v.size() * 4);
  return v;
}

// torch's dtype name of a format, as bitsandbytes records it ("bfloat16", …); a block format's
// values are F32.
const char* TorchDType(Format f) {
  return Traits(f).torch_dtype != nullptr ? Traits(f).torch_dtype : "float32";
}

}  // namespace

bool IsBnb4BitConfig(const std::string& config_json, const std::string& what) {
  const nlohmann::json j = nlohmann::json::parse(config_json, nullptr, false);
  if (!j.is_object() || !j.contains("quantization_config")) return false;
  const nlohmann::json& q = j["quantization_config"];
  if (q.is_null()) return false;
  if (!q.is_object()) Fail(what + ": quantization_config is not an object");
  const std::string method = q.value("quant_method", std::string("bitsandbytes"));
  if (method != "bitsandbytes")
    Fail(what + ": quantization_config's quant_method '" + method + "' is not supported " +
         "(tinylora reads bitsandbytes 4-bit NF4)");
  auto flag = [&](const char* key) {
    const std::string alt = std::string("_") + key;
    if (q.contains(key) && q[key].is_boolean()) return q[key].get<bool>();
    return q.contains(alt) && q[alt].is_boolean() && q[alt].get<bool>();
  };
  if (flag("load_in_8bit"))
    Fail(what + ": bitsandbytes 8-bit (LLM.int8) weights are not supported; 4-bit NF4 is");
  if (!flag("load_in_4bit")) Fail(what + ": quantization_config has no load_in_4bit: true");
  const std::string type = q.value("bnb_4bit_quant_type", std::string("fp4"));
  if (type != "nf4") Fail(what + ": bnb_4bit_quant_type '" + type + "' is not supported (nf4 is)");
  const std::string storage = q.value("bnb_4bit_quant_storage", std::string("uint8"));
  if (storage != "uint8")
    Fail(what + ": bnb_4bit_quant_storage '" + storage + "' is not supported (uint8 is)");
  return true;
}

bool IsBnbWeight(const RawLookup& find, const std::string& name) {
  RawTensor t;
  return find(name + kStateSuffix, &t);
}

std::vector<uint8_t> ReadBnbWeight(const RawLookup& find, const std::string& name, int64_t rows,
                                   int64_t cols) {
  RawTensor state_raw;
  find(name + kStateSuffix, &state_raw);
  const std::string& what = state_raw.where;
  if (state_raw.info->dtype != DType::kU8) Fail(what + " is not uint8 (the state's JSON)");
  const nlohmann::json state = nlohmann::json::parse(
      std::string(reinterpret_cast<const char*>(state_raw.data), state_raw.info->nbytes), nullptr,
      false);
  if (!state.is_object()) Fail(what + ": not a JSON object");
  if (state.value("quant_type", std::string()) != "nf4") Fail(what + ": quant_type is not nf4");
  const int64_t block = state.value("blocksize", int64_t{0});
  if (block != 64)
    Fail(what + ": blocksize " + std::to_string(block) + " (tinylora's NF4 blocks are 64)");
  if (!state.contains("shape") || state["shape"] != nlohmann::json::array({rows, cols}))
    Fail(what + ": shape " + (state.contains("shape") ? state["shape"].dump() : "missing") +
         ", but the model's config implies [" + std::to_string(rows) + ", " + std::to_string(cols) +
         "]");
  if (cols % 64 != 0)
    Fail(what + ": rows of " + std::to_string(cols) + " weights are not whole blocks of 64");
  const int64_t n = rows * cols, nb = n / 64;
  const RawTensor packed = Need(find, name, name, DType::kU8, n / 2);
  const std::vector<float> map = Floats(Need(find, name, name + ".quant_map", DType::kF32, 16));
  for (int c = 0; c < 16; ++c) {
    if (map[static_cast<size_t>(c)] != kNF4Levels[c])
      Fail(name + ".quant_map: not NF4's 16 levels (entry " + std::to_string(c) + " is " +
           std::to_string(map[static_cast<size_t>(c)]) + ")");
  }
  std::vector<float> absmax(static_cast<size_t>(nb));
  if (state.contains("nested_offset")) {  // double quantisation
    if (!state["nested_offset"].is_number()) Fail(what + ": nested_offset is not a number");
    if (state.value("nested_blocksize", int64_t{0}) != 256)
      Fail(what + ": nested_blocksize is not 256");
    const RawTensor codes = Need(find, name, name + ".absmax", DType::kU8, nb);
    const std::vector<float> absmax2 =
        Floats(Need(find, name, name + ".nested_absmax", DType::kF32, (nb + 255) / 256));
    const std::vector<float> map2 =
        Floats(Need(find, name, name + ".nested_quant_map", DType::kF32, 256));
    DequantizeAbsmax(codes.data, map2.data(), absmax2.data(), state["nested_offset"].get<float>(),
                     nb, absmax.data());
  } else {
    absmax = Floats(Need(find, name, name + ".absmax", DType::kF32, nb));
  }
  std::vector<uint8_t> out(static_cast<size_t>(FormatBytes(Format::kNF4, n)));
  auto* blocks = reinterpret_cast<BlockNF4*>(out.data());
  for (int64_t b = 0; b < nb; ++b) {
    blocks[b].absmax = absmax[static_cast<size_t>(b)];
    const uint8_t* p = packed.data + b * 32;  // 64 codes, two per byte, the first high
    for (int j = 0; j < 32; ++j) {
      const int lo = j % 2 == 0 ? p[j / 2] >> 4 : p[j / 2] & 15;            // weight j
      const int hi = j % 2 == 0 ? p[16 + j / 2] >> 4 : p[16 + j / 2] & 15;  // weight j + 32
      blocks[b].q[j] = static_cast<uint8_t>(lo | (hi << 4));
    }
  }
  return out;
}

void WriteBnbModel(const ModelWeights& w, bool double_quant, const std::string& dir) {
  const LlamaConfig& c = w.config;
  std::vector<TensorToWrite> tensors;
  std::vector<std::vector<uint8_t>> keep;  // bytes the tensors point at (a move keeps them)
  auto bytes = [&](std::vector<uint8_t> b) -> const void* {
    keep.push_back(std::move(b));
    return keep.back().data();
  };
  // Unquantised tensors as they are held (the embedding and head, norms); NF4 ones dequantised.
  auto plain = [&](const std::string& name, const Tensor& t, const std::vector<int64_t>& shape) {
    const Format f = Traits(t.format).quantized() ? Format::kF32 : t.format;
    const void* data = t.data;
    if (f != t.format) {
      std::vector<uint8_t> b(static_cast<size_t>(FormatBytes(f, t.numel())));
      Traits(t.format).dequantize(t.data, t.numel(), reinterpret_cast<float*>(b.data()));
      data = bytes(std::move(b));
    }
    tensors.push_back({name, Traits(f).dtype, shape, data, nullptr});
  };
  const Format source = w.layers[0].wq.format;
  auto quantised = [&](const std::string& name, const Tensor& t) {
    if (t.cols % 64 != 0)
      Fail("--format nf4: tensor '" + name + "' has rows of " + std::to_string(t.cols) +
           " weights, not whole blocks of 64");
    const int64_t n = t.numel(), nb = n / 64;
    std::vector<uint8_t> blocks(static_cast<size_t>(FormatBytes(Format::kNF4, n)));
    if (t.format == Format::kNF4) {
      std::memcpy(blocks.data(), t.data, blocks.size());
    } else {
      std::vector<float> row(static_cast<size_t>(t.cols));
      for (int64_t r = 0; r < t.rows; ++r) {
        Traits(t.format).dequantize(
            static_cast<const uint8_t*>(t.data) + FormatBytes(t.format, r * t.cols), t.cols,
            row.data());
        QuantizeNF4Reference(row.data(), t.cols,
                             blocks.data() + FormatBytes(Format::kNF4, r * t.cols));
      }
    }
    const auto* b = reinterpret_cast<const BlockNF4*>(blocks.data());
    std::vector<uint8_t> packed(static_cast<size_t>(n / 2));
    std::vector<float> absmax(static_cast<size_t>(nb));
    for (int64_t k = 0; k < nb; ++k) {
      absmax[static_cast<size_t>(k)] = b[k].absmax;
      uint8_t* p = packed.data() + k * 32;
      for (int j = 0; j < 64; ++j) {
        const int code = j < 32 ? b[k].q[j] & 15 : b[k].q[j - 32] >> 4;
        p[j / 2] = static_cast<uint8_t>(p[j / 2] | (j % 2 == 0 ? code << 4 : code));
      }
    }
    nlohmann::json state = {{"quant_type", "nf4"},
                            {"blocksize", 64},
                            {"dtype", TorchDType(source)},
                            {"shape", {t.rows, t.cols}}};
    tensors.push_back({name, DType::kU8, {n / 2, 1}, bytes(std::move(packed)), nullptr});
    if (double_quant) {
      std::vector<uint8_t> codes(static_cast<size_t>(nb));
      std::vector<float> absmax2(static_cast<size_t>((nb + 255) / 256));
      const float offset = DoubleQuantizeAbsmax(absmax.data(), nb, codes.data(), absmax2.data());
      state["nested_blocksize"] = 256;
      state["nested_dtype"] = "float32";
      state["nested_offset"] = offset;
      tensors.push_back({name + ".absmax", DType::kU8, {nb}, bytes(std::move(codes)), nullptr});
      const int64_t n2 = static_cast<int64_t>(absmax2.size());
      std::vector<uint8_t> a2(absmax2.size() * 4), m2(256 * 4);
      std::memcpy(a2.data(), absmax2.data(), a2.size());
      std::memcpy(m2.data(), kDynamicMap8, m2.size());
      tensors.push_back(
          {name + ".nested_absmax", DType::kF32, {n2}, bytes(std::move(a2)), nullptr});
      tensors.push_back(
          {name + ".nested_quant_map", DType::kF32, {256}, bytes(std::move(m2)), nullptr});
    } else {
      std::vector<uint8_t> a(absmax.size() * 4);
      std::memcpy(a.data(), absmax.data(), a.size());
      tensors.push_back({name + ".absmax", DType::kF32, {nb}, bytes(std::move(a)), nullptr});
    }
    std::vector<uint8_t> map(16 * 4);
    std::memcpy(map.data(), kNF4Levels, map.size());
    tensors.push_back({name + ".quant_map", DType::kF32, {16}, bytes(std::move(map)), nullptr});
    const std::string js = state.dump();
    tensors.push_back({name + kStateSuffix,
                       DType::kU8,
                       {static_cast<int64_t>(js.size())},
                       bytes(std::vector<uint8_t>(js.begin(), js.end())),
                       nullptr});
  };
  for (const auto& [spec, t] : w.Tensors()) {
    if (spec.is_norm || spec.is_head) {
      plain(spec.name, *t, spec.shape);
    } else {
      quantised(spec.name, *t);
    }
  }
  MakeDirectories(dir);  // only now: a refused model leaves nothing behind
  WriteSafetensors(JoinPath(dir, "model.safetensors"), tensors, {{"format", "pt"}});
  nlohmann::json config = nlohmann::json::parse(ConfigToJson(c));
  config["torch_dtype"] = TorchDType(w.embed.format);
  config["quantization_config"] = {{"quant_method", "bitsandbytes"},
                                   {"load_in_4bit", true},
                                   {"load_in_8bit", false},
                                   {"bnb_4bit_quant_type", "nf4"},
                                   {"bnb_4bit_use_double_quant", double_quant},
                                   {"bnb_4bit_compute_dtype", TorchDType(source)},
                                   {"bnb_4bit_quant_storage", "uint8"},
                                   {"llm_int8_skip_modules", nullptr}};
  WriteFileAtomic(JoinPath(dir, "config.json"), config.dump(2) + "\n");
  if (!w.tokenizer_model.empty())
    WriteFileAtomic(JoinPath(dir, "tokenizer.model"), w.tokenizer_model);
}

}  // namespace tinylora
