// Sharded ternary weights on the wire as 2-bit codes (dist.shard parameters at lambda_w = 1): the
// rank holding a chunk of a BitLinear's latent weight quantizes it with the tensor's global absmean
// scale and sends 2 bits per weight instead of 32 (16x fewer bytes), as torchao's FSDP2 BitNet
// training does (torchao/prototype/quantized_training/bitnet.py, precompute_bitnet_scale_for_fsdp).
//
// The scale. BitNet b1.58's absmean gamma = mean |W| over a scale group (the tensor, a row, or a group
// of a row: bitlinear/quantizers.hpp's ScaleGrouping). A rank sums |W| over its chunk per group in
// double, one all-reduce adds every layer's partial sums at once, and gamma = sum / n with n the
// group's element count (padding is not counted: it is outside [0, numel) and adds 0). The codes are
// cuda/quant_codes.hpp's ternary_code(w, gamma, eps) = clamp(round_half_away(w / (gamma + eps)), -1, 1).
//
// The weight every rank rebuilds. A BitLinear quantizes whatever latent weight it holds, so the
// gathered codes come back as a stand-in latent W' = code * gamma / m per group, m = (non-zero codes) / n.
// Its absmean is gamma (up to float rounding: mean |W'| = m * gamma / m), and its codes are the sent
// ones (|W' / gamma| = 1 / m >= 1 where the code is not zero), so the layer's forward computes codes x
// gamma as with the true latent weight. The identity straight-through estimator's weight gradient
// (grad_y^T x_q, bitlinear/estimators.hpp) does not read the latent weight, so the backward is the
// same too.
//
// Packing: code + 1 (0, 1, 2) in 2 bits, four per byte, element 4i + j in bits 2j..2j+1 of byte i.
// A chunk is a multiple of kShardAlign = 16 elements, so of 4.
#pragma once
#include <ATen/ATen.h>

#include <cstdint>

namespace bitqat::training {

// How the scale groups of a weight of `numel` elements lie in its flat (row-major) order: runs of
// `group` consecutive elements (the tensor: group = numel; per channel: the row length; per group of a
// row whose length `group` divides). ok = false where groups are ragged (a row length that the group
// size does not divide): such a weight travels in float32.
struct FlatGroups {
  int64_t group = 0;
  int64_t count = 0;  // numel / group
  bool ok = false;
};
FlatGroups flat_groups(int64_t numel, int64_t row_length, int64_t group, bool per_tensor);

// |W| summed per group over the elements [begin, end) of the flat weight that `chunk` holds
// (chunk[0] is element `begin`; the rest of chunk is padding): double [g.count].
at::Tensor partial_abs_sums(const at::Tensor& chunk, int64_t begin, int64_t end, const FlatGroups& g);

// The scale of each element [begin, end) of the flat weight: gamma[i / g.group], float32 [end - begin].
at::Tensor gamma_of_elements(const at::Tensor& gamma, int64_t begin, int64_t end, const FlatGroups& g);

// The 2-bit codes of `chunk` (elements [begin, end) of the flat weight, then padding, which packs as
// code 0) under the per-group scales gamma (float [g.count]): uint8 [chunk.numel() / 4].
at::Tensor pack_ternary_chunk(const at::Tensor& chunk, int64_t begin, int64_t end, const FlatGroups& g,
                              const at::Tensor& gamma, double eps);

// The stand-in latent weight [numel] (float32) from the gathered packed chunks of all ranks
// (uint8 [world * chunk / 4]) and the scales.
at::Tensor unpack_ternary(const at::Tensor& packed, int64_t numel, const FlatGroups& g, const at::Tensor& gamma);

}  // namespace bitqat::training
