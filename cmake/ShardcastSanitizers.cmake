# SHARDCAST_SANITIZE="address;undefined" builds everything with ASan and UBSan (as NCCL's ASAN/UBSAN options).
if(SHARDCAST_SANITIZE)
  set(_flags "")
  foreach(_s IN LISTS SHARDCAST_SANITIZE)
    if(NOT _s MATCHES "^(address|undefined|thread|leak)$")
      message(FATAL_ERROR "SHARDCAST_SANITIZE: unknown sanitizer '${_s}' (use address, undefined, thread, leak)")
    endif()
    list(APPEND _flags "-fsanitize=${_s}")
  endforeach()
  list(APPEND _flags -fno-omit-frame-pointer -fno-sanitize-recover=undefined)
  add_compile_options(${_flags})
  add_link_options(${_flags})
  message(STATUS "shardcast: sanitizers ${SHARDCAST_SANITIZE}")
endif()

# SHARDCAST_FUZZ: every library carries libFuzzer's coverage instrumentation; only tests/fuzz links its driver.
if(SHARDCAST_FUZZ)
  if(NOT CMAKE_CXX_COMPILER_ID MATCHES "Clang")
    message(FATAL_ERROR "SHARDCAST_FUZZ needs clang (libFuzzer): configure with CXX=clang++ (scripts/sanitize does)")
  endif()
  add_compile_options(-fsanitize=fuzzer-no-link)
  add_link_options(-fsanitize=fuzzer-no-link)  # the coverage callbacks' runtime, for everything but tests/fuzz
endif()
