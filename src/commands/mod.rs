//! One module per `diffuse` subcommand. Each takes a plain serde request (filled by the CLI's
//! flags or a file), composes the libraries, and returns what it wrote; none re-implements a
//! library's job.
pub mod data;
pub mod eval;
pub mod explore;
pub mod inspect;
pub mod interpolate;
pub mod invert;
pub mod loss_by_t;
pub mod noise;
pub mod sample;
pub mod schedule;
pub mod train;
