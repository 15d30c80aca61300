//! Proof of the engine replay's hit rates: every page a request is served is checked against
//! what was written for its hash.
//!
//! 1. When a block is computed (prefill at admission, or decode filling it) and before it is
//!    committed, the replay writes a **stamp** into its page: [`STAMP_BYTES`] bytes derived
//!    from the block's [`BlockHash`] at the start of the page and, when the page is larger,
//!    [`STAMP_BYTES`] more (derived differently) at its end. With the default small payload
//!    (64 bytes per page) the stamp is the whole page.
//! 2. At every admission, before the prefill of the rest runs, each page the request shares
//!    from the cache (a G1 prefix hit, or a page onboarded from G2/G3 into G1) is read through
//!    the G1 page lease and compared with the stamp of the hash the request needs there.
//! 3. Checks and mismatches are counted ([`Verification`]); a replay with any mismatch fails
//!    ([`crate::Error::WrongPages`]) instead of reporting a hit rate it cannot back.
//!
//! The pages travel through the real engine (write-through and offload copies, G3 writes and
//! reads with their checksums, onboarding copies), so a page served from the wrong slot, a
//! stale copy, or a copy made before the page was written shows up as a mismatch.

use serde::Serialize;

use kvtier::offload::OnboardOutcome;
use kvtier::{BlockHash, BlockId, CacheCore, Result, SeqId};

/// Bytes of a stamp (at each end of a page larger than this; the whole page otherwise).
pub const STAMP_BYTES: usize = 64;

/// Pages counted per tier they were served from.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct TierPages {
    /// Shared from G1 at once.
    pub g1: u64,
    /// Onboarded from G2.
    pub g2: u64,
    /// Onboarded from G3.
    pub g3: u64,
    /// Onboarded from G4.
    pub g4: u64,
}

impl TierPages {
    /// All tiers.
    pub fn total(&self) -> u64 {
        self.g1 + self.g2 + self.g3 + self.g4
    }
}

/// Where a served page did not carry the stamp of its hash.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Mismatch {
    /// Index of the request in the trace.
    pub request: u32,
    /// Block position in the request's page table.
    pub block: usize,
    /// Tier the page was served from (`G1`, `G2`, `G3`).
    pub tier: &'static str,
}

/// What the replay checked (see the module docs).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct Verification {
    /// Bytes compared per page (at each end of a page larger than [`STAMP_BYTES`]).
    pub stamp_bytes: usize,
    /// Pages stamped when their block was computed.
    pub pages_stamped: u64,
    /// Served pages checked at admission, by the tier they came from (every admission,
    /// re-admissions after a preemption included).
    pub pages_checked: TierPages,
    /// Of those, pages whose bytes were not the stamp of their hash.
    pub mismatches: u64,
    /// The first mismatch, if any.
    pub first_mismatch: Option<Mismatch>,
}

/// Stamps pages and checks served ones during one replay.
#[derive(Debug, Default)]
pub(crate) struct Verifier {
    pub(crate) counts: Verification,
    /// The blocks being stamped (copied out of the page table, which `page_mut` cannot borrow
    /// alongside).
    blocks: Vec<BlockId>,
    /// Test fault: the first block this request computes gets the stamp of another hash.
    wrong_stamp_for: Option<u32>,
}

impl Verifier {
    pub(crate) fn new(page_bytes: usize, wrong_stamp_for: Option<u32>) -> Self {
        let counts = Verification { stamp_bytes: STAMP_BYTES.min(page_bytes), ..Verification::default() };
        Self { counts, blocks: Vec::new(), wrong_stamp_for }
    }

    /// Checks the first `served` blocks of `seq` against the stamps of `hashes`. `onboarded`
    /// says how many came from each tier, in page-table order (the leading G1 hits, then the
    /// pages from G2, then those from G3, any rest from G1), as the report splits hit tokens.
    pub(crate) fn check_served(
        &mut self,
        core: &CacheCore,
        request: u32,
        seq: SeqId,
        hashes: &[BlockHash],
        served: usize,
        onboarded: Option<OnboardOutcome>,
    ) -> Result<()> {
        let table = core.block_table(seq)?;
        let o = onboarded.unwrap_or_default();
        let g1_head = if onboarded.is_some() { o.g1_hits } else { served };
        let g2_end = g1_head + o.from_g2;
        let g3_end = g2_end + o.from_g3;
        let g4_end = g3_end + o.from_g4;
        for (i, (&block, &hash)) in table.iter().zip(hashes).take(served).enumerate() {
            let tier = match i {
                i if i < g1_head || i >= g4_end => "G1",
                i if i < g2_end => "G2",
                i if i < g3_end => "G3",
                _ => "G4",
            };
            match tier {
                "G1" => self.counts.pages_checked.g1 += 1,
                "G2" => self.counts.pages_checked.g2 += 1,
                "G3" => self.counts.pages_checked.g3 += 1,
                _ => self.counts.pages_checked.g4 += 1,
            }
            if !carries_stamp(hash, &core.page(block)?) {
                self.counts.mismatches += 1;
                self.counts.first_mismatch.get_or_insert(Mismatch { request, block: i, tier });
            }
        }
        Ok(())
    }

