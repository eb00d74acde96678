#include "training/memory_plan.hpp"

#include <ATen/cuda/CUDAContext.h>
#include <fmt/format.h>
#include <torch/cuda.h>

#include <unistd.h>

#include <algorithm>
#include <filesystem>
#include <map>
#include <optional>
#include <stdexcept>

#include "bitlinear/bit_linear.hpp"
#include "bitlinear/quantizers.hpp"
#include "core/error.hpp"
#include "interop/init_source.hpp"
#include "models/attention.hpp"
#include "models/factory.hpp"
#include "models/head_loss.hpp"
#include "schedules/schedule.hpp"
#include "training/shard_layout.hpp"
#include "training/ternary_gather.hpp"

namespace bitqat::training {
namespace {

constexpr double kGiB = 1024.0 * 1024.0 * 1024.0;

std::string gib(int64_t bytes) { return fmt::format("{:.2f}", static_cast<double>(bytes) / kGiB); }

// ---- saved activations of BitLM ----------------------------------------------------------------------

struct LMActivations {
  int64_t block = 0;    // what one block saves for its backward pass
  int64_t input = 0;    // a block's input (what a checkpointed block keeps)
  int64_t outside = 0;  // the final norm's input and the fused head's gradients (the logits are a transient)
  std::string formula;
};

// What a BitLM block saves between its forward and backward pass at lambda 1, for B x T tokens (M = B T),
// width d, query width dq = n_heads * head_dim, key/value width dkv, FFN width f, H heads; "r" and
// "scales" are a float per token, codes one byte per element, e the bytes of a float activation.
//
// CPU (float32, e = 4; the fused nodes of bitlinear/quantized_linear.cpp, models/attention.cpp):
//   block input x (saved by the attn_norm + q/k/v node)            4 M d
//   its r, int8 codes and scales (one quantization for q, k, v)     M d + 8 M
//   attention q, k, v (after RoPE), output o, log-sum-exp           4 M (dq + 2 dkv + dq) + 4 M H
//     (ATen's attention when the kernels do not take T and the head size: k and v repeated to H heads,
//      and the o projection's input a copy of o: 4 M (4 dq) + 4 M H + 4 M dq)
//   o projection (SubLN + codes; its input is o itself)             M dq + 8 M
//   h = x + attn (saved by the ffn_norm + up (+ gate) node)         4 M d
//   its codes                                                       M d + 8 M
//   relu2: u (saved by the fused relu^2 + SubLN + down node)        4 M f
//   gated: gate output, act(gate), up output, their product         4 M f x 4 (the product only with SubLN)
//   down's codes                                                    M f + 8 M
// GPU (the W1.58A8 kernels, bitlinear/ops/w158a8_linear.cpp; bf16 autocast: e = 2; every linear
// quantizes its own input and saves its codes; the residual stream stays float32):
//   block input x and h (the norms' inputs), their r                4 M d x 2 + 4 M x 2
//   q, k, v codes (three quantizations), up (and gate) codes        3 (M d + 4 M) + (1 or 2) (M d + 4 M)
//   attention q, k, v (k and v repeated to H heads when grouped), o e M (dq + 2 dkv' + dq) + 4 M H
//   o projection: SubLN input (a copy of o), r, codes               e M dq + 4 M + M dq + 4 M
//   relu2: u and relu^2(u) (relu_squared, down's SubLN)             2 e M f
//   gated: gate output, act(gate), up output, product               4 e M f (the product only with SubLN)
//   down: r, codes                                                  4 M + M f + 4 M
// Outside the blocks: the final norm's input (the last block's output) and r, 4 M d + 4 M, and what
// the fused head + loss (models/head_loss.hpp) holds from the forward to the backward pass: the
// gradients of its input, e M d, and of the head's weight, 4 V d (the head's input itself is not kept).
LMActivations lm_activations(const models::LMConfig& c, int64_t B, int64_t T, bool cuda, int e) {
  const int64_t M = B * T, d = c.dim, H = c.n_heads, dq = c.n_heads * c.head_dim(),
                dkv = c.n_kv_heads * c.head_dim(), f = c.ffn_dim;
  LMActivations a;
  a.input = 4 * M * d;
  int64_t attn = 0, o_proj = 0, ffn_float = 0, codes = 0;
  if (!cuda) {
    const bool kernels = models::causal_attention_cpu_kernels_for(T, c.head_dim());
    attn = kernels ? 4 * M * (2 * dq + 2 * dkv) + 4 * M * H : 4 * M * 4 * dq + 4 * M * H;
    o_proj = (!kernels && c.sub_norm ? 4 * M * dq : 0) + M * dq + 8 * M;
    codes = (M * d + 8 * M) * 2 + M * f + 8 * M;
    ffn_float = c.gated() ? 4 * M * f * (c.sub_norm ? 4 : 3) : 4 * M * f;
    a.block = 2 * 4 * M * d + codes + attn + o_proj + ffn_float;
    a.outside = 4 * M * d + 4 * M + 4 * M * d + 4 * c.vocab_size * d;
    a.formula = fmt::format(
        "CPU path, M = {} tokens: per block 8Md + codes {} + attention {} + o {} + FFN {} = {} bytes", M, codes,
        attn, o_proj, ffn_float, a.block);
  } else {
    const int64_t dkv_saved = dkv < dq ? dq : dkv;
    attn = e * M * (2 * dq + 2 * dkv_saved) + 4 * M * H;
    o_proj = (c.sub_norm ? e * M * dq + 4 * M : 0) + M * dq + 4 * M;
    codes = 3 * (M * d + 4 * M) + (c.gated() ? 2 : 1) * (M * d + 4 * M) + 4 * M + M * f + 4 * M;
    ffn_float = c.gated() ? e * M * f * (c.sub_norm ? 4 : 3) : e * M * f * (c.sub_norm ? 2 : 1);
    a.block = 2 * 4 * M * d + 2 * 4 * M + codes + attn + o_proj + ffn_float;
    a.outside = 4 * M * d + 4 * M + e * M * d + 4 * c.vocab_size * d;
    a.formula = fmt::format(
        "GPU path, M = {} tokens: per block 8Md + 8M + codes {} + attention {} + o {} + FFN {} = {} bytes", M, codes,
        attn, o_proj, ffn_float, a.block);
  }
  return a;
}

// Blocks that keep only their input under `ck`, of n_layers: the block runner's own rule.
int64_t checkpointed_blocks(const models::Checkpointing& ck, int64_t n_layers) {
  int64_t c = 0;
  for (int64_t i = 0; i < n_layers; ++i) c += ck.recomputes(static_cast<size_t>(i)) ? 1 : 0;
  return c;
}

// ---- the model's tensors -----------------------------------------------------------------------------

// The spec half of bitlinear/ops/w158a8_linear.cpp's cuda_fast_path_applicable: layers the GPU
// training kernel takes at lambda 1.
bool gpu_kernel_layer(const bitlinear::QuantSpec& q) {
  using namespace bitlinear;
  const bool gran = q.weight.granularity == Granularity::kPerTensor ||
                    q.weight.granularity == Granularity::kPerChannel || q.weight.granularity == Granularity::kPerGroup;
  return q.weight.type == WeightQuant::kTernary && q.weight.estimator == Estimator::kIdentity && gran &&
         q.act.type == ActQuant::kPerToken && q.act.bits == 8 && q.act.estimator == Estimator::kIdentity;
}

struct WeightCopies {
  int64_t bytes = 0;
  int64_t recomputed = 0;  // CPU: the codes of the largest recomputed block, saved while it is recomputed
  std::string formula;
};

// Per quantized weight of n elements: on the GPU kernels a bf16 dequantized copy for the backward and
// the 2-bit packed weight, 2 n + n / 4 bytes, kept between steps; under bf16 autocast every other
// weight a linear reads is cast once per forward (2 n); on the CPU the int8 codes the fused node saves
// for the backward (n), which a block that `ck` recomputes saves only while it is recomputed, one block
// at a time (its forward runs without a graph).
WeightCopies weight_copies(torch::nn::Module& model, const models::ModelConfig& mc, bool cuda, bool autocast,
                           const models::Checkpointing& ck) {
  int64_t kernel = 0, other_q = 0, full = 0;
  std::map<int64_t, int64_t> recomputed;  // CPU: a recomputed block's quantized weights
  for (const auto& item : model.named_modules(/*name_prefix=*/"", /*include_self=*/false)) {
    const auto* l = item.value()->as<bitlinear::BitLinearImpl>();
    if (!l || !l->weight.defined()) continue;
    const int64_t n = l->weight.numel();
    const int64_t block = block_of(item.key() + ".weight");
    if (cuda && gpu_kernel_layer(l->options.quant)) {
      kernel += n;
    } else if (l->options.quant.weight.type != bitlinear::WeightQuant::kNone) {
      if (!cuda && block >= 0 && ck.recomputes(static_cast<size_t>(block))) {
        recomputed[block] += n;
      } else {
        other_q += n;
      }
    } else {
      full += n;
    }
  }
  WeightCopies w;
  if (cuda) {
    int64_t head = 0;
    if (autocast && mc.kind == models::ModelKind::kLM) head = mc.lm.dim * mc.lm.vocab_size;
    // Without autocast a quantized layer the kernel does not take saves its float32 fake-quantized weight.
    const int64_t cast = autocast ? other_q + full + head : other_q;
    const int64_t cast_bytes = autocast ? 2 : 4;
    w.bytes = 2 * kernel + (kernel + 3) / 4 + cast_bytes * cast;
    w.formula = fmt::format("GPU kernels 2.25 x {} + {} copies {} x {}", kernel, autocast ? "bf16" : "fake-quant",
                            cast_bytes, cast);
  } else {
    w.bytes = kernel + other_q;
    for (const auto& [block, n] : recomputed) w.recomputed = std::max(w.recomputed, n);
    w.formula = fmt::format("int8 codes 1 x {}", other_q);
    if (w.recomputed > 0) {
      w.formula += fmt::format(" (a recomputed block's, 1 x {}, only while it is recomputed: largest transient)",
                               w.recomputed);
    }
  }
  return w;
}

int64_t numel_of(const std::vector<std::pair<std::string, at::Tensor>>& v) {
  int64_t n = 0;
  for (const auto& [name, t] : v) n += t.numel();
  return n;
}

// The distillation teacher's parameters: its source's model when the source says (a Hugging Face
// config.json, a GGUF's header, a run's config), else the student's shape, all in full precision.
int64_t teacher_params(const Config& cfg, const models::LMConfig& student, std::string* origin) {
  const std::string path = cfg.distill.teacher.empty() ? cfg.init_from : cfg.distill.teacher;
  auto tc = student;
  *origin = "the student's shape";
  if (std::filesystem::exists(path)) {
    const auto src = interop::read_init_source(path, cfg.distill.node.where("teacher"));
    if (src.lm) {
      tc = *src.lm;
      *origin = path;
    }
  }
  models::ModelConfig m;
  m.kind = models::ModelKind::kLM;
  m.lm = tc;
  const auto h = models::make_meta_model(m, bitlinear::QuantSpec::full_precision(), {}, {}, tc.vocab_size);
  int64_t n = 0;
  for (const auto& p : h.module->parameters()) n += p.numel();
  return n;
}

int64_t wire_bytes(const ShardLayout& l, const ShardBucket& b) { return 4 * static_cast<int64_t>(l.world) * b.chunk; }

}  // namespace

int64_t MemoryPlan::total() const {
  int64_t t = 0;
  for (const auto& term : terms) t += term.bytes;
  return t;
}

const MemoryTerm& MemoryPlan::biggest() const {
  return *std::max_element(terms.begin(), terms.end(),
                           [](const MemoryTerm& a, const MemoryTerm& b) { return a.bytes < b.bytes; });
}

at::Device plan_device(const Config& cfg) {
  const bool gpu = cfg.device.type == DeviceType::kCuda ||
                   (cfg.device.type == DeviceType::kAuto && torch::cuda::is_available());
  return gpu ? at::Device(at::kCUDA, 0) : at::Device(at::kCPU);
}

MemoryPlan memory_plan(const Config& cfg, int world) {
  if (world < 1) throw std::invalid_argument(fmt::format("memory_plan: world size {} < 1", world));
  MemoryPlan p;
  p.mode = cfg.dist.shard;
  p.world = world;
  p.cuda = plan_device(cfg).is_cuda();
  p.activation_bytes = p.cuda && cfg.device.precision != Precision::kFp32 ? 2 : 4;
  const bool zero3 = p.mode == ShardMode::kParameters;
  // dist.shard parameters releases a block's weights after its forward: every block is recomputed.
  p.checkpointing = zero3 ? models::Checkpointing{1} : cfg.train.activation_checkpointing;
  p.checkpointing_forced = zero3 && cfg.train.activation_checkpointing.every_n != 1;
  p.batch = cfg.train.batch_size;
  const bool tokens = cfg.data.data_kind() == data::DataKind::kTokens;
  p.seq_len = tokens ? cfg.data.seq_len : 0;

  // The trainer's parameter list (training/trainer.cpp set_up), on the meta device.
  auto model = cfg.model;
  if (model.kind == models::ModelKind::kLM) model.lm.resolve_vocab(cfg.data.vocab(), model.where("vocab_size"));
  const auto h = models::make_meta_model(model, cfg.quant.spec, cfg.quant.include, cfg.quant.exclude, cfg.data.vocab());
  std::vector<std::pair<std::string, at::Tensor>> trainable;
  for (const auto& item : h.module->named_parameters(true)) {
    if (item.value().requires_grad()) {
      trainable.emplace_back(item.key(), item.value());
    } else {
      p.frozen += item.value().numel();
    }
  }
  int64_t buffers = 0;
  for (const auto& b : h.module->buffers(true)) buffers += b.numel() * static_cast<int64_t>(b.element_size());

  // The trainer's layout (training/data_parallel.cpp): a bucket per block and one of the rest with
  // dist.shard parameters, else buckets of dist.bucket_mb.
  const auto units = block_buckets(trainable);
  const auto bucket_bytes = static_cast<int64_t>(cfg.dist.bucket_mb * 1024 * 1024);
  const auto layout = zero3 ? make_shard_layout(trainable, world, units.groups)
                            : make_shard_layout(trainable, world, bucket_bytes);
  const int64_t N = layout.numel, S = layout.shard_numel;
  p.trainable = N;
  p.shard_numel = S;
  p.padding = layout.padding();
  p.buckets = layout.buckets.size();
  // All-reduce buckets exist with a process group of several ranks (GradSync does nothing without
  // one); the sharded modes' reduce-scatter and all-gather buffers exist at any world size, one rank
  // included (without a group the collectives are copies).
  const bool multi = world > 1;
  const bool sharded = p.mode != ShardMode::kNone;

  // The ternary weights that dist.shard parameters gathers as 2-bit codes at lambda_w 1 (training/
  // data_parallel.cpp plan_codes: a 2-D BitLinear weight whose scale groups tile it).
  std::map<std::string, bool> as_codes;
  for (const auto& item : h.module->named_modules(/*name_prefix=*/"", /*include_self=*/false)) {
    const auto* l = item.value()->as<bitlinear::BitLinearImpl>();
    if (!l || !l->weight.defined() || l->weight.dim() != 2) continue;
    const auto& spec = l->options.quant.weight;
    if (spec.type != bitlinear::WeightQuant::kTernary) continue;
    const auto sg = bitlinear::scale_grouping(spec, l->weight.sizes());
    as_codes[item.key() + ".weight"] = flat_groups(l->weight.numel(), l->weight.size(1), sg.group, sg.per_tensor).ok;
  }
  // Wire buffers: the two largest buckets (two reduce-scatters, or two all-gathers of updated
  // parameters, in flight at a time) and, with parameters, the two largest blocks' 2-bit codes (the
  // next block's prefetch; a float32 tensor is gathered straight into the buffer that becomes its
  // parameter, counted under parameters).
  auto two_largest = [&](bool codes) {
    std::vector<int64_t> wires;
    for (size_t b = 0; b < layout.buckets.size(); ++b) {
      if (!codes) {
        wires.push_back(wire_bytes(layout, layout.buckets[b]));
        continue;
      }
      if (static_cast<int64_t>(b) == units.rest) continue;
      int64_t bytes = 0;
      for (const size_t k : layout.buckets[b].params) {
        const auto& lp = layout.params[k];
        if (const auto it = as_codes.find(lp.name); it != as_codes.end() && it->second) {
          bytes += static_cast<int64_t>(world) * lp.chunk / 4;
        }
      }
      wires.push_back(bytes);
    }
    std::sort(wires.rbegin(), wires.rend());
    return (wires.empty() ? 0 : wires[0]) + (wires.size() > 1 ? wires[1] : 0);
  };
  const int64_t wire2 = sharded ? two_largest(false) : 0;
  const int64_t code_wire2 = zero3 ? two_largest(true) : 0;

  // ZeRO-3's working set: everything outside the blocks for the whole step, the running block and the
  // next one's prefetch. While lambda_w < 1 the next block arrives in float32 straight into its
  // parameters; when lambda_w is 1 at every step, its ternary weights wait as 2-bit codes until it runs
  // (communication buffers) and only its other tensors (norms) are float32.
  int64_t outside = 0, block_max = 0, block_float_max = 0;
  for (size_t b = 0; b < units.groups.size(); ++b) {
    int64_t n = 0, floats = 0;
    for (const size_t k : units.groups[b]) {
      n += trainable[k].second.numel();
      const auto it = as_codes.find(trainable[k].first);
      if (it == as_codes.end() || !it->second) floats += trainable[k].second.numel();
    }
    if (static_cast<int64_t>(b) == units.rest) {
      outside = n;
    } else {
      block_max = std::max(block_max, n);
      block_float_max = std::max(block_float_max, floats);
    }
  }
  bool lambda_w_one = true;
  if (zero3) {
    const auto lambda_w =
        schedules::make_schedule(cfg.quant.lambda_w, schedules::ScheduleRole::kLambda, cfg.train.steps);
    for (int64_t step = 0; step < cfg.train.steps && lambda_w_one; ++step) lambda_w_one = lambda_w->at(step) == 1.0;
  }

  const int64_t fixed = 4 * p.frozen + buffers;  // replicated whatever the mode
  const std::string fixed_text = fixed > 0 ? fmt::format(" + frozen and buffers {}", fixed) : "";
  auto add = [&](const char* name, int64_t bytes, std::string formula) {
    p.terms.push_back({name, bytes, std::move(formula)});
  };
  // A reduce-scatter in flight holds its input (the wire buffer) and its output, this rank's chunk
  // (training/grad_sync.cpp); Gloo, the CPU's backend, also clones the input and all-reduces the clone
  // (ProcessGroupGloo's reduce_scatter_tensor_coalesced; bench/shard_memory.sh measured the copies with
  // torch 2.11), where NCCL reduce-scatters without a copy.
  const int64_t rs_bytes = wire2 + wire2 / world + (p.cuda ? 0 : wire2);
  const std::string rs = fmt::format(" + 2 reduce-scatters in flight {} (wire buffers {}, outputs {}{})", rs_bytes,
                                     wire2, wire2 / world, p.cuda ? "" : fmt::format(", Gloo's copies {}", wire2));
  int64_t optimizer_state = 0, grad_shard = 0;  // made at set-up, before the model is sharded
  switch (p.mode) {
    case ShardMode::kNone:
      add("parameters", 4 * N + fixed, "4 N" + fixed_text);
      add("gradients", 4 * N, "4 N");
      optimizer_state = 8 * N;
      add("optimizer state", optimizer_state, "8 N (exp_avg, exp_avg_sq)");
      break;
    case ShardMode::kOptimizer:
      add("parameters", 4 * N + fixed, "4 N" + fixed_text);
      grad_shard = 4 * S;
      add("gradients", 4 * N + grad_shard, "4 N + 4 S (this rank's shard, taken after the all-reduce)");
      optimizer_state = 12 * S;
      add("optimizer state", optimizer_state, "12 S (exp_avg, exp_avg_sq, master shard)");
      break;
    case ShardMode::kGradients:
      add("parameters", 4 * N + fixed, "4 N" + fixed_text);
      grad_shard = 4 * S;
      add("gradients", grad_shard + rs_bytes, "4 S" + rs);
      optimizer_state = 12 * S;
      add("optimizer state", optimizer_state, "12 S (exp_avg, exp_avg_sq, master shard)");
      break;
    case ShardMode::kParameters: {
      const int64_t gathered = 4 * (outside + block_max + (lambda_w_one ? block_float_max : block_max));
      add("parameters", 4 * S + gathered + fixed,
          lambda_w_one
              ? fmt::format("4 S + gathered 4 x ({} outside the blocks, for the whole step + {} of the running block + "
                            "{} of the next one's float32 tensors; lambda_w is 1 at every step, so its ternary weights "
                            "wait as 2-bit codes){}",
                            outside, block_max, block_float_max, fixed_text)
              : fmt::format("4 S + gathered 4 x ({} outside the blocks, for the whole step + 2 x {} of a block, the "
                            "one running and the next, in float32 while lambda_w < 1){}",
                            outside, block_max, fixed_text));
      // The rest's bucket is reduce-scattered last: the head's gradient waits for the embeddings'.
      const int64_t whole = 4 * (outside + block_max);
      grad_shard = 4 * S;
      add("gradients", grad_shard + whole + rs_bytes,
          fmt::format("4 S + whole gradients before their reduce-scatter 4 x ({} outside the blocks, through the "
                      "backward pass + {} of a block){}",
                      outside, block_max, rs));
      optimizer_state = 8 * S;
      add("optimizer state", optimizer_state, "8 S (exp_avg, exp_avg_sq; the shard is the master)");
      break;
    }
  }

  // Saved activations and the transients they imply; a recomputed block saves its weight codes (CPU)
  // while it is recomputed.
  const auto copies = weight_copies(*h.module, model, p.cuda, p.activation_bytes == 2, p.checkpointing);
  int64_t recompute = copies.recomputed, logits = 0, head_chunk = 0;
  if (model.kind == models::ModelKind::kLM && tokens) {
    const auto& lm = model.lm;
    const auto a = lm_activations(lm, p.batch, p.seq_len, p.cuda, p.activation_bytes);
    const int64_t c = checkpointed_blocks(p.checkpointing, lm.n_layers);
    const int64_t saved = c * a.input + (lm.n_layers - c) * a.block + a.outside;
    add("saved activations", saved,
        fmt::format("{}; {} blocks x {} + {} checkpointed x {} (input 4Md) + outside {}{}", a.formula,
                    lm.n_layers - c, a.block, c, a.input, a.outside,
                    zero3 ? "; dist.shard parameters recomputes every block" : ""));
    if (c > 0) recompute += a.block;
    // The fused head's chunk buffers (models/head_loss.hpp): 2 [C, V] float32 without a teacher, 4 with one.
    head_chunk = std::min(models::head_loss_chunk(lm.vocab_size), p.batch * p.seq_len);
    logits = 4 * head_chunk * lm.vocab_size * (cfg.distill.enabled ? 4 : 2);
  } else {
    p.activations_estimated = false;
    add("saved activations", 0, fmt::format("not estimated for model.kind {}", models::to_string(model.kind)));
  }
  const bool all_reduce = multi && (p.mode == ShardMode::kNone || p.mode == ShardMode::kOptimizer);
  const int64_t all_reduce_buckets = all_reduce ? 4 * N : 0;
  if (zero3) {
    add("communication buffers", code_wire2,
        fmt::format("all-gather wire buffers of the two blocks in flight: their ternary weights' 2-bit codes {} (W "
                    "chunk / 4; at lambda_w < 1 they travel as float32, gathered straight into the parameters)",
                    code_wire2));
  } else {
    add("communication buffers", all_reduce_buckets,
        all_reduce                          ? "all-reduce buckets 4 N"
        : p.mode == ShardMode::kGradients ? "none held (reduce-scatter buffers under gradients)"
                                            : "none (one rank: no all-reduce)");
  }

  // Sharded parameters are gathered where they are used; the other sharded modes all-gather the
  // updated ones after the step.
  const int64_t gather = p.mode == ShardMode::kOptimizer || p.mode == ShardMode::kGradients ? wire2 : 0;
  int64_t transient = std::max({logits, recompute, gather});
  std::string what = "none";
  if (transient == 0) {
    what = "none";
  } else if (transient == logits) {
    what = fmt::format("the head + loss over chunks of C = {} tokens: {} x 4 C vocab{}", head_chunk,
                       cfg.distill.enabled ? 4 : 2, cfg.distill.enabled ? " (with the teacher's)" : "");
  } else if (transient == recompute) {
    what = "one block's activations and weight codes, recomputed";
  } else {
    what = "all-gather of updated parameters, two buckets 4 W chunk";
  }
  add("largest transient", transient,
      fmt::format("{} (of head {}, recompute {}, all-gather {})", what, logits, recompute, gather));

  add("quantized weight copies", copies.bytes, copies.formula);
  int64_t teacher = 0;
  std::string teacher_text;
  if (cfg.distill.enabled && model.kind == models::ModelKind::kLM) {
    std::string origin;
    const int64_t n = teacher_params(cfg, model.lm, &origin);
    teacher = 4 * n;
    add("distillation teacher", teacher, fmt::format("4 x {} ({})", n, origin));
    teacher_text = fmt::format(" + teacher {}", teacher);
  }

  // Set-up (training/trainer.cpp set_up): every rank builds the whole model, then the data-parallel
  // state (with parameters also the master shard, which the steps count under parameters), before a
  // sharded mode takes its shard and releases the rest.
  const int64_t state = optimizer_state + grad_shard + all_reduce_buckets + (zero3 ? 4 * S : 0);
  p.setup_peak = {"set-up peak", 4 * N + fixed + state + teacher,
                  fmt::format("4 N the whole model as every rank builds it{} + optimizer state, {}gradient shard and "
                              "all-reduce buckets {}{}, before a sharded mode releases the model",
                              fixed_text, zero3 ? "master shard, " : "", state, teacher_text)};
  if (zero3) {
    p.host.push_back({"checkpoint host RAM", 4 * N + fixed,
                      fmt::format("4 N{}: rank 0 collects the whole fp32 model in host memory, a block at a time (not "
                                  "device memory)",
                                  fixed_text)});
  }
  return p;
}

std::string format_memory_plan(const MemoryPlan& p) {
  std::string out = fmt::format(
      "plan: dist.shard {}, world size {}, N = {} trainable elements ({} frozen), S = {} per rank, padding {}, {} "
      "buckets; {} path, activations {} bytes, batch {} x {} tokens, activation checkpointing {}\n",
      core::name_of(kShardModeNames, p.mode), p.world, p.trainable, p.frozen, p.shard_numel, p.padding, p.buckets,
      p.cuda ? "GPU" : "CPU", p.activation_bytes, p.batch, p.seq_len,
      p.checkpointing.to_string() + (p.checkpointing_forced ? " (dist.shard parameters recomputes every block)" : ""));
  auto line = [&out](const MemoryTerm& t) {
    out += fmt::format("  {:<24}{:>9} GiB {:>15} bytes   {}\n", t.name, gib(t.bytes), t.bytes, t.formula);
  };
  for (const auto& t : p.terms) line(t);
  out += fmt::format("  {:<24}{:>9} GiB {:>15} bytes{}\n", "total", gib(p.total()), p.total(),
                     p.activations_estimated ? "" : "   (saved activations not estimated)");
  line(p.setup_peak);
  for (const auto& t : p.host) line(t);
  return out;
}

MemoryLimit memory_limit(const Config& cfg, const at::Device& device) {
  MemoryLimit l;
  if (cfg.device.memory_gb > 0) {
    l.bytes = static_cast<int64_t>(cfg.device.memory_gb * kGiB);
    l.source = cfg.root.child("device").describe("memory_gb");
  } else if (device.is_cuda()) {
    if (!torch::cuda::is_available()) return l;
    const auto* prop = at::cuda::getDeviceProperties(device.index() < 0 ? 0 : device.index());
    l.bytes = static_cast<int64_t>(prop->totalGlobalMem);
    l.source = fmt::format("GPU {} ({})", device.index() < 0 ? 0 : device.index(), prop->name);
  } else {
    l.bytes = static_cast<int64_t>(::sysconf(_SC_PHYS_PAGES)) * static_cast<int64_t>(::sysconf(_SC_PAGE_SIZE));
    l.source = "this machine's RAM";
  }
  return l;
}

void check_memory_plan(const MemoryPlan& p, const MemoryLimit& limit) {
  if (limit.bytes <= 0) return;
  if (p.total() <= limit.bytes) {
    if (p.setup_peak.bytes <= limit.bytes) return;
    // Sharding starts from the whole model: only fewer (or frozen) parameters or more memory help.
    throw core::ConfigError(fmt::format(
        "the memory plan's set-up peak needs {} GiB ({} bytes) per rank (dist.shard {}, world size {}), more than "
        "the {} GiB of {}: {}; every rank builds the whole model before it is sharded, so it must fit one device "
        "(bitqat plan CONFIG shows every term)",
        gib(p.setup_peak.bytes), p.setup_peak.bytes, core::name_of(kShardModeNames, p.mode), p.world,
        gib(limit.bytes), limit.source, p.setup_peak.formula));
  }
  const auto& big = p.biggest();
  std::string fixes;
  if (p.mode != ShardMode::kParameters) {
    const auto next = static_cast<ShardMode>(static_cast<int>(p.mode) + 1);
    fixes += fmt::format("dist.shard {} (now {}), ", core::name_of(kShardModeNames, next),
                         core::name_of(kShardModeNames, p.mode));
  }
  if (p.mode != ShardMode::kNone) fixes += fmt::format("more ranks (now {}), ", p.world);
  if (p.checkpointing.every_n != 1 && p.activations_estimated) {
    fixes += "train.activation_checkpointing full, ";
  }
  fixes += fmt::format("a lower train.batch_size (now {}; train.grad_accum keeps the global batch)", p.batch);
  if (p.seq_len > 0) fixes += fmt::format(" or data.seq_len (now {})", p.seq_len);
  throw core::ConfigError(fmt::format(
      "the memory plan needs {} GiB ({} bytes) per rank (dist.shard {}, world size {}), more than the {} GiB of {}; "
      "the biggest term is {}, {} GiB ({}); try {} (bitqat plan CONFIG shows every term)",
      gib(p.total()), p.total(), core::name_of(kShardModeNames, p.mode), p.world, gib(limit.bytes), limit.source,
      big.name, gib(big.bytes), big.formula, fixes));
}

}  // namespace bitqat::training
