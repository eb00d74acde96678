#include "models/recompute.hpp"

#include <ATen/autocast_mode.h>
#include <ATen/core/grad_mode.h>
#include <ATen/core/ivalue.h>
#include <ATen/record_function.h>
#include <fmt/format.h>
#include <torch/autograd.h>
#include <torch/csrc/autograd/custom_function.h>

#include <optional>

namespace bitqat::models {

std::string Checkpointing::to_string() const {
  if (every_n == 0) return "none";
  if (every_n == 1) return "full";
  return fmt::format("every_n: {}", every_n);
}

Checkpointing Checkpointing::parse_key(const core::Node& section, const std::string& key) {
  const char* expected = "none, full or a mapping {every_n: N} (N an integer >= 1)";
  const auto m = section.child(key);
  const auto& v = m.yaml();
  if (v.IsScalar()) {
    if (v.Scalar() == "none") return Checkpointing{0};
    if (v.Scalar() == "full") return Checkpointing{1};
    section.fail(key, expected);
  }
  if (!v.IsMap()) section.fail(key, expected);
  m.allow_only({"every_n"});
  if (!m.has("every_n")) section.fail(key, expected);
  const auto n = m.get<int64_t>("every_n", 0);
  if (n < 1) m.fail("every_n", "an integer >= 1 (1: every block, as full)");
  return Checkpointing{n};
}

YAML::Node Checkpointing::to_yaml() const {
  if (every_n <= 1) return YAML::Node(to_string());
  YAML::Node n(YAML::NodeType::Map);
  n["every_n"] = every_n;
  return n;
}

namespace {

using torch::autograd::AutogradContext;
using torch::autograd::tensor_list;

// The autocast settings of a thread, for the devices bitqat trains on.
struct AutocastState {
  bool cuda = false, cpu = false;
  at::ScalarType cuda_dtype = at::kBFloat16, cpu_dtype = at::kBFloat16;
  bool cache = true;

  static AutocastState current() {
    AutocastState s;
    s.cuda = at::autocast::is_autocast_enabled(at::kCUDA);
    s.cpu = at::autocast::is_autocast_enabled(at::kCPU);
    s.cuda_dtype = at::autocast::get_autocast_dtype(at::kCUDA);
    s.cpu_dtype = at::autocast::get_autocast_dtype(at::kCPU);
    s.cache = at::autocast::is_autocast_cache_enabled();
    return s;
  }
  void apply() const {
    at::autocast::set_autocast_enabled(at::kCUDA, cuda);
    at::autocast::set_autocast_enabled(at::kCPU, cpu);
    at::autocast::set_autocast_dtype(at::kCUDA, cuda_dtype);
    at::autocast::set_autocast_dtype(at::kCPU, cpu_dtype);
    at::autocast::set_autocast_cache_enabled(cache);
  }
};

// The forward's autocast state on this thread (the backward may run on another, an autograd device
// thread), as a torch.autocast region: the casts it caches are dropped when the outermost region ends,
// so that no weight copy outlives the step.
class AutocastAs {
 public:
  explicit AutocastAs(const AutocastState& s) : prev_(AutocastState::current()) {
    s.apply();
    at::autocast::increment_nesting();
  }
  ~AutocastAs() {
    prev_.apply();
    if (at::autocast::decrement_nesting() == 0) at::autocast::clear_cache();
  }
  AutocastAs(const AutocastAs&) = delete;
  AutocastAs& operator=(const AutocastAs&) = delete;

 private:
  AutocastState prev_;
};

class NoAutocastCache {
 public:
  NoAutocastCache() : prev_(at::autocast::is_autocast_cache_enabled()) {
    at::autocast::set_autocast_cache_enabled(false);
  }
  ~NoAutocastCache() { at::autocast::set_autocast_cache_enabled(prev_); }
  NoAutocastCache(const NoAutocastCache&) = delete;
  NoAutocastCache& operator=(const NoAutocastCache&) = delete;

