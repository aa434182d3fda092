//! `data import --images` on folders the tests generate: PNG and JPEG, RGB and grey, odd sizes,
//! nested class folders, broken files; the imported pixels against an independent computation of
//! the same crop.
use std::fs;
use std::path::Path;

use ddpm_train::data::{self, DataError};
use ddpm_train::h5images;
use ddpm_train::image_folder::{self, ChannelPolicy, Channels, FolderImport, Preprocess, Resize};
use image::{GrayImage, Rgb, RgbImage};

/// The generated value of pixel (x, y), channel k, of image `seed`.
fn px(seed: u32, x: u32, y: u32, k: u32) -> u8 {
    ((seed * 37 + x * 5 + y * 11 + k * 70) % 256) as u8
}

fn rgb(seed: u32, w: u32, h: u32) -> RgbImage {
    RgbImage::from_fn(w, h, |x, y| Rgb([0, 1, 2].map(|k| px(seed, x, y, k))))
}

fn grey(seed: u32, w: u32, h: u32) -> GrayImage {
    GrayImage::from_fn(w, h, |x, y| image::Luma([px(seed, x, y, 0)]))
}

fn save(img: impl Into<image::DynamicImage>, path: &Path) {
    fs::create_dir_all(path.parent().unwrap()).unwrap();
    img.into().save(path).unwrap();
}

fn opts(resize: Resize, channels: ChannelPolicy) -> FolderImport {
    FolderImport {
        preprocess: Preprocess {
            resize,
            channels,
            upscale: false,
        },
        labels_from_folders: false,
        test_fraction: 0.0,
        seed: 0,
        skip_bad: false,
        name: None,
        progress: false,
    }
}

#[test]
fn odd_sizes_are_centre_cropped_exactly_when_no_resampling_happens() {
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path().join("imgs");
    // 37×23 landscape and 23×30 portrait: the short side is already 23.
    save(rgb(1, 37, 23), &src.join("a.png"));
    save(rgb(2, 23, 30), &src.join("b.png"));
    let out = dir.path().join("d.h5");
    let opts = opts(Resize::CenterCrop(23), ChannelPolicy::Uniform);
    let report = image_folder::import_image_folder(&src, &out, &opts).unwrap();
    assert_eq!(report.summary.n_train, 2);
    assert_eq!(
        (report.summary.image_hw, report.summary.channels),
        ((23, 23), 3)
    );
    let (images, labels) = h5images::read_split(&out, "train").unwrap();
    assert!(labels.is_none());
    assert_eq!(images.dim(), (2, 23, 23, 3));
    // Independent crop: offsets (37 − 23) / 2 = 7 across, (30 − 23) / 2 = 3 down.
    for y in 0..23u32 {
        for x in 0..23u32 {
            for k in 0..3u32 {
                let (yy, xx, kk) = (y as usize, x as usize, k as usize);
                assert_eq!(images[[0, yy, xx, kk]], px(1, x + 7, y, k));
                assert_eq!(images[[1, yy, xx, kk]], px(2, x, y + 3, k));
            }
        }
    }
}

