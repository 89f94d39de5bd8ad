// What launched this process, read from the environment alone: Open MPI's mpirun, SLURM's srun, an MPICH-style PMI
// launcher, or a torchrun-style launcher (torchrun, shardcast-run, or a script setting RANK/WORLD_SIZE/MASTER_*). The
// communicator is chosen from it (world_communicator.cpp); `evidence` says which variables decided, for logs and
// errors.
#pragma once

#include <functional>
#include <optional>
#include <string>

namespace shardcast {

enum class Launcher {
  kNone,      // a plain process: a job of one rank
  kOpenMpi,   // mpirun / mpiexec of Open MPI (OMPI_COMM_WORLD_*)
  kSlurm,     // srun with a PMI plugin (--mpi=pmix): MPI joins the tasks
  kPmi,       // another PMI launcher (MPICH's hydra): PMI_RANK / PMI_SIZE
  kTorchrun,  // environment only: RANK, WORLD_SIZE, MASTER_ADDR, MASTER_PORT; ranks meet in a c10d TCPStore
};

const char* launcher_name(Launcher launcher);

struct LaunchEnv {
  Launcher launcher = Launcher::kNone;
  std::string evidence;  // e.g. "OMPI_COMM_WORLD_SIZE=4", or why none was found
  // What the launcher says; -1 where it says nothing. The communicator's rank and size are checked against rank and
  // world_size; the rest is for describe() and callers (local ranks come from grouping by host, not from here).
  int rank = -1;
  int world_size = -1;
  int local_rank = -1;
  int local_size = -1;
  int node_rank = -1;
  // torchrun-style rendezvous.
  std::string master_addr;
  int master_port = -1;
  bool agent_store = false;     // TORCHELASTIC_USE_AGENT_STORE=True: the launcher hosts the store, rank 0 does not
  std::string store_namespace;  // keeps shardcast's keys apart from a process group's on the same store
  // Equal on every rank of one job and different between concurrent jobs; empty when the launcher gives none (rank 0
  // then makes one).
  std::string job_id;
  // SHARDCAST_RANKS_PER_NODE: groups consecutive ranks into virtual nodes of this many (0: group by host). Tests
  // simulate several nodes on one machine with it; it also fixes hosts whose launcher groups ranks oddly.
  int ranks_per_node = 0;

  std::string describe() const;
};

using EnvLookup = std::function<std::optional<std::string>(const std::string& name)>;

// Throws Error(kInvalidArgument) naming the variable when the environment is contradictory or malformed, e.g. srun
// started several tasks without a PMI plugin, which would leave every task alone in a job of one.
LaunchEnv detect_launch_env(const EnvLookup& lookup);
LaunchEnv detect_launch_env();  // this process's environment

}  // namespace shardcast
