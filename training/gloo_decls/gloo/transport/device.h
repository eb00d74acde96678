// Declarations only: see training/gloo_decls/README.md.
#pragma once

namespace gloo::transport {
class Device;
class UnboundBuffer;
}  // namespace gloo::transport
