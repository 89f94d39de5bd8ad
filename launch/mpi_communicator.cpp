// MPI_COMM_WORLD and its splits. Collectives are the nonblocking MPI-3 ones, polled against a deadline, so a dead or
// stuck rank turns into a timeout error instead of a hang.
#include <mpi.h>

#include <unistd.h>

#include <climits>
#include <cstdio>
#include <cstdlib>
#include <thread>

#include <fmt/format.h>
#include <fmt/ranges.h>  // fmt::join (its home since fmt 11)

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

  // Sizes travel to rank 0 point to point first, so that on a timeout rank 0 can name the ranks that never arrived
  // (a collective would only say that it did not finish). The other ranks wait longer than rank 0, so its message,
  // which names them, comes first.
  std::vector<std::string> all_gather(const std::string& mine, const std::string& what, Timeout timeout) override {
    int my_size = static_cast<int>(mine.size());
    std::vector<int> sizes(size_);
    if (rank_ == 0) {
      sizes[0] = my_size;
      std::vector<MPI_Request> arrivals(size_, MPI_REQUEST_NULL);
      for (int r = 1; r < size_; ++r) {
        check(MPI_Irecv(&sizes[r], 1, MPI_INT, r, kArrivalTag, comm_, &arrivals[r]), "MPI_Irecv");
      }
      wait(arrivals, what, timeout);
    } else {
      MPI_Request arrival;
      check(MPI_Isend(&my_size, 1, MPI_INT, 0, kArrivalTag, comm_, &arrival), "MPI_Isend");
      wait_for_rank_zero(&arrival, what, timeout);
    }
    MPI_Request request;
    check(MPI_Ibcast(sizes.data(), size_, MPI_INT, 0, comm_, &request), "MPI_Ibcast");
    wait_for_rank_zero(&request, what, timeout);
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
    wait_for_rank_zero(&request, what, timeout);
    std::vector<std::string> values;
    for (int r = 0; r < size_; ++r) values.push_back(all.substr(displacements[r], sizes[r]));
    return values;
  }

  void broadcast(void* data, size_t size, int root, const std::string& what, Timeout timeout) override {
    constexpr size_t kChunk = 1 << 30;  // MPI counts are ints
    auto* bytes = static_cast<char*>(data);
    for (size_t offset = 0; offset < size; offset += kChunk) {
      int count = static_cast<int>(std::min(kChunk, size - offset));
      std::vector<MPI_Request> request(1);
      check(MPI_Ibcast(bytes + offset, count, MPI_BYTE, root, comm_, request.data()), "MPI_Ibcast");
      wait(request, what, timeout, /*by_rank=*/false);
    }
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
  static constexpr int kArrivalTag = 0x5c;

  // Polls until every request completes. At the deadline it names the ranks whose request did not: with `by_rank`,
  // request r is rank r's (MPI_REQUEST_NULL where there is none); otherwise they belong to one collective, and MPI
  // cannot say which rank is late.
  void wait(std::vector<MPI_Request>& requests, const std::string& what, Timeout timeout, bool by_rank = true) {
    const auto deadline = std::chrono::steady_clock::now() + timeout;
    auto pause = std::chrono::microseconds(20);
    for (;;) {
      int done = 0;
      check(MPI_Testall(static_cast<int>(requests.size()), requests.data(), &done, MPI_STATUSES_IGNORE), "MPI_Testall");
      if (done) return;
      try {
        check_liveness(what);
      } catch (const std::exception& e) {
        abort_job(fmt::format("rank {} of {} stops '{}': {}", rank_, size_, what, e.what()));
      }
      if (std::chrono::steady_clock::now() > deadline) {
        if (!by_rank) abort_timed_out(what, timeout, "another rank (the collective does not say which)");
        std::vector<int> missing;
        for (int r = 0; r < static_cast<int>(requests.size()); ++r) {
          int arrived = 0;
          if (requests[r] != MPI_REQUEST_NULL) MPI_Test(&requests[r], &arrived, MPI_STATUS_IGNORE);
          if (requests[r] != MPI_REQUEST_NULL && !arrived) missing.push_back(r);
        }
        abort_timed_out(what, timeout, fmt::format("rank(s) {}", fmt::join(missing, ", ")));
      }
      std::this_thread::sleep_for(pause);
      pause = std::min(pause * 2, std::chrono::microseconds(1000));
    }
  }

  // Rank 0 names the missing ranks after `timeout`; the others give it a head start before they blame rank 0. On rank
  // 0 this is a collective every rank had already reached, so a rank that died since cannot be told apart.
  void wait_for_rank_zero(MPI_Request* request, const std::string& what, Timeout timeout) {
    if (rank_ == 0) {
      std::vector<MPI_Request> requests{*request};
      wait(requests, what, timeout, /*by_rank=*/false);
      return;
    }
    std::vector<MPI_Request> requests(size_, MPI_REQUEST_NULL);
    requests[0] = *request;
    wait(requests, what, timeout + timeout / 10 + std::chrono::seconds(5));
  }

  [[noreturn]] void abort_timed_out(const std::string& what, Timeout timeout, const std::string& missing) {
    abort_job(fmt::format("rank {} of {} timed out after {} s in '{}' waiting for {} (dead or stuck)", rank_, size_,
                          std::chrono::duration_cast<std::chrono::seconds>(timeout).count(), what, missing));
  }

  // MPI cannot cancel a started collective, and it still owns our buffers: returning would let it write into freed
  // memory later. Say why and end the job; segments have no names, so the job's memory goes with its processes.
  [[noreturn]] static void abort_job(const std::string& why) {
    std::fprintf(stderr, "shardcast: error: %s; aborting the job\n", why.c_str());
    MPI_Abort(MPI_COMM_WORLD, 3);
    std::abort();  // MPI_Abort does not return
  }

  MPI_Comm comm_;
  bool owned_;
  int rank_ = 0;
  int size_ = 1;
};

}  // namespace

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
