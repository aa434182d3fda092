//! Closed-form DDPM / Improved-DDPM math on `ndarray`, in f64 (no torch, no I/O).
