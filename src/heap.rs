//! The allocator's settings, and giving freed memory back to the operating system.
//!
//! Loading the configuration of a large fleet makes hundreds of thousands of small allocations
//! that are freed soon after (a cluster replica keeps only its own tenants' settings), and glibc's
//! allocator keeps such memory in its arenas. Three measures keep a replica near what it uses:
//! [`tune`] at start fixes the allocator's thresholds and caps its arenas, [`give_back`] after
//! each load returns what is free, and the [`spawn_trimmer`] task does the same once placements
//! and takeovers (whose transient reads are freed a moment after they end) have been quiet for
//! [`TRIM_EVERY`]. A leaf: `main`, the loader, the reloader and the state store call it.

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

/// How often the trimmer looks whether something [`churned`].
pub const TRIM_EVERY: Duration = Duration::from_secs(10);

/// Set by [`churned`], cleared by the trimmer when it gives the memory back. Process-wide, as
/// the allocator is.
static CHURN: AtomicBool = AtomicBool::new(false);

/// The allocator settings [`tune`] applies, chosen by [`choose`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Tuning {
    /// Allocations of this many bytes or more are mapped on their own and unmapped when freed.
    /// Setting it fixes it: glibc otherwise raises it (and with it, to twice as much, the free
    /// memory an arena keeps at its top) to the largest block freed so far, up to 32 MiB, so one
    /// large transient buffer, like a fleet's configuration file, leaves every arena holding tens
    /// of megabytes it never returns.
    pub mmap_threshold: usize,
    /// At most this many arenas. glibc allows eight per core and makes a new one whenever two
    /// threads contend, so the runtime's workers and the blocking pool's readers each fill and
    /// fragment arenas of their own; one per core keeps the workers apart and the heap compact.
    pub arenas: usize,
}

/// What [`tune`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Tuned {
    /// The settings were applied.
    Applied(Tuning),
    /// The operator set glibc's own variables (`MALLOC_*` or `GLIBC_TUNABLES` with a malloc
    /// tunable), which take precedence: nothing was changed.
    LeftToEnvironment,
    /// Not glibc: nothing to tune.
    NotGlibc,
}

/// Environment variables through which an operator tunes glibc's allocator. When any is set,
/// [`tune`] leaves the allocator alone so the operator's choice holds.
const GLIBC_VARIABLES: [&str; 5] = [
    "MALLOC_ARENA_MAX",
    "MALLOC_MMAP_THRESHOLD_",
    "MALLOC_TRIM_THRESHOLD_",
    "MALLOC_TOP_PAD_",
    "MALLOC_MMAP_MAX_",
];

/// The settings for a process on `cores` cores, or `None` when the environment (read through
/// `env`) already tunes the allocator. Pure, for the tests.
pub fn choose(env: impl Fn(&str) -> Option<String>, cores: usize) -> Option<Tuning> {
    let operator = GLIBC_VARIABLES.iter().any(|v| env(v).is_some())
        || env("GLIBC_TUNABLES").is_some_and(|t| t.contains("glibc.malloc."));
    (!operator).then_some(Tuning {
        mmap_threshold: 1 << 20,
        arenas: cores.max(2),
    })
}

/// Applies [`choose`]'s settings to glibc's allocator. Call it first thing in `main`, before any
/// thread starts: arenas already made stay. Measured on one replica owning 10,000 idle tenants:
/// resident memory 207 MB without, 167 to 170 MB with (docs/benchmarks.md).
pub fn tune() -> Tuned {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        let cores = std::thread::available_parallelism().map_or(2, |n| n.get());
        let Some(t) = choose(|k| std::env::var(k).ok(), cores) else {
            return Tuned::LeftToEnvironment;
        };
        let clamp = |n: usize| libc::c_int::try_from(n).unwrap_or(libc::c_int::MAX);
        // SAFETY: mallopt only changes the allocator's parameters; called before other threads
        // start, it races with no allocation.
        unsafe {
            libc::mallopt(libc::M_MMAP_THRESHOLD, clamp(t.mmap_threshold));
            libc::mallopt(libc::M_ARENA_MAX, clamp(t.arenas));
        }
        Tuned::Applied(t)
    }
    #[cfg(not(all(target_os = "linux", target_env = "gnu")))]
    Tuned::NotGlibc
}

/// The trimmer's decision at a look: whether to trim now, given whether something churned since
/// the last look and whether churn is waiting for a quiet period (`pending`, updated).
fn trim_now(churned_since: bool, pending: &mut bool) -> bool {
    if churned_since {
        *pending = true;
        false
    } else {
        std::mem::take(pending)
    }
}

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

/// Something just freed, or is about to free, a lot of memory: a placement moved tenants, a
/// takeover read a tenant's state from NATS. The trimmer gives it back at its next look. One
/// atomic store: cheap enough for every takeover.
pub fn churned() {
    CHURN.store(true, Ordering::Relaxed);
}

/// Gives back what the allocator holds free (on a blocking thread) once something [`churned`]
/// and then a whole [`TRIM_EVERY`] passed without more: after a failover's or a reload's
/// takeovers, not during them. A trim holds each arena's lock while it walks its free memory,
/// and the heartbeat allocates too: trimming in the middle of 10,000 takeovers delayed a
/// replica's lease renewal in a test. Measured at 100,000 tenants on 10 replicas:
/// docs/benchmarks.md, session 16.
pub fn spawn_trimmer() -> tokio::task::JoinHandle<()> {
    tokio::spawn(async {
        let mut tick = tokio::time::interval(TRIM_EVERY);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut pending = false;
        loop {
            tick.tick().await;
            if trim_now(CHURN.swap(false, Ordering::Relaxed), &mut pending) {
                let _ = tokio::task::spawn_blocking(give_back).await;
            }
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env<'a>(vars: &'a [(&'a str, &'a str)]) -> impl Fn(&str) -> Option<String> + 'a {
        move |k| {
            vars.iter()
                .find(|(n, _)| *n == k)
                .map(|(_, v)| v.to_string())
        }
    }

    #[test]
    fn a_plain_environment_gets_a_fixed_threshold_and_an_arena_per_core() {
        let t = choose(env(&[]), 8).expect("nothing set: tuned");
        assert_eq!(t.mmap_threshold, 1 << 20);
        assert_eq!(t.arenas, 8);
        assert_eq!(choose(env(&[]), 1).map(|t| t.arenas), Some(2));
    }

    #[test]
    fn the_trimmer_waits_for_a_quiet_period_after_churn_and_trims_once() {
        let looks = [false, true, true, false, false, true, false, false];
        let mut pending = false;
        let trims: Vec<bool> = looks.iter().map(|c| trim_now(*c, &mut pending)).collect();
        assert_eq!(
            trims,
            [false, false, false, true, false, false, true, false]
        );
    }

    #[test]
    fn the_operators_own_malloc_settings_win() {
        assert_eq!(choose(env(&[("MALLOC_ARENA_MAX", "4")]), 2), None);
        assert_eq!(choose(env(&[("MALLOC_TRIM_THRESHOLD_", "0")]), 2), None);
        assert_eq!(
            choose(env(&[("GLIBC_TUNABLES", "glibc.malloc.arena_max=1")]), 2),
            None
        );
        // A tunable that is not the allocator's leaves the choice to us.
        assert!(choose(env(&[("GLIBC_TUNABLES", "glibc.pthread.rseq=0")]), 2).is_some());
    }
}
