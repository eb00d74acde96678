// Exception types of bitqat: user errors (config, data, checkpoint, command line) carry a message
// that says where and what was expected; internal errors are asserts.
#pragma once
#include <stdexcept>
#include <string>

namespace bitqat::core {

// A mistake in something the user gave us: a config, a data file, a checkpoint, a flag.
class UserError : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};

// A config value that is missing, of the wrong type, out of range or unknown.
class ConfigError : public UserError {
 public:
  using UserError::UserError;
};

}  // namespace bitqat::core
