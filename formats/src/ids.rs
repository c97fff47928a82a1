//! The identities a new disk gets: its content ID, its long content ID and the DDB of a base.

/// A random content ID that is neither "no parent" nor "never written".
pub fn random_cid() -> u32 {
    loop {
        let b = uuid::Uuid::new_v4().into_bytes();
        let cid = u32::from_le_bytes([b[0], b[1], b[2], b[3]]);
        if cid < 0xffff_fffe {
            return cid;
        }
    }
}

/// A `ddb.longContentID` whose last 8 digits are the CID, as in every VMware sample.
pub fn long_content_id(cid: u32) -> String {
    let b = uuid::Uuid::new_v4().into_bytes();
    format!(
        "{:08x}{:08x}{:08x}{cid:08x}",
        u32::from_le_bytes([b[0], b[1], b[2], b[3]]),
        u32::from_le_bytes([b[4], b[5], b[6], b[7]]),
        u32::from_le_bytes([b[8], b[9], b[10], b[11]])
    )
}

/// The DDB of a new base-style disk of `capacity` sectors: geometry, adapter, identity.
pub fn base_ddb(capacity: u64, cid: u32) -> Vec<(String, String)> {
    let (heads, sectors) = (255u64, 63u64);
    let cylinders = (capacity / (heads * sectors)).clamp(1, 65535);
    let u = uuid::Uuid::new_v4().into_bytes();
    let hex: Vec<String> = u.iter().map(|b| format!("{b:02x}")).collect();
    let uuid = format!("{}-{}", hex[..8].join(" "), hex[8..].join(" "));
    [
        ("ddb.adapterType", "lsilogic".to_string()),
        ("ddb.geometry.cylinders", cylinders.to_string()),
        ("ddb.geometry.heads", heads.to_string()),
        ("ddb.geometry.sectors", sectors.to_string()),
        ("ddb.longContentID", long_content_id(cid)),
        ("ddb.uuid", uuid),
        ("ddb.virtualHWVersion", "21".to_string()),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v))
    .collect()
}
