//! Mutation fuzzing of ddpm-train's readers of outside data (issue 16): gzipped IDX files, our
//! HDF5 dataset and sample files, diffusers' `scheduler_config.json`, the TOML training config and
//! its `--set` overrides, PNG/JPEG images and sampling-noise files. Every mutated input must give
//! `Ok` or an error naming the file (or the config key); a panic fails the case.
//! `PROPTEST_CASES` sets the number of cases of every target.
#[path = "../../ddpm-nets/tests/fuzz_support/mod.rs"]
mod fuzz_support;

use std::io::Write;
use std::path::{Path, PathBuf};

use ddpm_train::data::{self, DatasetRecord, SplitData};
use ddpm_train::image_folder::{self, ChannelPolicy, Preprocess, Resize};
use ddpm_train::noise_file::ChainNoise;
use ddpm_train::{h5images, scheduler_config, TrainConfig, TrainError};
use fuzz_support::{apply, bad_token, config, mutated_text, mutations};
use ndarray::{Array1, Array3, Array4};
use proptest::prelude::*;
use tch::{Device, Kind, Tensor};

/// Writes `bytes` to a fresh file named `name` in a temporary folder.
fn write_temp(name: &str, bytes: &[u8]) -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join(name);
    std::fs::write(&path, bytes).unwrap();
    (dir, path)
}

/// The error of a reader must name the file it read.
fn assert_names<E: std::fmt::Display>(result: Result<impl Sized, E>, path: &Path) {
    if let Err(e) = result {
        let msg = e.to_string();
        let name = path.file_name().unwrap().to_string_lossy();
        assert!(
            msg.contains(name.as_ref()),
            "error does not name {name}: {msg}"
        );
    }
}

fn gzip(bytes: &[u8]) -> Vec<u8> {
    let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    enc.write_all(bytes).unwrap();
    enc.finish().unwrap()
}

/// An IDX pair: images `[3, 4, 5]` and labels `[3]`, uncompressed.
fn idx_seed() -> (Vec<u8>, Vec<u8>) {
    let images = Array1::from_iter((0..60).map(|i| i as u8));
    let labels = Array1::from_vec(vec![0u8, 1, 2]);
    (
        data::encode_idx(&[3, 4, 5], images.view()),
        data::encode_idx(&[3], labels.view()),
    )
}

/// Reads an IDX pair written (gzipped) to a folder, as the importer does.
fn check_idx_pair(images_gz: &[u8], labels_gz: &[u8]) {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("i.gz"), images_gz).unwrap();
    std::fs::write(dir.path().join("l.gz"), labels_gz).unwrap();
    if let Err(e) = data::read_idx_split(dir.path(), "i.gz", "l.gz", &[]) {
        let msg = e.to_string();
        assert!(msg.contains("i.gz") || msg.contains("l.gz"), "{msg}");
    }
}

/// A dataset file from our writer: train and test splits with labels, class names, a source.
fn dataset_seed() -> Vec<u8> {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("seed.h5");
    let train = Array3::from_shape_fn((3, 4, 4), |(i, y, x)| (i * 16 + y * 4 + x) as u8);
    let test = Array3::from_shape_fn((2, 4, 4), |(i, y, x)| (i + y + x) as u8);
    let (lt, le) = (
        Array1::from_vec(vec![0u8, 1, 0]),
        Array1::from_vec(vec![1u8, 0]),
    );
    let splits = [
        SplitData {
            name: "train",
            images: train.view().into_dyn(),
            labels: Some(lt.view()),
        },
        SplitData {
            name: "test",
            images: test.view().into_dyn(),
            labels: Some(le.view()),
        },
    ];
    let digests = data::Digests::of(b"archive");
    let sources = [(
        "archive",
        data::SourceFile {
            name: "a.tar.gz".into(),
            digests,
        },
    )];
    let names = ["zero".to_string(), "one".to_string()];
    let record = DatasetRecord {
        name: "seed",
        class_names: &names,
        sources: &sources,
        attrs: &[],
    };
    data::write_dataset(&path, &splits, &record).unwrap();
    std::fs::read(&path).unwrap()
}

/// A sample file from our writer: `/images` `[2, 3, 3, 3]` and labels.
fn samples_seed() -> Vec<u8> {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("seed.h5");
    let images = Array4::from_shape_fn((2, 3, 3, 3), |(i, y, x, c)| (i + y + x + c) as u8);
    let labels = Array1::from_vec(vec![3u8, 4]);
    h5images::write_images(&path, images.view(), Some(labels.view()), &[("k", "v")]).unwrap();
    std::fs::read(&path).unwrap()
}

