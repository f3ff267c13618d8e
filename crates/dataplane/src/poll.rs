//! The one poll driver: how every poll loop of tether behaves when it has nothing to
//! do (the engines here, the fabric port and the I/O box on it, the impairment relay).
//!
//! A loop is a [`Pollable`]: `round(now)` does one round of its work and says whether
//! it did any (whoever did the work reports it; nothing diffs counters), and
//! `wake(waker)` says what can bring new work while it sleeps: file descriptors that
//! become readable, deadlines (timers), and inputs with no descriptor
//! ([`Waker::fdless`]: an in-memory port, a ring filled by another thread).
//!
//! The [`Poller`] decides, purely from the clock, what to do after a round without
//! work ([`Idle`]):
//!
//! - for `spin` after the last work it busy-polls ([`Idle::Continue`]): a loop that
//!   sleeps between frames delays acks and completions, which the peer's delay-based
//!   rate control reads as congestion;
//! - from `yield_after` on (if set) it yields the core at each empty round, so that a
//!   thread waiting for this core (the other bridge, the VMM) runs at once;
//! - past `spin` it sleeps in poll(2) over the collected descriptors
//!   ([`Idle::Sleep`]), never longer than `max_sleep`, than the earliest deadline, or
//!   than [`FDLESS_SLEEP`] when an input has no descriptor to wake it.
//!
//! [`run`] is the loop: round, decide, spin/yield/sleep, until a [`Stop`].

use std::io;
use std::os::fd::RawFd;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::port::PortError;

/// How a poll loop behaves when there is nothing to do.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct IdlePolicy {
    /// How long after the last work the loop keeps busy-polling before it sleeps
    /// (`Duration::MAX`: never sleeps; zero: sleeps at the first empty round).
    pub spin: Duration,
    /// While busy-polling, yield the core at each empty round once this much has
    /// passed since the last work (`None`: never yield). Where the loop shares its
    /// cores, a waiting thread then runs at once rather than at the end of a time
    /// slice; where it has its core, yielding only adds the system call.
    pub yield_after: Option<Duration>,
    /// Longest single sleep. Descriptors and deadlines end a sleep early; this bounds
    /// how late the loop sees what nothing wakes it for (a stop request).
    pub max_sleep: Duration,
}

impl Default for IdlePolicy {
    /// Spin 2 ms after the last work (the fabric port's long-standing default), never
    /// yield, sleep at most 10 ms at a time.
    fn default() -> IdlePolicy {
        IdlePolicy {
            spin: Duration::from_millis(2),
            yield_after: None,
            max_sleep: Duration::from_millis(10),
        }
    }
}

impl IdlePolicy {
    /// Pure busy polling (DPDK's behaviour): never yields, never sleeps.
    pub const BUSY: IdlePolicy = IdlePolicy {
        spin: Duration::MAX,
        yield_after: None,
        max_sleep: Duration::ZERO,
    };

    /// The policy of a bridge's `[bridge]` settings `spin_us` and `yield_after_us`,
    /// with the default `max_sleep`.
    pub fn from_settings(spin_us: u64, yield_after_us: Option<u64>) -> IdlePolicy {
        IdlePolicy {
            spin: Duration::from_micros(spin_us),
            yield_after: yield_after_us.map(Duration::from_micros),
            ..IdlePolicy::default()
        }
    }
}

/// What a loop does after a round.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Idle {
    /// Run the next round at once (there was work, or the loop is spinning).
    Continue,
    /// Yield the core, then run the next round.
    Yield,
    /// Wait up to this long for a descriptor to become readable, then run a round.
    Sleep(Duration),
}

/// Counters of a poll loop.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize))]
pub struct PollStats {
    /// Rounds decided on.
    pub rounds: u64,
    /// Rounds that did some work.
    pub worked: u64,
    /// Empty rounds after which the loop yielded.
    pub yields: u64,
    /// Empty rounds after which the loop slept.
    pub sleeps: u64,
}

