//! Content addressing of full blocks: the chained [`BlockHash`] and the [`HashIndex`].
//!
//! # Block hash, version 1
//! The hash of block `i` of a sequence identifies the whole prefix up to and including it, so
//! equal hashes mean equal KV content. It is computed in two steps, all integers
//! little-endian and both hashes XXH3-128 with `seed = HASH_SEED`, read as `u128` LE (the
//! canonical digest's `low64` half is the low 64 bits):
//!
//! - `content = XXH3-128(token ids as u32 each)` over the block's tokens only;
//! - `hash = XXH3-128(input)` where `input` is the concatenation of
//!
//! 1. the parent hash as 16 bytes (`u128` LE); 16 zero bytes for the first block;
//! 2. `content` as 16 bytes;
//! 3. the number of tokens in the block as `u32`;
//! 4. extra keys, each tagged with one byte, in this order:
//!    - `0x01`, `u32` length, salt bytes: the cache salt / tenant, **first block only** (the
//!      chain carries it to every later block);
//!    - `0x02`, `u64`: the LoRA adapter id, on every block when set;
//!    - `0x03`, 16-byte content hash, `u32` offset, `u32` length: for each multimodal input
//!      whose token range `[offset, offset + length)` overlaps this block, in the order given.
//!
//! Hashing the tokens where they lie (no copy into a buffer) and chaining through a short input
//! keeps a 16-token block near 10 ns; the content step of successive blocks is independent,
//! so a CPU overlaps them. [`HASH_VERSION`] changes whenever this definition changes.

use xxhash_rust::xxh3::{Xxh3, xxh3_128_with_seed};

/// Version of the block-hash definition above.
pub const HASH_VERSION: u32 = 1;
/// XXH3 seed of version 1: the ASCII bytes "kvtier_1" read big-endian.
pub const HASH_SEED: u64 = 0x6b76_7469_6572_5f31;

const TAG_SALT: u8 = 0x01;
const TAG_LORA: u8 = 0x02;
const TAG_MM: u8 = 0x03;
const SMALL_STACK_BYTES: usize = 128;

/// 128-bit chained hash of a full block (see the module docs for the definition).
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Default)]
#[repr(transparent)]
pub struct BlockHash(pub u128);

impl std::fmt::Debug for BlockHash {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "BlockHash({:032x})", self.0)
    }
}

/// One multimodal input (image, audio clip) that occupies a token range of the prompt.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct MmInput {
    /// Content hash of the input (the runtime hashes the raw media).
    pub hash: u128,
    /// Position of its first placeholder token in the sequence.
    pub offset: u32,
    /// Number of placeholder tokens.
    pub len: u32,
}

/// Keys besides the token ids that decide whether two blocks hold the same KV.
///
/// ```
/// use kvtier::{BlockHash, ExtraKeys};
/// let tokens: Vec<u32> = (0..16).collect();
/// let a = BlockHash::chain(None, &tokens, 0, &ExtraKeys::default().with_salt(b"tenant-a"));
/// let b = BlockHash::chain(None, &tokens, 0, &ExtraKeys::default().with_salt(b"tenant-b"));
/// assert_ne!(a, b);
/// ```
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash)]
pub struct ExtraKeys {
    /// Cache salt / tenant id: prompts under different salts never share blocks.
    pub cache_salt: Option<Box<[u8]>>,
    /// LoRA adapter id.
    pub lora_id: Option<u64>,
    /// Multimodal inputs with their token ranges.
    pub mm_inputs: Vec<MmInput>,
}

impl ExtraKeys {
    /// Sets the cache salt (default: none).
    pub fn with_salt(mut self, salt: &[u8]) -> Self {
        self.cache_salt = Some(salt.into());
        self
    }
    /// Sets the LoRA id (default: none).
    pub fn with_lora(mut self, id: u64) -> Self {
        self.lora_id = Some(id);
        self
    }
    /// Adds a multimodal input (default: none).
    pub fn with_mm(mut self, input: MmInput) -> Self {
        self.mm_inputs.push(input);
        self
    }
}

/// Where hash input bytes go: a stack buffer for small blocks, streaming XXH3 otherwise.
trait Sink {
    fn put(&mut self, bytes: &[u8]);
}

struct StackSink<const N: usize> {
    buf: [u8; N],
    len: usize,
}

