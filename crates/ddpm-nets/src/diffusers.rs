//! diffusers model folders: `config.json` ⇄ [`UNetConfig`] and `diffusion_pytorch_model.safetensors` ⇄ VarStore.
//!
//! A folder written by diffusers' `UNet2DModel.save_pretrained` (e.g. `google/ddpm-cifar10-32`) loads by name;
//! options that this crate does not implement are refused with an error naming the key and its value. Folders
//! written by [`save_pretrained`] have the same layout and load back in diffusers.
use std::path::Path;

use serde_json::{json, Map, Value};
use tch::{nn::VarStore, Device};

use crate::checkpoint::{load_varstore_renamed, save_varstore, write_json};
use crate::error::{Error, Result};
use crate::unet::{UNet2DModel, UNetConfig};

/// Config file of a diffusers model folder.
pub const CONFIG_NAME: &str = "config.json";
/// Weights file of a diffusers model folder.
pub const WEIGHTS_NAME: &str = "diffusion_pytorch_model.safetensors";
/// The diffusers version whose `UNet2DModel` config we write (and whose layout the parity fixtures come from).
pub const DIFFUSERS_VERSION: &str = "0.42.1";

/// The defaults of diffusers' `UNet2DModel.__init__` for every key of [`UNetConfig`]: a key absent from an older
/// config.json means diffusers' default, not ours.
fn diffusers_defaults() -> Map<String, Value> {
    let v = json!({
        "sample_size": null,
        "in_channels": 3,
        "out_channels": 3,
        "center_input_sample": false,
        "time_embedding_dim": null,
        "freq_shift": 0,
        "flip_sin_to_cos": true,
        "down_block_types": ["DownBlock2D", "AttnDownBlock2D", "AttnDownBlock2D", "AttnDownBlock2D"],
        "up_block_types": ["AttnUpBlock2D", "AttnUpBlock2D", "AttnUpBlock2D", "UpBlock2D"],
        "block_out_channels": [224, 448, 672, 896],
        "layers_per_block": 2,
        "mid_block_scale_factor": 1.0,
        "downsample_padding": 1,
        "dropout": 0.0,
        "attention_head_dim": 8,
        "norm_num_groups": 32,
        "attn_norm_num_groups": null,
        "norm_eps": 1e-5,
        "add_attention": true,
        "num_class_embeds": null
    });
    match v {
        Value::Object(m) => m,
        _ => unreachable!("defaults are an object"),
    }
}

/// Keys of diffusers' config that select behaviour we implement one way only: (key, accepted values).
fn fixed_keys() -> Vec<(&'static str, Vec<Value>)> {
    vec![
        ("act_fn", vec![json!("silu"), json!("swish")]),
        ("time_embedding_type", vec![json!("positional")]),
        ("mid_block_type", vec![json!("UNetMidBlock2D")]),
        ("downsample_type", vec![json!("conv")]),
        ("upsample_type", vec![json!("conv")]),
        ("resnet_time_scale_shift", vec![json!("default")]),
        ("class_embed_type", vec![Value::Null]),
    ]
}

/// Keys that only matter for options we refuse elsewhere (`num_train_timesteps` sizes a learned embedding).
const IGNORED_KEYS: &[&str] = &["num_train_timesteps"];

fn describe(values: &[Value]) -> String {
    let vs: Vec<String> = values.iter().map(Value::to_string).collect();
    format!("supported: {}", vs.join(" or "))
}

