//! Folders of PNG and JPEG images: the one reader of image folders in the workspace (`ddpm-cli
//! data import --images`, and the folder sources of evaluation).
//!
//! Every file is decoded and converted on its own (never from the first file's colour type, as
//! pytorch-fid does it): to 8-bit grey or RGB (alpha dropped, 16-bit reduced, as PIL's
//! `convert("L")` / `convert("RGB")`), then, when a size N is asked for, resized so that the short
//! side is N (antialiased bicubic, Catmull-Rom, a = −0.5 as PIL's `BICUBIC`; the long side is
//! `round(long · N / short)`) and centre-cropped to N×N (offsets `(W' − N) / 2` and `(H' − N) / 2`
//! rounded down, as improved-diffusion's `center_crop_arr`). A file whose short side is already N
//! is not resampled: its pixels are copied exactly.
use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use image::{imageops, DynamicImage, GrayImage, RgbImage};
use ndarray::{Array4, ArrayViewMut3};

use crate::data::{DataError, Result};

/// Channels of the images a caller wants.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Channels {
    /// One channel (PIL's `L`: `(19595 R + 38470 G + 7471 B + 2¹⁵) >> 16`).
    Grey,
    /// Three channels (grey files are replicated).
    Rgb,
}

impl Channels {
    /// 1 or 3.
    pub fn count(self) -> usize {
        match self {
            Self::Grey => 1,
            Self::Rgb => 3,
        }
    }
}

/// How the channels of a folder are decided.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ChannelPolicy {
    /// Convert every file to these channels.
    Convert(Channels),
    /// All files must agree (all grey or all colour); a folder that mixes them is an error naming
    /// the first file that differs from the first file (`data import` without `--channels`).
    Uniform,
    /// Grey when every file is grey, else RGB for all (evaluation: Inception needs RGB, the digit
    /// classifier grey).
    Promote,
}

/// What happens to each image's size.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Resize {
    /// Kept: every file must have the size of the first one.
    Keep,
    /// Short side to N, then the centre N×N crop.
    CenterCrop(u32),
    /// Resized to N×N, the aspect ratio not kept.
    Stretch(u32),
}

/// The preprocessing of a folder.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Preprocess {
    /// Size handling.
    pub resize: Resize,
    /// Channel handling.
    pub channels: ChannelPolicy,
    /// Allow enlarging images whose short side is below N (otherwise an error naming the file).
    pub upscale: bool,
}

impl Preprocess {
    /// Evaluation's reading of a folder: sizes kept, grey unless some file has colour.
    pub const EVAL: Preprocess = Preprocess {
        resize: Resize::Keep,
        channels: ChannelPolicy::Promote,
        upscale: false,
    };

    /// A one-line description recorded in imported files, e.g.
    /// `short side to 32 (bicubic, antialiased), centre crop 32x32; channels rgb`.
    pub fn describe(&self) -> String {
        let size = match self.resize {
            Resize::Keep => "size kept".to_string(),
            Resize::CenterCrop(n) => {
                format!("short side to {n} (bicubic, antialiased), centre crop {n}x{n}")
            }
            Resize::Stretch(n) => format!("resized to {n}x{n} (bicubic, antialiased)"),
        };
        let channels = match self.channels {
            ChannelPolicy::Convert(Channels::Grey) => "grey",
            ChannelPolicy::Convert(Channels::Rgb) => "rgb",
            ChannelPolicy::Uniform => "as the files (all alike)",
            ChannelPolicy::Promote => "grey unless a file has colour",
        };
        let up = if self.upscale {
            "; upscaling allowed"
        } else {
            ""
        };
        format!("{size}; channels {channels}{up}")
    }
}

/// A file left out by `skip_bad`, and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Skipped {
    /// The file.
    pub path: PathBuf,
    /// The error it gave.
    pub reason: String,
}

/// The images of a folder, `[N, H, W, C]` uint8, in the order of [`image_files`].
#[derive(Debug, Clone)]
pub struct FolderImages {
    /// The images.
    pub images: Array4<u8>,
    /// The file of each image.
    pub files: Vec<PathBuf>,
    /// Files left out (only with `skip_bad`).
    pub skipped: Vec<Skipped>,
}

