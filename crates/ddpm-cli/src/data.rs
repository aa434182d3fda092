//! `ddpm-cli data`: import datasets (the official files of MNIST, Fashion-MNIST and CIFAR-10, or a
//! folder of images) into HDF5, check a dataset file, look at it.
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use ddpm_train::data::{self, Expected};
use ddpm_train::image_folder::{self, FolderImport};

/// Dataset subcommands.
#[derive(clap::Subcommand)]
pub enum DataCommand {
    /// Convert a dataset into our HDF5 layout: the official files of a known dataset (`--name` with
    /// `--raw`), or a folder of your own PNG/JPEG images (`--images`).
    ///
    /// A folder is read recursively in sorted path order; each file is converted on its own to the
    /// chosen channels, resized so that its short side is --size (bicubic, antialiased) and
    /// centre-cropped to a square. The file is written atomically.
    #[command(group(clap::ArgGroup::new("input").required(true).args(["raw", "images"])))]
    Import {
        /// Known dataset of the files in --raw.
        #[arg(long, value_enum, requires = "raw")]
        name: Option<KnownDataset>,
        /// The official files: the folder of the four .gz IDX files (mnist, fashion-mnist), or the
        /// archive cifar-10-python.tar.gz (cifar10).
        #[arg(long, requires = "name", conflicts_with_all = FOLDER_OPTIONS)]
        raw: Option<PathBuf>,
        /// A folder of PNG and JPEG images (searched recursively).
        #[arg(long, conflicts_with = "name")]
        images: Option<PathBuf>,
        /// Output HDF5 file (written atomically; an existing file is replaced only when it is an
        /// HDF5 file).
        #[arg(long)]
        out: PathBuf,
        /// Published digest a file must match, as FILE=HEX (md5 or sha256); repeatable.
        #[arg(long = "expect", value_parser = parse_expected, requires = "raw")]
        expected: Vec<Expected>,
        #[command(flatten)]
        folder: FolderArgs,
    },
    /// Check that a dataset file has our layout (and, with --expect, came from the given files).
    Check {
        /// The HDF5 file.
        #[arg(long)]
        file: PathBuf,
        /// Digest the recorded source file must have, as FILE=HEX; repeatable.
        #[arg(long = "expect", value_parser = parse_expected)]
        expected: Vec<Expected>,
    },
    /// Print a summary of a dataset file and optionally write a grid of its first images.
    Summary {
        /// The HDF5 file.
        #[arg(long)]
        file: PathBuf,
        /// PNG grid of the first 100 training images.
        #[arg(long)]
        grid: Option<PathBuf>,
        /// Print the summary as one JSON object (sizes, classes, per split: images, pixel
        /// mean and std per channel, class counts).
        #[arg(long)]
        json: bool,
    },
}

/// Datasets with an importer for their official files.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum KnownDataset {
    /// MNIST: four gzipped IDX files.
    Mnist,
    /// Fashion-MNIST: four gzipped IDX files.
    FashionMnist,
    /// CIFAR-10: the python archive cifar-10-python.tar.gz.
    Cifar10,
}

impl KnownDataset {
    fn name(self) -> &'static str {
        match self {
            Self::Mnist => "mnist",
            Self::FashionMnist => "fashion-mnist",
            Self::Cifar10 => "cifar10",
        }
    }
}

/// How a crop is made.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum CropArg {
    /// Short side to --size, then the centre square.
    Center,
    /// The whole image resized to --size × --size (aspect ratio not kept).
    None,
}

/// Channels to convert every image to.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum ChannelsArg {
    /// Three channels.
    Rgb,
    /// One channel (PIL's luma).
    Grey,
}

/// Where class labels come from.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum LabelsArg {
    /// The first sub-folder below --images names the class (DIR/CLASS/…/FILE).
    Folders,
}

/// The options of [`FolderArgs`] (refused with `--raw`).
const FOLDER_OPTIONS: [&str; 9] = [
    "size",
    "crop",
    "channels",
    "labels",
    "test_fraction",
    "seed",
    "upscale",
    "skip_bad",
    "dataset_name",
];

/// Options of `data import --images`.
#[derive(clap::Args)]
pub struct FolderArgs {
    /// Image size N: short side to N, then an N×N crop (default: keep the files' size, which must
    /// then be one size).
    #[arg(long, requires = "images", value_parser = clap::value_parser!(u32).range(1..=4096))]
    size: Option<u32>,
    /// How to make the N×N square.
    #[arg(long, value_enum, default_value = "center", requires = "size")]
    crop: CropArg,
    /// Convert every image to these channels (default: as the files are, which must all be grey
    /// or all colour).
    #[arg(long, value_enum, requires = "images")]
    channels: Option<ChannelsArg>,
    /// Class labels (default: none).
    #[arg(long, value_enum, requires = "images")]
    labels: Option<LabelsArg>,
    /// Fraction of the images put into a /test split, drawn with --seed (default 0: train only).
    #[arg(
        long,
        default_value_t = 0.0,
        requires = "images",
        allow_negative_numbers = true
    )]
    test_fraction: f64,
    /// Seed of the train/test assignment.
    #[arg(long, default_value_t = 0, requires = "images")]
    seed: u64,
    /// Enlarge images whose short side is below --size (refused otherwise).
    #[arg(long, requires = "size")]
    upscale: bool,
    /// Leave out unreadable, corrupt, too small or odd-sized files (listed on stderr and in the
    /// file's `skipped` attribute) instead of stopping at the first.
    #[arg(long, requires = "images")]
    skip_bad: bool,
    /// Dataset name recorded in the file (default: the folder's name).
    #[arg(long = "dataset-name", requires = "images", value_parser = clap::builder::NonEmptyStringValueParser::new())]
    dataset_name: Option<String>,
    /// No progress bar.
    #[arg(long)]
    no_progress: bool,
}

