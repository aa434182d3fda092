//! Files of sampling noise: the start of a chain x_T and, optionally, the noise each stochastic
//! step adds, so that a chain can be replayed exactly, here or in another implementation
//! (diffusers, improved-diffusion), and so that chains can be interpolated between starts.
//!
//! Formats, chosen by the file's extension:
//! - `.safetensors`: tensor `x_T` `[N, C, H, W]` and, optionally, `step_noise` `[M, N, C, H, W]`;
//! - `.npz` (numpy's `np.savez`): arrays `x_T` and, optionally, `step_noise`, same shapes;
//! - `.npy`: x_T alone, `[N, C, H, W]`.
//!
//! Values are f32 (f64 and f16/bf16 files are read and rounded to f32). `step_noise[m]` is the
//! standard normal noise of the m-th step of the chain that draws noise, counted from x_T
//! ([`Sampler::noise_steps`](crate::sampler::Sampler::noise_steps) says how many there are): the
//! z of Ho et al. 2020, Algorithm 2, line 3, or DDIM's ε_t of Song et al. 2021, Eq. 12, for η > 0.
use std::path::{Path, PathBuf};

use ndarray::{ArrayD, IxDyn};
use tch::{Device, Kind, Tensor};

use crate::error::{Result, TrainError};

/// The name of x_T in a noise file.
pub const X_T: &str = "x_T";
/// The name of the per-step noise in a noise file.
pub const STEP_NOISE: &str = "step_noise";

/// The noise of a set of chains, on the CPU in f32.
#[derive(Debug)]
pub struct ChainNoise {
    /// The chains' starts x_T, `[N, C, H, W]`.
    pub x_t: Tensor,
    /// The noise of each step that draws noise, `[M, N, C, H, W]` (`None`: drawn from the seed).
    pub step_noise: Option<Tensor>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Format {
    Safetensors,
    Npz,
    Npy,
}

fn bad(path: &Path, message: impl Into<String>) -> TrainError {
    TrainError::Checkpoint {
        path: path.to_path_buf(),
        message: message.into(),
    }
}

fn format_of(path: &Path) -> Result<Format> {
    match path.extension().and_then(|e| e.to_str()) {
        Some("safetensors") => Ok(Format::Safetensors),
        Some("npz") => Ok(Format::Npz),
        Some("npy") => Ok(Format::Npy),
        _ => Err(bad(
            path,
            "a noise file ends in .safetensors, .npz or .npy (x_T only)",
        )),
    }
}

/// The format of `path` when it can hold x_T and, when `step_noise`, per-step noise.
fn target_format(path: &Path, step_noise: bool) -> Result<Format> {
    let format = format_of(path)?;
    if step_noise && format == Format::Npy {
        return Err(bad(
            path,
            "this chain draws noise after x_T and a .npy file holds x_T only: use .safetensors or .npz",
        ));
    }
    Ok(format)
}

impl ChainNoise {
    /// Reads a noise file (see the module docs for the formats).
    ///
    /// # Errors
    /// An unknown extension, an unreadable or malformed file, a missing `x_T`, a tensor other than
    /// `x_T` / `step_noise`, a non-float tensor, wrong ranks, a `step_noise` whose chains differ
    /// from `x_T`'s, or a non-finite value; each names the file.
    pub fn read(path: &Path) -> Result<Self> {
        if path.is_dir() {
            return Err(bad(path, "is a folder, not a noise file"));
        }
        let mut named = match format_of(path)? {
            Format::Safetensors => {
                let tensors = ddpm_nets::checkpoint::read_tensors(path)?;
                tensors
                    .into_iter()
                    .map(|(n, t)| {
                        if t.is_floating_point() {
                            Ok((n, t.to_kind(Kind::Float)))
                        } else {
                            Err(bad(
                                path,
                                format!("tensor `{n}` is {:?}, not a float", t.kind()),
                            ))
                        }
                    })
                    .collect::<Result<Vec<_>>>()?
            }
            Format::Npz => read_npz(path)?,
            Format::Npy => vec![(X_T.to_string(), read_npy(path)?)],
        };
        if let Some((n, _)) = named.iter().find(|(n, _)| n != X_T && n != STEP_NOISE) {
            return Err(bad(
                path,
                format!("holds `{n}`; a noise file holds `{X_T}` and optionally `{STEP_NOISE}`"),
            ));
        }
        let mut take = |name: &str| {
            named
                .iter()
                .position(|(n, _)| n == name)
                .map(|i| named.swap_remove(i).1)
        };
        let x_t = take(X_T).ok_or_else(|| bad(path, format!("has no `{X_T}`")))?;
        let step_noise = take(STEP_NOISE);
        let noise = Self { x_t, step_noise };
        noise.check_layout(path)?;
        Ok(noise)
    }