/// One loop's idle decisions: pure, the clock is the caller's.
#[derive(Clone, Copy, Debug)]
pub struct Poller {
    policy: IdlePolicy,
    /// When the last round with work ran (`None` until the first round: a new loop
    /// spins first, as after work).
    last_work: Option<Instant>,
    stats: PollStats,
}

impl Poller {
    pub fn new(policy: IdlePolicy) -> Poller {
        Poller {
            policy,
            last_work: None,
            stats: PollStats::default(),
        }
    }

    pub fn policy(&self) -> IdlePolicy {
        self.policy
    }

    /// Changes the policy; the time since the last work carries over.
    pub fn set_policy(&mut self, policy: IdlePolicy) {
        self.policy = policy;
    }

    pub fn stats(&self) -> PollStats {
        self.stats
    }

    /// Whether a round at `now` that did no work would be followed by a sleep (rather
    /// than a spin or a yield): only then does the loop need to collect what could
    /// wake it ([`Pollable::wake`]), which costs clock reads and timer scans a
    /// spinning loop does not need. Answers for the same `now` as [`Poller::decide`].
    pub fn would_sleep(&self, now: Instant) -> bool {
        let last = self.last_work.unwrap_or(now);
        now.saturating_duration_since(last) >= self.policy.spin
    }

    /// What to do after a round that ran at `now` and did work (`worked`) or not.
    /// `until` is the earliest moment something needs the loop (a timer; see
    /// [`Waker::until`]): a sleep never goes past it, and once it has come the loop
    /// runs again at once.
    pub fn decide(&mut self, now: Instant, worked: bool, until: Option<Instant>) -> Idle {
        self.stats.rounds += 1;
        if worked {
            self.stats.worked += 1;
            self.last_work = Some(now);
            return Idle::Continue;
        }
        let last = *self.last_work.get_or_insert(now);
        let idle = now.saturating_duration_since(last);
        if idle < self.policy.spin {
            if self.policy.yield_after.is_some_and(|y| idle >= y) {
                self.stats.yields += 1;
                return Idle::Yield;
            }
            return Idle::Continue;
        }
        let mut sleep = self.policy.max_sleep;
        if let Some(t) = until {
            sleep = sleep.min(t.saturating_duration_since(now));
        }
        if sleep.is_zero() {
            return Idle::Continue;
        }
        self.stats.sleeps += 1;
        Idle::Sleep(sleep)
    }
}

/// Longest sleep while an input has no descriptor to wake the loop
/// ([`Waker::fdless`]): what arrives there waits at most about this long.
pub const FDLESS_SLEEP: Duration = Duration::from_micros(50);

/// Most descriptors one wait watches; past it the waker treats the rest as inputs
/// without a descriptor (short sleeps) and counts them.
pub const MAX_FDS: usize = 256;

/// What can wake a sleeping loop: descriptors, deadlines, inputs without a descriptor.
/// A loop's [`Pollable::wake`] fills it before each sleep.
#[derive(Debug, Default)]
pub struct Waker {
    fds: Vec<libc::pollfd>,
    deadline: Option<Instant>,
    fdless: bool,
    /// Descriptors not watched because [`MAX_FDS`] were already (each then counts as
    /// an input without one).
    pub fds_over: u64,
}

impl Waker {
    pub fn new() -> Waker {
        Waker::default()
    }

    /// Forgets what the last round collected (the counters stay).
    pub fn clear(&mut self) {
        self.fds.clear();
        self.deadline = None;
        self.fdless = false;
    }

    /// A descriptor whose becoming readable is new work.
    pub fn fd(&mut self, fd: RawFd) {
        if self.fds.len() >= MAX_FDS {
            self.fds_over += 1;
            self.fdless = true;
            return;
        }
        self.fds.push(libc::pollfd {
            fd,
            events: libc::POLLIN,
            revents: 0,
        });
    }

    /// A moment at which the loop must run (the earliest of those given counts).
    pub fn deadline(&mut self, at: Instant) {
        self.deadline = Some(self.deadline.map_or(at, |d| d.min(at)));
    }

