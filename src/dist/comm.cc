#include "dist/comm.h"

#include <fcntl.h>
#include <mpi.h>
#include <unistd.h>

#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <limits>

#include "util/error.h"

namespace tinylora {

namespace {

// One process: every collective is the identity.
class LocalComm final : public Comm {
 public:
  void Sum(float*, int64_t) override {}
  void Sum(double*, int64_t) override {}
  std::vector<int64_t> AllGather(const std::vector<int64_t>& mine) override { return mine; }
  void StartSum(float*, int64_t) override {}
  void Progress() override {}
  void WaitAll() override {}
};

// MPI's world. Large counts go in pieces of at most INT_MAX elements (MPI's count is an int).
class MpiComm final : public Comm {
 public:
  MpiComm() {
    MPI_Comm_rank(MPI_COMM_WORLD, &rank_);
    MPI_Comm_size(MPI_COMM_WORLD, &size_);
  }
  void Sum(float* data, int64_t n) override { SumT(data, n, MPI_FLOAT); }
  void Sum(double* data, int64_t n) override { SumT(data, n, MPI_DOUBLE); }
  std::vector<int64_t> AllGather(const std::vector<int64_t>& mine) override {
    const int count = Count(static_cast<int64_t>(mine.size()));
    std::vector<int> counts(static_cast<size_t>(size_)), offsets(counts.size());
    Check(MPI_Allgather(&count, 1, MPI_INT, counts.data(), 1, MPI_INT, MPI_COMM_WORLD),
          "MPI_Allgather");
    int64_t total = 0;
    for (size_t r = 0; r < counts.size(); ++r) {
      offsets[r] = Count(total);
      total += counts[r];
    }
    std::vector<int64_t> all(static_cast<size_t>(total));
    Check(MPI_Allgatherv(mine.data(), count, MPI_INT64_T, all.data(), counts.data(), offsets.data(),
                         MPI_INT64_T, MPI_COMM_WORLD),
          "MPI_Allgatherv");
    return all;
  }
  void StartSum(float* data, int64_t n) override {
    for (int64_t i = 0; i < n; i += kPiece) {
      pending_.emplace_back();
      Check(MPI_Iallreduce(MPI_IN_PLACE, data + i, static_cast<int>(std::min(kPiece, n - i)),
                           MPI_FLOAT, MPI_SUM, MPI_COMM_WORLD, &pending_.back()),
            "MPI_Iallreduce");
    }
  }
  void Progress() override {
    if (pending_.empty()) return;
    int done = 0;
    Check(
        MPI_Testall(static_cast<int>(pending_.size()), pending_.data(), &done, MPI_STATUSES_IGNORE),
        "MPI_Testall");
  }
  void WaitAll() override {
    if (pending_.empty()) return;
    Check(MPI_Waitall(static_cast<int>(pending_.size()), pending_.data(), MPI_STATUSES_IGNORE),
          "MPI_Waitall");
    pending_.clear();
  }

 private:
  static constexpr int64_t kPiece = std::numeric_limits<int>::max();
  std::vector<MPI_Request> pending_;
  static int Count(int64_t n) {
    if (n > std::numeric_limits<int>::max()) FailRuntime("MPI: a message of over 2^31 elements");
    return static_cast<int>(n);
  }
  static void Check(int rc, const char* what) {
    if (rc == MPI_SUCCESS) return;
    char text[MPI_MAX_ERROR_STRING];
    int len = 0;
    MPI_Error_string(rc, text, &len);
    FailRuntime(std::string(what) + " failed (another rank stopped?): " + std::string(text, len));
  }
  template <typename T>
  void SumT(T* data, int64_t n, MPI_Datatype type) {
    for (int64_t i = 0; i < n; i += kPiece) {
      Check(MPI_Allreduce(MPI_IN_PLACE, data + i, static_cast<int>(std::min(kPiece, n - i)), type,
                          MPI_SUM, MPI_COMM_WORLD),
            "MPI_Allreduce");
    }
  }
};

bool g_mpi = false;
std::FILE* g_error_stream = nullptr;  // a quiet rank's real stderr

bool LaunchedByMpi() {
  for (const char* v : {"OMPI_COMM_WORLD_SIZE", "PMIX_RANK", "PMI_SIZE", "PMI_RANK"}) {
    if (std::getenv(v) != nullptr) return true;
  }
  return false;
}

}  // namespace

void Comm::Agree(const std::function<void()>& fn) {
  int code = 0;
  std::string message;
  try {
    fn();
  } catch (const Error& e) {
    if (size_ == 1) throw;
    code = static_cast<int>(e.code());
    message = e.what();
  }
  if (size_ == 1) return;
  // The lowest failing rank: each offers (failed ? rank : size), the minimum wins.
  std::vector<int64_t> offers = AllGather({code != 0 ? rank_ : size_, code});
  int64_t first = size_, first_code = 0;
  for (size_t r = 0; r < offers.size(); r += 2) {
    if (offers[r] < first) first = offers[r], first_code = offers[r + 1];
  }
  if (first == size_) return;
  // Its message reaches every rank (rank 0 reports it): only rank `first` offers its bytes.
  std::string text = message;
  if (first != 0) {
    std::vector<int64_t> bytes;
    if (rank_ == first) bytes.assign(message.begin(), message.end());
    std::vector<int64_t> all = AllGather(bytes);
    text.assign(all.begin(), all.end());
  }
  throw Error(static_cast<ExitCode>(first_code), text, /*agreed=*/true);
}

Comm& WorldComm() {
  if (g_mpi) {
    static MpiComm mpi;
    return mpi;
  }
  static LocalComm local;
  return local;
}

void InitDistributed(int* argc, char*** argv) {
  if (!LaunchedByMpi()) return;
  int provided = 0;
  // FUNNELED: only the main thread calls MPI; OpenMP's threads compute between the calls.
  if (MPI_Init_thread(argc, argv, MPI_THREAD_FUNNELED, &provided) != MPI_SUCCESS) {
    std::fprintf(stderr, "error: MPI_Init failed\n");
    std::exit(1);
  }
  MPI_Comm_set_errhandler(MPI_COMM_WORLD, MPI_ERRORS_RETURN);
  g_mpi = true;
  if (WorldComm().root()) return;
  std::fflush(stdout);
  std::fflush(stderr);
  const int saved = ::dup(2), null = ::open("/dev/null", O_WRONLY);
  if (saved >= 0 && null >= 0) {
    g_error_stream = ::fdopen(saved, "w");
    ::dup2(null, 1);
    ::dup2(null, 2);
  }
  if (null >= 0) ::close(null);
}

std::FILE* ErrorStream() { return g_error_stream != nullptr ? g_error_stream : stderr; }

void FinalizeDistributed() {
  if (!g_mpi) return;
  MPI_Finalize();
  g_mpi = false;
}

void AbortDistributed(int code) {
  std::fflush(ErrorStream());
  if (g_mpi) MPI_Abort(MPI_COMM_WORLD, code);
  std::exit(code);
}

}  // namespace tinylora
