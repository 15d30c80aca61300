//! On-disk format of the SSD tier (G3): the directory header with its model fingerprint, and the
//! per-slot records of the index file.
//!
//! The index file `g3.index` is:
//! 1. one [`HEADER_BYTES`] block: `RawHeader` (magic, format version, fingerprint, geometry,
//!    xxh3 check of everything before the check), zero padded;
//! 2. `slot_count` records of [`RECORD_BYTES`], one per slot, each with its own check value
//!    (seeded with the slot index, so a record copied to the wrong place is rejected too).
//!
//! Integers are stored in the machine's byte order; a reader of the other order sees a wrong
//! format version and gets [`Error::BadHeader`], never misread pages.
//!
//! Everything here is pure (no IO), so the header parser can be fuzzed directly.

use bytemuck::{Pod, Zeroable};
use xxhash_rust::xxh3::{xxh3_64, xxh3_64_with_seed};

use crate::error::{Error, Result, Tier};
use crate::io::DIRECT_ALIGN;
use crate::layout::KvLayout;
use crate::prefix::{BlockHash, HASH_VERSION};

/// Bytes reserved for the header at the start of the index file (records start here).
pub const HEADER_BYTES: usize = 4096;
/// Bytes of one slot record.
pub const RECORD_BYTES: usize = 64;
/// Longest model id the header can hold, in bytes of UTF-8.
pub const MAX_MODEL_ID_BYTES: usize = 256;
/// Version of this on-disk format.
pub const FORMAT_VERSION: u32 = 1;

const MAGIC: [u8; 8] = *b"KVTIERG3";

/// Identity of the KV content a G3 directory holds: pages written under one fingerprint are never
/// served under another.
///
/// ```
/// use kvtier::{Dtype, KvLayout};
/// use kvtier::tier::format::Fingerprint;
/// let layout = KvLayout::new(2, 2, 8, Dtype::F16, 4)?;
/// let fp = Fingerprint::new("my-model", &layout, 0, 1);
/// assert_eq!(fp.page_bytes, layout.page_bytes() as u64);
/// # Ok::<(), kvtier::Error>(())
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Fingerprint {
    /// Model identifier given by the operator (name, revision, quantisation ...).
    pub model_id: String,
    /// [`HASH_VERSION`] of the block hashes used as keys.
    pub hash_version: u32,
    /// Transformer layers.
    pub layers: u32,
    /// KV heads (of this tensor-parallel shard's layout).
    pub kv_heads: u32,
    /// Head dimension.
    pub head_dim: u32,
    /// Tokens per block.
    pub block_size: u32,
    /// [`crate::Dtype::tag`] of the KV elements.
    pub dtype_tag: u8,
    /// Bytes of one page.
    pub page_bytes: u64,
    /// Tensor-parallel rank of the writer.
    pub tp_rank: u32,
    /// Tensor-parallel world size of the writer.
    pub tp_size: u32,
}

impl Fingerprint {
    /// The fingerprint of `layout` for `model_id` on tensor-parallel rank `tp_rank` of `tp_size`.
    pub fn new(model_id: &str, layout: &KvLayout, tp_rank: u32, tp_size: u32) -> Self {
        Self {
            model_id: model_id.to_owned(),
            hash_version: HASH_VERSION,
            layers: layout.layers(),
            kv_heads: layout.kv_heads(),
            head_dim: layout.head_dim(),
            block_size: layout.block_size(),
            dtype_tag: layout.dtype().tag(),
            page_bytes: layout.page_bytes() as u64,
            tp_rank,
            tp_size,
        }
    }

    /// Name of the first field that differs from `other`, if any.
    pub fn first_difference(&self, other: &Fingerprint) -> Option<&'static str> {
        let fields: [(&'static str, bool); 10] = [
            ("model_id", self.model_id == other.model_id),
            ("hash_version", self.hash_version == other.hash_version),
            ("layers", self.layers == other.layers),
            ("kv_heads", self.kv_heads == other.kv_heads),
            ("head_dim", self.head_dim == other.head_dim),
            ("block_size", self.block_size == other.block_size),
            ("dtype", self.dtype_tag == other.dtype_tag),
            ("page_bytes", self.page_bytes == other.page_bytes),
            ("tp_rank", self.tp_rank == other.tp_rank),
            ("tp_size", self.tp_size == other.tp_size),
        ];
        fields.iter().find(|(_, same)| !same).map(|(name, _)| *name)
    }
}

