# `cmake --install` puts the CLI, the libraries, the headers and a package config for find_package(shardcast).
include(GNUInstallDirs)
include(CMakePackageConfigHelpers)
install(TARGETS shardcast shardcast-run RUNTIME DESTINATION ${CMAKE_INSTALL_BINDIR})
install(TARGETS shardcast_core shardcast_shm shardcast_launch shardcast_coordinator shardcast_worker EXPORT shardcastTargets
        ARCHIVE DESTINATION ${CMAKE_INSTALL_LIBDIR})
# shardcast::shardcast, the umbrella: <prefix>/include for <shardcast/shardcast.h>, <prefix>/include/shardcast for the
# headers' own "core/error.h", "worker/session.h", "shardcast/config.h".
install(TARGETS shardcast_all EXPORT shardcastTargets
        INCLUDES DESTINATION ${CMAKE_INSTALL_INCLUDEDIR} ${CMAKE_INSTALL_INCLUDEDIR}/shardcast)
install(DIRECTORY core shm launch coordinator worker DESTINATION ${CMAKE_INSTALL_INCLUDEDIR}/shardcast
        FILES_MATCHING PATTERN "*.h")
install(DIRECTORY include/shardcast DESTINATION ${CMAKE_INSTALL_INCLUDEDIR} FILES_MATCHING PATTERN "*.h")
install(FILES ${PROJECT_BINARY_DIR}/generated/shardcast/config.h DESTINATION ${CMAKE_INSTALL_INCLUDEDIR}/shardcast/shardcast)
install(EXPORT shardcastTargets NAMESPACE shardcast:: DESTINATION ${CMAKE_INSTALL_LIBDIR}/cmake/shardcast)
# What shardcastConfig.cmake needs to find the same dependencies again (CUDAToolkit_BIN_DIR is <root>/bin).
get_filename_component(SHARDCAST_CUDA_ROOT "${CUDAToolkit_BIN_DIR}" DIRECTORY)
configure_package_config_file(cmake/shardcastConfig.cmake.in ${PROJECT_BINARY_DIR}/shardcastConfig.cmake
                              INSTALL_DESTINATION ${CMAKE_INSTALL_LIBDIR}/cmake/shardcast)
write_basic_package_version_file(${PROJECT_BINARY_DIR}/shardcastConfigVersion.cmake COMPATIBILITY SameMinorVersion)
install(FILES ${PROJECT_BINARY_DIR}/shardcastConfig.cmake ${PROJECT_BINARY_DIR}/shardcastConfigVersion.cmake
        DESTINATION ${CMAKE_INSTALL_LIBDIR}/cmake/shardcast)
