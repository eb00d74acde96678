// Precompiled header for every LibTorch-using target: the heavy, stable headers only.
#pragma once
#include <torch/torch.h>
#include <yaml-cpp/yaml.h>
#include <spdlog/spdlog.h>
#include <fmt/format.h>
#include <string>
#include <vector>
#include <memory>
#include <functional>
