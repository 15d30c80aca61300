//! The batched IO paths of the SSD tier: writes that checksum while their IO is in flight,
//! and reads in chunks, each verified while the next one's IO runs.

use super::*;

impl DiskTier {
    fn location(&self, b: BlockId) -> (&File, u64) {
        let spf = self.header.slots_per_file as usize;
        let file = self.slabs[b.index() / spf].file();
        (file, (b.index() % spf) as u64 * self.slot_bytes as u64)
    }

    fn direct_ok(&self, buf: &[u8]) -> bool {
        buf.len() == self.slot_bytes && (buf.as_ptr() as usize).is_multiple_of(DIRECT_ALIGN)
    }

    /// One mapping for `slots` bounce slots (a page that is not aligned or not slot-sized for
    /// direct IO goes through one): a cached area if one is large enough, else a new one. One
    /// mapping per batch, not per page: mapping and unmapping 4 KiB per page was most of a
    /// small-page replay's time (257 K mmap + munmap for 1,000 requests).
    fn take_bounce(&self, slots: usize) -> Result<AlignedBuf> {
        let bytes = slots * self.slot_bytes;
        let mut cache = lock(&self.bounce);
        match cache.iter().position(|b| b.len() >= bytes) {
            Some(i) => Ok(cache.swap_remove(i)),
            None => {
                drop(cache);
                AlignedBuf::new(bytes)
            }
        }
    }

    /// Gives a bounce area back for the next batch (the smallest is dropped when full).
    fn return_bounce(&self, area: AlignedBuf) {
        let mut cache = lock(&self.bounce);
        cache.push(area);
        if cache.len() > MAX_CACHED_BOUNCE
            && let Some(i) = cache.iter().enumerate().min_by_key(|(_, b)| b.len()).map(|(i, _)| i)
        {
            cache.swap_remove(i);
        }
    }

    /// Stores pages. For each `(hash, page)`: `Ok(true)` when written now, `Ok(false)` when a page
    /// with that hash is already stored or being written, or the write was refused (device
    /// recently full, every slot pinned); an error when the page has the wrong length or its IO
    /// failed ([`Error::DiskFull`] for `ENOSPC`), in which case the slot is released and nothing
    /// is stored under the hash. All data IO of the batch goes in one `submit`.
    pub fn write_pages(&self, pages: &[(BlockHash, &[u8])]) -> Vec<Result<bool>> {
        let mut results: Vec<Result<bool>> = pages.iter().map(|_| Ok(false)).collect();
        let mut planned: Vec<(usize, BlockId, u64)> = Vec::with_capacity(pages.len());
        {
            let mut inner = lock(&self.inner);
            let refusing = inner.disk_full_until.is_some_and(|t| Instant::now() < t);
            for (i, (hash, page)) in pages.iter().enumerate() {
                if page.len() != self.page_bytes {
                    results[i] = Err(Error::LayoutMismatch { expected: self.page_bytes, actual: page.len() });
                } else if refusing {
                    inner.m.enospc_refusals += 1;
                } else if let Some((b, generation)) = inner.claim_slot(*hash) {
                    planned.push((i, b, generation));
                }
            }
        }
        if planned.is_empty() {
            return results;
        }
        // Outside the lock: checksums, bounce copies, data IO. The checksums only read the pages,
        // as the writes do: they are computed on this thread while the IO is in flight.
        let planned_pages: Vec<&[u8]> = planned.iter().map(|&(i, ..)| pages[i].1).collect();
        let mut summer = Checksummer { pages: &planned_pages, sums: Vec::with_capacity(planned.len()) };
        let mut failed = self.write_planned(pages, &planned, &mut summer);
        let checksums = summer.finish();
        let mut inner = lock(&self.inner);
        for (k, &(i, b, generation)) in planned.iter().enumerate() {
            results[i] = match failed[k].take() {
                None => Ok(inner.commit_write(b, pages[i].0, generation, checksums[k], self.page_bytes)),
                Some(e) => {
                    inner.m.write_errors += 1;
                    inner.drop_slot(b);
                    if is_enospc(&e) {
                        inner.disk_full_until = Some(Instant::now() + self.enospc_backoff);
                        Err(Error::DiskFull { tier: Tier::G3 })
                    } else {
                        Err(e)
                    }
                }
            };
            // The writer's pin; a failure here would mean the bookkeeping is already broken.
            let _ = inner.pool.release(b);
        }
        results
    }

