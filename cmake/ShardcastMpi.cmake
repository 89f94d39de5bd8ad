# Resolves SHARDCAST_WITH_MPI (AUTO|ON|OFF) into SHARDCAST_HAVE_MPI and MPI::MPI_CXX. Without MPI the store
# communicator (c10d TCPStore, used under torchrun and shardcast-run) and the single-process one remain; a process
# started by mpirun or srun then fails with a message saying this build has no MPI.
set(SHARDCAST_HAVE_MPI 0)
shardcast_want(SHARDCAST_WITH_MPI _want_mpi)
if(NOT _want_mpi STREQUAL "OFF")
  if(_want_mpi STREQUAL "ON")
    find_package(MPI REQUIRED COMPONENTS CXX)
  else()
    find_package(MPI COMPONENTS CXX)
  endif()
  if(MPI_CXX_FOUND)
    set(SHARDCAST_HAVE_MPI 1)
  else()
    message(STATUS "shardcast: no MPI found: the store and single-process communicators only (Debian: libopenmpi-dev)")
  endif()
endif()
