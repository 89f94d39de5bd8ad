// Collectives over a c10d::Store (LibTorch's FileStore/TCPStore): each rank writes a key, then waits for the others'.
// Broadcasts, which carry the bulk data (the catalog, segments exchanged between nodes), go over a Gloo process group
// rendezvoused through the same store: peer to peer, rather than every byte relayed by the store's host.
#include <algorithm>
#include <map>
#include <numeric>
#include <thread>

#include <fmt/format.h>
#include <torch/csrc/distributed/c10d/FileStore.hpp>
#include <torch/csrc/distributed/c10d/PrefixStore.hpp>
#include <torch/csrc/distributed/c10d/ProcessGroupGloo.hpp>
#include <torch/csrc/distributed/c10d/TCPStore.hpp>

#include "core/error.h"
#include "launch/communicator.h"

namespace shardcast {
namespace {

class StoreCommunicator final : public Communicator {
 public:
  // `hosts_store`: this rank's process serves the store, so its world communicator waits for every rank to check out
  // before letting it go; otherwise the last collective's readers could find the store gone.
  StoreCommunicator(c10::intrusive_ptr<c10d::Store> store, std::string prefix, int rank, int size,
                    bool is_world = false, bool hosts_store = false, Timeout close_timeout = Timeout(0))
      : store_(std::move(store)),
        prefix_(std::move(prefix)),
        rank_(rank),
        size_(size),
        is_world_(is_world),
        hosts_store_(hosts_store),
        close_timeout_(close_timeout) {}

  ~StoreCommunicator() override {
    if (!is_world_) return;
    try {
      const std::string key = prefix_ + "/checked-out";
      store_->add(key, 1);
      const auto deadline = std::chrono::steady_clock::now() + close_timeout_;
      while (hosts_store_ && store_->add(key, 0) < size_ && std::chrono::steady_clock::now() < deadline) {
        std::this_thread::sleep_for(std::chrono::milliseconds(5));
      }
    } catch (const std::exception&) {
      // A rank that failed earlier already reported why; closing must not throw from a destructor.
    }
  }

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
    if (size_ == 1 || size == 0) return;
    try {
      std::vector<at::Tensor> tensors{
          at::from_blob(data, {static_cast<int64_t>(size)}, at::TensorOptions().dtype(at::kByte))};
      c10d::BroadcastOptions options;
      options.rootRank = root;
      options.timeout = timeout;
      gloo(timeout)->broadcast(tensors, options)->wait(timeout);
    } catch (const std::exception& e) {
      const std::string error = e.what();
      const bool timed_out = error.find("imed out") != std::string::npos;  // Gloo's "Timed out waiting ..."
      throw Error(timed_out ? ErrorCode::kTimeout : ErrorCode::kSystem,
                  fmt::format("rank {} of {}: broadcast '{}' from rank {} failed: {}", rank_, size_, what, root,
                              error.substr(0, error.find('\n'))));
    }
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
  // Made on the first broadcast, which every rank of this communicator enters together (it is a collective).
  c10d::ProcessGroupGloo* gloo(Timeout timeout) {
    if (!gloo_) {
      auto options = c10d::ProcessGroupGloo::Options::create();
      options->timeout = timeout;
      // As torch.distributed: GLOO_SOCKET_IFNAME picks the network interface, else the address the host name
      // resolves to.
      const char* interface = std::getenv("GLOO_SOCKET_IFNAME");
      options->devices.push_back(interface ? c10d::ProcessGroupGloo::createDeviceForInterface(interface)
                                           : c10d::ProcessGroupGloo::createDefaultDevice());
      gloo_ = c10::make_intrusive<c10d::ProcessGroupGloo>(
          c10::make_intrusive<c10d::PrefixStore>(fmt::format("{}/gloo{}", prefix_, seq_++), store_), rank_, size_,
          options);
    }
    return gloo_.get();
  }

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
  c10::intrusive_ptr<c10d::ProcessGroupGloo> gloo_;
  bool is_world_;
  bool hosts_store_;
  Timeout close_timeout_;
  uint64_t seq_ = 0;
};

}  // namespace

std::unique_ptr<Communicator> make_file_store_communicator(const std::filesystem::path& path, int rank, int size) {
  try {
    auto store = c10::make_intrusive<c10d::FileStore>(path.string(), size);
    return std::make_unique<StoreCommunicator>(store, "sc", rank, size, /*is_world=*/true);
  } catch (const c10::Error& e) {
    throw Error(ErrorCode::kSystem, fmt::format("cannot open the rendezvous file store '{}': {}", path.string(),
                                                e.what_without_backtrace()));
  }
}

std::unique_ptr<Communicator> make_tcp_store_communicator(const std::string& host, int port, int rank, int size,
                                                          bool launcher_hosts, const std::string& key_prefix,
                                                          Timeout timeout) {
  c10d::TCPStoreOptions options;
  options.port = static_cast<uint16_t>(port);
  options.isServer = rank == 0 && !launcher_hosts;
  options.waitWorkers = false;  // our collectives wait, with timeouts that name the missing ranks
  options.timeout = timeout;
  c10::intrusive_ptr<c10d::Store> store;
  try {
    store = c10::make_intrusive<c10d::PrefixStore>(key_prefix, c10::make_intrusive<c10d::TCPStore>(host, options));
  } catch (const std::exception& e) {
    const std::string error = e.what();
    throw Error(ErrorCode::kSystem,
                options.isServer
                    ? fmt::format("rank 0 cannot host the rendezvous store on port {} (MASTER_PORT): {}", port,
                                  error.substr(0, error.find('\n')))
                    : fmt::format("rank {} of {} cannot reach the rendezvous store at {}:{} (MASTER_ADDR:MASTER_PORT, "
                                  "hosted by {}) within {} s: {}",
                                  rank, size, host, port, launcher_hosts ? "the launcher" : "rank 0",
                                  std::chrono::duration_cast<std::chrono::seconds>(timeout).count(),
                                  error.substr(0, error.find('\n'))));
  }
  return std::make_unique<StoreCommunicator>(store, "sc", rank, size, /*is_world=*/true, options.isServer, timeout);
}

}  // namespace shardcast
