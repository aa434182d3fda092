//! Image sets in HDF5 files, the one reader and writer of the workspace: the dataset files of
//! [`crate::data`] (`/train/images` `[N, H, W]` + `/train/labels` `[N]`, …) and the sample files of
//! `ddpm-cli sample` (`/images` `[N, H, W, C]`), read by training, evaluation and the CLI.
//!
//! Images are uint8, `[N, H, W]` (grey) or `[N, H, W, C]` with C = 1 or 3, and are returned as
//! `[N, H, W, C]`; labels are uint8 `[N]`. Every error names the file, and the dataset when one is
//! involved. Files are written with [`create_atomically`], so a reader never sees half of one.
use std::path::Path;

use hdf5::types::VarLenUnicode;
use ndarray::{s, Array1, Array4, ArrayView1, ArrayView4, Axis, Ix1, Ix3, Ix4};

use crate::data::{DataError, Result};

fn h5_err(path: &Path) -> impl FnOnce(hdf5::Error) -> DataError + '_ {
    move |source| DataError::Hdf5 {
        path: path.to_path_buf(),
        source,
    }
}

/// Opens an HDF5 file for reading; a missing file is an I/O "not found" error naming it, and a
/// file on which HDF5 would loop forever ([`crate::h5check`]) is refused before HDF5 sees it.
pub fn open(path: &Path) -> Result<hdf5::File> {
    if !path.is_file() {
        return Err(DataError::Io {
            path: path.to_path_buf(),
            source: std::io::Error::new(std::io::ErrorKind::NotFound, "no such file"),
        });
    }
    crate::h5check::check_global_heaps(path)?;
    hdf5::File::open(path).map_err(h5_err(path))
}

/// The uint8 dataset `name` (a path inside the file, e.g. `test/images`) of an open file, with its
/// shape. Errors: [`DataError::MissingDataset`] listing what the parent group holds, or
/// [`DataError::Layout`] when it is not uint8.
fn u8_dataset(file: &hdf5::File, path: &Path, name: &str) -> Result<(hdf5::Dataset, Vec<usize>)> {
    let name = name.trim_start_matches('/');
    let Ok(ds) = file.dataset(name) else {
        let parent = name.rsplit_once('/').map_or("", |(g, _)| g);
        let (group, members) = match (!parent.is_empty())
            .then(|| file.group(parent).ok())
            .flatten()
        {
            Some(g) => (format!("/{parent}"), g.member_names()),
            None => ("/".to_string(), file.member_names()),
        };
        let mut available = members.unwrap_or_default();
        available.sort();
        return Err(DataError::MissingDataset {
            path: path.to_path_buf(),
            dataset: format!("/{name}"),
            group,
            available,
        });
    };
    let dtype = ds
        .dtype()
        .and_then(|t| t.to_descriptor())
        .map_err(|source| DataError::Hdf5Dataset {
            path: path.to_path_buf(),
            dataset: format!("/{name}"),
            source,
        })?;
    if dtype != hdf5::types::TypeDescriptor::Unsigned(hdf5::types::IntSize::U1) {
        return Err(DataError::Layout {
            path: path.to_path_buf(),
            message: format!("/{name} holds {dtype}, not uint8"),
        });
    }
    let shape = ds.shape();
    Ok((ds, shape))
}

/// Refuses to read `rows` rows of `ds` (shape `shape`) when they hold more bytes than the file
/// could store: all of it for uncompressed data, 1032× it (deflate's largest ratio) when the
/// dataset is filtered. A corrupt header declaring 2^40 elements is an error, not an allocation.
fn check_declared_size(
    ds: &hdf5::Dataset,
    path: &Path,
    name: &str,
    shape: &[usize],
    rows: usize,
) -> Result<()> {
    let declared = shape
        .iter()
        .skip(1)
        .fold(rows as u128, |acc, &d| acc.saturating_mul(d as u128));
    let file_len = std::fs::metadata(path)
        .map_err(|source| DataError::Io {
            path: path.to_path_buf(),
            source,
        })?
        .len() as u128;
    let ratio = if ds.filters().is_empty() { 1 } else { 1032 };
    if declared > file_len.saturating_mul(ratio) {
        return Err(DataError::Layout {
            path: path.to_path_buf(),
            message: format!(
                "/{name} has shape {shape:?}: {declared} bytes to read, more than the file \
                 ({file_len} bytes) can hold"
            ),
        });
    }
    Ok(())
}

