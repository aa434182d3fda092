//! Pictures: image grids from uint8 batches, and simple stacked line plots (no fonts needed),
//! written atomically as PNG.
use std::path::Path;

use image::{Rgb, RgbImage};
use tch::{Kind, Tensor};

use crate::error::{Result, TrainError};

/// One panel of a stacked plot: a series of (x, y) points drawn in `color`; non-finite points
/// break the line. `log_y` plots log10(y) (non-positive y skipped).
pub struct Panel {
    /// x values.
    pub xs: Vec<f64>,
    /// y values.
    pub ys: Vec<f64>,
    /// Line colour.
    pub color: [u8; 3],
    /// Logarithmic y axis.
    pub log_y: bool,
}

const PANEL_W: u32 = 640;
const PANEL_H: u32 = 200;
const MARGIN: u32 = 16;

/// Stacked panels, each with its own y-range, grey lines at the quarters of both axes and at 0.
pub fn plot_panels(panels: &[Panel]) -> RgbImage {
    let mut img = RgbImage::from_pixel(
        PANEL_W,
        PANEL_H * panels.len().max(1) as u32,
        Rgb([255, 255, 255]),
    );
    for (k, panel) in panels.iter().enumerate() {
        let ys: Vec<f64> = panel
            .ys
            .iter()
            .map(|&y| {
                if panel.log_y {
                    if y > 0.0 {
                        y.log10()
                    } else {
                        f64::NAN
                    }
                } else {
                    y
                }
            })
            .collect();
        let (top, bottom) = (
            k as u32 * PANEL_H + MARGIN,
            (k as u32 + 1) * PANEL_H - MARGIN,
        );
        let (left, right) = (MARGIN * 2, PANEL_W - MARGIN);
        let range = |v: &[f64]| {
            let (lo, hi) = v
                .iter()
                .filter(|x| x.is_finite())
                .fold((f64::INFINITY, f64::NEG_INFINITY), |(a, b), &x| {
                    (a.min(x), b.max(x))
                });
            if !lo.is_finite() {
                (0.0, 1.0)
            } else if hi - lo <= 1e-12 * hi.abs().max(1.0) {
                (lo - 0.5 * hi.abs().max(1.0), hi + 0.5 * hi.abs().max(1.0))
            } else {
                (lo, hi)
            }
        };
        let (x0, x1) = range(&panel.xs);
        let (y0, y1) = range(&ys);
        let px = |x: f64| left as f64 + (x - x0) / (x1 - x0) * (right - left) as f64;
        let py = |y: f64| bottom as f64 - (y - y0) / (y1 - y0) * (bottom - top) as f64;
        let grey = Rgb([215, 215, 215]);
        for q in 1..4 {
            let y = (top + (bottom - top) * q / 4) as f64;
            line(&mut img, (left as f64, y), (right as f64, y), grey);
            let x = (left + (right - left) * q / 4) as f64;
            line(&mut img, (x, top as f64), (x, bottom as f64), grey);
        }
        if y0 < 0.0 && y1 > 0.0 {
            line(
                &mut img,
                (left as f64, py(0.0)),
                (right as f64, py(0.0)),
                Rgb([150, 150, 150]),
            );
        }
        let black = Rgb([0, 0, 0]);
        line(
            &mut img,
            (left as f64, top as f64),
            (left as f64, bottom as f64),
            black,
        );
        line(
            &mut img,
            (left as f64, bottom as f64),
            (right as f64, bottom as f64),
            black,
        );
        let mut prev: Option<(f64, f64)> = None;
        for (&x, &y) in panel.xs.iter().zip(&ys) {
            if !(x.is_finite() && y.is_finite()) {
                prev = None;
                continue;
            }
            let p = (px(x), py(y));
            let s = prev.unwrap_or(p);
            line(&mut img, s, p, Rgb(panel.color));
            line(
                &mut img,
                (s.0, s.1 + 1.0),
                (p.0, p.1 + 1.0),
                Rgb(panel.color),
            );
            prev = Some(p);
        }
    }
    img
}

/// A straight line (DDA), clipped to the image.
fn line(img: &mut RgbImage, from: (f64, f64), to: (f64, f64), color: Rgb<u8>) {
    let steps = (to.0 - from.0)
        .abs()
        .max((to.1 - from.1).abs())
        .ceil()
        .max(1.0) as usize;
    for i in 0..=steps {
        let s = i as f64 / steps as f64;
        let (x, y) = (
            (from.0 + s * (to.0 - from.0)).round(),
            (from.1 + s * (to.1 - from.1)).round(),
        );
        if x >= 0.0 && y >= 0.0 && (x as u32) < img.width() && (y as u32) < img.height() {
            img.put_pixel(x as u32, y as u32, color);
        }
    }
}

/// Tiles uint8 images `[N, H, W, C]` (C = 1 or 3) into an RGB grid with `ncol` columns and a
/// 2-pixel white gap.
pub fn grid_nhwc(images: &Tensor, ncol: usize) -> RgbImage {
    let images = images
        .to_device(tch::Device::Cpu)
        .to_kind(Kind::Uint8)
        .contiguous();
    let s = images.size();
    let (n, h, w, c) = (s[0] as usize, s[1] as usize, s[2] as usize, s[3] as usize);
    let data = Vec::<u8>::try_from(images.view([-1])).expect("uint8 tensor");
    let ncol = ncol.clamp(1, n.max(1));
    let nrow = n.div_ceil(ncol).max(1);
    let gap = 2;
    let mut img = RgbImage::from_pixel(
        (ncol * (w + gap) + gap) as u32,
        (nrow * (h + gap) + gap) as u32,
        Rgb([255, 255, 255]),
    );
    for k in 0..n {
        let (r, col) = (k / ncol, k % ncol);
        for y in 0..h {
            for x in 0..w {
                let base = ((k * h + y) * w + x) * c;
                let px = if c == 1 {
                    [data[base]; 3]
                } else {
                    [data[base], data[base + 1], data[base + 2]]
                };
                img.put_pixel(
                    (gap + col * (w + gap) + x) as u32,
                    (gap + r * (h + gap) + y) as u32,
                    Rgb(px),
                );
            }
        }
    }
    img
}

/// Places images side by side horizontally with a gap (e.g. a trajectory strip or a report).
pub fn hstack(images: &[RgbImage], gap: u32) -> RgbImage {
    let w =
        images.iter().map(|i| i.width()).sum::<u32>() + gap * images.len().saturating_sub(1) as u32;
    let h = images.iter().map(|i| i.height()).max().unwrap_or(1);
    let mut out = RgbImage::from_pixel(w.max(1), h, Rgb([255, 255, 255]));
    let mut x = 0;
    for i in images {
        image::imageops::overlay(&mut out, i, x as i64, 0);
        x += i.width() + gap;
    }
    out
}

/// Saves a PNG atomically (see [`ddpm_nets::atomic::write_atomically`]; folders are created).
/// Errors name the file.
pub fn save_png(img: &RgbImage, path: &Path) -> Result<()> {
    ddpm_nets::atomic::write_atomically(path, |tmp| {
        img.save_with_format(tmp, image::ImageFormat::Png)
            .map_err(|e| TrainError::Io {
                path: path.to_path_buf(),
                source: std::io::Error::other(e),
            })
    })
}
