# Resolves SHARDCAST_WITH_CUDA (AUTO|ON|OFF) into SHARDCAST_HAVE_CUDA, CUDA::cudart, NCCL_INCLUDE_DIR and NCCL_LIBRARY.
# The CUDA code is host code (runtime API + NCCL), so g++ builds it; nvcc is not needed.
set(SHARDCAST_HAVE_CUDA 0)
shardcast_want(SHARDCAST_WITH_CUDA _want)

if(NOT _want STREQUAL "OFF")
  if(NOT CUDAToolkit_ROOT AND EXISTS /usr/local/cuda)
    set(CUDAToolkit_ROOT /usr/local/cuda)
  endif()
  find_package(CUDAToolkit QUIET)
  find_path(NCCL_INCLUDE_DIR nccl.h HINTS ${CUDAToolkit_INCLUDE_DIRS} $ENV{NCCL_HOME}/include)
  find_library(NCCL_LIBRARY nccl HINTS ${CUDAToolkit_LIBRARY_DIR} $ENV{NCCL_HOME}/lib)
  if(CUDAToolkit_FOUND AND NCCL_INCLUDE_DIR AND NCCL_LIBRARY)
    set(SHARDCAST_HAVE_CUDA 1)
    message(STATUS "shardcast: CUDA ${CUDAToolkit_VERSION} and NCCL (${NCCL_LIBRARY}) found: GPU transfers enabled")
  elseif(_want STREQUAL "ON")
    message(FATAL_ERROR "SHARDCAST_WITH_CUDA=ON but the CUDA toolkit (found: ${CUDAToolkit_FOUND}) or NCCL "
                        "(nccl.h: ${NCCL_INCLUDE_DIR}, libnccl: ${NCCL_LIBRARY}) is missing. "
                        "Set CUDAToolkit_ROOT / NCCL_HOME, or SHARDCAST_WITH_CUDA=OFF.")
  else()
    message(STATUS "shardcast: CUDA toolkit or NCCL not found: CPU-only build")
  endif()
endif()
