//! One announced address as a state machine: pure, with time passed in
//! and the side effects handed back as [`Action`]s, so every rule
//! (probing, the claim burst, tie-breaks, standby takeover, zombies) is
//! unit-tested without a network.

use super::frames::{Heard, Kind};
use crate::config::Watch;
use std::net::IpAddr;
use std::time::{Duration, Instant};

/// How long a probe's answers are collected before claiming.
pub const PROBE_WAIT: Duration = Duration::from_millis(200);
/// RFC 5227 ANNOUNCE_NUM: announcements in the burst that opens a claim.
pub const ANNOUNCE_NUM: u32 = 2;
/// RFC 5227 ANNOUNCE_INTERVAL, the most the burst's gap can be.
pub const ANNOUNCE_INTERVAL: Duration = Duration::from_secs(2);
/// Intervals of silence after which a standby takes over.
pub const SILENT_INTERVALS: u32 = 3;
/// The least time between two announcements made to win conflicts, so a
/// flood of forged claims cannot make us flood the LAN.
pub const DEFEND_GAP: Duration = Duration::from_millis(100);
/// Foreign MACs remembered (probe answerers, conflicts logged).
pub const MAX_REMEMBERED: usize = 64;

/// How announcing is timed and what a conflict makes us do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Timing {
    pub interval: Duration,
    pub jitter: Duration,
    pub delay: Duration,
    pub count: Option<u32>,
    pub watch: Watch,
    pub watch_delay: Duration,
}

impl Timing {
    /// The gap within the claim burst.
    pub fn burst_gap(&self) -> Duration {
        ANNOUNCE_INTERVAL.min(self.interval / 2)
    }

    /// How long a standby waits without hearing the holder: 3 intervals,
    /// or a live holder's longest gap (an interval plus the jitter) when
    /// the jitter is 2 intervals or more.
    pub fn silence(&self) -> Duration {
        (self.interval * SILENT_INTERVALS).max(self.interval + self.jitter)
    }
}

/// A side effect for the caller to carry out, in order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// Send one probe (ARP with sender 0.0.0.0, or a DAD-style NS).
    Probe,
    /// Add the address to the device (when managed) and steer its traffic.
    Add,
    /// Stop steering its traffic and remove it from the device (when managed).
    Remove,
    /// Send one announcement.
    Announce,
    /// Stop the process with this exit status (after removing everything).
    Exit(u8),
    /// Log a line at this level.
    Log(log::Level, String),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    /// Not started.
    Idle,
    /// RR_ANNOUNCE_DELAY at start: nothing sent, nothing added yet.
    Waiting { until: Instant },
    /// A probe is out; answers are collected until then.
    Probing { until: Instant },
    /// Ours: added, steered and announced.
    Holding,
    /// Lost it: silent, listening for the holder.
    Standby { heard: Instant },
    /// Lost it for good (fail, quit); nothing more happens.
    Done,
}

/// One address's claim.
#[derive(Debug)]
pub struct Claim {
    addr: IpAddr,
    mac: [u8; 6],
    timing: Timing,
    phase: Phase,
    /// When the next announcement is due, while holding.
    next: Option<Instant>,
    /// Announcements sent since the claim began; the burst is the first
    /// `ANNOUNCE_NUM`.
    burst_sent: u32,
    /// Periodic announcements sent in all (for RR_ANNOUNCE_COUNT).
    sent: u32,
    /// When we last announced, for `DEFEND_GAP`.
    last_sent: Option<Instant>,
    /// A defending announcement held back by `DEFEND_GAP`, due then.
    defend_at: Option<Instant>,
    /// When the current claim began (its probe window just closed).
    claimed: Option<Instant>,
    /// When conflicts start to count: RR_WATCH_DELAY after the first announcement.
    watch_from: Option<Instant>,
    /// MACs that answered a probe, each logged once. One that answers
    /// but never announces is a zombie: its replies are no conflict.
    answered: Vec<[u8; 6]>,
    /// Foreign MACs whose conflict was logged, so a loser announcing every
    /// interval (RR_WATCH=log) is not logged every interval.
    logged: Vec<[u8; 6]>,
}

