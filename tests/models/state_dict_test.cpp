// Named tensors in and out of a module; lazy sources are read one tensor at a time, only after every
// name and shape was checked, and released once copied (what keeps imports at one model in memory).
#include "models/state_dict.hpp"

#include <gtest/gtest.h>
#include <torch/nn/modules/linear.h>

#include "core/error.hpp"

using namespace bitqat::models;

namespace {

struct Counts {
  int reads = 0, releases = 0, live = 0, max_live = 0;
};

LazyTensors lazy(const std::map<std::string, at::Tensor>& src, Counts* c) {
  LazyTensors out;
  for (const auto& [name, t] : src) {
    out[name] = LazyTensor{t.sizes().vec(),
                           [t, c] {
                             ++c->reads;
                             c->max_live = std::max(c->max_live, ++c->live);
                             return t.clone();
                           },
                           [c] {
                             ++c->releases;
                             --c->live;
                           }};
  }
  return out;
}

}  // namespace

TEST(StateDict, LazyTensorsAreReadOneAtATimeAfterEveryShapeIsChecked) {
  torch::nn::Linear m(torch::nn::LinearOptions(3, 2));
  const std::map<std::string, at::Tensor> good = {{"weight", at::arange(6, at::kFloat).reshape({2, 3})},
                                                  {"bias", at::tensor({7.0f, 8.0f})}};
  Counts c;
  load_model_tensors(*m, lazy(good, &c), "src");
  EXPECT_TRUE(m->weight.equal(good.at("weight")));
  EXPECT_TRUE(m->bias.equal(good.at("bias")));
  EXPECT_EQ(c.reads, 2);
  EXPECT_EQ(c.releases, 2);
  EXPECT_EQ(c.max_live, 1);

  // A wrong shape, a missing or an extra tensor is found before anything is read.
  auto bad = good;
  bad["bias"] = at::zeros({3});
  Counts d;
  EXPECT_THROW(load_model_tensors(*m, lazy(bad, &d), "src"), bitqat::core::UserError);
  bad = good;
  bad["extra"] = at::zeros({1});
  EXPECT_THROW(load_model_tensors(*m, lazy(bad, &d), "src"), bitqat::core::UserError);
  bad = good;
  bad.erase("weight");
  EXPECT_THROW(load_model_tensors(*m, lazy(bad, &d), "src"), bitqat::core::UserError);
  EXPECT_EQ(d.reads, 0);
  // Non-finite values are refused when read, naming the tensor.
  bad = good;
  bad["bias"] = at::tensor({1.0f, NAN});
  try {
    load_model_tensors(*m, lazy(bad, &d), "src");
    FAIL() << "expected an error";
  } catch (const bitqat::core::UserError& e) {
    EXPECT_NE(std::string(e.what()).find("src: tensor 'bias' holds 1 non-finite value(s)"), std::string::npos)
        << e.what();
  }
}
