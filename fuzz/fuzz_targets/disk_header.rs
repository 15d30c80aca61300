//! The SSD tier's header parser on arbitrary bytes: never panics, and whatever it accepts
//! encodes back to a header it parses to the same value.
//!
//! Arbitrary bytes almost never get past the header's check value, so each input is also parsed
//! a second time with the check value recomputed: that reaches every field validation behind it.
#![no_main]

use kvtier::tier::format::{HEADER_BYTES, RECORD_BYTES, SlotRecord};
use kvtier::tier::format::{Header, parse_header};
use libfuzzer_sys::fuzz_target;
use xxhash_rust::xxh3::xxh3_64;

/// Bytes of the raw header the check value covers, then the 8-byte check itself.
const CHECKED_BYTES: usize = 336;

fn roundtrip(header: &Header) {
    let bytes = header.encode().expect("a parsed header encodes");
    assert_eq!(bytes.len(), HEADER_BYTES);
    let again = parse_header(&bytes).expect("an encoded header parses");
    assert_eq!(&again, header);
    assert_eq!(header.first_difference(&again), None);
    // geometry helpers are total on anything the parser accepts
    assert!(header.slab_files() >= 1);
    assert!(header.index_file_bytes() >= HEADER_BYTES as u64 + 64);
    assert!(header.slot_bytes >= header.fingerprint.page_bytes);
}

fn with_check(bytes: &[u8]) -> Option<Vec<u8>> {
    let mut fixed = bytes.get(..CHECKED_BYTES + 8)?.to_vec();
    let check = xxh3_64(&fixed[..CHECKED_BYTES]);
    fixed[CHECKED_BYTES..].copy_from_slice(&check.to_ne_bytes());
    Some(fixed)
}

fuzz_target!(|data: &[u8]| {
    if let Ok(header) = parse_header(data) {
        roundtrip(&header);
        // the check value sits where `with_check` puts it: re-checking an accepted header
        // changes nothing
        assert_eq!(with_check(data).as_deref(), data.get(..CHECKED_BYTES + 8));
    }
    if let Some(fixed) = with_check(data)
        && let Ok(header) = parse_header(&fixed)
    {
        roundtrip(&header);
    }
    // slot records of the index file (they follow the header): any 64 bytes at any slot give a
    // verdict, never a panic
    let records = if data.len() > HEADER_BYTES { &data[HEADER_BYTES..] } else { data };
    for (slot, chunk) in records.chunks_exact(RECORD_BYTES).enumerate().take(8) {
        let record: SlotRecord = bytemuck::pod_read_unaligned(chunk);
        // a valid record is what the tier would have written for its fields (`new` leaves the
        // reserved words zero)
        if record.is_valid_at(slot as u64) && record.reserved == [0; 2] {
            let again = SlotRecord::new(
                slot as u64,
                record.hash(),
                record.generation,
                record.checksum,
                record.len,
                record.state,
            );
            assert_eq!(again, record);
        }
    }
});
