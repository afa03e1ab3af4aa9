//! Bytes the layer keeps per tracked resource, counted by a global allocator.
//!
//! ```not_rust
//! cargo bench --bench memory
//! ```
//!
//! Reads 1,000,000 distinct paths through the layer (each read of an unseen resource, once the
//! layer's start second has passed, stores its re-dated version), then writes 100,000 of them
//! (a write creates the resource's lock too) and prints the heap growth per resource, with and
//! without the key's own bytes.

use std::{
    alloc::{GlobalAlloc, Layout, System},
    convert::Infallible,
    future::ready,
    sync::atomic::{AtomicIsize, Ordering},
    time::{Duration, UNIX_EPOCH},
};

use bytes::Bytes;
use http::{Method, Request, Response};
use http_body_util::Full;
use tower::{service_fn, Layer, Service};
use tower_conditional::store::MemoryStore;
use tower_conditional::{clock::ManualClock, ConditionalLayer};

struct Counting;

static ALLOCATED: AtomicIsize = AtomicIsize::new(0);

unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        ALLOCATED.fetch_add(layout.size() as isize, Ordering::Relaxed);
        unsafe { System.alloc(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        ALLOCATED.fetch_sub(layout.size() as isize, Ordering::Relaxed);
        unsafe { System.dealloc(ptr, layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        ALLOCATED.fetch_add(
            new_size as isize - layout.size() as isize,
            Ordering::Relaxed,
        );
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

const RESOURCES: usize = 1_000_000;
const WRITTEN: usize = 100_000;

fn main() {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let clock = ManualClock::new(UNIX_EPOCH + Duration::from_secs(1_750_000_000));
    let layer = ConditionalLayer::new().store(MemoryStore::new().clock(clock.clone()));
    let mut service = layer.layer(service_fn(|_req: Request<Full<Bytes>>| {
        ready(Ok::<_, Infallible>(Response::new(Full::new(
            Bytes::from_static(b"{}"),
        ))))
    }));
    clock.advance(Duration::from_secs(1));
    let paths: Vec<String> = (0..RESOURCES).map(|i| format!("/storage/{i:07}")).collect();
    let key_bytes: usize = paths.iter().map(|p| p.len()).sum();

    let mut call = |method: Method, path: &str| {
        let req = Request::builder()
            .method(method)
            .uri(path)
            .body(Full::default())
            .unwrap();
        runtime.block_on(async {
            std::future::poll_fn(|cx| service.poll_ready(cx))
                .await
                .unwrap();
            drop(service.call(req).await.unwrap());
        });
    };
    let before = ALLOCATED.load(Ordering::Relaxed);
    for path in &paths {
        call(Method::GET, path);
    }
    let after_reads = ALLOCATED.load(Ordering::Relaxed);
    for path in &paths[..WRITTEN] {
        call(Method::PUT, path);
    }
    let after_writes = ALLOCATED.load(Ordering::Relaxed);
    assert_eq!(layer.tracked_resources(), RESOURCES);

    let per_read = (after_reads - before) as f64 / RESOURCES as f64;
    let key = key_bytes as f64 / RESOURCES as f64;
    let per_write = (after_writes - after_reads) as f64 / WRITTEN as f64;
    println!("tracked resources: {RESOURCES}, key length {key:.0} bytes");
    println!(
        "heap per read-only resource: {per_read:.1} bytes ({:.1} beyond the key's bytes)",
        per_read - key
    );
    println!("extra heap once a resource has been written: {per_write:.1} bytes");
}
