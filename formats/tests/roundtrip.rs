//! Property tests: descriptors and dictionary files written back unchanged are byte-identical,
//! and edits survive a round trip.

#![allow(unused_crate_dependencies)] // every dependency reaches every test binary
#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a failure panics, saying why

use leafd_formats::descriptor::Descriptor;
use leafd_formats::dict::{Dict, escape, unescape};
use proptest::prelude::*;

fn eol() -> impl Strategy<Value = &'static str> {
    prop_oneof![Just("\n"), Just("\r\n")]
}

/// File names as VMware writes them: letters, digits, spaces, dots, dashes, and non-ASCII.
fn file_name() -> impl Strategy<Value = String> {
    "[A-Za-z0-9 ._()é漢-]{1,40}\\.vmdk"
}

fn descriptor_line() -> impl Strategy<Value = String> {
    prop_oneof![
        Just("# Disk DescriptorFile".to_string()),
        Just(String::new()),
        "#[ -~]{0,40}",
        "(version|isNativeSnapshot|unknownKey)=\"?[A-Za-z0-9-]{0,12}\"?".prop_map(|s| s),
        Just("encoding=\"UTF-8\"".to_string()),
        any::<u32>().prop_map(|c| format!("CID={c:08x}")),
        any::<u32>().prop_map(|c| format!("parentCID={c:08x}")),
        file_name().prop_map(|f| format!("parentFileNameHint=\"{f}\"")),
        (
            prop_oneof![Just("RW"), Just("RDONLY"), Just("NOACCESS")],
            1u64..1 << 40,
            prop_oneof![Just("SPARSE"), Just("FLAT"), Just("VMFS")],
            file_name(),
            proptest::option::of(0u64..1 << 30)
        )
            .prop_map(|(a, n, t, f, o)| format!(
                "{a} {n} {t} \"{f}\"{}",
                o.map(|o| format!(" {o}")).unwrap_or_default()
            )),
        (1u64..1 << 30).prop_map(|n| format!("RW {n} ZERO")),
        ("[a-zA-Z.]{1,30}", "[ -!#-~]{0,40}").prop_map(|(k, v)| format!("ddb.{k} = \"{v}\"")),
    ]
}

fn descriptor_text() -> impl Strategy<Value = String> {
    (
        proptest::collection::vec((descriptor_line(), eol()), 0..30),
        prop_oneof![Just("twoGbMaxExtentSparse"), Just("monolithicFlat"), Just("vmfs")],
        any::<bool>(),
        eol(),
    )
        .prop_map(|(lines, ty, last_newline, e)| {
            let mut s = String::new();
            let mut all: Vec<(String, &str)> = lines;
            all.insert(all.len() / 2, (format!("createType=\"{ty}\""), e));
            for (i, (l, e)) in all.iter().enumerate() {
                s.push_str(l);
                if i + 1 < all.len() || last_newline {
                    s.push_str(e);
                }
            }
            s
        })
}

fn dict_line() -> impl Strategy<Value = String> {
    prop_oneof![
        Just(".encoding = \"UTF-8\"".to_string()),
        Just(String::new()),
        "#[^\r\n\0]{0,40}",
        ("[a-zA-Z0-9_.:]{1,30}", "[^\r\n\0\"]{0,40}").prop_map(|(k, v)| format!("{k} = \"{v}\"")),
        ("[a-zA-Z0-9_.:]{1,30}", "[^\r\n\0]{0,40}").prop_map(|(k, v)| format!("{k}={v}")),
        "[^\r\n\0]{0,60}",
    ]
}

fn dict_text() -> impl Strategy<Value = String> {
    (proptest::collection::vec((dict_line(), eol()), 0..40), any::<bool>()).prop_map(|(lines, last)| {
        let n = lines.len();
        lines.into_iter().enumerate().map(|(i, (l, e))| if i + 1 < n || last { l + e } else { l }).collect()
    })
}

/// `text` as the writer itself writes it back. An unchanged `Dict` returns the bytes it read, so a
/// key is added and removed again first: then every line comes from the writer. A file without
/// a final newline keeps having none.
fn rewritten(text: &[u8]) -> Vec<u8> {
    const PROBE: &str = "leafd-roundtrip-probe";
    let mut d = Dict::parse(text).unwrap();
    d.set(PROBE, "x");
    assert!(d.remove(PROBE));
    d.to_bytes()
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(1000))]

    #[test]
    fn descriptors_round_trip_byte_identical(text in descriptor_text()) {
        let d = Descriptor::parse(&text).unwrap();
        prop_assert_eq!(d.to_string(), text.clone());
        // And through the embedded form, NUL-padded.
        let mut padded = text.clone().into_bytes();
        padded.resize(padded.len() + 300, 0);
        prop_assert_eq!(Descriptor::parse_bytes(&padded).unwrap().to_string(), text);
    }

    #[test]
    fn descriptor_edits_survive_a_round_trip(text in descriptor_text(), cid in any::<u32>(), key in "[a-z]{1,10}", value in "[ -!#-~]{0,20}") {
        let mut d = Descriptor::parse(&text).unwrap();
        d.set_cid(cid);
        d.set_ddb(&format!("ddb.x{key}"), &value);
        d.map_extents(|e| e.file = e.file.as_ref().map(|f| std::path::Path::new("../Bases/x").join(f)));
        d.fit_encoding().unwrap();
        let again = Descriptor::parse_bytes(&d.to_bytes()).unwrap();
        prop_assert_eq!(again.cid().unwrap(), cid);
        let ddb_key = format!("ddb.x{key}");
        prop_assert_eq!(again.ddb(&ddb_key), Some(value.as_str()));
        prop_assert_eq!(&again, &d);
    }

    #[test]
    fn dictionaries_round_trip_byte_identical(text in dict_text()) {
        let d = Dict::parse(text.as_bytes()).unwrap();
        prop_assert_eq!(d.to_bytes(), text.as_bytes().to_vec());
        prop_assert_eq!(rewritten(text.as_bytes()), text.as_bytes().to_vec());
    }

    #[test]
    fn any_utf8_text_without_nul_round_trips(text in "[^\0]{0,400}") {
        let d = Dict::parse(text.as_bytes()).unwrap();
        prop_assert_eq!(d.to_bytes(), text.as_bytes().to_vec());
        prop_assert_eq!(rewritten(text.as_bytes()), text.as_bytes().to_vec());
    }

    /// A byte-based encoding goes through the encoder too: every byte but NUL decodes in
    /// windows-1252 and encodes back to itself.
    #[test]
    fn windows_1252_text_round_trips_through_the_writer(body in proptest::collection::vec(1u8..=255, 0..400)) {
        let mut text = b".encoding = \"windows-1252\"\n".to_vec();
        text.extend(body);
        prop_assert_eq!(rewritten(&text), text);
    }

    #[test]
    fn dictionary_edits_survive_a_round_trip(text in dict_text(), key in "[a-z][a-zA-Z0-9_.:]{0,20}", value in "[^\0]{0,40}") {
        let mut d = Dict::parse(text.as_bytes()).unwrap();
        d.set(&key, &value);
        let again = Dict::parse(&d.to_bytes()).unwrap();
        prop_assert_eq!(again.get(&key.to_uppercase()), Some(value.as_str()));
        prop_assert_eq!(again.entries().filter(|(k, _)| k.eq_ignore_ascii_case(&key)).count(), 1);
    }

    #[test]
    fn escaping_round_trips(v in "[^\0]{0,60}") {
        prop_assert_eq!(unescape(&escape(&v)), v);
    }
}
