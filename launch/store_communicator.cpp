// Collectives over a c10d::Store (LibTorch's FileStore/TCPStore): each rank writes a key, then waits for the others'.
// Broadcasts, which carry the bulk data (the catalog, segments exchanged between nodes), go over a Gloo process group
// rendezvoused through the same store: peer to peer, rather than every byte relayed by the store's host. A LibTorch
// without Gloo's headers (PyTorch's wheels) relays broadcasts through the store. The switch is SHARDCAST_HAVE_GLOO,
// not USE_C10D_GLOO: a pip LibTorch defines that for its users even though it ships no Gloo headers.
#include <algorithm>
#include <cstdio>
#include <map>
#include <mutex>
#include <numeric>
#include <thread>

#include <fmt/format.h>
#include <fmt/ranges.h>  // fmt::join (its home since fmt 11)

#include "shardcast/config.h"  // SHARDCAST_HAVE_GLOO, before the includes it guards

#include <torch/csrc/distributed/c10d/FileStore.hpp>
#include <torch/csrc/distributed/c10d/PrefixStore.hpp>
#if SHARDCAST_HAVE_GLOO
#include <torch/csrc/distributed/c10d/ProcessGroupGloo.hpp>
#endif
#include <torch/csrc/distributed/c10d/TCPStore.hpp>

#include "core/error.h"
#include "launch/communicator.h"

namespace shardcast {
namespace {

// c10d's messages carry a backtrace after the first line.
std::string first_line(const std::exception& e) {
  const std::string text = e.what();
  return text.substr(0, text.find('\n'));
}

long long seconds(Timeout t) {
  return std::chrono::duration_cast<std::chrono::seconds>(t).count();
}

std::vector<int> identity_ranks(int size) {
  std::vector<int> ranks(size);
  std::iota(ranks.begin(), ranks.end(), 0);
  return ranks;
}

// What the world communicator and its splits share: where the store is (for messages), and whether any collective
// has failed (then the store's host lingers only briefly at close).
struct StoreState {
  std::string description;  // "the rendezvous store at host:port (hosted by rank 0)"
  int host_rank = -1;       // the world rank whose process serves the store; -1: the launcher or a file
  bool failed = false;
  // Set by the first rank whose wait fails (a dead local rank, a timeout): every rank's wait polls it, so a failure
  // seen on one node stops all nodes within a poll.
  std::string abort_key = "sc/abort";
};

class StoreCommunicator final : public Communicator {
 public:
  // `hosts_store`: this rank's process serves the store, so its world communicator waits (bounded) for every rank to
  // check out before letting it go; otherwise the last collective's readers could find the store gone.
  // `world_ranks[r]`: the world rank of this communicator's rank r (errors name world ranks).
  StoreCommunicator(c10::intrusive_ptr<c10d::Store> store, std::string prefix, int rank, std::vector<int> world_ranks,
                    std::shared_ptr<StoreState> state, bool is_world = false, bool hosts_store = false)
      : store_(std::move(store)),
        prefix_(std::move(prefix)),
        rank_(rank),
        size_(static_cast<int>(world_ranks.size())),
        world_ranks_(std::move(world_ranks)),
        state_(std::move(state)),
        is_world_(is_world),
        hosts_store_(hosts_store) {}

  ~StoreCommunicator() override {
    if (!is_world_) return;
    try {
      store_->set(fmt::format("{}/checked-out/{}", prefix_, rank_), std::vector<uint8_t>{});
      // After a failure the others are failing too; linger only briefly, so they can still ask who is missing.
      if (hosts_store_) close_store(state_->failed ? std::chrono::seconds(1) : std::chrono::seconds(30));
    } catch (const std::exception&) {
      // Closing must not throw from a destructor; the store may be gone already.
    }
  }

  int rank() const override { return rank_; }
  int size() const override { return size_; }
  std::string kind() const override { return "store"; }

