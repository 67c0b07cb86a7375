//! Fixed-width integers out of byte buffers that come from outside (a
//! container's files, the kernel's records, another process's memory):
//! `None` past the end, never a panic, whatever the offset.

/// `N` bytes at `at`.
pub fn array<const N: usize>(b: &[u8], at: usize) -> Option<[u8; N]> {
    b.get(at..at.checked_add(N)?)?.try_into().ok()
}

/// Little-endian (file formats).
pub fn u16_le(b: &[u8], at: usize) -> Option<u16> {
    array(b, at).map(u16::from_le_bytes)
}

pub fn u32_le(b: &[u8], at: usize) -> Option<u32> {
    array(b, at).map(u32::from_le_bytes)
}

pub fn u64_le(b: &[u8], at: usize) -> Option<u64> {
    array(b, at).map(u64::from_le_bytes)
}

/// Native-endian (the kernel's records on this machine).
pub fn u16_ne(b: &[u8], at: usize) -> Option<u16> {
    array(b, at).map(u16::from_ne_bytes)
}

pub fn u32_ne(b: &[u8], at: usize) -> Option<u32> {
    array(b, at).map(u32::from_ne_bytes)
}

pub fn i32_ne(b: &[u8], at: usize) -> Option<i32> {
    array(b, at).map(i32::from_ne_bytes)
}

pub fn u64_ne(b: &[u8], at: usize) -> Option<u64> {
    array(b, at).map(u64::from_ne_bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_inside_and_refuses_past_the_end() {
        let b = [1u8, 2, 3, 4, 5, 6, 7, 8, 9];
        assert_eq!(u16_le(&b, 0), Some(0x0201));
        assert_eq!(u32_le(&b, 1), Some(0x0504_0302));
        assert_eq!(u64_le(&b, 1), Some(0x0908_0706_0504_0302));
        assert_eq!(u32_ne(&b, 0), Some(u32::from_ne_bytes([1, 2, 3, 4])));
        assert_eq!(u64_le(&b, 2), None);
        assert_eq!(u16_ne(&b, 8), None);
        // An offset near usize::MAX is refused, not an overflow.
        assert_eq!(u32_ne(&b, usize::MAX - 1), None);
        assert_eq!(i32_ne(&[0xff; 4], 0), Some(-1));
    }
}
