//! The fleet's poll alarms: one task wakes each tenant when its next poll is due.
//!
//! A timer of its own per tenant (a spawned task sleeping until the poll) costs about 400 bytes
//! for every idle tenant, most of a fleet; here an armed alarm is one entry of an ordered map,
//! about 50 bytes, and a million armed tenants are one task's work. An alarm fires once: the
//! tenant arms the next one when its poll ends ([`super::schedule`]).

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use ractor::ActorRef;
use tokio::sync::mpsc;
use tokio::time::Instant;

use super::TenantMsg;

/// An armed alarm, to cancel it with: when it is due, and which of the alarms due then.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct AlarmKey {
    at: Instant,
    seq: u64,
}

enum Command {
    Set(AlarmKey, ActorRef<TenantMsg>),
    Cancel(AlarmKey),
}

/// The handle tenants arm and cancel alarms through; cheap to clone. The task behind it ends
/// when the last handle is dropped.
#[derive(Clone)]
pub struct Alarms {
    tx: mpsc::UnboundedSender<Command>,
    seq: Arc<AtomicU64>,
}

impl Alarms {
    /// Starts the alarms' task on the current runtime.
    pub fn spawn() -> Alarms {
        let (tx, rx) = mpsc::unbounded_channel();
        tokio::spawn(run(rx));
        Alarms {
            tx,
            seq: Arc::new(AtomicU64::new(0)),
        }
    }

    /// Sends `target` a [`TenantMsg::Poll`] after `after`, unless cancelled first.
    pub fn set(&self, after: Duration, target: &ActorRef<TenantMsg>) -> AlarmKey {
        let key = AlarmKey {
            at: Instant::now() + after,
            seq: self.seq.fetch_add(1, Ordering::Relaxed),
        };
        // The task ends only when every handle is gone, so a send cannot fail while `self` lives.
        let _ = self.tx.send(Command::Set(key, target.clone()));
        key
    }

    /// Cancels an alarm; one that already fired is not affected.
    pub fn cancel(&self, key: AlarmKey) {
        let _ = self.tx.send(Command::Cancel(key));
    }
}

async fn run(mut rx: mpsc::UnboundedReceiver<Command>) {
    let mut armed: BTreeMap<AlarmKey, ActorRef<TenantMsg>> = BTreeMap::new();
    loop {
        let next = armed.first_key_value().map(|(k, _)| k.at);
        tokio::select! {
            biased;
            command = rx.recv() => {
                let Some(command) = command else { return };
                // Take every command waiting (a placement arms thousands at once) before the
                // next look at the earliest alarm.
                apply(&mut armed, command);
                while let Ok(command) = rx.try_recv() {
                    apply(&mut armed, command);
                }
            }
            _ = sleep_until(next) => {
                let now = Instant::now();
                while let Some(entry) = armed.first_entry() {
                    if entry.key().at > now {
                        break;
                    }
                    // A tenant stopped since it armed the alarm: nothing to wake.
                    let _ = entry.remove().send_message(TenantMsg::Poll);
                }
            }
        }
    }
}

fn apply(armed: &mut BTreeMap<AlarmKey, ActorRef<TenantMsg>>, command: Command) {
    match command {
        Command::Set(key, target) => {
            armed.insert(key, target);
        }
        Command::Cancel(key) => {
            armed.remove(&key);
        }
    }
}

/// Waits until `at`, or forever without one.
async fn sleep_until(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

#[cfg(test)]
mod tests {
    use ractor::{Actor, ActorProcessingErr, ActorRef};
    use tokio::sync::mpsc::UnboundedSender;

    use super::*;

    /// Stands in for a tenant: reports each poll it is sent, by name.
    struct Probe;

    impl Actor for Probe {
        type Msg = TenantMsg;
        type State = (&'static str, UnboundedSender<&'static str>);
        type Arguments = (&'static str, UnboundedSender<&'static str>);

        async fn pre_start(
            &self,
            _: ActorRef<TenantMsg>,
            args: Self::Arguments,
        ) -> Result<Self::State, ActorProcessingErr> {
            Ok(args)
        }

        async fn handle(
            &self,
            _: ActorRef<TenantMsg>,
            msg: TenantMsg,
            (name, tx): &mut Self::State,
        ) -> Result<(), ActorProcessingErr> {
            if matches!(msg, TenantMsg::Poll) {
                let _ = tx.send(*name);
            }
            Ok(())
        }
    }

    async fn probe(name: &'static str, tx: &UnboundedSender<&'static str>) -> ActorRef<TenantMsg> {
        Actor::spawn(None, Probe, (name, tx.clone()))
            .await
            .expect("probe starts")
            .0
    }

    #[tokio::test(start_paused = true)]
    async fn alarms_fire_once_each_in_the_order_they_are_due() {
        let (tx, mut rx) = mpsc::unbounded_channel();
        let alarms = Alarms::spawn();
        let (a, b, c) = (
            probe("a", &tx).await,
            probe("b", &tx).await,
            probe("c", &tx).await,
        );
        let start = Instant::now();
        alarms.set(Duration::from_secs(30), &a);
        alarms.set(Duration::from_secs(10), &b);
        alarms.set(Duration::from_secs(20), &c);
        let mut fired = Vec::new();
        for _ in 0..3 {
            fired.push((rx.recv().await.expect("a poll"), start.elapsed().as_secs()));
        }
        assert_eq!(fired, [("b", 10), ("c", 20), ("a", 30)]);
        // Each fired once: an hour later nothing more came.
        tokio::time::sleep(Duration::from_secs(3600)).await;
        assert!(rx.try_recv().is_err(), "an alarm fired twice");
    }

    #[tokio::test(start_paused = true)]
    async fn a_cancelled_alarm_does_not_fire_and_a_rearmed_one_does() {
        let (tx, mut rx) = mpsc::unbounded_channel();
        let alarms = Alarms::spawn();
        let a = probe("a", &tx).await;
        let start = Instant::now();
        let first = alarms.set(Duration::from_secs(10), &a);
        alarms.cancel(first);
        alarms.set(Duration::from_secs(25), &a);
        assert_eq!(rx.recv().await, Some("a"));
        assert_eq!(
            start.elapsed().as_secs(),
            25,
            "the cancelled 10 s alarm fired"
        );
        tokio::time::sleep(Duration::from_secs(3600)).await;
        assert!(rx.try_recv().is_err());
    }

    #[tokio::test(start_paused = true)]
    async fn a_stopped_tenants_alarm_is_dropped_and_the_others_still_fire() {
        let (tx, mut rx) = mpsc::unbounded_channel();
        let alarms = Alarms::spawn();
        let (a, b) = (probe("a", &tx).await, probe("b", &tx).await);
        alarms.set(Duration::from_secs(5), &a);
        alarms.set(Duration::from_secs(6), &b);
        a.stop_and_wait(None, None).await.expect("a stops");
        assert_eq!(rx.recv().await, Some("b"));
        assert!(rx.try_recv().is_err());
    }
}
