//! What the SSD tier holds, for a front end that rebuilds its own index after a restart.

use super::*;

impl DiskTier {
    /// Appends the hash of every page this tier serves now (VALID slots, pinned or not; pages
    /// being written are left out) to `out`, in slot order. After [`DiskTier::open`] of a warm
    /// directory these are the pages recovered from the previous run; each is still verified
    /// when it is read. One pass over the slots under the tier's lock: call it at start-up or
    /// rarely, not per request.
    ///
    /// ```
    /// use kvtier::{BlockHash, Dtype, KvLayout};
    /// use kvtier::tier::{DiskConfig, DiskTier};
    /// let dir = std::env::temp_dir().join(format!("kvtier-doc-list-{}", std::process::id()));
    /// let layout = KvLayout::new(1, 1, 2048, Dtype::Fp8, 1)?; // 4 KiB pages
    /// let page = vec![1u8; layout.page_bytes()];
    /// let tier = DiskTier::open(&layout, DiskConfig::new(&dir).with_capacity_slots(4))?;
    /// tier.write_pages(&[(BlockHash(7), &page), (BlockHash(9), &page)]);
    /// drop(tier);
    /// let tier = DiskTier::open(&layout, DiskConfig::new(&dir).with_capacity_slots(4))?; // warm
    /// let mut held = Vec::new();
    /// tier.stored_hashes(&mut held);
    /// held.sort();
    /// assert_eq!(held, [BlockHash(7), BlockHash(9)]);
    /// # drop(tier); std::fs::remove_dir_all(&dir).ok();
    /// # Ok::<(), kvtier::Error>(())
    /// ```
    pub fn stored_hashes(&self, out: &mut Vec<BlockHash>) {
        let inner = lock(&self.inner);
        for (i, slot) in inner.slots.iter().enumerate() {
            if slot.state == SlotState::Valid
                && let Ok(Some(hash)) = inner.pool.hash_of(BlockId(i as u32))
            {
                out.push(hash);
            }
        }
    }
}
