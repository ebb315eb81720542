//! Dynamic batching on one inference thread.
//!
//! The burn network is not meant to be shared across async tasks, and on a CPU one forward
//! pass already uses every core, so a single `std::thread` owns the [`Predictor`] and
//! receives preprocessed images over a bounded channel. It waits for a first image, then
//! gathers more until the batch is full or `max_wait` has passed, and runs them in one
//! forward pass: concurrent requests share the fixed cost of a call.
//!
//! Admission is counted in images: a request reserves its slots before its images are
//! decoded, so a full queue is refused at once, without spending CPU on decoding.

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::mpsc::{sync_channel, Receiver, SyncSender, TrySendError};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use tokio::sync::oneshot;

use super::metrics::Metrics;
use crate::error::{Error, Result};
use crate::predict::Predictor;

#[derive(Debug, Clone, Copy)]
pub struct BatchOptions {
    /// Images per forward pass, at most.
    pub max_batch: usize,
    /// How long the first image of a batch waits for company.
    pub max_wait: Duration,
    /// Images admitted and not yet taken into a batch, at most.
    pub max_queue: usize,
}

/// One image's answer from the inference thread.
#[derive(Debug, Clone)]
pub struct Scored {
    /// Over the bundle's labels, in label order.
    pub probabilities: Vec<f32>,
    /// From submission to the start of its batch.
    pub queue: Duration,
    /// The forward pass of its whole batch (backbone and head).
    pub inference: Duration,
    pub batch_size: usize,
}

struct Job {
    /// `[3, S, S]` preprocessed pixels.
    pixels: Vec<f32>,
    submitted: Instant,
    reply: oneshot::Sender<std::result::Result<Scored, String>>,
}

/// State shared by the request handlers and the inference thread.
struct Shared {
    /// Images reserved by requests and not yet taken into a batch.
    queued: AtomicUsize,
    ready: AtomicBool,
    max_queue: usize,
    metrics: Arc<Metrics>,
}

/// The handle the request handlers hold. Dropping it (the last clone of its sender)
/// lets the inference thread finish the queued work and stop.
pub struct Batcher {
    tx: SyncSender<Job>,
    shared: Arc<Shared>,
}

/// Queue slots held by one request; the unused ones are given back when it is dropped,
/// so a request that fails halfway (bad image, client gone, timeout) leaks nothing.
pub struct Reservation {
    shared: Arc<Shared>,
    slots: usize,
}

impl Drop for Reservation {
    fn drop(&mut self) {
        if self.slots > 0 {
            let left = self.shared.queued.fetch_sub(self.slots, Ordering::AcqRel) - self.slots;
            self.shared.metrics.set_queue_depth(left);
        }
    }
}

impl Batcher {
    /// Starts the inference thread, which owns `predictor` from now on. A one-image warm-up
    /// pass runs first (the first call allocates the network's buffers); the batcher is
    /// [`ready`](Batcher::ready) after it.
    pub fn start(
        predictor: Predictor,
        options: BatchOptions,
        metrics: Arc<Metrics>,
    ) -> Result<(Batcher, JoinHandle<()>)> {
        let max_queue = options.max_queue.max(1);
        let (tx, rx) = sync_channel::<Job>(max_queue);
        let shared = Arc::new(Shared {
            queued: AtomicUsize::new(0),
            ready: AtomicBool::new(false),
            max_queue,
            metrics,
        });
        let thread_shared = shared.clone();
        let handle = std::thread::Builder::new()
            .name("graft-inference".into())
            .spawn(move || inference_loop(predictor, rx, options, thread_shared))
            .map_err(|e| Error::Engine(format!("cannot start the inference thread: {e}")))?;
        Ok((Batcher { tx, shared }, handle))
    }

    /// Whether the warm-up pass is done and the inference thread is running.
    pub fn ready(&self) -> bool {
        self.shared.ready.load(Ordering::Acquire)
    }

    pub fn max_queue(&self) -> usize {
        self.shared.max_queue
    }

    /// Reserves `images` queue slots, or `None` when the queue has no room for all of them.
    pub fn reserve(&self, images: usize) -> Option<Reservation> {
        let max = self.shared.max_queue;
        let depth = self
            .shared
            .queued
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |queued| {
                (queued + images <= max).then_some(queued + images)
            })
            .ok()?
            + images;
        self.shared.metrics.set_queue_depth(depth);
        Some(Reservation {
            shared: self.shared.clone(),
            slots: images,
        })
    }

    /// Queues one preprocessed image on a slot of `reservation`; the receiver gets its
    /// probabilities once its batch has run.
    pub fn submit(
        &self,
        reservation: &mut Reservation,
        pixels: Vec<f32>,
    ) -> Result<oneshot::Receiver<std::result::Result<Scored, String>>> {
        if reservation.slots == 0 {
            return Err(Error::Invalid(
                "no queue slot left in this reservation".into(),
            ));
        }
        let (reply, answer) = oneshot::channel();
        let job = Job {
            pixels,
            submitted: Instant::now(),
            reply,
        };
        match self.tx.try_send(job) {
            Ok(()) => {
                // The slot now belongs to the job; the inference thread releases it.
                reservation.slots -= 1;
                Ok(answer)
            }
            // Cannot happen while reservations bound the channel; refuse rather than block.
            Err(TrySendError::Full(_)) => Err(Error::Engine("the inference queue is full".into())),
            Err(TrySendError::Disconnected(_)) => {
                Err(Error::Engine("the inference thread has stopped".into()))
            }
        }
    }
}

