#include "training/distill.hpp"

#include <ATen/autocast_mode.h>
#include <ATen/core/grad_mode.h>
#include <fmt/format.h>
#include <spdlog/spdlog.h>

#include <cmath>
#include <cstring>
#include <limits>
#include <filesystem>
#include <optional>

#include "core/error.hpp"
#include "interop/init_source.hpp"
#include "models/head_loss.hpp"
#include "models/state_dict.hpp"
#include "training/distributed.hpp"
#include "training/run_state.hpp"

namespace bitqat::training {
namespace {

// The teacher runs in float32 whatever autocast the student's step uses.
class NoAutocast {
 public:
  NoAutocast() : prev_(at::autocast::is_autocast_enabled(at::kCUDA)) {
    at::autocast::set_autocast_enabled(at::kCUDA, false);
  }
  ~NoAutocast() { at::autocast::set_autocast_enabled(at::kCUDA, prev_); }
  NoAutocast(const NoAutocast&) = delete;
  NoAutocast& operator=(const NoAutocast&) = delete;

 private:
  bool prev_;
};

class DistillTask final : public Task {
 public:
  DistillTask(std::unique_ptr<Task> student, std::shared_ptr<models::BitLMImpl> student_lm,
              std::shared_ptr<models::BitLMImpl> teacher, DistillConfig cfg, std::string teacher_path)
      : student_(std::move(student)),
        student_lm_(std::move(student_lm)),
        teacher_(std::move(teacher)),
        cfg_(std::move(cfg)),
        teacher_path_(std::move(teacher_path)),
        heads_(relation_heads(cfg_.attention, student_lm_->config)) {}

  torch::nn::Module& module() override { return student_->module(); }
  std::shared_ptr<torch::nn::Module> module_ptr() override { return student_->module_ptr(); }

  at::Tensor loss(const data::Batch& b) override {
    std::vector<at::Tensor> hs, ht, qkv_s, qkv_t;
    const auto& att = cfg_.attention;
    // Taps on the matched block's attention (cleared again whatever happens).
    struct Taps {
      models::AttentionImpl* s = nullptr;
      models::AttentionImpl* t = nullptr;
      ~Taps() {
        if (s) s->tap = nullptr;
        if (t) t->tap = nullptr;
      }
    } taps;
    if (att.layer >= 0) {
      taps.s = student_lm_->blocks[static_cast<size_t>(att.layer)]->attn.get();
      taps.t = teacher_->blocks[static_cast<size_t>(att.layer)]->attn.get();
      taps.s->tap = &qkv_s;
      taps.t->tap = &qkv_t;
    }
    const auto fs = student_lm_->features(b.inputs, cfg_.hidden.layers, &hs);
    at::Tensor ft;
    {
      at::NoGradGuard no_grad;
      NoAutocast fp32;
      ft = teacher_->features(b.inputs, cfg_.hidden.layers, &ht);
    }
    const auto parts = distill_loss(fs.reshape({-1, fs.size(-1)}), student_lm_->head_weight(),
                                    ft.reshape({-1, ft.size(-1)}), teacher_->head_weight(), b.targets.reshape({-1}),
                                    cfg_.alpha, cfg_.temperature, hs, ht, cfg_.hidden.weight);
    parts_ = {{"loss_ce", parts.ce.detach()}, {"loss_kd", parts.kd.detach()}};
    if (parts.hidden.defined()) parts_.emplace_back("loss_hidden", parts.hidden.detach());
    if (att.layer < 0) return parts.total;
    TORCH_CHECK(qkv_s.size() == 3 && qkv_t.size() == 3, "distill.attention: block ", att.layer,
                " ran its attention ", qkv_s.size() / 3, " and ", qkv_t.size() / 3, " times, expected once");
    std::vector<at::Tensor> xs, xt;
    for (const auto& r : att.relations) {
      const size_t i = r == "q" ? 0 : r == "k" ? 1 : 2;
      xs.push_back(qkv_s[i]);
      xt.push_back(qkv_t[i]);
    }
    const auto rel = attention_relation_loss(xs, xt, heads_);
    parts_.emplace_back("loss_attn", rel.detach());
    return parts.total + att.weight * rel;
  }

  EvalResult evaluate(const std::vector<data::Batch>& batches, const at::Device& device) override {
    return student_->evaluate(batches, device);
  }
  int64_t units(const data::Batch& b) const override { return student_->units(b); }
  const char* unit_name() const override { return student_->unit_name(); }
  std::vector<std::pair<std::string, at::Tensor>> loss_parts() const override { return parts_; }

