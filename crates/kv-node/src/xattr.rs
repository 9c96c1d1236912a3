//! The extended-attribute section of a value (`mcbp-dcp.md` §1.6).

use bytes::Bytes;

/// Removes the xattr section (`u32 total length` then the pairs) from a value, for
/// readers that did not negotiate XATTR. A malformed section leaves the value as it
/// is rather than guessing.
#[must_use]
pub(crate) fn strip_xattrs(value: &Bytes) -> Bytes {
    let Some(len) = value
        .get(..4)
        .map(|b| u32::from_be_bytes([b[0], b[1], b[2], b[3]]) as usize)
    else {
        return value.clone();
    };
    match 4usize.checked_add(len) {
        Some(end) if end <= value.len() => value.slice(end..),
        _ => value.clone(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn strips_a_well_formed_section_and_keeps_malformed_values() {
        let mut v = 6u32.to_be_bytes().to_vec();
        v.extend_from_slice(b"\0\0\0\x02a\0");
        v.extend_from_slice(b"{}");
        assert_eq!(&strip_xattrs(&Bytes::from(v))[..], b"{}");
        let bad = Bytes::from_static(&[0, 0, 0, 99, 1]);
        assert_eq!(strip_xattrs(&bad), bad);
        assert_eq!(
            strip_xattrs(&Bytes::from_static(b"ab")),
            Bytes::from_static(b"ab")
        );
    }
}
