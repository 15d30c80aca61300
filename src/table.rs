//! Flat page tables for a batch of sequences, in the shapes attention kernels take.

/// Reusable buffers holding a batch's block table, slot mapping and lengths.
///
/// Filled by [`crate::KvCache::export_batch`]. Row `i` of the block table holds sequence `i`'s
/// block ids, padded with [`BatchTables::PAD`] to the longest row. The slot mapping holds one
/// physical slot (`block_id * block_size + offset`) per token scheduled this step, i.e. each
/// sequence's tokens not yet committed, sequences concatenated in batch order. Every buffer is
/// exposed as a typed slice and as raw bytes (no copy) for handing to a device.
#[derive(Debug, Default, Clone)]
pub struct BatchTables {
    /// What each row of `block_table` holds, so that a decode step over the same batch only
    /// writes the entries that changed (vLLM's persistent batch does the same on the device).
    pub(crate) rows: Vec<RowState>,
    pub(crate) block_table: Vec<i32>,
    pub(crate) row_width: usize,
    pub(crate) slot_mapping: Vec<i64>,
    pub(crate) seq_lens: Vec<i32>,
    pub(crate) query_start: Vec<i32>,
}

/// The sequence a row was written for, its block-list version and the entries written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct RowState {
    pub seq: crate::seq::SeqId,
    pub version: u32,
    pub len: u32,
}

impl BatchTables {
    /// Value of padding entries in the block table.
    pub const PAD: i32 = -1;

    /// Empty buffers; they grow to the largest batch seen and are then reused.
    pub fn new() -> Self {
        Self::default()
    }
    /// Rows (sequences) in the batch.
    pub fn num_rows(&self) -> usize {
        self.seq_lens.len()
    }
    /// Entries per block-table row.
    pub fn row_width(&self) -> usize {
        self.row_width
    }
    /// The padded block table, row-major `[num_rows][row_width]`.
    pub fn block_table(&self) -> &[i32] {
        &self.block_table
    }
    /// One row of the block table.
    pub fn row(&self, i: usize) -> Option<&[i32]> {
        let w = self.row_width;
        self.block_table.get(i * w..(i + 1) * w)
    }
    /// Physical slot of each scheduled token.
    pub fn slot_mapping(&self) -> &[i64] {
        &self.slot_mapping
    }
    /// Total tokens of each sequence.
    pub fn seq_lens(&self) -> &[i32] {
        &self.seq_lens
    }
    /// Prefix sums of scheduled tokens per sequence (`num_rows + 1` entries, starting at 0):
    /// sequence `i`'s slots are `slot_mapping[query_start[i]..query_start[i + 1]]`.
    pub fn query_start(&self) -> &[i32] {
        &self.query_start
    }
    /// The block table as bytes (native-endian `i32`s).
    pub fn block_table_bytes(&self) -> &[u8] {
        bytemuck::cast_slice(&self.block_table)
    }
    /// The slot mapping as bytes (native-endian `i64`s).
    pub fn slot_mapping_bytes(&self) -> &[u8] {
        bytemuck::cast_slice(&self.slot_mapping)
    }
    /// The sequence lengths as bytes (native-endian `i32`s).
    pub fn seq_lens_bytes(&self) -> &[u8] {
        bytemuck::cast_slice(&self.seq_lens)
    }

    pub(crate) fn clear(&mut self) {
        self.rows.clear();
        self.block_table.clear();
        self.slot_mapping.clear();
        self.seq_lens.clear();
        self.query_start.clear();
        self.query_start.push(0);
        self.row_width = 0;
    }
}
