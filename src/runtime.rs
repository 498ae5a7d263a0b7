//! Process-wide settings that measurably speed up Candle on CPU; called first thing by the
//! binary and the benchmarks (the binary also installs mimalloc as its global allocator).

/// Call before any thread exists.
pub fn init() {
    // Keep freed memory instead of returning it to the OS after 10 ms (mimalloc's default):
    // tensors are freed and reallocated every step, and re-faulting zeroed pages took a third
    // of a train step (perf: clear_page_erms); mnist train step 44 -> 57 images/s. Harmless
    // when mimalloc is not the global allocator.
    if std::env::var_os("MIMALLOC_PURGE_DELAY").is_none() {
        // mi_option_purge_delay (15 in mimalloc v2's mi_option_e); -1 = never purge.
        unsafe { libmimalloc_sys::mi_option_set(15, -1) };
    }
    // Back mimalloc's memory with transparent huge pages (madvise; THP is "madvise" here):
    // the first pass over fresh activations page-faulted 4 KiB at a time, which was 0.25 s
    // of system time in a 64-image `diffuse sample` (0.39 -> 0.13 s for a 1-step run).
    if std::env::var_os("MIMALLOC_ALLOW_LARGE_OS_PAGES").is_none() {
        // mi_option_allow_large_os_pages (6 in mi_option_e).
        unsafe { libmimalloc_sys::mi_option_set(6, 1) };
    }
    // Candle asks num_cpus for the physical core count on every parallel op, which re-reads
    // /proc/cpuinfo each time (perf: ~5% of a train step) and counts 1 core on this 2-vCPU
    // machine; an explicit thread count avoids both.
    if std::env::var_os("RAYON_NUM_THREADS").is_none() {
        let n = std::thread::available_parallelism().map_or(1, |n| n.get());
        std::env::set_var("RAYON_NUM_THREADS", n.to_string());
    }
}
