//! The model behind a replay's page size: a preset, or a HuggingFace `config.json`, with the
//! KV dtype and the tensor-parallel split the operator serves it with.
//!
//! ## How a layout is made
//! 1. A [`ModelShape`] (layers, KV heads, head dim, dtype) comes from a preset's
//!    [`KvLayout`] ([`ModelShape::of`]) or from a model's `config.json`
//!    ([`ModelShape::read_hf_config`]: `num_hidden_layers`, `num_key_value_heads` else
//!    `num_attention_heads`, `head_dim` else `hidden_size / num_attention_heads`, `torch_dtype`
//!    (or `dtype`); a multimodal model's `text_config` is read when the top level has no
//!    layers). A missing or invalid field is an [`Error::ModelConfig`] naming it.
//! 2. [`ModelShape::layout`] applies the KV dtype (e.g. FP8: half of BF16's bytes) and the block
//!    size, then [`shard`] the tensor-parallel degree: each GPU holds `kv_heads / tp` heads of
//!    every block, so capacities given per GPU count per-GPU pages.
//!
//! ```
//! use kvtier::Dtype;
//! use kvtier_cli::model::{ModelShape, shard};
//! let dir = tempfile::tempdir()?;
//! let path = dir.path().join("config.json");
//! std::fs::write(&path, r#"{"num_hidden_layers": 32, "num_attention_heads": 32,
//!     "num_key_value_heads": 8, "hidden_size": 4096, "torch_dtype": "bfloat16"}"#)?;
//! let shape = ModelShape::read_hf_config(&path)?;
//! let fp8 = shape.layout(Some(Dtype::Fp8), 16)?;
//! assert_eq!(fp8.page_bytes(), 1 << 20); // llama-3.1-8b in FP8: 1 MiB per 16 tokens
//! assert_eq!(shard(fp8, 4)?.page_bytes(), 256 << 10);
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

use std::path::Path;

use kvtier::{Dtype, KvLayout};
use serde_json::{Map, Value};

use crate::error::{Error, Result};

/// What a model's KV cache is made of, before a block size is chosen.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ModelShape {
    /// Transformer layers.
    pub layers: u32,
    /// KV heads (all GPUs together).
    pub kv_heads: u32,
    /// Elements per head.
    pub head_dim: u32,
    /// The model's own dtype (the KV cache's unless overridden).
    pub dtype: Dtype,
}

/// What is wrong with a `config.json` field.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum ConfigProblem {
    /// The file is not a JSON object.
    NotJson,
    /// The field (and any fallback) is absent or null.
    Missing,
    /// Not a positive whole number.
    NotPositiveInteger,
    /// `hidden_size` is not a multiple of `num_attention_heads`.
    NotDivisible {
        /// `hidden_size`.
        hidden_size: u64,
        /// `num_attention_heads`.
        heads: u64,
    },
    /// A dtype kvtier has no size for.
    UnknownDtype(String),
}

impl std::fmt::Display for ConfigProblem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ConfigProblem::NotJson => f.write_str("not a JSON object"),
            ConfigProblem::Missing => f.write_str("missing"),
            ConfigProblem::NotPositiveInteger => f.write_str("not a positive whole number below 2^32"),
            ConfigProblem::NotDivisible { hidden_size, heads } => {
                write!(f, "hidden_size {hidden_size} is not a multiple of num_attention_heads {heads}")
            }
            ConfigProblem::UnknownDtype(name) => {
                write!(f, "`{name}` is not a known dtype (float32, float16, bfloat16, float8_e4m3fn, float8_e5m2)")
            }
        }
    }
}

/// A dtype by its PyTorch or command-line name (`bfloat16`, `bf16`, `fp8`, `float8_e4m3fn`, ...).
///
/// ```
/// # use kvtier::Dtype;
/// assert_eq!(kvtier_cli::model::dtype_named("float8_e5m2"), Some(Dtype::Fp8));
/// assert_eq!(kvtier_cli::model::dtype_named("int4"), None);
/// ```
pub fn dtype_named(name: &str) -> Option<Dtype> {
    let name = name.trim().to_ascii_lowercase();
    let name = name.strip_prefix("torch.").unwrap_or(&name);
    Some(match name {
        "float32" | "fp32" | "f32" | "float" => Dtype::F32,
        "float16" | "fp16" | "f16" | "half" => Dtype::F16,
        "bfloat16" | "bf16" => Dtype::Bf16,
        "fp8" | "float8" | "float8_e4m3fn" | "float8_e4m3fnuz" | "float8_e5m2" | "float8_e5m2fnuz" | "fp8_e4m3"
        | "fp8_e5m2" => Dtype::Fp8,
        _ => return None,
    })
}

