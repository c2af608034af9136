//! Group commit: completions that arrive while a sync is running share the
//! next one, instead of each paying its own fsyncs.
//!
//! A completion writes its files without syncing them and queues a
//! [`Committer::commit`] request carrying its *step* (the renames that make
//! it visible). The committer's thread takes everything queued — whatever
//! arrived while the previous batch was syncing; there is no timer, so a lone
//! request is never delayed — and then:
//!
//! 1. syncs the file system (`syncfs` on the data root): every file the
//!    batch wrote is durable before any of them is made visible;
//! 2. runs each request's step, in arrival order;
//! 3. syncs again, making the steps' renames durable;
//! 4. answers every request.
//!
//! A failed sync fails every request of its batch: a request is answered
//! `Ok` only once its data and its renames are on disk. When the first sync
//! fails the steps are not run at all, so nothing becomes visible either.
//!
//! `syncfs` flushes the whole file system, not only this store's files: on
//! a file system shared with other writers (a build in `/tmp`, say) each
//! batch also waits for their dirty pages, so throughput measured there is
//! noisy and lower than on a file system of the store's own.

use std::io;
use std::sync::mpsc::{Receiver, SyncSender, sync_channel};
use std::thread::JoinHandle;

/// Requests that may wait for the committer; a completion beyond this waits
/// to queue, which bounds the memory queued requests hold.
const QUEUE: usize = 1024;

type Step<T> = Box<dyn FnOnce() -> T + Send>;

struct Request<T> {
    step: Step<T>,
    answer: SyncSender<io::Result<T>>,
}

/// A thread that batches requests around shared syncs. Owned by the store;
/// its thread ends when the committer is dropped.
pub struct Committer<T: Send + 'static> {
    queue: Option<SyncSender<Request<T>>>,
    thread: Option<JoinHandle<()>>,
    /// Requests handed to the queue so far: lets a test know they are all
    /// queued before it lets a batch's sync finish.
    #[cfg(test)]
    sent: std::sync::atomic::AtomicUsize,
}

impl<T: Send + 'static> std::fmt::Debug for Committer<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Committer").finish_non_exhaustive()
    }
}

impl<T: Send + 'static> Committer<T> {
    /// A committer making batches durable with `sync`.
    pub fn new(
        name: &str,
        sync: impl FnMut() -> io::Result<()> + Send + 'static,
    ) -> io::Result<Committer<T>> {
        let (queue, requests) = sync_channel(QUEUE);
        let thread = std::thread::Builder::new()
            .name(name.to_owned())
            .spawn(move || run(&requests, sync))?;
        Ok(Committer {
            queue: Some(queue),
            thread: Some(thread),
            #[cfg(test)]
            sent: std::sync::atomic::AtomicUsize::new(0),
        })
    }

    /// Queue `step` for the next batch and wait until the batch is durable:
    /// the step's own result, or the error of a sync of its batch (the step
    /// may then have run or not). Blocks the calling thread (the store calls
    /// it from its blocking tasks).
    pub fn commit(&self, step: impl FnOnce() -> T + Send + 'static) -> io::Result<T> {
        let (answer, answered) = sync_channel(1);
        let stopped = || io::Error::other("the store's committer has stopped");
        self.queue
            .as_ref()
            .ok_or_else(stopped)?
            .send(Request {
                step: Box::new(step),
                answer,
            })
            .map_err(|_| stopped())?;
        #[cfg(test)]
        self.sent.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        answered.recv().map_err(|_| stopped())?
    }
}

impl<T: Send + 'static> Drop for Committer<T> {
    fn drop(&mut self) {
        // Closing the queue ends the thread once it has answered what it has.
        drop(self.queue.take());
        if let Some(thread) = self.thread.take() {
            // A step may hold the last reference to the store, which is then
            // dropped on the committer's own thread: it cannot wait for itself.
            if thread.thread().id() != std::thread::current().id() {
                let _ = thread.join();
            }
        }
    }
}

fn run<T>(requests: &Receiver<Request<T>>, mut sync: impl FnMut() -> io::Result<()>) {
    while let Ok(first) = requests.recv() {
        let mut batch = vec![first];
        // Everything that queued while the previous batch synced; a closed
        // queue still yields what it holds.
        batch.extend(requests.try_iter());
        if let Err(e) = sync() {
            fail(batch, &e);
            continue;
        }
        // A step that panics fails its own request, not the committer (and
        // with it every later completion).
        let done: Vec<_> = batch
            .into_iter()
            .map(|r| {
                let step = r.step;
                let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(step))
                    .map_err(|_| io::Error::other("completing the file failed (a panic)"));
                (result, r.answer)
            })
            .collect();
        match sync() {
            Ok(()) => {
                for (result, answer) in done {
                    // The waiter may be gone (its task was cancelled).
                    let _ = answer.send(result);
                }
            }
            Err(e) => {
                for (_, answer) in done {
                    let _ = answer.send(Err(copy(&e)));
                }
            }
        }
    }
}

fn fail<T>(batch: Vec<Request<T>>, e: &io::Error) {
    for r in batch {
        let _ = r.answer.send(Err(copy(e)));
    }
}

