// The real mma.sync m16n8k32 (s8 x s8 -> s32) on a GPU: tests/cuda/mma_probe.cu.
#pragma once
#include <cstdint>
#include <string>

namespace bitqat::cuda::testing {

// Whether a CUDA device is usable here.
bool gpu_present();

// One warp runs the instruction on per-lane registers a [32][4], b [32][2], c [32][4] (words, lane-major)
// and writes each lane's d [32][4]. Returns "" or the CUDA error.
std::string run_mma_probe(const uint32_t* a, const uint32_t* b, const int32_t* c, int32_t* d);

}  // namespace bitqat::cuda::testing
