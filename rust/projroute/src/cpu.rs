//! What the CPU is and can run (detected at run time), and which kernel path the core takes on it.

/// Whether this CPU has AVX2, FMA and F16C: the features the packed kernel's AVX2 build
/// and the vectorised loops of `fastmath` are compiled for. Always `false` off x86-64.
/// (The standard library caches the detection, so a call is a load and a test.)
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

/// The SIMD features a figure depends on that this CPU has (x86-64: AVX2, FMA, F16C and
/// the AVX-512 and AMX families), in a fixed order.
pub fn cpu_features() -> Vec<&'static str> {
    #[cfg(target_arch = "x86_64")]
    {
        use std::arch::is_x86_feature_detected as has;
        // The newest families from the kernel's flags (their detection macros need a
        // recent toolchain); Linux lists them only when it has enabled their state.
        let flags = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
        let listed = |flag: &str| {
            flags.lines().find(|l| l.starts_with("flags")).is_some_and(|l| l.split_whitespace().any(|f| f == flag))
        };
        let all = [
            ("avx2", has!("avx2")),
            ("fma", has!("fma")),
            ("f16c", has!("f16c")),
            ("avx512f", has!("avx512f")),
            ("avx512bw", has!("avx512bw")),
            ("avx512vl", has!("avx512vl")),
            ("avx512fp16", listed("avx512_fp16")),
            ("avx512bf16", listed("avx512_bf16")),
            ("amx-tile", listed("amx_tile")),
        ];
        all.into_iter().filter(|(_, on)| *on).map(|(name, _)| name).collect()
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        Vec::new()
    }
}

/// The microkernel the packed GEMMs take on this CPU: `"avx512f"`, `"avx2+fma+f16c"` or
/// `"portable"`: the widest the CPU runs, capped by `PROJROUTE_KERNEL` (`avx512`, `avx2`
/// or `portable`) when the process starts with it set.
pub fn kernel_path() -> &'static str {
    crate::packed::kernel_path()
}

/// The CPU's model name (Linux: `model name` in /proc/cpuinfo), else the architecture.
pub fn cpu_model() -> String {
    std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split_once(':'))
                .map(|(_, m)| m.trim().to_owned())
        })
        .unwrap_or_else(|| std::env::consts::ARCH.to_owned())
}

/// One line naming the machine a figure comes from: model, SIMD features, kernel path.
pub fn describe() -> String {
    let features = cpu_features();
    format!(
        "cpu: {}; features: {}; projroute kernel: {}",
        cpu_model(),
        if features.is_empty() { "none".to_owned() } else { features.join(" ") },
        kernel_path()
    )
}
