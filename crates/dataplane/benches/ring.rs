//! Ring enqueue+dequeue cost per element on one core, bulk of 8 and 32, single- and
//! multi-producer/consumer: the shape of DPDK's ring_perf_autotest "SP/SC bulk" and
//! "MP/MC bulk" lines, for a side-by-side comparison (bench/dpdk-compare.sh).

use criterion::{black_box, criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use dataplane::ring::{mpmc, spsc};

fn bench(c: &mut Criterion) {
    let mut g = c.benchmark_group("ring");
    for burst in [8usize, 32] {
        g.throughput(Throughput::Elements(burst as u64));
        let items: Vec<usize> = (0..burst).collect();
        let mut out = vec![0usize; burst];
        let (p, q) = spsc::<usize>(1024);
        g.bench_function(BenchmarkId::new("sp/sc bulk", burst), |b| {
            b.iter(|| {
                p.enqueue_bulk(black_box(&items));
                q.dequeue_bulk(black_box(&mut out));
            })
        });
        let (p, q) = mpmc::<usize>(1024);
        g.bench_function(BenchmarkId::new("mp/mc bulk", burst), |b| {
            b.iter(|| {
                p.enqueue_bulk(black_box(&items));
                q.dequeue_bulk(black_box(&mut out));
            })
        });
    }
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
