//! `cargo xtask bundle`: a portable folder that runs ddpm-cli on another Linux machine (a GPU box
//! without cargo or internet): the stripped release binary, the `ddpm` launcher that finds the
//! machine's torch 2.11 libraries, `gpu_check.sh`, MNIST's four verified .gz files, and the digit
//! classifier when it is installed.
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{bail, Context, Result};

use crate::catalog;
use crate::ctx::Ctx;

/// The size the bundle must stay under (it travels to machines with a 64 MiB transfer limit).
pub const MAX_BUNDLE_BYTES: u64 = 60 * 1000 * 1000;

/// The classifier files `ddpm-cli eval --fid-cls --classifier DIR` reads.
const CLASSIFIER_FILES: [&str; 3] = ["config.json", "model.safetensors", "accuracy.json"];

/// Options of `bundle`.
#[derive(clap::Args, Debug, Clone)]
pub struct BundleArgs {
    /// Where the bundle folder goes (replaced when it is an earlier bundle).
    #[arg(long, default_value = "target/bundle/ddpm-rs")]
    out: PathBuf,
    /// The folder of MNIST's four .gz files (default: datasets/raw/mnist, from `cargo xtask fetch-data`).
    #[arg(long)]
    mnist: Option<PathBuf>,
    /// Leave the digit classifier out even when datasets/weights/classifier-mnist holds one
    /// (gpu_check.sh then trains it on the target machine).
    #[arg(long)]
    no_classifier: bool,
}

/// What goes into a bundle.
pub struct Contents<'a> {
    /// The ddpm-cli binary to strip into it.
    pub cli: &'a Path,
    /// The repository's `scripts/` folder (the launcher and gpu_check.sh).
    pub scripts: &'a Path,
    /// MNIST's four .gz files.
    pub mnist: &'a Path,
    /// A trained digit classifier folder, if any.
    pub classifier: Option<&'a Path>,
}

/// Builds the release binary and assembles the bundle; prints its size.
pub fn bundle(ctx: &Ctx, args: &BundleArgs) -> Result<()> {
    crate::venv::ensure(&ctx.venv())?;
    let cli = ctx.build_release_cli()?;
    let mnist = args
        .mnist
        .clone()
        .unwrap_or_else(|| ctx.datasets().join("raw/mnist"));
    let classifier = ctx.datasets().join("weights/classifier-mnist");
    let has_classifier = !args.no_classifier && classifier.join("model.safetensors").is_file();
    let out = if args.out.is_absolute() {
        args.out.clone()
    } else {
        ctx.root.join(&args.out)
    };
    let contents = Contents {
        cli: &cli,
        scripts: &ctx.root.join("scripts"),
        mnist: &mnist,
        classifier: has_classifier.then_some(classifier.as_path()),
    };
    let bytes = assemble(&out, &contents)?;
    println!(
        "bundle: {} ({:.1} MB{})\n  on the target machine: {}/ddpm info; {}/gpu_check.sh --out results",
        out.display(),
        bytes as f64 / 1e6,
        if has_classifier {
            ", with the digit classifier"
        } else {
            ", without the digit classifier: gpu_check.sh trains it"
        },
        out.display(),
        out.display()
    );
    Ok(())
}

