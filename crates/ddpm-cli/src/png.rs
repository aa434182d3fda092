//! Writing PNG files atomically.
use std::path::Path;

use anyhow::{Context, Result};

/// Writes a PNG atomically (temporary file in the same folder, then rename), creating folders.
pub fn write_png(img: &image::GrayImage, path: &Path) -> Result<()> {
    let dir = path
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let tmp = dir.join(format!(
        ".{}.{}.tmp.png",
        path.file_name().and_then(|n| n.to_str()).unwrap_or("img"),
        std::process::id()
    ));
    let res = img
        .save_with_format(&tmp, image::ImageFormat::Png)
        .map_err(anyhow::Error::from)
        .and_then(|_| std::fs::rename(&tmp, path).map_err(anyhow::Error::from));
    if res.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    res.with_context(|| format!("cannot write {}", path.display()))
}
