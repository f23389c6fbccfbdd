//! The process-wide gate that `fork` takes first (`pthread_atfork`).
//!
//! Work that must not be cut in two by a fork runs holding a [`Pass`]: a checkpoint (a child
//! would otherwise inherit SQLite's mutexes held by a thread it does not have), and the record
//! of open databases in [`crate::sqlite_fork`], which the child reads as soon as it exists. A
//! fork waits for such work to end, and none starts until the fork is done.
//!
//! The child handler also counts forks ([`generation`]), which [`ForkLocal`] compares to tell a
//! value this process made from one a forked child inherited.
//!
//! A plain mutex, so such work takes turns across the process (checkpoints are bound by their
//! `fsync`s anyway). A default-type mutex, because the child unlocks the copy its forking thread
//! locked under another thread id, which only that type allows.

#[cfg(unix)]
mod imp {
    use std::cell::UnsafeCell;
    use std::sync::atomic::{AtomicU64, Ordering};
    use std::sync::Once;

    /// Forks this process went through since the handlers were installed (0 in the process
    /// that installed them, 1 in its children, 2 in theirs...).
    static GENERATION: AtomicU64 = AtomicU64::new(0);

    /// See [`GENERATION`]; meaningful once [`install`] ran.
    pub(crate) fn generation() -> u64 {
        GENERATION.load(Ordering::Relaxed)
    }

    struct Gate(UnsafeCell<libc::pthread_mutex_t>);
    // SAFETY: the mutex is only used through pthread calls, which synchronise it.
    unsafe impl Sync for Gate {}

    static GATE: Gate = Gate(UnsafeCell::new(libc::PTHREAD_MUTEX_INITIALIZER));

    extern "C" fn before_fork() {
        // SAFETY: a statically initialised mutex, released by one of the two handlers below.
        unsafe { libc::pthread_mutex_lock(GATE.0.get()) };
    }

    extern "C" fn in_parent() {
        // SAFETY: locked by `before_fork` on this thread.
        unsafe { libc::pthread_mutex_unlock(GATE.0.get()) };
    }

    extern "C" fn in_child() {
        // The gate is held (by this thread, the child's only one): nothing else runs yet.
        GENERATION.fetch_add(1, Ordering::Relaxed);
        crate::sqlite_fork::after_fork_in_child();
        // SAFETY: locked by `before_fork` on the thread that forked.
        unsafe { libc::pthread_mutex_unlock(GATE.0.get()) };
    }

    /// Registers the fork handlers (once per process; a forked child inherits them).
    pub(crate) fn install() {
        static ONCE: Once = Once::new();
        // SAFETY: registers functions that lock and unlock a static mutex, and in the child
        // take file locks (see `sqlite_fork::after_fork_in_child`).
        ONCE.call_once(|| unsafe {
            libc::pthread_atfork(Some(before_fork), Some(in_parent), Some(in_child));
        });
    }

    /// Held by work a fork must not cut in two.
    pub(crate) struct Pass(());

    impl Pass {
        pub(crate) fn enter() -> Pass {
            // SAFETY: a statically initialised mutex, released in `drop` on this thread.
            unsafe { libc::pthread_mutex_lock(GATE.0.get()) };
            Pass(())
        }
    }

    impl Drop for Pass {
        fn drop(&mut self) {
            // SAFETY: locked by `enter` on this thread.
            unsafe { libc::pthread_mutex_unlock(GATE.0.get()) };
        }
    }
}

#[cfg(not(unix))]
mod imp {
    pub(crate) fn install() {}
    pub(crate) fn generation() -> u64 {
        0
    }
    pub(crate) struct Pass(());
    impl Pass {
        pub(crate) fn enter() -> Pass {
            Pass(())
        }
    }
}

pub(crate) use imp::{generation, install, Pass};

/// A value that belongs to the process that made it: connections, or a handle on a thread. A
/// forked child that reaches it gets a fresh default value instead, and the inherited one is
/// forgotten, never closed or joined: its connection is the parent's to close (closing it here
/// could release the parent's locks or checkpoint under it), its thread is not in the child.
pub(crate) struct ForkLocal<T: Default> {
    generation: u64,
    value: T,
}

impl<T: Default> ForkLocal<T> {
    pub(crate) fn new(value: T) -> ForkLocal<T> {
        install();
        ForkLocal {
            generation: generation(),
            value,
        }
    }

    /// This process's value.
    pub(crate) fn get(&mut self) -> &mut T {
        let now = generation();
        if self.generation != now {
            std::mem::forget(std::mem::take(&mut self.value));
            self.generation = now;
        }
        &mut self.value
    }

    /// Whether the value was made by this process (not inherited through a fork).
    pub(crate) fn is_own(&self) -> bool {
        self.generation == generation()
    }
}

impl<T: Default> Drop for ForkLocal<T> {
    fn drop(&mut self) {
        if !self.is_own() {
            std::mem::forget(std::mem::take(&mut self.value));
        }
    }
}