impl FolderArgs {
    fn to_import(&self) -> FolderImport {
        use image_folder::{ChannelPolicy, Channels, Preprocess, Resize};
        let resize = match (self.size, self.crop) {
            (None, _) => Resize::Keep,
            (Some(n), CropArg::Center) => Resize::CenterCrop(n),
            (Some(n), CropArg::None) => Resize::Stretch(n),
        };
        let channels = match self.channels {
            None => ChannelPolicy::Uniform,
            Some(ChannelsArg::Rgb) => ChannelPolicy::Convert(Channels::Rgb),
            Some(ChannelsArg::Grey) => ChannelPolicy::Convert(Channels::Grey),
        };
        FolderImport {
            preprocess: Preprocess {
                resize,
                channels,
                upscale: self.upscale,
            },
            labels_from_folders: self.labels == Some(LabelsArg::Folders),
            test_fraction: self.test_fraction,
            seed: self.seed,
            skip_bad: self.skip_bad,
            name: self.dataset_name.clone(),
            progress: !self.no_progress,
        }
    }
}

fn parse_expected(s: &str) -> Result<Expected, String> {
    let (file, digest) = s
        .split_once('=')
        .ok_or_else(|| format!("`{s}` is not FILE=HEX"))?;
    let ok = matches!(digest.len(), 32 | 64) && digest.chars().all(|c| c.is_ascii_hexdigit());
    if !ok {
        return Err(format!(
            "`{digest}` is not an md5 (32) or sha256 (64) hex digest"
        ));
    }
    Ok(Expected {
        file: file.to_string(),
        digest: digest.to_ascii_lowercase(),
    })
}

pub fn run(cmd: DataCommand) -> Result<()> {
    match cmd {
        DataCommand::Import {
            name,
            raw,
            images,
            out,
            expected,
            folder,
        } => import(name, raw, images, &out, &expected, &folder),
        DataCommand::Check { file, expected } => {
            let s = data::check_dataset(&file)?;
            for e in &expected {
                let src = s
                    .sources
                    .iter()
                    .find(|f| f.name == e.file)
                    .with_context(|| {
                        format!("{}: records no source file {}", file.display(), e.file)
                    })?;
                let got = if e.digest.len() == 32 {
                    &src.digests.md5
                } else {
                    &src.digests.sha256
                };
                if got != &e.digest {
                    bail!(
                        "{}: source {} has digest {got}, expected {}",
                        file.display(),
                        e.file,
                        e.digest
                    );
                }
            }
            println!(
                "{}: valid ({} train, {} test)",
                file.display(),
                s.n_train,
                s.n_test
            );
            Ok(())
        }
        DataCommand::Summary { file, grid, json } => summary(&file, grid.as_deref(), json),
    }
}

fn import(
    name: Option<KnownDataset>,
    raw: Option<PathBuf>,
    images: Option<PathBuf>,
    out: &Path,
    expected: &[Expected],
    folder: &FolderArgs,
) -> Result<()> {
    crate::outputs::check_outputs(&[("--out", out, crate::outputs::HDF5)])?;
    refuse_non_hdf5_output(out)?;
    crate::signals::exit_on_signals("interrupted: nothing written")?;
    let summary = match (name, raw, images) {
        (_, _, Some(dir)) => {
            let report = image_folder::import_image_folder(&dir, out, &folder.to_import())?;
            for s in &report.skipped {
                eprintln!("skipped {}: {}", s.path.display(), s.reason);
            }
            report.summary
        }
        (Some(KnownDataset::Cifar10), Some(archive), None) => {
            ddpm_train::cifar10::import_cifar10(&archive, out, expected)?
        }
        (Some(known), Some(raw), None) => {
            data::import_idx_dataset(known.name(), &raw, out, expected)?
        }
        _ => bail!(crate::usage!(
            "give --name with --raw for a known dataset, or --images DIR for a folder"
        )),
    };
    println!(
        "{}: {} train + {} test images of {}x{}, {} ({}{})",
        out.display(),
        summary.n_train,
        summary.n_test,
        summary.image_hw.0,
        summary.image_hw.1,
        if summary.channels == 3 { "RGB" } else { "grey" },
        summary.name,
        match summary.class_names.len() {
            0 => String::new(),
            1 => ", 1 class".to_string(),
            k => format!(", {k} classes"),
        }
    );
    Ok(())
}

