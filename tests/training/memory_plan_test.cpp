// The memory plan against hand-computed numbers, an 8B model planned without allocating it, and the
// activation estimate against what a forward pass of a small LM really keeps alive.
#include "training/memory_plan.hpp"

#include <c10/core/CPUAllocator.h>
#include <gtest/gtest.h>

#include <atomic>
#include <chrono>
#include <cstring>
#include <fstream>
#include <map>
#include <string>

#include "core/error.hpp"
#include "models/factory.hpp"
#include "models/head_loss.hpp"
#include "models/recompute.hpp"
#include "training/task.hpp"

namespace {

using bitqat::training::Config;
using bitqat::training::memory_plan;
using bitqat::training::MemoryPlan;

// A tiny LM: vocab 256, dim 32, 2 blocks, 2 heads (head size 16), 1 key/value head, relu2 FFN of 96,
// SubLN, tied embeddings; B = 4 sequences of T = 32 tokens on the CPU.
const char* kTiny = R"(model: {kind: lm, vocab_size: 256, dim: 32, n_layers: 2, n_heads: 2, n_kv_heads: 1, ffn: relu2,
        ffn_dim: 96}
data: {kind: shards, train: none.bin, val: none.bin, vocab_size: 256, seq_len: 32}
train: {batch_size: 4}
device: {type: cpu}
)";

Config tiny(std::vector<std::string> sets = {}) { return Config::load_string(kTiny, "tiny.yaml", sets, false); }

std::map<std::string, int64_t> terms(const MemoryPlan& p) {
  std::map<std::string, int64_t> m;
  for (const auto& t : p.terms) m[t.name] = t.bytes;
  return m;
}