fn is_image_file(p: &Path) -> bool {
    p.extension()
        .and_then(|e| e.to_str())
        .is_some_and(|e| ["png", "jpg", "jpeg"].contains(&e.to_ascii_lowercase().as_str()))
}

/// Whether a folder entry is left out: hidden names (`.git`, `._a.png`) and macOS archive
/// metadata (`__MACOSX`).
fn is_hidden(name: &std::ffi::OsStr) -> bool {
    let name = name.to_string_lossy();
    name.starts_with('.') || name == "__MACOSX"
}

/// The PNG and JPEG files (`.png`, `.jpg`, `.jpeg`, any case) under `dir`, sorted by path;
/// `recursive` descends into sub-folders, following symbolic links to folders (each folder is
/// visited once, so a link loop ends). Hidden files and folders (names starting with `.`) and
/// `__MACOSX` are left out.
///
/// Errors: [`DataError::Io`] naming an unreadable folder; [`DataError::Layout`] when there is no
/// image file.
pub fn image_files(dir: &Path, recursive: bool) -> Result<Vec<PathBuf>> {
    let mut files = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    let mut visited = BTreeSet::new();
    while let Some(d) = stack.pop() {
        let io = |source| DataError::Io {
            path: d.clone(),
            source,
        };
        if !visited.insert(d.canonicalize().map_err(io)?) {
            continue;
        }
        for entry in std::fs::read_dir(&d).map_err(io)? {
            let entry = entry.map_err(io)?;
            let path = entry.path();
            if is_hidden(&entry.file_name()) {
                continue;
            }
            // Follows symbolic links; a dangling link counts as a file (and fails to decode).
            let is_dir = path.is_dir();
            if is_dir && recursive {
                stack.push(path);
            } else if !is_dir && is_image_file(&path) {
                files.push(path);
            }
        }
    }
    if files.is_empty() {
        return Err(DataError::Layout {
            path: dir.to_path_buf(),
            message: format!(
                "no PNG or JPEG files (.png, .jpg, .jpeg){}",
                if recursive {
                    " in it or its sub-folders"
                } else {
                    ""
                }
            ),
        });
    }
    files.sort();
    Ok(files)
}

fn bad(path: &Path, message: impl Into<String>) -> DataError {
    DataError::Image {
        path: path.to_path_buf(),
        message: message.into(),
    }
}

/// Decodes one PNG or JPEG file (the format is read from the content, not the name). Errors name
/// the file: unreadable, empty (0 bytes), corrupt or not an image.
pub fn decode(path: &Path) -> Result<DynamicImage> {
    let bytes = std::fs::read(path).map_err(|source| DataError::Io {
        path: path.to_path_buf(),
        source,
    })?;
    if bytes.is_empty() {
        return Err(bad(path, "empty file (0 bytes)"));
    }
    image::ImageReader::new(std::io::Cursor::new(bytes))
        .with_guessed_format()
        .map_err(|e| bad(path, e.to_string()))?
        .decode()
        .map_err(|e| bad(path, format!("not a readable PNG or JPEG image: {e}")))
}

/// Luma of 8-bit RGB as PIL's `convert("L")` computes it (ITU-R 601-2, fixed point).
fn pil_luma(rgb: &RgbImage) -> GrayImage {
    GrayImage::from_fn(rgb.width(), rgb.height(), |x, y| {
        let [r, g, b] = rgb.get_pixel(x, y).0.map(u32::from);
        image::Luma([((r * 19595 + g * 38470 + b * 7471 + 0x8000) >> 16) as u8])
    })
}

/// One decoded file, in its own channels, at its final size.
enum Prepared {
    Grey(GrayImage),
    Rgb(RgbImage),
}

impl Prepared {
    fn dims(&self) -> (u32, u32) {
        match self {
            Self::Grey(g) => g.dimensions(),
            Self::Rgb(c) => c.dimensions(),
        }
    }

    fn is_grey(&self) -> bool {
        matches!(self, Self::Grey(_))
    }

