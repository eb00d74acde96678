// Host memory of importing a model and of writing and reading its checkpoint: the phases of a
// fine-tune's start, one after the other in one process, with the resident set after each (VmRSS)
// and its peak so far (VmHWM), against the float32 size of the model. bench/import_memory.sh runs it
// under /usr/bin/time -v on a synthetic ~1B-parameter Llama written by transformers.
//
//   import_bench SOURCE [WORK_DIR]
// SOURCE: anything init_from accepts that describes its model (a Hugging Face Llama directory, a
// GGUF, a bitqat run). The model is built as a fine-tune builds it (ternary BitLinear layers on
// layers.*), initialised from SOURCE, written as a checkpoint (model tensors and a fresh optimizer
// state of the same size, as a run's first checkpoint) under WORK_DIR (default /tmp), and read back
// into the model the way --resume reads it. Prints one line per phase and a JSON summary.
#include <fmt/format.h>

#include <chrono>
#include <filesystem>
#include <string>

#include "checkpoints/checkpoint.hpp"
#include "core/error.hpp"
#include "core/fs.hpp"
#include "interop/init_source.hpp"
#include "models/lm.hpp"
#include "models/state_dict.hpp"

namespace {

using Clock = std::chrono::steady_clock;

double gib(int64_t bytes) { return static_cast<double>(bytes) / (1 << 30); }

struct Phase {
  std::string name;
  double seconds;
  bitqat::core::MemoryUse mem;
};

}  // namespace

int main(int argc, char** argv) {
  using namespace bitqat;
  if (argc < 2) {
    fmt::print(stderr, "usage: import_bench SOURCE [WORK_DIR]\n");
    return 2;
  }
  try {
    const std::string source = argv[1];
    const std::string work = argc > 2 ? argv[2] : "/tmp";
    std::vector<Phase> phases;
    auto t = Clock::now();
    auto mark = [&](const std::string& name) {
      const auto now = Clock::now();
      phases.push_back({name, std::chrono::duration<double>(now - t).count(), core::memory_use()});
      const auto& p = phases.back();
      fmt::print("{:<34} {:7.1f} s   rss {:6.2f} GiB   peak {:6.2f} GiB\n", p.name, p.seconds, gib(p.mem.rss),
                 gib(p.mem.peak_rss));
      std::fflush(stdout);
      t = Clock::now();
    };
    mark("start");
    const auto lm_cfg = interop::read_init_source(source).lm;
    if (!lm_cfg) throw core::UserError(source + ": the source does not describe its model");
    mark("open source (metadata only)");
    models::BitLM lm(*lm_cfg, bitlinear::QuantSpec{}, std::vector<std::string>{"layers.*"}, std::vector<std::string>{});
    int64_t params = 0;
    for (const auto& p : lm->parameters()) params += p.numel();
    const int64_t fp32 = 4 * params;
    mark("build model (random init)");
    interop::init_model_from(source, *lm);
    mark("init_from");

    const auto dir = work + "/import_bench_checkpoints";
    std::filesystem::remove_all(dir);
    checkpoints::CheckpointData ck;
    ck.model = models::model_tensors(*lm, /*to_cpu=*/false);
    for (const auto& [name, p] : ck.model) {
      ck.optimizer.emplace_back(name + ".exp_avg", at::zeros_like(p));
      ck.optimizer.emplace_back(name + ".exp_avg_sq", at::zeros_like(p));
    }
    ck.state = {{"step", 0}};
    mark("optimizer state allocated (2x)");
    const auto written = checkpoints::write_checkpoint(dir, ck, 1);
    mark("checkpoint written");
    {
      const auto back = checkpoints::read_checkpoint(written);
      const auto release = [&back](const at::Tensor& x) { back.release(x); };
      models::load_model_tensors(*lm, models::lazy_tensors({back.model.begin(), back.model.end()}, release), written);
      // The optimizer state goes back into the tensors it came from, as AdamW's loader copies it.
      std::map<std::string, at::Tensor> opt(back.optimizer.begin(), back.optimizer.end());
      for (auto& [name, p] : ck.optimizer) {
        p.copy_(opt.at(name));
        back.release(opt.at(name));
      }
    }
    mark("checkpoint read back (as --resume)");
    std::filesystem::remove_all(dir);

    const auto peak_import = phases[3].mem.peak_rss;  // after init_from
    fmt::print(
        "{{\"source\": \"{}\", \"parameters\": {}, \"fp32_bytes\": {}, \"peak_rss_import\": {}, "
        "\"peak_rss_import_over_fp32\": {:.3f}, \"peak_rss_total\": {}, \"peak_rss_total_over_fp32\": {:.3f}}}\n",
        source, params, fp32, peak_import, static_cast<double>(peak_import) / static_cast<double>(fp32),
        phases.back().mem.peak_rss, static_cast<double>(phases.back().mem.peak_rss) / static_cast<double>(fp32));
    return 0;
  } catch (const core::UserError& e) {
    fmt::print(stderr, "import_bench: {}\n", e.what());
    return 2;
  }
}
