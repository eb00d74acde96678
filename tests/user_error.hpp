// Test helper: the message of the error a call throws (by default core::UserError, the bad-input
// errors: config, data, checkpoint and model files), or "" when it throws none. Another exception
// type propagates and fails the test.
#pragma once
#include <functional>
#include <string>

#include "core/error.hpp"

namespace bitqat::testing {

template <class Error = core::UserError>
std::string error_of(const std::function<void()>& fn) {
  try {
    fn();
  } catch (const Error& e) {
    return e.what();
  }
  return "";
}

}  // namespace bitqat::testing
