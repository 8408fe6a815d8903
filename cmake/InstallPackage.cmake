# Installs Shardwire as a C++ package: headers, static libraries, the CLI, a CMake package
# config (find_package(shardwire) -> shardwire::shardwire) and a pkg-config file (shardwire.pc).
#
#   cmake --install build --prefix /opt/shardwire
#   # CMake consumers:   find_package(shardwire REQUIRED) ... target_link_libraries(app shardwire::shardwire)
#   # other builds:      pkg-config --cflags --libs shardwire
#
# Every layer library registers itself through shardwire_install_library() (top-level
# CMakeLists.txt); the umbrella target links all of them. Dependencies are found again by
# shardwireConfig.cmake (cmake/shardwireConfig.cmake.in) under the names the libraries use.
include(CMakePackageConfigHelpers)

get_property(_sw_libraries GLOBAL PROPERTY SHARDWIRE_INSTALLED_LIBRARIES)
add_library(shardwire_all INTERFACE)
target_link_libraries(shardwire_all INTERFACE ${_sw_libraries})
set_target_properties(shardwire_all PROPERTIES EXPORT_NAME shardwire)
add_library(shardwire::shardwire ALIAS shardwire_all)
install(TARGETS shardwire_all EXPORT shardwireTargets)

install(DIRECTORY ${PROJECT_SOURCE_DIR}/include/shardwire DESTINATION ${CMAKE_INSTALL_INCLUDEDIR})
install(EXPORT shardwireTargets NAMESPACE shardwire:: DESTINATION ${CMAKE_INSTALL_LIBDIR}/cmake/shardwire)
configure_package_config_file(${PROJECT_SOURCE_DIR}/cmake/shardwireConfig.cmake.in
                              ${PROJECT_BINARY_DIR}/shardwireConfig.cmake
                              INSTALL_DESTINATION ${CMAKE_INSTALL_LIBDIR}/cmake/shardwire)
write_basic_package_version_file(${PROJECT_BINARY_DIR}/shardwireConfigVersion.cmake
                                 COMPATIBILITY SameMinorVersion)
install(FILES ${PROJECT_BINARY_DIR}/shardwireConfig.cmake ${PROJECT_BINARY_DIR}/shardwireConfigVersion.cmake
        DESTINATION ${CMAKE_INSTALL_LIBDIR}/cmake/shardwire)

# pkg-config: static libraries must be listed before what they use, so the order is the
# layer order from the top down (only layers that exist in this build).
set(_sw_link_order workflows convert control plan layout model transport proto core)
set(SHARDWIRE_PC_LIBS "")
foreach(_layer ${_sw_link_order})
  if(TARGET shardwire_${_layer} AND "shardwire_${_layer}" IN_LIST _sw_libraries)
    string(APPEND SHARDWIRE_PC_LIBS " -lshardwire_${_layer}")
  endif()
endforeach()
set(SHARDWIRE_PC_REQUIRES "ucx libxxhash libzstd fmt spdlog nlohmann_json grpc++ protobuf hiredis cpp-httplib yaml-cpp")
file(RELATIVE_PATH SHARDWIRE_PC_PREFIX_FROM_PCDIR /prefix/${CMAKE_INSTALL_LIBDIR}/pkgconfig /prefix)
configure_file(${PROJECT_SOURCE_DIR}/cmake/shardwire.pc.in ${PROJECT_BINARY_DIR}/shardwire.pc @ONLY)
install(FILES ${PROJECT_BINARY_DIR}/shardwire.pc DESTINATION ${CMAKE_INSTALL_LIBDIR}/pkgconfig)
