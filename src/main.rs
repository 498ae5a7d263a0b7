//! The `diffuse` binary: parse arguments, call the library, report errors in one line.
use clap::Parser;

// mimalloc reuses freed pages; glibc's allocator hands large tensors fresh mmap'd pages that
// page-fault on every op. `make bench`: Candle's composite q_sample 3.0 ms -> 0.14 ms.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

mod cli;

fn main() {
    // Candle asks num_cpus for the physical core count on every parallel op, which re-reads
    // /proc/cpuinfo each time (perf: ~5% of a train step) and counts 1 core on this 2-vCPU
    // machine; an explicit thread count avoids both. Set before any thread exists.
    // Keep freed memory instead of returning it to the OS after 10 ms (mimalloc's default):
    // tensors are freed and reallocated every step, and re-faulting zeroed pages took a third
    // of a train step (perf: clear_page_erms); mnist train step 44 -> 57 images/s.
    if std::env::var_os("MIMALLOC_PURGE_DELAY").is_none() {
        // mi_option_purge_delay (15 in mimalloc v2's mi_option_e); -1 = never purge.
        unsafe { libmimalloc_sys::mi_option_set(15, -1) };
    }
    if std::env::var_os("RAYON_NUM_THREADS").is_none() {
        let n = std::thread::available_parallelism().map_or(1, |n| n.get());
        std::env::set_var("RAYON_NUM_THREADS", n.to_string());
    }
    let args = match cli::Cli::try_parse() {
        Ok(a) => a,
        Err(e) if !e.use_stderr() => e.exit(), // --help, --version
        Err(e) => {
            // clap's message, first line only: one line naming the problem.
            let text = e.to_string();
            eprintln!("{}", text.lines().next().unwrap_or("error: bad arguments"));
            std::process::exit(2);
        }
    };
    cli::init_logging();
    if let Err(e) = cli::run(args) {
        // One line: the context chain joined, no backtrace.
        let msg = e
            .chain()
            .map(|c| c.to_string())
            .collect::<Vec<_>>()
            .join(": ");
        eprintln!("error: {msg}");
        let usage = e.chain().any(|c| {
            c.downcast_ref::<diffuse::Error>()
                .is_some_and(|d| d.is_usage())
        });
        std::process::exit(if usage { 2 } else { 1 });
    }
}
