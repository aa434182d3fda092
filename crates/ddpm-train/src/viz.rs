//! Pictures: image grids that are readable at a glance (small images are enlarged by an integer
//! factor), line plots with axes, tick values, labels and titles ([`plot`]), and PNG files written
//! atomically.
use std::path::Path;

use image::{Rgb, RgbImage};
use ndarray::{ArrayView4, Ix4};
use tch::{Device, Kind, Tensor};

use crate::error::Result;

mod plot;

pub use plot::{
    captioned, plot, tick_label, PlotPanel, CAPTION_LINE, PANEL_HEIGHT, PLOT_WIDTH, TITLE_HEIGHT,
};

/// Smallest side of a grid cell, pixels: smaller images are enlarged by an integer factor
/// ([`upscale_factor`]), e.g. 28×28 digits ×4 to 112×112.
pub const MIN_CELL: usize = 96;
/// White gap between and around grid cells, pixels.
pub const GRID_GAP: usize = 4;

/// The integer factor by which [`grid`] enlarges `h × w` images: the smallest that makes the
/// longer side at least [`MIN_CELL`] (1 for images that are already that large).
pub fn upscale_factor(h: usize, w: usize) -> usize {
    MIN_CELL.div_ceil(h.max(w).max(1))
}

/// Tiles uint8 images `[N, H, W, C]` (C = 1 grey, or 3 RGB) into an RGB grid with `ncol` columns
/// (clamped to 1..=N), each image enlarged `s = upscale_factor(H, W)` times by pixel repetition
/// (nearest neighbour) and surrounded by a white [`GRID_GAP`]: the result is
/// `ncol·(s·W + gap) + gap` by `nrow·(s·H + gap) + gap` pixels. An empty batch gives a blank cell.
///
/// Panics if C is not 1 or 3.
pub fn grid(images: ArrayView4<'_, u8>, ncol: usize) -> RgbImage {
    let (n, h, w, c) = images.dim();
    assert!(
        c == 1 || c == 3,
        "grid images must have 1 or 3 channels, got {c}"
    );
    let s = upscale_factor(h, w);
    let (ch, cw) = (h * s, w * s);
    let ncol = ncol.clamp(1, n.max(1));
    let nrow = n.div_ceil(ncol).max(1);
    let mut out = RgbImage::from_pixel(
        (ncol * (cw + GRID_GAP) + GRID_GAP) as u32,
        (nrow * (ch + GRID_GAP) + GRID_GAP) as u32,
        Rgb([255, 255, 255]),
    );
    for (k, img) in images.outer_iter().enumerate() {
        let (x0, y0) = (
            GRID_GAP + (k % ncol) * (cw + GRID_GAP),
            GRID_GAP + (k / ncol) * (ch + GRID_GAP),
        );
        for y in 0..ch {
            for x in 0..cw {
                let (sy, sx) = (y / s, x / s);
                let px = if c == 1 {
                    [img[[sy, sx, 0]]; 3]
                } else {
                    [img[[sy, sx, 0]], img[[sy, sx, 1]], img[[sy, sx, 2]]]
                };
                out.put_pixel((x0 + x) as u32, (y0 + y) as u32, Rgb(px));
            }
        }
    }
    out
}

/// [`grid`] of a uint8 tensor `[N, H, W, C]` on any device (other kinds are cast to uint8).
///
/// Panics if the tensor is not 4-D with C = 1 or 3.
pub fn grid_nhwc(images: &Tensor, ncol: usize) -> RgbImage {
    let host = images
        .to_device(Device::Cpu)
        .to_kind(Kind::Uint8)
        .contiguous();
    let arr: ndarray::ArrayD<u8> = (&host).try_into().expect("a uint8 CPU tensor converts");
    let arr = arr
        .into_dimensionality::<Ix4>()
        .unwrap_or_else(|_| panic!("grid images must be [N, H, W, C], got {:?}", images.size()));
    grid(arr.view(), ncol)
}

/// Places images side by side, top-aligned, with `gap` white pixels between them (e.g. the grids
/// of a report).
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

/// Stacks images top to bottom, left-aligned, with `gap` white pixels between them.
pub fn vstack(images: &[RgbImage], gap: u32) -> RgbImage {
    let h = images.iter().map(|i| i.height()).sum::<u32>()
        + gap * images.len().saturating_sub(1) as u32;
    let w = images.iter().map(|i| i.width()).max().unwrap_or(1);
    let mut out = RgbImage::from_pixel(w, h.max(1), Rgb([255, 255, 255]));
    let mut y = 0;
    for i in images {
        image::imageops::overlay(&mut out, i, 0, y as i64);
        y += i.height() + gap;
    }
    out
}

/// Saves a PNG atomically (see [`ddpm_nets::atomic::write_atomically`]; folders are created).
/// Errors name the file.
pub fn save_png(img: &RgbImage, path: &Path) -> Result<()> {
    ddpm_nets::atomic::write_atomically(path, |tmp| {
        img.save_with_format(tmp, image::ImageFormat::Png)
            .map_err(|e| crate::TrainError::Io {
                path: path.to_path_buf(),
                source: std::io::Error::other(e),
            })
    })
}

#[cfg(test)]
mod tests;
