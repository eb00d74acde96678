#include "cuda/reference.hpp"

#include <gtest/gtest.h>

#include <cmath>
#include <random>
#include <vector>

using namespace bitqat::cuda;

TEST(TernaryFormat, InterleavedWordLayoutByHand) {
  // codes for k = 0..15: w = -1 at k = 1, +1 at k = 4, else 0  ->  c = 0 at k = 1, 2 at k = 4, else 1.
  std::vector<int8_t> codes(16, 0);
  codes[1] = -1;
  codes[4] = 1;
  std::vector<uint32_t> packed(words_per_row(16));
  pack_ternary_ref(codes.data(), 1, 16, packed.data());
  ASSERT_EQ(packed.size(), 8u);  // padded to 128 weights
  // k = 4i + b sits at bit 8b + 2i: all ones (0x55555555), then k = 1 (b = 1, i = 0) -> bit 8 cleared,
  // k = 4 (b = 0, i = 1) -> bits 2..3 = 2.
  EXPECT_EQ(packed[0], (0x55555555u & ~(3u << 8) & ~(3u << 2)) | (2u << 2));
  for (size_t i = 1; i < packed.size(); ++i) EXPECT_EQ(packed[i], 0x55555555u);  // padding decodes to 0
  // One shift and mask gives four consecutive codes as bytes.
  EXPECT_EQ((packed[0] >> 0) & 0x03030303u, 0x01010001u);  // c[0..3] = 1, 0, 1, 1 (little-endian bytes)
  EXPECT_EQ((packed[0] >> 2) & 0x03030303u, 0x01010102u);  // c[4..7] = 2, 1, 1, 1
}

TEST(TernaryFormat, PackUnpackRoundTripAndPadding) {
  std::mt19937 rng(1);
  for (int64_t k : {1, 15, 16, 100, 128, 300}) {
    std::vector<int8_t> codes(static_cast<size_t>(3 * k)), back(codes.size());
    for (auto& c : codes) c = static_cast<int8_t>(static_cast<int>(rng() % 3) - 1);
    std::vector<uint32_t> packed(static_cast<size_t>(3 * words_per_row(k)));
    pack_ternary_ref(codes.data(), 3, k, packed.data());
    unpack_ternary_ref(packed.data(), 3, k, back.data());
    EXPECT_EQ(codes, back) << "K = " << k;
    EXPECT_EQ(padded_k(k) % kBlockK, 0);
  }
}

TEST(Reference, ActivationQuantizationByHand) {
  const float x[6] = {1.0f, -2.0f, 0.5f, 0.0f, 0.0f, 0.0f};
  std::vector<int8_t> q(2 * 128);
  float s[2];
  int32_t sums[2];
  quantize_activations_ref(x, 2, 3, 128, 1e-5f, nullptr, 0.0f, q.data(), s, sums);
  EXPECT_EQ(q[0], 64);  // 63.5 rounds away from zero
  EXPECT_EQ(q[1], -127);
  EXPECT_EQ(q[2], 32);  // 31.75
  EXPECT_EQ(q[3], 0);   // padding
  EXPECT_FLOAT_EQ(s[0], 63.5f);
  EXPECT_EQ(sums[0], 64 - 127 + 32);
  EXPECT_EQ(q[128], 0);  // the zero row: codes 0, finite scale
  EXPECT_TRUE(std::isfinite(s[1]));
  // With RMSNorm (weight 1): x / rms; the absmax scaling makes the codes the same as without it.
  std::vector<int8_t> qn(128);
  float sn;
  const float ones[3] = {1, 1, 1};
  quantize_activations_ref(x, 1, 3, 128, 1e-5f, ones, 1e-6f, qn.data(), &sn, nullptr);
  EXPECT_EQ(qn[0], 64);
  EXPECT_EQ(qn[1], -127);
  EXPECT_NEAR(sn, 63.5f * std::sqrt(5.25f / 3.0f), 1e-3);
}

