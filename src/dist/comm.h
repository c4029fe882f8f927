// The one seam between the processes of data-parallel training (DESIGN.md §8, ranks): the
// ranks of an MPI job (Debian's OpenMPI), or a single process that is rank 0 of 1. Every
// collective must be called by every rank, in the same order; each returns the same result on
// every rank. The CUDA backend's NCCL all-reduce goes behind this same interface.
#pragma once

#include <cstdint>
#include <cstdio>
#include <functional>
#include <string>
#include <vector>

namespace tinylora {

class Comm {
 public:
  virtual ~Comm() = default;
  int rank() const { return rank_; }
  int size() const { return size_; }
  bool root() const { return rank_ == 0; }

  // In place: the element-wise sum over the ranks.
  virtual void Sum(float* data, int64_t n) = 0;
  virtual void Sum(double* data, int64_t n) = 0;
  // Every rank's `mine`, concatenated in rank order.
  virtual std::vector<int64_t> AllGather(const std::vector<int64_t>& mine) = 0;
  // Starts summing `data` (n) in place without waiting (MPI_Iallreduce): it is summed once
  // WaitAll() returns, and must not be touched before. Progress() lets started sums move on.
  virtual void StartSum(float* data, int64_t n) = 0;
  virtual void Progress() = 0;
  virtual void WaitAll() = 0;

  // Runs `fn` on every rank and agrees on how it went: when it threw tinylora::Error on any
  // rank, every rank throws the lowest such rank's error (marked agreed()), so that one rank
  // reports it once and all stop with its exit code.
  void Agree(const std::function<void()>& fn);
  // A summed scalar: Sum over one value.
  double SumOne(double v) {
    Sum(&v, 1);
    return v;
  }

 protected:
  int rank_ = 0, size_ = 1;
};

// The process's ranks: MPI's world when InitDistributed found an MPI launcher, else one rank.
Comm& WorldComm();

// Calls MPI_Init when an MPI launcher (mpirun, srun) started this process (its environment
// says so), and sets MPI's error handler to return errors, which become Error (exit 1). The
// ranks other than 0 write their standard output and error to /dev/null from then on (one
// progress, one result, one error line per run); ErrorStream() still reaches their real
// standard error. Without a launcher it does nothing and the binary runs as one process.
void InitDistributed(int* argc, char*** argv);
// Where an error only this rank met is reported (rank 0, or one process: stderr).
std::FILE* ErrorStream();
// MPI_Finalize, when InitDistributed called MPI_Init.
void FinalizeDistributed();
// Ends every rank at once with `code` (MPI_Abort): for an error one rank met alone, which the
// others, waiting in a collective, cannot learn of. Without MPI, std::exit.
[[noreturn]] void AbortDistributed(int code);

}  // namespace tinylora
