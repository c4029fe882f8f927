// OpenMP's threads, by default, spin for about 3 ms (libgomp's GOMP_SPINCOUNT of 300 000) at
// every barrier before they sleep. On an idle machine that saves a wake-up per parallel region;
// on a busy one it burns the time slices the other processes, and our own other threads, need:
// measured on 2 cores with two CPU-bound processes beside it, a tiny LoRA run kept 0.10–0.16 of
// its idle speed, and 0.56–0.62 with the passive policy (threads sleep at once), which on an
// idle machine was within the noise of the default (docs/DECISIONS.md, bench/run_busy.sh).
// libgomp reads its policy once, when it is loaded, before main: so the binaries start
// themselves again, once, with OMP_WAIT_POLICY=PASSIVE in their environment — unless the user
// has chosen a policy (OMP_WAIT_POLICY or GOMP_SPINCOUNT set), which is kept.
#pragma once

#include <unistd.h>

#include <cstdlib>

namespace tinylora {

// First thing in main. Returns only when no restart was needed or it failed (then the run goes
// on with the default policy).
inline void UsePassiveWaitPolicy(char** argv) {
  if (std::getenv("OMP_WAIT_POLICY") != nullptr || std::getenv("GOMP_SPINCOUNT") != nullptr) return;
  if (setenv("OMP_WAIT_POLICY", "PASSIVE", 1) != 0) return;
  execv("/proc/self/exe", argv);
}

}  // namespace tinylora
