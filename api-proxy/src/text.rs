//! Byte-string comparison for the lookups every proxied call makes (route prefix, pool host,
//! the provider's base origin).
//!
//! Those strings are short and usually of equal length; [`same`] compares them inline with a
//! few word loads rather than a call into the C library's `memcmp` for each (see
//! `docs/proxy-internals.md` for what that was measured to save).

/// Whether `a` and `b` hold the same bytes. Not for secrets (it stops at the first difference;
/// see `auth`'s constant-time comparison for those).
#[inline]
pub fn same(a: &[u8], b: &[u8]) -> bool {
    let n = a.len();
    if n != b.len() {
        return false;
    }
    match n {
        0 => true,
        // First, middle and last byte cover every byte of a one-to-three-byte string.
        1..=3 => a[0] == b[0] && a[n / 2] == b[n / 2] && a[n - 1] == b[n - 1],
        // Two words that may overlap cover the whole string.
        4..=7 => word4(a, 0) == word4(b, 0) && word4(a, n - 4) == word4(b, n - 4),
        _ => {
            let mut i = 0;
            while i + 8 < n {
                if word8(a, i) != word8(b, i) {
                    return false;
                }
                i += 8;
            }
            // The last word, overlapping the one before, covers what is left.
            word8(a, n - 8) == word8(b, n - 8)
        }
    }
}

#[inline(always)]
fn word8(s: &[u8], at: usize) -> u64 {
    let mut w = [0u8; 8];
    w.copy_from_slice(&s[at..at + 8]);
    u64::from_ne_bytes(w)
}

#[inline(always)]
fn word4(s: &[u8], at: usize) -> u32 {
    let mut w = [0u8; 4];
    w.copy_from_slice(&s[at..at + 4]);
    u32::from_ne_bytes(w)
}

/// [`same`] for `str`s.
#[inline]
pub fn same_str(a: &str, b: &str) -> bool {
    same(a.as_bytes(), b.as_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn agrees_with_the_standard_comparison_for_every_length_and_position_of_a_difference() {
        for n in 0..80usize {
            let a: Vec<u8> = (0..n).map(|i| (i * 7 + 3) as u8).collect();
            assert!(same(&a, &a.clone()), "equal, length {n}");
            for at in 0..n {
                let mut b = a.clone();
                b[at] ^= 0x20;
                assert!(!same(&a, &b), "length {n}, differing at {at}");
                assert_eq!(same(&a, &b), a == b);
            }
            if n > 0 {
                assert!(!same(&a, &a[..n - 1]), "lengths {n} and {}", n - 1);
            }
        }
        assert!(same_str("/proxy/", "/proxy/"));
        assert!(!same_str("GET", "PUT"));
        assert!(same_str("", ""));
    }
}
