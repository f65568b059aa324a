//! x86-64 microkernels, one file per instruction set, and the tile edges they share. The
//! crate is built for baseline x86-64; each kernel checks its instructions at run time.
//! All of the crate's `unsafe` for intrinsics lives in this folder.

pub(crate) mod bf16_avx512;
pub(crate) mod f32_avx2;
pub(crate) mod f32_avx512;
mod tile_edges;

/// Runs `f` compiled for AVX-512F when the CPU has it (so the loops of vectorisable
/// element-wise code use 16 lanes), else as built. `f` should be a closure over
/// `#[inline(always)]` code: it is inlined into the AVX-512 instantiation.
#[inline(always)]
pub(crate) fn with_avx512<R>(f: impl FnOnce() -> R) -> R {
    #[target_feature(enable = "avx512f")]
    unsafe fn in_avx512<R>(f: impl FnOnce() -> R) -> R {
        f()
    }
    if is_x86_feature_detected!("avx512f") {
        // SAFETY: the feature was just detected.
        unsafe { in_avx512(f) }
    } else {
        f()
    }
}