 private:
  bool prev_;
};

// What the node's backward needs besides the saved inputs (in the context as a capsule).
struct BlockState : torch::CustomClassHolder {
  size_t index = 0;
  BlockFn fn;
  std::shared_ptr<BlockHooks> hooks;
  bool recompute = true;  // false: the forward's graph is kept (hooks on a block that is not recomputed)
  AutocastState autocast;
  std::vector<bool> requires_grad;  // per input
  std::vector<at::Tensor> kept_inputs;
  at::Tensor kept_output;
};

// Inputs cut from the graph, each requiring grad where the original does: a graph built on them ends
// at these leaves, where the backward takes the original inputs' gradients.
std::vector<at::Tensor> detached(at::TensorList inputs, const std::vector<bool>& requires_grad) {
  std::vector<at::Tensor> out;
  out.reserve(inputs.size());
  for (size_t i = 0; i < inputs.size(); ++i) {
    out.push_back(inputs[i].detach());
    if (requires_grad[i]) out.back().requires_grad_(true);
  }
  return out;
}

// A leaf that makes the node's output require grad when no input does but the block has trainable
// parameters (a stream from frozen weights): their gradients reach them through the nested backward.
// The parameters themselves are not the node's inputs: their AccumulateGrad nodes would then run twice
// per backward (their post-accumulate-grad hooks too). None when an input requires grad.
std::optional<at::Tensor> anchor(const std::vector<at::Tensor>& inputs, torch::nn::Module& block) {
  for (const auto& x : inputs) {
    if (x.requires_grad()) return std::nullopt;
  }
  for (const auto& p : block.parameters(/*recurse=*/true)) {
    if (p.requires_grad()) return at::empty({0}, p.options()).requires_grad_(true);
  }
  return std::nullopt;
}

// The block as one node. Inputs: the state (not a tensor), the block's inputs and the anchor.
struct BlockNode : torch::autograd::Function<BlockNode> {
  static at::Tensor forward(AutogradContext* ctx, const c10::intrusive_ptr<BlockState>& state, at::TensorList inputs,
                            const std::optional<at::Tensor>& /*anchor*/) {
    ctx->saved_data["state"] = c10::IValue::make_capsule(state);
    if (state->recompute) {
      RECORD_FUNCTION("bitqat::block_forward_no_grad", std::vector<c10::IValue>());
      ctx->save_for_backward(inputs.vec());
      // Grad is off here (Function::apply). Autocast must not cache the casts of this pass: a cached
      // cast made without grad would serve a later use of the same weight with grad, cutting its gradient.
      NoAutocastCache no_cache;
      return state->fn(inputs.vec());
    }
    at::AutoGradMode grad(true);
    state->kept_inputs = detached(inputs, state->requires_grad);
    state->kept_output = state->fn(state->kept_inputs);
    return state->kept_output.detach();  // the node's output; the kept graph ends at kept_output
  }

  static tensor_list backward(AutogradContext* ctx, tensor_list grads) {
    const auto state = c10::static_intrusive_pointer_cast<BlockState>(ctx->saved_data["state"].toCapsule());
    if (state->hooks) state->hooks->before_backward(state->index);
    std::vector<at::Tensor> inputs;
    at::Tensor output;
    if (state->recompute) {
      RECORD_FUNCTION("bitqat::block_recompute", std::vector<c10::IValue>());
      const auto saved = ctx->get_saved_variables();
      inputs = detached(saved, state->requires_grad);
      at::AutoGradMode grad(true);
      AutocastAs autocast(state->autocast);
      output = state->fn(inputs);
    } else {
      inputs = std::move(state->kept_inputs);
      output = std::move(state->kept_output);
    }
    // An input's gradient is taken as it reaches the leaf (the sum of its uses in the block, in the
    // layout that sum has, as the graph without this node would pass it on), not from .grad, which
    // AccumulateGrad may copy into the input's own strides: a different layout would change the
    // order of later reductions over it, and so their rounding.
    std::vector<at::Tensor> input_grads(inputs.size());
    for (size_t i = 0; i < inputs.size(); ++i) {
      if (!inputs[i].requires_grad()) continue;
      inputs[i].register_hook([&input_grads, i](const at::Tensor& g) {
        input_grads[i] = g;
        return g.detach();  // an alias for the leaf's .grad, which it may keep without a copy
      });
    }
    if (output.requires_grad()) torch::autograd::backward({output}, {grads[0]});
    tensor_list out;
    out.reserve(inputs.size() + 2);
    out.emplace_back();  // the state
    for (auto& g : input_grads) out.push_back(std::move(g));
    out.emplace_back();  // the anchor
    if (state->hooks) state->hooks->after_backward(state->index);
    return out;
  }
};

}  // namespace

at::Tensor BlockRunner::run(size_t index, torch::nn::Module& block, const BlockFn& fn,
                            const std::vector<at::Tensor>& inputs, bool recomputable) const {
  const bool training = at::GradMode::is_enabled() && block.is_training();
  const bool recompute = training && recomputable && checkpointing.recomputes(index);
  if (hooks) hooks->before_forward(index);
  at::Tensor out;
  if (recompute || (training && hooks)) {
    auto state = c10::make_intrusive<BlockState>();
    state->index = index;
    state->fn = fn;
    state->hooks = hooks;
    state->recompute = recompute;
    state->autocast = AutocastState::current();
    for (const auto& x : inputs) state->requires_grad.push_back(x.requires_grad());
    out = BlockNode::apply(state, at::TensorList(inputs), anchor(inputs, block));
  } else {
    out = fn(inputs);
  }
  if (hooks) hooks->after_forward(index);
  return out;
}

}  // namespace bitqat::models
