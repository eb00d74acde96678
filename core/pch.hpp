// Precompiled header for every LibTorch-using target: the heavy, stable headers only.
#pragma once
#include <fmt/format.h>
#include <spdlog/spdlog.h>
#include <torch/torch.h>
#include <yaml-cpp/yaml.h>
#include <functional>
#include <memory>
#include <string>
#include <vector>