    /// Writes the pixels into `out` (`[H, W, C]`) as `channels`.
    fn write(&self, channels: Channels, mut out: ArrayViewMut3<'_, u8>) {
        let out = out.as_slice_mut().expect("standard layout");
        match (self, channels) {
            (Self::Grey(g), Channels::Grey) => out.copy_from_slice(g.as_raw()),
            (Self::Rgb(c), Channels::Rgb) => out.copy_from_slice(c.as_raw()),
            (Self::Rgb(c), Channels::Grey) => out.copy_from_slice(pil_luma(c).as_raw()),
            (Self::Grey(g), Channels::Rgb) => {
                for (px, &v) in out.chunks_exact_mut(3).zip(g.as_raw()) {
                    px.fill(v);
                }
            }
        }
    }
}

/// The size after resizing the short side to `n`, or `None` when no resampling is needed.
fn short_side_to(w: u32, h: u32, n: u32) -> Option<(u32, u32)> {
    let short = w.min(h);
    if short == n {
        return None;
    }
    let scale =
        |long: u32| ((f64::from(long) * f64::from(n) / f64::from(short)).round() as u32).max(n);
    Some(if w <= h { (n, scale(h)) } else { (scale(w), n) })
}

fn resize_buf<P: image::Pixel<Subpixel = u8> + 'static>(
    img: &image::ImageBuffer<P, Vec<u8>>,
    resize: Resize,
) -> image::ImageBuffer<P, Vec<u8>> {
    let filter = imageops::FilterType::CatmullRom;
    let (w, h) = img.dimensions();
    match resize {
        Resize::Keep => img.clone(),
        Resize::Stretch(n) if (w, h) == (n, n) => img.clone(),
        Resize::Stretch(n) => imageops::resize(img, n, n, filter),
        Resize::CenterCrop(n) => {
            let scaled = match short_side_to(w, h, n) {
                Some((nw, nh)) => imageops::resize(img, nw, nh, filter),
                None => img.clone(),
            };
            let (sw, sh) = scaled.dimensions();
            imageops::crop_imm(&scaled, (sw - n) / 2, (sh - n) / 2, n, n).to_image()
        }
    }
}

fn prepare(img: &DynamicImage, path: &Path, pre: &Preprocess) -> Result<Prepared> {
    let (w, h) = (img.width(), img.height());
    if let Resize::CenterCrop(n) | Resize::Stretch(n) = pre.resize {
        if w.min(h) < n && !pre.upscale {
            return Err(bad(
                path,
                format!("{w}x{h} is smaller than the size {n} (allow enlarging with --upscale)"),
            ));
        }
    }
    let grey = match pre.channels {
        ChannelPolicy::Convert(c) => c == Channels::Grey,
        _ => !img.color().has_color(),
    };
    Ok(if grey && img.color().has_color() {
        Prepared::Grey(resize_buf(&pil_luma(&img.to_rgb8()), pre.resize))
    } else if grey {
        Prepared::Grey(resize_buf(&img.to_luma8(), pre.resize))
    } else {
        Prepared::Rgb(resize_buf(&img.to_rgb8(), pre.resize))
    })
}

/// The channels the prepared files end up with; for [`ChannelPolicy::Uniform`] an error naming
/// the first file that differs from the first one.
fn decide_channels(pre: &Preprocess, prepared: &[(PathBuf, Prepared)]) -> Result<Channels> {
    let colour = |p: &Prepared| if p.is_grey() { "grey" } else { "colour" };
    match pre.channels {
        ChannelPolicy::Convert(c) => Ok(c),
        ChannelPolicy::Promote if prepared.iter().all(|(_, p)| p.is_grey()) => Ok(Channels::Grey),
        ChannelPolicy::Promote => Ok(Channels::Rgb),
        ChannelPolicy::Uniform => {
            let (first_path, first) = &prepared[0];
            if let Some((p, other)) = prepared
                .iter()
                .find(|(_, p)| p.is_grey() != first.is_grey())
            {
                return Err(bad(
                    p,
                    format!(
                        "is {} but {} is {}: the folder mixes grey and colour images \
                         (choose --channels rgb or --channels grey)",
                        colour(other),
                        first_path.display(),
                        colour(first)
                    ),
                ));
            }
            Ok(if first.is_grey() {
                Channels::Grey
            } else {
                Channels::Rgb
            })
        }
    }
}