fn check_hdf5(bytes: &[u8]) {
    let (_dir, path) = write_temp("fuzz.h5", bytes);
    assert_names(data::check_dataset(&path), &path);
    assert_names(h5images::read_split(&path, "train"), &path);
    assert_names(h5images::read_split(&path, "test"), &path);
    assert_names(data::load_split(&path, "train"), &path);
    assert_names(h5images::read_images(&path, "images", Some(1)), &path);
    assert_names(h5images::read_labels(&path, "labels", None), &path);
}

fn scheduler_seed(which: usize) -> String {
    let name = [
        "ddpm_base",
        "dpm_base",
        "ddim_trained_betas",
        "ddpm_learned_range",
    ][which];
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/schedulers");
    std::fs::read_to_string(dir.join(format!("{name}.json"))).unwrap()
}

fn toml_seed() -> String {
    TrainConfig::preset("mnist-cpu").unwrap().to_toml()
}

/// Tiny images in every decoder path: grey and RGB PNG, RGB JPEG.
fn image_seeds() -> Vec<(&'static str, Vec<u8>)> {
    let encode = |img: image::DynamicImage, format| {
        let mut out = std::io::Cursor::new(Vec::new());
        img.write_to(&mut out, format).unwrap();
        out.into_inner()
    };
    let rgb = image::RgbImage::from_fn(9, 7, |x, y| image::Rgb([x as u8 * 20, y as u8 * 30, 7]));
    let grey = image::GrayImage::from_fn(8, 8, |x, y| image::Luma([(x * y) as u8]));
    vec![
        ("a.png", encode(grey.into(), image::ImageFormat::Png)),
        ("b.png", encode(rgb.clone().into(), image::ImageFormat::Png)),
        ("c.jpg", encode(rgb.into(), image::ImageFormat::Jpeg)),
    ]
}

const PREPROCESS: [Preprocess; 3] = [
    Preprocess::EVAL,
    Preprocess {
        resize: Resize::CenterCrop(8),
        channels: ChannelPolicy::Uniform,
        upscale: true,
    },
    Preprocess {
        resize: Resize::Stretch(6),
        channels: ChannelPolicy::Promote,
        upscale: false,
    },
];

fn check_image(name: &str, bytes: &[u8], pre: &Preprocess) {
    let (_dir, path) = write_temp(name, bytes);
    assert_names(
        image_folder::read_files(std::slice::from_ref(&path), pre, false, || {}),
        &path,
    );
}

/// A noise file of each format, written by [`ChainNoise::write`].
fn noise_seeds() -> Vec<(&'static str, Vec<u8>)> {
    let dir = tempfile::tempdir().unwrap();
    let opts = (Kind::Float, Device::Cpu);
    let with_steps = ChainNoise {
        x_t: Tensor::randn([2, 1, 3, 3], opts),
        step_noise: Some(Tensor::randn([2, 2, 1, 3, 3], opts)),
    };
    let plain = ChainNoise {
        x_t: Tensor::randn([1, 1, 2, 2], opts),
        step_noise: None,
    };
    let mut out = Vec::new();
    for (name, noise) in [
        ("n.safetensors", &with_steps),
        ("n.npz", &with_steps),
        ("n.npy", &plain),
    ] {
        let path = dir.path().join(name);
        noise.write(&path).unwrap();
        out.push((name, std::fs::read(&path).unwrap()));
    }
    out
}

proptest! {
    #![proptest_config(config(256))]

    #[test]
    fn idx_parser_never_panics(muts in mutations(6), labels in any::<bool>()) {
        let (images, label_bytes) = idx_seed();
        let seed = if labels { label_bytes } else { images };
        let _ = data::parse_idx(&apply(&seed, &muts), Path::new("x.idx"));
    }

    #[test]
    fn idx_gzip_reader_never_panics(muts in mutations(6), which in 0..4u8) {
        let (images, labels) = idx_seed();
        match which {
            0 => check_idx_pair(&apply(&gzip(&images), &muts), &gzip(&labels)),
            1 => check_idx_pair(&gzip(&images), &apply(&gzip(&labels), &muts)),
            2 => check_idx_pair(&gzip(&apply(&images, &muts)), &gzip(&labels)),
            _ => check_idx_pair(&gzip(&images), &gzip(&apply(&labels, &muts))),
        }
    }
}

/// Set for the child process of [`hdf5_readers_never_panic`]: the folder of files to read.
const HDF5_CHILD_DIR: &str = "DDPM_FUZZ_HDF5_DIR";