impl Claim {
    pub fn new(addr: IpAddr, mac: [u8; 6], timing: Timing) -> Claim {
        Claim {
            addr,
            mac,
            timing,
            phase: Phase::Idle,
            next: None,
            burst_sent: 0,
            sent: 0,
            last_sent: None,
            defend_at: None,
            claimed: None,
            watch_from: None,
            answered: Vec::new(),
            logged: Vec::new(),
        }
    }

    pub fn addr(&self) -> IpAddr {
        self.addr
    }

    /// True while the address is ours (added and steered).
    pub fn holds(&self) -> bool {
        self.phase == Phase::Holding
    }

    /// True while silently waiting to take over.
    pub fn standby(&self) -> bool {
        matches!(self.phase, Phase::Standby { .. })
    }

    /// Announcements sent so far.
    pub fn sent(&self) -> u32 {
        self.sent
    }

    /// Starts with a probe, in every mode, after RR_ANNOUNCE_DELAY.
    pub fn start(&mut self, now: Instant) -> Vec<Action> {
        if self.timing.delay.is_zero() {
            return self.probe(now);
        }
        self.phase = Phase::Waiting {
            until: now + self.timing.delay,
        };
        Vec::new()
    }

    fn probe(&mut self, now: Instant) -> Vec<Action> {
        self.phase = Phase::Probing {
            until: now + PROBE_WAIT,
        };
        vec![Action::Probe]
    }

    /// The earliest time `tick` has something to do.
    pub fn deadline(&self) -> Option<Instant> {
        match self.phase {
            Phase::Probing { until } | Phase::Waiting { until } => Some(until),
            Phase::Holding => match (self.next, self.defend_at) {
                (Some(a), Some(b)) => Some(a.min(b)),
                (a, b) => a.or(b),
            },
            Phase::Standby { heard } => Some(heard + self.timing.silence()),
            Phase::Idle | Phase::Done => None,
        }
    }

    /// Advances time. `jitter` is this interval's random share of
    /// `RR_ANNOUNCE_JITTER` (0 to that), drawn by the caller.
    pub fn tick(&mut self, now: Instant, jitter: Duration) -> Vec<Action> {
        let mut actions = Vec::new();
        match self.phase {
            Phase::Waiting { until } if now >= until => actions.extend(self.probe(now)),
            Phase::Probing { until } if now >= until => {
                actions.push(Action::Add);
                // Every claim starts afresh: its own burst and count.
                self.burst_sent = 0;
                self.sent = 0;
                self.last_sent = None;
                self.defend_at = None;
                self.claimed = Some(now);
                self.phase = Phase::Holding;
                self.next = Some(now);
                actions.extend(self.announce(now, jitter));
            }
            Phase::Holding => {
                // One frame serves both when they fall due together.
                if self.next.is_some_and(|due| now >= due) {
                    actions.extend(self.announce(now, jitter));
                }
                if self.defend_at.is_some_and(|due| now >= due) {
                    actions.extend(self.defend(now));
                }
            }
            Phase::Standby { heard } if now >= heard + self.timing.silence() => {
                actions.push(Action::Log(
                    log::Level::Warn,
                    format!(
                        "{}: no announcement from the holder for {:.1} s; taking it over",
                        self.addr,
                        now.duration_since(heard).as_secs_f64()
                    ),
                ));
                actions.extend(self.probe(now));
            }
            _ => {}
        }
        actions
    }

    /// One announcement now, and when the next is due.
    fn announce(&mut self, now: Instant, jitter: Duration) -> Vec<Action> {
        if self.timing.count.is_some_and(|n| self.sent >= n) {
            self.next = None;
            return Vec::new();
        }
        self.sent += 1;
        self.burst_sent += 1;
        self.last_sent = Some(now);
        self.defend_at = None;
        if self.watch_from.is_none() {
            self.watch_from = Some(now + self.timing.watch_delay);
        }
        let gap = if self.burst_sent < ANNOUNCE_NUM {
            self.timing.burst_gap()
        } else {
            self.timing.interval + jitter
        };
        let more = self.timing.count.is_none_or(|n| self.sent < n);
        self.next = more.then_some(now + gap);
        let mut actions = vec![Action::Announce];
        if !more {
            actions.push(Action::Log(
                log::Level::Info,
                format!(
                    "{}: sent RR_ANNOUNCE_COUNT={} announcements; keeping the address, silently",
                    self.addr, self.sent
                ),
            ));
        }
        actions
    }