TEST(Reference, TernaryQuantizationMatchesTheBitNetFormula) {
  const float w[8] = {0.5f, -1.5f, 0.1f, 2.0f, 0.0f, 0.3f, -0.3f, 0.6f};
  int8_t codes[8];
  float scales[2];
  quantize_ternary_ref(w, 2, 4, ScaleKind::kPerTensor, 0, 1e-5f, codes, scales);
  EXPECT_FLOAT_EQ(scales[0], 0.6625f);
  const int8_t want_t[8] = {1, -1, 0, 1, 0, 0, 0, 1};
  for (int i = 0; i < 8; ++i) EXPECT_EQ(codes[i], want_t[i]) << i;
  quantize_ternary_ref(w, 2, 4, ScaleKind::kPerChannel, 0, 1e-5f, codes, scales);
  const int8_t want_c[8] = {0, -1, 0, 1, 0, 1, -1, 1};
  for (int i = 0; i < 8; ++i) EXPECT_EQ(codes[i], want_c[i]) << i;
  EXPECT_FLOAT_EQ(scales[1], 0.3f);
}

TEST(Reference, OffsetFormulationEqualsTheDirectProductAndTheEpilogueScales) {
  std::mt19937 rng(2);
  const int64_t m = 3, n = 5, k = 200, kp = padded_k(k);
  std::vector<float> x(static_cast<size_t>(m * k));
  std::normal_distribution<float> nd;
  for (auto& v : x) v = nd(rng);
  std::vector<int8_t> q(static_cast<size_t>(m * kp)), codes(static_cast<size_t>(n * k));
  std::vector<float> xs(m);
  std::vector<int32_t> sums(m);
  quantize_activations_ref(x.data(), m, k, kp, 1e-5f, nullptr, 0, q.data(), xs.data(), sums.data());
  for (auto& c : codes) c = static_cast<int8_t>(static_cast<int>(rng() % 3) - 1);
  std::vector<uint32_t> packed(static_cast<size_t>(n * words_per_row(k)));
  pack_ternary_ref(codes.data(), n, k, packed.data());
  std::vector<int32_t> direct(m * n), offset(m * n);
  int_matmul_ref(q.data(), kp, packed.data(), m, n, k, 1, k, direct.data());
  int_matmul_offset_ref(q.data(), kp, packed.data(), sums.data(), m, n, k, offset.data());
  EXPECT_EQ(direct, offset);
  int32_t by_hand = 0;
  for (int64_t j = 0; j < k; ++j) by_hand += q[static_cast<size_t>(kp + j)] * codes[static_cast<size_t>(2 * k + j)];
  EXPECT_EQ(direct[1 * n + 2], by_hand);
  // Per group (G = 64): the group partial sums add up to the whole.
  std::vector<int32_t> grouped(static_cast<size_t>(m * n * 4));
  int_matmul_ref(q.data(), kp, packed.data(), m, n, k, 4, 64, grouped.data());
  EXPECT_EQ(grouped[(1 * n + 2) * 4] + grouped[(1 * n + 2) * 4 + 1] + grouped[(1 * n + 2) * 4 + 2] +
                grouped[(1 * n + 2) * 4 + 3],
            by_hand);
  const std::vector<float> ws = {0.5f, 1.0f, 2.0f, 4.0f, 8.0f};
  const std::vector<float> bias = {1, 2, 3, 4, 5};
  std::vector<float> y(m * n);
  epilogue_ref(direct.data(), m, n, 1, ws.data(), 1, xs.data(), bias.data(), y.data());
  EXPECT_FLOAT_EQ(y[1 * n + 2], static_cast<float>(by_hand) * 2.0f / xs[1] + 3.0f);
}

