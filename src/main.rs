//! The `diffuse` binary: parse arguments, call the library, report errors in one line.
use clap::Parser;

// mimalloc reuses freed pages; glibc's allocator hands large tensors fresh mmap'd pages that
// page-fault on every op. `make bench`: Candle's composite q_sample 3.0 ms -> 0.14 ms.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

mod cli;

fn main() {
    // Thread count and allocator settings (see runtime.rs), before any thread exists.
    diffuse::runtime::init();
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
