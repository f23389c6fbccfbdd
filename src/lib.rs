//! tm: task orchestration with a Rust core.
//!
//! The core (everything but `python`) builds and tests without Python:
//! `cargo test --no-default-features`.

pub mod cache;
pub mod clock;
pub mod cron;
pub mod dag;
pub mod engine;
pub mod queue;
pub mod retry;
pub mod store;

#[cfg(feature = "python")]
mod python;
