//! The KV layout of a run from its flags: a preset or a model's `config.json`, the KV dtype, and
//! one GPU's share under tensor parallelism.

use kvtier::KvLayout;
use kvtier_cli::Error;

use crate::CliError;
use crate::args::ReplayArgs;

/// The model's layout (a preset or `--layout-config`, in `--kv-dtype`, `--block-size` tokens per
/// block), whole: all its KV heads.
pub(crate) fn model_layout(args: &ReplayArgs) -> Result<KvLayout, CliError> {
    use kvtier_cli::model::ModelShape;
    let shape = match &args.layout_config {
        Some(path) => ModelShape::read_hf_config(path)?,
        None => ModelShape::of(KvLayout::preset(&args.layout, 16).map_err(|e| CliError::Flag {
            flag: "--layout",
            value: args.layout.clone(),
            reason: e.to_string(),
        })?),
    };
    shape.layout(args.kv_dtype, args.block_size).map_err(|e| match e {
        Error::Kvtier(e) => {
            CliError::Flag { flag: "--block-size", value: args.block_size.to_string(), reason: e.to_string() }
        }
        e => CliError::Replay(e),
    })
}

/// One GPU's share of [`model_layout`]: `1 / --tp` of its KV heads.
pub(crate) fn per_gpu_layout(args: &ReplayArgs) -> Result<KvLayout, CliError> {
    kvtier_cli::model::shard(model_layout(args)?, args.tp).map_err(|e| match e {
        Error::InvalidConfig { value, reason, .. } => CliError::Flag { flag: "--tp", value, reason },
        e => CliError::Replay(e),
    })
}

/// The layout as the reports name it: `llama-3.1-70b, KV fp8, TP 4 (per GPU)`.
pub(crate) fn layout_name(args: &ReplayArgs) -> String {
    let mut name = match &args.layout_config {
        Some(path) => path.display().to_string(),
        None => args.layout.clone(),
    };
    if let Some(dtype) = args.kv_dtype {
        name += &format!(", KV {}", format!("{dtype:?}").to_ascii_lowercase());
    }
    if args.tp > 1 {
        name += &format!(", TP {} (sizes per GPU)", args.tp);
    }
    name
}