fn images_of(
    file: &hdf5::File,
    path: &Path,
    name: &str,
    limit: Option<usize>,
) -> Result<Array4<u8>> {
    let (ds, shape) = u8_dataset(file, path, name)?;
    let name = name.trim_start_matches('/');
    let bad_shape = || DataError::Layout {
        path: path.to_path_buf(),
        message: format!(
            "/{name} has shape {shape:?}; expected images [N, H, W] or [N, H, W, C] with C = 1 or 3"
        ),
    };
    let n = limit.map_or(shape.first().copied().unwrap_or(0), |l| {
        l.min(shape.first().copied().unwrap_or(0))
    });
    let read_err = |source| DataError::Hdf5Dataset {
        path: path.to_path_buf(),
        dataset: format!("/{name}"),
        source,
    };
    check_declared_size(&ds, path, name, &shape, n)?;
    match shape.len() {
        3 => Ok(ds
            .read_slice::<u8, _, Ix3>(s![..n, .., ..])
            .map_err(read_err)?
            .insert_axis(Axis(3))),
        4 if shape[3] == 1 || shape[3] == 3 => ds
            .read_slice::<u8, _, Ix4>(s![..n, .., .., ..])
            .map_err(read_err),
        _ => Err(bad_shape()),
    }
}

fn labels_of(
    file: &hdf5::File,
    path: &Path,
    name: &str,
    limit: Option<usize>,
) -> Result<Array1<u8>> {
    let (ds, shape) = u8_dataset(file, path, name)?;
    let name = name.trim_start_matches('/');
    if shape.len() != 1 {
        return Err(DataError::Layout {
            path: path.to_path_buf(),
            message: format!("/{name} has shape {shape:?}; expected labels [N]"),
        });
    }
    let n = limit.map_or(shape[0], |l| l.min(shape[0]));
    check_declared_size(&ds, path, name, &shape, n)?;
    ds.read_slice::<u8, _, Ix1>(s![..n])
        .map_err(|source| DataError::Hdf5Dataset {
            path: path.to_path_buf(),
            dataset: format!("/{name}"),
            source,
        })
}

/// Reads the first `limit` images (all when `None`) of the uint8 dataset `dataset` (e.g. `images`
/// or `test/images`) of the HDF5 file `path`, as `[N, H, W, C]` (a `[N, H, W]` dataset gets C = 1).
///
/// Errors name the file and the dataset: missing file ([`DataError::Io`]), missing dataset
/// ([`DataError::MissingDataset`], with what its group holds), not uint8 or not an image shape, or
/// a shape declaring more data than the file can hold ([`DataError::Layout`]), unreadable
/// ([`DataError::Hdf5Dataset`]).
pub fn read_images(path: &Path, dataset: &str, limit: Option<usize>) -> Result<Array4<u8>> {
    images_of(&open(path)?, path, dataset, limit)
}

/// Reads the first `limit` labels (all when `None`) of the uint8 dataset `dataset`, which must be
/// `[N]`. Errors as [`read_images`].
pub fn read_labels(path: &Path, dataset: &str, limit: Option<usize>) -> Result<Array1<u8>> {
    labels_of(&open(path)?, path, dataset, limit)
}

/// Reads `/<split>/images` (`[N, H, W, C]`, see [`read_images`]) and, when the split has them,
/// `/<split>/labels` (`[N]`) of a dataset file; the two must hold the same number of examples
/// ([`DataError::Layout`]). A missing split is [`DataError::MissingDataset`] listing the splits.
pub fn read_split(path: &Path, split: &str) -> Result<(Array4<u8>, Option<Array1<u8>>)> {
    let file = open(path)?;
    let images = images_of(&file, path, &format!("{split}/images"), None)?;
    if file.dataset(&format!("{split}/labels")).is_err() {
        return Ok((images, None));
    }
    let labels = labels_of(&file, path, &format!("{split}/labels"), None)?;
    if images.dim().0 != labels.len() {
        return Err(DataError::Layout {
            path: path.to_path_buf(),
            message: format!(
                "/{split}: {} images but {} labels",
                images.dim().0,
                labels.len()
            ),
        });
    }
    Ok((images, Some(labels)))
}