  nlohmann::json checkpoint_state() const override {
    return {{"distill", {{"teacher", teacher_path_}, {"teacher_fingerprint", fingerprint()}}}};
  }

  void check_resume(const nlohmann::json& state, const std::string& origin) const override {
    const auto d = state.contains("distill") ? state["distill"] : nlohmann::json();
    if (!d.is_object() || !d.contains("teacher_fingerprint") || !d["teacher_fingerprint"].is_number_integer()) {
      throw core::UserError(fmt::format(
          "{}: the checkpoint records no distillation teacher, but {} asks for one ({}): a run cannot switch "
          "distillation on when it resumes; start a new run with init_from pointing at this checkpoint",
          origin, cfg_.node.where(), teacher_path_));
    }
    const int64_t want = d["teacher_fingerprint"].get<int64_t>();
    if (want != fingerprint()) {
      throw core::UserError(fmt::format(
          "{}: the distillation teacher changed since this checkpoint: {} has fingerprint {}, the checkpoint's "
          "teacher ({}) had {}; resume with the same teacher",
          origin, teacher_path_, fingerprint(), d.value("teacher", std::string("?")), want));
    }
  }

  models::BitLMImpl& teacher() { return *teacher_; }
  models::BitLMImpl& student_lm() { return *student_lm_; }
  const std::string& teacher_path() const { return teacher_path_; }
  int64_t fingerprint() const {
    std::vector<at::Tensor> ts;
    for (const auto& p : teacher_->parameters()) ts.push_back(p);
    return bit_fingerprint(ts);
  }