/// Reads `files` (e.g. from [`image_files`]) with the preprocessing `pre`, calling `on_file` after
/// each file (a progress bar).
///
/// With `skip_bad`, a file that cannot be read or decoded, or is too small or of another size than
/// the first file, is left out and listed in [`FolderImages::skipped`]; otherwise its error,
/// naming the file, ends the read.
///
/// Errors: [`DataError::Image`] / [`DataError::Io`] naming a file; [`DataError::Layout`] naming
/// the first file when nothing is left after skipping.
pub fn read_files(
    files: &[PathBuf],
    pre: &Preprocess,
    skip_bad: bool,
    mut on_file: impl FnMut(),
) -> Result<FolderImages> {
    let mut prepared: Vec<(PathBuf, Prepared)> = Vec::with_capacity(files.len());
    let mut skipped = Vec::new();
    for path in files {
        let one = decode(path).and_then(|img| prepare(&img, path, pre));
        let one = one.and_then(|p| match prepared.first() {
            Some((first, f)) if f.dims() != p.dims() => Err(bad(
                path,
                format!(
                    "is {}x{} but {} is {}x{}; all images must have one size \
                     (`data import --size N` makes them N×N)",
                    p.dims().0,
                    p.dims().1,
                    first.display(),
                    f.dims().0,
                    f.dims().1
                ),
            )),
            _ => Ok(p),
        });
        match one {
            Ok(p) => prepared.push((path.clone(), p)),
            Err(e) if skip_bad => {
                let reason = match e {
                    DataError::Image { message, .. } => message,
                    other => other.to_string(),
                };
                skipped.push(Skipped {
                    path: path.clone(),
                    reason,
                });
            }
            Err(e) => return Err(e),
        }
        on_file();
    }
    if prepared.is_empty() {
        let folder = files
            .first()
            .and_then(|f| f.parent())
            .unwrap_or(Path::new("."));
        return Err(DataError::Layout {
            path: folder.to_path_buf(),
            message: format!(
                "none of the {} image files could be used (all were skipped)",
                files.len()
            ),
        });
    }
    let channels = decide_channels(pre, &prepared)?;
    let (w, h) = prepared[0].1.dims();
    let mut images =
        Array4::<u8>::zeros((prepared.len(), h as usize, w as usize, channels.count()));
    for ((_, p), out) in prepared.iter().zip(images.outer_iter_mut()) {
        p.write(channels, out);
    }
    Ok(FolderImages {
        images,
        files: prepared.into_iter().map(|(p, _)| p).collect(),
        skipped,
    })
}

/// Class labels from sub-folder names: the class of a file is the first folder of its path below
/// `root`; classes are the sorted folder names, numbered from 0 (as torchvision's `ImageFolder`).
///
/// Errors: [`DataError::Layout`] naming a file directly in `root` (it has no class folder), or
/// when there are more than 256 classes (labels are uint8).
pub fn folder_labels(root: &Path, files: &[PathBuf]) -> Result<(Vec<u8>, Vec<String>)> {
    let class_of = |p: &PathBuf| -> Result<String> {
        let rel = p.strip_prefix(root).unwrap_or(p);
        let mut parts = rel.components();
        match (parts.next(), parts.next()) {
            (Some(dir), Some(_)) => Ok(dir.as_os_str().to_string_lossy().into_owned()),
            _ => Err(DataError::Layout {
                path: p.clone(),
                message: format!(
                    "is not inside a class folder of {} (labels from folders need DIR/CLASS/…/FILE)",
                    root.display()
                ),
            }),
        }
    };
    let classes: Vec<String> = files.iter().map(class_of).collect::<Result<_>>()?;
    let names: Vec<String> = classes
        .iter()
        .cloned()
        .collect::<BTreeSet<_>>()
        .into_iter()
        .collect();
    if names.len() > 256 {
        return Err(DataError::Layout {
            path: root.to_path_buf(),
            message: format!(
                "{} class folders; at most 256 fit uint8 labels",
                names.len()
            ),
        });
    }
    let labels = classes
        .iter()
        .map(|c| names.binary_search(c).expect("a class of the list") as u8)
        .collect();
    Ok((labels, names))
}

