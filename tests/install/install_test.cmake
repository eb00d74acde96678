# Installs the build into a fresh prefix, then configures, builds and runs consumer/ against it as an
# outside project would (find_package(bitqat)), and checks that the installed binary and the
# consumer start without a GPU driver. Run by ctest (tests/install/CMakeLists.txt):
#   cmake -DBUILD_DIR=... -DWORK_DIR=... -DCONSUMER_DIR=... -DPREFIX_PATH=... -DGENERATOR=...
#         [-DCXX_COMPILER=...] [-DCUDA_COMPILER=...] [-DLAUNCHER=...] -P install_test.cmake
cmake_minimum_required(VERSION 3.25)

foreach(var BUILD_DIR WORK_DIR CONSUMER_DIR PREFIX_PATH GENERATOR)
  if(NOT DEFINED ${var})
    message(FATAL_ERROR "install_test.cmake: -D${var}=... is required")
  endif()
endforeach()

# run(step COMMAND ...): runs a command, stops the test with its output when it fails. PARSE_ARGV
# keeps an argument that holds a list (CMAKE_PREFIX_PATH) one argument.
function(run step)
  cmake_parse_arguments(PARSE_ARGV 1 R "" "" "COMMAND")
  string(TIMESTAMP t0 "%s")
  execute_process(COMMAND ${R_COMMAND} RESULT_VARIABLE rc OUTPUT_VARIABLE out ERROR_VARIABLE err)
  string(TIMESTAMP t1 "%s")
  math(EXPR dt "${t1} - ${t0}")
  if(NOT rc EQUAL 0)
    message(FATAL_ERROR "install test: ${step} failed (${rc}) after ${dt} s\n${out}\n${err}")
  endif()
  message(STATUS "install test: ${step}: ${dt} s")
  set(run_output "${out}${err}" PARENT_SCOPE)
endfunction()

set(prefix ${WORK_DIR}/prefix)
set(consumer_build ${WORK_DIR}/consumer)
file(REMOVE_RECURSE ${WORK_DIR})
file(MAKE_DIRECTORY ${WORK_DIR})

run("cmake --install" COMMAND ${CMAKE_COMMAND} --install ${BUILD_DIR} --prefix ${prefix})
foreach(file bin/bitqat include/bitqat/bitlinear/bit_linear.hpp include/bitqat/core/error.hpp
             include/bitqat/bitlinear/ops/route.hpp lib/cmake/bitqat/bitqatConfig.cmake
             lib/cmake/bitqat/bitqatConfigVersion.cmake lib/cmake/bitqat/bitqatTargets.cmake)
  if(NOT EXISTS ${prefix}/${file})
    message(FATAL_ERROR "install test: ${file} was not installed")
  endif()
endforeach()
foreach(dir include/bitqat/cuda/sim include/bitqat/training/gloo_decls)
  if(EXISTS ${prefix}/${dir})
    message(FATAL_ERROR "install test: ${dir} is private and was installed")
  endif()
endforeach()

# The installed binary finds LibTorch by its run path and starts without a GPU driver.
run("installed bitqat version" COMMAND ${prefix}/bin/bitqat version)

set(configure_args -S ${CONSUMER_DIR} -B ${consumer_build} -G ${GENERATOR} -DCMAKE_BUILD_TYPE=Release
    "-DCMAKE_PREFIX_PATH=${prefix}\;${PREFIX_PATH}")
if(CXX_COMPILER)
  list(APPEND configure_args -DCMAKE_CXX_COMPILER=${CXX_COMPILER})
endif()
if(CUDA_COMPILER)
  list(APPEND configure_args -DCMAKE_CUDA_COMPILER=${CUDA_COMPILER})
endif()
if(LAUNCHER)
  list(APPEND configure_args -DCMAKE_CXX_COMPILER_LAUNCHER=${LAUNCHER})
endif()
run("configure the consumer" COMMAND ${CMAKE_COMMAND} ${configure_args})
run("build the consumer" COMMAND ${CMAKE_COMMAND} --build ${consumer_build})
run("run the consumer" COMMAND ${consumer_build}/bitqat_consumer ${WORK_DIR}/run)
message(STATUS "${run_output}")
if(NOT run_output MATCHES "consumer: ok")
  message(FATAL_ERROR "install test: the consumer did not report success")
endif()

# Neither program may record the CUDA driver library (libcuda.so): they must start without a driver.
find_program(READELF readelf)
if(READELF)
  foreach(program ${prefix}/bin/bitqat ${consumer_build}/bitqat_consumer)
    execute_process(COMMAND ${READELF} -d ${program} OUTPUT_VARIABLE dynamic RESULT_VARIABLE rc)
    if(NOT rc EQUAL 0 OR NOT dynamic MATCHES "NEEDED")
      message(FATAL_ERROR "install test: readelf -d ${program} failed")
    endif()
    if(dynamic MATCHES "libcuda\\.so")
      message(FATAL_ERROR "install test: ${program} needs the CUDA driver library libcuda.so")
    endif()
  endforeach()
endif()
file(REMOVE_RECURSE ${WORK_DIR}/run)
