//! Variable-length integers as used inside record batches: unsigned LEB128 (the
//! protobuf varint, at most 10 bytes for a `u64`) and zigzag for signed values.

/// Longest encoding of a `u64`.
pub(crate) const MAX_VARINT_BYTES: usize = 10;

/// Maps signed to unsigned so that small magnitudes stay short: 0, -1, 1, -2, ...
#[inline]
pub(crate) fn zigzag(value: i64) -> u64 {
    ((value << 1) ^ (value >> 63)) as u64
}

/// Inverse of [`zigzag`].
#[inline]
pub(crate) fn unzigzag(value: u64) -> i64 {
    ((value >> 1) as i64) ^ -((value & 1) as i64)
}

/// Bytes that `value` takes as a varint.
#[inline]
pub(crate) fn uvarint_len(value: u64) -> usize {
    // One byte per started group of 7 bits; 0 still takes one byte.
    let bits = 64 - (value | 1).leading_zeros() as usize;
    bits.div_ceil(7)
}

/// Encodes `value` into `out`, returning the bytes used.
#[inline]
pub(crate) fn encode_uvarint(mut value: u64, out: &mut [u8; MAX_VARINT_BYTES]) -> usize {
    let mut i = 0;
    while value >= 0x80 {
        out[i] = (value as u8) | 0x80;
        value >>= 7;
        i += 1;
    }
    out[i] = value as u8;
    i + 1
}

/// Decodes a varint at `buf[*pos..end]`, advancing `pos`. `None` when the bytes run
/// out before the last byte or the value does not fit in a `u64`.
#[inline]
pub(crate) fn decode_uvarint(buf: &[u8], pos: &mut usize, end: usize) -> Option<u64> {
    let mut value: u64 = 0;
    let mut shift = 0u32;
    let mut i = *pos;
    loop {
        if i >= end || shift >= 64 {
            return None;
        }
        let byte = buf[i];
        i += 1;
        let low = u64::from(byte & 0x7f);
        // The tenth byte may only carry the top bit of a u64.
        if shift == 63 && low > 1 {
            return None;
        }
        value |= low << shift;
        if byte & 0x80 == 0 {
            *pos = i;
            return Some(value);
        }
        shift += 7;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #[test]
        fn uvarint_round_trips_and_predicts_its_length(value: u64) {
            let mut out = [0u8; MAX_VARINT_BYTES];
            let n = encode_uvarint(value, &mut out);
            prop_assert_eq!(n, uvarint_len(value));
            let mut pos = 0;
            prop_assert_eq!(decode_uvarint(&out, &mut pos, n), Some(value));
            prop_assert_eq!(pos, n);
            // One byte short never decodes.
            let mut pos = 0;
            prop_assert_eq!(decode_uvarint(&out, &mut pos, n - 1), None);
        }

        #[test]
        fn zigzag_round_trips(value: i64) {
            prop_assert_eq!(unzigzag(zigzag(value)), value);
        }
    }

    #[test]
    fn zigzag_keeps_small_magnitudes_small() {
        assert_eq!(zigzag(0), 0);
        assert_eq!(zigzag(-1), 1);
        assert_eq!(zigzag(1), 2);
        assert_eq!(zigzag(i64::MIN), u64::MAX);
    }

    #[test]
    fn overlong_varint_is_refused() {
        let buf = [0xffu8; 11];
        let mut pos = 0;
        assert_eq!(decode_uvarint(&buf, &mut pos, buf.len()), None);
        // Ten bytes whose last carries more than the top bit overflow a u64.
        let mut buf = [0xffu8; 10];
        buf[9] = 0x02;
        let mut pos = 0;
        assert_eq!(decode_uvarint(&buf, &mut pos, buf.len()), None);
    }
}
