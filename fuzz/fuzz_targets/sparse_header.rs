//! The 512-byte KDMV header. Input: the header, optionally followed (at byte 512) by a little-endian
//! u64 used as the file length. `parse` never panics, keeps every offset inside the file, and what
//! it accepts survives `to_bytes`. File lengths are capped at `i64::MAX`, the largest a real file
//! can have: at exactly `u64::MAX` the saturating bound checks in `parse` cannot tell an overflow
//! from the end of the file (regressions/sparse_header-file-len-u64-max).
#![no_main]

use leafd::formats::sparse::{Header, SECTOR};
use libfuzzer_sys::fuzz_target;

fn check(data: &[u8], file_len: u64) {
    let file_len = file_len.min(i64::MAX as u64);
    let Ok(h) = Header::parse(data, file_len) else {
        return;
    };
    let gd_bytes = h.num_gts().checked_mul(4).expect("grain directory size overflows");
    let _ = h.gt_coverage();
    // The contract SparseExtent relies on: the grain directory lies inside the file.
    let gd_end = h
        .gd_offset
        .checked_mul(SECTOR)
        .and_then(|o| o.checked_add(gd_bytes))
        .expect("grain directory end overflows");
    assert!(gd_end <= file_len, "grain directory past the end of the file");
    assert!(h.capacity > 0);
    let bytes = h.to_bytes();
    let again = Header::parse(&bytes, file_len).expect("to_bytes output re-parses");
    assert_eq!(again, h, "to_bytes then parse changed the header");
}

fuzz_target!(|data: &[u8]| {
    check(data, data.len() as u64);
    check(data, i64::MAX as u64);
    if let Some(len) = data.get(512..520) {
        check(data, u64::from_le_bytes(len.try_into().unwrap()));
    }
});