impl<const N: usize> Sink for StackSink<N> {
    #[inline(always)]
    fn put(&mut self, bytes: &[u8]) {
        self.buf[self.len..self.len + bytes.len()].copy_from_slice(bytes);
        self.len += bytes.len();
    }
}

impl Sink for Xxh3 {
    fn put(&mut self, bytes: &[u8]) {
        self.update(bytes);
    }
}

impl BlockHash {
    /// Hashes one full block: `tokens` are its token ids, `start` the position of its first
    /// token in the sequence, `parent` the hash of the previous block (`None` for block 0).
    #[inline]
    pub fn chain(parent: Option<BlockHash>, tokens: &[u32], start: usize, keys: &ExtraKeys) -> Self {
        #[cfg(target_endian = "little")]
        let content = xxh3_128_with_seed(bytemuck::cast_slice(tokens), HASH_SEED);
        #[cfg(not(target_endian = "little"))]
        let content = {
            let mut h = Xxh3::with_seed(HASH_SEED);
            for t in tokens {
                h.update(&t.to_le_bytes());
            }
            h.digest128()
        };
        let extra = Self::extra_len(parent.is_none(), tokens.len(), start, keys);
        if 36 + extra <= SMALL_STACK_BYTES {
            let mut s = StackSink::<SMALL_STACK_BYTES> { buf: [0; SMALL_STACK_BYTES], len: 0 };
            Self::encode(&mut s, parent, content, tokens.len(), start, keys);
            BlockHash(xxh3_128_with_seed(&s.buf[..s.len], HASH_SEED))
        } else {
            let mut h = Xxh3::with_seed(HASH_SEED);
            Self::encode(&mut h, parent, content, tokens.len(), start, keys);
            BlockHash(h.digest128())
        }
    }

    fn overlaps(m: &MmInput, start: usize, n: usize) -> bool {
        let (ms, me) = (m.offset as usize, m.offset as usize + m.len as usize);
        ms < start + n && start < me
    }

    fn extra_len(first: bool, n: usize, start: usize, keys: &ExtraKeys) -> usize {
        let mut e = 0;
        if first && let Some(s) = &keys.cache_salt {
            e += 5 + s.len();
        }
        if keys.lora_id.is_some() {
            e += 9;
        }
        for m in &keys.mm_inputs {
            if Self::overlaps(m, start, n) {
                e += 25;
            }
        }
        e
    }

    #[inline(always)]
    fn encode<S: Sink>(s: &mut S, parent: Option<BlockHash>, content: u128, n: usize, start: usize, keys: &ExtraKeys) {
        s.put(&parent.map_or(0, |p| p.0).to_le_bytes());
        s.put(&content.to_le_bytes());
        s.put(&(n as u32).to_le_bytes());
        if parent.is_none()
            && let Some(salt) = &keys.cache_salt
        {
            s.put(&[TAG_SALT]);
            s.put(&(salt.len() as u32).to_le_bytes());
            s.put(salt);
        }
        if let Some(l) = keys.lora_id {
            s.put(&[TAG_LORA]);
            s.put(&l.to_le_bytes());
        }
        for m in &keys.mm_inputs {
            if Self::overlaps(m, start, n) {
                s.put(&[TAG_MM]);
                s.put(&m.hash.to_le_bytes());
                s.put(&m.offset.to_le_bytes());
                s.put(&m.len.to_le_bytes());
            }
        }
    }

    /// Appends to `out` the hashes of every full block of `tokens` from block `out.len()` on
    /// (so a caller can extend an existing chain), with blocks of `block_size` tokens.
    pub fn extend_chain(out: &mut Vec<BlockHash>, tokens: &[u32], block_size: usize, keys: &ExtraKeys) {
        if block_size == 0 {
            return;
        }
        let full = tokens.len() / block_size;
        let mut parent = out.last().copied();
        for i in out.len()..full {
            let start = i * block_size;
            let h = Self::chain(parent, &tokens[start..start + block_size], start, keys);
            out.push(h);
            parent = Some(h);
        }
    }
}

const EMPTY: u64 = u64::MAX;

/// Outcome of [`HashIndex::insert`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Insert {
    /// The entry was added.
    Inserted,
    /// The hash is already present under this entry; nothing changed.
    Present(u32),
    /// The index holds its capacity; nothing changed.
    Full,
}

