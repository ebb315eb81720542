//! The decode budget: how many pixels all requests together may be decoding at once.
//!
//! A 100-megapixel PNG can be 777 KB on the wire and takes seconds and over a gigabyte to
//! decode; a few of them at once would hold every decoder thread and leave ordinary photos
//! waiting behind them. So each image, before it gets a decoder thread, takes as many
//! permits as it has pixels (read from its header, in kilopixels) and keeps them until its
//! decode has ended, even when its request is gone (timed out, client left).
//!
//! The rule: images of at most a quarter of the budget (ordinary photos) draw on the whole
//! budget; larger images draw only on the other three quarters, so they never hold the
//! whole budget and ordinary photos always have a quarter of it to themselves. An image
//! larger than those three quarters is refused (413) without decoding. Both waits are
//! bounded by the request timeout.
//!
//! Two disjoint tokio semaphores do it: `shared` (three quarters) and `reserved` (the
//! quarter). Large images wait on `shared` only; ordinary photos wait on both at once and
//! take whichever pool grants them first. The pools must be disjoint because tokio's
//! semaphores queue strictly first come, first served, `acquire_many` included: with one
//! semaphore for the whole budget, a large image waiting at the head of its queue would
//! hold back every photo behind it, even with the quarter free.

use std::sync::Arc;

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use super::metrics::Metrics;

/// One permit stands for this many pixels: a 100-megapixel image is 100,000 permits, well
/// within what one `acquire_many` may ask for.
const PIXELS_PER_PERMIT: u64 = 1000;

/// Pixels decoding at once, for all requests together.
pub struct DecodeBudget {
    /// Three quarters of the budget, for images of any size.
    shared: Arc<Semaphore>,
    /// The other quarter, for ordinary photos only.
    reserved: Arc<Semaphore>,
    /// Permits of both pools together.
    total: u32,
    /// Images of at most this many permits are ordinary photos (a quarter of the budget).
    small_max: u32,
    metrics: Arc<Metrics>,
}

/// The budget an image holds while it decodes; given back when dropped.
pub struct DecodePermit {
    _permit: OwnedSemaphorePermit,
    pixels: u64,
    metrics: Arc<Metrics>,
}

impl Drop for DecodePermit {
    fn drop(&mut self) {
        self.metrics.decode_finished(self.pixels);
    }
}

/// Why an image gets no budget.
#[derive(Debug, PartialEq, Eq)]
pub enum Refused {
    /// Larger than the share large images may use; waiting would never help.
    TooLarge { share_pixels: u64 },
    /// The budget was closed (only while shutting down).
    Closed,
}

fn permits_for(pixels: u64) -> u64 {
    pixels.div_ceil(PIXELS_PER_PERMIT).max(1)
}

impl DecodeBudget {
    /// A budget of `pixels` (at least one permit's worth).
    pub fn new(pixels: u64, metrics: Arc<Metrics>) -> DecodeBudget {
        let total = u32::try_from(permits_for(pixels)).unwrap_or(u32::MAX);
        let small_max = (total / 4).max(1);
        let shared = (total - small_max).max(1);
        let total = shared + small_max;
        metrics.set_decode_budget(u64::from(total) * PIXELS_PER_PERMIT);
        DecodeBudget {
            shared: Arc::new(Semaphore::new(shared as usize)),
            reserved: Arc::new(Semaphore::new(small_max as usize)),
            total,
            small_max,
            metrics,
        }
    }

    /// The most pixels one image may have and still get budget.
    pub fn large_share_pixels(&self) -> u64 {
        u64::from(self.total - self.small_max).max(1) * PIXELS_PER_PERMIT
    }