    /// An announcement to win a conflict: now, or once `DEFEND_GAP` has
    /// passed since the last. Not limited by RR_ANNOUNCE_COUNT: it is what
    /// keeps two holders from standing.
    fn defend(&mut self, now: Instant) -> Vec<Action> {
        match self.last_sent {
            Some(t) if now.duration_since(t) < DEFEND_GAP => {
                self.defend_at = Some(t + DEFEND_GAP);
                Vec::new()
            }
            _ => {
                self.defend_at = None;
                self.last_sent = Some(now);
                vec![Action::Announce]
            }
        }
    }

    /// Something heard on the wire about some address.
    pub fn heard(&mut self, h: &Heard, now: Instant) -> Vec<Action> {
        if h.addr != self.addr || h.mac == self.mac {
            return Vec::new();
        }
        match self.phase {
            Phase::Probing { .. } => self.answer(h),
            // Only our probes draw these: never a claim of its own.
            Phase::Holding if h.kind == Kind::ProbeAnswer => self.answer(h),
            Phase::Holding if self.timing.watch != Watch::No => self.conflict(h, now),
            Phase::Standby { .. } if h.kind == Kind::Announcement => {
                self.phase = Phase::Standby { heard: now };
                Vec::new()
            }
            _ => Vec::new(),
        }
    }

    /// An answer to our probe: logged once per MAC, and never a reason
    /// not to claim (a zombie answers but no longer announces).
    fn answer(&mut self, h: &Heard) -> Vec<Action> {
        if h.kind == Kind::Probe || h.kind == Kind::Request || self.answered.contains(&h.mac) {
            return Vec::new();
        }
        remember(&mut self.answered, h.mac);
        vec![Action::Log(
            log::Level::Warn,
            format!(
                "{}: {} answered our probe; claiming anyway (a live holder is settled by the \
                 lower MAC, one that only answers is a zombie whose kernel still has the address)",
                self.addr,
                mac(h.mac)
            ),
        )]
    }

    fn conflict(&mut self, h: &Heard, now: Instant) -> Vec<Action> {
        // A zombie answers an IPv6 probe with an NA to all nodes, which reads
        // as an announcement: from one that answered, just after the probe
        // window, it is a late answer.
        let late_answer = self.addr.is_ipv6()
            && self.answered.contains(&h.mac)
            && self.claimed.is_some_and(|t| now < t + PROBE_WAIT);
        let counts = match h.kind {
            Kind::Probe | Kind::ProbeAnswer => false,
            Kind::Announcement => !late_answer,
            // A zombie's kernel answers our announcements; that is not a claim.
            Kind::Reply | Kind::Request => !self.answered.contains(&h.mac),
        };
        if !counts || self.watch_from.is_none_or(|from| now < from) {
            return Vec::new();
        }
        let theirs = mac(h.mac);
        if self.mac < h.mac {
            let mut actions = Vec::new();
            if !self.logged.contains(&h.mac) {
                remember(&mut self.logged, h.mac);
                actions.push(Action::Log(
                    log::Level::Warn,
                    format!(
                        "{}: conflict with {theirs}; ours ({}) is the lower MAC, so we keep it \
                         and re-announce",
                        self.addr,
                        mac(self.mac)
                    ),
                ));
            }
            actions.extend(self.defend(now));
            return actions;
        }
        let lost = format!(
            "{}: conflict with {theirs}, the lower MAC (ours is {})",
            self.addr,
            mac(self.mac)
        );
        match self.timing.watch {
            Watch::Fail => {
                self.phase = Phase::Done;
                vec![
                    Action::Log(
                        log::Level::Error,
                        format!("{lost}; RR_WATCH=fail: removing it and exiting 1"),
                    ),
                    Action::Remove,
                    Action::Exit(1),
                ]
            }
            Watch::Quit => {
                self.phase = Phase::Done;
                vec![
                    Action::Log(
                        log::Level::Warn,
                        format!("{lost}; RR_WATCH=quit: removing it and exiting 0"),
                    ),
                    Action::Remove,
                    Action::Exit(0),
                ]
            }
            Watch::Log => {
                if self.logged.contains(&h.mac) {
                    return Vec::new();
                }
                remember(&mut self.logged, h.mac);
                vec![Action::Log(
                    log::Level::Warn,
                    format!("{lost}; RR_WATCH=log: announcing it anyway"),
                )]
            }
            Watch::Standby => {
                self.phase = Phase::Standby { heard: now };
                self.next = None;
                self.answered.clear();
                self.logged.clear();
                vec![
                    Action::Log(
                        log::Level::Warn,
                        format!("{lost}; RR_WATCH=standby: removing it and standing by silently"),
                    ),
                    Action::Remove,
                ]
            }
            Watch::No => Vec::new(),
        }
    }
}

