// Sharded ternary weights on the wire as 2-bit codes (dist.shard parameters at lambda_w = 1): the
// rank holding a chunk of a BitLinear's latent weight quantizes it with the tensor's global absmean
// scale and sends 2 bits per weight instead of 32 (16x fewer bytes), as torchao's FSDP2 BitNet
// training does (torchao/prototype/quantized_training/bitnet.py, precompute_bitnet_scale_for_fsdp).
//
// The scale, bit for bit the unsharded one. BitNet b1.58's absmean gamma = mean |W| over a scale
// group (the tensor, a row, or a group of a row: bitlinear/quantizers.hpp's ScaleGrouping), computed
// by bitlinear/absmean.hpp from canonical double sums over runs: the rows for a per-tensor scale,
// the scale groups otherwise. A chunk holds whole rows (training/shard_layout.hpp), so a rank computes
// the canonical sum of each run it holds exactly as the unsharded quantizer does; it writes it at the
// run's index of a zero vector of all runs' sums, and one all-reduce of every layer's vectors (each
// entry has one non-zero contributor, so the sum is exact) gives every rank all runs' sums, from which
// bitlinear/absmean.hpp makes the scales. Padding lies past the last row and is not counted. (A CUDA
// chunk's sums are float sums in double on the device, not the canonical order: there the scale agrees
// with the unsharded one to rounding.)
//
// The codes are cuda/quant_codes.hpp's ternary_code(w, gamma, eps) = clamp(round_half_away(w / (gamma
// + eps)), -1, 1), as the quantizer computes them.
//
// The weight every rank rebuilds. A BitLinear quantizes whatever latent weight it holds, so the
// gathered codes come back as a stand-in latent weight W' whose codes are the sent ones and whose
// absmean, computed by the same canonical sums, is exactly gamma: in a scale group of n elements with
// nnz non-zero codes, the non-zero codes take the magnitude c = gamma * n / nnz rounded toward zero
// to float32 or the next float32 up, c+, the first k of them c+ with k the smallest count that makes
// float32(((nnz - k) c + k c+) / n) = gamma (every partial sum is a multiple of c's float32 spacing
// below 2^53 of it, so exact in any order for nnz < 2^28). When no k lands on gamma (a group of at most
// two non-zero codes), one zero code's element carries a small magnitude z <= gamma / 4 (still code 0)
// that makes up the difference. The layer's forward then computes codes x gamma exactly as with the
// true latent weight, and the identity straight-through estimator's weight gradient (grad_y^T x_q,
// bitlinear/estimators.hpp) does not read the latent weight, so the backward is the same too.
//
// Packing: code + 1 (0, 1, 2) in 2 bits, four per byte, element 4i + j in bits 2j..2j+1 of byte i.
// A chunk is a multiple of kShardAlign = 16 elements, so of 4.
#pragma once
#include <ATen/ATen.h>

#include <cstdint>

namespace bitqat::training {

// How the scale groups of a weight of `numel` elements lie in its flat (row-major) order: runs of
// `group` consecutive elements (the tensor: group = numel; per channel: the row length; per group of a
// row whose length `group` divides), and the runs of `run` elements whose canonical sums make the
// scales (the row for a per-tensor scale, else the group). ok = false where groups are ragged (a row
// length that the group size does not divide): such a weight travels in float32.
struct FlatGroups {
  int64_t group = 0;
  int64_t count = 0;  // numel / group
  int64_t run = 0;
  int64_t runs = 0;   // numel / run
  bool per_tensor = false;
  bool ok = false;
};
FlatGroups flat_groups(int64_t numel, int64_t row_length, int64_t group, bool per_tensor);

// The canonical |W| sums of the runs in elements [begin, end) of the flat weight that `chunk` holds
// (chunk[0] is element `begin`; the rest of chunk is padding), at their run index: double [g.runs],
// zero elsewhere. begin and end lie on run boundaries (end may be the weight's end); throws
// std::invalid_argument otherwise.
at::Tensor run_sums_of_chunk(const at::Tensor& chunk, int64_t begin, int64_t end, const FlatGroups& g);

// The scales from all runs' sums (double [g.runs]): float32 [g.count], bit for bit the quantizer's.
at::Tensor scales_of_runs(const at::Tensor& sums, const FlatGroups& g);

// The scale of each element [begin, end) of the flat weight: gamma[i / g.group], float32 [end - begin].
at::Tensor gamma_of_elements(const at::Tensor& gamma, int64_t begin, int64_t end, const FlatGroups& g);

// The 2-bit codes of `chunk` (elements [begin, end) of the flat weight, then padding, which packs as
// code 0) under the per-group scales gamma (float [g.count]): uint8 [chunk.numel() / 4].
at::Tensor pack_ternary_chunk(const at::Tensor& chunk, int64_t begin, int64_t end, const FlatGroups& g,
                              const at::Tensor& gamma, double eps);

// The stand-in latent weight [numel] (float32) from the gathered packed chunks of all ranks
// (uint8 [world * chunk / 4]) and the scales (float32 [g.count]).
at::Tensor unpack_ternary(const at::Tensor& packed, int64_t numel, const FlatGroups& g, const at::Tensor& gamma);

}  // namespace bitqat::training