/// Open-addressing hash index from [`BlockHash`] to an entry index (block id or slot id).
///
/// Each 8-byte slot holds an entry index and a 32-bit tag (the hash's low bits, which also
/// give its home bucket). A probe compares tags and reads the owner's stored key (through
/// `key_of`) only on a tag match, and deletion never reads keys at all. Linear probing at a
/// load factor of at most 3/4, deletion by backward shift (no tombstones): every operation is
/// O(1) expected and nothing allocates after construction. 10.7 to 21.3 bytes per entry.
pub struct HashIndex {
    slots: Vec<u64>,
    mask: usize,
    len: usize,
    max_len: usize,
}

impl std::fmt::Debug for HashIndex {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HashIndex").field("len", &self.len).field("slots", &self.slots.len()).finish()
    }
}

#[inline(always)]
fn tag(h: BlockHash) -> u32 {
    h.0 as u32
}

#[inline(always)]
fn pack(tag: u32, entry: u32) -> u64 {
    (tag as u64) << 32 | entry as u64
}

impl HashIndex {
    /// An index able to hold `capacity` entries.
    pub fn new(capacity: usize) -> Self {
        let n = (capacity.max(1) * 4).div_ceil(3).next_power_of_two();
        Self { slots: vec![EMPTY; n], mask: n - 1, len: 0, max_len: capacity.max(1) }
    }

    /// Number of entries.
    pub fn len(&self) -> usize {
        self.len
    }

    /// True when empty.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Bytes of index storage per entry of capacity `capacity`.
    pub fn bytes_per_entry(&self, capacity: usize) -> f64 {
        (self.slots.len() * 8) as f64 / capacity.max(1) as f64
    }

    #[inline(always)]
    fn home_of_tag(&self, t: u32) -> usize {
        // Fibonacci hashing: the upper half of the product mixes every bit of the tag, so
        // keys that are not uniformly random (synthetic ids, say) do not cluster.
        ((t as u64).wrapping_mul(0x9e37_79b9_7f4a_7c15) >> 32) as usize & self.mask
    }

    /// Entry stored under `h`.
    #[inline]
    pub fn get(&self, h: BlockHash, key_of: impl Fn(u32) -> BlockHash) -> Option<u32> {
        let t = tag(h);
        let mut i = self.home_of_tag(t);
        loop {
            let s = self.slots[i];
            if s == EMPTY {
                return None;
            }
            if (s >> 32) as u32 == t && key_of(s as u32) == h {
                return Some(s as u32);
            }
            i = (i + 1) & self.mask;
        }
    }

    /// Inserts `entry` under `h` unless `h` is present.
    #[inline]
    pub fn insert(&mut self, h: BlockHash, entry: u32, key_of: impl Fn(u32) -> BlockHash) -> Insert {
        let t = tag(h);
        let mut i = self.home_of_tag(t);
        loop {
            let s = self.slots[i];
            if s == EMPTY {
                if self.len >= self.max_len {
                    return Insert::Full;
                }
                self.slots[i] = pack(t, entry);
                self.len += 1;
                return Insert::Inserted;
            }
            if (s >> 32) as u32 == t && key_of(s as u32) == h {
                return Insert::Present(s as u32);
            }
            i = (i + 1) & self.mask;
        }
    }

    /// Removes the entry `entry` stored under `h`; returns whether it was there.
    #[inline]
    pub fn remove(&mut self, h: BlockHash, entry: u32) -> bool {
        let target = pack(tag(h), entry);
        let mut i = self.home_of_tag(tag(h));
        loop {
            let s = self.slots[i];
            if s == EMPTY {
                return false;
            }
            if s == target {
                break;
            }
            i = (i + 1) & self.mask;
        }
        // Backward-shift deletion: pull later members of the probe run into the hole when
        // their home position does not lie cyclically in (hole, j].
        let mut hole = i;
        let mut j = i;
        loop {
            j = (j + 1) & self.mask;
            let s = self.slots[j];
            if s == EMPTY {
                break;
            }
            let home = self.home_of_tag((s >> 32) as u32);
            let in_between = if hole <= j { hole < home && home <= j } else { hole < home || home <= j };
            if !in_between {
                self.slots[hole] = s;
                hole = j;
            }
        }
        self.slots[hole] = EMPTY;
        self.len -= 1;
        true
    }