    fn check_layout(&self, path: &Path) -> Result<()> {
        let s = self.x_t.size();
        if s.len() != 4 || s[0] == 0 {
            return Err(bad(
                path,
                format!("`{X_T}` has shape {s:?}; expected [N, C, H, W], N ≥ 1"),
            ));
        }
        if let Some(z) = &self.step_noise {
            let zs = z.size();
            if zs.len() != 5 || zs[1..] != s[..] {
                return Err(bad(
                    path,
                    format!("`{STEP_NOISE}` has shape {zs:?}; expected [M, {}, {}, {}, {}] (M steps × the chains of `{X_T}`)", s[0], s[1], s[2], s[3]),
                ));
            }
        }
        let all_finite = |t: &Tensor| t.isfinite().all().int64_value(&[]) == 1;
        if !all_finite(&self.x_t) || self.step_noise.as_ref().is_some_and(|z| !all_finite(z)) {
            return Err(bad(path, "holds NaN or infinite values"));
        }
        Ok(())
    }

    /// Number of chains N.
    pub fn num_chains(&self) -> usize {
        self.x_t.size()[0] as usize
    }

    /// Checks that the noise fits chains of images `[c, h, w]` on a sampler whose chains draw
    /// noise at `noise_steps` steps; `path` names the file in errors.
    pub fn check_fits(&self, path: &Path, chw: [i64; 3], noise_steps: usize) -> Result<()> {
        let s = self.x_t.size();
        if s[1..] != chw[..] {
            return Err(bad(
                path,
                format!(
                    "`{X_T}` has images [C, H, W] = {:?}; the model's are {chw:?}",
                    &s[1..]
                ),
            ));
        }
        match &self.step_noise {
            Some(z) if z.size()[0] as usize != noise_steps => Err(bad(
                path,
                format!(
                    "`{STEP_NOISE}` holds noise for {} steps; this sampler draws noise at {noise_steps} steps",
                    z.size()[0]
                ),
            )),
            _ => Ok(()),
        }
    }

    /// The noise of chains `start .. start + n`, on `device`: x_T `[n, C, H, W]` and the
    /// per-step noise `[M, n, C, H, W]` when present.
    pub fn slice(&self, start: usize, n: usize, device: Device) -> (Tensor, Option<Tensor>) {
        let (start, n) = (start as i64, n as i64);
        let x_t = self.x_t.narrow(0, start, n).to_device(device);
        let z = self
            .step_noise
            .as_ref()
            .map(|z| z.narrow(1, start, n).to_device(device));
        (x_t, z)
    }

    /// Checks that `path` can be written with [`write`](Self::write): a known extension, and not
    /// `.npy` when the chains draw noise after x_T (`step_noise`).
    ///
    /// # Errors
    /// An unknown extension, or `.npy` with per-step noise; naming the file.
    pub fn check_target(path: &Path, step_noise: bool) -> Result<()> {
        target_format(path, step_noise).map(|_| ())
    }