/// Receives the next batch: blocks for a first job, then gathers up to `max_batch` until
/// `max_wait` after it. `None` once every sender is gone and the queue is drained.
fn next_batch(rx: &Receiver<Job>, options: &BatchOptions) -> Option<Vec<Job>> {
    let first = rx.recv().ok()?;
    let max_batch = options.max_batch.max(1);
    let mut jobs = Vec::with_capacity(max_batch);
    jobs.push(first);
    let deadline = Instant::now() + options.max_wait;
    while jobs.len() < max_batch {
        let now = Instant::now();
        // Past the deadline, still take whatever is already waiting.
        let next = if now >= deadline {
            rx.try_recv().ok()
        } else {
            // Timed out or every sender gone: run what we have.
            rx.recv_timeout(deadline - now).ok()
        };
        match next {
            Some(job) => jobs.push(job),
            None => break,
        }
    }
    Some(jobs)
}

fn inference_loop(
    predictor: Predictor,
    rx: Receiver<Job>,
    options: BatchOptions,
    shared: Arc<Shared>,
) {
    let size = predictor.bundle.manifest.preprocess.size as usize;
    let per_image = 3 * size * size;
    // Warm-up: a grey image; its answer is not needed, only the allocations it makes.
    match run_batch(&predictor, vec![0.0; per_image], 1) {
        Ok(_) => {}
        Err(err) => tracing::error!(target: "graft::serve", "warm-up pass failed: {err}"),
    }
    shared.ready.store(true, Ordering::Release);

    while let Some(jobs) = next_batch(&rx, &options) {
        let left = shared.queued.fetch_sub(jobs.len(), Ordering::AcqRel) - jobs.len();
        shared.metrics.set_queue_depth(left);
        let started = Instant::now();
        // A request that timed out or whose client left has dropped its receiver.
        let jobs: Vec<Job> = jobs.into_iter().filter(|j| !j.reply.is_closed()).collect();
        if jobs.is_empty() {
            continue;
        }
        let mut pixels = Vec::with_capacity(jobs.len() * per_image);
        for job in &jobs {
            pixels.extend_from_slice(&job.pixels);
        }
        let result = run_batch(&predictor, pixels, jobs.len());
        let inference = started.elapsed();
        shared.metrics.batch_done(jobs.len(), inference);
        tracing::debug!(
            target: "graft::serve",
            batch = jobs.len(),
            inference_ms = inference.as_secs_f64() * 1e3,
            "batch done"
        );
        let batch_size = jobs.len();
        match result {
            Ok(rows) => {
                for (job, probabilities) in jobs.into_iter().zip(rows) {
                    let _ = job.reply.send(Ok(Scored {
                        probabilities,
                        queue: started.saturating_duration_since(job.submitted),
                        inference,
                        batch_size,
                    }));
                }
            }
            Err(err) => {
                tracing::error!(target: "graft::serve", "inference failed on a batch of {batch_size}: {err}");
                for job in jobs {
                    let _ = job.reply.send(Err(err.to_string()));
                }
            }
        }
    }
    shared.ready.store(false, Ordering::Release);
}

/// Backbone and head over `batch` images; one probability vector per image. A panic in
/// the engine becomes an error for this batch and the thread goes on serving.
fn run_batch(predictor: &Predictor, pixels: Vec<f32>, batch: usize) -> Result<Vec<Vec<f32>>> {
    let run = catch_unwind(AssertUnwindSafe(|| -> Result<Vec<Vec<f32>>> {
        let outputs = predictor.backbone.run(pixels, batch)?;
        let dim = outputs.features.len() / batch.max(1);
        Ok(outputs
            .features
            .chunks_exact(dim.max(1))
            .map(|features| predictor.probabilities(features))
            .collect())
    }));
    match run {
        Ok(result) => result,
        Err(_) => Err(Error::Engine("the backbone panicked on this batch".into())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn job() -> Job {
        let (reply, _) = oneshot::channel();
        Job {
            pixels: Vec::new(),
            submitted: Instant::now(),
            reply,
        }
    }

    #[test]
    fn batches_fill_up_to_max_and_wait_at_most_max_wait() {
        let (tx, rx) = sync_channel(8);
        for _ in 0..3 {
            tx.send(job()).unwrap();
        }
        let options = BatchOptions {
            max_batch: 2,
            max_wait: Duration::from_millis(20),
            max_queue: 8,
        };
        assert_eq!(next_batch(&rx, &options).unwrap().len(), 2);
        let started = Instant::now();
        assert_eq!(next_batch(&rx, &options).unwrap().len(), 1);
        let waited = started.elapsed();
        assert!(
            waited >= Duration::from_millis(20) && waited < Duration::from_secs(5),
            "{waited:?}"
        );
        drop(tx);
        assert!(next_batch(&rx, &options).is_none());
    }

    #[test]
    fn reservations_are_all_or_nothing_and_given_back() {
        let (tx, _rx) = sync_channel(3);
        let batcher = Batcher {
            tx,
            shared: Arc::new(Shared {
                queued: AtomicUsize::new(0),
                ready: AtomicBool::new(true),
                max_queue: 3,
                metrics: Arc::new(Metrics::default()),
            }),
        };
        let two = batcher.reserve(2).unwrap();
        assert!(batcher.reserve(2).is_none(), "only one slot is left");
        let mut one = batcher.reserve(1).unwrap();
        drop(two);
        assert_eq!(batcher.shared.queued.load(Ordering::Acquire), 1);
        // A submitted image keeps its slot until the inference thread takes it.
        batcher.submit(&mut one, vec![0.0; 3]).unwrap();
        assert!(
            batcher.submit(&mut one, vec![0.0; 3]).is_err(),
            "no slot left to submit on"
        );
        drop(one);
        assert_eq!(batcher.shared.queued.load(Ordering::Acquire), 1);
        assert!(batcher.reserve(3).is_none());
        assert!(batcher.reserve(2).is_some());
    }
}