/// Assembles the bundle at `out` (built beside it, then renamed into place; an earlier bundle
/// there is replaced, anything else refused). Returns its size in bytes; fails when it exceeds
/// [`MAX_BUNDLE_BYTES`] or when an MNIST file does not match its published md5.
pub fn assemble(out: &Path, contents: &Contents) -> Result<u64> {
    if out.exists() && !out.join("ddpm").is_file() {
        bail!(
            "{} exists and is not a bundle; give another --out",
            out.display()
        );
    }
    let parent = out.parent().context("--out has no parent folder")?;
    fs::create_dir_all(parent).with_context(|| format!("cannot create {}", parent.display()))?;
    let tmp = tempfile::Builder::new()
        .prefix(".bundle-")
        .tempdir_in(parent)
        .with_context(|| format!("cannot create a folder in {}", parent.display()))?;
    let dir = tmp.path();
    strip_into(contents.cli, &dir.join("ddpm-cli"))?;
    for script in ["ddpm", "gpu_check.sh"] {
        copy_executable(&contents.scripts.join(script), &dir.join(script))?;
    }
    let data = dir.join("data/mnist");
    fs::create_dir_all(&data)?;
    for spec in catalog::MNIST.files {
        let src = contents.mnist.join(spec.name);
        let bytes = fs::read(&src).with_context(|| {
            format!(
                "cannot read {} (run `cargo xtask fetch-data`, or give --mnist DIR)",
                src.display()
            )
        })?;
        crate::fetch::verify_file(spec, &bytes, &src.display().to_string())?;
        fs::write(data.join(spec.name), &bytes)?;
    }
    if let Some(classifier) = contents.classifier {
        let dest = dir.join("weights/classifier-mnist");
        fs::create_dir_all(&dest)?;
        for name in CLASSIFIER_FILES {
            let src = classifier.join(name);
            fs::copy(&src, dest.join(name))
                .with_context(|| format!("cannot copy {}", src.display()))?;
        }
    }
    fs::write(dir.join("README.txt"), README)?;
    let bytes = folder_bytes(dir)?;
    if bytes > MAX_BUNDLE_BYTES {
        bail!(
            "the bundle would be {:.1} MB, over the {:.0} MB limit",
            bytes as f64 / 1e6,
            MAX_BUNDLE_BYTES as f64 / 1e6
        );
    }
    if out.exists() {
        fs::remove_dir_all(out)
            .with_context(|| format!("cannot remove the earlier {}", out.display()))?;
    }
    let kept = tmp.keep();
    fs::rename(&kept, out)
        .with_context(|| format!("cannot move the bundle to {}", out.display()))?;
    Ok(bytes)
}

/// `strip --strip-all` of `src` into `dest` (binutils; the debug information is most of the
/// release binary's size).
fn strip_into(src: &Path, dest: &Path) -> Result<()> {
    if !src.is_file() {
        bail!("{} is missing", src.display());
    }
    let status = Command::new("strip")
        .arg("--strip-all")
        .arg("-o")
        .arg(dest)
        .arg(src)
        .status()
        .context("cannot run `strip` (Debian: apt install binutils)")?;
    if !status.success() {
        bail!("strip {} failed ({status})", src.display());
    }
    Ok(())
}

fn copy_executable(src: &Path, dest: &Path) -> Result<()> {
    use std::os::unix::fs::PermissionsExt;
    fs::copy(src, dest).with_context(|| format!("cannot copy {}", src.display()))?;
    fs::set_permissions(dest, fs::Permissions::from_mode(0o755))?;
    Ok(())
}

fn folder_bytes(dir: &Path) -> Result<u64> {
    let mut total = 0;
    for entry in fs::read_dir(dir)? {
        let entry = entry?;
        let meta = entry.metadata()?;
        total += if meta.is_dir() {
            folder_bytes(&entry.path())?
        } else {
            meta.len()
        };
    }
    Ok(total)
}

const README: &str = "\
ddpm-rs bundle: ddpm-cli for any Linux x86-64 machine whose python3 has torch 2.11 (CPU or CUDA).

  ./ddpm info                              what libtorch, the CPU and the GPU offer
  ./ddpm data import --name mnist --raw data/mnist --out mnist.h5
  ./ddpm train --preset mnist --set data.path='\"mnist.h5\"' --out runs/a
  ./gpu_check.sh --out results             the GPU check (results/gpu_check.json); --dry-run: tiny, on the CPU

The launcher `ddpm` takes libtorch from DDPM_TORCH_LIB (a torch lib folder), else from the torch package of
DDPM_PYTHON, else of python3 on PATH. ddpm-cli restarts itself with OMP_WAIT_POLICY=PASSIVE (OpenMP threads
that sleep instead of spinning) unless OMP_WAIT_POLICY or GOMP_SPINCOUNT is set, and uses the CPUs the process
may use (affinity, cgroup quota) unless --threads N is given.
";

