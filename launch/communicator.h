// The collectives shardcast needs, behind one interface: MPI (mpirun, srun), a c10d store (torchrun-style launches,
// forked test ranks), or a single process. Every call has a timeout and says what it was waiting for: the store
// throws kTimeout naming the missing ranks; MPI, which cannot cancel a started collective, prints why and aborts the
// job (MPI_Abort).
#pragma once

#include <chrono>
#include <cstddef>
#include <filesystem>
#include <functional>
#include <memory>
#include <string>
#include <vector>

namespace shardcast {

using Timeout = std::chrono::milliseconds;

class Communicator {
 public:
  virtual ~Communicator() = default;

  virtual int rank() const = 0;
  virtual int size() const = 0;
  virtual std::string kind() const = 0;  // "mpi", "store", "self"

  // Each rank contributes `mine`; everyone gets every rank's value, indexed by rank. `what` names the step in a
  // timeout error ("kTimeout: ... waiting for ranks 2, 3 in 'stage: status'").
  virtual std::vector<std::string> all_gather(const std::string& mine, const std::string& what, Timeout timeout) = 0;

  // Root's bytes reach every rank's `data` (all pass the same size).
  virtual void broadcast(void* data, size_t size, int root, const std::string& what, Timeout timeout) = 0;

  virtual void barrier(const std::string& what, Timeout timeout);

  // Ranks with the same color form a new communicator, ordered by key then rank.
  virtual std::unique_ptr<Communicator> split(int color, int key, const std::string& what, Timeout timeout) = 0;

  // What identifies this rank's node: ranks with equal keys share memory. Default: the host name.
  virtual std::string node_key(Timeout timeout);

  // Runs between the polls of every collective's wait (at least every 50 ms) and throws when a rank of the job is known
  // to be dead, so survivors stop in seconds instead of at the timeout (worker/ installs the node link's check). The
  // store tells the other nodes through an abort key; MPI, which cannot abandon a started collective, aborts the job.
  void set_liveness_check(std::function<void(const std::string& what)> check) { liveness_check_ = std::move(check); }
  // Throws as above; for other waits on the job's ranks (the GPU's NCCL collectives).
  void check_liveness(const std::string& what) const {
    if (liveness_check_) liveness_check_(what);
  }

 private:
  std::function<void(const std::string&)> liveness_check_;
};

std::unique_ptr<Communicator> make_self_communicator();

// Ranks meet through a c10d FileStore in `path` (a file all ranks can reach): forked test ranks, single-node jobs.
std::unique_ptr<Communicator> make_file_store_communicator(const std::filesystem::path& path, int rank, int size);

// Ranks meet through a c10d TCPStore at host:port (torchrun-style launches). Rank 0 hosts it unless `launcher_hosts`
// (torchrun's agent store); keys live under `key_prefix`. Connecting waits up to `timeout` for the store to come up.
std::unique_ptr<Communicator> make_tcp_store_communicator(const std::string& host, int port, int rank, int size,
                                                          bool launcher_hosts, const std::string& key_prefix,
                                                          Timeout timeout);

// Open MPI's MPI_COMM_WORLD; initialises MPI on first use and finalizes it at exit.
std::unique_ptr<Communicator> make_mpi_world_communicator();

// The communicators this build has, for `shardcast info`: "mpi, store (Gloo broadcasts), self" or less.
std::string built_communicators();

struct LaunchEnv;
// The communicator the launcher implies: MPI under Open MPI, SLURM (PMIx) and PMI launchers; a TCPStore for
// torchrun-style launches; this process alone otherwise. Throws if its rank or size disagrees with the launcher's.
std::unique_ptr<Communicator> make_world_communicator(const LaunchEnv& env, Timeout timeout);

}  // namespace shardcast