/// Decoded directory header: the fingerprint plus the slot geometry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Header {
    /// What the pages are.
    pub fingerprint: Fingerprint,
    /// Bytes of one slot: `page_bytes` rounded up to 4096.
    pub slot_bytes: u64,
    /// Slots in the directory.
    pub slot_count: u64,
    /// Slots per slab file (the last file may hold fewer).
    pub slots_per_file: u64,
}

/// Slot size for a page: rounded up to [`DIRECT_ALIGN`] so every slot is O_DIRECT aligned.
pub(crate) fn slot_bytes_for(page_bytes: u64) -> u64 {
    page_bytes.div_ceil(DIRECT_ALIGN as u64) * DIRECT_ALIGN as u64
}

impl Header {
    /// Name of the first fingerprint or geometry field that differs from `other`, if any.
    pub fn first_difference(&self, other: &Header) -> Option<&'static str> {
        self.fingerprint.first_difference(&other.fingerprint).or(if self.slot_bytes != other.slot_bytes {
            Some("slot_bytes")
        } else if self.slot_count != other.slot_count {
            Some("slot_count")
        } else if self.slots_per_file != other.slots_per_file {
            Some("slots_per_file")
        } else {
            None
        })
    }

    /// Number of slab files the geometry needs.
    pub fn slab_files(&self) -> u64 {
        self.slot_count.div_ceil(self.slots_per_file.max(1))
    }

    /// Length the index file must have.
    pub fn index_file_bytes(&self) -> u64 {
        HEADER_BYTES as u64 + self.slot_count * RECORD_BYTES as u64
    }

    /// Encodes the header as the first [`HEADER_BYTES`] of the index file.
    ///
    /// ```
    /// use kvtier::{Dtype, KvLayout};
    /// use kvtier::tier::format::{parse_header, Fingerprint, Header};
    /// let layout = KvLayout::new(2, 2, 8, Dtype::F16, 4)?;
    /// let header = Header { fingerprint: Fingerprint::new("m", &layout, 0, 1), slot_bytes: 4096, slot_count: 8, slots_per_file: 4 };
    /// assert_eq!(parse_header(&header.encode()?)?, header);
    /// # Ok::<(), kvtier::Error>(())
    /// ```
    pub fn encode(&self) -> Result<Vec<u8>> {
        let fp = &self.fingerprint;
        let id = fp.model_id.as_bytes();
        if id.len() > MAX_MODEL_ID_BYTES {
            return Err(Error::InvalidConfig { field: "model_id", reason: "longer than 256 bytes" });
        }
        let mut model_id = [0u8; MAX_MODEL_ID_BYTES];
        model_id[..id.len()].copy_from_slice(id);
        let mut raw = RawHeader {
            magic: MAGIC,
            format_version: FORMAT_VERSION,
            hash_version: fp.hash_version,
            layers: fp.layers,
            kv_heads: fp.kv_heads,
            head_dim: fp.head_dim,
            block_size: fp.block_size,
            dtype_tag: u32::from(fp.dtype_tag),
            tp_rank: fp.tp_rank,
            tp_size: fp.tp_size,
            model_id_len: id.len() as u32,
            page_bytes: fp.page_bytes,
            slot_bytes: self.slot_bytes,
            slot_count: self.slot_count,
            slots_per_file: self.slots_per_file,
            model_id,
            check: 0,
        };
        raw.check = raw.compute_check();
        let mut out = vec![0u8; HEADER_BYTES];
        out[..RAW_HEADER_BYTES].copy_from_slice(bytemuck::bytes_of(&raw));
        Ok(out)
    }
}

#[repr(C)]
#[derive(Clone, Copy, Pod, Zeroable)]
struct RawHeader {
    magic: [u8; 8],
    format_version: u32,
    hash_version: u32,
    layers: u32,
    kv_heads: u32,
    head_dim: u32,
    block_size: u32,
    dtype_tag: u32,
    tp_rank: u32,
    tp_size: u32,
    model_id_len: u32,
    page_bytes: u64,
    slot_bytes: u64,
    slot_count: u64,
    slots_per_file: u64,
    model_id: [u8; MAX_MODEL_ID_BYTES],
    check: u64,
}

