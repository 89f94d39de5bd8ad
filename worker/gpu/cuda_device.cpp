// The CUDA + NCCL Device: two non-blocking streams (copies; collectives and what depends on them), a non-blocking
// NCCL communicator so every wait can time out (and abort the communicator) rather than hang on a lost peer.
#include <algorithm>
#include <chrono>
#include <cstdlib>
#include <map>
#include <thread>

#include <fmt/format.h>

#include "core/error.h"
#include "worker/device.h"
#include "worker/gpu/gpu_check.h"

namespace shardcast {
namespace {

using Clock = std::chrono::steady_clock;

class CudaDevice final : public Device {
 public:
  CudaDevice(const DeviceRequest& request, Communicator& world)
      : ordinal_(request.ordinal), timeout_(request.timeout), world_(world), rank_(world.rank()), size_(world.size()) {
    int count = 0;
    const cudaError_t status = cudaGetDeviceCount(&count);
    if (status != cudaSuccess || request.ordinal < 0 || request.ordinal >= count) {
      const char* visible = std::getenv("CUDA_VISIBLE_DEVICES");
      cudaGetLastError();
      throw Error(ErrorCode::kInvalidArgument,
                  fmt::format("rank {} asked for cuda:{} but {} (CUDA_VISIBLE_DEVICES={}); GPU placement needs one "
                              "GPU per local rank",
                              world.rank(), request.ordinal,
                              status != cudaSuccess ? std::string(cudaGetErrorString(status))
                                                    : fmt::format("{} device(s) are visible", count),
                              visible ? visible : "unset"));
    }
    SHARDCAST_CUDA_CHECK(cudaSetDevice(ordinal_));
    cudaDeviceProp prop{};
    SHARDCAST_CUDA_CHECK(cudaGetDeviceProperties(&prop, ordinal_));
    name_ = prop.name;
    SHARDCAST_CUDA_CHECK(cudaDeviceGetAttribute(&max_pitch_, cudaDevAttrMaxPitch, ordinal_));
    SHARDCAST_CUDA_CHECK(cudaStreamCreateWithFlags(&copy_stream_, cudaStreamNonBlocking));
    SHARDCAST_CUDA_CHECK(cudaStreamCreateWithFlags(&comm_stream_, cudaStreamNonBlocking));
    if (request.collectives) init_nccl(world);
  }

  ~CudaDevice() override {
    if (comm_) (failed_ ? ncclCommAbort(comm_) : ncclCommDestroy(comm_));
    for (auto& [slot, buffer] : scratch_) cudaFree(buffer.first);
    if (copy_stream_) cudaStreamDestroy(copy_stream_);
    if (comm_stream_) cudaStreamDestroy(comm_stream_);
  }

  std::string describe() const override { return fmt::format("cuda:{} ({})", ordinal_, name_); }
  std::string torch_device() const override { return fmt::format("cuda:{}", ordinal_); }

  void pin(void* host, size_t bytes, bool read_only) override {
    if (bytes == 0) return;
    SHARDCAST_CUDA_CHECK(cudaHostRegister(host, bytes, read_only ? cudaHostRegisterReadOnly : cudaHostRegisterDefault));
  }
  void unpin(void* host) override { SHARDCAST_CUDA_CHECK(cudaHostUnregister(host)); }

  uint8_t* scratch(int slot, size_t bytes) override {
    auto& [pointer, size] = scratch_[slot];
    if (size < bytes) {
      synchronize();  // the old buffer may still be in use on a lane
      SHARDCAST_CUDA_CHECK(cudaFree(pointer));
      pointer = nullptr;
      size = 0;
      SHARDCAST_CUDA_CHECK(cudaMalloc(&pointer, bytes));
      size = bytes;
    }
    return static_cast<uint8_t*>(pointer);
  }

  void copy(const CopyBlock& b, uint8_t* dst_base, const uint8_t* src_base, Lane lane) override {
    if (b.bytes() == 0) return;
    cudaStream_t stream = lane == Lane::kCopy ? copy_stream_ : comm_stream_;
    uint8_t* dst = dst_base + b.dst;
    const uint8_t* src = src_base + b.src;
    if (b.rows == 1) {
      SHARDCAST_CUDA_CHECK(cudaMemcpyAsync(dst, src, b.width, cudaMemcpyDefault, stream));
    } else if (b.src_pitch <= static_cast<uint64_t>(max_pitch_) && b.dst_pitch <= static_cast<uint64_t>(max_pitch_)) {
      SHARDCAST_CUDA_CHECK(
          cudaMemcpy2DAsync(dst, b.dst_pitch, src, b.src_pitch, b.width, b.rows, cudaMemcpyDefault, stream));
    } else {  // rows further apart than the copy engine's pitch limit: one copy per row
      for (uint64_t row = 0; row < b.rows; ++row) {
        SHARDCAST_CUDA_CHECK(
            cudaMemcpyAsync(dst + row * b.dst_pitch, src + row * b.src_pitch, b.width, cudaMemcpyDefault, stream));
      }
    }
  }

  void broadcast(uint8_t* data, size_t bytes, int root) override {
    require_comm("broadcast");
    SHARDCAST_NCCL_CHECK(comm_, ncclBroadcast(data, data, bytes, ncclUint8, root, comm_, comm_stream_));
    wait_comm_ready("ncclBroadcast");
  }