/// The shape of a split of a dataset file, read without its data.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SplitShape {
    /// `[N, H, W, C]` of `/<split>/images` (a 3-D dataset has C = 1).
    pub nhwc: [usize; 4],
    /// Whether `/<split>/labels` exists (it then is uint8 `[N]`).
    pub has_labels: bool,
}

/// The [`SplitShape`] of `/<split>` in the open dataset file `file` (read from `path`); `None` when
/// the file has no `/<split>/images`. Errors ([`DataError::Layout`], naming the file): images not
/// uint8 `[N, H, W]` / `[N, H, W, C]` with C = 1 or 3, labels not uint8 `[N]`.
pub fn split_shape(file: &hdf5::File, path: &Path, split: &str) -> Result<Option<SplitShape>> {
    let layout = |message: String| DataError::Layout {
        path: path.to_path_buf(),
        message,
    };
    let Ok(images) = file.dataset(&format!("{split}/images")) else {
        return Ok(None);
    };
    let s = images.shape();
    let shape = match s.as_slice() {
        [n, h, w] => [*n, *h, *w, 1],
        [n, h, w, c] if *c == 1 || *c == 3 => [*n, *h, *w, *c],
        _ => {
            return Err(layout(format!(
            "/{split}/images has shape {s:?}; expected [N, H, W] or [N, H, W, C] with C = 1 or 3"
        )))
        }
    };
    if !images.dtype().map_err(h5_err(path))?.is::<u8>() {
        return Err(layout(format!("/{split}/images is not uint8")));
    }
    let Ok(labels) = file.dataset(&format!("{split}/labels")) else {
        return Ok(Some(SplitShape {
            nhwc: shape,
            has_labels: false,
        }));
    };
    if labels.shape() != [shape[0]] || !labels.dtype().map_err(h5_err(path))?.is::<u8>() {
        return Err(layout(format!(
            "/{split}/labels {:?} does not match /{split}/images {s:?} (uint8 [N] expected)",
            labels.shape()
        )));
    }
    Ok(Some(SplitShape {
        nhwc: shape,
        has_labels: true,
    }))
}

/// Creates the HDF5 file `path` atomically: `fill` writes into a new file, which is written to a
/// temporary path in the same folder and renamed to `path` when `fill` succeeds (folders are
/// created; see [`ddpm_nets::atomic::write_atomically`]). On any error nothing is left behind and
/// an existing `path` is kept. Errors: `fill`'s own, or a [`DataError`] naming `path` (converted
/// into `E`); a failed write (full disk, quota, file-size limit) is a
/// [`ddpm_nets::atomic::WriteError`] naming `path` and the OS error.
///
/// The file is built in memory (HDF5's core driver, no backing store) and its bytes are written
/// by this function: HDF5 itself never writes to disk here, because its `H5Fclose` crashes
/// (segmentation fault in `H5D__flush_all_cb`) when the disk refuses a flush.
pub fn create_atomically<T, E>(
    path: &Path,
    fill: impl FnOnce(&hdf5::File) -> std::result::Result<T, E>,
) -> std::result::Result<T, E>
where
    E: From<DataError> + From<ddpm_nets::atomic::WriteError>,
{
    ddpm_nets::atomic::write_atomically(path, |tmp| {
        let file = hdf5::File::with_options()
            .with_fapl(|p| p.core_options(64 << 20, false))
            .create(tmp)
            .map_err(h5_err(path))?;
        let value = fill(&file)?;
        file.flush().map_err(h5_err(path))?;
        let image = file_image(&file, path)?;
        file.close().map_err(h5_err(path))?;
        std::fs::write(tmp, image).map_err(|source| ddpm_nets::atomic::WriteError {
            path: path.to_path_buf(),
            source,
        })?;
        Ok(value)
    })
}

