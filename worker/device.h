// The device side of GPU placement behind one small interface: pinning host memory, 2-D copies on two ordered lanes,
// and the collectives (broadcast, scatter) across the job's ranks. CUDA + NCCL implement it on a GPU; a host
// stand-in implements it with memcpy and the job's communicator, so the ring protocol, chunking, slicing and
// transport logic run and are tested on machines without a GPU. Torch-free.
#pragma once

#include <chrono>
#include <cstddef>
#include <cstdint>
#include <exception>
#include <memory>
#include <string>
#include <vector>

#include "coordinator/tensor_parallel.h"
#include "launch/communicator.h"

namespace shardcast {

// Work on one lane runs in order; the two lanes may overlap (CUDA streams). kCopy carries host-to-device copies,
// kComm the collectives and the device-to-device copies that depend on them.
enum class Lane { kCopy, kComm };

class Device {
 public:
  virtual ~Device() = default;

  virtual std::string describe() const = 0;
  // What torch calls the device its tensors are allocated on: "cuda:3", or "cpu" for the stand-in.
  virtual std::string torch_device() const = 0;

  // Registers host memory for fast DMA (cudaHostRegister), once per mapping; unpin before unmapping. read_only: the
  // mapping is PROT_READ (a shared segment view).
  virtual void pin(void* host, size_t bytes, bool read_only) = 0;
  virtual void unpin(void* host) = 0;

  // A device buffer of at least `bytes`, kept by the device for reuse under `slot` until it is destroyed.
  virtual uint8_t* scratch(int slot, size_t bytes) = 0;

  // Copies `block` from src_base (host or this device) to dst_base (this device), asynchronously on `lane`.
  virtual void copy(const CopyBlock& block, uint8_t* dst_base, const uint8_t* src_base, Lane lane) = 0;

  // Root's `bytes` at `data` reach every rank's `data`, on kComm.
  virtual void broadcast(uint8_t* data, size_t bytes, int root) = 0;
  // Root sends sends[r] (sizes[r] bytes) to rank r; every rank receives its sizes[rank] bytes into `recv`, on kComm.
  // Root's own part is copied locally.
  virtual void scatter(const std::vector<const uint8_t*>& sends, const std::vector<size_t>& sizes, uint8_t* recv,
                       int root) = 0;

  // Waits for both lanes and the device's default stream: every copy, collective and torch operation issued so far
  // has finished (memory torch just allocated is then safe to write from either lane).
  virtual void synchronize() = 0;
};

// Host memory pinned for `device` until destruction, which waits for the device first (after a failure copies from it
// may still be in flight) and then unpins, before the memory's mapping can go away.
class PinnedHost {
 public:
  PinnedHost(Device& device, void* host, size_t bytes, bool read_only) : device_(device), host_(host) {
    device_.pin(host, bytes, read_only);
  }
  ~PinnedHost() {
    try {
      device_.synchronize();
      device_.unpin(host_);
    } catch (const std::exception&) {  // unwinding already, or the error the caller sees next: that one is reported
    }
  }
  PinnedHost(const PinnedHost&) = delete;
  PinnedHost& operator=(const PinnedHost&) = delete;

 private:
  Device& device_;
  void* host_;
};

struct DeviceRequest {
  int ordinal = 0;                            // CUDA device index (LOCAL_RANK by default)
  bool collectives = false;                   // set up NCCL over `world` (broadcast/scatter transports)
  std::chrono::milliseconds timeout{600000};  // bounds NCCL setup and every wait on the GPU
};

// The CUDA device `ordinal`, with an NCCL communicator over `world` when asked. Throws kInvalidArgument when this
// build has no CUDA or the machine no such device, saying which.
std::unique_ptr<Device> make_cuda_device(const DeviceRequest& request, Communicator& world);

// The ceiling for host-to-device copies on cuda:`ordinal`: bytes/s of cudaMemcpyAsync from cudaHostAlloc'd memory,
// `bytes` at a time, the median of `repeats` timed copies after a warm-up. Throws where there is no CUDA.
double pinned_h2d_bytes_per_second(int ordinal, uint64_t bytes, int repeats);

// Host memory plays the device; collectives go over `world`. For tests and CI.
std::unique_ptr<Device> make_host_stand_in(Communicator& world, std::chrono::milliseconds timeout);

}  // namespace shardcast