#[test]
fn grey_and_colour_are_converted_per_file_and_a_mix_is_refused_without_a_choice() {
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path().join("mix");
    save(grey(3, 8, 8), &src.join("a_grey.png"));
    save(rgb(4, 8, 8), &src.join("b_colour.png"));
    let out = dir.path().join("d.h5");
    let err =
        image_folder::import_image_folder(&src, &out, &opts(Resize::Keep, ChannelPolicy::Uniform))
            .unwrap_err()
            .to_string();
    assert!(
        err.contains("b_colour.png") && err.contains("a_grey.png") && err.contains("--channels"),
        "{err}"
    );
    assert!(!out.exists(), "nothing written on error");
    let rgb_opts = opts(Resize::Keep, ChannelPolicy::Convert(Channels::Rgb));
    image_folder::import_image_folder(&src, &out, &rgb_opts).unwrap();
    let (images, _) = h5images::read_split(&out, "train").unwrap();
    assert_eq!(images.dim(), (2, 8, 8, 3));
    for k in 0..3 {
        assert_eq!(images[[0, 5, 2, k]], px(3, 2, 5, 0), "grey replicated");
        assert_eq!(images[[1, 5, 2, k]], px(4, 2, 5, k as u32), "colour kept");
    }
    let grey_opts = opts(Resize::Keep, ChannelPolicy::Convert(Channels::Grey));
    let out2 = dir.path().join("g.h5");
    image_folder::import_image_folder(&src, &out2, &grey_opts).unwrap();
    let (images, _) = h5images::read_split(&out2, "train").unwrap();
    assert_eq!(images.dim(), (2, 8, 8, 1));
    let [r, g, b] = [0, 1, 2].map(|k| u32::from(px(4, 2, 5, k)));
    // PIL's convert("L"): (19595 R + 38470 G + 7471 B + 2^15) >> 16.
    let luma = ((r * 19595 + g * 38470 + b * 7471 + 0x8000) >> 16) as u8;
    assert_eq!(images[[1, 5, 2, 0]], luma);
}

#[test]
fn nested_class_folders_give_sorted_labels_and_jpeg_is_read() {
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path().join("classes");
    save(rgb(5, 20, 20), &src.join("dogs/b.png"));
    save(rgb(6, 20, 20), &src.join("cats/deep/inner/x.jpg"));
    save(rgb(7, 20, 20), &src.join("cats/a.png"));
    save(rgb(8, 20, 20), &src.join("zebras/z.JPEG"));
    let out = dir.path().join("d.h5");
    let mut o = opts(Resize::CenterCrop(20), ChannelPolicy::Uniform);
    o.labels_from_folders = true;
    let report = image_folder::import_image_folder(&src, &out, &o).unwrap();
    assert_eq!(report.summary.class_names, ["cats", "dogs", "zebras"]);
    let (images, labels) = h5images::read_split(&out, "train").unwrap();
    // Sorted paths: cats/a.png, cats/deep/inner/x.jpg, dogs/b.png, zebras/z.JPEG.
    assert_eq!(labels.unwrap().to_vec(), [0, 0, 1, 2]);
    assert_eq!(images[[0, 4, 9, 1]], px(7, 9, 4, 1));
    // JPEG is lossy: close to the generated pixels, not equal.
    let diff: f64 = (0..20)
        .flat_map(|y| (0..20).map(move |x| (x, y)))
        .map(|(x, y)| {
            (f64::from(images[[1, y, x, 0]]) - f64::from(px(6, x as u32, y as u32, 0))).abs()
        })
        .sum::<f64>()
        / 400.0;
    assert!(diff < 20.0, "JPEG mean abs error {diff}");
    // A file outside any class folder cannot get a label.
    save(rgb(9, 20, 20), &src.join("loose.png"));
    let err = image_folder::import_image_folder(&src, &out, &o)
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("loose.png") && err.contains("class folder"),
        "{err}"
    );
}

