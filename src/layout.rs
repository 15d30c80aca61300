//! Shape of one KV page: how many bytes a block of `block_size` tokens takes.
//!
//! A page holds K and V for every layer, every KV head and every token of the block:
//! `bytes = 2 * layers * kv_heads * head_dim * dtype_bytes * block_size`. Pages are laid out
//! back to back in each tier with a stride of [`KvLayout::page_bytes`].

use crate::error::{Error, Result};

/// Element type of the KV tensors.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Dtype {
    /// 32-bit float.
    F32,
    /// IEEE half.
    F16,
    /// bfloat16.
    Bf16,
    /// 8-bit float (e4m3 or e5m2; kvtier only moves bytes).
    Fp8,
}

impl Dtype {
    /// Bytes per element.
    pub const fn bytes(self) -> usize {
        match self {
            Dtype::F32 => 4,
            Dtype::F16 | Dtype::Bf16 => 2,
            Dtype::Fp8 => 1,
        }
    }

    /// Stable numeric tag (used in on-disk fingerprints).
    pub const fn tag(self) -> u8 {
        match self {
            Dtype::F32 => 1,
            Dtype::F16 => 2,
            Dtype::Bf16 => 3,
            Dtype::Fp8 => 4,
        }
    }
}

/// Largest page kvtier accepts (1 GiB): anything bigger is a configuration mistake.
pub const MAX_PAGE_BYTES: usize = 1 << 30;
/// Largest block size in tokens.
pub(crate) const MAX_BLOCK_TOKENS: u32 = 1 << 16;

/// Validated shape of one KV page.
///
/// ```
/// use kvtier::{KvLayout, Dtype};
/// let l = KvLayout::llama_3_1_8b(16).unwrap();
/// assert_eq!(l.page_bytes(), 2 * 1024 * 1024);
/// assert!(KvLayout::new(0, 8, 128, Dtype::Bf16, 16).is_err());
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct KvLayout {
    layers: u32,
    kv_heads: u32,
    head_dim: u32,
    dtype: Dtype,
    block_size: u32,
    page_bytes: usize,
}

impl KvLayout {
    /// Builds a layout; every dimension must be non-zero ([`Error::OutOfRange`] otherwise), the
    /// block at most 65536 tokens and the page at most [`MAX_PAGE_BYTES`].
    pub fn new(layers: u32, kv_heads: u32, head_dim: u32, dtype: Dtype, block_size: u32) -> Result<Self> {
        let nz = |v: u32, field| {
            if v == 0 {
                Err(Error::OutOfRange { field, value: v.to_string(), expected: "at least 1" })
            } else {
                Ok(v as usize)
            }
        };
        let dims = [
            nz(layers, "layers")?,
            nz(kv_heads, "kv_heads")?,
            nz(head_dim, "head_dim")?,
            nz(block_size, "block_size")?,
            2,
            dtype.bytes(),
        ];
        if block_size > MAX_BLOCK_TOKENS {
            return Err(Error::OutOfRange {
                field: "block_size",
                value: block_size.to_string(),
                expected: "1..=65536 tokens",
            });
        }
        let too_big = Error::InvalidConfig { field: "page_bytes", reason: "exceeds 1 GiB" };
        let mut page_bytes = 1usize;
        for d in dims {
            page_bytes =
                page_bytes.checked_mul(d).ok_or(Error::InvalidConfig { field: "page_bytes", reason: "overflows" })?;
            if page_bytes > MAX_PAGE_BYTES {
                return Err(too_big);
            }
        }
        Ok(Self { layers, kv_heads, head_dim, dtype, block_size, page_bytes })
    }

    /// Llama-3.1-8B: 32 layers, 8 KV heads, head dim 128, bf16 (128 KiB per token).
    pub fn llama_3_1_8b(block_size: u32) -> Result<Self> {
        Self::new(32, 8, 128, Dtype::Bf16, block_size)
    }

    /// Llama-3.1-70B: 80 layers, 8 KV heads, head dim 128, bf16 (320 KiB per token).
    pub fn llama_3_1_70b(block_size: u32) -> Result<Self> {
        Self::new(80, 8, 128, Dtype::Bf16, block_size)
    }

    /// Qwen2.5-7B: 28 layers, 4 KV heads, head dim 128, bf16 (56 KiB per token).
    pub fn qwen2_5_7b(block_size: u32) -> Result<Self> {
        Self::new(28, 4, 128, Dtype::Bf16, block_size)
    }

    /// Mistral-7B-v0.3: 32 layers, 8 KV heads, head dim 128, bf16.
    pub fn mistral_7b(block_size: u32) -> Result<Self> {
        Self::new(32, 8, 128, Dtype::Bf16, block_size)
    }

