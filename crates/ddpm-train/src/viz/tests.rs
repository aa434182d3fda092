use super::*;
use ndarray::Array4;

const WHITE: Rgb<u8> = Rgb([255, 255, 255]);

/// `[N, H, W, C]` with every pixel distinct within an image (mod 256).
fn pattern(n: usize, h: usize, w: usize, c: usize) -> Array4<u8> {
    Array4::from_shape_fn((n, h, w, c), |(k, y, x, ch)| {
        (k * 50 + y * 9 + x + ch * 3) as u8
    })
}

#[test]
fn grids_enlarge_small_images_by_an_integer_factor_with_gaps() {
    assert_eq!(upscale_factor(28, 28), 4);
    assert_eq!(upscale_factor(32, 32), 3);
    assert_eq!(upscale_factor(96, 96), 1);
    assert_eq!(upscale_factor(300, 200), 1);
    let images = pattern(3, 28, 28, 1);
    let g = grid(images.view(), 2);
    let cell = 28 * 4;
    assert_eq!(
        g.dimensions(),
        (
            (2 * (cell + GRID_GAP) + GRID_GAP) as u32,
            (2 * (cell + GRID_GAP) + GRID_GAP) as u32
        )
    );
    assert!(cell >= MIN_CELL);
    for k in 0..3 {
        let (x0, y0) = (
            GRID_GAP + (k % 2) * (cell + GRID_GAP),
            GRID_GAP + (k / 2) * (cell + GRID_GAP),
        );
        for y in 0..cell {
            for x in 0..cell {
                let v = images[[k, y / 4, x / 4, 0]];
                assert_eq!(
                    *g.get_pixel((x0 + x) as u32, (y0 + y) as u32),
                    Rgb([v; 3]),
                    "image {k} at ({x}, {y})"
                );
            }
        }
        // The gap left of and above each cell is white.
        assert_eq!(*g.get_pixel((x0 - 1) as u32, (y0 + 5) as u32), WHITE);
        assert_eq!(*g.get_pixel((x0 + 5) as u32, (y0 - 1) as u32), WHITE);
    }
    // The fourth cell of the 2×2 grid is empty.
    let (x3, y3) = (GRID_GAP + cell + GRID_GAP, GRID_GAP + cell + GRID_GAP);
    assert_eq!(*g.get_pixel((x3 + 50) as u32, (y3 + 50) as u32), WHITE);
}

#[test]
fn rgb_grids_keep_the_channels_and_large_images_keep_their_size() {
    let images = pattern(2, 100, 120, 3);
    let g = grid(images.view(), 5);
    assert_eq!(
        g.dimensions(),
        (
            (2 * (120 + GRID_GAP) + GRID_GAP) as u32,
            (100 + 2 * GRID_GAP) as u32
        )
    );
    let (x0, y0) = (GRID_GAP + 120 + GRID_GAP, GRID_GAP);
    let p = |y, x| {
        Rgb([
            images[[1, y, x, 0]],
            images[[1, y, x, 1]],
            images[[1, y, x, 2]],
        ])
    };
    assert_eq!(*g.get_pixel((x0 + 7) as u32, (y0 + 3) as u32), p(3, 7));
    assert_eq!(
        *g.get_pixel((x0 + 119) as u32, (y0 + 99) as u32),
        p(99, 119)
    );
}

#[test]
fn tensor_grids_are_the_same_picture() {
    let images = pattern(5, 7, 6, 1);
    let t = Tensor::try_from(&images).unwrap();
    assert_eq!(t.kind(), Kind::Uint8);
    assert_eq!(grid_nhwc(&t, 3), grid(images.view(), 3));
}

#[test]
fn hstack_places_images_side_by_side_top_aligned() {
    let a = RgbImage::from_pixel(3, 5, Rgb([1, 2, 3]));
    let b = RgbImage::from_pixel(4, 2, Rgb([9, 9, 9]));
    let s = hstack(&[a, b], 2);
    assert_eq!(s.dimensions(), (3 + 2 + 4, 5));
    assert_eq!(*s.get_pixel(2, 4), Rgb([1, 2, 3]));
    assert_eq!(*s.get_pixel(4, 0), WHITE);
    assert_eq!(*s.get_pixel(5, 1), Rgb([9, 9, 9]));
    assert_eq!(*s.get_pixel(5, 2), WHITE);
}

#[test]
fn vstack_places_images_top_to_bottom_left_aligned() {
    let a = RgbImage::from_pixel(3, 5, Rgb([1, 2, 3]));
    let b = RgbImage::from_pixel(4, 2, Rgb([9, 9, 9]));
    let s = vstack(&[a, b], 2);
    assert_eq!(s.dimensions(), (4, 5 + 2 + 2));
    assert_eq!(*s.get_pixel(2, 4), Rgb([1, 2, 3]));
    assert_eq!(*s.get_pixel(3, 0), WHITE);
    assert_eq!(*s.get_pixel(0, 6), WHITE);
    assert_eq!(*s.get_pixel(3, 8), Rgb([9, 9, 9]));
}

#[test]
fn captioned_writes_text_above_the_image_and_keeps_it_whole() {
    let img = RgbImage::from_pixel(40, 30, Rgb([200, 0, 0]));
    let lines = vec!["DDPM, DPM-Solver++ 20".to_string(), "FID 12.3".to_string()];
    let out = captioned(&img, &lines);
    let cap = CAPTION_LINE * 2;
    assert_eq!(out.height(), cap + 30);
    assert!(out.width() > 40, "widened for the text: {}", out.width());
    assert!(dark_in_rows(&out, 0..CAPTION_LINE) > 20, "first line drawn");
    assert!(
        dark_in_rows(&out, CAPTION_LINE..cap) > 10,
        "second line drawn"
    );
    for (x, y) in [(0, cap), (39, cap + 29)] {
        assert_eq!(*out.get_pixel(x, y), Rgb([200, 0, 0]));
    }
    assert_eq!(*out.get_pixel(out.width() - 1, cap + 10), WHITE);
    assert_eq!(captioned(&img, &[]).dimensions(), (40, 30));
}