/// The HDF5 C library can hang on a corrupt file (see `/work/notes/fuzz-report.md`), and a hung
/// call holds its global lock: the mutated files are read by a child process (this binary, running
/// [`hdf5_child_reads_a_folder`]) under a time limit, and the file it was reading when it hung or
/// crashed is named.
#[test]
fn hdf5_readers_never_panic() {
    use proptest::strategy::ValueTree;
    let n = fuzz_support::cases(96);
    let dir = tempfile::tempdir().unwrap();
    let mut runner = proptest::test_runner::TestRunner::new(config(96));
    let (dataset, samples) = (dataset_seed(), samples_seed());
    for i in 0..n {
        let (muts, which) = (mutations(8), any::<bool>())
            .new_tree(&mut runner)
            .unwrap()
            .current();
        let seed = if which { &samples } else { &dataset };
        std::fs::write(
            dir.path().join(format!("case-{i:06}.h5")),
            apply(seed, &muts),
        )
        .unwrap();
    }
    let status = read_in_child(dir.path(), 60 + u64::from(n) / 4);
    if status.is_some_and(|s| s.success()) {
        return;
    }
    let progress = std::fs::read_to_string(dir.path().join("progress.log")).unwrap_or_default();
    let last = progress.lines().last().unwrap_or("(none)").to_string();
    let kept = dir.keep();
    panic!(
        "the HDF5 readers {} on {last} (all cases kept in {})",
        if status.is_none() {
            "hung"
        } else {
            "failed or crashed"
        },
        kept.display()
    );
}

/// Reads the `.h5` files of `dir` in a child process ([`hdf5_child_reads_a_folder`]); its exit
/// status, or `None` when it was killed after `limit_s` seconds (it hung).
fn read_in_child(dir: &Path, limit_s: u64) -> Option<std::process::ExitStatus> {
    let mut child = std::process::Command::new(std::env::current_exe().unwrap())
        .args([
            "--exact",
            "hdf5_child_reads_a_folder",
            "--nocapture",
            "--test-threads=1",
        ])
        .env(HDF5_CHILD_DIR, dir)
        .stdout(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(limit_s);
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            return Some(status);
        }
        if std::time::Instant::now() > deadline {
            child.kill().unwrap();
            child.wait().unwrap();
            return None;
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
}

/// Reads every `case-*.h5` of the folder in `DDPM_FUZZ_HDF5_DIR` with every HDF5 reader, writing
/// each name to `progress.log` before reading it; without the variable, reads the two seeds.
#[test]
fn hdf5_child_reads_a_folder() {
    let Some(dir) = std::env::var_os(HDF5_CHILD_DIR).map(PathBuf::from) else {
        check_hdf5(&dataset_seed());
        check_hdf5(&samples_seed());
        return;
    };
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "h5"))
        .collect();
    files.sort();
    let mut progress = std::fs::File::create(dir.join("progress.log")).unwrap();
    for file in files {
        writeln!(progress, "{}", file.display()).unwrap();
        progress.sync_data().unwrap();
        check_hdf5(&std::fs::read(&file).unwrap());
    }
}

proptest! {
    #![proptest_config(config(256))]

    #[test]
    fn scheduler_config_reader_never_panics(
        (seed, bytes) in (0..4usize).prop_flat_map(|i| (Just(i), mutated_text(scheduler_seed(i), 4))),
        learned in any::<bool>(),
    ) {
        let _ = seed;
        let (_dir, path) = write_temp("scheduler_config.json", &bytes);
        assert_names(scheduler_config::read(&path, learned), &path);
    }

    #[test]
    fn train_config_reader_never_panics(bytes in mutated_text(toml_seed(), 4)) {
        let (_dir, path) = write_temp("train.toml", &bytes);
        match TrainConfig::from_file(&path) {
            Ok(c) => { let _ = c.validate(); let _ = c.to_toml(); }
            Err(e) => {
                let msg = e.to_string();
                prop_assert!(msg.contains("train.toml"), "{}", msg);
            }
        }
    }

    #[test]
    fn train_config_overrides_never_panic(
        sets in prop::collection::vec((any::<prop::sample::Index>(), bad_token(), any::<bool>()), 1..4),
    ) {
        let base = TrainConfig::preset("mnist-cpu").unwrap();
        let keys: Vec<String> =
            ddpm_train::config::dotted_values(&toml::Value::try_from(&base).unwrap())
                .into_keys()
                .collect();
        let overrides: Vec<String> = sets
            .iter()
            .map(|(i, v, odd)| {
                let key = i.get(&keys);
                if *odd { format!("{key}.x={v}") } else { format!("{key}={v}") }
            })
            .collect();
        match base.with_overrides(&overrides) {
            Ok(c) => { let _ = c.validate(); let _ = c.to_toml(); }
            Err(e) => prop_assert!(matches!(e, TrainError::Config { .. }), "{}", e),
        }
    }
}

