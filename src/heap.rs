//! Giving freed memory back to the operating system. Loading the configuration of a large fleet
//! makes hundreds of thousands of small allocations that are freed soon after (a cluster replica
//! keeps only its own tenants' settings); glibc's allocator keeps such memory in its arenas, so
//! the process would stay at its peak. A leaf: the loader and the reloader call it.

/// Returns the free memory of every allocator arena to the operating system (glibc's
/// `malloc_trim`); elsewhere it does nothing. Costs milliseconds on a large heap: call it after a
/// load, not per event.
pub fn give_back() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: malloc_trim only releases memory the allocator holds free; it has no
    // preconditions and touches no memory the program owns.
    unsafe {
        libc::malloc_trim(0);
    }
}
