// Anchor translation unit for the shared precompiled header (see core/pch.hpp).