/// Adds `mac`, forgetting the oldest beyond `MAX_REMEMBERED`.
fn remember(list: &mut Vec<[u8; 6]>, mac: [u8; 6]) {
    if list.len() >= MAX_REMEMBERED {
        list.remove(0);
    }
    list.push(mac);
}

/// `02:00:00:00:00:01`.
pub fn mac(m: [u8; 6]) -> String {
    format!(
        "{:02x}:{:02x}:{:02x}:{:02x}:{:02x}:{:02x}",
        m[0], m[1], m[2], m[3], m[4], m[5]
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    const OURS: [u8; 6] = [2, 0, 0, 0, 0, 5];
    const LOWER: [u8; 6] = [2, 0, 0, 0, 0, 1];
    const HIGHER: [u8; 6] = [2, 0, 0, 0, 0, 9];

    fn addr() -> IpAddr {
        "192.168.77.100".parse().unwrap()
    }

    fn timing(watch: Watch) -> Timing {
        Timing {
            interval: Duration::from_secs(1),
            jitter: Duration::ZERO,
            delay: Duration::ZERO,
            count: None,
            watch,
            watch_delay: Duration::ZERO,
        }
    }

    fn heard(mac: [u8; 6], kind: Kind) -> Heard {
        Heard {
            addr: addr(),
            mac,
            kind,
        }
    }

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    /// Effects only, logs dropped.
    fn effects(actions: Vec<Action>) -> Vec<Action> {
        actions
            .into_iter()
            .filter(|a| !matches!(a, Action::Log(..)))
            .collect()
    }

    /// A claim that has probed, added the address and sent its first
    /// announcement at `t0 + PROBE_WAIT`.
    fn holding(watch: Watch) -> (Claim, Instant) {
        let t0 = Instant::now();
        let mut c = Claim::new(addr(), OURS, timing(watch));
        assert_eq!(c.start(t0), vec![Action::Probe]);
        assert_eq!(effects(c.tick(t0 + ms(199), Duration::ZERO)), vec![]);
        let t = t0 + PROBE_WAIT;
        assert_eq!(
            effects(c.tick(t, Duration::ZERO)),
            vec![Action::Add, Action::Announce]
        );
        assert!(c.holds());
        (c, t)
    }

    #[test]
    fn a_claim_probes_then_adds_and_announces_a_burst_then_one_per_interval() {
        let (mut c, t) = holding(Watch::Fail);
        // Burst: the second announcement half an interval later.
        assert_eq!(c.deadline(), Some(t + ms(500)));
        assert_eq!(effects(c.tick(t + ms(499), Duration::ZERO)), vec![]);
        assert_eq!(
            effects(c.tick(t + ms(500), Duration::ZERO)),
            vec![Action::Announce]
        );
        // Then one per interval, plus the jitter drawn for it.
        assert_eq!(c.deadline(), Some(t + ms(1500)));
        assert_eq!(
            effects(c.tick(t + ms(1500), ms(250))),
            vec![Action::Announce]
        );
        assert_eq!(c.deadline(), Some(t + ms(2750)));
        assert_eq!(c.sent(), 3);
    }

    #[test]
    fn the_burst_gap_is_rfc5227s_two_seconds_at_most() {
        let mut t = timing(Watch::Fail);
        t.interval = Duration::from_secs(10);
        assert_eq!(t.burst_gap(), Duration::from_secs(2));
        t.interval = ms(300);
        assert_eq!(t.burst_gap(), ms(150));
    }

    #[test]
    fn the_delay_holds_back_the_probe_and_the_address_at_start_but_not_at_a_takeover() {
        let t0 = Instant::now();
        let mut timing = timing(Watch::Standby);
        timing.delay = ms(700);
        let mut c = Claim::new(addr(), OURS, timing);
        assert_eq!(c.start(t0), vec![]);
        assert!(!c.holds());
        // Nothing heard while waiting matters.
        assert!(
            c.heard(&heard(LOWER, Kind::Announcement), t0 + ms(10))
                .is_empty()
        );
        assert_eq!(effects(c.tick(t0 + ms(699), Duration::ZERO)), vec![]);
        assert_eq!(
            effects(c.tick(t0 + ms(700), Duration::ZERO)),
            vec![Action::Probe]
        );
        let t = t0 + ms(700) + PROBE_WAIT;
        assert_eq!(
            effects(c.tick(t, Duration::ZERO)),
            vec![Action::Add, Action::Announce]
        );
        // Lose, then take over: no delay this time.
        c.heard(&heard(LOWER, Kind::Announcement), t + ms(1));
        assert!(c.standby());
        let silent = t + ms(1) + c.timing.silence();
        assert_eq!(effects(c.tick(silent, Duration::ZERO)), vec![Action::Probe]);
        assert_eq!(
            effects(c.tick(silent + PROBE_WAIT, Duration::ZERO)),
            vec![Action::Add, Action::Announce]
        );
    }

    #[test]
    fn count_stops_announcing_but_keeps_the_address() {
        let t0 = Instant::now();
        let mut timing = timing(Watch::Fail);
        timing.count = Some(3);
        let mut c = Claim::new(addr(), OURS, timing);
        c.start(t0);
        let mut sent = 0;
        let mut t = t0;
        for _ in 0..100 {
            t += ms(100);
            sent += effects(c.tick(t, Duration::ZERO))
                .iter()
                .filter(|a| **a == Action::Announce)
                .count();
        }
        assert_eq!(sent, 3);
        assert_eq!(c.deadline(), None);
        assert!(c.holds());
        // Nothing in the count's aftermath removes it.
        assert!(!effects(c.tick(t + ms(60_000), Duration::ZERO)).contains(&Action::Remove));
        // Defending it is not limited by the count.
        assert_eq!(
            effects(c.heard(&heard(HIGHER, Kind::Announcement), t + ms(60_001))),
            vec![Action::Announce]
        );
    }

    #[test]
    fn a_conflict_with_a_higher_mac_is_won_with_an_announcement_at_once() {
        let (mut c, t) = holding(Watch::Fail);
        for (i, kind) in [Kind::Announcement, Kind::Reply, Kind::Request]
            .into_iter()
            .enumerate()
        {
            let at = t + DEFEND_GAP * (i as u32 + 1);
            assert_eq!(
                effects(c.heard(&heard(HIGHER, kind), at)),
                vec![Action::Announce],
                "{kind:?}"
            );
        }
        assert!(c.holds());
    }

    #[test]
    fn defending_announcements_are_at_least_defend_gap_apart_and_none_is_lost() {
        let (mut c, t) = holding(Watch::Fail);
        // The burst's second announcement is due at t + 500 ms; forged
        // claims every 2 ms from t + 1 ms to t + 201 ms.
        let mut sent = Vec::new();
        for i in 0..=100u64 {
            let now = t + ms(1 + 2 * i);
            let mut actions = c.heard(&heard(HIGHER, Kind::Announcement), now);
            actions.extend(c.tick(now, Duration::ZERO));
            if effects(actions).contains(&Action::Announce) {
                sent.push(now - t);
            }
        }
        // One a gap after our last (the claim at t), then one a gap later.
        assert_eq!(sent, vec![ms(101), ms(201)]);
        // A claim right after still gets its answer, a gap later.
        assert!(effects(c.heard(&heard(HIGHER, Kind::Announcement), t + ms(250))).is_empty());
        assert_eq!(c.deadline(), Some(t + ms(301)));
        assert_eq!(
            effects(c.tick(t + ms(301), Duration::ZERO)),
            vec![Action::Announce]
        );
    }

    #[test]
    fn an_answer_to_our_probe_while_holding_is_a_zombie_not_a_conflict() {
        let (mut c, t) = holding(Watch::Fail);
        // A late answer from a lower MAC: logged once, never a loss.
        let first = c.heard(&heard(LOWER, Kind::ProbeAnswer), t + ms(300));
        assert!(matches!(&first[..], [Action::Log(..)]), "{first:?}");
        assert!(
            c.heard(&heard(LOWER, Kind::ProbeAnswer), t + ms(301))
                .is_empty()
        );
        assert!(c.heard(&heard(LOWER, Kind::Reply), t + ms(302)).is_empty());
        assert!(c.holds());
    }

    #[test]
    fn remembered_macs_are_capped() {
        let (mut c, t) = holding(Watch::Log);
        for i in 0..200u8 {
            c.heard(
                &heard([2, 0, 0, 0, 0, 0].map(|b| b ^ i), Kind::Announcement),
                t,
            );
        }
        assert!(c.logged.len() <= MAX_REMEMBERED);
    }

    #[test]
    fn probes_and_other_addresses_and_our_own_mac_are_no_conflict() {
        let (mut c, t) = holding(Watch::Fail);
        assert!(c.heard(&heard(LOWER, Kind::Probe), t).is_empty());
        assert!(c.heard(&heard(OURS, Kind::Announcement), t).is_empty());
        let other = Heard {
            addr: "192.168.77.101".parse().unwrap(),
            mac: LOWER,
            kind: Kind::Announcement,
        };
        assert!(c.heard(&other, t).is_empty());
        assert!(c.holds());
    }

    #[test]
    fn each_watch_mode_acts_on_losing_to_a_lower_mac() {
        for (watch, expected) in [
            (Watch::Fail, vec![Action::Remove, Action::Exit(1)]),
            (Watch::Quit, vec![Action::Remove, Action::Exit(0)]),
            (Watch::Log, vec![]),
            (Watch::Standby, vec![Action::Remove]),
            (Watch::No, vec![]),
        ] {
            let (mut c, t) = holding(watch);
            let actions = c.heard(&heard(LOWER, Kind::Announcement), t + ms(10));
            let logged = actions.iter().any(|a| matches!(a, Action::Log(..)));
            assert_eq!(effects(actions), expected, "{watch:?}");
            // Every mode but `no` says what happened.
            assert_eq!(logged, watch != Watch::No, "{watch:?}");
            assert_eq!(
                c.holds(),
                matches!(watch, Watch::Log | Watch::No),
                "{watch:?}"
            );
            assert_eq!(c.standby(), watch == Watch::Standby, "{watch:?}");
        }
    }

    #[test]
    fn log_mode_keeps_announcing_and_logs_a_loser_once() {
        let (mut c, t) = holding(Watch::Log);
        assert!(!c.heard(&heard(LOWER, Kind::Announcement), t).is_empty());
        assert!(
            c.heard(&heard(LOWER, Kind::Announcement), t + ms(5))
                .is_empty()
        );
        assert_eq!(
            effects(c.tick(t + ms(500), Duration::ZERO)),
            vec![Action::Announce]
        );
    }

    #[test]
    fn watch_delay_ignores_conflicts_until_it_has_passed_since_the_first_announcement() {
        let t0 = Instant::now();
        let mut timing = timing(Watch::Fail);
        timing.watch_delay = Duration::from_secs(2);
        let mut c = Claim::new(addr(), OURS, timing);
        c.start(t0);
        let t = t0 + PROBE_WAIT;
        c.tick(t, Duration::ZERO);
        assert!(effects(c.heard(&heard(LOWER, Kind::Announcement), t + ms(1999))).is_empty());
        assert_eq!(
            effects(c.heard(&heard(LOWER, Kind::Announcement), t + ms(2000))),
            vec![Action::Remove, Action::Exit(1)]
        );
    }

    #[test]
    fn a_standby_stays_silent_while_the_holder_announces_and_takes_over_after_three_silent_intervals()
     {
        let (mut c, t) = holding(Watch::Standby);
        c.heard(&heard(LOWER, Kind::Announcement), t);
        assert!(c.standby());
        // The holder announces every interval: the standby sends nothing.
        let mut now = t;
        for _ in 0..10 {
            now += Duration::from_secs(1);
            assert!(c.heard(&heard(LOWER, Kind::Announcement), now).is_empty());
            assert!(effects(c.tick(now + ms(999), Duration::ZERO)).is_empty());
        }
        // Replies and requests are not the holder announcing.
        c.heard(&heard(LOWER, Kind::Reply), now + ms(2000));
        // The holder dies right after `now`: silent for 3 s, then a probe.
        assert!(effects(c.tick(now + ms(2999), Duration::ZERO)).is_empty());
        assert_eq!(c.deadline(), Some(now + ms(3000)));
        assert_eq!(
            effects(c.tick(now + ms(3000), Duration::ZERO)),
            vec![Action::Probe]
        );
        let claimed = now + ms(3000) + PROBE_WAIT;
        assert_eq!(
            effects(c.tick(claimed, Duration::ZERO)),
            vec![Action::Add, Action::Announce]
        );
        // Within 3 intervals + 1 s of the holder's last word.
        assert!(claimed - now <= Duration::from_secs(4));
    }

    #[test]
    fn the_silence_is_three_intervals_unless_the_jitter_could_make_a_live_gap_longer() {
        let mut t = timing(Watch::Standby);
        t.jitter = ms(400);
        assert_eq!(t.silence(), ms(3000));
        t.jitter = ms(2500);
        assert_eq!(t.silence(), ms(3500));
    }

    #[test]
    fn a_zombie_that_answers_the_probe_is_logged_once_and_does_not_stop_the_claim_or_win() {
        let t0 = Instant::now();
        let mut c = Claim::new(addr(), OURS, timing(Watch::Fail));
        c.start(t0);
        // LOWER is a zombie: its kernel answers, twice.
        let first = c.heard(&heard(LOWER, Kind::Reply), t0 + ms(1));
        assert!(
            matches!(&first[..], [Action::Log(log::Level::Warn, line)] if line.contains("02:00:00:00:00:01"))
        );
        assert!(c.heard(&heard(LOWER, Kind::Reply), t0 + ms(2)).is_empty());
        let t = t0 + PROBE_WAIT;
        assert_eq!(
            effects(c.tick(t, Duration::ZERO)),
            vec![Action::Add, Action::Announce]
        );
        // Its kernel answering our announcements is no conflict...
        assert!(c.heard(&heard(LOWER, Kind::Reply), t + ms(1)).is_empty());
        assert!(c.holds());
        // ...but announcing again makes it a live claimant, and it is lower.
        assert_eq!(
            effects(c.heard(&heard(LOWER, Kind::Announcement), t + ms(2))),
            vec![Action::Remove, Action::Exit(1)]
        );
    }

    #[test]
    fn with_watch_no_nothing_heard_matters_once_held() {
        let (mut c, t) = holding(Watch::No);
        for kind in [Kind::Announcement, Kind::Reply, Kind::Request, Kind::Probe] {
            assert!(c.heard(&heard(LOWER, kind), t).is_empty());
        }
        assert!(c.holds());
    }

    #[test]
    fn two_claimants_converge_on_the_lower_mac_within_one_interval() {
        let t0 = Instant::now();
        let mut low = Claim::new(addr(), LOWER, timing(Watch::Standby));
        let mut high = Claim::new(addr(), HIGHER, timing(Watch::Standby));
        low.start(t0);
        high.start(t0);
        let t = t0 + PROBE_WAIT;
        // Both claim at once and each hears the other's announcement.
        assert!(effects(low.tick(t, Duration::ZERO)).contains(&Action::Announce));
        assert!(effects(high.tick(t, Duration::ZERO)).contains(&Action::Announce));
        let from_high = high.heard(&heard(LOWER, Kind::Announcement), t + ms(1));
        let from_low = low.heard(&heard(HIGHER, Kind::Announcement), t + ms(1));
        assert_eq!(effects(from_high), vec![Action::Remove]);
        // The winner answers the loser's claim a defend gap after its own.
        assert!(effects(from_low).is_empty());
        assert_eq!(
            effects(low.tick(t + DEFEND_GAP, Duration::ZERO)),
            vec![Action::Announce]
        );
        assert!(low.holds() && high.standby());
    }
    #[test]
    fn a_takeover_announces_afresh_even_after_the_count_was_used_up() {
        let t0 = Instant::now();
        let mut timing = timing(Watch::Standby);
        timing.count = Some(2);
        let mut c = Claim::new(addr(), OURS, timing);
        c.start(t0);
        let t = t0 + PROBE_WAIT;
        c.tick(t, Duration::ZERO);
        c.tick(t + ms(500), Duration::ZERO);
        assert_eq!(c.sent(), 2);
        assert!(effects(c.tick(t + ms(1500), Duration::ZERO)).is_empty());
        c.heard(&heard(LOWER, Kind::Announcement), t + ms(1600));
        assert!(c.standby());
        let silent = t + ms(1600) + c.timing.silence();
        c.tick(silent, Duration::ZERO);
        assert_eq!(
            effects(c.tick(silent + PROBE_WAIT, Duration::ZERO)),
            vec![Action::Add, Action::Announce]
        );
        assert_eq!(
            effects(c.tick(silent + PROBE_WAIT + ms(500), Duration::ZERO)),
            vec![Action::Announce]
        );
    }

    #[test]
    fn a_defence_and_a_periodic_announcement_due_together_send_one_frame() {
        let (mut c, t) = holding(Watch::Fail);
        // A claim just after ours: its answer is held back to t + 100 ms.
        assert!(effects(c.heard(&heard(HIGHER, Kind::Announcement), t + ms(1))).is_empty());
        // Both come due by t + 500 ms (the burst's second).
        assert_eq!(
            effects(c.tick(t + ms(500), Duration::ZERO)),
            vec![Action::Announce]
        );
        assert_eq!(c.deadline(), Some(t + ms(1500)));
    }

    #[test]
    fn a_late_ipv6_probe_answer_from_a_zombie_is_no_conflict_but_a_later_announcement_is() {
        let v6: IpAddr = "fd00::100".parse().unwrap();
        let from = |kind| Heard {
            addr: v6,
            mac: LOWER,
            kind,
        };
        let t0 = Instant::now();
        let mut c = Claim::new(v6, OURS, timing(Watch::Fail));
        c.start(t0);
        // The zombie's NA to all nodes, in the probe window.
        c.heard(&from(Kind::Announcement), t0 + ms(5));
        let t = t0 + PROBE_WAIT;
        c.tick(t, Duration::ZERO);
        // Another, just after the window closed: still its late answer.
        assert!(effects(c.heard(&from(Kind::Announcement), t + ms(50))).is_empty());
        assert!(c.holds());
        // Once the window is over it is a live claimant, and lower.
        assert_eq!(
            effects(c.heard(&from(Kind::Announcement), t + PROBE_WAIT)),
            vec![Action::Remove, Action::Exit(1)]
        );
    }
}