#[test]
fn broken_files_are_named_or_skipped_and_listed() {
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path().join("broken");
    save(rgb(1, 9, 9), &src.join("a.png"));
    fs::write(src.join("b_zero.png"), b"").unwrap();
    let mut png = Vec::new();
    rgb(2, 9, 9)
        .write_to(&mut std::io::Cursor::new(&mut png), image::ImageFormat::Png)
        .unwrap();
    fs::write(src.join("c_cut.png"), &png[..png.len() / 2]).unwrap();
    fs::write(src.join("d_text.jpg"), b"this is not a jpeg").unwrap();
    save(rgb(3, 9, 9), &src.join("e.png"));
    let out = dir.path().join("d.h5");
    let o = opts(Resize::Keep, ChannelPolicy::Uniform);
    let err = image_folder::import_image_folder(&src, &out, &o).unwrap_err();
    assert!(matches!(err, DataError::Image { .. }), "{err:?}");
    let err = err.to_string();
    assert!(
        err.contains("b_zero.png") && err.contains("0 bytes"),
        "{err}"
    );
    fs::remove_file(src.join("b_zero.png")).unwrap();
    let err = image_folder::import_image_folder(&src, &out, &o)
        .unwrap_err()
        .to_string();
    assert!(err.contains("c_cut.png"), "{err}");
    assert!(!out.exists());
    fs::write(src.join("b_zero.png"), b"").unwrap();
    let skip = FolderImport {
        skip_bad: true,
        ..o
    };
    let report = image_folder::import_image_folder(&src, &out, &skip).unwrap();
    let skipped: Vec<_> = report
        .skipped
        .iter()
        .map(|s| s.path.file_name().unwrap().to_string_lossy().into_owned())
        .collect();
    assert_eq!(skipped, ["b_zero.png", "c_cut.png", "d_text.jpg"]);
    assert_eq!(report.summary.n_train, 2);
    let file = h5images::open(&out).unwrap();
    let recorded = h5images::get_str_attr(&file, "skipped", &out).unwrap();
    assert!(
        recorded.contains("c_cut.png") && recorded.contains("d_text.jpg"),
        "{recorded}"
    );
    assert_eq!(
        h5images::get_str_attr(&file, "file_count", &out).unwrap(),
        "5"
    );
}

#[test]
fn empty_folders_small_images_and_size_mismatches_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let empty = dir.path().join("empty");
    fs::create_dir_all(empty.join("sub")).unwrap();
    fs::write(empty.join("notes.txt"), b"x").unwrap();
    let out = dir.path().join("d.h5");
    let err = image_folder::import_image_folder(
        &empty,
        &out,
        &opts(Resize::Keep, ChannelPolicy::Uniform),
    )
    .unwrap_err()
    .to_string();
    assert!(
        err.contains("empty") && err.contains("no PNG or JPEG"),
        "{err}"
    );

    let src = dir.path().join("small");
    save(rgb(1, 20, 15), &src.join("a.png"));
    let err = image_folder::import_image_folder(
        &src,
        &out,
        &opts(Resize::CenterCrop(16), ChannelPolicy::Uniform),
    )
    .unwrap_err()
    .to_string();
    assert!(
        err.contains("a.png") && err.contains("20x15") && err.contains("--upscale"),
        "{err}"
    );
    let mut up = opts(Resize::CenterCrop(16), ChannelPolicy::Uniform);
    up.preprocess.upscale = true;
    let report = image_folder::import_image_folder(&src, &out, &up).unwrap();
    assert_eq!(report.summary.image_hw, (16, 16));

    save(rgb(2, 21, 15), &src.join("b.png"));
    let err =
        image_folder::import_image_folder(&src, &out, &opts(Resize::Keep, ChannelPolicy::Uniform))
            .unwrap_err()
            .to_string();
    assert!(
        err.contains("b.png") && err.contains("21x15") && err.contains("a.png"),
        "{err}"
    );
}

#[test]
fn resampling_keeps_a_flat_image_flat_and_stretch_fills_the_square() {
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path().join("flat");
    save(
        RgbImage::from_pixel(64, 48, Rgb([200, 100, 30])),
        &src.join("a.png"),
    );
    save(
        RgbImage::from_pixel(30, 90, Rgb([10, 20, 250])),
        &src.join("b.png"),
    );
    let out = dir.path().join("d.h5");
    for resize in [Resize::CenterCrop(16), Resize::Stretch(16)] {
        image_folder::import_image_folder(&src, &out, &opts(resize, ChannelPolicy::Uniform))
            .unwrap();
        let (images, _) = h5images::read_split(&out, "train").unwrap();
        assert_eq!(images.dim(), (2, 16, 16, 3));
        assert!(images
            .outer_iter()
            .next()
            .unwrap()
            .iter()
            .step_by(3)
            .all(|&v| v == 200));
        assert!(images
            .outer_iter()
            .nth(1)
            .unwrap()
            .iter()
            .skip(2)
            .step_by(3)
            .all(|&v| v == 250));
    }
}