  std::vector<std::string> all_gather(const std::string& mine, const std::string& what, Timeout timeout) override {
    const std::string base = fmt::format("{}/{}", prefix_, seq_++);
    // One leading byte: LibTorch 1.13's TCPStore answers a get of an empty value only after a 200 ms stall.
    set(base + "/" + std::to_string(rank_), "v" + mine);
    // The last to arrive says so with one key, which the others poll: one read per poll however many ranks there
    // are (an add would be a write, and a FileStore appends one record per add).
    if (guarded(what, [&] { return store_->add(base + "/arrived", 1); }) == size_) set(base + "/all", "v");
    std::vector<std::string> keys;
    for (int r = 0; r < size_; ++r) keys.push_back(base + "/" + std::to_string(r));
    wait(keys, identity_ranks(size_), what, timeout, base + "/all");
    std::vector<std::string> values;
    for (const std::string& key : keys) {
      std::vector<uint8_t> bytes = guarded(what, [&] { return store_->get(key); });
      values.emplace_back(bytes.begin() + (bytes.empty() ? 0 : 1), bytes.end());
    }
    return values;
  }

  void broadcast(void* data, size_t size, int root, const std::string& what, Timeout timeout) override {
    if (size_ == 1 || size == 0) return;
#if SHARDCAST_HAVE_GLOO
    try {
      std::vector<at::Tensor> tensors{
          at::from_blob(data, {static_cast<int64_t>(size)}, at::TensorOptions().dtype(at::kByte))};
      c10d::BroadcastOptions options;
      options.rootRank = root;
      options.timeout = timeout;
      // No timeout on wait: Gloo bounds the operation itself (the process group's timeout), and returning early
      // would leave Gloo writing into a buffer the caller is about to free.
      gloo(what, timeout)->broadcast(tensors, options)->wait();
    } catch (const Error&) {
      throw;  // the barrier before connecting Gloo: a dead rank or an aborted job, already said
    } catch (const std::exception& e) {
      state_->failed = true;
      const std::string error = first_line(e);
      const bool timed_out = error.find("imed out") != std::string::npos;  // Gloo's "Timed out waiting ..."
      throw Error(
          timed_out ? ErrorCode::kTimeout : ErrorCode::kSystem,
          fmt::format("rank {} of {}: broadcast '{}' from rank {} failed: {}", rank_, size_, what, root, error));
    }
#else
    // Through the store: the root sets one value (callers send bulk data in bounded pieces), every other rank gets
    // it, and the root deletes it once all have said so.
    const std::string key = fmt::format("{}/{}/bcast", prefix_, seq_++);
    if (rank_ == root) {
      const auto* bytes = static_cast<const uint8_t*>(data);
      guarded(what, [&] { store_->set(key, std::vector<uint8_t>(bytes, bytes + size)); });
    } else {
      wait({key}, {root}, what, timeout);
      const std::vector<uint8_t> bytes = guarded(what, [&] { return store_->get(key); });
      if (bytes.size() != size) {
        throw Error(ErrorCode::kSystem,
                    fmt::format("rank {} of {}: broadcast '{}' from rank {} carried {} bytes, not {}", rank_, size_,
                                what, root, bytes.size(), size));
      }
      std::copy(bytes.begin(), bytes.end(), static_cast<uint8_t*>(data));
    }
    barrier(what, timeout);
    if (rank_ == root) guarded(what, [&] { return store_->deleteKey(key); });
#endif
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
    std::vector<int> world_ranks;
    for (const auto& member : members) world_ranks.push_back(world_ranks_[member.second]);
    return std::make_unique<StoreCommunicator>(store_, fmt::format("{}/split{}/{}", prefix_, split_id, color), new_rank,
                                               std::move(world_ranks), state_);
  }