    /// An input that nothing can wake the loop for (an in-memory port, a ring): a sleep
    /// lasts at most [`FDLESS_SLEEP`].
    pub fn fdless(&mut self) {
        self.fdless = true;
    }

    /// The descriptors collected.
    pub fn fds(&self) -> impl Iterator<Item = RawFd> + '_ {
        self.fds.iter().map(|p| p.fd)
    }

    /// Whether an input without a descriptor was collected.
    pub fn is_fdless(&self) -> bool {
        self.fdless
    }

    /// The earliest moment the loop must run again, for a sleep that starts at `now`:
    /// the earliest deadline, and `now` + [`FDLESS_SLEEP`] if an input has no
    /// descriptor.
    pub fn until(&self, now: Instant) -> Option<Instant> {
        let fdless = self.fdless.then(|| now.checked_add(FDLESS_SLEEP)).flatten();
        match (self.deadline, fdless) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    /// Waits up to `timeout` for one of the descriptors to become readable (ppoll(2):
    /// nanosecond timeouts; poll(2)'s milliseconds would turn every wait under 1 ms
    /// into a non-blocking check), or sleeps `timeout` when there are none. Returns
    /// whether a descriptor is ready. A signal ends the wait early (not an error); a
    /// descriptor that is not open is an error, as the loop would never sleep again.
    pub fn wait(&mut self, timeout: Duration) -> io::Result<bool> {
        if self.fds.is_empty() {
            std::thread::sleep(timeout);
            return Ok(false);
        }
        let ts = libc::timespec {
            tv_sec: timeout.as_secs().min(i32::MAX as u64) as libc::time_t,
            tv_nsec: timeout.subsec_nanos() as libc::c_long,
        };
        for p in &mut self.fds {
            p.revents = 0;
        }
        // SAFETY: `fds` is a live slice of initialised pollfd of the length passed; the
        // timespec is valid; no signal mask is changed.
        let ready = unsafe {
            libc::ppoll(
                self.fds.as_mut_ptr(),
                self.fds.len() as libc::nfds_t,
                &ts,
                std::ptr::null(),
            )
        };
        if ready < 0 {
            let e = io::Error::last_os_error();
            return match e.kind() {
                io::ErrorKind::Interrupted => Ok(false),
                _ => Err(e),
            };
        }
        if let Some(p) = self.fds.iter().find(|p| p.revents & libc::POLLNVAL != 0) {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("poll: descriptor {} is not open", p.fd),
            ));
        }
        Ok(ready > 0)
    }

    /// Carries out a decision: a spin hint, a yield, or a wait on what was collected.
    pub fn apply(&mut self, idle: Idle) -> io::Result<()> {
        match idle {
            Idle::Continue => std::hint::spin_loop(),
            Idle::Yield => std::thread::yield_now(),
            Idle::Sleep(d) => {
                self.wait(d)?;
            }
        }
        Ok(())
    }
}

/// A poll loop's body.
pub trait Pollable {
    /// One round of work at `now`; whether it did any (moved a frame, ran a timer,
    /// made an event). Only the code that did the work knows; nobody diffs counters.
    fn round(&mut self, now: Instant) -> io::Result<bool>;

    /// What can bring new work while the loop sleeps: called after a round without
    /// work, on a cleared waker.
    fn wake(&self, w: &mut Waker);
}

/// A [`Pollable`] from two closures (see [`from_fn`]).
pub struct FnPollable<R, W> {
    round: R,
    wake: W,
}

/// A [`Pollable`] whose round is `round` and whose wake is `wake`.
pub fn from_fn<R, W>(round: R, wake: W) -> FnPollable<R, W>
where
    R: FnMut(Instant) -> io::Result<bool>,
    W: Fn(&mut Waker),
{
    FnPollable { round, wake }
}

