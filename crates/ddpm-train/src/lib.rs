//! Training, data loading and sampling for ddpm-rs.
pub mod data;
