//! The `diffuse` binary: parse arguments, call the library, report errors in one line.
use clap::Parser;

// mimalloc reuses freed pages; glibc's allocator hands large tensors fresh mmap'd pages that
// page-fault on every op. `make bench`: Candle's composite q_sample 3.0 ms -> 0.14 ms.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

mod cli;

/// clap's message as one line: the problem plus its hints ("[possible values: ...]", "tip:
/// a similar argument exists: ..."), without the usage block and the --help pointer.
fn clap_line(text: &str) -> String {
    text.lines()
        .take_while(|l| !l.starts_with("Usage:") && !l.starts_with("For more information"))
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .collect::<Vec<_>>()
        .join(" ")
}

/// An error chain as one line: each cause once (an I/O error's text is already part of the
/// message that wraps it).
fn error_line(e: &anyhow::Error) -> String {
    let mut msg = String::new();
    for c in e.chain() {
        let s = c.to_string();
        if msg.contains(&s) {
            continue;
        }
        if !msg.is_empty() {
            msg.push_str(": ");
        }
        msg.push_str(&s);
    }
    msg
}

fn main() {
    // Thread count and allocator settings (see runtime.rs), before any thread exists.
    diffuse::runtime::init();
    let args = match cli::Cli::try_parse() {
        Ok(a) => a,
        Err(e) if !e.use_stderr() => e.exit(), // --help, --version
        Err(e) => {
            let line = clap_line(&e.to_string());
            eprintln!(
                "{}",
                if line.is_empty() {
                    "error: bad arguments".into()
                } else {
                    line
                }
            );
            std::process::exit(2);
        }
    };
    cli::init_logging();
    if let Err(e) = cli::run(args) {
        let silent = e.chain().any(|c| {
            matches!(
                c.downcast_ref::<diffuse::Error>(),
                Some(diffuse::Error::ReportedByRoot(_))
            )
        });
        if !silent {
            // One write, so a launcher forwarding several processes' output keeps it whole.
            let line = format!("error: {}\n", error_line(&e));
            let _ = std::io::Write::write_all(&mut std::io::stderr(), line.as_bytes());
        }
        let usage = e.chain().any(|c| {
            c.downcast_ref::<diffuse::Error>()
                .is_some_and(|d| d.is_usage())
        });
        std::process::exit(if usage { 2 } else { 1 });
    }
}
