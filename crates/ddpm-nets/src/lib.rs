//! Networks for ddpm-rs on tch, and the device they run on.
//!
//! The DDPM ε-network ([`unet::UNet2DModel`], diffusers' `UNet2DModel` layout and names, loaded from diffusers
//! folders by [`diffusers`]), and the baselines of the lecture's comparison: a DCGAN ([`gan`]), a convolutional
//! VAE with the DDPM decoder's discretised likelihood ([`vae`]) and a digit classifier ([`classifier`]).
pub mod atomic;
pub mod autocast;
pub mod blocks;
pub mod checkpoint;
pub mod classifier;
pub mod cpu_threads;
pub mod device;
pub mod diffusers;
pub mod embeddings;
pub mod error;
pub mod fast;
pub mod gan;
pub mod host_memory;
pub mod unet;
pub mod vae;

pub use error::{Error, Result};
pub use unet::{UNet2DModel, UNetConfig};
