//! Networks for ddpm-rs on tch, and the device they run on.
pub mod device;