#[cfg(test)]
mod tests {
    use super::*;

    /// MNIST's raw files from the workplace copy or `fetch-data`'s folder.
    fn mnist_dir() -> PathBuf {
        let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
        let fetched = root.join("datasets/raw/mnist");
        if fetched.join(catalog::MNIST.files[0].name).is_file() {
            return fetched;
        }
        let shared = root.join("../shared/datasets/mnist");
        assert!(
            shared.join(catalog::MNIST.files[0].name).is_file(),
            "no MNIST .gz files in {} or {}: run `cargo xtask fetch-data`",
            fetched.display(),
            shared.display()
        );
        shared
    }

    fn scripts() -> PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../scripts")
    }

    #[test]
    fn assembles_a_stripped_runnable_bundle_and_replaces_only_bundles() {
        let dir = tempfile::tempdir().unwrap();
        // Any ELF binary stands in for ddpm-cli: this test's own executable.
        let cli = std::env::current_exe().unwrap();
        let classifier = dir.path().join("classifier");
        fs::create_dir_all(&classifier).unwrap();
        for name in CLASSIFIER_FILES {
            fs::write(classifier.join(name), name).unwrap();
        }
        let mnist = mnist_dir();
        let contents = Contents {
            cli: &cli,
            scripts: &scripts(),
            mnist: &mnist,
            classifier: Some(&classifier),
        };
        let out = dir.path().join("b");
        let bytes = assemble(&out, &contents).unwrap();
        assert_eq!(bytes, folder_bytes(&out).unwrap());
        assert!(
            fs::metadata(out.join("ddpm-cli")).unwrap().len() < fs::metadata(&cli).unwrap().len()
        );
        for f in [
            "ddpm",
            "gpu_check.sh",
            "README.txt",
            "weights/classifier-mnist/model.safetensors",
        ] {
            assert!(out.join(f).is_file(), "{f}");
        }
        for spec in catalog::MNIST.files {
            assert!(out.join("data/mnist").join(spec.name).is_file());
        }
        use std::os::unix::fs::PermissionsExt;
        assert_eq!(
            fs::metadata(out.join("ddpm")).unwrap().permissions().mode() & 0o111,
            0o111
        );
        // A second bundle replaces the first; no temporary folder is left beside it.
        assemble(
            &out,
            &Contents {
                classifier: None,
                ..contents
            },
        )
        .unwrap();
        assert!(!out.join("weights").exists());
        let names: Vec<_> = fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names.len(), 2, "{names:?}");
        // A folder that is not a bundle is never replaced.
        let other = dir.path().join("classifier");
        let err = assemble(&other, &contents).unwrap_err().to_string();
        assert!(err.contains("not a bundle"), "{err}");
        assert!(other.join("model.safetensors").is_file());
    }

    #[test]
    fn a_damaged_mnist_file_is_refused_and_nothing_is_left() {
        let dir = tempfile::tempdir().unwrap();
        let mnist = dir.path().join("mnist");
        fs::create_dir_all(&mnist).unwrap();
        for spec in catalog::MNIST.files {
            fs::copy(mnist_dir().join(spec.name), mnist.join(spec.name)).unwrap();
        }
        let bad = mnist.join(catalog::MNIST.files[1].name);
        let mut bytes = fs::read(&bad).unwrap();
        let last = bytes.len() - 1;
        bytes[last] ^= 1;
        fs::write(&bad, bytes).unwrap();
        let cli = std::env::current_exe().unwrap();
        let out = dir.path().join("b");
        let err = assemble(
            &out,
            &Contents {
                cli: &cli,
                scripts: &scripts(),
                mnist: &mnist,
                classifier: None,
            },
        )
        .unwrap_err();
        let text = format!("{err:#}");
        assert!(text.contains(catalog::MNIST.files[1].name), "{text}");
        assert!(!out.exists());
        let left: Vec<_> = fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(left.len(), 1, "only the mnist folder: {left:?}");
    }
}