impl<R, W> Pollable for FnPollable<R, W>
where
    R: FnMut(Instant) -> io::Result<bool>,
    W: Fn(&mut Waker),
{
    fn round(&mut self, now: Instant) -> io::Result<bool> {
        (self.round)(now)
    }

    fn wake(&self, w: &mut Waker) {
        (self.wake)(w)
    }
}

/// A shared stop request.
#[derive(Clone, Debug, Default)]
pub struct Stop(Arc<AtomicBool>);

impl Stop {
    pub fn new() -> Stop {
        Stop::default()
    }

    pub fn request(&self) {
        self.0.store(true, Ordering::Release);
    }

    pub fn requested(&self) -> bool {
        self.0.load(Ordering::Acquire)
    }
}

/// Runs `p` until `stop` is requested: a round, then as `policy` decides, a spin, a
/// yield, or a sleep on what `p.wake` collected. A sleeping loop sees a stop request
/// within `max_sleep` (or sooner, when something wakes it). The first error of a
/// round or of a wait ends the loop.
pub fn run(p: &mut impl Pollable, policy: IdlePolicy, stop: &Stop) -> io::Result<PollStats> {
    let mut poller = Poller::new(policy);
    let mut waker = Waker::new();
    while !stop.requested() {
        let now = Instant::now();
        if p.round(now)? {
            // Straight on: no spin hint after work (a pause costs a busy loop ~20%).
            poller.decide(now, true, None);
            continue;
        }
        // What can wake the loop is collected only when it is going to sleep.
        waker.clear();
        let now = Instant::now();
        if poller.would_sleep(now) {
            p.wake(&mut waker);
        }
        let idle = poller.decide(now, false, waker.until(now));
        waker.apply(idle)?;
    }
    Ok(poller.stats())
}

impl From<PortError> for io::Error {
    /// A port's error as an I/O error (a round's), keeping the port error inside so
    /// that [`port_error`] gets it back.
    fn from(e: PortError) -> io::Error {
        let kind = match &e {
            PortError::Io { source, .. } => source.kind(),
            PortError::NoSuchInterface(_) => io::ErrorKind::NotFound,
            PortError::Setup(_) => io::ErrorKind::Other,
        };
        io::Error::new(kind, e)
    }
}

