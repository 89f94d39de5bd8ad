# Resolves SHARDCAST_WITH_PYTHON (AUTO|ON|OFF) into SHARDCAST_HAVE_PYTHON: an interpreter whose torch is the LibTorch
# this build links (Debian: /usr/bin/python3 + python3-torch; a pip torch: the python that has it), its headers,
# pybind11 (Debian's python3-pybind11, or the copy pip's torch ships) and libtorch_python.
set(SHARDCAST_HAVE_PYTHON 0)
shardcast_want(SHARDCAST_WITH_PYTHON _want_python)

function(_shardcast_python_problem text)
  if(_want_python STREQUAL "ON")
    message(FATAL_ERROR "SHARDCAST_WITH_PYTHON=ON but ${text}")
  endif()
  message(STATUS "shardcast: no Python package: ${text}")
endfunction()

if(NOT _want_python STREQUAL "OFF")
  string(REGEX MATCH "^[0-9]+\\.[0-9]+" _libtorch_version "${Torch_VERSION}")
  # The first interpreter (Python3_EXECUTABLE if given, else python3 on PATH, else /usr/bin/python3) whose torch has
  # the LibTorch's version: the package hands torch tensors to that torch.
  set(_candidates ${Python3_EXECUTABLE})
  if(NOT _candidates)
    find_program(_path_python3 NAMES python3 NO_CACHE)
    set(_candidates ${_path_python3} /usr/bin/python3)
  endif()
  set(_python "")
  foreach(candidate IN LISTS _candidates)
    execute_process(COMMAND ${candidate} -c "import torch; print(torch.__version__)" OUTPUT_VARIABLE _py_torch
                    OUTPUT_STRIP_TRAILING_WHITESPACE ERROR_QUIET RESULT_VARIABLE _rc)
    string(REGEX MATCH "^[0-9]+\\.[0-9]+" _py_torch "${_py_torch}")
    if(_rc EQUAL 0 AND _py_torch STREQUAL _libtorch_version)
      set(_python ${candidate})
      break()
    endif()
  endforeach()
  if(NOT _python)
    _shardcast_python_problem("no Python among '${_candidates}' imports torch ${_libtorch_version} (the LibTorch built against)")
  else()
    set(Python3_EXECUTABLE ${_python} CACHE FILEPATH "Python interpreter of the shardcast package" FORCE)
    find_package(Python3 COMPONENTS Interpreter Development.Module)
    # What torch's own cpp_extension passes, so this module shares pybind11 state with torch's (newer torch builds
    # may report none of them: then pybind11's own defaults hold).
    execute_process(
      COMMAND ${Python3_EXECUTABLE} -c
              "import torch, sysconfig; c = torch._C; print(';'.join([getattr(c, '_PYBIND11_' + k, None) or '' for k in ('COMPILER_TYPE', 'STDLIB', 'BUILD_ABI')] + [sysconfig.get_path('platlib')]))"
      OUTPUT_VARIABLE _py_facts OUTPUT_STRIP_TRAILING_WHITESPACE RESULT_VARIABLE _rc)
    find_path(SHARDCAST_PYBIND11_INCLUDE_DIR pybind11/pybind11.h HINTS ${TORCH_INCLUDE_DIRS})
    find_library(SHARDCAST_TORCH_PYTHON_LIBRARY torch_python HINTS "${TORCH_INSTALL_PREFIX}/lib")
    if(NOT Python3_Development.Module_FOUND)
      _shardcast_python_problem("the headers of ${Python3_EXECUTABLE} are missing (Debian: python3-dev)")
    elseif(NOT _rc EQUAL 0)
      _shardcast_python_problem("${Python3_EXECUTABLE} cannot report torch's pybind11 ABI")
    elseif(NOT SHARDCAST_PYBIND11_INCLUDE_DIR)
      _shardcast_python_problem("pybind11 headers not found (Debian: python3-pybind11)")
    elseif(NOT SHARDCAST_TORCH_PYTHON_LIBRARY)
      _shardcast_python_problem("libtorch_python not found beside LibTorch in ${TORCH_INSTALL_PREFIX}/lib")
    else()
      list(GET _py_facts 0 SHARDCAST_PYBIND11_COMPILER_TYPE)
      list(GET _py_facts 1 SHARDCAST_PYBIND11_STDLIB)
      list(GET _py_facts 2 SHARDCAST_PYBIND11_BUILD_ABI)
      list(GET _py_facts 3 _platlib)
      # Where `cmake --install` puts the package: the interpreter's site-packages, relative to the install prefix.
      file(RELATIVE_PATH _relative "${CMAKE_INSTALL_PREFIX}" "${_platlib}")
      if(_relative MATCHES "^\\.\\.")
        set(_relative "lib/python${Python3_VERSION_MAJOR}.${Python3_VERSION_MINOR}/site-packages")
      endif()
      set(SHARDCAST_PYTHON_INSTALL_DIR "${_relative}" CACHE STRING "Where the package goes, relative to the install prefix")
      set(SHARDCAST_HAVE_PYTHON 1)
      message(STATUS "shardcast: Python package for ${Python3_EXECUTABLE} (torch ${_py_torch}), installed into "
                     "<prefix>/${SHARDCAST_PYTHON_INSTALL_DIR}")
    endif()
  endif()
endif()