/// io::Error is not Clone: the same kind and message for every waiter.
fn copy(e: &io::Error) -> io::Error {
    io::Error::new(e.kind(), format!("sync failed: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::{Arc, Mutex, mpsc};

    /// A sync whose first call waits for `release`, announcing itself on
    /// `entered`; every call is counted and may be made to fail.
    struct Gate {
        syncs: Arc<AtomicUsize>,
        entered: mpsc::Receiver<()>,
        release: mpsc::Sender<()>,
        fail_from: Arc<Mutex<Option<usize>>>,
    }

    fn gated() -> (Gate, impl FnMut() -> io::Result<()> + Send + 'static) {
        let syncs = Arc::new(AtomicUsize::new(0));
        let (entered_tx, entered) = mpsc::channel();
        let (release, release_rx) = mpsc::channel::<()>();
        let fail_from = Arc::new(Mutex::new(None));
        let (count, fails) = (Arc::clone(&syncs), Arc::clone(&fail_from));
        let sync = move || {
            let n = count.fetch_add(1, Ordering::SeqCst);
            if n == 0 {
                entered_tx.send(()).expect("announce");
                release_rx.recv().expect("released");
            }
            match *fails.lock().expect("lock") {
                Some(from) if n >= from => Err(io::Error::other("disk on fire")),
                _ => Ok(()),
            }
        };
        (
            Gate {
                syncs,
                entered,
                release,
                fail_from,
            },
            sync,
        )
    }

    /// Requests queued while a batch syncs make one batch: answered after
    /// two syncs in all, each with its own step's result, steps in order.
    #[test]
    fn waiters_queued_during_a_sync_share_the_next_one() {
        let (gate, sync) = gated();
        let committer = Arc::new(Committer::<usize>::new("test-commit", sync).expect("start"));
        let order = Arc::new(Mutex::new(Vec::new()));
        let first = {
            let (c, order) = (Arc::clone(&committer), Arc::clone(&order));
            std::thread::spawn(move || {
                c.commit(move || {
                    order.lock().expect("lock").push(0);
                    0
                })
            })
        };
        // The first batch (request 0 alone) is inside its first sync now.
        gate.entered.recv().expect("first sync started");
        // Queued one after the other (each waits for the previous one to be
        // in the queue), all before the first batch's sync returns.
        let answers: Vec<_> = (1..=5usize)
            .map(|i| {
                let (c, order) = (Arc::clone(&committer), Arc::clone(&order));
                let answer = std::thread::spawn(move || {
                    c.commit(move || {
                        order.lock().expect("lock").push(i);
                        i * 10
                    })
                });
                while sent(&committer) < i + 1 {
                    std::thread::yield_now();
                }
                answer
            })
            .collect();
        gate.release.send(()).expect("release");
        first.join().expect("join").expect("first answered");
        for (i, a) in answers.into_iter().enumerate() {
            assert_eq!(a.join().expect("join").expect("answered"), (i + 1) * 10);
        }
        assert_eq!(
            gate.syncs.load(Ordering::SeqCst),
            4,
            "two syncs for the first request, two shared by the other five"
        );
        assert_eq!(*order.lock().expect("lock"), vec![0, 1, 2, 3, 4, 5]);
    }

    /// A failed first sync fails every request of its batch and runs none
    /// of their steps; a failed second sync fails them all after the steps.
    #[test]
    fn a_failed_sync_fails_its_whole_batch() {
        for fail_at in [2usize, 3] {
            let (gate, sync) = gated();
            *gate.fail_from.lock().expect("lock") = Some(fail_at);
            let committer = Arc::new(Committer::<()>::new("test-commit", sync).expect("start"));
            let ran = Arc::new(AtomicUsize::new(0));
            let first = {
                let c = Arc::clone(&committer);
                std::thread::spawn(move || c.commit(|| ()))
            };
            gate.entered.recv().expect("first sync started");
            let answers: Vec<_> = (0..4)
                .map(|_| {
                    let (c, ran) = (Arc::clone(&committer), Arc::clone(&ran));
                    std::thread::spawn(move || {
                        c.commit(move || {
                            ran.fetch_add(1, Ordering::SeqCst);
                        })
                    })
                })
                .collect();
            while sent(&committer) < 5 {
                std::thread::yield_now();
            }
            gate.release.send(()).expect("release");
            first.join().expect("join").expect("the first batch synced");
            for a in answers {
                let e = a
                    .join()
                    .expect("join")
                    .expect_err("its batch's sync failed");
                assert!(e.to_string().contains("disk on fire"), "{e}");
            }
            let steps = if fail_at == 2 { 0 } else { 4 };
            assert_eq!(ran.load(Ordering::SeqCst), steps, "fail at sync {fail_at}");
            // The committer goes on with later batches.
            *gate.fail_from.lock().expect("lock") = None;
            committer.commit(|| ()).expect("a later batch");
        }
    }

    #[test]
    fn a_panicking_step_fails_only_its_own_request() {
        let committer = Committer::<u8>::new("test-commit", || Ok(())).expect("start");
        let e = committer
            .commit(|| panic!("a step's bug"))
            .expect_err("the panic is its request's error");
        assert!(e.to_string().contains("panic"), "{e}");
        assert_eq!(committer.commit(|| 7).expect("the committer lives on"), 7);
    }

    fn sent<T: Send + 'static>(c: &Committer<T>) -> usize {
        c.sent.load(Ordering::SeqCst)
    }
}
