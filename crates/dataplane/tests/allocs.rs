//! The counting allocator counts what a thread allocates, and only that.

#[global_allocator]
static ALLOCATOR: dataplane::allocs::Counting = dataplane::allocs::Counting;

use dataplane::allocs;

#[test]
fn a_thread_counts_its_own_allocations() {
    let before = allocs::thread();
    let v: Vec<u8> = Vec::with_capacity(1000);
    let mut w: Vec<u64> = Vec::with_capacity(4);
    w.extend(0..100); // grows: realloc
    let d = allocs::thread().since(before);
    assert!(d.allocations >= 2, "{d:?}");
    assert!(d.bytes >= 1000 + 800, "{d:?}");
    drop((v, w));

    // Work without the heap counts nothing.
    let before = allocs::thread();
    let mut sum = 0u64;
    let mut buf = [0u8; 256];
    for i in 0..10_000u64 {
        buf[(i % 256) as usize] = i as u8;
        sum = sum.wrapping_add(buf[(i * 7 % 256) as usize] as u64);
    }
    std::hint::black_box(sum);
    assert_eq!(allocs::thread().since(before), allocs::Counts::default());

    // Another thread's allocations are its own.
    let before = allocs::thread();
    let other = std::thread::spawn(|| {
        let start = allocs::thread();
        let b = vec![7u8; 5000];
        std::hint::black_box(&b);
        allocs::thread().since(start)
    })
    .join()
    .unwrap();
    assert!(other.allocations >= 1 && other.bytes >= 5000, "{other:?}");
    // Spawning allocates here (the thread's handle), but not the other's 5000 bytes.
    assert!(allocs::thread().since(before).bytes < 5000);
}
