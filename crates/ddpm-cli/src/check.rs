//! `ddpm-cli check RUN_DIR`: verifies a run directory without changing it: its config parses,
//! and every checkpoint folder matches its manifest (sizes and sha256 of every file); says which
//! checkpoint `--resume` would continue from and what a killed training left behind.
use std::path::PathBuf;

use anyhow::{bail, Context, Result};
use ddpm_train::run_dir::RunDir;

/// Arguments of `ddpm-cli check`.
#[derive(clap::Args)]
pub struct CheckArgs {
    /// The run directory (of `train` or `train-classifier`).
    run: PathBuf,
    /// Print the result as one JSON object (checkpoints with ok / problem, resume_from,
    /// leftovers).
    #[arg(long)]
    json: bool,
}

pub fn run(args: CheckArgs) -> Result<()> {
    let run = RunDir::open(&args.run)?;
    let config = run.path.join("config.toml");
    let text = std::fs::read_to_string(&config)
        .with_context(|| format!("cannot read {}", config.display()))?;
    toml::from_str::<toml::Table>(&text)
        .with_context(|| format!("{}: not valid TOML", config.display()))?;
    let results = run.verify_all()?;
    // The one rule of what --resume loads (it verifies again; a damaged newer one is logged).
    let resume_from = run.latest_checkpoint()?;
    let leftovers: Vec<PathBuf> = std::fs::read_dir(run.checkpoints_dir())
        .map(|it| {
            it.filter_map(|e| e.ok().map(|e| e.path()))
                .filter(|p| {
                    p.file_name()
                        .is_some_and(|n| n.to_string_lossy().starts_with('.'))
                })
                .collect()
        })
        .unwrap_or_default();
    let damaged = results.iter().filter(|(_, r)| r.is_err()).count();
    if args.json {
        let list: Vec<_> = results
            .iter()
            .map(|(dir, r)| {
                serde_json::json!({
                    "checkpoint": dir,
                    "ok": r.is_ok(),
                    "problem": r.as_ref().err().map(|e| e.to_string()),
                })
            })
            .collect();
        let doc = serde_json::json!({
            "run": run.path,
            "checkpoints": list,
            "resume_from": resume_from,
            "leftovers": leftovers,
        });
        println!("{doc}");
    } else {
        for (dir, r) in &results {
            match r {
                Ok(()) => println!("ok       {}", dir.display()),
                Err(e) => println!("DAMAGED  {}: {e}", dir.display()),
            }
        }
        match &resume_from {
            Some(d) => println!("--resume continues from {}", d.display()),
            None => println!("--resume starts from step 0 (no valid checkpoint)"),
        }
        for p in &leftovers {
            println!(
                "leftover of a killed training (the next --resume removes it): {}",
                p.display()
            );
        }
    }
    if damaged > 0 {
        bail!(
            "{}: {damaged} of {} checkpoints damaged or incomplete",
            run.path.display(),
            results.len()
        );
    }
    Ok(())
}
