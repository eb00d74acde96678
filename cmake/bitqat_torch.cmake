# LibTorch as bitqat's code sees it, defined once for the build tree (CMakeLists.txt) and for an
# installed package (bitqatConfig.cmake, against the consumer's LibTorch), so that a program built
# against installed bitqat compiles its translation units the way bitqat's own were compiled.
# Needs Torch, fmt and OpenMP (CXX) found.

# bitqat_torch_interface(target shim_dir): gives the INTERFACE target `target` LibTorch's libraries,
# headers (SYSTEM, so that they never trip -Werror) and flags, and OpenMP; shim_dir is a directory
# this function owns.
function(bitqat_torch_interface target shim_dir)
  # The torch wheel ships fmt 12 headers in its include root, while Debian's spdlog is built against
  # fmt 9. A shim directory that holds only `fmt -> /usr/include/fmt`, searched before Torch's
  # headers, keeps every translation unit on the one fmt we link (libfmt.so.9).
  file(MAKE_DIRECTORY ${shim_dir})
  get_target_property(_fmt_inc fmt::fmt INTERFACE_INCLUDE_DIRECTORIES)
  if(NOT _fmt_inc)
    set(_fmt_inc /usr/include)
  endif()
  list(GET _fmt_inc 0 _fmt_inc)
  file(CREATE_LINK ${_fmt_inc}/fmt ${shim_dir}/fmt SYMBOLIC)

  # libtorch.so and libtorch_cpu.so export their own std::filesystem symbols, some of which jump to
  # null (remove_all segfaults). Naming libstdc++ first puts it ahead of them in DT_NEEDED, so the
  # dynamic linker binds every std:: symbol to the real libstdc++.
  target_link_libraries(${target} INTERFACE stdc++ ${TORCH_LIBRARIES} fmt::fmt)
  target_include_directories(${target} SYSTEM INTERFACE ${shim_dir} ${TORCH_INCLUDE_DIRS})
  target_compile_options(${target} INTERFACE $<$<COMPILE_LANGUAGE:CXX>:${TORCH_CXX_FLAGS}>)
  # LibTorch's CPU build parallelizes with OpenMP (ATen/Config.h: AT_PARALLEL_OPENMP), and
  # at::parallel_for is a header template whose `#pragma omp parallel` is compiled into our own
  # translation units: without -fopenmp the pragma is ignored and every at::parallel_for in bitqat
  # (the quantizer, RMSNorm, RoPE and activation kernels) runs on one thread whatever
  # at::set_num_threads says. The OpenMP runtime is the one the torch wheel ships (torch/lib/
  # libgomp.so.1, the same soname as the system's, found first through LibTorch's run path), so
  # bitqat's and LibTorch's parallel regions share one thread pool and one thread count.
  target_link_libraries(${target} INTERFACE OpenMP::OpenMP_CXX)
endfunction()