// N by hand: embed 256 x 32 = 8192; a block: attn_norm 32, q 32x32 = 1024, k 16x32 = 512, v 512,
// o 1024 + its SubLN 32, ffn_norm 32, up 96x32 = 3072, down 32x96 = 3072 + its SubLN 96: 9408;
// the final norm 32. N = 8192 + 2 x 9408 + 32 = 27040; outside the blocks 8224.
// S (chunk = round_up(ceil(numel / W), 16), summed): W = 1 and 2 divide every tensor into multiples
// of 16: S = 27040 and 13520. W = 4: a 32-element norm gets 8 -> 16, a 96-element SubLN 24 -> 32, the
// rest divide: a block's chunks 16 + 256 + 128 + 128 + 256 + 16 + 16 + 768 + 768 + 32 = 2384, S = 2048 +
// 2 x 2384 + 16 = 6832, padding 4 x 6832 - 27040 = 288.
// Buckets of dist.bucket_mb: one (W S 4 bytes < the first bucket's 1 MiB), so two wire buffers are
// that one, 4 W S: 108160 (W = 1 and 2), 109312 (W = 4); the sharded modes have them on one rank too.
// Two reduce-scatters in flight hold their wire buffers, their outputs (a W-th of them) and, on the
// CPU's Gloo, copies of the wire buffers: 2 x + x / W for wire buffers x.
// dist.shard parameters buckets a block at a time and the rest: a block's wire buffer 4 W chunk is
// 4 x 9408 = 37632 (W = 1), 4 x 2 x 4704 = 37632 (W = 2), 4 x 4 x 2384 = 38144 (W = 4), the rest's
// 4 x 8224 = 32896, 4 x 2 x 4112 = 32896, 4 x 4 x 2064 = 33024: the two largest are the two blocks. Of a
// block's wire, only its ternary weights' 2-bit codes are not the gathered parameters themselves: q, k,
// v, o, up, down, 9216 elements whose chunks are multiples of 16 at W = 1, 2 and 4, W chunk / 4 bytes
// each, 2304 a block, 4608 for the two in flight.
// Saved activations (CPU path, M = 128 tokens, d = dq = 32, dkv = 16, H = 2, f = 96; the attention
// kernels take T = 32 and head size 16): per block 8 M d = 32768, codes 2 (M d + 8 M) + M f + 8 M =
// 23552, attention 4 M (2 dq + 2 dkv) + 4 M H = 50176, o M dq + 8 M = 5120, FFN 4 M f = 49152:
// 160768; outside 4 M d + 4 M (the final norm's input and r) + 4 M d + 4 V d (the fused head's
// gradients) = 66048; 2 x 160768 + 66048 = 387584. dist.shard parameters recomputes every block:
// 2 x 4 M d (their inputs) + 66048 = 98816.
// The head's chunk of C = min(2^23 / 256, 128) = 128 tokens: 2 x 4 x 128 x 256 = 262144. int8 weight
// codes: 2 x (1024 + 512 + 512 + 1024 + 3072 + 3072) = 18432; none kept with dist.shard parameters,
// whose blocks are all recomputed (one block's 9216 are saved while it is recomputed: 160768 + 9216,
// below the head's chunk). The set-up
// peak: 4 N and what the mode allocates before releasing the model (with parameters also its 4 S
// master shard).
TEST(MemoryPlan, TinyLMByHandForEveryModeAndWorldSize) {
  const int64_t N = 27040, saved = 387584, saved_full = 98816, logits = 262144, codes = 18432;
  const std::map<int, int64_t> S = {{1, 27040}, {2, 13520}, {4, 6832}};
  const std::map<int, int64_t> wire = {{1, 4 * 27040}, {2, 4 * 2 * 13520}, {4, 4 * 4 * 6832}};
  const std::map<int, int64_t> block_wires = {{1, 2 * 37632}, {2, 2 * 37632}, {4, 2 * 38144}};
  const int64_t code_wires = 2 * 2304;
  const auto in_flight = [](int64_t wires, int w) { return 2 * wires + wires / w; };
  // Outside the blocks, the running block and the next block's float32 tensors (its norms: 32 + 32 +
  // 32 + 96), its ternary weights waiting as codes (lambda_w is 1 throughout).
  const int64_t gathered = 4 * (8224 + 9408 + 192);
  const int64_t whole_grads = 4 * (8224 + 9408);   // the rest's, held through the backward, + one block's
  struct Row {
    const char* mode;
    int world;
    int64_t params, grads, optim, saved, comm, codes, setup;
  };
  std::vector<Row> rows;
  for (int w : {1, 2, 4}) {
    const int64_t s = S.at(w), ar = w > 1 ? 4 * N : 0;
    rows.push_back({"none", w, 4 * N, 4 * N, 8 * N, saved, ar, codes, 4 * N + 8 * N + ar});
    rows.push_back({"optimizer", w, 4 * N, 4 * N + 4 * s, 12 * s, saved, ar, codes, 4 * N + 12 * s + 4 * s + ar});
    rows.push_back({"gradients", w, 4 * N, 4 * s + in_flight(wire.at(w), w), 12 * s, saved, 0, codes,
                    4 * N + 12 * s + 4 * s});
    rows.push_back({"parameters", w, 4 * s + gathered, 4 * s + whole_grads + in_flight(block_wires.at(w), w), 8 * s,
                    saved_full, code_wires, 0, 4 * N + 8 * s + 4 * s + 4 * s});
  }
  for (const auto& r : rows) {
    SCOPED_TRACE(std::string(r.mode) + " W=" + std::to_string(r.world));
    const auto p = memory_plan(tiny({std::string("dist.shard=") + r.mode}), r.world);
    EXPECT_EQ(p.trainable, N);
    EXPECT_EQ(p.shard_numel, S.at(r.world));
    EXPECT_EQ(p.padding, r.world == 4 ? 288 : 0);
    EXPECT_EQ(p.buckets, std::string(r.mode) == "parameters" ? 3u : 1u);
    auto t = terms(p);
    EXPECT_EQ(t["parameters"], r.params);
    EXPECT_EQ(t["gradients"], r.grads);
    EXPECT_EQ(t["optimizer state"], r.optim);
    EXPECT_EQ(t["saved activations"], r.saved);
    EXPECT_EQ(t["communication buffers"], r.comm);
    EXPECT_EQ(t["largest transient"], logits);  // above every all-gather and recomputed block here
    EXPECT_EQ(t["quantized weight copies"], r.codes);
    EXPECT_EQ(p.total(), r.params + r.grads + r.optim + r.saved + r.comm + logits + r.codes);
    EXPECT_EQ(p.terms.size(), 7u);
    EXPECT_EQ(p.setup_peak.bytes, r.setup);
    if (std::string(r.mode) == "parameters") {
      ASSERT_EQ(p.host.size(), 1u);
      EXPECT_EQ(p.host[0].bytes, 4 * N);  // rank 0 collects the whole model at a checkpoint
    } else {
      EXPECT_TRUE(p.host.empty());
    }
  }
}