    /// Names of the presets [`KvLayout::preset`] knows.
    pub const PRESETS: &'static [&'static str] = &["llama-3.1-8b", "llama-3.1-70b", "qwen2.5-7b", "mistral-7b"];

    /// Looks a preset up by name (one of [`KvLayout::PRESETS`]); another name is
    /// [`Error::UnknownName`], which lists them.
    ///
    /// ```
    /// use kvtier::{Error, KvLayout};
    /// assert_eq!(KvLayout::preset("qwen2.5-7b", 16)?, KvLayout::qwen2_5_7b(16)?);
    /// let err = KvLayout::preset("foo", 16).unwrap_err();
    /// assert!(matches!(&err, Error::UnknownName { name, known, .. } if name == "foo" && *known == KvLayout::PRESETS));
    /// assert_eq!(
    ///     err.to_string(),
    ///     "invalid configuration: unknown layout preset \"foo\" (known: llama-3.1-8b, llama-3.1-70b, qwen2.5-7b, mistral-7b)"
    /// );
    /// # Ok::<(), kvtier::Error>(())
    /// ```
    pub fn preset(name: &str, block_size: u32) -> Result<Self> {
        match name {
            "llama-3.1-8b" => Self::llama_3_1_8b(block_size),
            "llama-3.1-70b" => Self::llama_3_1_70b(block_size),
            "qwen2.5-7b" => Self::qwen2_5_7b(block_size),
            "mistral-7b" => Self::mistral_7b(block_size),
            _ => Err(Error::UnknownName { field: "layout preset", name: name.to_owned(), known: Self::PRESETS }),
        }
    }

    /// Number of transformer layers.
    pub fn layers(&self) -> u32 {
        self.layers
    }
    /// KV heads per layer.
    pub fn kv_heads(&self) -> u32 {
        self.kv_heads
    }
    /// Dimension of one head.
    pub fn head_dim(&self) -> u32 {
        self.head_dim
    }
    /// Element type.
    pub fn dtype(&self) -> Dtype {
        self.dtype
    }
    /// Tokens per block.
    pub fn block_size(&self) -> u32 {
        self.block_size
    }
    /// Bytes of one page (K and V, all layers, `block_size` tokens).
    pub fn page_bytes(&self) -> usize {
        self.page_bytes
    }
    /// Bytes of KV per token.
    pub fn bytes_per_token(&self) -> usize {
        self.page_bytes / self.block_size as usize
    }
    /// Byte offset of (layer, K or V, token-in-block) inside a page, for a layer-major layout
    /// `[layer][k|v][token][head][dim]`.
    pub fn offset(&self, layer: u32, is_value: bool, token: u32) -> Option<usize> {
        if layer >= self.layers || token >= self.block_size {
            return None;
        }
        let row = self.kv_heads as usize * self.head_dim as usize * self.dtype.bytes();
        let per_kv = row * self.block_size as usize;
        Some((layer as usize * 2 + is_value as usize) * per_kv + token as usize * row)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn presets_have_known_sizes() {
        assert_eq!(KvLayout::llama_3_1_8b(16).unwrap().page_bytes(), 2 << 20);
        assert_eq!(KvLayout::llama_3_1_8b(1).unwrap().bytes_per_token(), 128 << 10);
        assert_eq!(KvLayout::llama_3_1_70b(1).unwrap().bytes_per_token(), 320 << 10);
        assert_eq!(KvLayout::qwen2_5_7b(1).unwrap().bytes_per_token(), 56 << 10);
        assert!(KvLayout::preset("nope", 16).is_err());
        for name in KvLayout::PRESETS {
            assert!(KvLayout::preset(name, 16).is_ok(), "{name} is listed but not known");
        }
    }

    #[test]
    fn rejects_zero_and_huge() {
        assert!(KvLayout::new(1, 1, 1, Dtype::F32, 0).is_err());
        assert!(KvLayout::new(u32::MAX, u32::MAX, u32::MAX, Dtype::F32, 16).is_err());
        assert!(KvLayout::new(1, 1, 1, Dtype::F32, MAX_BLOCK_TOKENS + 1).is_err());
        assert!(KvLayout::new(1024, 64, 256, Dtype::F32, 1024).is_err());
    }

    #[test]
    fn offsets_stay_inside_page() {
        let l = KvLayout::new(2, 2, 4, Dtype::F16, 4).unwrap();
        let last = l.offset(1, true, 3).unwrap();
        assert_eq!(last + 2 * 4 * 2, l.page_bytes());
        assert_eq!(l.offset(2, false, 0), None);
    }
}