/// The port error inside an error of a loop over ports: the one a round returned, or
/// the poll loop's own (a failed wait) as [`PortError::Io`] on `port`.
pub fn port_error(e: io::Error, port: &str) -> PortError {
    let io = |source| PortError::Io {
        op: "poll",
        port: port.to_string(),
        source,
    };
    if !e.get_ref().is_some_and(|i| i.is::<PortError>()) {
        return io(e);
    }
    let kind = e.kind();
    match e.into_inner().map(|i| i.downcast::<PortError>()) {
        Some(Ok(p)) => *p,
        Some(Err(inner)) => io(io::Error::new(kind, inner)),
        None => io(io::Error::from(kind)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    fn us(n: u64) -> Duration {
        Duration::from_micros(n)
    }

    /// One row: the round's time (ms after t0), whether it worked, the deadline (ms
    /// after t0), and what the poller must say.
    type Row = (u64, bool, Option<u64>, Idle);

    fn check(policy: IdlePolicy, rows: &[Row]) {
        let t0 = Instant::now();
        let mut p = Poller::new(policy);
        for (i, &(at, worked, until, want)) in rows.iter().enumerate() {
            // A loop collects its wake sources only when `would_sleep` says so: it
            // must say so before every sleep, and never before a yield.
            if !worked {
                let would = p.would_sleep(t0 + ms(at));
                if matches!(want, Idle::Sleep(_)) {
                    assert!(would, "row {i}: a sleep without wake sources");
                }
                if want == Idle::Yield {
                    assert!(!would, "row {i}: wake sources collected for a yield");
                }
            }
            let got = p.decide(t0 + ms(at), worked, until.map(|u| t0 + ms(u)));
            assert_eq!(got, want, "row {i}: {:?}", rows[i]);
        }
    }

    #[test]
    fn spin_is_time_since_the_last_work_then_sleep_up_to_max_sleep() {
        let policy = IdlePolicy {
            spin: ms(2),
            yield_after: None,
            max_sleep: ms(10),
        };
        check(
            policy,
            &[
                // A new loop spins first, as after work.
                (0, false, None, Idle::Continue),
                (1, false, None, Idle::Continue),
                // 2 ms without work: sleep, as long as max_sleep.
                (2, false, None, Idle::Sleep(ms(10))),
                (30, false, None, Idle::Sleep(ms(10))),
                // Work resets the spin.
                (40, true, None, Idle::Continue),
                (41, false, None, Idle::Continue),
                (41, false, None, Idle::Continue),
                (42, false, None, Idle::Sleep(ms(10))),
            ],
        );
    }

    #[test]
    fn yield_after_yields_while_spinning_and_sleep_follows() {
        let policy = IdlePolicy {
            spin: ms(5),
            yield_after: Some(ms(2)),
            max_sleep: ms(10),
        };
        check(
            policy,
            &[
                (0, true, None, Idle::Continue),
                (1, false, None, Idle::Continue),
                (2, false, None, Idle::Yield),
                (4, false, None, Idle::Yield),
                (5, false, None, Idle::Sleep(ms(10))),
                (6, true, None, Idle::Continue),
                (7, false, None, Idle::Continue),
                (8, false, None, Idle::Yield),
            ],
        );
    }

    #[test]
    fn a_sleep_never_passes_the_deadline_nor_max_sleep() {
        let policy = IdlePolicy {
            spin: Duration::ZERO,
            yield_after: None,
            max_sleep: ms(10),
        };
        check(
            policy,
            &[
                (0, false, Some(3), Idle::Sleep(ms(3))),
                (0, false, Some(50), Idle::Sleep(ms(10))),
                (5, false, Some(12), Idle::Sleep(ms(7))),
                // Due or past: run at once.
                (12, false, Some(12), Idle::Continue),
                (20, false, Some(12), Idle::Continue),
                (20, false, None, Idle::Sleep(ms(10))),
                // Work still goes on at once.
                (21, true, Some(0), Idle::Continue),
            ],
        );
    }

    #[test]
    fn busy_never_sleeps_and_a_zero_max_sleep_spins() {
        check(
            IdlePolicy::BUSY,
            &[
                (0, false, None, Idle::Continue),
                (1_000_000, false, None, Idle::Continue),
                (2_000_000, false, Some(0), Idle::Continue),
            ],
        );
        let no_sleep = IdlePolicy {
            spin: Duration::ZERO,
            yield_after: None,
            max_sleep: Duration::ZERO,
        };
        check(no_sleep, &[(0, false, None, Idle::Continue)]);
    }

    #[test]
    fn the_counters_say_what_was_decided() {
        let mut p = Poller::new(IdlePolicy {
            spin: ms(1),
            yield_after: Some(Duration::ZERO),
            max_sleep: ms(1),
        });
        let t0 = Instant::now();
        p.decide(t0, true, None);
        p.decide(t0, false, None);
        p.decide(t0 + ms(1), false, None);
        p.decide(t0 + ms(2), false, None);
        assert_eq!(
            p.stats(),
            PollStats {
                rounds: 4,
                worked: 1,
                yields: 1,
                sleeps: 2
            }
        );
    }

    #[test]
    fn the_waker_takes_the_earliest_deadline_and_caps_fdless_sleeps() {
        let t0 = Instant::now();
        let mut w = Waker::new();
        assert_eq!(w.until(t0), None);
        w.deadline(t0 + ms(5));
        w.deadline(t0 + ms(3));
        w.deadline(t0 + ms(9));
        assert_eq!(w.until(t0), Some(t0 + ms(3)));
        w.fdless();
        assert_eq!(w.until(t0), Some(t0 + FDLESS_SLEEP));
        w.clear();
        assert!(!w.is_fdless());
        assert_eq!(w.until(t0), None);
        w.fdless();
        assert_eq!(w.until(t0), Some(t0 + us(50)));
        // An fdless loop sleeps at most FDLESS_SLEEP, whatever the policy says.
        let mut p = Poller::new(IdlePolicy {
            spin: Duration::ZERO,
            yield_after: None,
            max_sleep: ms(10),
        });
        assert_eq!(p.decide(t0, false, w.until(t0)), Idle::Sleep(FDLESS_SLEEP));
    }

    #[test]
    fn too_many_descriptors_turn_into_short_sleeps() {
        let mut w = Waker::new();
        for fd in 0..MAX_FDS as RawFd + 3 {
            w.fd(fd);
        }
        assert_eq!(w.fds().count(), MAX_FDS);
        assert_eq!(w.fds_over, 3);
        assert!(w.is_fdless());
    }

    #[test]
    fn the_settings_make_a_policy() {
        let p = IdlePolicy::from_settings(300, Some(100));
        assert_eq!(p.spin, us(300));
        assert_eq!(p.yield_after, Some(us(100)));
        assert_eq!(p.max_sleep, IdlePolicy::default().max_sleep);
        assert_eq!(IdlePolicy::from_settings(0, None).yield_after, None);
    }

    #[test]
    fn a_port_error_survives_the_poll_loop() {
        let e: io::Error = PortError::Setup("no ring".into()).into();
        assert!(matches!(port_error(e, "p0"), PortError::Setup(s) if s == "no ring"));
        let e = io::Error::from(io::ErrorKind::PermissionDenied);
        match port_error(e, "p0") {
            PortError::Io { op, port, source } => {
                assert_eq!((op, port.as_str()), ("poll", "p0"));
                assert_eq!(source.kind(), io::ErrorKind::PermissionDenied);
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn a_closed_descriptor_is_an_error_not_a_busy_loop() {
        // No process has this many descriptors open (closing one of ours instead
        // would race with the other tests, which may get its number).
        let mut waker = Waker::new();
        waker.fd(RawFd::MAX);
        let e = waker.wait(ms(100)).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::InvalidInput);
    }

    /// A loop whose only input is the read end of a pipe; it stops at the first byte
    /// and notes when it saw it.
    struct PipeReader {
        fd: RawFd,
        seen: Option<Instant>,
        stop: Stop,
    }

    impl Pollable for PipeReader {
        fn round(&mut self, now: Instant) -> io::Result<bool> {
            let mut b = [0u8; 16];
            // SAFETY: reads into a live buffer of the length given.
            let n = unsafe { libc::read(self.fd, b.as_mut_ptr().cast(), b.len()) };
            if n > 0 {
                self.seen = Some(now);
                self.stop.request();
                return Ok(true);
            }
            Ok(false)
        }

        fn wake(&self, w: &mut Waker) {
            w.fd(self.fd);
        }
    }

    fn sleepy() -> IdlePolicy {
        IdlePolicy {
            spin: Duration::ZERO,
            yield_after: None,
            max_sleep: Duration::from_secs(10),
        }
    }

    #[test]
    fn a_readable_descriptor_wakes_a_sleeping_loop() {
        let (r, w) = pipe();
        let stop = Stop::new();
        let mut p = PipeReader {
            fd: r,
            seen: None,
            stop: stop.clone(),
        };
        let writer = std::thread::spawn(move || {
            std::thread::sleep(ms(200));
            let sent = Instant::now();
            // SAFETY: writes one byte from a live buffer.
            assert_eq!(unsafe { libc::write(w, b"x".as_ptr().cast(), 1) }, 1);
            (sent, w)
        });
        let stats = run(&mut p, sleepy(), &stop).unwrap();
        let (sent, w) = writer.join().unwrap();
        let late = p.seen.expect("the byte was seen").duration_since(sent);
        // max_sleep is 10 s: only the descriptor can have ended the sleep this soon.
        assert!(
            late < Duration::from_secs(2),
            "woken {late:?} after the write"
        );
        assert!(stats.sleeps >= 1 && stats.sleeps < 50, "{stats:?}");
        assert_eq!(stats.worked, 1);
        close(r);
        close(w);
    }

    #[test]
    fn a_deadline_ends_a_sleep() {
        let stop = Stop::new();
        let due = Instant::now() + ms(200);
        let mut ran_at = None;
        let mut p = from_fn(
            |now| {
                if now >= due {
                    ran_at = Some(now);
                    stop.request();
                }
                Ok(now >= due)
            },
            |w| w.deadline(due),
        );
        let stats = run(&mut p, sleepy(), &stop).unwrap();
        let late = ran_at.expect("the deadline came").duration_since(due);
        assert!(
            late < Duration::from_secs(2),
            "ran {late:?} after the deadline"
        );
        // It slept until the deadline rather than spinning towards it.
        assert!(stats.sleeps >= 1 && stats.sleeps < 50, "{stats:?}");
    }

    /// CPU time of the calling thread.
    fn thread_cpu() -> Duration {
        // SAFETY: getrusage fills the struct for the calling thread.
        let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
        assert_eq!(unsafe { libc::getrusage(libc::RUSAGE_THREAD, &mut ru) }, 0);
        let tv = |t: libc::timeval| Duration::new(t.tv_sec as u64, t.tv_usec as u32 * 1000);
        tv(ru.ru_utime) + tv(ru.ru_stime)
    }

    /// The share of a core `run` uses over ~0.5 s with nothing to do, under `policy`.
    fn idle_share(fdless: bool, policy: IdlePolicy) -> (f64, PollStats) {
        let (r, w) = pipe();
        let stop = Stop::new();
        let s = stop.clone();
        let timer = std::thread::spawn(move || {
            std::thread::sleep(ms(500));
            s.request();
        });
        let mut p = from_fn(
            |_| Ok(false),
            |waker| {
                waker.fd(r);
                if fdless {
                    waker.fdless();
                }
            },
        );
        let (cpu0, t0) = (thread_cpu(), Instant::now());
        let stats = run(&mut p, policy, &stop).unwrap();
        let share = (thread_cpu() - cpu0).as_secs_f64() / t0.elapsed().as_secs_f64();
        timer.join().unwrap();
        close(r);
        close(w);
        (share, stats)
    }

    /// An idle loop sleeps once its spin is over: with no spin, every round with
    /// nothing to do ends in a sleep (at most the last, cut by the stop, does not),
    /// with a descriptor to wake it or with none (short sleeps). Counted, not timed:
    /// the CPU share is printed for the reader, as it depends on the machine's load.
    #[test]
    fn an_idle_loop_does_not_burn_a_core() {
        for fdless in [false, true] {
            for (spin_us, what) in [(0, "no spin"), (2000, "the default spin")] {
                let policy = IdlePolicy::from_settings(spin_us, None);
                let (share, stats) = idle_share(fdless, policy);
                eprintln!(
                    "idle run (fdless {fdless}, {what}): {:.1}% of a core, {stats:?}",
                    share * 100.0
                );
                assert!(stats.sleeps >= 1, "{stats:?}");
                if spin_us == 0 {
                    assert!(
                        stats.rounds <= stats.sleeps + 1,
                        "an idle round did not sleep (fdless {fdless}): {stats:?}"
                    );
                }
            }
        }
    }

    /// A non-blocking pipe: (read end, write end).
    fn pipe() -> (RawFd, RawFd) {
        let mut fds = [0; 2];
        // SAFETY: pipe2 writes two descriptors into the array.
        let r = unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_NONBLOCK | libc::O_CLOEXEC) };
        assert_eq!(r, 0, "pipe2: {}", io::Error::last_os_error());
        (fds[0], fds[1])
    }

    fn close(fd: RawFd) {
        // SAFETY: the test owns the descriptor and closes it once.
        unsafe { libc::close(fd) };
    }
}