// During a lambda_w ramp a block travels in float32, straight into its parameters: two blocks are
// whole at a time.
TEST(MemoryPlan, ShardedParametersGatherTwoFloatBlocksDuringALambdaRamp) {
  const auto ramp = memory_plan(tiny({"dist.shard=parameters", "train.steps=10", "quant.lambda_w={kind: linear}"}), 2);
  EXPECT_EQ(terms(ramp)["parameters"], 4 * 13520 + 4 * (8224 + 2 * 9408));
  const auto text = bitqat::training::format_memory_plan(ramp);
  EXPECT_NE(text.find("the one running and the next, in float32 while lambda_w < 1"), std::string::npos) << text;
  const auto one = memory_plan(tiny({"dist.shard=parameters", "train.steps=10"}), 2);
  EXPECT_EQ(terms(one)["parameters"], 4 * 13520 + 4 * (8224 + 9408 + 192));
}

TEST(MemoryPlan, TextIsDeterministic) {
  const auto p = memory_plan(tiny({"dist.shard=optimizer"}), 4);
  const auto text = bitqat::training::format_memory_plan(p);
  EXPECT_EQ(text, bitqat::training::format_memory_plan(memory_plan(tiny({"dist.shard=optimizer"}), 4)));
  EXPECT_EQ(text.rfind("plan: dist.shard optimizer, world size 4, N = 27040 trainable elements (0 frozen), S = 6832 "
                       "per rank, padding 288, 1 buckets; CPU path",
                       0),
            0u)
      << text;
  EXPECT_NE(text.find("  optimizer state              0.00 GiB           81984 bytes   12 S"), std::string::npos)
      << text;
}

// train.activation_checkpointing keeps a checkpointed block's input (4 M d = 16384) instead of its
// 160768 bytes, and one block is recomputed at a time (a transient below the logits here). every_n: 2
// over 3 blocks recomputes blocks 0 and 2 (models/recompute.hpp). dist.shard parameters recomputes
// every block whatever the key says.
TEST(MemoryPlan, CheckpointingKeepsBlockInputs) {
  auto saved = [](std::vector<std::string> sets) { return terms(memory_plan(tiny(sets), 1))["saved activations"]; };
  EXPECT_EQ(saved({"train.activation_checkpointing=full"}), 2 * 16384 + 66048);
  EXPECT_EQ(saved({"train.activation_checkpointing={every_n: 2}"}), 16384 + 160768 + 66048);  // block 0 of 0, 1
  EXPECT_EQ(saved({"train.activation_checkpointing={every_n: 1}"}), saved({"train.activation_checkpointing=full"}));
  EXPECT_EQ(saved({"model.n_layers=3", "train.activation_checkpointing={every_n: 2}"}), 2 * 16384 + 160768 + 66048);
  // The int8 weight codes (9216 a block) of the blocks that are not recomputed.
  auto codes = [](std::vector<std::string> sets) {
    return terms(memory_plan(tiny(sets), 1))["quantized weight copies"];
  };
  EXPECT_EQ(codes({}), 2 * 9216);
  EXPECT_EQ(codes({"train.activation_checkpointing={every_n: 2}"}), 9216);
  EXPECT_EQ(codes({"train.activation_checkpointing=full"}), 0);
  const auto p = memory_plan(tiny({"dist.shard=parameters", "train.activation_checkpointing=none"}), 2);
  EXPECT_EQ(terms(p)["saved activations"], 2 * 16384 + 66048);
  EXPECT_EQ(p.checkpointing.every_n, 1);
  EXPECT_TRUE(p.checkpointing_forced);
  const auto text = bitqat::training::format_memory_plan(p);
  EXPECT_NE(text.find("activation checkpointing full (dist.shard parameters recomputes every block)"),
            std::string::npos)
      << text;
  EXPECT_NE(text.find("outside 66048; dist.shard parameters recomputes every block"), std::string::npos) << text;
}