/// What `ddpm-cli data import --images` asks for.
#[derive(Debug, Clone)]
pub struct FolderImport {
    /// Size and channel handling.
    pub preprocess: Preprocess,
    /// Class labels from the sub-folder names ([`folder_labels`]).
    pub labels_from_folders: bool,
    /// Fraction of the images that go to `/test` (0 = no test split), chosen by `seed`.
    pub test_fraction: f64,
    /// Seed of the train/test assignment.
    pub seed: u64,
    /// Leave out files that cannot be used (listed in the file and on stderr) instead of failing.
    pub skip_bad: bool,
    /// Dataset name recorded in the file (default: the folder's name).
    pub name: Option<String>,
    /// Show a progress bar.
    pub progress: bool,
}

/// What [`import_image_folder`] wrote.
#[derive(Debug, Clone)]
pub struct FolderImportReport {
    /// The file's summary, read back.
    pub summary: crate::data::DatasetSummary,
    /// Files left out.
    pub skipped: Vec<Skipped>,
}

/// The memory of this machine in bytes (`MemTotal` of `/proc/meminfo`), when it can be read.
fn total_memory() -> Option<u64> {
    let info = std::fs::read_to_string("/proc/meminfo").ok()?;
    let kb: u64 = info
        .lines()
        .find_map(|l| l.strip_prefix("MemTotal:"))?
        .trim()
        .trim_end_matches("kB")
        .trim()
        .parse()
        .ok()?;
    Some(kb * 1024)
}

/// Refuses a size of 0, and an import whose images (held twice while they are assembled) would
/// not fit in this machine's memory, before any file is read.
fn check_output_size(dir: &Path, n_files: usize, pre: &Preprocess) -> Result<()> {
    let n = match pre.resize {
        Resize::Keep => return Ok(()),
        Resize::CenterCrop(n) | Resize::Stretch(n) => u64::from(n),
    };
    let layout = |message: String| DataError::Layout {
        path: dir.to_path_buf(),
        message,
    };
    if n == 0 {
        return Err(layout("the image size must be at least 1".to_string()));
    }
    let need = 2 * n_files as u64 * n * n * 3;
    match total_memory() {
        Some(have) if need > have => Err(layout(format!(
            "{n_files} images of {n}x{n} need about {:.1} GB of memory to import; this machine \
             has {:.1} GB (choose a smaller --size)",
            need as f64 / 1e9,
            have as f64 / 1e9
        ))),
        _ => Ok(()),
    }
}

/// The indices of the test split: `round(fraction · n)` of `0..n` drawn with `seed`, sorted.
pub fn test_indices(n: usize, fraction: f64, seed: u64) -> Vec<usize> {
    use rand::seq::SliceRandom;
    use rand::SeedableRng;
    let k = (fraction * n as f64).round() as usize;
    let mut idx: Vec<usize> = (0..n).collect();
    idx.shuffle(&mut rand::rngs::StdRng::seed_from_u64(seed));
    let mut test = idx[..k.min(n)].to_vec();
    test.sort_unstable();
    test
}