    /// Bounce copies (for unaligned pages) and the data IO of a planned write batch; returns the
    /// error of each planned page, if any.
    fn write_planned(
        &self,
        pages: &[(BlockHash, &[u8])],
        planned: &[(usize, BlockId, u64)],
        overlap: &mut dyn Overlap,
    ) -> Vec<Option<Error>> {
        let need = planned.iter().filter(|&&(i, ..)| !self.direct_ok(pages[i].1)).count();
        let (mut area, area_err) = match need {
            0 => (None, None),
            n => match self.take_bounce(n) {
                Ok(a) => (Some(a), None),
                Err(e) => (None, Some(e.to_string())),
            },
        };
        let mut slots = area.as_mut().map(|a| a.chunks_mut(self.slot_bytes));
        let mut bounces: Vec<Option<&mut [u8]>> = Vec::with_capacity(planned.len());
        let mut failed: Vec<Option<Error>> = Vec::with_capacity(planned.len());
        for &(i, ..) in planned {
            let page = pages[i].1;
            if self.direct_ok(page) {
                bounces.push(None);
                failed.push(None);
                continue;
            }
            match slots.as_mut().and_then(Iterator::next) {
                Some(buf) => {
                    buf[..page.len()].copy_from_slice(page);
                    buf[page.len()..].fill(0);
                    bounces.push(Some(buf));
                    failed.push(None);
                }
                None => {
                    bounces.push(None);
                    // the batch's bounce area could not be mapped: every page needing one fails
                    let source = match &area_err {
                        Some(e) => std::io::Error::other(e.clone()),
                        None => std::io::ErrorKind::OutOfMemory.into(),
                    };
                    failed.push(Some(Error::Map { tier: Tier::G3, bytes: need * self.slot_bytes, source }));
                }
            }
        }
        let mut io_results = Vec::with_capacity(planned.len());
        {
            let mut ops = Vec::with_capacity(planned.len());
            let mut op_of = Vec::with_capacity(planned.len());
            for (k, &(i, b, _)) in planned.iter().enumerate() {
                if failed[k].is_some() {
                    continue;
                }
                let (file, offset) = self.location(b);
                let buf: &[u8] = match &bounces[k] {
                    Some(bounce) => bounce,
                    None => pages[i].1,
                };
                ops.push(IoOp::write(file, offset, buf));
                op_of.push(k);
            }
            self.backend.submit_overlapped(&mut ops, &mut io_results, overlap);
            for (k, result) in op_of.into_iter().zip(io_results.drain(..)) {
                if let Err(e) = result {
                    failed[k] = Some(e);
                }
            }
        }
        drop(bounces);
        if let Some(area) = area {
            self.return_bounce(area);
        }
        failed
    }

    /// Reads pages into the caller's buffers (each exactly `page_bytes` long). For each request:
    /// `Ok(true)` when the buffer now holds the verified page, `Ok(false)` on a miss (absent,
    /// checksum mismatch, short read or IO error: the slot is dropped and the buffer must not be
    /// used); an error only for a buffer of the wrong length. Buffers that are 4 KiB aligned
    /// with a 4 KiB-multiple length are read into directly, others through a bounce buffer.
    pub fn read_pages(&self, reqs: &mut [(BlockHash, &mut [u8])]) -> Vec<Result<bool>> {
        let mut results: Vec<Result<bool>> = reqs.iter().map(|_| Ok(false)).collect();
        let mut planned: Vec<(usize, BlockId, u64, u64)> = Vec::with_capacity(reqs.len());
        {
            let mut inner = lock(&self.inner);
            for (i, (hash, buf)) in reqs.iter().enumerate() {
                if buf.len() != self.page_bytes {
                    results[i] = Err(Error::LayoutMismatch { expected: self.page_bytes, actual: buf.len() });
                    continue;
                }
                match inner.valid_slot(*hash) {
                    Some(b) if inner.pool.acquire_block(b).is_ok() => {
                        let slot = inner.slots[b.index()];
                        planned.push((i, b, slot.generation, slot.checksum));
                    }
                    _ => inner.m.misses += 1,
                }
            }
        }
        if planned.is_empty() {
            return results;
        }
        let need = planned.iter().filter(|&&(i, ..)| !self.direct_ok(reqs[i].1)).count();
        let mut area = if need > 0 { self.take_bounce(need).ok() } else { None };
        let mut slots = area.as_mut().map(|a| a.chunks_mut(self.slot_bytes));
        let mut bounces: Vec<Option<&mut [u8]>> = Vec::with_capacity(planned.len());
        let mut failed: Vec<Option<ReadFailure>> = vec![None; planned.len()];
        for &(i, ..) in &planned {
            bounces.push(if self.direct_ok(reqs[i].1) { None } else { slots.as_mut().and_then(Iterator::next) });
        }
        {
            let mut ops = Vec::with_capacity(planned.len());
            let mut op_of = Vec::with_capacity(planned.len());
            let mut next = 0;
            let mut bounce_iter = bounces.iter_mut();
            for (i, (_, buf)) in reqs.iter_mut().enumerate() {
                let Some(&(pi, b, ..)) = planned.get(next) else { break };
                if pi != i {
                    continue;
                }
                let k = next;
                next += 1;
                let Some(bounce) = bounce_iter.next() else { break };
                let (file, offset) = self.location(b);
                let direct = self.direct_ok(buf);
                match bounce.as_mut() {
                    Some(bounce) => ops.push(IoOp::read(file, offset, &mut bounce[..])),
                    None if direct => ops.push(IoOp::read(file, offset, &mut buf[..])),
                    None => {
                        failed[k] = Some(ReadFailure::NoBuffer);
                        continue;
                    }
                }
                op_of.push(k);
            }
            // The batch goes to the disk in submissions of at most `read_chunk_bytes`; each page
            // is verified as its read completes, while the reads queued behind it run (the
            // backend refills the queue before it reports a completion), so only the last
            // page's checksum follows the IO.
            let expected: Vec<u64> = op_of.iter().map(|&k| planned[k].3).collect();
            let mut checked: Vec<Option<ReadFailure>> = vec![Some(ReadFailure::Io); ops.len()];
            let chunk_ops = (self.read_chunk_bytes / self.slot_bytes).max(1);
            let mut rest = ops.into_iter();
            let mut results = Vec::with_capacity(chunk_ops.min(op_of.len()));
            let mut base = 0;
            loop {
                let mut ops: Vec<IoOp<'_>> = rest.by_ref().take(chunk_ops).collect();
                if ops.is_empty() {
                    break;
                }
                let mut verifier =
                    Verifier { base, page_bytes: self.page_bytes, expected: &expected, checked: &mut checked };
                self.backend.submit_overlapped(&mut ops, &mut results, &mut verifier);
                base += ops.len();
            }
            for (k, check) in op_of.into_iter().zip(checked) {
                failed[k] = check;
            }
        }
        for (k, &(i, ..)) in planned.iter().enumerate() {
            let buf = &mut *reqs[i].1;
            if failed[k].is_none()
                && let Some(bounce) = &bounces[k]
            {
                // Verified in the bounce buffer, which only this call touches.
                buf.copy_from_slice(&bounce[..self.page_bytes]);
            }
            if failed[k].is_some() && bounces[k].is_none() {
                buf.fill(0); // never leave unverified bytes in the caller's buffer
            }
        }
        drop(bounces);
        if let Some(area) = area {
            self.return_bounce(area);
        }
        let mut inner = lock(&self.inner);
        for (k, &(i, b, generation, _)) in planned.iter().enumerate() {
            match failed[k] {
                None => {
                    inner.m.hits += 1;
                    inner.m.pages_read += 1;
                    inner.m.bytes_read += self.page_bytes as u64;
                    results[i] = Ok(true);
                }
                Some(failure) => {
                    inner.m.misses += 1;
                    match failure {
                        ReadFailure::Corrupt => inner.m.corrupt += 1,
                        ReadFailure::Io => inner.m.read_errors += 1,
                        ReadFailure::NoBuffer => {}
                    }
                    let slot = inner.slots[b.index()];
                    let suspect = failure != ReadFailure::NoBuffer;
                    if suspect && slot.state == SlotState::Valid && slot.generation == generation {
                        inner.drop_slot(b);
                    }
                }
            }
            let _ = inner.pool.release(b); // the reader's pin
        }
        results
    }
}

