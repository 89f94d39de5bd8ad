# Resolves SHARDCAST_WITH_GLOO (AUTO|ON|OFF) into SHARDCAST_HAVE_GLOO: the store communicator broadcasts over
# LibTorch's ProcessGroupGloo when Gloo's headers and library are found beside LibTorch (Debian: libgloo-dev, the
# Gloo its LibTorch links), and through the rendezvous store itself otherwise (PyTorch's wheels build Gloo into
# libtorch_cpu and ship none of its headers). A Gloo beside another LibTorch (Debian's libgloo-dev with a pip torch)
# is not the Gloo built into that LibTorch: only one in LibTorch's own prefix counts.
set(SHARDCAST_HAVE_GLOO 0)
shardcast_want(SHARDCAST_WITH_GLOO _want_gloo)
if(NOT _want_gloo STREQUAL "OFF")
  find_path(SHARDCAST_GLOO_INCLUDE_DIR gloo/algorithm.h HINTS ${TORCH_INCLUDE_DIRS})
  find_library(SHARDCAST_GLOO_LIBRARY gloo)
  if(SHARDCAST_GLOO_INCLUDE_DIR STREQUAL "${TORCH_INSTALL_PREFIX}/include" AND SHARDCAST_GLOO_LIBRARY)
    set(SHARDCAST_HAVE_GLOO 1)
  elseif(_want_gloo STREQUAL "ON")
    message(FATAL_ERROR "SHARDCAST_WITH_GLOO=ON but no Gloo headers and library beside LibTorch "
                        "(${TORCH_INSTALL_PREFIX}; Debian: libgloo-dev)")
  else()
    message(STATUS "shardcast: no Gloo beside LibTorch: store-launched jobs broadcast through the store "
                   "(Debian: libgloo-dev)")
  endif()
endif()