    /// Writes the noise atomically; `.npy` takes x_T only, so it refuses per-step noise.
    ///
    /// # Errors
    /// An unknown extension, per-step noise for a `.npy` file, or a write failure naming the file
    /// (the previous file, if any, is kept).
    pub fn write(&self, path: &Path) -> Result<()> {
        let format = target_format(path, self.step_noise.is_some())?;
        let mut named = vec![(X_T.to_string(), self.x_t.shallow_clone())];
        if let Some(z) = &self.step_noise {
            named.push((STEP_NOISE.to_string(), z.shallow_clone()));
        }
        match format {
            Format::Safetensors => Ok(ddpm_nets::checkpoint::write_tensors(path, &named)?),
            Format::Npz | Format::Npy => {
                let arrays: Vec<(String, ArrayD<f32>)> = named
                    .iter()
                    .map(|(n, t)| Ok((n.clone(), to_array(t)?)))
                    .collect::<Result<_>>()?;
                let owned: PathBuf = path.to_path_buf();
                ddpm_nets::atomic::write_atomically(path, |tmp| {
                    write_numpy(tmp, format, &arrays).map_err(|e| bad(&owned, e))
                })
            }
        }
    }
}

fn to_array(t: &Tensor) -> Result<ArrayD<f32>> {
    let t = t.to_device(Device::Cpu).to_kind(Kind::Float).contiguous();
    let shape: Vec<usize> = t.size().iter().map(|&d| d as usize).collect();
    let values = Vec::<f32>::try_from(t.flatten(0, -1))?;
    Ok(ArrayD::from_shape_vec(IxDyn(&shape), values).expect("shape of a contiguous tensor"))
}

fn to_tensor(a: ArrayD<f32>) -> Tensor {
    let shape: Vec<i64> = a.shape().iter().map(|&d| d as i64).collect();
    let values: Vec<f32> = a.into_iter().collect();
    Tensor::from_slice(&values).reshape(shape)
}

/// The data size in bytes that a `.npy` image declares in its header (shape × item size), so
/// that a header claiming more than the file holds is refused before anything is allocated.
/// `None` when the header cannot be read.
fn declared_bytes(npy: &[u8]) -> Option<u128> {
    if npy.len() < 10 || &npy[..6] != b"\x93NUMPY" {
        return None;
    }
    let (len, start): (usize, usize) = match npy[6] {
        1 => (u16::from_le_bytes([npy[8], npy[9]]) as usize, 10),
        2 | 3 => (
            u32::from_le_bytes(npy.get(8..12)?.try_into().ok()?) as usize,
            12,
        ),
        _ => return None,
    };
    let header = std::str::from_utf8(npy.get(start..start.checked_add(len)?)?).ok()?;
    let after = |key: &str| header.split(key).nth(1);
    let descr = after("descr")?;
    let descr = &descr[descr.find(':')? + 1..];
    let quote = descr.find(['\'', '"'])?;
    let descr = &descr[quote + 1..];
    let descr = &descr[..descr.find(['\'', '"'])?];
    let item: u128 = descr
        .trim_start_matches(|c: char| !c.is_ascii_digit())
        .parse()
        .ok()?;
    let shape = after("shape")?;
    let shape = &shape[shape.find('(')? + 1..];
    let shape = &shape[..shape.find(')')?];
    shape
        .split(',')
        .map(str::trim)
        .filter(|d| !d.is_empty())
        .try_fold(item, |acc, d| {
            // A dimension too large for u128 is as impossible as one that overflows the product.
            let d = match d.parse::<u128>() {
                Ok(d) => d,
                Err(_) if d.bytes().all(|b| b.is_ascii_digit()) => u128::MAX,
                Err(_) => return None,
            };
            Some(acc.saturating_mul(d))
        })
}

/// Parses a `.npy` image held in memory as f32 (f64 rounded), after checking that the file holds
/// the data its header declares; `what` names the array in errors.
fn npy_from_bytes(path: &Path, what: &str, npy: &[u8]) -> Result<Tensor> {
    use ndarray_npy::ReadNpyExt;
    match declared_bytes(npy) {
        None => return Err(bad(path, format!("{what}: not a readable .npy header"))),
        Some(n) if n > npy.len() as u128 => {
            return Err(bad(
                path,
                format!(
                    "{what}: the header declares {n} bytes of data but the file holds {}",
                    npy.len()
                ),
            ))
        }
        Some(_) => {}
    }
    match ArrayD::<f32>::read_npy(npy) {
        Ok(a) => Ok(to_tensor(a)),
        Err(ndarray_npy::ReadNpyError::WrongDescriptor(_)) => ArrayD::<f64>::read_npy(npy)
            .map(|a| to_tensor(a.mapv(|v| v as f32)))
            .map_err(|e| bad(path, format!("{what}: not a float32/float64 array: {e}"))),
        Err(e) => Err(bad(path, format!("{what}: not a readable .npy array: {e}"))),
    }
}

/// Reads a `.npy` file.
fn read_npy(path: &Path) -> Result<Tensor> {
    let bytes = std::fs::read(path).map_err(TrainError::io(path))?;
    npy_from_bytes(path, X_T, &bytes)
}

/// Reads every array of a `.npz` archive (stored or deflated, as `np.savez` and
/// `np.savez_compressed` write them) as f32.
fn read_npz(path: &Path) -> Result<Vec<(String, Tensor)>> {
    use std::io::Read;
    let file = std::fs::File::open(path).map_err(TrainError::io(path))?;
    let mut zip = zip::ZipArchive::new(std::io::BufReader::new(file))
        .map_err(|e| bad(path, format!("not a .npz archive: {e}")))?;
    let mut out = Vec::with_capacity(zip.len());
    for i in 0..zip.len() {
        let mut member = zip
            .by_index(i)
            .map_err(|e| bad(path, format!("not a .npz archive: {e}")))?;
        let name = member.name().to_string();
        let name = name.strip_suffix(".npy").unwrap_or(&name).to_string();
        let mut bytes = Vec::new();
        // Grows with the data actually read, whatever size the archive claims.
        member
            .read_to_end(&mut bytes)
            .map_err(|e| bad(path, format!("array `{name}`: {e}")))?;
        let t = npy_from_bytes(path, &format!("array `{name}`"), &bytes)?;
        out.push((name, t));
    }
    Ok(out)
}

fn write_numpy(
    tmp: &Path,
    format: Format,
    arrays: &[(String, ArrayD<f32>)],
) -> std::result::Result<(), String> {
    use ndarray_npy::{NpzWriter, WriteNpyExt};
    let file = std::fs::OpenOptions::new()
        .write(true)
        .truncate(true)
        .open(tmp)
        .map_err(|e| e.to_string())?;
    let writer = std::io::BufWriter::new(file);
    if format == Format::Npy {
        return arrays[0].1.write_npy(writer).map_err(|e| e.to_string());
    }
    let mut npz = NpzWriter::new(writer);
    for (name, a) in arrays {
        npz.add_array(name.as_str(), a).map_err(|e| e.to_string())?;
    }
    let mut w = npz.finish().map_err(|e| e.to_string())?;
    std::io::Write::flush(&mut w).map_err(|e| e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn noise(steps: Option<i64>) -> ChainNoise {
        let x_t = Tensor::randn([3, 1, 4, 5], (Kind::Float, Device::Cpu));
        let step_noise = steps.map(|m| Tensor::randn([m, 3, 1, 4, 5], (Kind::Float, Device::Cpu)));
        ChainNoise { x_t, step_noise }
    }

    fn same(a: &Tensor, b: &Tensor) -> bool {
        a.size() == b.size() && a.eq_tensor(b).all().int64_value(&[]) == 1
    }

    #[test]
    fn every_format_round_trips_bit_for_bit() {
        let dir = tempfile::tempdir().unwrap();
        for (name, steps) in [
            ("n.safetensors", Some(7)),
            ("n.npz", Some(2)),
            ("n.npy", None),
            ("m.safetensors", None),
        ] {
            let path = dir.path().join(name);
            let a = noise(steps);
            a.write(&path).unwrap();
            let b = ChainNoise::read(&path).unwrap();
            assert!(same(&a.x_t, &b.x_t), "{name}");
            match (&a.step_noise, &b.step_noise) {
                (Some(x), Some(y)) => assert!(same(x, y), "{name}"),
                (None, None) => {}
                _ => panic!("{name}: step noise lost or invented"),
            }
        }
    }

    #[test]
    fn bad_files_are_named_errors() {
        let dir = tempfile::tempdir().unwrap();
        let npy = dir.path().join("x.npy");
        let err = noise(Some(3)).write(&npy).unwrap_err().to_string();
        assert!(err.contains("x.npy") && err.contains(".npz"), "{err}");
        assert!(!npy.exists());
        noise(None).write(&npy).unwrap();
        let bytes = std::fs::read(&npy).unwrap();
        let cut = dir.path().join("cut.npy");
        std::fs::write(&cut, &bytes[..bytes.len() - 9]).unwrap();
        let err = ChainNoise::read(&cut).unwrap_err().to_string();
        assert!(err.contains("cut.npy"), "{err}");
        let txt = dir.path().join("x.txt");
        assert!(ChainNoise::read(&txt)
            .unwrap_err()
            .to_string()
            .contains("x.txt"));
        let wrong = dir.path().join("w.safetensors");
        let bad_z = ChainNoise {
            x_t: Tensor::zeros([3, 1, 4, 5], (Kind::Float, Device::Cpu)),
            step_noise: Some(Tensor::zeros([2, 2, 1, 4, 5], (Kind::Float, Device::Cpu))),
        };
        ddpm_nets::checkpoint::write_tensors(
            &wrong,
            &[
                (X_T.into(), bad_z.x_t.shallow_clone()),
                (STEP_NOISE.into(), bad_z.step_noise.unwrap()),
            ],
        )
        .unwrap();
        let err = ChainNoise::read(&wrong).unwrap_err().to_string();
        assert!(
            err.contains("w.safetensors") && err.contains(STEP_NOISE),
            "{err}"
        );
        let nan = dir.path().join("nan.safetensors");
        ddpm_nets::checkpoint::write_tensors(
            &nan,
            &[(
                X_T.into(),
                Tensor::full([1, 1, 2, 2], f64::NAN, (Kind::Float, Device::Cpu)),
            )],
        )
        .unwrap();
        assert!(ChainNoise::read(&nan)
            .unwrap_err()
            .to_string()
            .contains("NaN"));
        let other = dir.path().join("o.safetensors");
        ddpm_nets::checkpoint::write_tensors(
            &other,
            &[(
                "noise".into(),
                Tensor::zeros([1, 1, 2, 2], (Kind::Float, Device::Cpu)),
            )],
        )
        .unwrap();
        assert!(ChainNoise::read(&other)
            .unwrap_err()
            .to_string()
            .contains("`noise`"));
    }

    /// A `.npy` image whose header declares `shape` and that holds `data` bytes.
    fn npy_bytes(shape: &str, data: usize) -> Vec<u8> {
        let mut header = format!("{{'descr': '<f4', 'fortran_order': False, 'shape': {shape}, }}");
        while (10 + header.len() + 1) % 64 != 0 {
            header.push(' ');
        }
        header.push('\n');
        let mut out = b"\x93NUMPY\x01\x00".to_vec();
        out.extend((header.len() as u16).to_le_bytes());
        out.extend(header.as_bytes());
        out.extend(vec![0u8; data]);
        out
    }

    #[test]
    fn headers_that_claim_more_than_the_file_holds_are_refused_before_allocating() {
        let dir = tempfile::tempdir().unwrap();
        let ok = dir.path().join("ok.npy");
        std::fs::write(&ok, npy_bytes("(1, 1, 2, 2)", 16)).unwrap();
        assert_eq!(ChainNoise::read(&ok).unwrap().x_t.size(), vec![1, 1, 2, 2]);
        for shape in [
            "(1000000000000, 1, 28, 28)",
            "(99999999999999999999999, 9999999999999999999)",
        ] {
            let huge = dir.path().join("huge.npy");
            std::fs::write(&huge, npy_bytes(shape, 100)).unwrap();
            let err = ChainNoise::read(&huge).unwrap_err().to_string();
            assert!(err.contains("huge.npy") && err.contains("holds"), "{err}");
            // The same member inside an archive.
            let npz = dir.path().join("huge.npz");
            let mut zip = zip::ZipWriter::new(std::fs::File::create(&npz).unwrap());
            zip.start_file("x_T.npy", zip::write::SimpleFileOptions::default())
                .unwrap();
            std::io::Write::write_all(&mut zip, &npy_bytes(shape, 100)).unwrap();
            zip.finish().unwrap();
            let err = ChainNoise::read(&npz).unwrap_err().to_string();
            assert!(err.contains("huge.npz") && err.contains("x_T"), "{err}");
        }
    }

    #[test]
    fn fit_checks_name_shapes_and_step_counts() {
        let p = Path::new("n.safetensors");
        let a = noise(Some(4));
        a.check_fits(p, [1, 4, 5], 4).unwrap();
        assert!(a
            .check_fits(p, [3, 4, 5], 4)
            .unwrap_err()
            .to_string()
            .contains("[C, H, W]"));
        assert!(a
            .check_fits(p, [1, 4, 5], 5)
            .unwrap_err()
            .to_string()
            .contains("5 steps"));
        noise(None).check_fits(p, [1, 4, 5], 9).unwrap();
    }
}
