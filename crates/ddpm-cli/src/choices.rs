//! The value parsers of the options that take one of a fixed set of names (`--sampler`, `--dtype`,
//! `--schedule`, `--preset`, `--dataset`, `--model`, `--device`): the parser refuses anything else
//! with exit status 2, lists the values in `--help` and in the error, and suggests the closest one
//! (`did you mean`), before the command does any work.
use clap::builder::{PossibleValue, PossibleValuesParser};
use ddpm_nets::device::DeviceSpec;

/// `--sampler`: ancestral DDPM, DDIM, DPM-Solver++(2M) (also accepted as `dpmsolver++`).
pub fn sampler() -> PossibleValuesParser {
    PossibleValuesParser::new([
        PossibleValue::new("ddpm").help("ancestral sampling, Ho et al. 2020 Alg. 2"),
        PossibleValue::new("ddim").help("DDIM, Song et al. 2021 (η from --eta)"),
        PossibleValue::new("dpm++")
            .alias("dpmsolver++")
            .help("DPM-Solver++(2M), Lu et al. 2022"),
    ])
}

/// `--dtype`: the network's arithmetic.
pub fn dtype() -> PossibleValuesParser {
    PossibleValuesParser::new(["auto", "f32", "bf16"])
}

/// `--schedule`: the β schedules of [`ddpm_math::BetaSchedule`].
pub fn schedule() -> PossibleValuesParser {
    PossibleValuesParser::new(ddpm_math::BetaSchedule::ALL.map(|s| s.name()))
}

/// `train --preset`: the built-in presets and `auto`.
pub fn train_preset() -> PossibleValuesParser {
    let mut names = ddpm_train::config::PRESETS.to_vec();
    names.push("auto");
    PossibleValuesParser::new(names)
}

/// `bench --preset`: the built-in presets.
pub fn preset() -> PossibleValuesParser {
    PossibleValuesParser::new(ddpm_train::config::PRESETS)
}

/// `train-classifier --dataset`: the datasets with a domain classifier.
pub fn classifier_dataset() -> PossibleValuesParser {
    PossibleValuesParser::new(["mnist", "fashion-mnist"])
}

/// `train --model`: what to train.
pub fn model_kind() -> PossibleValuesParser {
    PossibleValuesParser::new(["ddpm", "gan", "vae"])
}

/// The largest count of images a command accepts (`--num`, batch sizes): a bound that turns a
/// typo into a usage error instead of hours of work or an allocation failure.
pub const MAX_COUNT: usize = 10_000_000;

/// A count of images or steps, 1 to [`MAX_COUNT`].
pub fn count(s: &str) -> Result<usize, String> {
    let n: usize = s
        .parse()
        .map_err(|_| format!("`{s}` is not a whole number"))?;
    if (1..=MAX_COUNT).contains(&n) {
        Ok(n)
    } else {
        Err(format!("{n} is not in 1..={MAX_COUNT}"))
    }
}

/// A number in [0, 1] (`--eta`).
pub fn unit_interval(s: &str) -> Result<f64, String> {
    let x: f64 = s.parse().map_err(|_| format!("`{s}` is not a number"))?;
    if (0.0..=1.0).contains(&x) {
        Ok(x)
    } else {
        Err(format!("{x} is outside [0, 1]"))
    }
}

/// `--device`: `auto`, `cpu`, `cuda` or `cuda:N`; anything else is refused with the closest name.
pub fn device(s: &str) -> Result<DeviceSpec, String> {
    s.parse::<DeviceSpec>().map_err(|_| {
        let names = ["auto", "cpu", "cuda", "cuda:0"];
        let tip = names
            .iter()
            .map(|n| (strsim::jaro(s, n), n))
            .filter(|(score, _)| *score > 0.7)
            .max_by(|a, b| a.0.total_cmp(&b.0))
            .map(|(_, n)| format!("\n\n  tip: a similar value exists: '{n}'"))
            .unwrap_or_default();
        format!("expected auto, cpu, cuda or cuda:N (N: a GPU index){tip}")
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn devices_parse_and_typos_get_the_closest_name() {
        assert_eq!(device("cuda:1").unwrap(), DeviceSpec::Cuda(1));
        assert_eq!(device("cpu").unwrap(), DeviceSpec::Cpu);
        let err = device("cudaa").unwrap_err();
        assert!(err.contains("'cuda'"), "{err}");
        let err = device("qqqqqqq").unwrap_err();
        assert!(!err.contains("tip"), "{err}");
    }
}
