// OpenMP's threads, by default, spin for about 3 ms (libgomp's GOMP_SPINCOUNT of 300 000) at
// every barrier before they sleep. On an idle machine that saves a wake-up per parallel region;
// on a busy one it burns the time slices the other processes, and our own other threads, need:
// measured on 2 cores with two CPU-bound processes beside it, a tiny LoRA run kept 0.06–0.16 of
// its idle speed, against 0.24–0.52 when the threads sleep at once (OMP_WAIT_POLICY=PASSIVE).
// Sleeping at once makes every parallel region pay a wake-up, and decode runs about 200 regions
// per token: on AMD Zen 4 that cost 15 % of decode and 5 % of prefill against a short spin
// (GOMP_SPINCOUNT=3000, tens of microseconds: the gap between two regions of one forward), while
// the tests' concurrent processes ran 1.6–3× slower with the short spin. So each command gets
// the policy its work wants (docs/DECISIONS.md "Wait policy"):
//   kShortSpin  generate and serve, whose time is decode (and their benchmark, bench_forward);
//   kPassive    everything else (training, eval, the quickstart: large products, few regions).
// libgomp reads its policy once, when it is loaded, before main: so the binaries start
// themselves again, once, with the variable set in their environment — unless the user has
// chosen a policy (OMP_WAIT_POLICY or GOMP_SPINCOUNT set), which is kept.
#pragma once

#include <unistd.h>

#include <cstdlib>

namespace tinylora {

enum class WaitPolicy { kPassive, kShortSpin };

// First thing in main. Returns only when no restart was needed or it failed (then the run goes
// on with libgomp's default policy).
inline void UseWaitPolicy(WaitPolicy policy, char** argv) {
  if (std::getenv("OMP_WAIT_POLICY") != nullptr || std::getenv("GOMP_SPINCOUNT") != nullptr) return;
  const int set = policy == WaitPolicy::kShortSpin ? setenv("GOMP_SPINCOUNT", "3000", 1)
                                                   : setenv("OMP_WAIT_POLICY", "PASSIVE", 1);
  if (set != 0) return;
  execv("/proc/self/exe", argv);
}

}  // namespace tinylora
