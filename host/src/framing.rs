//! The schema-registry wire format (Confluent's, which Apicurio's
//! compatible API shares): magic byte 0, the schema id as 4 big-endian
//! bytes, for protobuf the message-index list as zigzag varints (a single
//! 0 is the short form of `[0]`, the file's first message), then the
//! protobuf bytes.
//!
//! Plain protobuf never starts with 0 (field number 0 is invalid), so a
//! message is framed exactly when its first byte is 0.

/// A frame cut short or holding nonsense.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("schema-registry framing: {0}")]
pub struct FramingError(String);

/// A message split into where its schema is and its protobuf body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Framed<'a> {
    /// The writer's schema id; `None`: the message is plain protobuf.
    pub id: Option<u32>,
    /// Which message of the schema's file: indexes into its top-level
    /// messages, then into the nested ones. Empty for `[0]`.
    pub index: Vec<i32>,
    pub body: &'a [u8],
}

/// Longest message-index list taken: deeper nesting than this is not a
/// schema anyone writes, and a bound keeps garbage from allocating.
const MAX_INDEXES: i64 = 32;

/// Splits `bytes`; fails only on a framing that is cut short or nonsense.
pub fn split(bytes: &[u8]) -> Result<Framed<'_>, FramingError> {
    if bytes.first() != Some(&0) {
        return Ok(Framed {
            id: None,
            index: Vec::new(),
            body: bytes,
        });
    }
    let framing = |what: &str| FramingError(what.to_string());
    let id = bytes
        .get(1..5)
        .ok_or_else(|| framing("cut short before the schema id ends"))?;
    let id = u32::from_be_bytes([id[0], id[1], id[2], id[3]]);
    let mut rest = &bytes[5..];
    let count = read_zigzag_varint(&mut rest)
        .ok_or_else(|| framing("cut short in the message-index list"))?;
    if !(0..=MAX_INDEXES).contains(&count) {
        return Err(framing(&format!("a message-index list of {count} entries")));
    }
    let mut index = Vec::with_capacity(count as usize);
    for _ in 0..count {
        let i = read_zigzag_varint(&mut rest)
            .ok_or_else(|| framing("cut short in the message-index list"))?;
        let i = i32::try_from(i)
            .ok()
            .filter(|i| *i >= 0)
            .ok_or_else(|| framing(&format!("message index {i}")))?;
        index.push(i);
    }
    if index == [0] {
        index.clear();
    }
    Ok(Framed {
        id: Some(id),
        index,
        body: rest,
    })
}

/// The framing of a message of schema `id`, the first message of its file.
pub fn header(id: u32) -> [u8; 6] {
    let id = id.to_be_bytes();
    [0, id[0], id[1], id[2], id[3], 0]
}

fn read_zigzag_varint(bytes: &mut &[u8]) -> Option<i64> {
    let mut value: u64 = 0;
    for (i, byte) in bytes.iter().enumerate().take(10) {
        value |= u64::from(byte & 0x7f) << (7 * i);
        if byte & 0x80 == 0 {
            *bytes = &bytes[i + 1..];
            return Some(((value >> 1) as i64) ^ -((value & 1) as i64));
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plain_framed_and_nested() {
        let plain = split(b"\x0a\x02id").unwrap();
        assert_eq!((plain.id, plain.body), (None, &b"\x0a\x02id"[..]));

        let mut framed = header(258).to_vec();
        framed.extend_from_slice(b"\x0a\x02id");
        let f = split(&framed).unwrap();
        assert_eq!(
            (f.id, f.index.len(), f.body),
            (Some(258), 0, &b"\x0a\x02id"[..])
        );

        // [1, 2]: count 2, then 1 and 2, zigzag-encoded.
        let f = split(&[0, 0, 0, 0, 7, 4, 2, 4, 0x0a]).unwrap();
        assert_eq!((f.id, f.index, f.body), (Some(7), vec![1, 2], &[0x0a][..]));
        // The long form of [0] is the short one.
        assert!(split(&[0, 0, 0, 0, 7, 2, 0]).unwrap().index.is_empty());
    }

    #[test]
    fn cut_short_or_nonsense_is_an_error() {
        for bad in [
            &[0u8][..],
            &[0, 0, 0, 1],
            &[0, 0, 0, 0, 1],
            &[0, 0, 0, 0, 1, 4, 2],
            &[
                0, 0, 0, 0, 1, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 1,
            ],
            &[0, 0, 0, 0, 1, 1],
            &[0, 0, 0, 0, 1, 2, 1],
        ] {
            assert!(split(bad).is_err(), "{bad:?}");
        }
    }
}
