// Declarations only: see training/gloo_decls/README.md.
#pragma once
