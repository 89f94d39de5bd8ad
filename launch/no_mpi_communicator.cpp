// A build without MPI (SHARDCAST_WITH_MPI=OFF, or no MPI found at configure time): a process that mpirun or srun
// started cannot join its job, and says so rather than loading alone as a job of one.
#include "core/error.h"
#include "launch/communicator.h"

namespace shardcast {

std::unique_ptr<Communicator> make_mpi_world_communicator() {
  throw Error(ErrorCode::kInvalidArgument,
              "this process was started by an MPI launcher (mpirun, srun), but this shardcast was built without MPI "
              "(SHARDCAST_WITH_MPI=OFF or no MPI at configure time): rebuild with MPI (Debian: libopenmpi-dev), or "
              "launch with shardcast-run or torchrun");
}

}  // namespace shardcast
