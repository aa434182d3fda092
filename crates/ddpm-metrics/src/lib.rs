//! Evaluation for ddpm-rs: FID / IS through a TorchScript Inception, domain metrics, bits/dim.