    /// Waits until `pixels` fit in the budget, and holds them.
    pub async fn acquire(&self, pixels: u64) -> Result<DecodePermit, Refused> {
        let permits = permits_for(pixels);
        let share = self.total - self.small_max;
        if permits > u64::from(share) {
            return Err(Refused::TooLarge {
                share_pixels: self.large_share_pixels(),
            });
        }
        // `permits` <= share < u32::MAX here.
        let n = permits as u32;
        let shared = self.shared.clone().acquire_many_owned(n);
        let permit = if permits <= u64::from(self.small_max) {
            let reserved = self.reserved.clone().acquire_many_owned(n);
            // Dropping the losing wait leaves its queue and gives back whatever permits it
            // had been handed meanwhile. `shared` goes first when both are free, so the
            // quarter stays free for when it is needed.
            tokio::select! {
                biased;
                permit = shared => permit,
                permit = reserved => permit,
            }
        } else {
            shared.await
        }
        .map_err(|_| Refused::Closed)?;
        self.metrics.decode_started(pixels);
        Ok(DecodePermit {
            _permit: permit,
            pixels,
            metrics: self.metrics.clone(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn runtime() -> tokio::runtime::Runtime {
        tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .build()
            .unwrap()
    }

    #[test]
    fn large_images_leave_a_quarter_to_ordinary_photos() {
        runtime().block_on(async {
            let metrics = Arc::new(Metrics::default());
            // 8 Mpx: photos of up to 2 Mpx use all 8, larger images at most 6 together.
            let budget = DecodeBudget::new(8_000_000, metrics.clone());
            assert_eq!(budget.large_share_pixels(), 6_000_000);
            let bomb = budget.acquire(6_000_000).await.unwrap();
            let second =
                tokio::time::timeout(Duration::from_millis(50), budget.acquire(3_000_000)).await;
            assert!(second.is_err(), "a second large image must wait");
            let photo =
                tokio::time::timeout(Duration::from_millis(50), budget.acquire(2_000_000)).await;
            assert!(photo.is_ok(), "an ordinary photo gets the reserved quarter");
            assert_eq!(metrics.decode_pixels_in_flight(), 8_000_000);
            drop(photo);
            drop(bomb);
            assert_eq!(metrics.decode_pixels_in_flight(), 0);
            assert_eq!(metrics.decode_pixels_in_flight_max(), 8_000_000);
            assert!(budget.acquire(3_000_000).await.is_ok());
        });
    }

    #[test]
    fn a_waiting_large_image_does_not_hold_back_ordinary_photos() {
        runtime().block_on(async {
            let metrics = Arc::new(Metrics::default());
            // 8 Mpx: 6 shared, 2 reserved for photos of up to 2 Mpx.
            let budget = Arc::new(DecodeBudget::new(8_000_000, metrics.clone()));
            let first = budget.acquire(2_000_000).await.unwrap();
            let second = budget.acquire(2_000_000).await.unwrap();
            let third = budget.acquire(2_000_000).await.unwrap();
            let waiting = budget.clone();
            let large = tokio::spawn(async move { waiting.acquire(3_000_000).await });
            // Let the large image reach the head of the queue before the next photo asks.
            tokio::time::sleep(Duration::from_millis(20)).await;
            assert!(!large.is_finished(), "the large image must wait");
            let photo =
                tokio::time::timeout(Duration::from_millis(50), budget.acquire(2_000_000)).await;
            let photo = photo
                .expect("an ordinary photo must not wait behind a large image")
                .unwrap();
            assert_eq!(metrics.decode_pixels_in_flight(), 8_000_000);
            // The photo on the reserved quarter does not help the large image...
            drop(photo);
            tokio::time::sleep(Duration::from_millis(20)).await;
            assert!(
                !large.is_finished(),
                "the reserved quarter is not for large images"
            );
            // ...two photos leaving the shared pool do.
            drop(first);
            drop(second);
            let large = tokio::time::timeout(Duration::from_millis(500), large)
                .await
                .expect("the large image gets the freed share")
                .unwrap()
                .unwrap();
            assert_eq!(metrics.decode_pixels_in_flight(), 5_000_000);
            drop(third);
            drop(large);
            assert_eq!(metrics.decode_pixels_in_flight(), 0);
        });
    }

    #[test]
    fn an_image_above_the_large_share_is_refused_at_once() {
        runtime().block_on(async {
            let budget = DecodeBudget::new(8_000_000, Arc::new(Metrics::default()));
            assert_eq!(
                budget.acquire(6_000_001).await.err(),
                Some(Refused::TooLarge {
                    share_pixels: 6_000_000
                })
            );
        });
    }
}