/// An existing `--out` is replaced only when it is an HDF5 file (by its signature), so that a
/// mistyped path cannot destroy an image or any other file.
fn refuse_non_hdf5_output(out: &Path) -> Result<()> {
    const SIGNATURE: &[u8] = b"\x89HDF\r\n\x1a\n";
    if !out.exists() {
        return Ok(());
    }
    let mut head = Vec::new();
    if out.is_file() {
        use std::io::Read;
        std::fs::File::open(out)
            .and_then(|f| f.take(8).read_to_end(&mut head))
            .with_context(|| format!("cannot read {}", out.display()))?;
    }
    if head != SIGNATURE {
        bail!(
            "--out {}: exists and is not an HDF5 file; not replacing it (choose another path)",
            out.display()
        );
    }
    Ok(())
}

fn summary(file: &Path, grid: Option<&Path>, as_json: bool) -> Result<()> {
    if let Some(path) = grid {
        crate::outputs::check_outputs(&[("--grid", path, crate::outputs::PNG)])?;
    }
    let s = data::check_dataset(file)?;
    let mut lines = vec![format!("dataset {} ({})", s.name, file.display())];
    lines.push(format!(
        "  image size   {}x{} uint8, {}",
        s.image_hw.0,
        s.image_hw.1,
        if s.channels == 3 { "RGB" } else { "grey" }
    ));
    if !s.class_names.is_empty() {
        let names: Vec<String> = s
            .class_names
            .iter()
            .enumerate()
            .map(|(k, n)| format!("{k}:{n}"))
            .collect();
        lines.push(format!("  classes      {}", names.join(" ")));
    }
    let mut splits = serde_json::Map::new();
    for split in ["train", "test"]
        .into_iter()
        .take(if s.n_test > 0 { 2 } else { 1 })
    {
        let (images, labels) = ddpm_train::h5images::read_split(file, split)?;
        let stats = pixel_stats(&images);
        lines.push(format!(
            "  {split:<5} {:>6} images, {}",
            images.dim().0,
            format_pixel_stats(&stats)
        ));
        let counts = labels.as_ref().map(|l| class_counts(l, &s.class_names));
        if let Some(counts) = &counts {
            let text: Vec<String> = counts.iter().map(|(n, c)| format!("{n}:{c}")).collect();
            lines.push(format!("        per class {}", text.join(" ")));
        }
        splits.insert(
            split.into(),
            serde_json::json!({
                "images": images.dim().0,
                "pixel_mean": stats.iter().map(|m| m.0).collect::<Vec<_>>(),
                "pixel_std": stats.iter().map(|m| m.1).collect::<Vec<_>>(),
                "class_counts": counts.map(|c| c.into_iter().collect::<serde_json::Map<_, _>>()),
            }),
        );
        if let (Some(path), "train") = (grid, split) {
            let k = images.dim().0.min(100);
            let img = ddpm_train::viz::grid(images.slice(ndarray::s![..k, .., .., ..]), 10);
            ddpm_train::viz::save_png(&img, path)?;
            lines.push(format!(
                "  grid of the first {k} training images: {}",
                path.display()
            ));
        }
    }
    if as_json {
        let doc = serde_json::json!({
            "file": file,
            "name": s.name,
            "height": s.image_hw.0,
            "width": s.image_hw.1,
            "channels": s.channels,
            "class_names": s.class_names,
            "splits": splits,
            "grid": grid,
        });
        println!("{doc}");
    } else {
        for l in lines {
            println!("{l}");
        }
    }
    Ok(())
}

/// Pixel mean and std (of 255) per channel.
fn pixel_stats(images: &ndarray::Array4<u8>) -> Vec<(f64, f64)> {
    (0..images.dim().3)
        .map(|k| {
            let ch = images.index_axis(ndarray::Axis(3), k);
            let n = ch.len() as f64;
            let mean = ch.iter().map(|&p| f64::from(p)).sum::<f64>() / n;
            let var = ch
                .iter()
                .map(|&p| (f64::from(p) - mean).powi(2))
                .sum::<f64>()
                / n;
            (mean, var.sqrt())
        })
        .collect()
}

/// `pixel mean M ± S (of 255)`, per channel for colour images.
fn format_pixel_stats(stats: &[(f64, f64)]) -> String {
    let text: Vec<String> = stats
        .iter()
        .map(|(mean, std)| format!("{mean:.2} ± {std:.2}"))
        .collect();
    let what = if stats.len() == 3 {
        "pixel mean ± std (R, G, B)"
    } else {
        "pixel mean ± std"
    };
    format!("{what} {} (of 255)", text.join(", "))
}

/// (class name or index, count) for each label present.
fn class_counts(
    labels: &ndarray::Array1<u8>,
    names: &[String],
) -> Vec<(String, serde_json::Value)> {
    let mut counts = [0usize; 256];
    for &l in labels {
        counts[usize::from(l)] += 1;
    }
    counts
        .iter()
        .enumerate()
        .filter(|(_, &c)| c > 0)
        .map(|(k, &c)| {
            let name = names.get(k).cloned().unwrap_or_else(|| k.to_string());
            (name, serde_json::json!(c))
        })
        .collect()
}