fn is_dark(p: &Rgb<u8>) -> bool {
    p.0.iter().all(|&v| v < 100)
}

/// Dark pixels in rows `rows` of `img`.
fn dark_in_rows(img: &RgbImage, rows: std::ops::Range<u32>) -> usize {
    rows.map(|y| {
        (0..img.width())
            .filter(|&x| is_dark(img.get_pixel(x, y)))
            .count()
    })
    .sum()
}

/// The longest run of black pixels along any column (vertical) or row (horizontal).
fn longest_black_run(img: &RgbImage, vertical: bool) -> u32 {
    let (outer, inner) = if vertical {
        (img.width(), img.height())
    } else {
        (img.height(), img.width())
    };
    let mut best = 0;
    for o in 0..outer {
        let mut run = 0;
        for i in 0..inner {
            let (x, y) = if vertical { (o, i) } else { (i, o) };
            if img.get_pixel(x, y).0 == [0, 0, 0] {
                run += 1;
                best = best.max(run);
            } else {
                run = 0;
            }
        }
    }
    best
}

fn schedule_like() -> PlotPanel {
    let xs: Vec<f64> = (0..200).map(f64::from).collect();
    let ys: Vec<f64> = xs.iter().map(|t| 1e-4 + 1e-4 * t).collect();
    PlotPanel::new("β_t", xs, ys).color([214, 39, 40])
}

#[test]
fn plots_have_a_title_axes_tick_labels_and_the_line() {
    let img = plot("Noise schedule", "t", &[schedule_like(), schedule_like()]);
    assert_eq!(
        img.dimensions(),
        (PLOT_WIDTH, TITLE_HEIGHT + 2 * PANEL_HEIGHT)
    );
    // Title text: dark glyph pixels in the title strip, and none without a title.
    assert!(dark_in_rows(&img, 0..TITLE_HEIGHT) > 100, "no title text");
    let untitled = plot("", "t", &[schedule_like()]);
    assert_eq!(untitled.height(), PANEL_HEIGHT);
    // Axes: long black lines, vertical (y axis) and horizontal (x axis).
    assert!(longest_black_run(&img, true) > PANEL_HEIGHT / 2);
    assert!(longest_black_run(&img, false) > PLOT_WIDTH / 2);
    // The line in its colour.
    let red = img.pixels().filter(|p| p.0 == [214, 39, 40]).count();
    assert!(red > 200, "{red} line pixels");
    // Tick labels and axis labels: text left of the y axis and below the x axis.
    let left: usize = (TITLE_HEIGHT..TITLE_HEIGHT + PANEL_HEIGHT)
        .map(|y| (0..70).filter(|&x| is_dark(img.get_pixel(x, y))).count())
        .sum();
    assert!(left > 100, "no y tick labels: {left} dark pixels");
}

#[test]
fn text_is_rendered_from_the_embedded_font() {
    // Only the x-axis label differs: the pictures differ, and only in the rows below the x axis.
    let a = plot("", "step", &[schedule_like()]);
    let b = plot("", "epoch", &[schedule_like()]);
    let differing: Vec<u32> = (0..a.height())
        .filter(|&y| (0..a.width()).any(|x| a.get_pixel(x, y) != b.get_pixel(x, y)))
        .collect();
    assert!(!differing.is_empty(), "the x label draws nothing");
    assert!(
        differing.iter().all(|&y| y > PANEL_HEIGHT * 3 / 4),
        "rows {differing:?}"
    );
}

#[test]
fn awkward_data_still_gives_a_plot() {
    let nan = f64::NAN;
    let panels = [
        PlotPanel::new("empty", vec![], vec![]),
        PlotPanel::new("all NaN", vec![nan, nan], vec![nan, 1.0]),
        PlotPanel::new("constant", vec![0.0, 1.0, 2.0], vec![3.0; 3]),
        PlotPanel::new("one point", vec![5.0], vec![0.0]),
        PlotPanel::new(
            "log with non-positive values",
            vec![0.0, 1.0, 2.0, 3.0],
            vec![-1.0, 0.0, 1e-3, 2e-3],
        )
        .log_y(true),
        PlotPanel::new("log, empty", vec![1.0], vec![-1.0]).log_y(true),
        PlotPanel::new(
            "gap",
            vec![0.0, 1.0, 2.0, 3.0],
            vec![1.0, f64::INFINITY, 2.0, 3.0],
        ),
    ];
    let img = plot("edge cases", "x", &panels);
    assert_eq!(img.height(), TITLE_HEIGHT + 7 * PANEL_HEIGHT);
}

#[test]
fn pngs_are_written_atomically_and_read_back() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("sub/grid.png");
    let g = grid(pattern(2, 4, 4, 3).view(), 2);
    save_png(&g, &path).unwrap();
    assert_eq!(image::open(&path).unwrap().to_rgb8(), g);
    assert_eq!(
        std::fs::read_dir(path.parent().unwrap()).unwrap().count(),
        1
    );
    let err = save_png(&g, &dir.path().join("sub/grid.png/inside.png"))
        .unwrap_err()
        .to_string();
    assert!(err.contains("grid.png/inside.png"), "{err}");
}