/// Checksums the pages of a write batch in order, while its IO runs ([`Overlap::idle`]).
struct Checksummer<'p> {
    pages: &'p [&'p [u8]],
    sums: Vec<u64>,
}

impl Checksummer<'_> {
    /// Every page's checksum (those not computed during the IO now).
    fn finish(mut self) -> Vec<u64> {
        while self.idle() {}
        self.sums
    }
}

impl Overlap for Checksummer<'_> {
    fn idle(&mut self) -> bool {
        match self.pages.get(self.sums.len()) {
            Some(page) => {
                self.sums.push(xxh3_64(page));
                self.sums.len() < self.pages.len()
            }
            None => false,
        }
    }
}

/// Verifies each page of a read submission as its read completes; the outcome goes to
/// `checked` (None: verified), at the page's index in the whole batch.
struct Verifier<'c> {
    /// Batch index of the submission's first operation.
    base: usize,
    page_bytes: usize,
    /// Checksum recorded for the page of each operation of the batch.
    expected: &'c [u64],
    checked: &'c mut [Option<ReadFailure>],
}

impl Overlap for Verifier<'_> {
    fn completed(&mut self, index: usize, op: &IoOp<'_>, result: &Result<usize>) {
        let index = self.base + index;
        let check = match result {
            Err(_) => Some(ReadFailure::Io),
            Ok(_) => {
                let expected = self.expected.get(index);
                let ok = op.data().get(..self.page_bytes).is_some_and(|page| Some(&xxh3_64(page)) == expected);
                if ok { None } else { Some(ReadFailure::Corrupt) }
            }
        };
        if let Some(slot) = self.checked.get_mut(index) {
            *slot = check;
        }
    }
}

/// Why a read of a stored page returned a miss.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ReadFailure {
    /// The IO failed or was short: the slot is dropped.
    Io,
    /// The checksum did not match: the slot is dropped.
    Corrupt,
    /// No bounce buffer could be mapped: the slot is kept.
    NoBuffer,
}

impl Drop for DiskTier {
    fn drop(&mut self) {
        // Best effort: the page cache keeps the records anyway; this narrows the power-loss window.
        let _ = lock(&self.inner).index.flush_async();
    }
}
