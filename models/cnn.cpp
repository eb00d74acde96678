#include "models/cnn.hpp"

#include "bitlinear/convert.hpp"

namespace bitqat::models {
namespace {

bitlinear::QuantSpec choose(bool selected, bitlinear::QuantSpec spec, bool conv) {
  if (!selected) {
    spec.weight.type = bitlinear::WeightQuant::kNone;
    spec.act.type = bitlinear::ActQuant::kNone;
  } else if (!conv && spec.weight.granularity == bitlinear::Granularity::kPerKernel) {
    spec.weight.granularity = bitlinear::Granularity::kPerChannel;
  }
  return spec;
}

}  // namespace

const core::Schema<CNNConfig>& CNNConfig::schema() {
  using C = CNNConfig;
  static const core::Schema<CNNConfig> s({
      core::key("channels1", &C::channels1, "output channels of conv1").range(1, 4096),
      core::key("channels2", &C::channels2, "output channels of conv2").range(1, 4096),
      core::key("hidden", &C::hidden, "width of fc1").range(1, 1 << 16),
      core::key("num_classes", &C::num_classes, "classes (the data's)").range(2, 1 << 16),
      core::key("batch_norm", &C::batch_norm, "batch normalisation after each convolution"),
      core::key("quantize_first", &C::quantize_first, "quantize conv1 too (the first layer stays full precision)"),
      core::key("quantize_last", &C::quantize_last, "quantize fc2 too (the last layer stays full precision)"),
  });
  return s;
}

CNNConfig CNNConfig::from_yaml(const core::Node& n) {
  CNNConfig c;
  schema().parse_into(n, &c, {"kind"});
  return c;
}

BitCNNImpl::BitCNNImpl(CNNConfig c, const bitlinear::QuantSpec& spec, const std::vector<std::string>& inc,
                       const std::vector<std::string>& exc)
    : config(c) {
  auto sel = [&](const std::string& name) { return bitlinear::name_selected(name, inc, exc); };
  bitlinear::BitConv2dOptions o1(1, c.channels1, 3);
  o1.padding = 1;
  o1.quant = choose(c.quantize_first && sel("conv1"), spec, true);
  conv1 = register_module("conv1", bitlinear::BitConv2d(o1));
  bitlinear::BitConv2dOptions o2(c.channels1, c.channels2, 3);
  o2.padding = 1;
  o2.quant = choose(sel("conv2"), spec, true);
  conv2 = register_module("conv2", bitlinear::BitConv2d(o2));
  if (c.batch_norm) {
    bn1 = register_module("bn1", torch::nn::BatchNorm2d(c.channels1));
    bn2 = register_module("bn2", torch::nn::BatchNorm2d(c.channels2));
  }
  bitlinear::BitLinearOptions l1(c.channels2 * 7 * 7, c.hidden);
  l1.bias = true;
  l1.quant = choose(sel("fc1"), spec, false);
  fc1 = register_module("fc1", bitlinear::BitLinear(l1));
  bitlinear::BitLinearOptions l2(c.hidden, c.num_classes);
  l2.bias = true;
  l2.quant = choose(c.quantize_last && sel("fc2"), spec, false);
  fc2 = register_module("fc2", bitlinear::BitLinear(l2));
}

at::Tensor BitCNNImpl::hidden(const at::Tensor& x) {
  auto h = conv1->forward(x);
  if (bn1) h = bn1->forward(h);
  h = at::max_pool2d(at::relu(h), {2, 2});
  h = conv2->forward(h);
  if (bn2) h = bn2->forward(h);
  h = at::max_pool2d(at::relu(h), {2, 2});
  return at::relu(fc1->forward(h.flatten(1)));
}

at::Tensor BitCNNImpl::features(const at::Tensor& x) { return hidden(x).to(at::kFloat); }

at::Tensor BitCNNImpl::forward(const at::Tensor& x) { return fc2->forward(hidden(x)).to(at::kFloat); }

at::Tensor BitCNNImpl::loss(const at::Tensor& images, const at::Tensor& labels) {
  return at::cross_entropy_loss(forward(images), labels);
}

}  // namespace bitqat::models