TEST(MemoryPlan, RefusalNamesTotalLimitAndBiggestTerm) {
  const auto cfg = tiny({"device.memory_gb=0.0001"});
  const auto p = memory_plan(cfg, 1);
  const auto limit = bitqat::training::memory_limit(cfg, at::Device(at::kCPU));
  EXPECT_EQ(limit.source, "--set device.memory_gb=0.0001: device.memory_gb = 0.0001");
  try {
    bitqat::training::check_memory_plan(p, limit);
    FAIL() << "no error";
  } catch (const bitqat::core::ConfigError& e) {
    const std::string msg = e.what();
    EXPECT_NE(msg.find("the memory plan needs 0.00 GiB (1100800 bytes) per rank (dist.shard none, world size 1), "
                       "more than the 0.00 GiB of --set device.memory_gb=0.0001: device.memory_gb = 0.0001; the "
                       "biggest term is saved activations"),
              std::string::npos)
        << msg;
    EXPECT_NE(msg.find("try dist.shard optimizer (now none), train.activation_checkpointing full, a lower "
                       "train.batch_size (now 4; train.grad_accum keeps the global batch) or data.seq_len (now 32)"),
              std::string::npos)
        << msg;
  }
  EXPECT_NO_THROW(bitqat::training::check_memory_plan(p, {}));  // no known limit: nothing to compare
}

// The set-up peak is checked too: 32 blocks over 8 ranks, one token. N = 8224 + 32 x 9408 = 309280; a
// block's chunks over 8 ranks 16 + 128 + 64 + 64 + 128 + 16 + 16 + 384 + 384 + 16 = 1216, S = 1024 + 16 +
// 32 x 1216 = 39952; the set-up peak 4 N + 16 S (moments, master, gradient shard) = 1876352 is above
// the 0.0015 GiB (1610612 bytes) limit, the total below it.
TEST(MemoryPlan, RefusalNamesTheSetUpPeak) {
  const auto cfg = tiny({"dist.shard=parameters", "model.n_layers=32", "data.seq_len=1", "train.batch_size=1",
                         "device.memory_gb=0.0015"});
  const auto p = memory_plan(cfg, 8);
  EXPECT_EQ(p.setup_peak.bytes, 4 * 309280 + 16 * 39952);
  const auto limit = bitqat::training::memory_limit(cfg, at::Device(at::kCPU));
  ASSERT_LT(p.total(), limit.bytes);
  try {
    bitqat::training::check_memory_plan(p, limit);
    FAIL() << "no error";
  } catch (const bitqat::core::ConfigError& e) {
    const std::string msg = e.what();
    EXPECT_NE(msg.find("the memory plan's set-up peak needs 0.00 GiB (1876352 bytes) per rank (dist.shard parameters, "
                       "world size 8), more than the 0.00 GiB of --set device.memory_gb=0.0015: device.memory_gb = "
                       "0.0015: 4 N the whole model as every rank builds it"),
              std::string::npos)
        << msg;
  }
  EXPECT_NO_THROW(bitqat::training::check_memory_plan(memory_plan(cfg, 8), {}));
}