impl ModelShape {
    /// The shape of an existing layout (a preset's).
    pub fn of(layout: KvLayout) -> Self {
        Self {
            layers: layout.layers(),
            kv_heads: layout.kv_heads(),
            head_dim: layout.head_dim(),
            dtype: layout.dtype(),
        }
    }

    /// Reads a HuggingFace `config.json` (see the module docs for the fields).
    pub fn read_hf_config(path: &Path) -> Result<Self> {
        let text = std::fs::read(path).map_err(|source| Error::Io { op: "read", path: path.to_path_buf(), source })?;
        let problem = |field: &'static str, problem| Error::ModelConfig { path: path.to_path_buf(), field, problem };
        let Ok(Value::Object(top)) = serde_json::from_slice::<Value>(&text) else {
            return Err(problem("config.json", ConfigProblem::NotJson));
        };
        // Multimodal models keep the language model's shape under `text_config`.
        let map = match (top.get("num_hidden_layers"), top.get("text_config")) {
            (None | Some(Value::Null), Some(Value::Object(text))) => text,
            _ => &top,
        };
        let number = |field: &'static str| -> Result<Option<u64>> {
            match map.get(field) {
                None | Some(Value::Null) => Ok(None),
                Some(v) => match v.as_u64() {
                    Some(n) if n > 0 && n <= u32::MAX as u64 => Ok(Some(n)),
                    _ => Err(problem(field, ConfigProblem::NotPositiveInteger)),
                },
            }
        };
        let required = |field: &'static str| number(field)?.ok_or_else(|| problem(field, ConfigProblem::Missing));
        let layers = required("num_hidden_layers")?;
        let heads = number("num_attention_heads")?;
        let kv_heads = match number("num_key_value_heads")? {
            Some(n) => n,
            None => heads.ok_or_else(|| problem("num_key_value_heads", ConfigProblem::Missing))?,
        };
        let head_dim = match number("head_dim")? {
            Some(n) => n,
            None => {
                let hidden_size = required("hidden_size")?;
                let heads = heads.ok_or_else(|| problem("num_attention_heads", ConfigProblem::Missing))?;
                if !hidden_size.is_multiple_of(heads) {
                    return Err(problem("hidden_size", ConfigProblem::NotDivisible { hidden_size, heads }));
                }
                hidden_size / heads
            }
        };
        let dtype =
            hf_dtype(map).or_else(|| hf_dtype(&top)).ok_or_else(|| problem("torch_dtype", ConfigProblem::Missing))?;
        let dtype = dtype.map_err(|p| problem("torch_dtype", p))?;
        // (each was checked to be at most u32::MAX above)
        let narrow = |n: u64| n as u32;
        Ok(Self { layers: narrow(layers), kv_heads: narrow(kv_heads), head_dim: narrow(head_dim), dtype })
    }

    /// The layout of one block of `block_size` tokens, in `dtype` if given (the KV cache's dtype
    /// may differ from the weights', e.g. an FP8 cache), else in the model's.
    pub fn layout(&self, dtype: Option<Dtype>, block_size: u32) -> Result<KvLayout> {
        Ok(KvLayout::new(self.layers, self.kv_heads, self.head_dim, dtype.unwrap_or(self.dtype), block_size)?)
    }
}

/// `torch_dtype` (or the newer `dtype`) of a config map: absent, or known, or not.
fn hf_dtype(map: &Map<String, Value>) -> Option<std::result::Result<Dtype, ConfigProblem>> {
    let value = ["torch_dtype", "dtype"].iter().find_map(|k| map.get(*k).filter(|v| !v.is_null()))?;
    Some(match value.as_str() {
        Some(name) => dtype_named(name).ok_or_else(|| ConfigProblem::UnknownDtype(name.to_string())),
        None => Err(ConfigProblem::UnknownDtype(value.to_string())),
    })
}