/// Converts a diffusers `UNet2DModel` config (parsed JSON) to a [`UNetConfig`], refusing what we do not implement.
pub fn config_from_json(value: &Value) -> Result<UNetConfig> {
    let Value::Object(map) = value else {
        return Err(Error::InvalidConfig(
            "config.json is not a JSON object".into(),
        ));
    };
    if let Some(name) = map.get("_class_name") {
        if name != "UNet2DModel" {
            return Err(Error::Unsupported {
                key: "_class_name".into(),
                value: name.to_string(),
                supported: "supported: \"UNet2DModel\"".into(),
            });
        }
    }
    let fixed = fixed_keys();
    let mut kept = diffusers_defaults();
    for (key, v) in map {
        if key.starts_with('_') || IGNORED_KEYS.contains(&key.as_str()) {
            continue;
        }
        if let Some((_, accepted)) = fixed.iter().find(|(k, _)| k == key) {
            if !accepted.contains(v) {
                return Err(Error::Unsupported {
                    key: key.clone(),
                    value: v.to_string(),
                    supported: describe(accepted),
                });
            }
            continue;
        }
        if !kept.contains_key(key) {
            return Err(Error::Unsupported {
                key: key.clone(),
                value: v.to_string(),
                supported: "ddpm-nets does not implement this option".into(),
            });
        }
        kept.insert(key.clone(), v.clone());
    }
    for (key, accepted) in [
        ("down_block_types", ["DownBlock2D", "AttnDownBlock2D"]),
        ("up_block_types", ["UpBlock2D", "AttnUpBlock2D"]),
    ] {
        if let Some(Value::Array(items)) = kept.get(key) {
            if let Some(bad) = items.iter().find(|i| !accepted.iter().any(|a| *i == a)) {
                return Err(Error::Unsupported {
                    key: key.into(),
                    value: bad.to_string(),
                    supported: format!("supported block types: {}", accepted.join(", ")),
                });
            }
        }
    }
    if kept.get("norm_num_groups") == Some(&Value::Null) {
        return Err(Error::Unsupported {
            key: "norm_num_groups".into(),
            value: "null".into(),
            supported: "an explicit group count is required".into(),
        });
    }
    let cfg: UNetConfig = match serde_json::from_value(Value::Object(kept.clone())) {
        Ok(cfg) => cfg,
        Err(e) => {
            // Name the key whose value does not parse.
            let defaults = diffusers_defaults();
            let culprit = kept.iter().find(|(k, v)| {
                let mut one = defaults.clone();
                one.insert((*k).clone(), (*v).clone());
                serde_json::from_value::<UNetConfig>(Value::Object(one)).is_err()
            });
            return Err(Error::InvalidConfig(match culprit {
                Some((k, v)) => format!("`{k}` = {v}: {e}"),
                None => e.to_string(),
            }));
        }
    };
    cfg.validate()?;
    Ok(cfg)
}

/// The diffusers `config.json` of a [`UNetConfig`] (loadable by `UNet2DModel.from_pretrained`).
pub fn config_to_json(cfg: &UNetConfig) -> Value {
    let mut map = match serde_json::to_value(cfg) {
        Ok(Value::Object(m)) => m,
        _ => unreachable!("UNetConfig serialises to an object"),
    };
    map.insert("_class_name".into(), json!("UNet2DModel"));
    map.insert("_diffusers_version".into(), json!(DIFFUSERS_VERSION));
    for (key, accepted) in fixed_keys() {
        map.insert(key.into(), accepted[0].clone());
    }
    map.insert("num_train_timesteps".into(), Value::Null);
    Value::Object(map)
}

/// Reads a diffusers `config.json`.
pub fn read_config(path: &Path) -> Result<UNetConfig> {
    let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
    let value: Value = serde_json::from_str(&text).map_err(|source| Error::Json {
        path: path.to_path_buf(),
        source,
    })?;
    config_from_json(&value).map_err(|e| match e {
        Error::Unsupported {
            key,
            value,
            supported,
        } => Error::Unsupported {
            key: format!("{}: {key}", path.display()),
            value,
            supported,
        },
        Error::InvalidConfig(m) => Error::InvalidConfig(format!("{}: {m}", path.display())),
        other => other,
    })
}

