#include "cuda/launchers.hpp"

namespace bitqat::cuda {
BITQAT_CUDA_LAUNCHERS_BEGIN
namespace {

#if defined(BITQAT_CUDA_EMULATED)
constexpr const char* kBuild = "emulated";
#else
constexpr const char* kBuild = "device";
#endif

constexpr Launchers kLaunchers = {kBuild,
                                  &rms_norm_rows,
                                  &quantize_rows,
                                  &quantize_tensor,
                                  &weight_scales,
                                  &weight_codes,
                                  &pack_codes,
                                  &act_fake_quant,
                                  &act_ste_backward,
                                  &ternary_fake_quant,
                                  &quantize_activations,
                                  &quantize_pack_ternary,
                                  &w158a8_matmul,
                                  &w158a8_matmul_int32,
                                  &w158a8_matmul_plan,
                                  &w158a8_matmul_int32_plan,
                                  &w158a8_linear_m1,
                                  &expand_packed,
                                  &current_device_name};

}  // namespace

const Launchers& launchers() { return kLaunchers; }

BITQAT_CUDA_LAUNCHERS_END
}  // namespace bitqat::cuda
