#include "ops/gemm_onednn.h"

#include <map>
#include <mutex>
#include <oneapi/dnnl/dnnl.hpp>
#include <tuple>

#include "util/error.h"

namespace tinylora {

namespace {

using dnnl::memory;

dnnl::engine& Engine() {
  static dnnl::engine engine = [] {
    // Before oneDNN's first primitive or ISA query, or it has no effect.
    dnnl::set_max_cpu_isa(dnnl::cpu_isa::avx512_core_bf16);
    return dnnl::engine(dnnl::engine::kind::cpu, 0);
  }();
  return engine;
}

memory::data_type DataType(OnednnType t) {
  return t == OnednnType::kBf16 ? memory::data_type::bf16 : memory::data_type::f32;
}

using Key = std::tuple<OnednnType, int64_t, int64_t, int64_t, bool, bool>;

// One primitive per shape, made on first use (a training step meets a few dozen shapes).
const dnnl::matmul& Primitive(const Key& key) {
  static std::mutex mu;
  static std::map<Key, dnnl::matmul> cache;
  std::lock_guard<std::mutex> lock(mu);
  auto it = cache.find(key);
  if (it != cache.end()) return it->second;
  const auto [type, M, N, K, w_transposed, accumulate] = key;
  const memory::data_type dt = DataType(type);
  const memory::desc a({M, K}, dt, memory::format_tag::ab);
  // (K, N) with W (N, K) row-major is the column-major tag `ba`.
  const memory::desc w({K, N}, dt, w_transposed ? memory::format_tag::ba : memory::format_tag::ab);
  const memory::desc c({M, N}, memory::data_type::f32, memory::format_tag::ab);
  dnnl::primitive_attr attr;
  if (accumulate) {
    dnnl::post_ops ops;
    ops.append_sum(1.0f);
    attr.set_post_ops(ops);
  }
  try {
    const dnnl::matmul::primitive_desc pd(dnnl::matmul::desc(a, w, c), attr, Engine());
    return cache.emplace(key, dnnl::matmul(pd)).first->second;
  } catch (const dnnl::error& e) {
    FailRuntime(std::string("oneDNN has no ") + (type == OnednnType::kBf16 ? "BF16" : "F32") +
                " matmul for this CPU: " + e.what());
  }
}

}  // namespace

bool OnednnBf16Available() {
  static const bool available = [] {
    Engine();
    const auto isa = static_cast<unsigned>(dnnl::get_effective_cpu_isa());
    const auto bf16 = static_cast<unsigned>(dnnl::cpu_isa::avx512_core_bf16);
    if ((isa & bf16) != bf16) return false;
    try {  // and it makes a BF16 matmul of it
      const memory::desc a({2, 32}, memory::data_type::bf16, memory::format_tag::ab);
      const memory::desc w({32, 2}, memory::data_type::bf16, memory::format_tag::ba);
      const memory::desc c({2, 2}, memory::data_type::f32, memory::format_tag::ab);
      dnnl::matmul::primitive_desc(dnnl::matmul::desc(a, w, c), Engine());
      return true;
    } catch (const dnnl::error&) {
      return false;
    }
  }();
  return available;
}

void OnednnMatMul(OnednnType type, const void* a, const void* w, bool w_transposed, int64_t M,
                  int64_t N, int64_t K, float* c, bool accumulate) {
  if (M <= 0 || N <= 0) return;
  const dnnl::matmul& mm = Primitive({type, M, N, K, w_transposed, accumulate});
  const memory::data_type dt = DataType(type);
  dnnl::engine& engine = Engine();
  memory am({{M, K}, dt, memory::format_tag::ab}, engine, const_cast<void*>(a));
  memory wm({{K, N}, dt, w_transposed ? memory::format_tag::ba : memory::format_tag::ab}, engine,
            const_cast<void*>(w));
  memory cm({{M, N}, memory::data_type::f32, memory::format_tag::ab}, engine, c);
  dnnl::stream stream(engine);
  mm.execute(stream, {{DNNL_ARG_SRC, am}, {DNNL_ARG_WEIGHTS, wm}, {DNNL_ARG_DST, cm}});
  stream.wait();
}

}  // namespace tinylora
