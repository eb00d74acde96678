// The fragment layout of mma.sync.aligned.m16n8k32.row.col.s32.s8.s8.s32 (PTX ISA, section "Matrix
// Fragments for mma.m16n8k32", the .s8 / .u8 rows): which element of A [16 x 32] (row-major),
// B [32 x 8] (column-major) and C / D [16 x 8] each lane's register bytes hold. Written once here.
// The CPU harness computes the instruction from it (cuda/sim/), and the GPU probe
// (tests/cuda/mma_probe.cu, run by launch/gpu_check.sh) compares it with the real instruction.
// Host C++ and nvcc; no LibTorch.
#pragma once
#include <cstdint>

#include "cuda/ternary_format.hpp"

namespace bitqat::cuda::mma {

constexpr int kM = 16, kN = 8, kK = 32;
constexpr int kARegs = 4, kBRegs = 2, kCRegs = 4;  // .b32 registers per lane
constexpr int kAElems = 16, kBElems = 8;           // int8 elements per lane: byte i % 4 of register i / 4

struct Element {
  int row, col;
};

// Element i (0..15) of A held by `lane`: groupID = lane >> 2, threadID_in_group = lane % 4;
// row = groupID for i < 4 or 8 <= i < 12, else groupID + 8; col = tig * 4 + (i & 3), + 16 for i >= 8.
BITQAT_HD Element a_element(int lane, int i) {
  const int group = lane >> 2, tig = lane % 4;
  return {(i < 4 || (i >= 8 && i < 12)) ? group : group + 8, tig * 4 + (i & 3) + (i >= 8 ? 16 : 0)};
}

// Element i (0..7) of B: row (the k index) = tig * 4 + (i & 3), + 16 for i >= 4; col = groupID.
BITQAT_HD Element b_element(int lane, int i) {
  const int group = lane >> 2, tig = lane % 4;
  return {tig * 4 + (i & 3) + (i >= 4 ? 16 : 0), group};
}

// Accumulator i (0..3) of C and D: row = groupID for i < 2, else groupID + 8; col = tig * 2 + (i & 1).
BITQAT_HD Element c_element(int lane, int i) {
  const int group = lane >> 2, tig = lane % 4;
  return {i < 2 ? group : group + 8, tig * 2 + (i & 1)};
}

}  // namespace bitqat::cuda::mma

namespace bitqat::cuda::sim {
// The CPU harness's mma.sync for one lane (cuda/sim/runtime.cpp): a warp collective that waits for
// all 32 lanes, computes D = A B + C from their fragments with the table above (s32 sums that wrap
// on overflow, as without .satfinite) and returns this lane's D in c. Called from the host branch of
// a kernel's mma helper; file and line name the call site in reports.
void mma_m16n8k32_s8(int (&c)[4], const uint32_t (&a)[4], const uint32_t (&b)[2], const char* file, int line);
}  // namespace bitqat::cuda::sim
