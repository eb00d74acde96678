// The W1.58A8 launchers (cuda/w158a8.hpp) refuse bad arguments before any device work, so these run
// on any machine; the kernels themselves are tested against the references in
// tests/bitlinear/ops/w158a8_ops_test.cpp when a GPU is present.
#include "cuda/w158a8.hpp"

#include <gtest/gtest.h>

#include <stdexcept>
#include <string>

#include "cuda/check.hpp"

using namespace bitqat::cuda;

namespace {

template <class F>
std::string error_of(F&& f) {
  try {
    f();
  } catch (const std::invalid_argument& e) {
    return e.what();
  }
  return "no error";
}

}  // namespace

TEST(W158A8Launcher, RejectsBadArgumentsBeforeLaunching) {
  // Host buffers stand in for device pointers: nothing may be launched or dereferenced.
  int8_t q[256] = {};
  float xs[1] = {1.0f}, ws[4] = {1.0f, 1.0f, 1.0f, 1.0f}, y[2] = {};
  uint32_t packed[32] = {};
  auto mm = [&](int64_t m, ScaleKind kind, int64_t group, int64_t n, int64_t k, DType dt = DType::kF32,
                const float* wsp = nullptr) {
    return error_of(
        [&] { w158a8_matmul(q, xs, m, packed, wsp ? wsp : ws, kind, group, n, k, nullptr, y, dt, nullptr); });
  };
  EXPECT_NE(mm(1, ScaleKind::kPerGroup, 0, 2, 130).find("group size must be a positive multiple of 64, got 0"),
            std::string::npos);
  EXPECT_NE(mm(1, ScaleKind::kPerGroup, 96, 2, 130).find("got 96"), std::string::npos);
  EXPECT_NE(mm(1, static_cast<ScaleKind>(5), 64, 2, 130).find("unknown scale kind 5"), std::string::npos);
  EXPECT_NE(mm(1, ScaleKind::kPerTensor, 0, 2, 130, static_cast<DType>(9)).find("output dtype"), std::string::npos);
  EXPECT_NE(mm(0, ScaleKind::kPerTensor, 0, 2, 130).find("M, N and K must be >= 1, got 0, 2, 130"),
            std::string::npos);
  EXPECT_NE(mm(1, ScaleKind::kPerTensor, 0, 2, 0).find("must be >= 1"), std::string::npos);
  EXPECT_NE(mm(int64_t{65536} * 64 + 1, ScaleKind::kPerTensor, 0, 2, 130).find("exceeds the GEMM grid"),
            std::string::npos);
  EXPECT_NE(error_of([&] {
              w158a8_matmul(q, xs, 1, packed, nullptr, ScaleKind::kPerTensor, 0, 2, 130, nullptr, y, DType::kF32,
                            nullptr);
            }).find("null operand"),
            std::string::npos);
  EXPECT_NE(error_of([&] {
              w158a8_matmul_int32(q, 1, packed, 2, 130, nullptr, nullptr);
            }).find("null operand"),
            std::string::npos);
}

// A failed launch names its kernel (BITQAT_CUDA_CHECK_LAUNCH), with the file and line.
TEST(W158A8Launcher, CudaErrorsNameWhatFailed) {
  try {
    throw_cuda_error(cudaErrorInvalidConfiguration, "launch of gemm_kernel", "cuda/w158a8.cu", 7);
  } catch (const std::runtime_error& e) {
    const std::string msg = e.what();
    EXPECT_NE(msg.find("cuda/w158a8.cu:7: launch of gemm_kernel: cudaErrorInvalidConfiguration"), std::string::npos)
        << msg;
  }
}
