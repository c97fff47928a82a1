//! `.vmx`/`.vmsd` dictionaries: parsing never panics, and what parses writes back byte-identical.
#![no_main]

use leafd::formats::dict::Dict;
use leafd::formats::vmx;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(d) = Dict::parse(data) else {
        return;
    };
    let _ = vmx::disks(&d);
    for (k, _) in d.entries() {
        assert!(d.get(k).is_some(), "entry {k:?} is listed but get() misses it");
        let _ = d.is_true(k);
    }
    let out = d.to_bytes();
    let again = Dict::parse(&out).expect("to_bytes output re-parses");
    assert_eq!(again, d, "to_bytes then parse changed the dictionary");
    assert!(out == data, "to_bytes is not byte-identical to the input");
});
