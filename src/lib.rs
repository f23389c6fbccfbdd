//! tm: task orchestration with a Rust core.
//!
//! The core (everything but `python`) builds and tests without Python:
//! `cargo test --no-default-features`.

pub mod clock;
pub mod cron;
pub mod dag;
pub mod engine;
pub mod retry;

#[cfg(feature = "python")]
mod python;