int64_t rss_bytes() {
  std::ifstream f("/proc/self/status");
  std::string line;
  while (std::getline(f, line)) {
    if (line.rfind("VmRSS:", 0) == 0) return std::stoll(line.substr(6)) * 1024;
  }
  return -1;
}

// Llama-3-8B's shapes, built on the meta device: N by hand is embed and head 2 x 128256 x 4096 =
// 1050673152, 32 blocks of 2 x 4096 (norms) + 2 x 4096^2 (q, o) + 2 x 1024 x 4096 (k, v) + 3 x
// 14336 x 4096 (gate, up, down) = 218112000, and the final norm 4096: 8030261248 (32 GB of fp32 that
// must not be allocated).
TEST(MemoryPlan, An8BModelIsPlannedWithoutAllocatingIt) {
  const auto cfg = Config::load_file(std::string(BITQAT_SOURCE_DIR) + "/configs/llama3_8b_ternary_x8.yaml", {}, false);
  const auto rss0 = rss_bytes();
  const auto t0 = std::chrono::steady_clock::now();
  const auto p = memory_plan(cfg, 8);
  const double seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  const auto rss1 = rss_bytes();
  EXPECT_EQ(p.trainable, 8030261248);
  EXPECT_LT(seconds, 10.0);
  EXPECT_LT(rss1 - rss0, int64_t{256} << 20) << "RSS grew from " << rss0 << " to " << rss1;
}

// ---- the activation estimate against a measurement --------------------------------------------------

// Counts the bytes of live CPU tensors: a pass-through installed as LibTorch's CPU allocator.
class CountingAllocator final : public c10::Allocator {
 public:
  explicit CountingAllocator(c10::Allocator* base) : base_(base) {}
  c10::DataPtr allocate(size_t n) override {
    auto inner = base_->allocate(n);
    const int64_t now = live_ += static_cast<int64_t>(n);
    int64_t seen = peak_.load();
    while (now > seen && !peak_.compare_exchange_weak(seen, now)) {
    }
    auto* ctx = new Ctx{std::move(inner), static_cast<int64_t>(n), this};
    return {ctx->inner.get(), ctx, &release, ctx->inner.device()};
  }
  c10::DeleterFnPtr raw_deleter() const override { return nullptr; }
  void copy_data(void* dest, const void* src, std::size_t count) const override { std::memcpy(dest, src, count); }
  int64_t live() const { return live_.load(); }
  int64_t peak() const { return peak_.load(); }
  void reset_peak() { peak_ = live_.load(); }

 private:
  struct Ctx {
    c10::DataPtr inner;
    int64_t n;
    CountingAllocator* owner;
  };
  static void release(void* p) {
    auto* ctx = static_cast<Ctx*>(p);
    ctx->owner->live_ -= ctx->n;
    delete ctx;
  }
  c10::Allocator* base_;
  std::atomic<int64_t> live_{0};
  std::atomic<int64_t> peak_{0};
};

CountingAllocator& counting_allocator() {
  // Installed once, never removed (LibTorch keeps the highest priority); it only counts.
  static CountingAllocator* a = [] {
    auto* c = new CountingAllocator(c10::GetDefaultCPUAllocator());
    c10::SetCPUAllocator(c, /*priority=*/100);
    return c;
  }();
  return *a;
}

