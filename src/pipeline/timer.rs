//! One timer for every scraper of the node. A scraper arms it with the
//! instant its next run is due and cancels it when it starts a run or
//! stops; a single task keeps the deadlines in order and sends the due
//! scraper its `Tick`. An idle source costs an entry in two maps here
//! instead of a task and its sleep of its own.
//!
//! Arming again replaces the scraper's deadline; a deadline already past
//! fires at once. The task ends when the last handle is dropped.

use std::collections::{BTreeMap, HashMap};

use ractor::{ActorId, ActorRef, Message};
use tokio::sync::mpsc;
use tokio::time::Instant;

enum Command<M: Message> {
    Arm { at: Instant, to: ActorRef<M> },
    Cancel(ActorId),
}

/// A handle on the node's timer (cheap to clone). Every deadline sends the
/// message `make` builds to the actor it was armed for.
pub struct Timer<M: Message> {
    commands: mpsc::UnboundedSender<Command<M>>,
}

impl<M: Message> Clone for Timer<M> {
    fn clone(&self) -> Self {
        Timer {
            commands: self.commands.clone(),
        }
    }
}

impl<M: Message> Timer<M> {
    /// Starts the timer's task on the current runtime.
    pub fn spawn(make: fn() -> M) -> Timer<M> {
        let (commands, rx) = mpsc::unbounded_channel();
        tokio::spawn(run(rx, make));
        Timer { commands }
    }

    /// Sends `to` its message at `at` (at once if `at` has passed), in
    /// place of any deadline armed for it before.
    pub fn arm(&self, to: &ActorRef<M>, at: Instant) {
        let _ = self.commands.send(Command::Arm { at, to: to.clone() });
    }

    /// Forgets the deadline armed for `actor`, if any.
    pub fn cancel(&self, actor: ActorId) {
        let _ = self.commands.send(Command::Cancel(actor));
    }
}

/// The deadlines, in order, and each actor's current one.
struct Deadlines<M: Message> {
    due: BTreeMap<(Instant, ActorId), ActorRef<M>>,
    of: HashMap<ActorId, Instant>,
}

impl<M: Message> Deadlines<M> {
    fn apply(&mut self, command: Command<M>) {
        match command {
            Command::Arm { at, to } => {
                let id = to.get_id();
                if let Some(old) = self.of.insert(id, at) {
                    self.due.remove(&(old, id));
                }
                self.due.insert((at, id), to);
            }
            Command::Cancel(id) => {
                if let Some(old) = self.of.remove(&id) {
                    self.due.remove(&(old, id));
                }
            }
        }
    }

    /// Removes and returns the actors whose deadline is at or before `now`.
    fn take_due(&mut self, now: Instant) -> Vec<ActorRef<M>> {
        let mut fired = Vec::new();
        while let Some(entry) = self.due.first_entry() {
            if entry.key().0 > now {
                break;
            }
            let ((_, id), to) = entry.remove_entry();
            self.of.remove(&id);
            fired.push(to);
        }
        if self.of.capacity() > 64 && self.of.len() < self.of.capacity() / 4 {
            self.of.shrink_to_fit();
        }
        fired
    }
}

async fn run<M: Message>(mut rx: mpsc::UnboundedReceiver<Command<M>>, make: fn() -> M) {
    let mut deadlines = Deadlines {
        due: BTreeMap::new(),
        of: HashMap::new(),
    };
    loop {
        let next = deadlines.due.first_key_value().map(|((at, _), _)| *at);
        tokio::select! {
            command = rx.recv() => match command {
                Some(command) => deadlines.apply(command),
                None => break,
            },
            () = sleep_until(next) => {
                for to in deadlines.take_due(Instant::now()) {
                    // A scraper that stopped without cancelling is gone:
                    // nothing to tell.
                    let _ = to.cast(make());
                }
            }
        }
    }
}

/// Sleeps until `at`, or forever when there is no deadline.
async fn sleep_until(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use ractor::{Actor, ActorProcessingErr, ActorRef};
    use tokio::sync::mpsc;

    use super::*;

    struct Probe;

    /// Forwards each tick, with the probe's name, to the test.
    impl Actor for Probe {
        type Msg = ();
        type State = (u32, mpsc::UnboundedSender<u32>);
        type Arguments = (u32, mpsc::UnboundedSender<u32>);

        async fn pre_start(
            &self,
            _myself: ActorRef<()>,
            args: Self::Arguments,
        ) -> Result<Self::State, ActorProcessingErr> {
            Ok(args)
        }

        async fn handle(
            &self,
            _myself: ActorRef<()>,
            _msg: (),
            state: &mut Self::State,
        ) -> Result<(), ActorProcessingErr> {
            let _ = state.1.send(state.0);
            Ok(())
        }
    }

    async fn probes(n: u32) -> (Vec<ActorRef<()>>, mpsc::UnboundedReceiver<u32>) {
        let (tx, rx) = mpsc::unbounded_channel();
        let mut refs = Vec::new();
        for i in 0..n {
            let (r, _) = Actor::spawn(None, Probe, (i, tx.clone())).await.unwrap();
            refs.push(r);
        }
        (refs, rx)
    }

    async fn next(rx: &mut mpsc::UnboundedReceiver<u32>) -> Option<u32> {
        tokio::time::timeout(Duration::from_secs(5), rx.recv())
            .await
            .ok()
            .flatten()
    }

    #[tokio::test]
    async fn fires_in_deadline_order_and_at_once_when_past() {
        let (refs, mut rx) = probes(3).await;
        let timer = Timer::spawn(|| ());
        let now = Instant::now();
        timer.arm(&refs[0], now + Duration::from_millis(300));
        timer.arm(&refs[1], now + Duration::from_millis(100));
        timer.arm(&refs[2], now - Duration::from_secs(1));
        assert_eq!(next(&mut rx).await, Some(2));
        assert_eq!(next(&mut rx).await, Some(1));
        assert_eq!(next(&mut rx).await, Some(0));
        assert!(Instant::now() >= now + Duration::from_millis(300));
    }

    #[tokio::test]
    async fn arming_again_replaces_and_cancel_forgets() {
        let (refs, mut rx) = probes(3).await;
        let timer = Timer::spawn(|| ());
        let now = Instant::now();
        // Re-armed later: fires once, at the second deadline.
        timer.arm(&refs[0], now + Duration::from_millis(50));
        timer.arm(&refs[0], now + Duration::from_millis(200));
        // Cancelled: never fires.
        timer.arm(&refs[1], now + Duration::from_millis(100));
        timer.cancel(refs[1].get_id());
        // Fires last, so every earlier tick has been seen by then.
        timer.arm(&refs[2], now + Duration::from_millis(400));
        assert_eq!(next(&mut rx).await, Some(0));
        assert!(Instant::now() >= now + Duration::from_millis(200));
        assert_eq!(next(&mut rx).await, Some(2));
        assert!(rx.try_recv().is_err());
    }
}
