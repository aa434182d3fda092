//! TFRecord framing, the container of event files: each record is its length (u64, little
//! endian), the masked CRC-32C of those 8 bytes, the data, and the masked CRC-32C of the data.

/// Added to the rotated CRC so that a CRC of data holding CRCs is not itself a plain CRC.
const MASK_DELTA: u32 = 0xa282_ead8;

/// The CRC-32C (Castagnoli) of `data`, rotated right by 15 bits plus [`MASK_DELTA`] (mod 2³²).
pub fn masked_crc32c(data: &[u8]) -> u32 {
    crc32c::crc32c(data)
        .rotate_right(15)
        .wrapping_add(MASK_DELTA)
}

/// `data` framed as one record.
pub fn frame(data: &[u8]) -> Vec<u8> {
    let len = (data.len() as u64).to_le_bytes();
    let mut out = Vec::with_capacity(data.len() + 16);
    out.extend_from_slice(&len);
    out.extend_from_slice(&masked_crc32c(&len).to_le_bytes());
    out.extend_from_slice(data);
    out.extend_from_slice(&masked_crc32c(data).to_le_bytes());
    out
}

/// Why a file's records do not read back.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FrameError {
    /// The byte offset of the record that fails.
    pub offset: u64,
    /// What fails.
    pub message: &'static str,
}

/// The data of every record of `bytes`, in order; the first record whose length or data does not
/// match its CRC, or that is cut short, is an error naming its offset.
pub fn unframe(bytes: &[u8]) -> Result<Vec<&[u8]>, FrameError> {
    let mut out = Vec::new();
    let mut at = 0usize;
    while at < bytes.len() {
        let fail = |message| FrameError {
            offset: at as u64,
            message,
        };
        let rest = &bytes[at..];
        if rest.len() < 12 {
            return Err(fail("truncated record header"));
        }
        let (len, crc) = (&rest[..8], le_u32(&rest[8..12]));
        if masked_crc32c(len) != crc {
            return Err(fail("record length fails its CRC-32C check"));
        }
        let n = u64::from_le_bytes(len.try_into().expect("8 bytes"));
        let end = usize::try_from(n)
            .ok()
            .and_then(|n| n.checked_add(16))
            .filter(|&e| e <= rest.len())
            .ok_or_else(|| fail("truncated record"))?;
        let data = &rest[12..end - 4];
        if masked_crc32c(data) != le_u32(&rest[end - 4..end]) {
            return Err(fail("record data fails its CRC-32C check"));
        }
        out.push(data);
        at += end;
    }
    Ok(out)
}

fn le_u32(b: &[u8]) -> u32 {
    u32::from_le_bytes(b.try_into().expect("4 bytes"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn masked_crc_of_the_standard_check_string() {
        // CRC-32C("123456789") = 0xE3069283 (RFC 3720's check value); masked, as tensorboard's
        // own masked_crc32c gives it: ((c >> 15) | (c << 17)) + 0xa282ead8.
        assert_eq!(crc32c::crc32c(b"123456789"), 0xe306_9283);
        assert_eq!(masked_crc32c(b"123456789"), 0xc78a_b0e5);
        assert_eq!(masked_crc32c(b""), 0xa282_ead8);
    }

    #[test]
    fn records_read_back_and_every_flipped_byte_is_caught() {
        let mut file = frame(b"first record");
        file.extend(frame(b""));
        file.extend(frame(&[7u8; 300]));
        let records = unframe(&file).unwrap();
        assert_eq!(
            records,
            vec![&b"first record"[..], &b""[..], &[7u8; 300][..]]
        );
        for i in 0..file.len() {
            for bit in [0x01u8, 0x80] {
                let mut bad = file.clone();
                bad[i] ^= bit;
                assert!(
                    unframe(&bad).is_err(),
                    "flipped bit {bit:#x} of byte {i} passed"
                );
            }
        }
        let cut = unframe(&file[..file.len() - 1]).unwrap_err();
        assert_eq!(cut.message, "truncated record");
        assert_eq!(cut.offset, (file.len() - 300 - 16) as u64);
    }
}