    /// Stamps blocks `from..hashes.len()` of `seq` (just computed, not yet committed).
    pub(crate) fn stamp_computed(
        &mut self,
        core: &mut CacheCore,
        request: u32,
        seq: SeqId,
        hashes: &[BlockHash],
        from: usize,
    ) -> Result<()> {
        if from >= hashes.len() {
            return Ok(());
        }
        self.blocks.clear();
        self.blocks.extend(core.block_table(seq)?.iter().take(hashes.len()).skip(from));
        let mut fault = self.wrong_stamp_for == Some(request);
        for (&block, &hash) in self.blocks.iter().zip(&hashes[from..]) {
            let hash = if std::mem::take(&mut fault) {
                self.wrong_stamp_for = None;
                BlockHash(hash.0 ^ 1)
            } else {
                hash
            };
            stamp(hash, &mut core.page_mut(block)?);
            self.counts.pages_stamped += 1;
        }
        Ok(())
    }
}

/// Word `i` of the stamp of `hash`: equal hashes give equal words, words differ by position.
fn word(hash: BlockHash, i: u64) -> [u8; 8] {
    let (lo, hi) = (hash.0 as u64, (hash.0 >> 64) as u64);
    super::splitmix64(lo ^ super::splitmix64(hi ^ i.wrapping_mul(0x9E37_79B9_7F4A_7C15))).to_le_bytes()
}

/// The stamp bytes for `part` (0: head, 1: tail) of a page of `hash`, into `out`.
fn stamp_part(hash: BlockHash, part: u64, out: &mut [u8]) {
    for (i, chunk) in out.chunks_mut(8).enumerate() {
        let w = word(hash, part * 64 + i as u64);
        chunk.copy_from_slice(&w[..chunk.len()]);
    }
}

/// Writes the stamp of `hash` into `page`.
fn stamp(hash: BlockHash, page: &mut [u8]) {
    let n = page.len().min(STAMP_BYTES);
    stamp_part(hash, 0, &mut page[..n]);
    if page.len() > STAMP_BYTES {
        let start = (page.len() - STAMP_BYTES).max(n);
        stamp_part(hash, 1, &mut page[start..]);
    }
}

/// Whether `page` carries the stamp of `hash`.
fn carries_stamp(hash: BlockHash, page: &[u8]) -> bool {
    let mut expected = [0u8; 2 * STAMP_BYTES];
    let n = page.len().min(STAMP_BYTES);
    stamp_part(hash, 0, &mut expected[..n]);
    if page[..n] != expected[..n] {
        return false;
    }
    if page.len() > STAMP_BYTES {
        let start = (page.len() - STAMP_BYTES).max(n);
        let tail = &mut expected[STAMP_BYTES..STAMP_BYTES + page.len() - start];
        stamp_part(hash, 1, tail);
        return page[start..] == *tail;
    }
    true
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_stamp_is_recognized_and_told_apart() {
        for len in [4, 64, 100, 128, 4096] {
            let mut page = vec![0u8; len];
            stamp(BlockHash(7), &mut page);
            assert!(carries_stamp(BlockHash(7), &page), "{len}");
            assert!(!carries_stamp(BlockHash(8), &page), "{len}");
            assert!(!carries_stamp(BlockHash(7), &vec![0u8; len]), "{len}");
            // a change at either end is seen
            for at in [0, len - 1] {
                let mut bad = page.clone();
                bad[at] ^= 1;
                assert!(!carries_stamp(BlockHash(7), &bad), "{len} @ {at}");
            }
        }
        let mut big = vec![0u8; 4096];
        stamp(BlockHash(7), &mut big);
        assert_ne!(big[..64], big[4096 - 64..], "head and tail differ");
        assert!(big[64..4096 - 64].iter().all(|&b| b == 0), "only the ends are written");
    }
}
