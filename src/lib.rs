//! tm: task orchestration with a Rust core.
//!
//! The core (everything but `python`) builds and tests without Python:
//! `cargo test --no-default-features`.

pub mod cache;
mod checkpoint;
pub mod clock;
pub mod cron;
pub mod dag;
pub mod engine;
mod fork_gate;
pub mod queue;
pub mod retry;
mod sqlite_fork;
pub mod store;
mod walvfs;

#[cfg(feature = "python")]
mod python;

/// The extension's allocator. The engine, the recorder and the store's writer allocate on one
/// thread and free on another (events, queued writes); mimalloc's per-thread heaps with
/// delayed cross-thread frees make that cheap, where the system allocator contends on arenas.
#[cfg(feature = "python")]
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;
