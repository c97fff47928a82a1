//! VMDK text descriptors: parsing never panics, and what parses writes back to an equal descriptor.
#![no_main]

use leafd::formats::descriptor::Descriptor;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(text) = std::str::from_utf8(data) {
        let _ = Descriptor::parse(text);
    }
    let Ok(d) = Descriptor::parse_bytes(data) else {
        return;
    };
    let _ = d.cid();
    let _ = d.parent_cid();
    let _ = d.capacity();
    let _ = d.create_type();
    let _ = d.parent_file_name_hint();
    let _ = d.extents().count();
    let _ = d.ddb_entries().count();
    for (k, _) in d.ddb_entries() {
        assert!(d.ddb(k).is_some());
    }
    let text = d.to_string();
    let again = Descriptor::parse(&text).expect("a parsed descriptor's to_string re-parses");
    assert_eq!(again, d, "to_string then parse changed the descriptor");
    assert_eq!(again.to_string(), text, "a second write differs from the first");
});