const RAW_HEADER_BYTES: usize = std::mem::size_of::<RawHeader>();
const _: () = assert!(RAW_HEADER_BYTES <= HEADER_BYTES);

impl RawHeader {
    fn compute_check(&self) -> u64 {
        let bytes = bytemuck::bytes_of(self);
        xxh3_64(&bytes[..RAW_HEADER_BYTES - 8])
    }
}

fn bad(reason: &'static str) -> Error {
    Error::BadHeader { tier: Tier::G3, reason }
}

/// True when `bytes` is all zeros: an index file whose creation never got as far as its header.
pub(crate) fn is_blank(bytes: &[u8]) -> bool {
    bytes.iter().all(|b| *b == 0)
}

/// Decodes and checks a directory header (the first bytes of the index file).
///
/// Pure and total: any input gives a [`Header`] or [`Error::BadHeader`], never a panic.
///
/// ```
/// use kvtier::tier::format::parse_header;
/// assert!(matches!(parse_header(b"garbage"), Err(kvtier::Error::BadHeader { .. })));
/// ```
pub fn parse_header(bytes: &[u8]) -> Result<Header> {
    let raw_bytes = bytes.get(..RAW_HEADER_BYTES).ok_or_else(|| bad("shorter than a header"))?;
    let raw: RawHeader = bytemuck::try_pod_read_unaligned(raw_bytes).map_err(|_| bad("unreadable header"))?;
    if raw.magic != MAGIC {
        return Err(bad("not a kvtier G3 directory (bad magic)"));
    }
    if raw.format_version != FORMAT_VERSION {
        return Err(bad("unsupported format version"));
    }
    if raw.check != raw.compute_check() {
        return Err(bad("header check value mismatch (torn or corrupt header)"));
    }
    let id_len = raw.model_id_len as usize;
    let id = raw.model_id.get(..id_len).ok_or_else(|| bad("model id length out of range"))?;
    let model_id = std::str::from_utf8(id).map_err(|_| bad("model id is not UTF-8"))?.to_owned();
    let dtype_tag = u8::try_from(raw.dtype_tag).map_err(|_| bad("unknown dtype tag"))?;
    if !(1..=4).contains(&dtype_tag) {
        return Err(bad("unknown dtype tag"));
    }
    if raw.page_bytes == 0 || raw.slot_count == 0 || raw.slots_per_file == 0 {
        return Err(bad("zero page size or slot count"));
    }
    // checked: a page size within 4095 of 2^64 must not overflow (it wrapped to a 0-byte slot)
    if raw.page_bytes.checked_next_multiple_of(DIRECT_ALIGN as u64) != Some(raw.slot_bytes) {
        return Err(bad("slot size is not the page size rounded up to 4096"));
    }
    if raw.tp_size == 0 || raw.tp_rank >= raw.tp_size {
        return Err(bad("tensor-parallel rank out of range"));
    }
    if raw.slot_count > u32::MAX as u64 - 2 || raw.slot_bytes.checked_mul(raw.slots_per_file).is_none() {
        return Err(bad("geometry out of range"));
    }
    Ok(Header {
        fingerprint: Fingerprint {
            model_id,
            hash_version: raw.hash_version,
            layers: raw.layers,
            kv_heads: raw.kv_heads,
            head_dim: raw.head_dim,
            block_size: raw.block_size,
            dtype_tag,
            page_bytes: raw.page_bytes,
            tp_rank: raw.tp_rank,
            tp_size: raw.tp_size,
        },
        slot_bytes: raw.slot_bytes,
        slot_count: raw.slot_count,
        slots_per_file: raw.slots_per_file,
    })
}

/// Record state: the slot holds nothing (all-zero records are free).
pub const STATE_FREE: u32 = 0;
/// Record state: data IO may be in flight; never served.
pub const STATE_WRITING: u32 = 0x5752_4954;
/// Record state: data and record complete; served after its checksum verifies.
pub const STATE_VALID: u32 = 0x5641_4c44;