/// The per-GPU layout of `layout` split over `tp` tensor-parallel GPUs: each holds
/// `kv_heads / tp` heads of every block. `tp` must divide the KV heads (replicated heads, as
/// when `tp` exceeds them, are not modelled): [`Error::InvalidConfig`] for `tensor parallel`.
pub fn shard(layout: KvLayout, tp: usize) -> Result<KvLayout> {
    let heads = layout.kv_heads();
    let tp32 = u32::try_from(tp.max(1)).ok().filter(|tp| heads.is_multiple_of(*tp));
    match tp32 {
        Some(1) => Ok(layout),
        Some(tp) => {
            Ok(KvLayout::new(layout.layers(), heads / tp, layout.head_dim(), layout.dtype(), layout.block_size())?)
        }
        None => Err(Error::invalid(
            "tensor parallel",
            tp,
            format!("must divide the layout's {heads} KV heads (replicated heads are not modelled)"),
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn read(json: &str) -> Result<ModelShape> {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("config.json");
        std::fs::write(&path, json).unwrap();
        ModelShape::read_hf_config(&path)
    }

    fn problem(json: &str) -> (&'static str, ConfigProblem) {
        match read(json) {
            Err(Error::ModelConfig { field, problem, .. }) => (field, problem),
            other => panic!("{json}: {other:?}"),
        }
    }

    #[test]
    fn hf_configs_give_the_presets_shapes() {
        let llama70b = r#"{"num_hidden_layers": 80, "num_attention_heads": 64, "num_key_value_heads": 8,
            "hidden_size": 8192, "torch_dtype": "bfloat16"}"#;
        let shape = read(llama70b).unwrap();
        assert_eq!(shape.layout(None, 16).unwrap().page_bytes(), KvLayout::llama_3_1_70b(16).unwrap().page_bytes());
        // no KV heads: multi-head attention; explicit head_dim wins over hidden_size / heads
        let mha = read(
            r#"{"num_hidden_layers": 2, "num_attention_heads": 4, "head_dim": 96, "hidden_size": 256,
            "dtype": "float16"}"#,
        )
        .unwrap();
        assert_eq!(mha, ModelShape { layers: 2, kv_heads: 4, head_dim: 96, dtype: Dtype::F16 });
        let nested = read(
            r#"{"model_type": "llava", "torch_dtype": "float16", "text_config":
            {"num_hidden_layers": 3, "num_attention_heads": 8, "hidden_size": 512}}"#,
        )
        .unwrap();
        assert_eq!(nested, ModelShape { layers: 3, kv_heads: 8, head_dim: 64, dtype: Dtype::F16 });
    }

    #[test]
    fn missing_and_invalid_fields_are_named() {
        assert_eq!(problem("[1]"), ("config.json", ConfigProblem::NotJson));
        assert_eq!(problem(r#"{"num_attention_heads": 8}"#), ("num_hidden_layers", ConfigProblem::Missing));
        assert_eq!(
            problem(r#"{"num_hidden_layers": -1, "num_attention_heads": 8}"#),
            ("num_hidden_layers", ConfigProblem::NotPositiveInteger)
        );
        assert_eq!(problem(r#"{"num_hidden_layers": 2}"#), ("num_key_value_heads", ConfigProblem::Missing));
        assert_eq!(
            problem(r#"{"num_hidden_layers": 2, "num_attention_heads": 8, "num_key_value_heads": "8"}"#),
            ("num_key_value_heads", ConfigProblem::NotPositiveInteger)
        );
        assert_eq!(
            problem(r#"{"num_hidden_layers": 2, "num_attention_heads": 8, "torch_dtype": "bfloat16"}"#),
            ("hidden_size", ConfigProblem::Missing)
        );
        assert_eq!(
            problem(r#"{"num_hidden_layers": 2, "num_attention_heads": 3, "hidden_size": 100}"#),
            ("hidden_size", ConfigProblem::NotDivisible { hidden_size: 100, heads: 3 })
        );
        assert_eq!(
            problem(r#"{"num_hidden_layers": 2, "num_attention_heads": 4, "hidden_size": 64}"#),
            ("torch_dtype", ConfigProblem::Missing)
        );
        assert_eq!(
            problem(r#"{"num_hidden_layers": 2, "num_attention_heads": 4, "hidden_size": 64, "torch_dtype": "int4"}"#),
            ("torch_dtype", ConfigProblem::UnknownDtype("int4".into()))
        );
        let e = read(r#"{"num_hidden_layers": 0}"#).unwrap_err();
        assert!(
            e.to_string().ends_with("config.json: num_hidden_layers: not a positive whole number below 2^32"),
            "{e}"
        );
    }

    #[test]
    fn tensor_parallel_must_divide_the_kv_heads() {
        let layout = KvLayout::llama_3_1_8b(16).unwrap();
        assert_eq!(shard(layout, 1).unwrap(), layout);
        assert_eq!(shard(layout, 8).unwrap().page_bytes(), layout.page_bytes() / 8);
        for tp in [3, 16, usize::MAX] {
            assert!(matches!(shard(layout, tp), Err(Error::InvalidConfig { setting: "tensor parallel", .. })), "{tp}");
        }
    }
}
