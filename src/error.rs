//! Typed library errors. `is_usage` lets the binary map bad arguments to exit code 2.
use std::path::PathBuf;

#[derive(thiserror::Error, Debug)]
pub enum Error {
    /// A parameter value that can never work (t out of range, beta_end <= beta_start, ...).
    #[error("{0}")]
    InvalidArgument(String),
    /// The same error as rank 0's in a multi-process run, which rank 0 reports: this rank
    /// exits with its code and says nothing.
    #[error("{0}")]
    ReportedByRoot(Box<Error>),
    /// A file that could not be read or written.
    #[error("{}: {source}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// A file that was read but whose contents are wrong.
    #[error("{}: {msg}", path.display())]
    Format { path: PathBuf, msg: String },
    /// A model checkpoint that does not fit its configuration, or a bad configuration.
    #[error("{0}")]
    Model(String),
    /// Training diverged or similar runtime failure.
    #[error("{0}")]
    Runtime(String),
    #[error("candle: {0}")]
    Candle(#[from] candle_core::Error),
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    pub fn invalid(msg: impl Into<String>) -> Self {
        Error::InvalidArgument(msg.into())
    }
    pub fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Error::Io {
            path: path.into(),
            source,
        }
    }
    pub fn format(path: impl Into<PathBuf>, msg: impl Into<String>) -> Self {
        Error::Format {
            path: path.into(),
            msg: msg.into(),
        }
    }
    /// Usage errors exit with 2, everything else with 1.
    pub fn is_usage(&self) -> bool {
        match self {
            Error::ReportedByRoot(e) => e.is_usage(),
            e => matches!(e, Error::InvalidArgument(_)),
        }
    }
}
