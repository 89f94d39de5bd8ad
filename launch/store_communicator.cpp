// Collectives over a c10d::Store (LibTorch's FileStore/TCPStore): each rank writes a key, then waits for the others'.
#include <algorithm>
#include <map>
#include <numeric>

#include <fmt/format.h>
#include <torch/csrc/distributed/c10d/FileStore.hpp>

#include "core/error.h"
#include "launch/communicator.h"

namespace shardcast {
namespace {

class StoreCommunicator final : public Communicator {
 public:
  StoreCommunicator(c10::intrusive_ptr<c10d::Store> store, std::string prefix, int rank, int size)
      : store_(std::move(store)), prefix_(std::move(prefix)), rank_(rank), size_(size) {}

  int rank() const override { return rank_; }
  int size() const override { return size_; }
  std::string kind() const override { return "store"; }

  std::vector<std::string> all_gather(const std::string& mine, const std::string& what, Timeout timeout) override {
    const std::string base = fmt::format("{}/{}", prefix_, seq_++);
    set(base + "/" + std::to_string(rank_), mine);
    std::vector<std::string> keys;
    for (int r = 0; r < size_; ++r) keys.push_back(base + "/" + std::to_string(r));
    wait(keys, what, timeout);
    std::vector<std::string> values;
    for (const std::string& key : keys) {
      std::vector<uint8_t> bytes = store_->get(key);
      values.emplace_back(bytes.begin(), bytes.end());
    }
    return values;
  }

  void broadcast(void* data, size_t size, int root, const std::string& what, Timeout timeout) override {
    const std::string key = fmt::format("{}/{}/bcast", prefix_, seq_++);
    if (rank_ == root) {
      set(key, std::string(static_cast<const char*>(data), size));
      return;
    }
    wait({key}, what, timeout);
    std::vector<uint8_t> bytes = store_->get(key);
    if (bytes.size() != size) {
      throw Error(ErrorCode::kInvalidArgument, fmt::format("broadcast '{}': root sent {} bytes, rank {} expected {}",
                                                           what, bytes.size(), rank_, size));
    }
    std::copy(bytes.begin(), bytes.end(), static_cast<uint8_t*>(data));
  }

  std::unique_ptr<Communicator> split(int color, int key, const std::string& what, Timeout timeout) override {
    const uint64_t split_id = seq_;  // the same on every rank: all ranks run the same sequence of collectives
    auto entries = all_gather(fmt::format("{} {}", color, key), what, timeout);
    std::vector<std::pair<int, int>> members;  // (key, rank) of my color
    for (int r = 0; r < size_; ++r) {
      int c = 0, k = 0;
      std::sscanf(entries[r].c_str(), "%d %d", &c, &k);
      if (c == color) members.emplace_back(k, r);
    }
    std::sort(members.begin(), members.end());
    int new_rank =
        static_cast<int>(std::find(members.begin(), members.end(), std::make_pair(key, rank_)) - members.begin());
    return std::make_unique<StoreCommunicator>(store_, fmt::format("{}/split{}/{}", prefix_, split_id, color), new_rank,
                                               static_cast<int>(members.size()));
  }

 private:
  void set(const std::string& key, const std::string& value) {
    try {
      store_->set(key, std::vector<uint8_t>(value.begin(), value.end()));
    } catch (const c10::Error& e) {
      throw Error(ErrorCode::kSystem, fmt::format("store set '{}' failed: {}", key, e.what_without_backtrace()));
    }
  }

  void wait(const std::vector<std::string>& keys, const std::string& what, Timeout timeout) {
    try {
      store_->wait(keys, timeout);
      return;
    } catch (const c10::Error&) {
      // Timed out (or the store failed): name the ranks that never arrived.
    }
    std::vector<std::string> missing;
    for (const std::string& key : keys) {
      bool present = false;
      try {
        present = store_->check({key});
      } catch (const c10::Error&) {
      }
      if (!present) missing.push_back(key.substr(key.rfind('/') + 1));
    }
    throw Error(ErrorCode::kTimeout,
                fmt::format("rank {} of {} timed out after {} s in '{}' waiting for rank(s) {}", rank_, size_,
                            std::chrono::duration_cast<std::chrono::seconds>(timeout).count(), what,
                            missing.empty() ? std::string("(the store did not answer)")
                                            : fmt::format("{}", fmt::join(missing, ", "))));
  }

  c10::intrusive_ptr<c10d::Store> store_;
  std::string prefix_;
  int rank_;
  int size_;
  uint64_t seq_ = 0;
};

}  // namespace

std::unique_ptr<Communicator> make_file_store_communicator(const std::filesystem::path& path, int rank, int size) {
  try {
    auto store = c10::make_intrusive<c10d::FileStore>(path.string(), size);
    return std::make_unique<StoreCommunicator>(store, "sc", rank, size);
  } catch (const c10::Error& e) {
    throw Error(ErrorCode::kSystem, fmt::format("cannot open the rendezvous file store '{}': {}", path.string(),
                                                e.what_without_backtrace()));
  }
}

}  // namespace shardcast
