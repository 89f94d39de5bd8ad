// MPI_COMM_WORLD and its splits. Collectives are the nonblocking MPI-3 ones, polled against a deadline, so a dead or
// stuck rank turns into a timeout error instead of a hang.
#include <mpi.h>

#include <unistd.h>

#include <climits>
#include <cstdio>
#include <cstdlib>
#include <thread>

#include <fmt/format.h>

#include "core/error.h"
#include "launch/communicator.h"

namespace shardcast {
namespace {

void check(int rc, const char* call) {
  if (rc == MPI_SUCCESS) return;
  char text[MPI_MAX_ERROR_STRING];
  int length = 0;
  MPI_Error_string(rc, text, &length);
  throw Error(ErrorCode::kSystem, fmt::format("{} failed: {}", call, std::string(text, length)));
}

void finalize_mpi() {
  int finalized = 0;
  MPI_Finalized(&finalized);
  if (!finalized) MPI_Finalize();
}

class MpiCommunicator final : public Communicator {
 public:
  MpiCommunicator(MPI_Comm comm, bool owned) : comm_(comm), owned_(owned) {
    MPI_Comm_rank(comm_, &rank_);
    MPI_Comm_size(comm_, &size_);
  }
  ~MpiCommunicator() override {
    int finalized = 0;
    MPI_Finalized(&finalized);
    if (owned_ && !finalized) MPI_Comm_free(&comm_);
  }

  int rank() const override { return rank_; }
  int size() const override { return size_; }
  std::string kind() const override { return "mpi"; }

  std::vector<std::string> all_gather(const std::string& mine, const std::string& what, Timeout timeout) override {
    int my_size = static_cast<int>(mine.size());
    std::vector<int> sizes(size_);
    MPI_Request request;
    check(MPI_Iallgather(&my_size, 1, MPI_INT, sizes.data(), 1, MPI_INT, comm_, &request), "MPI_Iallgather");
    wait(&request, what, timeout);
    std::vector<int> displacements(size_);
    long long total = 0;
    for (int r = 0; r < size_; ++r) {
      displacements[r] = static_cast<int>(total);
      total += sizes[r];
    }
    if (total > INT_MAX)
      throw Error(ErrorCode::kInvalidArgument, fmt::format("all_gather '{}' of {} bytes", what, total));
    std::string all(static_cast<size_t>(total), '\0');
    check(MPI_Iallgatherv(mine.data(), my_size, MPI_BYTE, all.data(), sizes.data(), displacements.data(), MPI_BYTE,
                          comm_, &request),
          "MPI_Iallgatherv");
    wait(&request, what, timeout);
    std::vector<std::string> values;
    for (int r = 0; r < size_; ++r) values.push_back(all.substr(displacements[r], sizes[r]));
    return values;
  }

  void broadcast(void* data, size_t size, int root, const std::string& what, Timeout timeout) override {
    constexpr size_t kChunk = 1 << 30;  // MPI counts are ints
    auto* bytes = static_cast<char*>(data);
    for (size_t offset = 0; offset < size; offset += kChunk) {
      int count = static_cast<int>(std::min(kChunk, size - offset));
      MPI_Request request;
      check(MPI_Ibcast(bytes + offset, count, MPI_BYTE, root, comm_, &request), "MPI_Ibcast");
      wait(&request, what, timeout);
    }
  }

  void barrier(const std::string& what, Timeout timeout) override {
    MPI_Request request;
    check(MPI_Ibarrier(comm_, &request), "MPI_Ibarrier");
    wait(&request, what, timeout);
  }

  std::unique_ptr<Communicator> split(int color, int key, const std::string& what, Timeout timeout) override {
    barrier(what, timeout);  // MPI_Comm_split blocks: make sure every rank is here first
    MPI_Comm out;
    check(MPI_Comm_split(comm_, color, key, &out), "MPI_Comm_split");
    return std::make_unique<MpiCommunicator>(out, true);
  }

  // Ranks in one MPI_COMM_TYPE_SHARED domain share memory: the key is the lowest world rank of the domain.
  std::string node_key(Timeout timeout) override {
    barrier("node grouping", timeout);
    MPI_Comm shared;
    check(MPI_Comm_split_type(comm_, MPI_COMM_TYPE_SHARED, rank_, MPI_INFO_NULL, &shared), "MPI_Comm_split_type");
    int lowest = 0;
    check(MPI_Allreduce(&rank_, &lowest, 1, MPI_INT, MPI_MIN, shared), "MPI_Allreduce");
    MPI_Comm_free(&shared);
    char host[256] = {};
    gethostname(host, sizeof(host) - 1);
    return fmt::format("{}#{}", host, lowest);
  }

 private:
  void wait(MPI_Request* request, const std::string& what, Timeout timeout) {
    const auto deadline = std::chrono::steady_clock::now() + timeout;
    auto pause = std::chrono::microseconds(20);
    for (;;) {
      int done = 0;
      check(MPI_Test(request, &done, MPI_STATUS_IGNORE), "MPI_Test");
      if (done) return;
      if (std::chrono::steady_clock::now() > deadline) {
        // MPI cannot cancel a started collective, and it still owns our buffers: returning would let it write into
        // freed memory later. Say why and end the job; the next load or `shardcast gc` removes leftover segments.
        std::fprintf(stderr,
                     "shardcast: error: rank %d of %d timed out after %lld s in '%s': another rank died or is stuck "
                     "(MPI does not say which); aborting the job\n",
                     rank_, size_,
                     static_cast<long long>(std::chrono::duration_cast<std::chrono::seconds>(timeout).count()),
                     what.c_str());
        MPI_Abort(MPI_COMM_WORLD, 3);
      }
      std::this_thread::sleep_for(pause);
      pause = std::min(pause * 2, std::chrono::microseconds(1000));
    }
  }

  MPI_Comm comm_;
  bool owned_;
  int rank_ = 0;
  int size_ = 1;
};

}  // namespace

bool launched_by_mpi() {
  return std::getenv("OMPI_COMM_WORLD_SIZE") || std::getenv("PMIX_RANK") || std::getenv("PMI_SIZE");
}

std::unique_ptr<Communicator> make_mpi_world_communicator() {
  int initialized = 0;
  MPI_Initialized(&initialized);
  if (!initialized) {
    check(MPI_Init(nullptr, nullptr), "MPI_Init");
    std::atexit(finalize_mpi);
  }
  return std::make_unique<MpiCommunicator>(MPI_COMM_WORLD, false);
}

}  // namespace shardcast
