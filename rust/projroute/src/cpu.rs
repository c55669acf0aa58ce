//! What the CPU can run, detected once per call site at run time.

/// Whether this CPU has AVX2, FMA and F16C: the features the packed kernel's AVX2 build
/// and the vectorised loops of `fastmath` are compiled for. Always `false` off x86-64.
/// (The standard library caches the detection, so a call is a load and a test.)
#[cfg_attr(not(target_arch = "x86_64"), allow(dead_code))]
pub(crate) fn has_avx2_fma() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        std::arch::is_x86_feature_detected!("avx2")
            && std::arch::is_x86_feature_detected!("fma")
            && std::arch::is_x86_feature_detected!("f16c")
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}