/// The bytes of the in-memory HDF5 `file` (of the file `path`, which errors name).
fn file_image(file: &hdf5::File, path: &Path) -> Result<Vec<u8>> {
    let failed = || DataError::Layout {
        path: path.to_path_buf(),
        message: "HDF5 could not give the file's bytes (H5Fget_file_image)".into(),
    };
    // Raw calls go through hdf5-metno's library lock, as its own calls do: HDF5 is not
    // thread-safe, and another thread may be inside it.
    let id = file.id();
    // SAFETY: a null buffer asks for the size only; the second call writes at most `buf.len()`
    // bytes into `buf`. The file id is valid while `file` lives.
    let size = hdf5::sync::sync(|| unsafe {
        hdf5_sys::h5f::H5Fget_file_image(id, std::ptr::null_mut(), 0)
    });
    let len = usize::try_from(size).map_err(|_| failed())?;
    let mut buf = vec![0u8; len];
    let got = hdf5::sync::sync(|| unsafe {
        hdf5_sys::h5f::H5Fget_file_image(id, buf.as_mut_ptr().cast(), buf.len())
    });
    if got != size {
        return Err(failed());
    }
    Ok(buf)
}

/// Sets the scalar string attribute `name` of `loc` (a file, group or dataset of the file `path`,
/// which errors name).
pub fn set_str_attr(loc: &hdf5::Location, name: &str, value: &str, path: &Path) -> Result<()> {
    let v: VarLenUnicode = value.parse().map_err(|e| DataError::Layout {
        path: path.to_path_buf(),
        message: format!("attribute {name}: {e}"),
    })?;
    loc.new_attr::<VarLenUnicode>()
        .shape(())
        .create(name)
        .and_then(|a| a.write_scalar(&v))
        .map_err(h5_err(path))
}

/// Reads the scalar string attribute `name` of `loc` (of the file `path`); a missing one is a
/// [`DataError::Layout`] naming it.
pub fn get_str_attr(loc: &hdf5::Location, name: &str, path: &Path) -> Result<String> {
    let a = loc.attr(name).map_err(|_| DataError::Layout {
        path: path.to_path_buf(),
        message: format!("missing attribute `{name}`"),
    })?;
    Ok(a.read_scalar::<VarLenUnicode>()
        .map_err(h5_err(path))?
        .as_str()
        .to_string())
}