 private:
#if SHARDCAST_HAVE_GLOO
  // Made on the first broadcast, which every rank of this communicator enters together (it is a collective).
  c10d::ProcessGroupGloo* gloo(const std::string& what, Timeout timeout) {
    if (!gloo_) {
      // Gloo's rendezvous waits inside LibTorch, out of reach of the liveness checks: meet here first, so that a rank
      // that died before it stops the others now rather than at the timeout. Once connected, Gloo sees a dead peer's
      // sockets close.
      barrier(what + ": connecting Gloo", timeout);
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
#endif

  // Runs a store call; any failure of a set, get or check (LibTorch 1.13's TCPStore client throws std::system_error,
  // 2.x a c10::DistNetworkError) means the store's host is gone.
  template <typename Call>
  auto guarded(const std::string& what, Call call) -> decltype(call()) {
    try {
      return call();
    } catch (const std::exception& e) {
      lost_store(what, e);
    }
  }

  [[noreturn]] void lost_store(const std::string& what, const std::exception& e) {
    state_->failed = true;
    // A store that rank 0 served is lost with rank 0.
    std::vector<int> gone;
    if (state_->host_rank >= 0 && state_->host_rank != world_ranks_[rank_]) gone.push_back(state_->host_rank);
    throw Error(
        ErrorCode::kSystem,
        fmt::format("rank {} of {} lost {} in '{}': {}", rank_, size_, state_->description, what, first_line(e)),
        std::move(gone));
  }

  void set(const std::string& key, const std::string& value) {
    guarded("store set", [&] { store_->set(key, std::vector<uint8_t>(value.begin(), value.end())); });
  }

  // Polls until every key is set: by the key `all` when given (set by the last to arrive), else by the keys themselves.
  // Between polls (at most 50 ms apart) it checks that no rank is known dead, and every fourth poll that no rank has
  // aborted the job. `ranks[i]`: the rank that sets keys[i] (a timeout names the ranks whose keys are missing).
  void wait(const std::vector<std::string>& keys, const std::vector<int>& ranks, const std::string& what,
            Timeout timeout, const std::string& all = "") {
    const auto deadline = std::chrono::steady_clock::now() + timeout;
    auto pause = std::chrono::milliseconds(1);
    for (int poll = 0;; ++poll) {
      if (guarded(what, [&] { return store_->check(all.empty() ? keys : std::vector<std::string>{all}); })) return;
      try {
        check_liveness(what);
      } catch (const Error& e) {
        abort_job(fmt::format("rank {}: {}", world_ranks_[rank_], e.what()));
        throw;
      }
      if (poll % 4 == 3 && guarded(what, [&] { return store_->check({state_->abort_key}); })) {
        state_->failed = true;
        const std::vector<uint8_t> why = guarded(what, [&] { return store_->get(state_->abort_key); });
        throw Error(ErrorCode::kRemoteRankFailed, fmt::format("rank {} of {} stops '{}': the job was aborted by {}",
                                                              rank_, size_, what, std::string(why.begin(), why.end())));
      }
      if (std::chrono::steady_clock::now() > deadline) break;
      std::this_thread::sleep_for(pause);
      pause = std::min(pause * 2, std::chrono::milliseconds(50));
    }
    state_->failed = true;
    std::vector<std::string> missing;
    std::vector<int> missing_world;
    for (size_t i = 0; i < keys.size(); ++i) {
      if (guarded(what, [&] { return store_->check({keys[i]}); })) continue;
      missing.push_back(std::to_string(ranks[i]));
      missing_world.push_back(world_ranks_[ranks[i]]);
    }
    // Every value set but not all counted: a rank died between writing its value and counting itself.
    const std::string who = missing.empty() ? "a rank that wrote its value but was never counted (died mid-step)"
                                            : fmt::format("rank(s) {}", fmt::join(missing, ", "));
    const std::string message =
        fmt::format("rank {} of {} timed out after {} s in '{}' waiting for {}{}", rank_, size_, seconds(timeout), what,
                    who, is_world_ ? "" : fmt::format(" (world rank(s) {})", fmt::join(missing_world, ", ")));
    abort_job(fmt::format("rank {}: {}", world_ranks_[rank_], message));
    throw Error(ErrorCode::kTimeout, message, std::move(missing_world));
  }

  // Tells every rank of the job to stop, unless one already has (two at once: one reason wins); the store may be gone
  // already.
  void abort_job(const std::string& why) {
    state_->failed = true;
    try {
      if (!store_->check({state_->abort_key})) {
        store_->set(state_->abort_key, std::vector<uint8_t>(why.begin(), why.end()));
      }
    } catch (const std::exception&) {
    }
  }

  // The host keeps the store up until every rank has read the last collective's keys and said so.
  void close_store(Timeout bound) {
    std::vector<std::string> keys;
    for (int r = 0; r < size_; ++r) keys.push_back(fmt::format("{}/checked-out/{}", prefix_, r));
    try {
      store_->wait(keys, bound);
    } catch (const c10::Error&) {
      if (state_->failed) return;  // the ranks have said what went wrong
      std::vector<std::string> missing;
      for (int r = 0; r < size_; ++r) {
        if (!store_->check({keys[r]})) missing.push_back(std::to_string(r));
      }
      std::fprintf(stderr,
                   "shardcast: rank %d: rank(s) %s did not leave the rendezvous store within %lld s; closing it\n",
                   rank_, fmt::format("{}", fmt::join(missing, ", ")).c_str(), static_cast<long long>(seconds(bound)));
    }
  }

  c10::intrusive_ptr<c10d::Store> store_;
  std::string prefix_;
  int rank_;
  int size_;
  std::vector<int> world_ranks_;
  std::shared_ptr<StoreState> state_;
#if SHARDCAST_HAVE_GLOO
  c10::intrusive_ptr<c10d::ProcessGroupGloo> gloo_;
#endif
  bool is_world_;
  bool hosts_store_;
  uint64_t seq_ = 0;
};

// The store a rank hosts stays up for the life of the process: the next Session reuses it (keys are namespaced per
// session) instead of racing the other ranks to tear it down and bring it up again on the same port.
c10::intrusive_ptr<c10d::Store> tcp_store(const std::string& host, const c10d::TCPStoreOptions& options) {
  if (!options.isServer) return c10::make_intrusive<c10d::TCPStore>(host, options);
  static std::mutex mutex;
  static std::map<uint16_t, c10::intrusive_ptr<c10d::Store>> hosted;
  std::lock_guard<std::mutex> lock(mutex);
  auto& store = hosted[options.port];
  if (!store) store = c10::make_intrusive<c10d::TCPStore>(host, options);
  return store;
}

}  // namespace

std::unique_ptr<Communicator> make_file_store_communicator(const std::filesystem::path& path, int rank, int size) {
  try {
    auto store = c10::make_intrusive<c10d::FileStore>(path.string(), size);
    auto state = std::make_shared<StoreState>();
    state->description = fmt::format("the rendezvous file store '{}'", path.string());
    return std::make_unique<StoreCommunicator>(store, "sc", rank, identity_ranks(size), state, /*is_world=*/true);
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
  options.multiTenant = true;   // a process group of the same process may serve from this port too, as torch's env://
  options.timeout = timeout;
  auto state = std::make_shared<StoreState>();
  state->description = fmt::format("the rendezvous store at {}:{} (hosted by {})", host, port,
                                   launcher_hosts ? "the launcher" : "rank 0");
  state->host_rank = launcher_hosts ? -1 : 0;
  c10::intrusive_ptr<c10d::Store> store;
  try {
    store = c10::make_intrusive<c10d::PrefixStore>(key_prefix, tcp_store(host, options));
  } catch (const std::exception& e) {
    throw Error(
        ErrorCode::kSystem,
        options.isServer
            ? fmt::format("rank 0 cannot host the rendezvous store on port {} (MASTER_PORT): {}", port, first_line(e))
            : fmt::format("rank {} of {} cannot reach {} (MASTER_ADDR:MASTER_PORT) within {} s: {}", rank, size,
                          state->description, seconds(timeout), first_line(e)));
  }
  return std::make_unique<StoreCommunicator>(store, "sc", rank, identity_ranks(size), state, /*is_world=*/true,
                                             options.isServer);
}

}  // namespace shardcast
