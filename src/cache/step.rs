//! The decode step as one call: append a token to every running sequence and export the
//! batch's tables in the same pass.

use super::{BlockCopy, CacheCore};
use crate::error::{Error, Result};
use crate::seq::SeqId;
use crate::table::{BatchTables, RowState};

impl CacheCore {
    /// One decode step: appends `tokens[i]` to `seqs[i]` and fills `out` exactly as
    /// [`CacheCore::export_batch`] would afterwards, in one pass. Copy-on-write copies the
    /// runtime must mirror are pushed to `copies`.
    ///
    /// The blocks the whole batch needs are checked up front: on [`Error::OutOfBlocks`] (or any
    /// other error found before the first append) nothing changes. Each sequence appears at
    /// most once: a repeated one is [`Error::DuplicateSequence`] (checked in the same pass, by
    /// a per-sequence batch stamp).
    ///
    /// ```
    /// use kvtier::{BatchTables, CacheConfig, ExtraKeys, KvCache, KvLayout};
    /// let cache = KvCache::new(CacheConfig::new(KvLayout::new(1, 1, 8, kvtier::Dtype::F16, 4)?, 16))?;
    /// let a = cache.add_sequence(&[1, 2, 3], &ExtraKeys::default())?.seq;
    /// let b = cache.add_sequence(&[4, 5, 6, 7], &ExtraKeys::default())?.seq;
    /// let (mut tables, mut copies) = (BatchTables::new(), Vec::new());
    /// let mut core = cache.lock();
    /// core.commit(a)?;
    /// core.commit(b)?;
    /// core.decode_step(&[a, b], &[9, 9], &mut tables, &mut copies)?;
    /// assert_eq!(tables.seq_lens(), &[4, 5]);
    /// assert_eq!(tables.slot_mapping().len(), 2); // one new token each
    /// # Ok::<(), kvtier::Error>(())
    /// ```
    pub fn decode_step(
        &mut self,
        seqs: &[SeqId],
        tokens: &[u32],
        out: &mut BatchTables,
        copies: &mut Vec<BlockCopy>,
    ) -> Result<()> {
        if seqs.len() != tokens.len() {
            return Err(Error::BatchMismatch { sequences: seqs.len(), items: tokens.len() });
        }
        let (shift, size) = (self.block_shift, self.block_size);
        let split = move |pos: usize| match shift {
            Some(s) => (pos >> s, pos & ((1 << s) - 1)),
            None => (pos / size, pos % size),
        };
        let (mut width, mut want) = (0, 0);
        self.seqs.next_batch();
        for &s in seqs {
            let st = self.seqs.get_in_batch(s)?;
            let len = st.tokens.len();
            if len >= self.max_seq_len {
                return Err(Error::SequenceTooLong { requested: len + 1, max: self.max_seq_len });
            }
            let new_block = split(len).1 == 0;
            let copy = match st.blocks.last() {
                Some(&last) if !new_block && !st.tail_private => {
                    self.pool.refcount(last)? > 1 || self.pool.hash_of(last)?.is_some()
                }
                _ => false,
            };
            width = width.max(st.blocks.len() + new_block as usize);
            want += new_block as usize + copy as usize;
        }
        if want > self.pool.available() {
            return Err(Error::OutOfBlocks { requested: want, available: self.pool.available() });
        }
        // Same batch, same width as the table holds: only changed entries are written.
        let reuse = out.row_width == width
            && out.rows.len() == seqs.len()
            && out.block_table.len() == seqs.len() * width
            && out.rows.iter().zip(seqs).all(|(r, s)| r.seq == *s);
        if !reuse {
            out.rows.clear();
            out.block_table.clear();
            out.block_table.resize(seqs.len() * width, BatchTables::PAD);
            out.row_width = width;
        }
        out.slot_mapping.clear();
        out.seq_lens.clear();
        out.query_start.clear();
        out.query_start.push(0);
        let bs = self.block_size as i64;
        for (row, (&s, &t)) in seqs.iter().zip(tokens).enumerate() {
            let (appended, st) = self.append_inner(s, &[t])?;
            let blocks = &st.blocks;
            let entries = &mut out.block_table[row * width..(row + 1) * width];
            let state = RowState { seq: s, version: st.blocks_version, len: blocks.len() as u32 };
            match out.rows.get_mut(row) {
                Some(prev) if prev.version == state.version && prev.len as usize <= blocks.len() => {
                    let from = prev.len as usize;
                    entries[from..blocks.len()].copy_from_slice(bytemuck::cast_slice(&blocks[from..]));
                    *prev = state;
                }
                _ => {
                    entries[..blocks.len()].copy_from_slice(bytemuck::cast_slice(blocks));
                    entries[blocks.len()..].fill(BatchTables::PAD);
                    match out.rows.get_mut(row) {
                        Some(prev) => *prev = state,
                        None => out.rows.push(state),
                    }
                }
            }
            let (computed, len) = (st.num_computed as usize, st.tokens.len());
            for pos in computed..len {
                let (i, off) = split(pos);
                out.slot_mapping.push(blocks[i].0 as i64 * bs + off as i64);
            }
            out.seq_lens.push(len as i32);
            out.query_start.push(out.slot_mapping.len() as i32);
            if let Some(c) = appended.copy {
                copies.push(c);
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cache::CacheConfig;
    use crate::layout::{Dtype, KvLayout};
    use crate::prefix::ExtraKeys;

    fn build(block: u32) -> (CacheCore, Vec<SeqId>) {
        let layout = KvLayout::new(1, 1, 4, Dtype::F16, block).unwrap();
        let mut c = CacheCore::new(CacheConfig::new(layout, 64).with_watermark(0.0)).unwrap();
        let mut seqs = vec![];
        for i in 0..6u32 {
            let p: Vec<u32> = (0..(i * 3 + 1)).map(|t| t % 5).collect();
            let s = c.add_sequence(&p, &ExtraKeys::default()).unwrap().seq;
            if i % 2 == 0 {
                c.commit(s).unwrap();
            }
            seqs.push(s);
        }
        let f = c.fork(seqs[3]).unwrap(); // a shared partial tail: copy-on-write
        seqs.push(f);
        (c, seqs)
    }

    #[test]
    fn decode_step_equals_append_then_export() {
        for block in [3, 4] {
            let (mut a, seqs) = build(block);
            let (mut b, seqs_b) = build(block);
            let tokens: Vec<u32> = (0..seqs.len() as u32).collect();
            for round in 0..12 {
                let (mut ta, mut tb) = (BatchTables::new(), BatchTables::new());
                let mut copies_a = vec![];
                a.decode_step(&seqs, &tokens, &mut ta, &mut copies_a).unwrap();
                let mut copies_b = vec![];
                for (&s, &t) in seqs_b.iter().zip(&tokens) {
                    copies_b.extend(b.append_tokens(s, &[t]).unwrap().copy);
                }
                b.export_batch(&seqs_b, &mut tb).unwrap();
                assert_eq!(ta.block_table(), tb.block_table(), "round {round}");
                assert_eq!(ta.slot_mapping(), tb.slot_mapping());
                assert_eq!(ta.seq_lens(), tb.seq_lens());
                assert_eq!(ta.query_start(), tb.query_start());
                assert_eq!(copies_a, copies_b);
                a.check_invariants().unwrap();
                if round % 2 == 1 {
                    for (&s, &s_b) in seqs.iter().zip(&seqs_b) {
                        a.commit(s).unwrap();
                        b.commit(s_b).unwrap();
                    }
                }
                if round == 3 {
                    // shrink a row between steps: the reused table must not keep stale ids
                    let len = a.tokens(seqs[5]).unwrap().len();
                    a.truncate(seqs[5], len - block as usize - 1).unwrap();
                    b.truncate(seqs_b[5], len - block as usize - 1).unwrap();
                }
            }
        }
    }

    #[test]
    fn decode_step_refuses_whole_batch_without_change() {
        let layout = KvLayout::new(1, 1, 4, Dtype::F16, 2).unwrap();
        let mut c = CacheCore::new(CacheConfig::new(layout, 3).with_watermark(0.0)).unwrap();
        let a = c.add_sequence(&[1, 2], &ExtraKeys::default()).unwrap().seq;
        let b = c.add_sequence(&[3, 4], &ExtraKeys::default()).unwrap().seq;
        let before = c.metrics();
        let mut t = BatchTables::new();
        let err = c.decode_step(&[a, b], &[5, 6], &mut t, &mut vec![]).unwrap_err();
        assert!(matches!(err, Error::OutOfBlocks { requested: 2, available: 1 }));
        assert_eq!(c.metrics(), before);
        assert_eq!(c.tokens(a).unwrap(), &[1, 2]);
        assert!(matches!(c.decode_step(&[a], &[5, 6], &mut t, &mut vec![]), Err(Error::BatchMismatch { .. })));
        c.decode_step(&[a], &[5], &mut t, &mut vec![]).unwrap();
        assert_eq!(t.seq_lens(), &[3]);
    }
}