    /// Drops every entry.
    pub fn clear(&mut self) {
        self.slots.fill(EMPTY);
        self.len = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    #[test]
    fn chain_depends_on_every_input() {
        let t: Vec<u32> = (0..16).collect();
        let k = ExtraKeys::default();
        let a = BlockHash::chain(None, &t, 0, &k);
        assert_eq!(a, BlockHash::chain(None, &t, 0, &k));
        assert_ne!(a, BlockHash::chain(Some(a), &t, 16, &k));
        let mut t2 = t.clone();
        t2[15] = 99;
        assert_ne!(a, BlockHash::chain(None, &t2, 0, &k));
        assert_ne!(a, BlockHash::chain(None, &t, 0, &k.clone().with_lora(1)));
        let mm = MmInput { hash: 7, offset: 4, len: 8 };
        assert_ne!(a, BlockHash::chain(None, &t, 0, &k.clone().with_mm(mm)));
        // a multimodal input outside the block does not change it
        let far = MmInput { hash: 7, offset: 100, len: 8 };
        assert_eq!(a, BlockHash::chain(None, &t, 0, &k.clone().with_mm(far)));
        // salt only enters the first block (the chain carries it)
        let salted = k.clone().with_salt(b"s");
        assert_eq!(BlockHash::chain(Some(a), &t, 16, &k), BlockHash::chain(Some(a), &t, 16, &salted));
    }

    #[test]
    fn stack_and_streaming_paths_agree() {
        // a long salt pushes the chaining input past the stack buffer
        let t: Vec<u32> = (0..200).map(|x| x * 7).collect();
        let long_salt = vec![b'x'; 300];
        for salt in [&b"tenant"[..], &long_salt[..]] {
            let k = ExtraKeys::default().with_salt(salt).with_lora(3);
            let got = BlockHash::chain(None, &t, 0, &k);
            let mut tok = Vec::new();
            for x in &t {
                tok.extend_from_slice(&x.to_le_bytes());
            }
            let content = xxh3_128_with_seed(&tok, HASH_SEED);
            let mut bytes = vec![0u8; 16];
            bytes.extend_from_slice(&content.to_le_bytes());
            bytes.extend_from_slice(&200u32.to_le_bytes());
            bytes.push(1);
            bytes.extend_from_slice(&(salt.len() as u32).to_le_bytes());
            bytes.extend_from_slice(salt);
            bytes.push(2);
            bytes.extend_from_slice(&3u64.to_le_bytes());
            assert_eq!(got.0, xxh3_128_with_seed(&bytes, HASH_SEED));
        }
    }

    #[test]
    fn extend_chain_only_hashes_full_blocks() {
        let t: Vec<u32> = (0..40).collect();
        let mut v = vec![];
        BlockHash::extend_chain(&mut v, &t[..20], 16, &ExtraKeys::default());
        assert_eq!(v.len(), 1);
        BlockHash::extend_chain(&mut v, &t, 16, &ExtraKeys::default());
        assert_eq!(v.len(), 2);
        assert_eq!(v[1], BlockHash::chain(Some(v[0]), &t[16..32], 16, &ExtraKeys::default()));
    }

    #[test]
    fn index_matches_hashmap_under_churn() {
        let cap = 64;
        let mut keys = vec![BlockHash(0); cap];
        let mut idx = HashIndex::new(cap);
        let mut model: HashMap<BlockHash, u32> = HashMap::new();
        let mut x = 0x9e3779b97f4a7c15u64;
        for _ in 0..20_000 {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            let e = (x % cap as u64) as u32;
            // few distinct low bits force long probe runs and wrap-around
            let h = BlockHash(((x >> 8) % 97) as u128 | ((x as u128) << 64));
            if let Some((&oh, _)) = model.iter().find(|(_, v)| **v == e) {
                assert!(idx.remove(oh, e));
                model.remove(&oh);
            } else if let std::collections::hash_map::Entry::Vacant(v) = model.entry(h) {
                keys[e as usize] = h;
                let k = keys.clone();
                assert_eq!(idx.insert(h, e, |i| k[i as usize]), Insert::Inserted);
                v.insert(e);
            }
            for (hh, ee) in &model {
                assert_eq!(idx.get(*hh, |i| keys[i as usize]), Some(*ee));
            }
            assert_eq!(idx.len(), model.len());
        }
    }
}