/// Metadata of one slot as stored in the index file.
///
/// Written in two steps by the tier: every field but `state` (with `check` computed for the
/// final state), then `state` last. A process killed in between leaves a record whose `check`
/// does not match, and the slot is ignored on reopen.
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Pod, Zeroable)]
pub struct SlotRecord {
    /// Low 64 bits of the [`BlockHash`].
    pub hash_lo: u64,
    /// High 64 bits of the [`BlockHash`].
    pub hash_hi: u64,
    /// Write generation (increases with every write; orders LRU on reopen).
    pub generation: u64,
    /// xxh3-64 of the page bytes.
    pub checksum: u64,
    /// Page length in bytes.
    pub len: u32,
    /// [`STATE_FREE`], [`STATE_WRITING`] or [`STATE_VALID`].
    pub state: u32,
    /// Zero; room for later fields.
    pub reserved: [u64; 2],
    /// xxh3-64 (seeded with the slot index) of all bytes before it.
    pub check: u64,
}

const _: () = assert!(std::mem::size_of::<SlotRecord>() == RECORD_BYTES);

impl SlotRecord {
    /// A record for `hash` in `state` at slot `slot`, with its check value filled in.
    pub fn new(slot: u64, hash: BlockHash, generation: u64, checksum: u64, len: u32, state: u32) -> Self {
        let mut r = Self {
            hash_lo: hash.0 as u64,
            hash_hi: (hash.0 >> 64) as u64,
            generation,
            checksum,
            len,
            state,
            reserved: [0; 2],
            check: 0,
        };
        r.check = r.compute_check(slot);
        r
    }

    /// The hash the record is for.
    pub fn hash(&self) -> BlockHash {
        BlockHash(u128::from(self.hash_lo) | (u128::from(self.hash_hi) << 64))
    }

    /// Check value this record should carry at slot `slot`.
    pub fn compute_check(&self, slot: u64) -> u64 {
        xxh3_64_with_seed(&bytemuck::bytes_of(self)[..RECORD_BYTES - 8], slot)
    }

    /// True when the record is complete, VALID and intact at slot `slot`.
    pub fn is_valid_at(&self, slot: u64) -> bool {
        self.state == STATE_VALID && self.check == self.compute_check(slot)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::layout::Dtype;

    fn header() -> Header {
        let layout = KvLayout::new(2, 2, 8, Dtype::F16, 4).unwrap();
        Header { fingerprint: Fingerprint::new("m", &layout, 1, 2), slot_bytes: 4096, slot_count: 8, slots_per_file: 3 }
    }

    #[test]
    fn header_roundtrip_and_rejects_damage() {
        let h = header();
        let bytes = h.encode().unwrap();
        assert_eq!(parse_header(&bytes).unwrap(), h);
        assert_eq!(h.slab_files(), 3);
        for i in 0..RAW_HEADER_BYTES {
            let mut b = bytes.clone();
            b[i] ^= 0x40;
            assert!(matches!(parse_header(&b), Err(Error::BadHeader { .. })), "byte {i}");
        }
        for n in 0..RAW_HEADER_BYTES {
            assert!(parse_header(&bytes[..n]).is_err());
        }
        assert!(is_blank(&[0u8; 64]));
        assert!(!is_blank(&bytes));
    }

    #[test]
    fn pseudo_random_garbage_never_panics() {
        let mut x = 0x1234_5678_9abc_def0u64;
        let mut buf = header().encode().unwrap();
        for _ in 0..2000 {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            let i = (x as usize) % buf.len();
            buf[i] = (x >> 32) as u8;
            let _ = parse_header(&buf[..(x >> 40) as usize % (buf.len() + 1)]);
        }
    }

    #[test]
    fn differences_are_named() {
        let a = header();
        let mut b = a.clone();
        assert_eq!(a.first_difference(&b), None);
        b.slot_count = 9;
        assert_eq!(a.first_difference(&b), Some("slot_count"));
        b.fingerprint.model_id = "other".into();
        assert_eq!(a.first_difference(&b), Some("model_id"));
    }

    #[test]
    fn record_check_detects_tearing_and_misplacement() {
        let r = SlotRecord::new(5, BlockHash(u128::MAX - 7), 9, 42, 4096, STATE_VALID);
        assert!(r.is_valid_at(5));
        assert!(!r.is_valid_at(6));
        assert_eq!(r.hash(), BlockHash(u128::MAX - 7));
        let mut torn = r;
        torn.checksum = 43;
        assert!(!torn.is_valid_at(5));
        let writing = SlotRecord::new(5, BlockHash(1), 9, 0, 0, STATE_WRITING);
        assert!(!writing.is_valid_at(5));
        assert!(!SlotRecord::zeroed().is_valid_at(0));
    }
}