/// Writes an image set atomically to the HDF5 file `path` (h5py-readable): dataset `/images`
/// uint8 `[N, H, W, C]` (C = 1 or 3), `/labels` uint8 `[N]` when given (its length must be N), and
/// scalar string attributes `attrs` on the root. Errors name the file.
pub fn write_images(
    path: &Path,
    images: ArrayView4<'_, u8>,
    labels: Option<ArrayView1<'_, u8>>,
    attrs: &[(&str, &str)],
) -> Result<()> {
    let c = images.dim().3;
    if c != 1 && c != 3 {
        return Err(DataError::Layout {
            path: path.to_path_buf(),
            message: format!("images {:?} must have C = 1 or 3 channels", images.shape()),
        });
    }
    if let Some(l) = labels.filter(|l| l.len() != images.dim().0) {
        return Err(DataError::Layout {
            path: path.to_path_buf(),
            message: format!("{} images but {} labels", images.dim().0, l.len()),
        });
    }
    create_atomically(path, |file: &hdf5::File| -> Result<()> {
        file.new_dataset_builder()
            .with_data(&images.as_standard_layout())
            .create("images")
            .map_err(h5_err(path))?;
        if let Some(l) = labels {
            file.new_dataset_builder()
                .with_data(&l.as_standard_layout())
                .create("labels")
                .map_err(h5_err(path))?;
        }
        for (k, v) in attrs {
            set_str_attr(file, k, v, path)?;
        }
        Ok(())
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use ndarray::Array3;

    fn ramp4(n: usize, h: usize, w: usize, c: usize) -> Array4<u8> {
        Array4::from_shape_fn((n, h, w, c), |(i, y, x, k)| {
            (i * 31 + y * 7 + x * 3 + k) as u8
        })
    }

    #[test]
    fn writes_and_reads_back_images_labels_and_attributes() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sub/s.h5");
        let images = ramp4(5, 4, 3, 3);
        let labels = Array1::from_vec(vec![0u8, 1, 2, 3, 4]);
        write_images(
            &path,
            images.view(),
            Some(labels.view()),
            &[("sampler", "ddim50")],
        )
        .unwrap();
        assert_eq!(read_images(&path, "images", None).unwrap(), images);
        assert_eq!(
            read_images(&path, "/images", Some(2)).unwrap(),
            images.slice(s![..2, .., .., ..])
        );
        assert_eq!(read_labels(&path, "labels", Some(9)).unwrap(), labels);
        let file = open(&path).unwrap();
        assert_eq!(get_str_attr(&file, "sampler", &path).unwrap(), "ddim50");
        let left: Vec<_> = std::fs::read_dir(path.parent().unwrap()).unwrap().collect();
        assert_eq!(left.len(), 1, "no temporary file left");
    }

    #[test]
    fn grey_datasets_get_one_channel_and_splits_check_counts() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("d.h5");
        let grey = Array3::from_shape_fn((6, 2, 3), |(i, y, x)| (i * 6 + y * 3 + x) as u8);
        create_atomically(&path, |f: &hdf5::File| -> Result<()> {
            for (split, n) in [("train", 6), ("test", 5)] {
                let g = f.create_group(split).unwrap();
                g.new_dataset_builder()
                    .with_data(&grey)
                    .create("images")
                    .unwrap();
                g.new_dataset_builder()
                    .with_data(&Array1::<u8>::zeros(n))
                    .create("labels")
                    .unwrap();
            }
            Ok(())
        })
        .unwrap();
        let (images, labels) = read_split(&path, "train").unwrap();
        assert_eq!(images.dim(), (6, 2, 3, 1));
        assert_eq!(images[[5, 1, 2, 0]], 35);
        assert_eq!(labels.unwrap().len(), 6);
        let err = read_split(&path, "test").unwrap_err().to_string();
        assert!(
            err.contains("6 images but 5 labels") && err.contains("d.h5"),
            "{err}"
        );
    }

    #[test]
    fn errors_name_the_file_and_the_dataset() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("named.h5");
        write_images(&path, ramp4(2, 2, 2, 1).view(), None, &[]).unwrap();
        let err = read_images(&path, "test/images", None)
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("named.h5")
                && err.contains("no dataset /test/images; the file holds images"),
            "{err}"
        );
        let err = read_labels(&path, "labels", None).unwrap_err();
        assert!(matches!(
            &err,
            DataError::MissingDataset { dataset, group, available, .. }
                if dataset == "/labels" && group == "/" && available == &["images".to_string()]
        ));
        let err = read_labels(&path, "images", None).unwrap_err().to_string();
        assert!(
            err.contains("named.h5") && err.contains("expected labels [N]"),
            "{err}"
        );
        let err = read_images(&dir.path().join("absent.h5"), "images", None)
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("absent.h5") && err.contains("no such file"),
            "{err}"
        );
    }

    #[test]
    fn wrong_types_and_shapes_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("odd.h5");
        create_atomically(&path, |f: &hdf5::File| -> Result<()> {
            f.new_dataset_builder()
                .with_data(&ndarray::Array2::<f32>::zeros((2, 2)))
                .create("floats")
                .unwrap();
            f.new_dataset_builder()
                .with_data(&Array4::<u8>::zeros((2, 2, 2, 4)))
                .create("rgba")
                .unwrap();
            Ok(())
        })
        .unwrap();
        let err = read_images(&path, "floats", None).unwrap_err().to_string();
        assert!(err.contains("/floats holds float32, not uint8"), "{err}");
        let err = read_images(&path, "rgba", None).unwrap_err().to_string();
        assert!(err.contains("/rgba has shape [2, 2, 2, 4]"), "{err}");
    }

    #[test]
    fn a_failed_write_keeps_the_old_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("keep.h5");
        write_images(&path, ramp4(1, 2, 2, 1).view(), None, &[]).unwrap();
        let before = std::fs::read(&path).unwrap();
        let err = write_images(
            &path,
            ramp4(3, 2, 2, 1).view(),
            Some(Array1::zeros(3).view()),
            &[("bad", "nul\0inside")],
        )
        .unwrap_err()
        .to_string();
        assert!(
            err.contains("keep.h5") && err.contains("attribute bad"),
            "{err}"
        );
        assert_eq!(std::fs::read(&path).unwrap(), before);
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1);
    }
}
