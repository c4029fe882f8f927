#include "model/block.h"

#include <cstring>

namespace tinylora {

void BlockForward(const Ops& ops, const BlockShape& s, const LayerWeights& w, int l, int64_t N,
                  const int32_t* pos, const RopeTable& rope, BlockSteps& steps, const BlockActs& a,
                  float* x_out) {
  const int64_t C = s.hidden, F = s.intermediate;
  // attention
  ops.rms_norm(a.x_in, w.attn_norm.f32(), N, C, s.eps, a.xn1, a.rstd1);
  steps.Route(l, a.xn1);
  steps.Project(l, Module::kQ, a.xn1, a.q);
  steps.Project(l, Module::kK, a.xn1, a.k);
  steps.Project(l, Module::kV, a.xn1, a.v);
  ops.rope(a.q, pos, N, s.n_heads, rope);
  ops.rope(a.k, pos, N, s.n_kv_heads, rope);
  steps.Attend(l, a);
  steps.Project(l, Module::kO, a.att, a.proj);
  ops.add(a.x_in, a.proj, N * C, a.x_mid);
  // MLP
  ops.rms_norm(a.x_mid, w.mlp_norm.f32(), N, C, s.eps, a.xn2, a.rstd2);
  steps.Project(l, Module::kGate, a.xn2, a.gate);
  steps.Project(l, Module::kUp, a.xn2, a.up);
  ops.swiglu(a.gate, a.up, N * F, a.h);
  steps.Project(l, Module::kDown, a.h, a.proj);
  ops.add(a.x_mid, a.proj, N * C, x_out);
}

void BlockBackward(const Ops& ops, const BlockShape& s, const LayerWeights& w, int l, int64_t N,
                   const int32_t* pos, const RopeTable& rope, BlockBackwardSteps& steps,
                   const BlockActs& a, const BlockGradScratch& g, float* dnorm1, float* dnorm2,
                   const float* dx_out, float* dx_in) {
  const int64_t C = s.hidden, F = s.intermediate;
  // MLP
  steps.ProjectBackward(l, Module::kDown, a.h, dx_out, g.dh, false);
  ops.swiglu_backward(g.dh, a.gate, a.up, N * F, g.dgate, g.dup);
  steps.ProjectBackward(l, Module::kGate, a.xn2, g.dgate, g.dxn, false);
  steps.ProjectBackward(l, Module::kUp, a.xn2, g.dup, g.dxn, true);
  float* dx_mid = dx_in;  // dx_in holds dx_mid, then gains the attention path
  std::memcpy(dx_mid, dx_out, sizeof(float) * N * C);
  ops.rms_norm_backward(g.dxn, a.x_mid, w.mlp_norm.f32(), a.rstd2, N, C, dx_mid, dnorm2);
  // attention
  steps.ProjectBackward(l, Module::kO, a.att, dx_mid, g.datt, false);
  steps.AttendBackward(l, a, g.datt, g.dq, g.dk, g.dv);
  ops.rope_backward(g.dq, pos, N, s.n_heads, rope);
  ops.rope_backward(g.dk, pos, N, s.n_kv_heads, rope);
  steps.ProjectBackward(l, Module::kQ, a.xn1, g.dq, g.dxn, false);
  steps.ProjectBackward(l, Module::kK, a.xn1, g.dk, g.dxn, true);
  steps.ProjectBackward(l, Module::kV, a.xn1, g.dv, g.dxn, true);
  steps.RouteBackward(l, a.xn1, g.dxn);
  ops.rms_norm_backward(g.dxn, a.x_in, w.attn_norm.f32(), a.rstd1, N, C, dx_in, dnorm1);
}

}  // namespace tinylora
