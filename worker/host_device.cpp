// The host stand-in for a GPU: memcpy for copies, the job's communicator for collectives. Everything is synchronous,
// so the lanes are trivially ordered.
#include <cstring>
#include <map>
#include <vector>

#include <fmt/format.h>

#include "worker/device.h"

namespace shardcast {
namespace {

class HostStandIn final : public Device {
 public:
  HostStandIn(Communicator& world, std::chrono::milliseconds timeout) : world_(world), timeout_(timeout) {}

  std::string describe() const override { return "host memory standing in for a GPU"; }
  std::string torch_device() const override { return "cpu"; }
  void pin(void*, size_t, bool) override {}
  void unpin(void*) override {}

  uint8_t* scratch(int slot, size_t bytes) override {
    std::vector<uint8_t>& buffer = scratch_[slot];
    if (buffer.size() < bytes) buffer.resize(bytes);
    return buffer.data();
  }

  void copy(const CopyBlock& b, uint8_t* dst_base, const uint8_t* src_base, Lane) override {
    for (uint64_t row = 0; row < b.rows; ++row) {
      std::memcpy(dst_base + b.dst + row * b.dst_pitch, src_base + b.src + row * b.src_pitch, b.width);
    }
  }

  void broadcast(uint8_t* data, size_t bytes, int root) override {
    world_.broadcast(data, bytes, root, "device broadcast", timeout_);
  }

  // The communicator has no point-to-point: each rank's part is broadcast and only its owner keeps it. The bytes that
  // a real scatter moves are counted by the loader from the sizes, not from this.
  void scatter(const std::vector<const uint8_t*>& sends, const std::vector<size_t>& sizes, uint8_t* recv,
               int root) override {
    std::vector<uint8_t> part;
    for (int r = 0; r < world_.size(); ++r) {
      if (sizes[r] == 0) continue;
      part.resize(sizes[r]);
      if (world_.rank() == root) std::memcpy(part.data(), sends[r], sizes[r]);
      world_.broadcast(part.data(), sizes[r], root, fmt::format("device scatter to rank {}", r), timeout_);
      if (r == world_.rank()) std::memcpy(recv, part.data(), sizes[r]);
    }
  }

  void synchronize() override {}

 private:
  Communicator& world_;
  std::chrono::milliseconds timeout_;
  std::map<int, std::vector<uint8_t>> scratch_;
};

}  // namespace

std::unique_ptr<Device> make_host_stand_in(Communicator& world, std::chrono::milliseconds timeout) {
  return std::make_unique<HostStandIn>(world, timeout);
}

}  // namespace shardcast
