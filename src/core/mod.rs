//! The core every command shares: noise schedules and their alpha-bar tables (`schedule`), the
//! closed-form forward process x_t = sqrt(abar_t) x0 + sqrt(1 - abar_t) eps and the Markov
//! step (`forward`), and the seeded, thread-count-independent noise generator (`rng`).
pub mod forward;
pub mod rng;
pub mod schedule;
