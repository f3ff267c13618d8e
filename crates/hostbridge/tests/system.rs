//! The whole system in one process, joined by in-memory dataplane ports.

mod common;

use dataplane::ports::mem;
use dataplane::Mempool;

#[test]
fn host_enumerates_and_drives_memdev_in_a_box() {
    let pool = Mempool::new(8192, 2048).unwrap();
    let (a, b) = mem::pair(&pool, 1024, 1500);
    let took = common::memdev_copy(Box::new(a), Box::new(b));
    eprintln!("1 MiB copy through the box over in-memory ports: {took:?}");
}
