//! Drawing a comparison row's samples: the DDPM's reverse chain for one sampler setting, and the
//! centre crop that brings a 32×32 model's samples to the reference images' size.
use std::time::Instant;

use anyhow::Result;
use ddpm_train::model_io::LoadedDdpm;
use ddpm_train::sampler::{to_uint8_nhwc, Sampler, SamplerKind, SamplerSpec};
use tch::{Device, Kind, Tensor};

/// Samples drawn for one row.
pub struct Drawn {
    /// uint8 `[N, H, W, C]` on the CPU.
    pub images: Tensor,
    /// Wall-clock seconds of drawing them.
    pub secs: f64,
    /// The row's sampler label (`ancestral 1000`, `DDIM 50`).
    pub label: String,
}

/// `n` samples of the DDPM `model` (its EMA weights) with the sampler `spec` (`ddimN` or a
/// respacing such as `1000`), `batch` chains at a time, the initial noise seeded by `seed`.
pub fn sample_ddpm(
    model: &LoadedDdpm,
    spec: &str,
    n: usize,
    batch: usize,
    seed: u64,
    device: Device,
) -> Result<Drawn> {
    let mut spec_parsed = SamplerSpec::parse(spec, model.diffusion.num_timesteps())?;
    spec_parsed.x0 = model.sampling.x0;
    let sampler = Sampler::new(&model.diffusion, &spec_parsed, device)?;
    tracing::info!(spec, n, steps = sampler.num_steps(), "DDPM sampling");
    let c = model.unet.config().in_channels;
    let unet = &model.unet;
    tch::manual_seed(seed as i64);
    let start = Instant::now();
    let mut chunks = Vec::new();
    let mut done = 0;
    while done < n {
        let k = (n - done).min(batch) as i64;
        let noise = Tensor::randn([k, c, model.hw.0, model.hw.1], (Kind::Float, device));
        let s = sampler.sample(
            |x, t, _| unet.forward_t(x, t, None, false),
            noise,
            None,
            0,
            |_| {},
        )?;
        chunks.push(to_uint8_nhwc(&s.images).to_device(Device::Cpu));
        done += k as usize;
    }
    let label = match spec_parsed.kind {
        SamplerKind::Ddpm => format!("ancestral {}", spec_parsed.timesteps.len()),
        SamplerKind::Ddim { .. } => format!("DDIM {}", spec_parsed.timesteps.len()),
        SamplerKind::DpmSolverPlusPlus => {
            format!("DPM-Solver++ {}", spec_parsed.timesteps.len())
        }
    };
    Ok(Drawn {
        images: Tensor::cat(&chunks, 0),
        secs: start.elapsed().as_secs_f64(),
        label,
    })
}

/// Centre-crops samples `[N, H, W, C]` to `(h, w)` (a 32×32 model of 28×28 data).
pub fn crop_to(images: Tensor, (h, w): (i64, i64)) -> Tensor {
    let s = images.size();
    if s[1] == h && s[2] == w {
        return images;
    }
    images
        .narrow(1, (s[1] - h) / 2, h)
        .narrow(2, (s[2] - w) / 2, w)
        .contiguous()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn crop_takes_the_centre() {
        let x = Tensor::arange(2 * 6 * 6, (Kind::Int64, Device::Cpu)).view([2, 6, 6, 1]);
        let c = crop_to(x.shallow_clone(), (4, 4));
        assert_eq!(c.size(), [2, 4, 4, 1]);
        assert_eq!(
            c.int64_value(&[0, 0, 0, 0]),
            7,
            "row 1, column 1 of image 0"
        );
        assert_eq!(c.int64_value(&[1, 3, 3, 0]), 36 + 4 * 6 + 4);
        assert_eq!(crop_to(x, (6, 6)).size(), [2, 6, 6, 1]);
    }
}