 private:
  std::unique_ptr<Task> student_;
  std::shared_ptr<models::BitLMImpl> student_lm_, teacher_;
  DistillConfig cfg_;
  std::string teacher_path_;
  int64_t heads_;  // relation heads of distill.attention
  std::vector<std::pair<std::string, at::Tensor>> parts_;
};

// LMConfig <-> int64 words, so that rank 0 can broadcast the teacher's model to the others.
std::vector<int64_t> encode(const models::LMConfig& c) {
  auto bits = [](double d) {
    int64_t i = 0;
    std::memcpy(&i, &d, 8);
    return i;
  };
  const auto ffn = static_cast<int64_t>(c.ffn);
  return {c.vocab_size, c.dim,      c.n_layers,    c.n_heads,          c.n_kv_heads,     c.ffn_dim,
          ffn,          c.sub_norm, c.max_seq_len, bits(c.rope_theta), bits(c.norm_eps), c.tie_embeddings};
}

models::LMConfig decode(const std::vector<int64_t>& w) {
  auto real = [](int64_t i) {
    double d = 0;
    std::memcpy(&d, &i, 8);
    return d;
  };
  models::LMConfig c;
  c.vocab_size = w[0], c.dim = w[1], c.n_layers = w[2], c.n_heads = w[3], c.n_kv_heads = w[4], c.ffn_dim = w[5];
  c.ffn = static_cast<models::Ffn>(w[6]);
  c.sub_norm = w[7] != 0, c.max_seq_len = w[8], c.rope_theta = real(w[9]), c.norm_eps = real(w[10]);
  c.tie_embeddings = w[11] != 0;
  return c;
}

// The teacher's model on every rank: what the source says (read on rank 0), else the student's.
models::LMConfig teacher_config(std::optional<interop::InitSource>& src, const models::LMConfig& student,
                                DistContext& dist) {
  auto words = encode(src && src->lm ? *src->lm : student);
  at::Tensor t = at::tensor(words, at::kLong);
  dist.broadcast_(t, "broadcast of the distillation teacher's model config");
  const auto* p = t.data_ptr<int64_t>();
  return decode(std::vector<int64_t>(p, p + t.numel()));
}

void check_teacher(const models::LMConfig& t, const models::LMConfig& s, const DistillConfig& cfg,
                   const std::string& path) {
  const auto where = cfg.node.where(cfg.teacher.empty() ? "" : "teacher");
  if (t.vocab_size != s.vocab_size) {
    throw core::UserError(fmt::format(
        "{} = {}: the teacher's vocabulary has {} tokens, the student's {}: distillation compares the two models' "
        "distributions over the same tokens, so the teacher must share the student's tokenizer",
        where, path, t.vocab_size, s.vocab_size));
  }
  if (cfg.attention.layer >= 0) {
    const auto& a = cfg.attention;
    if (a.layer >= t.n_layers) {
      throw core::UserError(fmt::format("{} = {}: the teacher ({}) has {} blocks (0 to {})", a.node.where("layer"),
                                        a.layer, path, t.n_layers, t.n_layers - 1));
    }
    // The relation matrices are [B, H, T, T] in both models: the student's H must split the teacher too.
    auto as_student = a;
    as_student.heads = relation_heads(a, s);
    if (const auto why = attention_heads_problem(as_student, t); !why.empty()) {
      throw core::UserError(fmt::format("{}: the teacher ({}): {}", a.node.where(), path, why));
    }
  }
  for (auto l : cfg.hidden.layers) {
    if (l >= t.n_layers || t.dim != s.dim) {
      throw core::UserError(fmt::format(
          "{}: hidden-state block {} needs it in both models with the same width; the teacher ({}) has {} blocks of "
          "width {}, the student {} of width {}",
          cfg.node.child("hidden").where("layers"), l, path, t.n_layers, t.dim, s.n_layers, s.dim));
    }
  }
}

}  // namespace

at::Tensor attention_relation_loss(const std::vector<at::Tensor>& student, const std::vector<at::Tensor>& teacher,
                                   int64_t heads) {
  TORCH_CHECK(!student.empty() && student.size() == teacher.size(), "attention_relation_loss: ", student.size(),
              " student and ", teacher.size(), " teacher relations");
  TORCH_CHECK(heads >= 1, "attention_relation_loss: heads must be >= 1, got ", heads);
  // log softmax(X_h X_h^T / sqrt(d_r)) over the visible positions, 0 where masked: [B, H, T, T].
  const auto log_relation = [&](const at::Tensor& x, const at::Tensor& hidden_mask) {
    const int64_t B = x.size(0), T = x.size(1), F = x.size(2);
    TORCH_CHECK(F % heads == 0, "attention_relation_loss: ", F, " features do not split into ", heads, " heads");
    const int64_t d = F / heads;
    const auto xh = x.reshape({B, T, heads, d}).transpose(1, 2);
    const auto scores = at::matmul(xh, xh.transpose(2, 3)) / std::sqrt(static_cast<double>(d));
    return at::log_softmax(scores.masked_fill(hidden_mask, -std::numeric_limits<double>::infinity()), -1)
        .masked_fill(hidden_mask, 0.0);
  };
  at::Tensor total;
  for (size_t i = 0; i < student.size(); ++i) {
    const auto &xs = student[i], &xt = teacher[i];
    TORCH_CHECK(xs.dim() == 3 && xt.dim() == 3 && xs.size(0) == xt.size(0) && xs.size(1) == xt.size(1),
                "attention_relation_loss: relation ", i, ": shapes ", xs.sizes(), " and ", xt.sizes(),
                " are not [B, T, F] of one B and T");
    const int64_t T = xs.size(1);
    const auto hidden_mask =
        at::ones({T, T}, xs.options().dtype(at::kBool)).triu(1);  // s > t: not visible from t
    const auto ls = log_relation(xs, hidden_mask);
    const auto lt = log_relation(xt.detach().to(xs.scalar_type()), hidden_mask);
    const auto kl = (lt.exp().masked_fill(hidden_mask, 0.0) * (lt - ls)).sum(-1).mean();
    total = total.defined() ? total + kl : kl;
  }
  return total / static_cast<double>(student.size());
}

DistillLoss distill_loss(const at::Tensor& student_features, const at::Tensor& student_head,
                         const at::Tensor& teacher_features, const at::Tensor& teacher_head, const at::Tensor& targets,
                         double alpha, double temperature, const std::vector<at::Tensor>& student_hidden,
                         const std::vector<at::Tensor>& teacher_hidden, double hidden_weight, int64_t chunk_tokens) {
  TORCH_CHECK(student_hidden.size() == teacher_hidden.size(), "distill_loss: ", student_hidden.size(), " vs ",
              teacher_hidden.size(), " hidden states");
  const auto head = models::head_loss(student_features, student_head, targets, teacher_features, teacher_head, alpha,
                                      temperature, chunk_tokens);
  DistillLoss out;
  out.ce = head.ce;
  out.kd = head.kd;
  out.total = head.total;
  if (!student_hidden.empty()) {
    std::vector<at::Tensor> mses;
    for (size_t i = 0; i < student_hidden.size(); ++i) {
      mses.push_back(at::mse_loss(student_hidden[i], teacher_hidden[i].detach().to(student_hidden[i].scalar_type())));
    }
    out.hidden = at::stack(mses).mean();
    out.total = out.total + hidden_weight * out.hidden;
  }
  return out;
}

std::unique_ptr<Task> make_distill_task(std::unique_ptr<Task> student, const Config& cfg, const at::Device& device,
                                        DistContext& dist) {
  const auto& d = cfg.distill;
  auto student_lm = std::dynamic_pointer_cast<models::BitLMImpl>(student->module_ptr());
  if (!student_lm) {
    throw core::ConfigError(fmt::format("{}: distillation needs a language model (model.kind lm)", d.node.where()));
  }
  const std::string path = d.teacher.empty() ? cfg.init_from : d.teacher;
  const std::string where =
      d.teacher.empty() ? cfg.root.where("init_from") + " (the distillation teacher)" : d.node.where("teacher");
  // Rank 0 opens the source; its model config, then its weights, reach the other ranks by broadcast.
  std::optional<interop::InitSource> src;
  run_on_main(
      dist,
      [&] {
        src = interop::read_init_source(path, where);
        if (!src->lm &&
            (src->kind == interop::InitKind::kBitqatRun || src->kind == interop::InitKind::kBitqatCheckpoint)) {
          throw core::UserError(fmt::format(
              "{} = {}: the teacher is a bitqat run whose model is not a language model (model.kind is not lm in "
              "its config.resolved.yaml); distillation needs a teacher with attention blocks and logits over the "
              "student's tokens",
              where, path));
        }
      },
      "opening the distillation teacher");
  const auto tcfg = teacher_config(src, student_lm->config, dist);
  check_teacher(tcfg, student_lm->config, d, path);

  // Built under a saved RNG state: the teacher's (overwritten) initialisation draws nothing from the
  // generator the student's run uses.
  const auto rng = rng_states();
  auto teacher = std::make_shared<models::BitLMImpl>(tcfg, bitlinear::QuantSpec::full_precision(),
                                                     std::vector<std::string>{}, std::vector<std::string>{});
  restore_rng_states({rng.begin(), rng.end()}, "the RNG state saved before building the teacher");
  teacher->to(device);
  run_on_main(
      dist, [&] { interop::init_model_from(*src, *teacher, where); }, "reading the distillation teacher");
  src.reset();  // unmaps the source
  for (auto& p : teacher->parameters()) {
    p.set_requires_grad(false);
    dist.broadcast_(p, "broadcast of the distillation teacher's weights");
  }
  teacher->eval();
  auto task = std::make_unique<DistillTask>(std::move(student), student_lm, teacher, d,
                                            std::filesystem::absolute(path).lexically_normal().string());
  dist.check_same({task->fingerprint()}, {"the fingerprint of the distillation teacher"});
  spdlog::info(
      "distillation: teacher {} ({} blocks, width {}, fingerprint {}); loss = {} CE + {} T^2 KL (T = {}){}{}", path,
      tcfg.n_layers, tcfg.dim, task->fingerprint(), d.alpha, 1.0 - d.alpha, d.temperature,
      d.hidden.layers.empty()
          ? std::string()
          : fmt::format(" + {} hidden MSE at blocks {}", d.hidden.weight, fmt::join(d.hidden.layers, ", ")),
      d.attention.layer < 0
          ? std::string()
          : fmt::format(" + {} attention-relation KL ({}) at block {}, {} relation heads", d.attention.weight,
                        fmt::join(d.attention.relations, ", "), d.attention.layer,
                        relation_heads(d.attention, student_lm->config)));
  return task;
}

bool init_student_from_teacher(Task& task, const Config& cfg) {
  auto* t = dynamic_cast<DistillTask*>(&task);
  if (!t || cfg.init_from.empty() || !cfg.distill.teacher.empty()) return false;
  const auto fit = interop::fit_source(t->student_lm().config, t->teacher().config);
  if (!fit.differences.empty()) {
    throw core::UserError(fmt::format("{} = {}: the config's model does not match the source: {}",
                                      cfg.root.where("init_from"), cfg.init_from, fmt::join(fit.differences, "; ")));
  }
  // Every rank holds the broadcast teacher: copy it, no second read of the file. Inserted SubLN norms
  // (interop/init_source.hpp) keep the student's ones.
  const auto tensors = models::model_tensors(t->teacher(), /*to_cpu=*/false);
  const auto load = models::load_initial_tensors(
      t->student_lm(), models::lazy_tensors(std::map<std::string, at::Tensor>(tensors.begin(), tensors.end())),
      t->teacher_path() + " (the distillation teacher)", fit.inserted);
  spdlog::info("initialised {} tensors from the distillation teacher {} (init_from){}{}", tensors.size(),
               cfg.init_from, fit.note(), load.note());
  return true;
}

}  // namespace bitqat::training