/// Maps the attention names of older diffusers checkpoints (`query`, `key`, `value`, `proj_attn`) to the current
/// ones (`to_q`, `to_k`, `to_v`, `to_out.0`); other names are returned unchanged.
pub fn rename_deprecated(name: &str) -> String {
    let parts: Vec<&str> = name.split('.').collect();
    let mut out: Vec<&str> = Vec::with_capacity(parts.len() + 1);
    for (i, part) in parts.iter().enumerate() {
        let in_attention = i >= 2
            && parts[i - 2] == "attentions"
            && parts[i - 1].chars().all(|c| c.is_ascii_digit());
        match (in_attention, *part) {
            (true, "query") => out.push("to_q"),
            (true, "key") => out.push("to_k"),
            (true, "value") => out.push("to_v"),
            (true, "proj_attn") => out.extend(["to_out", "0"]),
            _ => out.push(part),
        }
    }
    out.join(".")
}

/// Loads `diffusion_pytorch_model.safetensors`-style weights into a VarStore built by [`UNet2DModel::new`] on its
/// root; deprecated attention names are mapped, and missing, unexpected or mis-shaped tensors are named.
pub fn load_weights(vs: &mut VarStore, path: &Path) -> Result<()> {
    load_varstore_renamed(vs, path, rename_deprecated)
}

/// A lower bound of the parameter count of the UNet of `cfg` (one 3×3 convolution per resnet, the
/// input and output convolutions, the time and class embeddings), saturating instead of
/// overflowing.
fn parameter_floor(cfg: &UNetConfig) -> u128 {
    let n = |v: i64| u128::try_from(v).unwrap_or(0);
    let c0 = n(cfg.block_out_channels.first().copied().unwrap_or(0));
    let temb = n(cfg.time_embed_dim());
    let levels = cfg.block_out_channels.iter().fold(0u128, |acc, &c| {
        acc.saturating_add(
            n(cfg.layers_per_block)
                .saturating_mul(9)
                .saturating_mul(n(c).saturating_mul(n(c))),
        )
    });
    [
        9u128.saturating_mul(c0).saturating_mul(n(cfg.in_channels)),
        9u128.saturating_mul(c0).saturating_mul(n(cfg.out_channels)),
        c0.saturating_mul(temb),
        temb.saturating_mul(temb),
        n(cfg.num_class_embeds.unwrap_or(0)).saturating_mul(temb),
        levels,
    ]
    .into_iter()
    .fold(0, u128::saturating_add)
}

/// Refuses a config whose network cannot fit the weights file (every stored element takes at least
/// one byte), before the network is built: a corrupt `config.json` declaring huge channels must not
/// allocate them.
fn check_fits_weights(cfg: &UNetConfig, config: &Path, weights: &Path) -> Result<()> {
    let bytes = std::fs::metadata(weights)
        .map_err(|e| Error::io(weights, e))?
        .len();
    let floor = parameter_floor(cfg);
    if floor > u128::from(bytes) {
        return Err(Error::InvalidConfig(format!(
            "{}: describes a network of at least {floor} parameters, more than {} ({bytes} bytes) \
             can hold",
            config.display(),
            weights.display()
        )));
    }
    Ok(())
}

/// Loads a diffusers model folder (`config.json` + `diffusion_pytorch_model.safetensors`) onto `device`.
///
/// # Errors
/// Those of [`read_config`] and [`load_weights`]; [`Error::InvalidConfig`] naming both files when
/// the config describes a network larger than the weights file can hold (checked before building).
pub fn load_pretrained(dir: &Path, device: Device) -> Result<(VarStore, UNet2DModel)> {
    let config = dir.join(CONFIG_NAME);
    let cfg = read_config(&config)?;
    check_fits_weights(&cfg, &config, &dir.join(WEIGHTS_NAME))?;
    let mut vs = VarStore::new(device);
    let model = UNet2DModel::new(vs.root(), &cfg)?;
    load_weights(&mut vs, &dir.join(WEIGHTS_NAME))?;
    Ok((vs, model))
}

