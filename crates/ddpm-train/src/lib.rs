//! Training, data loading and sampling for ddpm-rs.
//!
//! [`data`] writes and checks dataset files (and imports the official IDX files), [`image_folder`]
//! reads folders of PNG/JPEG images, [`cifar10`] imports the CIFAR-10 archive, [`fit`] fits a
//! config to a dataset file; [`loader`] turns a split into
//! seeded training batches; [`tables`] is the one place where ddpm-math's f64 tables become device
//! tensors; [`objective`] and [`sampler`] are the training losses and reverse processes on tensors;
//! [`engine`] is the one training loop, which drives the [`tasks`] (DDPM, GAN, VAE, digit
//! classifier) with [`optim`] (Adam/AdamW, EMA) and writes [`run_dir`] (checkpoints, logs) and [`tensorboard`] event files, on one
//! process or as one of several ([`parallel`]: data-parallel over ddpm-dist's c10d process group);
//! [`baselines`] loads and samples the GAN and VAE, [`classifier`] saves, loads and scores the
//! digit classifier of the domain metrics, and [`bench`] times the engine's step; [`h5images`] reads and writes the HDF5 image
//! sets ([`h5check`] refuses files on which HDF5 would hang), [`viz`] draws grids and plots, and [`progress`] is the one progress-bar style.
pub mod baselines;
pub mod bench;
pub mod cifar10;
pub mod classifier;
pub mod config;
pub mod data;
pub mod engine;
pub mod error;
pub mod fit;
pub mod h5check;
pub mod h5images;
pub mod image_folder;
pub mod loader;
pub mod manifest;
pub mod model_io;
pub mod noise_file;
pub mod objective;
pub mod optim;
pub mod parallel;
pub mod progress;
pub mod run_dir;
pub mod run_lock;
pub mod sampler;
pub mod scheduler_config;
pub mod tables;
pub mod tasks;
pub mod tensorboard;
pub mod viz;

pub use config::TrainConfig;
pub use error::{Result, TrainError};
pub use tasks::train;