  void scatter(const std::vector<const uint8_t*>& sends, const std::vector<size_t>& sizes, uint8_t* recv,
               int root) override {
    require_comm("scatter");
    SHARDCAST_NCCL_CHECK(comm_, ncclGroupStart());
    if (rank_ == root) {
      for (int r = 0; r < size_; ++r) {
        if (sizes[r] == 0) continue;
        if (r == root) {
          SHARDCAST_CUDA_CHECK(cudaMemcpyAsync(recv, sends[r], sizes[r], cudaMemcpyDeviceToDevice, comm_stream_));
        } else {
          SHARDCAST_NCCL_CHECK(comm_, ncclSend(sends[r], sizes[r], ncclUint8, r, comm_, comm_stream_));
        }
      }
    } else if (sizes[rank_] > 0) {
      SHARDCAST_NCCL_CHECK(comm_, ncclRecv(recv, sizes[rank_], ncclUint8, root, comm_, comm_stream_));
    }
    const ncclResult_t end = ncclGroupEnd();
    if (end != ncclSuccess && end != ncclInProgress)
      gpu::throw_nccl_error(end, comm_, "ncclGroupEnd()", __FILE__, __LINE__);
    wait_comm_ready("scatter (ncclSend/ncclRecv)");
  }

  // Polls instead of blocking in cudaStreamSynchronize, so a peer that died cannot hang this rank: past the deadline
  // the communicator is aborted and the error names the wait.
  void synchronize() override {
    const auto deadline = Clock::now() + timeout_;
    // The legacy default stream too: torch queues its work (casts, and earlier users of the memory its caching
    // allocator hands out) there, and our non-blocking lanes do not order against it.
    for (cudaStream_t stream : {copy_stream_, comm_stream_, cudaStream_t{nullptr}}) {
      for (;;) {
        const cudaError_t status = cudaStreamQuery(stream);
        if (status == cudaSuccess) break;
        if (status != cudaErrorNotReady) gpu::throw_cuda_error(status, "cudaStreamQuery", __FILE__, __LINE__);
        check_comm_error("synchronize");
        check_peers("the GPU's copies and collectives");
        if (Clock::now() > deadline) abort_timeout("the GPU's copies and collectives to finish");
        std::this_thread::sleep_for(std::chrono::microseconds(50));
      }
    }
  }

 private:
  void init_nccl(Communicator& world) {
    ncclUniqueId id{};
    if (rank_ == 0) SHARDCAST_NCCL_CHECK(nullptr, ncclGetUniqueId(&id));
    world.broadcast(&id, sizeof(id), 0, "NCCL unique id", timeout_);
    ncclConfig_t config = NCCL_CONFIG_INITIALIZER;
    config.blocking = 0;  // calls return at once; we poll with a deadline
    const ncclResult_t status = ncclCommInitRankConfig(&comm_, size_, id, rank_, &config);
    if (status != ncclSuccess && status != ncclInProgress) {
      gpu::throw_nccl_error(status, comm_, "ncclCommInitRankConfig", __FILE__, __LINE__);
    }
    wait_comm_ready("ncclCommInitRankConfig");
  }

  void require_comm(const char* what) const {
    if (!comm_)
      throw Error(ErrorCode::kInvalidArgument,
                  fmt::format("{} needs NCCL, which this device was not set up with", what));
  }

  void check_comm_error(const char* what) {
    if (!comm_) return;
    ncclResult_t async = ncclSuccess;
    SHARDCAST_NCCL_CHECK(comm_, ncclCommGetAsyncError(comm_, &async));
    if (async != ncclSuccess && async != ncclInProgress) {
      failed_ = true;
      gpu::throw_nccl_error(async, comm_, what, __FILE__, __LINE__);
    }
  }

  // A non-blocking communicator reports ncclInProgress until an enqueue (or init) has completed on the host side.
  void wait_comm_ready(const char* what) {
    const auto deadline = Clock::now() + timeout_;
    for (;;) {
      ncclResult_t async = ncclSuccess;
      SHARDCAST_NCCL_CHECK(comm_, ncclCommGetAsyncError(comm_, &async));
      if (async == ncclSuccess) return;
      if (async != ncclInProgress) {
        failed_ = true;
        gpu::throw_nccl_error(async, comm_, what, __FILE__, __LINE__);
      }
      check_peers(what);
      if (Clock::now() > deadline) abort_timeout(what);
      std::this_thread::sleep_for(std::chrono::microseconds(50));
    }
  }

  // A peer known dead (the node link saw it) will never join the collective: abort now, not at the deadline. Asked
  // every 10 ms of a wait.
  void check_peers(const std::string& what) {
    const auto now = Clock::now();
    if (now - last_peer_check_ < std::chrono::milliseconds(10)) return;
    last_peer_check_ = now;
    try {
      world_.check_liveness(what);
    } catch (const Error&) {
      failed_ = true;  // the communicator is aborted, not destroyed
      throw;
    }
  }

  [[noreturn]] void abort_timeout(const std::string& what) {
    failed_ = true;
    throw Error(ErrorCode::kTimeout,
                fmt::format("rank {} on cuda:{} waited {} ms for {}; a peer rank may have failed (the NCCL "
                            "communicator is aborted)",
                            rank_, ordinal_, timeout_.count(), what));
  }

  int ordinal_ = 0;
  std::chrono::milliseconds timeout_;
  Communicator& world_;  // the Session's, which outlives this device
  std::string name_;
  int max_pitch_ = 0;
  cudaStream_t copy_stream_ = nullptr;
  cudaStream_t comm_stream_ = nullptr;
  ncclComm_t comm_ = nullptr;
  bool failed_ = false;
  Clock::time_point last_peer_check_{};
  int rank_ = 0;
  int size_ = 1;
  std::map<int, std::pair<void*, size_t>> scratch_;
};

}  // namespace

std::unique_ptr<Device> make_cuda_device(const DeviceRequest& request, Communicator& world) {
  return std::make_unique<CudaDevice>(request, world);
}

}  // namespace shardcast
