// One MPI job where rank `late` reaches an all_gather long after the others: the MPI communicator must give up at the
// timeout and name that rank. Run by test_mpirun under mpirun.
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <thread>

#include "launch/communicator.h"

int main(int argc, char** argv) {
  const int late = argc > 1 ? std::atoi(argv[1]) : 2;
  auto world = shardcast::make_mpi_world_communicator();
  if (world->rank() == late) std::this_thread::sleep_for(std::chrono::seconds(60));
  world->all_gather("x", "straggler test", std::chrono::seconds(2));
  std::printf("rank %d passed the all_gather\n", world->rank());
  return 0;
}