proptest! {
    #![proptest_config(config(192))]

    #[test]
    fn image_reader_never_panics(muts in mutations(6), which in 0..3usize, pre in 0..3usize) {
        let (name, seed) = &image_seeds()[which];
        check_image(name, &apply(seed, &muts), &PREPROCESS[pre]);
    }

    #[test]
    fn noise_reader_never_panics(muts in mutations(6), which in 0..3usize) {
        let (name, seed) = &noise_seeds()[which];
        let (_dir, path) = write_temp(name, &apply(seed, &muts));
        assert_names(ChainNoise::read(&path), &path);
    }
}

#[test]
fn the_seeds_are_read() {
    let (images, labels) = idx_seed();
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("i.gz"), gzip(&images)).unwrap();
    std::fs::write(dir.path().join("l.gz"), gzip(&labels)).unwrap();
    data::read_idx_split(dir.path(), "i.gz", "l.gz", &[]).unwrap();
    let (_d1, ds) = write_temp("d.h5", &dataset_seed());
    assert_eq!(data::check_dataset(&ds).unwrap().n_test, 2);
    let (_d2, s) = write_temp("s.h5", &samples_seed());
    assert_eq!(
        h5images::read_images(&s, "images", None).unwrap().dim(),
        (2, 3, 3, 3)
    );
    for i in 0..4 {
        let (_d, p) = write_temp("scheduler_config.json", scheduler_seed(i).as_bytes());
        scheduler_config::read(&p, i == 3).unwrap();
    }
    TrainConfig::from_toml(&toml_seed()).unwrap();
    for (name, bytes) in image_seeds() {
        for pre in &PREPROCESS {
            let (_d, p) = write_temp(name, &bytes);
            image_folder::read_files(&[p], pre, false, || {}).unwrap();
        }
    }
    for (name, bytes) in noise_seeds() {
        let (_d, p) = write_temp(name, &bytes);
        ChainNoise::read(&p).unwrap();
    }
}

// Regression cases.

#[test]
fn a_dataset_declaring_2_pow_40_images_is_refused_before_allocating() {
    // A shape field set to 2^40 (as the `Word` mutation writes) made the reader allocate
    // 2^40 × H × W bytes before HDF5 could notice that the data is not there.
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("huge.h5");
    h5images::create_atomically(&path, |f: &hdf5::File| -> data::Result<()> {
        let g = f.create_group("train").unwrap();
        g.new_dataset::<u8>()
            .shape([1usize << 40, 4, 4])
            .chunk([1, 4, 4])
            .create("images")
            .unwrap();
        Ok(())
    })
    .unwrap();
    for err in [
        h5images::read_split(&path, "train").unwrap_err(),
        h5images::read_images(&path, "train/images", None).unwrap_err(),
    ] {
        let msg = err.to_string();
        assert!(msg.contains("huge.h5") && msg.contains("can hold"), "{msg}");
    }
    // A read that fits the file still works (unwritten chunks read as the fill value 0).
    let two = h5images::read_images(&path, "train/images", Some(2)).unwrap();
    assert_eq!(two.dim(), (2, 4, 4, 1));
}

#[test]
fn a_corrupt_global_heap_is_refused_instead_of_hanging() {
    // /work/notes/hang1.h5: one corrupted object size in the global heap collection of the string
    // attributes made the walk of HDF5 2.2.0 land in the zero-filled free space ("index 0,
    // size 0") and spin forever (ddpm_train::h5check). The readers now refuse the file first.
    let mut bytes = dataset_seed();
    let gcol = bytes.windows(4).position(|w| w == b"GCOL").unwrap();
    let le = |at: usize| u64::from_le_bytes(bytes[at..at + 8].try_into().unwrap()) as usize;
    let first = gcol + 16;
    let mut free = first;
    while bytes[free..free + 2] != [0, 0] {
        free += 16 + le(free + 8).div_ceil(8) * 8;
    }
    assert!(free + 32 <= gcol + le(gcol + 8), "free space too small");
    let size = (free + 16 - first - 16) as u64;
    bytes[first + 8..first + 16].copy_from_slice(&size.to_le_bytes());
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("case-000000.h5");
    std::fs::write(&path, &bytes).unwrap();
    let status = read_in_child(dir.path(), 60);
    assert!(
        status.is_some_and(|s| s.success()),
        "the HDF5 readers hung or failed on {}: {status:?}",
        path.display()
    );
    let err = data::check_dataset(&path).unwrap_err().to_string();
    assert!(
        err.contains("case-000000.h5") && err.contains("loop forever"),
        "{err}"
    );
}