// Live bytes after a forward pass (the loss, with its graph) minus before: what the graph keeps for the
// backward pass. The plan's saved activations + the weight codes must match it within 1%.
void expect_estimate_matches(const std::vector<std::string>& sets) {
  auto& alloc = counting_allocator();
  const auto cfg =
      Config::load_string(R"(model: {kind: lm, vocab_size: 512, dim: 128, n_layers: 3, n_heads: 4, max_seq_len: 128}
data: {kind: shards, train: none.bin, val: none.bin, vocab_size: 512, seq_len: 64}
train: {batch_size: 8}
device: {type: cpu}
)",
                          "act.yaml", sets, false);
  const auto plan = memory_plan(cfg, 1);
  auto t = terms(plan);
  const int64_t estimate = t["saved activations"] + t["quantized weight copies"];

  torch::manual_seed(1);
  auto task = bitqat::training::make_task(cfg, at::Device(at::kCPU));
  bitqat::models::block_runner(task->module())->checkpointing = cfg.train.activation_checkpointing;
  const auto x = at::randint(0, 512, {cfg.train.batch_size, cfg.data.seq_len}, at::kLong);
  const auto y = at::randint(0, 512, {cfg.train.batch_size, cfg.data.seq_len}, at::kLong);
  const bitqat::data::Batch batch{x, y, {}};
  task->loss(batch).backward();  // the RoPE tables and gradients exist from here on
  const int64_t before = alloc.live();
  auto loss = task->loss(batch);
  const int64_t measured = alloc.live() - before;
  loss.backward();
  const double ratio = static_cast<double>(estimate) / static_cast<double>(measured);
  std::printf("activations: estimate %lld bytes, measured %lld bytes, ratio %.4f\n", static_cast<long long>(estimate),
              static_cast<long long>(measured), ratio);
  EXPECT_NEAR(ratio, 1.0, 0.01) << "estimate " << estimate << ", measured " << measured;
}

TEST(MemoryPlanActivations, EstimateMatchesTheForwardPassRelu2) { expect_estimate_matches({}); }

TEST(MemoryPlanActivations, EstimateMatchesTheForwardPassSwigluGroupedQuery) {
  expect_estimate_matches({"model.ffn=swiglu", "model.n_kv_heads=2"});
}

// Recomputed blocks keep their inputs, and neither their activations nor their weight codes.
TEST(MemoryPlanActivations, EstimateMatchesTheForwardPassCheckpointed) {
  expect_estimate_matches({"train.activation_checkpointing={every_n: 2}"});
  expect_estimate_matches({"train.activation_checkpointing=full"});
}

// The largest transient of an LM step is the fused head + loss's chunk buffers: 2 [C, V] float32
// buffers live at once without a teacher, 4 with one (models/head_loss.hpp; the plan's term,
// checked by hand in TinyLMByHandForEveryModeAndWorldSize). Measured: the peak of live bytes during
// the loss's forward pass, less what was live before and what the node keeps (its two gradients and
// the scalars), within 10% (the rest is [C, 1] vectors and scalars).
TEST(MemoryPlanActivations, HeadChunkBuffersMatchTheMeasuredPeak) {
  auto& alloc = counting_allocator();
  torch::manual_seed(2);
  const int64_t N = 256, d = 16, V = 4096, C = 32;
  const auto h = at::randn({N, d}).requires_grad_(true), w = at::randn({V, d}).requires_grad_(true);
  const auto th = at::randn({N, d}), tw = at::randn({V, d});
  const auto y = at::randint(0, V, {N}, at::kLong);
  for (const bool teacher : {false, true}) {
    const int64_t before = alloc.live();
    alloc.reset_peak();
    auto loss = bitqat::models::head_loss(h, w, y, teacher ? th : at::Tensor(), teacher ? tw : at::Tensor(), 0.5, 2.0, C);
    const int64_t kept = alloc.live() - before;
    const int64_t transient = alloc.peak() - before - kept;
    const int64_t want = 4 * C * V * (teacher ? 4 : 2);
    std::printf("head transient%s: %lld bytes, 4 C V x %d = %lld; kept %lld (gradients 4 N d + 4 V d = %lld)\n",
                teacher ? " with a teacher" : "", static_cast<long long>(transient), teacher ? 4 : 2,
                static_cast<long long>(want), static_cast<long long>(kept), static_cast<long long>(4 * N * d + 4 * V * d));
    EXPECT_NEAR(static_cast<double>(transient) / static_cast<double>(want), 1.0, 0.1);
    EXPECT_NEAR(static_cast<double>(kept) / static_cast<double>(4 * N * d + 4 * V * d), 1.0, 0.01);
    loss.total.backward();
  }
}

}  // namespace
