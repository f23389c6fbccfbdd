//! The process-wide gate that `fork` takes first (`pthread_atfork`).
//!
//! Work that must not be cut in two by a fork runs holding a [`Pass`]: a checkpoint (a child
//! would otherwise inherit SQLite's mutexes held by a thread it does not have), and the record
//! of open databases in [`crate::sqlite_fork`], which the child reads as soon as it exists. A
//! fork waits for such work to end, and none starts until the fork is done.
//!
//! A plain mutex, so such work takes turns across the process (checkpoints are bound by their
//! `fsync`s anyway). A default-type mutex, because the child unlocks the copy its forking thread
//! locked under another thread id, which only that type allows.

#[cfg(unix)]
mod imp {
    use std::cell::UnsafeCell;
    use std::sync::Once;

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
    pub(crate) struct Pass(());
    impl Pass {
        pub(crate) fn enter() -> Pass {
            Pass(())
        }
    }
}

pub(crate) use imp::{install, Pass};