TEST(Reference, WeightScalesAndCodesByHand) {
  // w [2, 3] in groups of 2 columns: {0, 1} and {2}.
  const float w[6] = {0.3f, -0.6f, 0.0f, 1.0f, -1.0f, 2.0f};
  float gamma[4], mean[4];
  weight_scales_ref(w, 2, 3, 2, false, gamma, mean);
  EXPECT_EQ(gamma[0], static_cast<float>((double{0.3f} + double{0.6f}) / 2));
  EXPECT_EQ(gamma[1], 0.0f);
  EXPECT_EQ(gamma[2], 1.0f);
  EXPECT_EQ(gamma[3], 2.0f);
  EXPECT_EQ(mean[0], static_cast<float>((double{0.3f} - double{0.6f}) / 2));
  EXPECT_EQ(mean[2], 0.0f);
  float t_gamma, t_mean;
  weight_scales_ref(w, 2, 3, 3, true, &t_gamma, &t_mean);
  EXPECT_EQ(t_gamma, static_cast<float>((double{0.3f} + double{0.6f} + 4.0) / 6));
  EXPECT_EQ(t_mean, static_cast<float>((double{0.3f} - double{0.6f} + 2.0) / 6));
  int8_t codes[6];
  weight_codes_ref(w, 2, 3, 2, 2, gamma, nullptr, 1e-5f, codes);
  // 0.3 / 0.45 -> 1, -0.6 / 0.45 -> -1, 0 / (0 + eps) -> 0; 1 / 1, -1 / 1, 2 / 2.
  EXPECT_EQ(std::vector<int8_t>(codes, codes + 6), (std::vector<int8_t>{1, -1, 0, 1, -1, 1}));
  weight_codes_ref(w, 2, 3, 2, 2, gamma, mean, 1e-5f, codes);
  // sign(w - mean), +1 at 0: 0.3 + 0.15, -0.6 + 0.15, 0 - 0; 1 - 0, -1 - 0, 2 - 2.
  EXPECT_EQ(std::vector<int8_t>(codes, codes + 6), (std::vector<int8_t>{1, -1, 1, 1, -1, 1}));
}

TEST(Reference, FakeQuantRampAndItsGradientByHand) {
  // amax 2, 8 bits: s = 63.5; codes 64 (1 * 63.5, a tie), -127, 32 (31.75); row 2 holds a NaN.
  const float x[6] = {1.0f, -2.0f, 0.5f, 1.0f, NAN, 0.0f};
  float out[6], s[2];
  act_fake_quant_ref(x, 2, 3, 1e-5f, 127, 1.0f, out, s);
  EXPECT_EQ(s[0], 63.5f);
  EXPECT_EQ(out[0], 64.0f / 63.5f);
  EXPECT_EQ(out[1], -2.0f);
  EXPECT_EQ(out[2], 32.0f / 63.5f);
  EXPECT_TRUE(std::isnan(s[1]) && std::isnan(out[3]) && std::isnan(out[5]));
  act_fake_quant_ref(x, 2, 3, 1e-5f, 127, 0.25f, out, s);
  EXPECT_EQ(out[0], 1.0f + 0.25f * (64.0f / 63.5f - 1.0f));
  act_fake_quant_ref(x, 2, 3, 1e-5f, 127, 0.0f, out, s);
  EXPECT_EQ(out[3], 1.0f);  // lambda 0 passes even a non-finite row through
  // |x| s / 127 = 0.5, 1, 0.25 against clip 0.5: inside, outside, inside.
  const float g[3] = {1.0f, 1.0f, 1.0f}, scale[1] = {63.5f};
  float dx[3];
  act_ste_backward_ref(g, x, scale, 1, 3, 127, 0.5f, 1.0f, dx);
  EXPECT_EQ(std::vector<float>(dx, dx + 3), (std::vector<float>{1.0f, 0.0f, 1.0f}));
  act_ste_backward_ref(g, x, scale, 1, 3, 127, 0.5f, 0.5f, dx);
  EXPECT_EQ(std::vector<float>(dx, dx + 3), (std::vector<float>{1.0f, 0.5f, 1.0f}));
  // Ternary weights: gamma 0.5, codes round(w / 0.5): 0.3 -> 1 (0.6), -0.6 -> -1 (-1.2), 0.1 -> 0.
  const float w[3] = {0.3f, -0.6f, 0.1f}, gamma[1] = {0.5f};
  float wq[3];
  ternary_fake_quant_ref(w, 1, 3, 3, 0, gamma, 0.0f, 1.0f, wq);
  EXPECT_EQ(std::vector<float>(wq, wq + 3), (std::vector<float>{0.5f, -0.5f, 0.0f}));
}

TEST(Reference, PerTensorActivationCodesByHand) {
  // 4-bit codes: amax 0.4, s = 7 / 0.4 = 17.5; 0.1 -> 1.75 -> 2, -0.4 -> -7.
  const float x[2] = {0.1f, -0.4f};
  int8_t q[2];
  float s;
  quantize_tensor_ref(x, 2, 1e-5f, 7, q, &s);
  EXPECT_EQ(s, 7.0f / 0.4f);
  EXPECT_EQ(q[0], 2);
  EXPECT_EQ(q[1], -7);
}