/// Saves a model folder in diffusers' layout: `config.json` and `diffusion_pytorch_model.safetensors` (atomically
/// each). `vs` must be the VarStore whose root the model was built on.
pub fn save_pretrained(dir: &Path, cfg: &UNetConfig, vs: &VarStore) -> Result<()> {
    std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
    write_json(&dir.join(CONFIG_NAME), &config_to_json(cfg))?;
    save_varstore(vs, &dir.join(WEIGHTS_NAME))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_config_round_trips_through_diffusers_json() {
        let cfg = UNetConfig::default();
        let json = config_to_json(&cfg);
        assert_eq!(json["_class_name"], "UNet2DModel");
        assert_eq!(json["freq_shift"], 1);
        assert_eq!(config_from_json(&json).unwrap(), cfg);
    }

    #[test]
    fn official_cifar10_config_is_the_default_model() {
        // The keys of google/ddpm-cifar10-32's config.json (written by an early diffusers).
        let json = json!({
            "_class_name": "UNet2DModel",
            "_diffusers_version": "0.0.4",
            "act_fn": "silu",
            "attention_head_dim": null,
            "block_out_channels": [128, 256, 256, 256],
            "center_input_sample": false,
            "down_block_types": ["DownBlock2D", "AttnDownBlock2D", "DownBlock2D", "DownBlock2D"],
            "downsample_padding": 0,
            "flip_sin_to_cos": false,
            "freq_shift": 1,
            "in_channels": 3,
            "layers_per_block": 2,
            "mid_block_scale_factor": 1,
            "norm_eps": 1e-06,
            "norm_num_groups": 32,
            "out_channels": 3,
            "sample_size": 32,
            "time_embedding_type": "positional",
            "up_block_types": ["UpBlock2D", "UpBlock2D", "AttnUpBlock2D", "UpBlock2D"]
        });
        let cfg = config_from_json(&json).unwrap();
        // Dropout is absent from the file, so it takes diffusers' default (it only matters when training).
        assert_eq!(cfg.dropout, 0.0);
        assert_eq!(
            cfg,
            UNetConfig {
                dropout: 0.0,
                ..UNetConfig::default()
            }
        );
    }

    #[test]
    fn missing_keys_take_diffusers_defaults() {
        let cfg = config_from_json(&json!({"_class_name": "UNet2DModel"})).unwrap();
        assert_eq!(cfg.block_out_channels, [224, 448, 672, 896]);
        assert!(cfg.flip_sin_to_cos);
        assert_eq!(cfg.attention_head_dim, Some(8));
        assert_eq!(cfg.norm_eps, 1e-5);
    }

    #[test]
    fn unsupported_options_are_named() {
        let mut json = config_to_json(&UNetConfig::default());
        for (key, value) in [
            ("resnet_time_scale_shift", json!("scale_shift")),
            ("time_embedding_type", json!("fourier")),
            ("act_fn", json!("gelu")),
            ("class_embed_type", json!("timestep")),
            ("some_new_option", json!(3)),
            (
                "down_block_types",
                json!([
                    "DownBlock2D",
                    "SkipDownBlock2D",
                    "DownBlock2D",
                    "DownBlock2D"
                ]),
            ),
        ] {
            let old = json[key].clone();
            json[key] = value;
            let err = config_from_json(&json).unwrap_err();
            assert!(matches!(err, Error::Unsupported { .. }), "{key}: {err}");
            assert!(err.to_string().contains(key), "{err}");
            json[key] = old;
            if json[key].is_null() {
                json.as_object_mut().unwrap().remove(key);
            }
        }
        json["layers_per_block"] = json!("two");
        let err = config_from_json(&json).unwrap_err().to_string();
        assert!(err.contains("layers_per_block"), "{err}");
    }

    #[test]
    fn deprecated_attention_names_are_mapped() {
        assert_eq!(
            rename_deprecated("mid_block.attentions.0.proj_attn.weight"),
            "mid_block.attentions.0.to_out.0.weight"
        );
        assert_eq!(
            rename_deprecated("down_blocks.1.attentions.1.query.bias"),
            "down_blocks.1.attentions.1.to_q.bias"
        );
        assert_eq!(
            rename_deprecated("down_blocks.1.resnets.0.conv1.weight"),
            "down_blocks.1.resnets.0.conv1.weight"
        );
    }
}