#[test]
fn a_test_fraction_splits_by_seed_and_records_the_preprocessing() {
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path().join("many");
    for i in 0..20 {
        save(grey(i, 6, 6), &src.join(format!("c{}/{i:02}.png", i % 2)));
    }
    let out = dir.path().join("d.h5");
    let mut o = opts(Resize::Keep, ChannelPolicy::Uniform);
    o.labels_from_folders = true;
    o.test_fraction = 0.25;
    o.seed = 7;
    let s = image_folder::import_image_folder(&src, &out, &o)
        .unwrap()
        .summary;
    assert_eq!((s.n_train, s.n_test, s.channels), (15, 5, 1));
    let (train, _) = h5images::read_split(&out, "train").unwrap();
    let (test, test_labels) = h5images::read_split(&out, "test").unwrap();
    let expected_test = image_folder::test_indices(20, 0.25, 7);
    assert_eq!(expected_test.len(), 5);
    // Files sorted by path: c0/00, c0/02, …, c0/18, c1/01, …; index i ↦ its generating seed.
    let seed_of = |i: usize| if i < 10 { 2 * i } else { 2 * (i - 10) + 1 } as u32;
    for (j, &i) in expected_test.iter().enumerate() {
        assert_eq!(test[[j, 1, 2, 0]], px(seed_of(i), 2, 1, 0));
        assert_eq!(test_labels.as_ref().unwrap()[j], (seed_of(i) % 2) as u8);
    }
    let all: std::collections::BTreeSet<u8> = train
        .outer_iter()
        .chain(test.outer_iter())
        .map(|im| im[[1, 2, 0]])
        .collect();
    assert_eq!(
        all.len(),
        20,
        "train and test together hold every image once"
    );
    assert_eq!(image_folder::test_indices(20, 0.25, 8).len(), 5);
    assert_ne!(image_folder::test_indices(20, 0.25, 8), expected_test);
    let file = h5images::open(&out).unwrap();
    let pre = h5images::get_str_attr(&file, "preprocessing", &out).unwrap();
    assert!(pre.contains("size kept"), "{pre}");
    let folder = h5images::get_str_attr(&file, "source_folder", &out).unwrap();
    assert!(folder.ends_with("many"), "{folder}");
    let summary = data::check_dataset(&out).unwrap();
    assert_eq!(summary.class_names, ["c0", "c1"]);
}

#[test]
fn linked_class_folders_are_followed_once_and_hidden_entries_left_out() {
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path().join("linked");
    save(rgb(1, 6, 6), &src.join("cat/a.png"));
    save(rgb(2, 6, 6), &dir.path().join("elsewhere/dog/b.png"));
    save(rgb(3, 6, 6), &dir.path().join("elsewhere/dog/c.png"));
    std::os::unix::fs::symlink(dir.path().join("elsewhere/dog"), src.join("dog")).unwrap();
    // A loop back to the top folder, and entries a zip made on macOS or git would add.
    std::os::unix::fs::symlink(&src, src.join("cat/loop")).unwrap();
    fs::write(src.join("cat/._a.png"), b"resource fork").unwrap();
    save(rgb(4, 6, 6), &src.join(".git/x.png"));
    save(rgb(5, 6, 6), &src.join("__MACOSX/cat/a.png"));
    let files = image_folder::image_files(&src, true).unwrap();
    let rel: Vec<String> = files
        .iter()
        .map(|f| f.strip_prefix(&src).unwrap().display().to_string())
        .collect();
    assert_eq!(rel, ["cat/a.png", "dog/b.png", "dog/c.png"]);
    let out = dir.path().join("d.h5");
    let mut o = opts(Resize::Keep, ChannelPolicy::Uniform);
    o.labels_from_folders = true;
    let s = image_folder::import_image_folder(&src, &out, &o)
        .unwrap()
        .summary;
    assert_eq!((s.n_train, s.class_names.len()), (3, 2));
}
