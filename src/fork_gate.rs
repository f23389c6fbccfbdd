//! The process-wide gate that `fork` takes first (`pthread_atfork`).
//!
//! Work that must not be cut in two by a fork runs holding a [`Pass`]: every call into an agent
//! queue (a child would otherwise inherit the queue's mutex, or SQLite's, locked by a thread it
//! does not have, and wait forever at its first call), a store's reads, cached-call index calls,
//! writer commits and result cache, a checkpoint, and the record of open databases in
//! [`crate::sqlite_fork`], which the child reads as soon as it exists. A fork waits for such
//! work to end, and none starts until the fork is done. Work holding a pass never waits for
//! another thread of the process that may need one (a pending fork would hold that thread back).
//!
//! The child handler also counts forks ([`generation`]), which [`ForkLocal`] compares to tell a
//! value this process made from one a forked child inherited.
//!
//! A reader-writer lock: passes are shared (threads do such work side by side), a fork is
//! exclusive. Writers are preferred (glibc), so a fork is not starved by threads that keep
//! calling a queue: once it waits, new passes wait for it. A thread's passes nest without
//! taking the lock again (a nested read lock would wait behind a waiting fork that waits for
//! the outer one), and a thread that forks while holding one does not wait for itself. The
//! child, whose only thread is the one that forked, starts the lock afresh: the parent's
//! readers are not in it.

#[cfg(unix)]
mod imp {
    use std::cell::{Cell, UnsafeCell};
    use std::sync::atomic::{AtomicU64, Ordering};
    use std::sync::Once;

    /// Forks this process went through since the handlers were installed (0 in the process
    /// that installed them, 1 in its children, 2 in theirs...).
    static GENERATION: AtomicU64 = AtomicU64::new(0);

    /// See [`GENERATION`]; meaningful once [`install`] ran.
    pub(crate) fn generation() -> u64 {
        GENERATION.load(Ordering::Relaxed)
    }

    struct Gate(UnsafeCell<libc::pthread_rwlock_t>);
    // SAFETY: the lock is only used through pthread calls, which synchronise it.
    unsafe impl Sync for Gate {}

    static GATE: Gate = Gate(UnsafeCell::new(libc::PTHREAD_RWLOCK_INITIALIZER));

    thread_local! {
        /// Passes this thread holds (nested ones included).
        static HELD: Cell<usize> = const { Cell::new(0) };
        /// Whether this thread's fork took the gate (it does not when the thread holds a pass).
        static FORK_TOOK: Cell<bool> = const { Cell::new(false) };
    }

    /// glibc's `PTHREAD_RWLOCK_PREFER_WRITER_NONRECURSIVE_NP` (not in the libc crate).
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    const PREFER_WRITER_NONRECURSIVE: libc::c_int = 2;

    /// (Re)initialises the gate, unlocked, preferring writers where the platform can.
    ///
    /// # Safety
    /// No thread may use the gate meanwhile: called once before any use, and in a forked child.
    unsafe fn init_gate() {
        let mut attr: libc::pthread_rwlockattr_t = std::mem::zeroed();
        libc::pthread_rwlockattr_init(&mut attr);
        #[cfg(all(target_os = "linux", target_env = "gnu"))]
        libc::pthread_rwlockattr_setkind_np(&mut attr, PREFER_WRITER_NONRECURSIVE);
        libc::pthread_rwlock_init(GATE.0.get(), &attr);
        libc::pthread_rwlockattr_destroy(&mut attr);
    }

    extern "C" fn before_fork() {
        let holds = HELD.with(Cell::get) > 0;
        if !holds {
            // SAFETY: an initialised lock, released by one of the two handlers below.
            unsafe { libc::pthread_rwlock_wrlock(GATE.0.get()) };
        }
        FORK_TOOK.with(|t| t.set(!holds));
    }

    extern "C" fn in_parent() {
        if FORK_TOOK.with(Cell::get) {
            // SAFETY: locked by `before_fork` on this thread.
            unsafe { libc::pthread_rwlock_unlock(GATE.0.get()) };
        }
    }

    extern "C" fn in_child() {
        // Nothing else runs yet: this thread is the child's only one, and it holds the gate
        // (or a pass on it) as its parent's copy did.
        GENERATION.fetch_add(1, Ordering::Relaxed);
        crate::sqlite_fork::after_fork_in_child();
        // SAFETY: no other thread exists to use the gate. The copy holds the parent's state
        // (its other threads' passes, or the forking thread's write lock under the parent's
        // thread id), so it is started afresh, with the read lock of the passes this thread
        // still holds.
        unsafe {
            init_gate();
            if HELD.with(Cell::get) > 0 {
                libc::pthread_rwlock_rdlock(GATE.0.get());
            }
        }
    }

    /// Registers the fork handlers (once per process; a forked child inherits them).
    pub(crate) fn install() {
        static ONCE: Once = Once::new();
        // SAFETY: runs once, before any pass (every pass installs first); the handlers lock
        // and unlock the gate, and in the child take file locks (see
        // `sqlite_fork::after_fork_in_child`).
        ONCE.call_once(|| unsafe {
            init_gate();
            libc::pthread_atfork(Some(before_fork), Some(in_parent), Some(in_child));
        });
    }

    /// Held by work a fork must not cut in two (shared with other such work). Not `Send`: it is
    /// released by the thread that took it.
    pub(crate) struct Pass(std::marker::PhantomData<*const ()>);

    impl Pass {
        pub(crate) fn enter() -> Pass {
            install();
            if HELD.with(|h| h.replace(h.get() + 1)) == 0 {
                // SAFETY: an initialised lock, released in `drop` on this thread.
                unsafe { libc::pthread_rwlock_rdlock(GATE.0.get()) };
            }
            Pass(std::marker::PhantomData)
        }
    }

    impl Drop for Pass {
        fn drop(&mut self) {
            if HELD.with(|h| h.replace(h.get() - 1)) == 1 {
                // SAFETY: read-locked by the outermost `enter` on this thread.
                unsafe { libc::pthread_rwlock_unlock(GATE.0.get()) };
            }
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
