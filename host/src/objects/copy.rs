//! Copying a large object's bytes into the store's buffer.
//!
//! Why not just `memcpy`: a guest's bytes start wherever its allocator put
//! them, and the store's large buffers start on a page. When the source
//! starts a little below the destination's offset within a page (a few
//! dozen to a few hundred bytes, as a guest's heap often does), each load
//! of the copy shares its low 12 address bits with a store just made: the
//! CPU takes it for a dependency on that store and waits ("4K aliasing").
//! glibc's `memcpy` of such a large copy (`rep movsb` on AMD) ran at a
//! quarter of its speed here, 3.6 against 13 GB/s, depending only on the
//! two start addresses. A copy whose stores bypass the cache
//! (non-temporal, as glibc itself uses for the very largest copies) does
//! not wait on them and runs at full speed whatever the offsets; it also
//! leaves the cache to the code that runs next rather than fill it with
//! bytes that will not be read soon. Small copies stay with `memcpy`.

/// Copies at least this large bypass the cache.
pub const STREAM_MIN: usize = 1 << 20;

/// Appends `src` to `dst`.
pub fn append(dst: &mut Vec<u8>, src: &[u8]) {
    #[cfg(target_arch = "x86_64")]
    if src.len() >= STREAM_MIN && std::arch::is_x86_feature_detected!("avx2") {
        dst.reserve(src.len());
        let spare = dst.spare_capacity_mut();
        // SAFETY: `reserve` made room for `src.len()` bytes past the
        // vector's length, so the spare capacity is at least that long;
        // `src` (borrowed) cannot overlap it (borrowed mutably); AVX2 is
        // present (checked). The copy writes all of those bytes, so the
        // new length covers initialised bytes only.
        unsafe {
            stream(src.as_ptr(), spare.as_mut_ptr().cast::<u8>(), src.len());
            dst.set_len(dst.len() + src.len());
        }
        return;
    }
    dst.extend_from_slice(src);
}

/// Copies `len` bytes from `src` to `dst` with 32-byte loads and
/// non-temporal 32-byte stores (the destination aligned to 32 first).
///
/// # Safety
/// `src` must be valid for reads and `dst` for writes of `len` bytes, the
/// two must not overlap, and the CPU must support AVX2.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
unsafe fn stream(src: *const u8, dst: *mut u8, len: usize) {
    use std::arch::x86_64::{__m256i, _mm256_loadu_si256, _mm256_stream_si256, _mm_sfence};
    const BLOCK: usize = 128;
    // SAFETY (whole body): every access stays within the first `len` bytes
    // of `src` and `dst`, which the caller vouches for; stream stores go to
    // 32-byte aligned addresses (`head` aligns `dst + done`, and `done`
    // then grows by whole blocks).
    unsafe {
        let head = dst.align_offset(32).min(len);
        std::ptr::copy_nonoverlapping(src, dst, head);
        let mut done = head;
        while len - done >= BLOCK {
            let from = src.add(done).cast::<__m256i>();
            let to = dst.add(done).cast::<__m256i>();
            let (a, b) = (_mm256_loadu_si256(from), _mm256_loadu_si256(from.add(1)));
            let (c, d) = (_mm256_loadu_si256(from.add(2)), _mm256_loadu_si256(from.add(3)));
            _mm256_stream_si256(to, a);
            _mm256_stream_si256(to.add(1), b);
            _mm256_stream_si256(to.add(2), c);
            _mm256_stream_si256(to.add(3), d);
            done += BLOCK;
        }
        // Stream stores are weakly ordered: fence them before the bytes
        // are published to other threads.
        _mm_sfence();
        std::ptr::copy_nonoverlapping(src.add(done), dst.add(done), len - done);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn appends_every_byte_whatever_the_sizes_and_offsets() {
        let source: Vec<u8> = (0..STREAM_MIN * 2 + 4096).map(|i| (i % 251) as u8).collect();
        for offset in [0, 1, 15, 31, 80, 4016, 4095] {
            for len in [0, 1, 127, 4096 + 3, STREAM_MIN - 1, STREAM_MIN, STREAM_MIN + 129] {
                let src = &source[offset..offset + len];
                // After a prefix, so the destination is not aligned either.
                for prefix in [0usize, 7] {
                    let mut dst = vec![9u8; prefix];
                    append(&mut dst, src);
                    assert_eq!(dst.len(), prefix + len);
                    assert!(dst[..prefix].iter().all(|byte| *byte == 9));
                    assert!(dst[prefix..] == *src, "offset {offset}, len {len}, prefix {prefix}");
                }
            }
        }
    }
}