/// Imports the PNG and JPEG files under `dir` (recursively, sorted by path) into the dataset file
/// `out` (our layout, see [`crate::data`]): `/train/images` uint8 `[N, H, W, C]`, `/train/labels`
/// with the class names when labels come from folders, `/test/…` when a test fraction is asked
/// for, and attributes `source_folder`, `file_count`, `preprocessing` and `skipped`. Written
/// atomically: on any error no `out` is created and an existing one is kept.
///
/// Errors name the file or folder: an empty folder, an unreadable, empty or corrupt file, an image
/// smaller than the size without `upscale`, one of another size without a size, a folder mixing
/// grey and colour without a channel choice (all but the last skipped with `skip_bad`); a test
/// fraction outside [0, 1) or one that leaves a split empty.
pub fn import_image_folder(
    dir: &Path,
    out: &Path,
    opts: &FolderImport,
) -> Result<FolderImportReport> {
    let layout = |message: String| DataError::Layout {
        path: dir.to_path_buf(),
        message,
    };
    if !(0.0..1.0).contains(&opts.test_fraction) {
        return Err(layout(format!(
            "test fraction {} is outside [0, 1)",
            opts.test_fraction
        )));
    }
    let files = image_files(dir, true)?;
    check_output_size(dir, files.len(), &opts.preprocess)?;
    let bar = crate::progress::bar(opts.progress, files.len() as u64, "images", "import");
    let read = read_files(&files, &opts.preprocess, opts.skip_bad, || bar.inc(1))?;
    bar.finish_and_clear();
    let (labels, class_names) = if opts.labels_from_folders {
        let (l, names) = folder_labels(dir, &read.files)?;
        (Some(ndarray::Array1::from_vec(l)), names)
    } else {
        (None, Vec::new())
    };
    let n = read.files.len();
    let test = test_indices(n, opts.test_fraction, opts.seed);
    if opts.test_fraction > 0.0 && (test.is_empty() || test.len() == n) {
        return Err(layout(format!(
            "a test fraction of {} of {n} images leaves a split empty",
            opts.test_fraction
        )));
    }
    let train: Vec<usize> = (0..n).filter(|i| test.binary_search(i).is_err()).collect();
    let pick = |idx: &[usize]| read.images.select(ndarray::Axis(0), idx);
    let pick_labels = |idx: &[usize]| labels.as_ref().map(|l| l.select(ndarray::Axis(0), idx));
    let parts = [("train", train), ("test", test)];
    let arrays: Vec<_> = parts
        .iter()
        .filter(|(_, idx)| !idx.is_empty())
        .map(|(name, idx)| (*name, pick(idx), pick_labels(idx)))
        .collect();
    let splits: Vec<crate::data::SplitData<'_>> = arrays
        .iter()
        .map(|(name, images, labels)| crate::data::SplitData {
            name,
            images: images.view().into_dyn(),
            labels: labels.as_ref().map(|l| l.view()),
        })
        .collect();
    let name = opts.name.clone().unwrap_or_else(|| {
        dir.canonicalize()
            .ok()
            .and_then(|d| d.file_name().map(|f| f.to_string_lossy().into_owned()))
            .unwrap_or_else(|| "images".to_string())
    });
    let skipped: Vec<String> = read
        .skipped
        .iter()
        .map(|s| format!("{}: {}", s.path.display(), s.reason))
        .collect();
    let attrs = [
        (
            "source_folder",
            dir.canonicalize()
                .unwrap_or(dir.to_path_buf())
                .display()
                .to_string(),
        ),
        ("file_count", files.len().to_string()),
        ("preprocessing", opts.preprocess.describe()),
        ("skipped", skipped.join("\n")),
    ];
    let record = crate::data::DatasetRecord {
        name: &name,
        class_names: &class_names,
        sources: &[],
        attrs: &attrs,
    };
    crate::data::write_dataset(out, &splits, &record)?;
    Ok(FolderImportReport {
        summary: crate::data::check_dataset(out)?,
        skipped: read.skipped,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn short_side_resizing_keeps_the_aspect_and_skips_exact_sizes() {
        assert_eq!(short_side_to(37, 23, 23), None);
        assert_eq!(short_side_to(64, 48, 32), Some((43, 32)));
        assert_eq!(short_side_to(48, 64, 32), Some((32, 43)));
        assert_eq!(short_side_to(10, 10, 20), Some((20, 20)));
    }

    #[test]
    fn luma_is_pils() {
        let rgb = RgbImage::from_pixel(1, 1, image::Rgb([255, 0, 0]));
        // PIL: Image.new("RGB", (1, 1), (255, 0, 0)).convert("L").getpixel((0, 0)) == 76
        assert_eq!(pil_luma(&rgb).get_pixel(0, 0).0, [76]);
        let white = RgbImage::from_pixel(1, 1, image::Rgb([255, 255, 255]));
        assert_eq!(pil_luma(&white).get_pixel(0, 0).0, [255]);
        let grey = RgbImage::from_pixel(1, 1, image::Rgb([77, 77, 77]));
        assert_eq!(pil_luma(&grey).get_pixel(0, 0).0, [77]);
    }
}
